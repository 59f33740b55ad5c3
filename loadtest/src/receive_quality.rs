//! What a viewer experiences on one received stream, updated packet by packet: when the first
//! frame could be shown, frames, freezes (no new video frame for longer than [`FREEZE`]),
//! bytes, packets lost, the picture size and (audio) the interarrival jitter of RFC 3550.
//! Audio has no freezes: a sender in DTX (Opus's
//! discontinuous transmission) sends a packet every 400 ms or less while silent, which is
//! silence, not a stall; its sequence numbers stay consecutive, so it is not loss either.
//! Time is passed in; nothing here reads a clock.

use std::time::{Duration, Instant};

use crate::vp8_rtp;

/// A gap between two shown video frames longer than this is a freeze.
pub const FREEZE: Duration = Duration::from_millis(500);

/// Quality counters of one received stream.
#[derive(Debug, Clone, Default)]
pub struct StreamQuality {
    /// RTP packets received (retransmissions repaired by str0m included once).
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// First extended sequence number received.
    pub first_seq: Option<u64>,
    /// Highest extended sequence number received.
    pub highest_seq: Option<u64>,
    /// Frames that could be shown: video frames from the first keyframe on, or audio packets.
    pub frames: u64,
    /// When the first packet arrived.
    pub first_packet: Option<Instant>,
    /// When the first frame could be shown.
    pub first_frame: Option<Instant>,
    /// When the latest frame could be shown.
    pub last_frame: Option<Instant>,
    /// Freezes that have ended.
    pub freezes: u32,
    /// Total length of the freezes that have ended.
    pub freeze_time: Duration,
    /// Picture size from the latest keyframe (video).
    pub size: Option<(u16, u16)>,
    /// Whether the stream is video.
    pub video: bool,
    /// Interarrival jitter (RFC 3550, section 6.4.1), in seconds, once two packets with
    /// timing have arrived (see [`StreamQuality::on_timing`]).
    pub jitter: Option<f64>,
    /// Arrival and RTP timestamp of the latest packet with timing.
    last_timing: Option<(Instant, u32)>,
    decodable: bool,
    in_frame: bool,
}

impl StreamQuality {
    /// Records one packet. `video` says whether the payload is VP8.
    pub fn on_packet(&mut self, now: Instant, seq: u64, payload: &[u8], marker: bool, video: bool) {
        self.packets += 1;
        self.bytes += payload.len() as u64;
        self.first_seq = Some(self.first_seq.map_or(seq, |s| s.min(seq)));
        self.highest_seq = Some(self.highest_seq.map_or(seq, |s| s.max(seq)));
        self.first_packet.get_or_insert(now);
        self.video = video;
        if !video {
            self.first_frame.get_or_insert(now);
            self.last_frame = Some(now);
            self.frames += 1;
            return;
        }
        if vp8_rtp::starts_frame(payload) {
            if let Some(size) = vp8_rtp::keyframe_size(payload) {
                self.size = Some(size);
                self.decodable = true;
            }
            self.in_frame = self.decodable;
        }
        if marker && self.in_frame {
            self.in_frame = false;
            self.frame_shown(now);
        }
    }

    fn frame_shown(&mut self, now: Instant) {
        if let Some(last) = self.last_frame {
            let gap = now.saturating_duration_since(last);
            if gap > FREEZE {
                self.freezes += 1;
                self.freeze_time += gap;
            }
        }
        self.first_frame.get_or_insert(now);
        self.last_frame = Some(now);
        self.frames += 1;
    }

    /// Records when a packet with RTP timestamp `rtp_ts` (at `clock_rate` Hz) arrived: the
    /// jitter estimate moves by 1/16 of how much later or earlier than the previous packet it
    /// came, relative to their timestamps. Meant for audio, where every packet has its own
    /// timestamp (a video frame's packets share one).
    pub fn on_timing(&mut self, now: Instant, rtp_ts: u32, clock_rate: u32) {
        if let Some((at, ts)) = self.last_timing {
            let arrival = if now >= at {
                now.duration_since(at).as_secs_f64()
            } else {
                -at.duration_since(now).as_secs_f64()
            };
            let sent = f64::from(rtp_ts.wrapping_sub(ts) as i32) / f64::from(clock_rate.max(1));
            let d = (arrival - sent).abs();
            let j = self.jitter.unwrap_or(0.0);
            self.jitter = Some(j + (d - j) / 16.0);
        }
        self.last_timing = Some((now, rtp_ts));
    }

