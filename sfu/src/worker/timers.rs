//! When each peer on a worker next needs a timeout: a min-heap with lazy deletion.
//!
//! Every peer has one wanted time. Moving it earlier pushes a new heap entry; moving it later
//! leaves the old (early) entry in place, and when that entry comes due it is pushed again at
//! the wanted time instead of firing. So each change is `O(log n)`, the heap holds about one
//! entry per peer, and finding the next wake-up is `O(1)`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::ids::PeerId;

/// The timer queue of one worker.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
    wanted: HashMap<PeerId, Instant>,
}

impl TimerQueue {
    /// Sets when `peer` next wants a timeout.
    pub(crate) fn schedule(&mut self, peer: PeerId, at: Instant) {
        let previous = self.wanted.insert(peer, at);
        if previous.is_none_or(|p| at < p) {
            self.heap.push(Reverse((at, peer)));
        }
    }

    /// Forgets a peer.
    pub(crate) fn remove(&mut self, peer: PeerId) {
        self.wanted.remove(&peer);
    }

    /// The earliest time anything may be due (possibly a little early; never late).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes one peer whose timeout is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<PeerId> {
        while let Some(Reverse((at, peer))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            match self.wanted.get(&peer).copied() {
                Some(wanted) if wanted == at => {
                    self.wanted.remove(&peer);
                    return Some(peer);
                }
                // Moved later since: come back then.
                Some(wanted) if wanted > at => self.heap.push(Reverse((wanted, peer))),
                // Removed, or an earlier entry exists.
                _ => {}
            }
        }
        None
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
        q.schedule(PeerId(1), ms(20)); // later: old entry must not fire at 10
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
        assert_eq!(
            q.pop_due(ms(31)),
            None,
            "the stale later entry does not fire"
        );
    }
}
