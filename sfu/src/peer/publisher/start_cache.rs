//! A published video stream's packets from its latest keyframe on, for a subscriber that joins
//! to start with at once.
//!
//! Without it a new subscriber waits for a keyframe: its request travels to the publisher (and
//! through the throttle that merges a join burst's requests), the encoder makes one, and it
//! comes back. A keyframe that went out less than [`START_CACHE_AGE`] ago, with every packet
//! after it, starts the subscriber instead: it decodes the keyframe and the frames since and is
//! at the live edge, and the publisher is not asked for another keyframe. The cache holds one
//! group of pictures per incoming stream, bounded by age and by [`START_CACHE_BYTES`]; past
//! either bound it is dropped until the next keyframe (a partial group would not decode).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::packet::ForwardedPacket;

/// How old a keyframe may be to start a subscriber with (it and the frames after it are sent
/// at once, so the subscriber's first moments are spent catching up to the live edge). The
/// publisher's keyframe throttle lets one request through per 500 ms: in a join burst, the
/// joins between two keyframes start from the cache.
pub(crate) const START_CACHE_AGE: Duration = Duration::from_millis(500);
/// At most this many bytes per stream (a 720p keyframe is 30-60 KB; 500 ms of a 2.5 Mbit/s
/// stream is ~160 KB), each packet counted with [`PACKET_OVERHEAD`] beside its payload.
pub(crate) const START_CACHE_BYTES: usize = 256 * 1024;
/// What a kept packet costs beyond its payload (its record and reference): also what bounds
/// the count of tiny packets.
const PACKET_OVERHEAD: usize = 256;

/// The latest group of pictures of one incoming stream, from its keyframe on.
#[derive(Debug, Default)]
pub(crate) struct StartCache {
    packets: Vec<Arc<ForwardedPacket>>,
    /// What `packets` cost (see [`cost`]).
    bytes: usize,
    /// The keyframe's RTP timestamp and arrival, while the group is complete.
    key: Option<(u32, Instant)>,
    /// A picture some of whose packets were not kept: a keyframe flag on another of its
    /// packets (an H264 IDR's later slice) starts no group.
    spoiled: Option<u32>,
}

impl StartCache {
    /// Keeps `packet` if it starts a keyframe or follows one within the bounds.
    pub(crate) fn on_packet(&mut self, packet: &Arc<ForwardedPacket>) {
        let same_picture = self.key.is_some_and(|(ts, _)| ts == packet.ts);
        if packet.keyframe && !same_picture && self.spoiled != Some(packet.ts) {
            // A new group. Packets of this keyframe's picture that arrived before its first
            // one (reordered) belong to it, after it (a subscriber starts at the packet that
            // starts the keyframe).
            self.packets.retain(|p| p.ts == packet.ts);
            self.packets.push(packet.clone());
            self.packets.sort_by_key(|p| p.seq);
            self.bytes = self.packets.iter().map(|p| cost(p)).sum();
            self.key = Some((packet.ts, packet.arrival));
            self.spoiled = None;
            if self.bytes > START_CACHE_BYTES {
                self.spoil(packet.ts);
            }
            return;
        }
        let Some((_, since)) = self.key else {
            return;
        };
        let bytes = self.bytes + cost(packet);
        if bytes > START_CACHE_BYTES
            || packet.arrival.saturating_duration_since(since) > START_CACHE_AGE
        {
            self.spoil(packet.ts);
            return;
        }
        self.bytes = bytes;
        self.packets.push(packet.clone());
    }

    /// The group to start a subscriber with, if its keyframe is recent enough at `now`.
    pub(crate) fn fresh(&self, now: Instant) -> Option<&[Arc<ForwardedPacket>]> {
        let (_, since) = self.key?;
        (now.saturating_duration_since(since) <= START_CACHE_AGE).then_some(&self.packets[..])
    }

    /// A packet of picture `ts` was not kept (muted, nobody received it): the group is
    /// forgotten, since what follows would not decode from it.
    pub(crate) fn spoil(&mut self, ts: u32) {
        self.packets.clear();
        self.forget();
        self.spoiled = Some(ts);
    }

    /// Forgets a group too old to be offered (its stream may have stopped: nothing else would
    /// let its packets go).
    pub(crate) fn expire(&mut self, now: Instant) {
        if self.key.is_some() && self.fresh(now).is_none() {
            // Its room too: the stream may not come back.
            self.packets = Vec::new();
            self.forget();
        }
    }

    /// No group any more (`packets` emptied by the caller).
    fn forget(&mut self) {
        self.bytes = 0;
        self.key = None;
    }
}