    /// Packets the sequence numbers say were sent from the first to the highest received.
    pub fn expected(&self) -> u64 {
        match (self.first_seq, self.highest_seq) {
            (Some(lo), Some(hi)) => hi - lo + 1,
            _ => 0,
        }
    }

    /// Packets missing (never negative: duplicates do not make up for losses).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }

    /// Freezes and their total length, counting one still going on at `now` (video only).
    pub fn freezes_at(&self, now: Instant) -> (u32, Duration) {
        match self.last_frame {
            Some(last) if self.video && now.saturating_duration_since(last) > FREEZE => (
                self.freezes + 1,
                self.freeze_time + now.saturating_duration_since(last),
            ),
            _ => (self.freezes, self.freeze_time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(keyframe: bool) -> Vec<u8> {
        let mut f = vec![
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00, 0, 0,
        ];
        if !keyframe {
            f[0] |= 1;
        }
        vp8_rtp::packetize(&f, 0).remove(0)
    }

    #[test]
    fn first_frame_waits_for_a_keyframe_and_gaps_are_freezes() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = StreamQuality::default();
        q.on_packet(ms(10), 100, &frame(false), true, true);
        assert_eq!(q.first_frame, None, "an inter frame cannot be shown first");
        q.on_packet(ms(40), 101, &frame(true), true, true);
        assert_eq!(q.first_frame, Some(ms(40)));
        assert_eq!(q.size, Some((320, 180)));
        q.on_packet(ms(70), 102, &frame(false), true, true);
        q.on_packet(ms(900), 104, &frame(false), true, true);
        assert_eq!((q.freezes, q.freeze_time), (1, Duration::from_millis(830)));
        assert_eq!((q.expected(), q.packets, q.lost()), (5, 4, 1));
        assert_eq!(q.freezes_at(ms(1000)).0, 1);
        assert_eq!(
            q.freezes_at(ms(1500)),
            (2, Duration::from_millis(830 + 600))
        );
    }

    #[test]
    fn jitter_stays_zero_on_time_and_grows_with_late_packets() {
        let t0 = Instant::now();
        let mut q = StreamQuality::default();
        let ts0 = u32::MAX - 960; // the timestamps wrap on the way
        for i in 0..50u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            q.on_timing(at, ts0.wrapping_add(i * 960), 48_000);
        }
        assert!(q.jitter.unwrap() < 1e-9, "{:?}", q.jitter);
        // Every other packet 10 ms late: each difference is 10 ms, so J tends to 10 ms.
        for i in 50..400u32 {
            let late = if i % 2 == 0 { 10 } else { 0 };
            let at = t0 + Duration::from_millis(u64::from(i) * 20 + late);
            q.on_timing(at, ts0.wrapping_add(i * 960), 48_000);
        }
        let j = q.jitter.unwrap();
        assert!((0.0095..=0.0105).contains(&j), "{j}");
    }

    #[test]
    fn every_audio_packet_is_a_frame() {
        let t0 = Instant::now();
        let mut q = StreamQuality::default();
        q.on_packet(t0, 7, &[0xf8, 1, 2], false, false);
        q.on_packet(t0, 8, &[0xf8, 1, 2], false, false);
        assert_eq!((q.frames, q.first_frame), (2, Some(t0)));
    }

    #[test]
    fn an_audio_stream_in_dtx_is_neither_frozen_nor_lossy() {
        let t0 = Instant::now();
        let mut q = StreamQuality::default();
        // Speech every 20 ms, then silence: one DTX packet every 400 ms, then a long pause.
        let mut seq = 100;
        let mut at = Vec::new();
        for i in 0..50 {
            at.push(i * 20);
        }
        for i in 1..=10 {
            at.push(1_000 + i * 400);
        }
        at.push(8_000);
        for ms in at {
            q.on_packet(
                t0 + Duration::from_millis(ms),
                seq,
                &[0xf8, 1],
                false,
                false,
            );
            seq += 1;
        }
        assert_eq!(
            q.freezes_at(t0 + Duration::from_secs(9)),
            (0, Duration::ZERO)
        );
        assert_eq!(q.lost(), 0);
    }
}
