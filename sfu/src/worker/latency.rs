//! Sampling the SFU-added latency of forwarded packets.
//!
//! One forwarded packet in [`SAMPLE_EVERY`] is remembered by its outgoing SSRC and sequence
//! number with the time its publisher's datagram was read. When a datagram carrying it
//! leaves the socket (an SRTP packet's RTP header is in the clear), the time since is one
//! sample: the whole path through the worker, queues and the subscriber's pacer included.
//! Bounded: at most [`MAX_PENDING`] samples wait; the oldest is forgotten when another comes
//! (a packet the pacer dropped, or one that left over ICE-TCP, which is not sampled).

use std::collections::VecDeque;
use std::time::Instant;

/// One forwarded packet in this many is sampled.
pub(crate) const SAMPLE_EVERY: u32 = 64;
/// Samples waiting for their packet to be sent, at most.
pub(crate) const MAX_PENDING: usize = 16;

/// One worker's samples on their way to the socket.
#[derive(Debug, Default)]
pub(crate) struct LatencySampler {
    pending: VecDeque<Pending>,
    /// Forwarded packets until the next sample.
    countdown: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ssrc: u32,
    seq: u16,
    arrival: Instant,
}

impl LatencySampler {
    /// A packet was written to a subscriber as `ssrc`/`seq`; its original arrived at `arrival`.
    #[inline]
    pub(crate) fn on_forward(&mut self, ssrc: u32, seq: u16, arrival: Instant) {
        if let Some(left) = self.countdown.checked_sub(1) {
            self.countdown = left;
            return;
        }
        self.countdown = SAMPLE_EVERY - 1;
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending { ssrc, seq, arrival });
    }

    /// Whether a sample waits for its packet (sends need not be looked at otherwise).
    #[inline]
    pub(crate) fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A datagram is being sent: when the sampled packet it carries arrived, if it carries
    /// one (the caller reads the clock only then).
    pub(crate) fn on_send(&mut self, datagram: &[u8]) -> Option<Instant> {
        let (ssrc, seq) = rtp_ids(datagram)?;
        let at = self
            .pending
            .iter()
            .position(|p| p.ssrc == ssrc && p.seq == seq)?;
        self.pending.remove(at).map(|sample| sample.arrival)
    }
}

/// The SSRC and sequence number of an (S)RTP packet; `None` for RTCP, STUN, DTLS and
/// anything too short.
fn rtp_ids(datagram: &[u8]) -> Option<(u32, u16)> {
    let header: &[u8; 12] = datagram.first_chunk()?;
    let [first, second, seq_hi, seq_lo, _, _, _, _, ssrc @ ..] = *header;
    // RTCP packet types 192-223 share the second byte's range with marker + payload type.
    if first >> 6 != 2 || (192..=223).contains(&second) {
        return None;
    }
    Some((
        u32::from_be_bytes(ssrc),
        u16::from_be_bytes([seq_hi, seq_lo]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xaa; 20]);
        p
    }

    #[test]
    fn a_sampled_packet_is_timed_when_it_leaves_and_only_once() {
        let t0 = Instant::now();
        let mut s = LatencySampler::default();
        s.on_forward(7, 100, t0);
        assert!(s.is_waiting());
        assert_eq!(s.on_send(&rtp(7, 99)), None, "another packet");
        assert_eq!(s.on_send(&rtp(8, 100)), None, "another stream");
        assert_eq!(s.on_send(&rtp(7, 100)), Some(t0));
        assert_eq!(s.on_send(&rtp(7, 100)), None);
        assert!(!s.is_waiting());
    }

    #[test]
    fn one_packet_in_sample_every_is_sampled_and_the_wait_is_bounded() {
        let t0 = Instant::now();
        let mut s = LatencySampler::default();
        for seq in 0..(SAMPLE_EVERY as u16 * 100) {
            s.on_forward(1, seq, t0);
        }
        assert_eq!(s.pending.len(), MAX_PENDING);
        // The newest samples are the ones kept: seq 0, 64, 128, ... the last 16 of them.
        let newest = (SAMPLE_EVERY as u16) * 99;
        assert!(s.on_send(&rtp(1, newest)).is_some());
        assert_eq!(s.on_send(&rtp(1, 0)), None, "forgotten");
        assert_eq!(s.on_send(&rtp(1, 1)), None, "never sampled");
    }

    #[test]
    fn rtcp_and_short_or_foreign_datagrams_are_not_rtp() {
        let mut rr = rtp(1, 0);
        rr[1] = 201;
        assert_eq!(rtp_ids(&rr), None);
        assert_eq!(rtp_ids(&[0x80, 96, 0]), None);
        let mut stun = rtp(1, 0);
        stun[0] = 0x00;
        assert_eq!(rtp_ids(&stun), None);
        assert_eq!(
            rtp_ids(&rtp(0xdead_beef, 65_535)),
            Some((0xdead_beef, 65_535))
        );
    }
}