/// What keeping `packet` costs.
fn cost(packet: &ForwardedPacket) -> usize {
    packet.payload.len() + PACKET_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::video_packet;

    fn packet(ts: u32, keyframe: bool, bytes: usize, at: Instant) -> Arc<ForwardedPacket> {
        Arc::new(video_packet(ts, keyframe, bytes, at))
    }

    #[test]
    fn holds_the_group_from_the_latest_keyframe() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(1, false, 100, t0));
        assert!(cache.fresh(t0).is_none(), "nothing before a keyframe");
        for (i, ts) in [10u32, 10, 20, 30].into_iter().enumerate() {
            cache.on_packet(&packet(ts, i == 0, 100, t0));
        }
        let group = cache.fresh(t0).expect("a group");
        assert_eq!(
            group.iter().map(|p| p.ts).collect::<Vec<_>>(),
            [10, 10, 20, 30]
        );
        let later = t0 + Duration::from_millis(100);
        cache.on_packet(&packet(40, true, 100, later));
        cache.on_packet(&packet(50, false, 100, later));
        let group = cache.fresh(later).expect("a group");
        assert_eq!(group.iter().map(|p| p.ts).collect::<Vec<_>>(), [40, 50]);
    }

    #[test]
    fn a_keyframe_flag_on_several_packets_of_one_picture_keeps_them_all() {
        // H264: parameter sets and the IDR slice can each be read as starting the keyframe.
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(10, true, 50, t0));
        cache.on_packet(&packet(10, true, 900, t0));
        cache.on_packet(&packet(20, false, 100, t0));
        assert_eq!(cache.fresh(t0).map(<[_]>::len), Some(3));
    }

    #[test]
    fn a_reordered_packet_of_the_keyframe_stays_with_it_after_the_first() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(5, true, 100, t0));
        // The keyframe's second packet (seq 11), early.
        cache.on_packet(&Arc::new(ForwardedPacket {
            seq: 11,
            ..video_packet(10, false, 100, t0)
        }));
        cache.on_packet(&packet(10, true, 100, t0));
        let group = cache.fresh(t0).expect("a group");
        let order: Vec<_> = group.iter().map(|p| (p.seq, p.keyframe)).collect();
        assert_eq!(order, [(10, true), (11, false)]);
    }

    #[test]
    fn a_keyframe_whose_first_packets_were_not_kept_starts_no_group() {
        // An H264 IDR in slices: the first ones went nowhere (nobody received the track),
        // then a later slice also reads as starting the keyframe.
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.spoil(10);
        cache.on_packet(&packet(10, true, 100, t0));
        cache.on_packet(&packet(20, false, 100, t0));
        assert!(cache.fresh(t0).is_none());
        cache.on_packet(&packet(30, true, 100, t0));
        assert_eq!(cache.fresh(t0).map(<[_]>::len), Some(1));
        // Past the byte bound within the keyframe: the rest of that picture starts nothing.
        cache.on_packet(&packet(40, true, START_CACHE_BYTES, t0));
        cache.on_packet(&packet(40, true, 100, t0));
        assert!(cache.fresh(t0).is_none());
    }

    #[test]
    fn tiny_packets_are_bounded_by_count_too() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(0, true, 0, t0));
        for ts in 1..10_000 {
            cache.on_packet(&packet(ts, false, 0, t0));
        }
        assert!(cache.packets.len() <= START_CACHE_BYTES / PACKET_OVERHEAD);
    }

    #[test]
    fn an_expired_group_is_let_go() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(10, true, 100, t0));
        cache.expire(t0 + START_CACHE_AGE);
        assert!(cache.fresh(t0).is_some(), "not yet");
        cache.expire(t0 + START_CACHE_AGE * 2);
        assert!(cache.packets.is_empty() && cache.key.is_none());
    }

    #[test]
    fn an_old_or_large_group_is_not_offered() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(10, true, 100, t0));
        assert!(cache.fresh(t0 + START_CACHE_AGE).is_some());
        assert!(
            cache
                .fresh(t0 + START_CACHE_AGE + Duration::from_millis(1))
                .is_none()
        );
        // A packet past the age drops the group until the next keyframe.
        cache.on_packet(&packet(20, false, 100, t0 + START_CACHE_AGE * 2));
        cache.on_packet(&packet(30, false, 100, t0 + START_CACHE_AGE * 2));
        assert!(cache.fresh(t0 + START_CACHE_AGE * 2).is_none());

        let mut cache = StartCache::default();
        cache.on_packet(&packet(
            10,
            true,
            START_CACHE_BYTES - 100 - 2 * PACKET_OVERHEAD,
            t0,
        ));
        cache.on_packet(&packet(20, false, 100, t0));
        assert!(cache.fresh(t0).is_some(), "up to the byte bound");
        cache.on_packet(&packet(30, false, 1, t0));
        assert!(cache.fresh(t0).is_none(), "past it, dropped");
        cache.on_packet(&packet(40, false, 1, t0));
        assert!(
            cache.fresh(t0).is_none(),
            "and not resumed before a keyframe"
        );
        cache.on_packet(&packet(50, true, 1, t0));
        assert_eq!(cache.fresh(t0).map(<[_]>::len), Some(1));
    }

    #[test]
    fn spoiled_until_the_next_keyframe() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(10, true, 100, t0));
        cache.spoil(15);
        cache.on_packet(&packet(20, false, 100, t0));
        assert!(cache.fresh(t0).is_none());
    }
}
