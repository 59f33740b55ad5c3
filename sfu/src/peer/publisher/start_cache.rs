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
/// At most this many payload bytes per stream (a 720p keyframe is 30-60 KB; 500 ms of a
/// 2.5 Mbit/s stream is ~160 KB).
pub(crate) const START_CACHE_BYTES: usize = 256 * 1024;

/// The latest group of pictures of one incoming stream, from its keyframe on.
#[derive(Debug, Default)]
pub(crate) struct StartCache {
    packets: Vec<Arc<ForwardedPacket>>,
    /// Payload bytes in `packets`.
    bytes: usize,
    /// The keyframe's RTP timestamp and arrival, while the group is complete.
    key: Option<(u32, Instant)>,
}

impl StartCache {
    /// Keeps `packet` if it starts a keyframe or follows one within the bounds.
    pub(crate) fn on_packet(&mut self, packet: &Arc<ForwardedPacket>) {
        let same_picture = self.key.is_some_and(|(ts, _)| ts == packet.ts);
        if packet.keyframe && !same_picture {
            // A new group. Packets of this keyframe's picture that arrived before its first
            // one (reordered) belong to it.
            self.packets.retain(|p| p.ts == packet.ts);
            self.bytes = self.packets.iter().map(|p| p.payload.len()).sum();
            self.key = Some((packet.ts, packet.arrival));
        }
        let Some((_, since)) = self.key else {
            return;
        };
        let bytes = self.bytes + packet.payload.len();
        if bytes > START_CACHE_BYTES
            || packet.arrival.saturating_duration_since(since) > START_CACHE_AGE
        {
            self.clear();
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

    /// Forgets the group: packets of the stream were not seen (muted, nobody received them),
    /// so what follows would not decode from it.
    pub(crate) fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.key = None;
    }
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
    fn a_reordered_packet_of_the_keyframe_stays_with_it() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(5, true, 100, t0));
        cache.on_packet(&packet(10, false, 100, t0)); // the keyframe's second packet, early
        cache.on_packet(&packet(10, true, 100, t0));
        let group = cache.fresh(t0).expect("a group");
        assert_eq!(group.iter().map(|p| p.ts).collect::<Vec<_>>(), [10, 10]);
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
        cache.on_packet(&packet(10, true, START_CACHE_BYTES - 100, t0));
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
    fn cleared_until_the_next_keyframe() {
        let t0 = Instant::now();
        let mut cache = StartCache::default();
        cache.on_packet(&packet(10, true, 100, t0));
        cache.clear();
        cache.on_packet(&packet(20, false, 100, t0));
        assert!(cache.fresh(t0).is_none());
    }
}
