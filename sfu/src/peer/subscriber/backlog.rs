//! The bound on a subscriber's egress backlog: how long a packet may wait in str0m's send
//! queue (behind its pacer) before the queue counts as stuck and new packets are dropped
//! instead of written, so that a subscriber that cannot be sent to as fast as it is written
//! to (a worker out of CPU, an estimate fallen to nothing) costs bounded memory and loses
//! its own packets, not other peers' time. str0m keeps the queue and has no way to drop its
//! head; refusing the tail is what it allows, and the receiver sees an honest gap (NACK, then
//! PLI for video; concealment for audio).

use std::time::{Duration, Instant};

use str0m::rtp::StreamTxQueueInfo;

/// Audio is sent unpaced: a queue this old means the worker is not keeping up. Past it,
/// late audio is worth less than the memory it holds.
pub(super) const MAX_AUDIO_WAIT: Duration = Duration::from_millis(500);

/// Video is paced at the estimate, and str0m's pacer speeds up to empty a queue within 2 s;
/// older than this, it is not emptying.
pub(super) const MAX_VIDEO_WAIT: Duration = Duration::from_secs(3);

/// Whether the stream's queue (`info`, as str0m last sampled it) has held a packet longer
/// than a `video` or audio stream may: the next packet is dropped, not queued.
pub(super) fn is_stuck(info: Option<&dyn StreamTxQueueInfo>, now: Instant, video: bool) -> bool {
    let limit = if video {
        MAX_VIDEO_WAIT
    } else {
        MAX_AUDIO_WAIT
    };
    info.and_then(|info| info.first_unsent())
        .is_some_and(|oldest| now.saturating_duration_since(oldest) > limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sampled queue whose oldest packet was queued at `first_unsent`.
    struct Sampled {
        first_unsent: Option<Instant>,
    }

    impl StreamTxQueueInfo for Sampled {
        fn created_at(&self) -> Instant {
            Instant::now()
        }
        fn byte_size(&self) -> usize {
            0
        }
        fn packet_count(&self) -> usize {
            usize::from(self.first_unsent.is_some())
        }
        fn first_unsent(&self) -> Option<Instant> {
            self.first_unsent
        }
    }

    fn stuck(waited: Option<Duration>, video: bool) -> bool {
        let now = Instant::now() + Duration::from_secs(10);
        let info = Sampled {
            first_unsent: waited.map(|w| now - w),
        };
        is_stuck(Some(&info), now, video)
    }

    #[test]
    fn an_empty_or_unsampled_queue_is_not_stuck() {
        assert!(!stuck(None, false));
        assert!(!stuck(None, true));
        assert!(!is_stuck(None, Instant::now(), false));
    }

    #[test]
    fn audio_waits_half_a_second_and_video_three() {
        assert!(!stuck(Some(MAX_AUDIO_WAIT), false));
        assert!(stuck(
            Some(MAX_AUDIO_WAIT + Duration::from_millis(1)),
            false
        ));
        // A paced keyframe may wait longer than audio ever should.
        assert!(!stuck(Some(Duration::from_secs(1)), true));
        assert!(!stuck(Some(MAX_VIDEO_WAIT), true));
        assert!(stuck(Some(MAX_VIDEO_WAIT + Duration::from_millis(1)), true));
    }
}
