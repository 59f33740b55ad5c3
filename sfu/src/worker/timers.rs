//! When each peer on a worker next needs a timeout: an ordered set of `(time, peer)` with
//! exactly one entry per peer.
//!
//! A subscriber's deadline moves on every packet written to it (to "now", then back to its
//! next real timer after the flush), so rescheduling must be cheap and leave nothing behind:
//! moving an entry is one removal and one insertion, `O(log n)`, and the next wake-up is the
//! first entry.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::ids::PeerId;

/// The timer queue of one worker.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    order: BTreeSet<(Instant, PeerId)>,
    at: HashMap<PeerId, Instant>,
}

impl TimerQueue {
    /// Sets when `peer` next wants a timeout.
    pub(crate) fn schedule(&mut self, peer: PeerId, at: Instant) {
        match self.at.insert(peer, at) {
            Some(previous) if previous == at => return,
            Some(previous) => {
                self.order.remove(&(previous, peer));
            }
            None => {}
        }
        self.order.insert((at, peer));
    }

    /// Forgets a peer.
    pub(crate) fn remove(&mut self, peer: PeerId) {
        if let Some(at) = self.at.remove(&peer) {
            self.order.remove(&(at, peer));
        }
    }

    /// The earliest scheduled time.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes one peer whose timeout is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<PeerId> {
        let &(at, peer) = self.order.first()?;
        if at > now {
            return None;
        }
        self.order.pop_first();
        self.at.remove(&peer);
        Some(peer)
    }

    /// Number of peers with a timer.
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.order.len(), self.at.len());
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_respects_moves() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::default();
        q.schedule(PeerId(1), ms(10));
        q.schedule(PeerId(2), ms(5));
        q.schedule(PeerId(1), ms(20)); // later: must not fire at 10
        q.schedule(PeerId(3), ms(7));
        q.remove(PeerId(3));
        assert_eq!(q.next(), Some(ms(5)));
        assert_eq!(q.pop_due(ms(4)), None);
        assert_eq!(q.pop_due(ms(15)), Some(PeerId(2)));
        assert_eq!(q.pop_due(ms(15)), None);
        assert_eq!(q.pop_due(ms(20)), Some(PeerId(1)));
        assert_eq!(q.pop_due(ms(100)), None);
        q.schedule(PeerId(1), ms(30));
        q.schedule(PeerId(1), ms(25)); // earlier
        assert_eq!(q.pop_due(ms(26)), Some(PeerId(1)));
        assert_eq!(q.pop_due(ms(31)), None, "no stale entry is left behind");
    }

    #[test]
    fn constant_size_under_churn() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..10_000u64 {
            let peer = PeerId(i % 20);
            // A write (deadline now) then a flush (deadline later), per packet.
            q.schedule(peer, t0 + Duration::from_micros(i));
            q.schedule(peer, t0 + Duration::from_millis(100 + i % 7));
        }
        assert_eq!(q.len(), 20);
    }
}
