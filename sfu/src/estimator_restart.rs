//! Decides when a subscriber's bandwidth estimator is stuck below what its tracks want, and
//! should be restarted so it probes again.
//!
//! str0m's estimator (a port of libwebrtc's GoogCC) can stop growing on a link with plenty of
//! room: after one spurious loss or delay spike (a busy receiver is enough), its loss-based
//! part holds the estimate at 1.5 times the acknowledged rate and forbids probing, and the
//! padding the allocator asks for does not lift the acknowledged rate far enough to get out.
//! Measured in the browser tests: a viewer on an open link held at the middle layer for 30 s.
//! Restarting the estimator from its current value clears that state; its start-up probes
//! then find the real capacity within a second, or confirm the limit.
//!
//! A restart is due when the allocator has wanted more than the estimate allows for
//! [`STUCK_AFTER`] with the estimate still (within [`STILL`] of where the wait began: a stuck
//! estimator repeats its value to the bit or creeps up a per cent a second, measured at
//! 319,289 bit/s for 17 s after a limit was lifted; on a link that really is narrow the estimate
//! saws up and down by half every second), and the link has shown no real loss for a while
//! (the caller's `quiet`: 10 s, see `LOSS_QUIET` in the subscriber's bandwidth module; with
//! only the last second's loss checked, a viewer behind a 150 kbit/s cap was restarted every
//! 4-6 s, each restart's probes into the full link costing losses and a freeze). A restart after
//! which the estimate stays still doubles the next wait (up to [`MAX_WAIT`]); an estimate that
//! moves again shows a live estimator and resets it, so a limit lifted after a long constrained
//! spell is found as fast as the first time. Sans-IO: time, estimate and quiet come in, a yes
//! or no goes out.

use std::time::{Duration, Instant};

/// How long the estimate may stay flat while the allocator wants more, before a restart.
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(2);
/// The longest wait between two restarts.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(24);
/// An estimate further than this fraction from the one at the start of the wait is moving.
pub(crate) const STILL: f64 = 0.1;

/// Restart decisions for one subscriber's estimator.
#[derive(Debug)]
pub(crate) struct EstimatorRestart {
    /// Since when the allocator has been held back, and the estimate then.
    held_since: Option<(Instant, u64)>,
    /// How long to wait before the next restart.
    wait: Duration,
}

impl Default for EstimatorRestart {
    fn default() -> Self {
        Self {
            held_since: None,
            wait: STUCK_AFTER,
        }
    }
}

impl EstimatorRestart {
    /// After an allocation: `held_back` if the tracks want more than `estimate` allows,
    /// `quiet` if the link has lost nothing to speak of lately (a lossy link is narrow, not
    /// held by a stuck estimator). Returns `true` if the estimator should be restarted now.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        estimate: u64,
        held_back: bool,
        quiet: bool,
    ) -> bool {
        if !held_back {
            *self = Self::default();
            return false;
        }
        let still = |at: u64| (estimate as f64 - at as f64).abs() <= at as f64 * STILL;
        let since = match self.held_since {
            Some((since, at)) if still(at) => since,
            Some(_) => {
                // Moving: the estimator is alive; wait afresh from here.
                *self = Self {
                    held_since: Some((now, estimate)),
                    ..Self::default()
                };
                return false;
            }
            None => {
                self.held_since = Some((now, estimate));
                return false;
            }
        };
        if !quiet || now.saturating_duration_since(since) < self.wait {
            return false;
        }
        self.held_since = Some((now, estimate));
        self.wait = (self.wait * 2).min(MAX_WAIT);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_still_estimate_below_the_demand_restarts_with_backoff() {
        let t0 = Instant::now();
        let mut r = EstimatorRestart::default();
        let mut restarts = Vec::new();
        for ms in (0..120_000u64).step_by(500) {
            let now = t0 + Duration::from_millis(ms);
            if r.check(now, 800_000, true, true) {
                restarts.push(ms / 1000);
            }
        }
        assert_eq!(restarts, vec![2, 6, 14, 30, 54, 78, 102]);
    }

    #[test]
    fn an_estimate_that_moves_after_a_restart_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = EstimatorRestart::default();
        assert!(!r.check(t0, 800_000, true, true));
        assert!(r.check(t0 + 2 * S, 800_000, true, true));
        assert!(!r.check(t0 + 5 * S, 800_000, true, true), "waits 4 s now");
        assert!(
            !r.check(t0 + 5500 * MS, 840_000, true, true),
            "creeping is still"
        );
        // The estimate moves (a sawing estimate on a narrow link moves all the time).
        assert!(!r.check(t0 + 6 * S, 600_000, true, true));
        assert!(!r.check(t0 + 7500 * MS, 600_000, true, true));
        assert!(r.check(t0 + 8 * S, 600_000, true, true), "2 s again");
        let mut sawing = EstimatorRestart::default();
        for s in 0..30u32 {
            let estimate = if s % 2 == 0 { 300_000 } else { 550_000 };
            assert!(!sawing.check(t0 + s * S, estimate, true, true));
        }
    }

    #[test]
    fn no_restart_while_the_estimate_climbs_or_the_link_loses_packets() {
        let t0 = Instant::now();
        let mut r = EstimatorRestart::default();
        let mut estimate = 500_000u64;
        for s in 0..20u32 {
            estimate = estimate * 12 / 10;
            assert!(!r.check(t0 + s * S, estimate, true, true), "climbing");
        }
        let mut r = EstimatorRestart::default();
        for s in 0..20u32 {
            assert!(!r.check(t0 + s * S, 400_000, true, false), "lossy");
        }
    }

    #[test]
    fn no_longer_held_back_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = EstimatorRestart::default();
        assert!(!r.check(t0, 800_000, true, true));
        assert!(r.check(t0 + 3 * S, 800_000, true, true));
        assert!(!r.check(t0 + 4 * S, 2_000_000, false, true));
        assert!(!r.check(t0 + 5 * S, 800_000, true, true));
        assert!(
            r.check(t0 + 8 * S, 800_000, true, true),
            "back to the first wait"
        );
    }
}
