//! Coalesces keyframe requests (PLI) for one publisher track layer.
//!
//! Every subscriber that joins, switches layer or loses a frame asks for a keyframe; a
//! publisher that obeyed each one would spend its whole bitrate on keyframes. The throttle
//! sends at most one request per interval; requests that arrive inside the interval are
//! remembered and sent as one when it ends, unless a keyframe arrived meanwhile (which
//! answers them all).
//!
//! An urgent request (a subscriber that shows nothing until the keyframe comes) goes out at
//! once unless a request sent less than [`URGENT_RETRY`] ago is still unanswered (the
//! keyframe on its way answers it too), and never closer than [`URGENT_GAP`] to the last one.

use std::time::{Duration, Instant};

/// Shortest gap between an urgent request and the previous request.
pub(crate) const URGENT_GAP: Duration = Duration::from_millis(100);
/// An unanswered request older than this no longer holds back an urgent one: publishers may
/// ignore a request that follows another too closely (libwebrtc drops those within 300 ms of
/// the last), so waiting for its keyframe could be waiting for nothing.
pub(crate) const URGENT_RETRY: Duration = Duration::from_millis(350);

/// Keyframe request throttle for one publisher track layer. Sans-IO: time comes in as `now`.
#[derive(Debug)]
pub(crate) struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
    /// A request went out and no keyframe has arrived since.
    unanswered: bool,
}

impl KeyframeThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: false,
            unanswered: false,
        }
    }

    /// A subscriber asks for a keyframe (`urgent`: it shows nothing until it comes). Returns
    /// `true` if a request should go out now; otherwise one is scheduled for the end of the
    /// interval (see [`Self::poll`]).
    pub(crate) fn request(&mut self, now: Instant, urgent: bool) -> bool {
        let since_last = self
            .last_sent
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let urgent_now =
            urgent && since_last >= URGENT_GAP && (!self.unanswered || since_last >= URGENT_RETRY);
        if urgent_now || self.may_send(now) {
            self.sent(now);
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A keyframe arrived: requests waiting for the interval to end are answered.
    pub(crate) fn on_keyframe(&mut self) {
        self.pending = false;
        self.unanswered = false;
    }

    /// Returns `true` if a coalesced request is due now.
    pub(crate) fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.may_send(now) {
            self.sent(now);
            true
        } else {
            false
        }
    }

    fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.pending = false;
        self.unanswered = true;
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
        assert!(k.request(t0, false));
        assert!(!k.request(t0 + 10 * MS, false));
        assert!(!k.request(t0 + 200 * MS, false));
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
        assert!(k.request(t0, false));
        assert!(!k.request(t0 + 100 * MS, false));
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
            if k.request(now, false) || k.poll(now) {
                sent.push(i);
            }
        }
        assert_eq!(sent, vec![0, 500, 1000, 1500, 2000, 2500]);
    }

    #[test]
    fn an_urgent_request_skips_the_interval_once_the_last_one_is_answered() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(500 * MS);
        assert!(k.request(t0, false));
        // Unanswered: the keyframe on its way serves the urgent request too...
        assert!(!k.request(t0 + 150 * MS, true));
        // ...unless it is long overdue (the publisher may have ignored the request).
        let mut ignored = KeyframeThrottle::new(500 * MS);
        assert!(ignored.request(t0, false));
        assert!(ignored.request(t0 + URGENT_RETRY, true));
        k.on_keyframe();
        // Answered: an urgent request goes out at once, a normal one would wait.
        let mut normal = KeyframeThrottle::new(500 * MS);
        assert!(normal.request(t0, false));
        normal.on_keyframe();
        assert!(!normal.request(t0 + 200 * MS, false));
        assert!(k.request(t0 + 200 * MS, true));
        // Never closer than URGENT_GAP, even after a keyframe.
        k.on_keyframe();
        assert!(!k.request(t0 + 250 * MS, true));
        assert!(k.poll(t0 + 700 * MS), "coalesced into the next interval");
    }

    #[test]
    fn urgent_storm_is_bounded_by_keyframes() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(500 * MS);
        let mut sent = 0;
        for i in 0..1000u32 {
            let now = t0 + i * MS;
            if k.request(now, true) || k.poll(now) {
                sent += 1;
            }
            // A keyframe answers 40 ms after each request.
            if k.last_sent.is_some_and(|t| now == t + 40 * MS) {
                k.on_keyframe();
            }
        }
        assert_eq!(sent, 10, "one per URGENT_GAP at most, each answered first");
        // Never answered: one per URGENT_RETRY.
        let mut k = KeyframeThrottle::new(500 * MS);
        let sent = (0..1000u32)
            .filter(|i| {
                let now = t0 + *i * MS;
                k.request(now, true) || k.poll(now)
            })
            .count();
        assert_eq!(sent, 3, "at 0, 350 and 700 ms");
    }
}
