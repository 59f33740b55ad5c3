//! Sequence number and timestamp rewriting for one outgoing track of one subscriber.
//!
//! Whatever source (simulcast layer) is forwarded, the subscriber sees one SSRC with one
//! continuous sequence-number space and one increasing timestamp space:
//!
//! - Within a source, the outgoing number is the incoming extended sequence number plus a fixed
//!   offset, so a hole left by an upstream loss stays a hole of the same size and is filled
//!   by the retransmission when it arrives late; nothing is renumbered.
//! - When forwarding starts or switches to another source, the offsets are re-based so the
//!   first packet of the new source follows the last one sent, and its timestamp follows the
//!   last one sent by the wall-clock time elapsed since (at least one tick).
//! - Outgoing sequence numbers start below 65 536: an SRTP receiver starts with rollover
//!   counter 0 and cannot decrypt a stream whose first packet implies a higher one.
//!
//! Packets older than the first one forwarded from the current source are refused: they belong
//! to a stretch this subscriber never received, and numbering them would collide.
//!
//! A packet may also be dropped on purpose (an upper temporal layer the subscriber's bandwidth
//! cannot carry): the packets after it move down by one, so the receiver sees no gap. Only a
//! packet newer than every one forwarded so far can be dropped that way; an older one is
//! forwarded (renumbering what was already sent is impossible).

use std::time::Instant;

/// Rewrites (sequence number, RTP timestamp) of one forwarded track into a continuous space.
#[derive(Debug)]
pub(crate) struct SeqTsRewriter {
    clock_rate: u32,
    initial_seq: u16,
    initial_ts: u32,
    mapping: Option<Mapping>,
    /// Incoming sequence numbers dropped on purpose in the current source, ascending.
    dropped: std::collections::VecDeque<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    /// `out_seq = in_seq + seq_offset` (wrapping, in the 64-bit extended space).
    seq_offset: u64,
    /// `out_ts = in_ts + ts_offset` (wrapping, in the 32-bit RTP space).
    ts_offset: u32,
    /// First incoming sequence number of the current source; older ones are refused.
    first_in_seq: u64,
    /// Highest outgoing sequence number written so far.
    highest_out_seq: u64,
    /// Timestamp of the packet with the highest outgoing sequence number.
    last_out_ts: u32,
    /// Arrival time of that packet.
    last_arrival: Instant,
    /// Highest incoming sequence number seen (forwarded or dropped); `None` before the first.
    /// (Not "one below the first": a source may start at extended sequence number 0.)
    highest_in_seq: Option<u64>,
}

/// Dropped incoming sequence numbers remembered (for late packets); older drops are folded
/// into the offset and packets older than them refused.
const DROPS_KEPT: usize = 512;

/// An outgoing (sequence number, timestamp) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Extended outgoing sequence number (its low 16 bits go on the wire).
    pub(crate) seq: u64,
    /// Outgoing RTP timestamp.
    pub(crate) ts: u32,
}

