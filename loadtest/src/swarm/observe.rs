//! A bot's counters at one moment, copied out of its state without its message log: what the
//! swarm's progress line and report are computed from.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::bot::{Bot, BotState};

/// One received stream at one moment.
#[derive(Debug, Clone)]
pub struct StreamSnapshot {
    /// Video (VP8) rather than audio.
    pub video: bool,
    /// The publisher's participant id, from the subscribe offer (`None` over WHEP).
    pub publisher: Option<String>,
    /// Packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets the sequence numbers say were sent.
    pub expected: u64,
    /// Packets missing.
    pub lost: u64,
    /// Frames shown.
    pub frames: u64,
    /// Freezes, one going on now included.
    pub freezes: u32,
    /// A freeze is going on now.
    pub frozen: bool,
    /// Their total length.
    pub freeze_time: Duration,
    /// When the first frame could be shown.
    pub first_frame: Option<Instant>,
    /// Picture size of the latest keyframe.
    pub size: Option<(u16, u16)>,
    /// Simulcast layer (synthetic media only: 0 = lowest).
    pub layer: Option<u8>,
    /// Interarrival jitter (audio), ms.
    pub jitter_ms: Option<f64>,
}

/// A bot at one moment.
#[derive(Debug, Clone, Default)]
pub struct BotSnapshot {
    /// Our participant id.
    pub participant: Option<String>,
    /// When the bot started.
    pub started: Option<Instant>,
    /// When the server accepted it.
    pub joined_at: Option<Instant>,
    /// Why it stopped, if it has.
    pub ended: Option<String>,
    /// The first error the server sent.
    pub error: Option<String>,
    /// Received streams.
    pub streams: Vec<StreamSnapshot>,
    /// NACKs sent as a subscriber.
    pub nacks_sent: u64,
    /// PLIs and FIRs sent as a subscriber.
    pub plis_sent: u64,
    /// Media packets sent as a publisher.
    pub packets_sent: u64,
    /// Keyframe requests received as a publisher.
    pub keyframe_requests: u64,
    /// Synthetic payloads that failed verification.
    pub bad_payloads: u64,
}

impl BotSnapshot {
    /// Copies the counters of `bot` (its state lock is held only for the copy).
    pub fn take(bot: &Bot, now: Instant) -> BotSnapshot {
        bot.with_state(|s| Self::of(s, now))
    }

    /// The counters of a state.
    pub fn of(s: &BotState, now: Instant) -> BotSnapshot {
        let (nacks_sent, plis_sent) = s.feedback_sent();
        let streams = s
            .streams
            .values()
            .map(|st| {
                let q = &st.quality;
                let video = q.video;
                let (freezes, freeze_time) = if video {
                    q.freezes_at(now)
                } else {
                    (0, Duration::ZERO)
                };
                StreamSnapshot {
                    video,
                    publisher: s.offered.get(&st.mid).map(|(p, _)| p.clone()),
                    packets: q.packets,
                    bytes: q.bytes,
                    expected: q.expected(),
                    lost: q.lost(),
                    frames: q.frames,
                    freezes,
                    frozen: freezes > q.freezes,
                    freeze_time,
                    first_frame: q.first_frame,
                    size: q.size,
                    layer: st.layer,
                    jitter_ms: q.jitter.map(|j| j * 1000.0),
                }
            })
            .collect();
        BotSnapshot {
            participant: s.participant.clone(),
            started: s.started,
            joined_at: s.joined_at,
            ended: s.ended.clone(),
            error: s
                .error()
                .map(|(code, message)| format!("{code:?}: {message}")),
            streams,
            nacks_sent,
            plis_sent,
            packets_sent: s.packets_sent,
            keyframe_requests: s.keyframe_requests,
            bad_payloads: s.bad_payloads,
        }
    }

    /// Whether the server accepted the bot.
    pub fn joined(&self) -> bool {
        self.joined_at.is_some()
    }

    /// Time from start to the first video frame that could be shown (with `video` false, in
    /// an audio-only run: to the first audio packet).
    pub fn time_to_first_frame(&self, video: bool) -> Option<Duration> {
        let first = self
            .streams
            .iter()
            .filter(|s| s.video == video)
            .filter_map(|s| s.first_frame)
            .min()?;
        Some(first.saturating_duration_since(self.started?))
    }

    /// Publishers whose audio and video have both arrived (with `video` false, in an
    /// audio-only run: whose audio has); a WHEP viewer's one publisher has no id: it counts
    /// once.
    pub fn complete_publishers(&self, video: bool) -> usize {
        let with = |video: bool| -> BTreeSet<Option<&str>> {
            self.streams
                .iter()
                .filter(|s| s.video == video && s.packets > 0 && (!video || s.frames > 0))
                .map(|s| s.publisher.as_deref())
                .collect()
        };
        if video {
            with(true).intersection(&with(false)).count()
        } else {
            with(false).len()
        }
    }

    /// Packets received on the video (or audio) streams.
    pub fn packets_of(&self, video: bool) -> u64 {
        self.streams
            .iter()
            .filter(|s| s.video == video)
            .map(|s| s.packets)
            .sum()
    }

    /// Packets expected and lost on the video (or audio) streams.
    pub fn expected_and_lost_of(&self, video: bool) -> (u64, u64) {
        self.streams
            .iter()
            .filter(|s| s.video == video)
            .fold((0, 0), |(e, l), s| (e + s.expected, l + s.lost))
    }

    /// Jitter of each audio stream that has an estimate, ms.
    pub fn audio_jitter_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.streams
            .iter()
            .filter(|s| !s.video)
            .filter_map(|s| s.jitter_ms)
    }

    /// Whether a video stream is frozen now.
    pub fn frozen(&self) -> bool {
        self.streams.iter().any(|s| s.frozen)
    }

    /// Packets received on every stream.
    pub fn packets(&self) -> u64 {
        self.streams.iter().map(|s| s.packets).sum()
    }

    /// Payload bytes received on every stream.
    pub fn bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.bytes).sum()
    }

    /// Packets expected and lost on every stream.
    pub fn expected_and_lost(&self) -> (u64, u64) {
        self.streams
            .iter()
            .fold((0, 0), |(e, l), s| (e + s.expected, l + s.lost))
    }

    /// Freezes and their total length over the video streams.
    pub fn freezes(&self) -> (u32, Duration) {
        self.streams.iter().fold((0, Duration::ZERO), |(n, t), s| {
            (n + s.freezes, t + s.freeze_time)
        })
    }

    /// Picture sizes of the video streams, as `"1280x720"`.
    pub fn sizes(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter(|s| s.video)
            .map(|s| match (s.size, s.layer) {
                (_, Some(layer)) => ["q", "h", "f"]
                    .get(usize::from(layer))
                    .map_or_else(|| format!("layer {layer}"), |r| format!("layer {r}")),
                (Some((w, h)), None) => format!("{w}x{h}"),
                (None, None) => "none".to_string(),
            })
            .collect()
    }
}
