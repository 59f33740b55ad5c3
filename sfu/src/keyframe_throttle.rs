//! Coalesces keyframe requests (PLI) for one publisher track layer.
//!
//! Every subscriber that joins, switches layer or loses a frame asks for a keyframe; a
//! publisher that obeyed each one would spend its whole bitrate on keyframes. The throttle
//! sends at most one request per interval; requests that arrive inside the interval are
//! remembered and sent as one when it ends, unless a keyframe arrived meanwhile (which
//! answers them all).

use std::time::{Duration, Instant};

/// Keyframe request throttle for one publisher track layer. Sans-IO: time comes in as `now`.
#[derive(Debug)]
pub(crate) struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    /// A subscriber asks for a keyframe. Returns `true` if a request should go out now;
    /// otherwise one is scheduled for the end of the interval (see [`Self::poll`]).
    pub(crate) fn request(&mut self, now: Instant) -> bool {
        if self.may_send(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A keyframe arrived: requests waiting for the interval to end are answered.
    pub(crate) fn on_keyframe(&mut self) {
        self.pending = false;
    }

    /// Returns `true` if a coalesced request is due now.
    pub(crate) fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.may_send(now) {
            self.pending = false;
            self.last_sent = Some(now);
            true
        } else {
            false
        }
    }

    /// When [`Self::poll`] next has something to send.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        // Pending implies a request was sent before (the first one always goes out at once).
        self.last_sent
            .filter(|_| self.pending)
            .map(|t| t + self.interval)
    }

    fn may_send(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_request_goes_out_then_coalesces_until_interval_ends() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(500 * MS);
        assert!(k.request(t0));
        assert!(!k.request(t0 + 10 * MS));
        assert!(!k.request(t0 + 200 * MS));
        assert_eq!(k.deadline(), Some(t0 + 500 * MS));
        assert!(!k.poll(t0 + 499 * MS));
        assert!(
            k.poll(t0 + 500 * MS),
            "one coalesced request at the end of the interval"
        );
        assert!(!k.poll(t0 + 501 * MS));
        assert_eq!(k.deadline(), None);
    }

    #[test]
    fn keyframe_answers_pending_requests() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(500 * MS);
        assert!(k.request(t0));
        assert!(!k.request(t0 + 100 * MS));
        k.on_keyframe();
        assert!(!k.poll(t0 + 600 * MS));
    }

    #[test]
    fn at_most_one_per_interval_under_a_storm() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(500 * MS);
        let mut sent = Vec::new();
        for i in 0..3000u32 {
            let now = t0 + i * MS;
            if k.request(now) || k.poll(now) {
                sent.push(i);
            }
        }
        assert_eq!(sent, vec![0, 500, 1000, 1500, 2000, 2500]);
    }
}