impl SeqTsRewriter {
    /// A rewriter for a track with this RTP clock rate whose first packet will go out with
    /// `initial_seq` and `initial_ts`.
    pub(crate) fn new(clock_rate: u32, initial_seq: u16, initial_ts: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            initial_seq,
            initial_ts,
            mapping: None,
            dropped: std::collections::VecDeque::new(),
        }
    }

    /// A rewriter starting at random values, as RFC 3550 asks.
    pub(crate) fn with_random_start(clock_rate: u32) -> Self {
        // Below 2^15 leaves half the space before the first rollover; any value below 2^16
        // would be correct.
        Self::new(clock_rate, rand::random::<u16>() >> 1, rand::random())
    }

    /// Starts forwarding a (new) source whose next packet is `(in_seq, in_ts)`, arriving at
    /// `now`. Call it for the first packet and at every switch of source.
    #[cfg(test)]
    pub(crate) fn start_source(&mut self, in_seq: u64, in_ts: u32, now: Instant) {
        self.start_source_after(in_seq, in_ts, now, None);
    }

    /// Like [`Self::start_source`], with the time since the last packet sent known from the
    /// media itself (`elapsed` seconds between capture times, from sender reports) rather than
    /// from arrival times.
    pub(crate) fn start_source_after(
        &mut self,
        in_seq: u64,
        in_ts: u32,
        now: Instant,
        elapsed: Option<f64>,
    ) {
        let (out_seq, out_ts) = match self.mapping {
            None => (u64::from(self.initial_seq), self.initial_ts),
            Some(m) => {
                let arrival = now.saturating_duration_since(m.last_arrival).as_secs_f64();
                let seconds = elapsed
                    .filter(|e| e.is_finite() && *e >= 0.0)
                    .unwrap_or(arrival);
                let ticks = (seconds * f64::from(self.clock_rate)).round();
                // At least one tick, so the new source's first frame is a new frame.
                let ticks = (ticks as u32).max(1);
                // Wrapping: before the first packet is sent, the highest is one below the
                // initial number, which may be 0.
                (
                    m.highest_out_seq.wrapping_add(1),
                    m.last_out_ts.wrapping_add(ticks),
                )
            }
        };
        self.mapping = Some(Mapping {
            seq_offset: out_seq.wrapping_sub(in_seq),
            ts_offset: out_ts.wrapping_sub(in_ts),
            first_in_seq: in_seq,
            // One below the first, so the first packet becomes the highest.
            highest_out_seq: out_seq.wrapping_sub(1),
            last_out_ts: out_ts,
            last_arrival: now,
            highest_in_seq: None,
        });
        self.dropped.clear();
    }

    /// Drops the packet `in_seq` of the current source on purpose: later packets move down by
    /// one. Returns `false` (nothing done; forward it) if it is not newer than every packet
    /// seen, or if no source is started.
    pub(crate) fn drop_packet(&mut self, in_seq: u64) -> bool {
        let Some(m) = self.mapping.as_mut() else {
            return false;
        };
        if in_seq < m.first_in_seq || m.highest_in_seq.is_some_and(|h| in_seq <= h) {
            return false;
        }
        m.highest_in_seq = Some(in_seq);
        self.dropped.push_back(in_seq);
        if self.dropped.len() > DROPS_KEPT
            && let Some(oldest) = self.dropped.pop_front()
        {
            m.seq_offset = m.seq_offset.wrapping_sub(1);
            m.first_in_seq = m.first_in_seq.max(oldest + 1);
        }
        true
    }

    /// Rewrites one packet of the current source. `None` if no source is started or the packet
    /// is older than the start of the current source.
    pub(crate) fn rewrite(&mut self, in_seq: u64, in_ts: u32, now: Instant) -> Option<Rewritten> {
        let m = self.mapping.as_mut()?;
        if in_seq < m.first_in_seq {
            return None;
        }
        // Dropped ones before it: all but those after it, counted from the newest end (for
        // the usual packet, newer than every drop, that is none).
        let mut after = 0;
        for &d in self.dropped.iter().rev() {
            if d == in_seq {
                return None; // A retransmission of a packet dropped on purpose.
            }
            if d < in_seq {
                break;
            }
            after += 1;
        }
        let before = (self.dropped.len() - after) as u64;
        m.highest_in_seq = Some(m.highest_in_seq.map_or(in_seq, |h| h.max(in_seq)));
        let seq = in_seq.wrapping_add(m.seq_offset).wrapping_sub(before);
        let ts = in_ts.wrapping_add(m.ts_offset);
        if seq > m.highest_out_seq || m.highest_out_seq == u64::MAX {
            m.highest_out_seq = seq;
            m.last_out_ts = ts;
            m.last_arrival = now;
        }
        Some(Rewritten { seq, ts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn first_packet_gets_initial_values_and_offsets_hold() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 1000, 5000);
        assert!(
            r.rewrite(70_000, 1, t0).is_none(),
            "nothing before a source starts"
        );
        r.start_source(70_000, 123_456, t0);
        assert_eq!(
            r.rewrite(70_000, 123_456, t0),
            Some(Rewritten {
                seq: 1000,
                ts: 5000
            })
        );
        assert_eq!(
            r.rewrite(70_001, 126_456, at(t0, 33)),
            Some(Rewritten {
                seq: 1001,
                ts: 8000
            })
        );
    }

    #[test]
    fn upstream_hole_is_kept_and_filled_by_late_retransmission() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 10, 0);
        r.start_source(500, 0, t0);
        let a = r.rewrite(500, 0, t0).map(|x| x.seq);
        let c = r.rewrite(502, 3000, at(t0, 33)).map(|x| x.seq);
        let b = r.rewrite(501, 0, at(t0, 60)).map(|x| x.seq);
        assert_eq!((a, b, c), (Some(10), Some(11), Some(12)));
    }

    #[test]
    fn dropped_packets_leave_no_gap_and_late_packets_keep_their_numbers() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 100, 0);
        r.start_source(10, 0, t0);
        let seq = |r: &mut SeqTsRewriter, s: u64| r.rewrite(s, 0, t0).map(|x| x.seq);
        assert_eq!(seq(&mut r, 10), Some(100));
        // 12 arrives before 11; then 13 is dropped.
        assert_eq!(seq(&mut r, 12), Some(102));
        assert!(r.drop_packet(13));
        assert_eq!(seq(&mut r, 14), Some(103), "no gap where 13 was");
        // 11 comes late: it keeps its place.
        assert_eq!(seq(&mut r, 11), Some(101));
        // A late packet cannot be dropped any more: it is forwarded.
        assert!(!r.drop_packet(11));
        // A retransmission of the dropped packet is not forwarded.
        assert_eq!(seq(&mut r, 13), None);
        assert!(r.drop_packet(15));
        assert!(r.drop_packet(16));
        assert_eq!(seq(&mut r, 17), Some(104));
        // Many drops: the oldest are folded into the offset, numbering stays continuous.
        let mut next_in = 18;
        let mut last_out = 104;
        for _ in 0..2000 {
            assert!(r.drop_packet(next_in));
            let out = seq(&mut r, next_in + 1).unwrap();
            assert_eq!(out, last_out + 1);
            last_out = out;
            next_in += 2;
        }
        // Starting another source forgets the drops.
        r.start_source(50_000, 0, t0);
        assert_eq!(seq(&mut r, 50_000), Some(last_out + 1));
    }

    #[test]
    fn packets_older_than_the_source_start_are_refused() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 10, 0);
        r.start_source(500, 0, t0);
        assert!(r.rewrite(499, 0, t0).is_none());
    }

    #[test]
    fn switching_source_continues_sequence_and_advances_timestamp_by_elapsed_time() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 100, 1_000);
        r.start_source(10, 50_000, t0);
        let mut last = None;
        for i in 0..5u64 {
            last = r.rewrite(10 + i, 50_000 + 3000 * i as u32, at(t0, 33 * i));
        }
        assert_eq!(
            last,
            Some(Rewritten {
                seq: 104,
                ts: 13_000
            })
        );

        // The new layer has unrelated numbers; it arrives 100 ms after the last packet.
        let t_switch = at(t0, 33 * 4 + 100);
        r.start_source(40_000, 7, t_switch);
        let first = r.rewrite(40_000, 7, t_switch);
        assert_eq!(
            first,
            Some(Rewritten {
                seq: 105,
                ts: 13_000 + 9_000
            })
        );
        let second = r.rewrite(40_001, 7 + 3000, t_switch + Duration::from_millis(33));
        assert_eq!(
            second,
            Some(Rewritten {
                seq: 106,
                ts: 22_000 + 3000
            })
        );
        // A late packet of the old layer's numbering is refused, not written over new numbers.
        assert!(r.rewrite(14, 62_000, t_switch).is_none());
    }

    #[test]
    fn switch_in_the_same_instant_still_moves_time_forward() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(48_000, 0, u32::MAX - 10);
        r.start_source(1, 0, t0);
        assert_eq!(
            r.rewrite(1, 0, t0),
            Some(Rewritten {
                seq: 0,
                ts: u32::MAX - 10
            })
        );
        r.start_source(900, 0, t0);
        // One tick later, wrapping through zero.
        assert_eq!(
            r.rewrite(900, 0, t0),
            Some(Rewritten {
                seq: 1,
                ts: u32::MAX - 9
            })
        );
        r.start_source(5, 0, t0);
        let w = r.rewrite(5 + 20, 0, t0);
        assert_eq!(w.map(|x| x.seq), Some(2 + 20));
    }

    #[test]
    fn sequence_crosses_the_16_bit_boundary_in_the_extended_space() {
        let t0 = Instant::now();
        let mut r = SeqTsRewriter::new(90_000, 65_534, 0);
        r.start_source(7, 0, t0);
        let seqs: Vec<u64> = (7..11)
            .filter_map(|s| r.rewrite(s, 0, t0).map(|x| x.seq))
            .collect();
        assert_eq!(seqs, vec![65_534, 65_535, 65_536, 65_537]);
    }

    #[test]
    fn random_start_is_below_the_first_rollover() {
        for _ in 0..100 {
            let mut r = SeqTsRewriter::with_random_start(90_000);
            let t0 = Instant::now();
            r.start_source(1 << 40, 0, t0);
            let out = r.rewrite(1 << 40, 0, t0).map(|x| x.seq);
            assert!(out.is_some_and(|s| s < 1 << 15), "{out:?}");
        }
    }
}
