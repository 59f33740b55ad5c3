//! What a publishing bot sends, as RTP payloads with the bot's own sequence numbers and
//! timestamps: synthetic payloads that receivers verify byte for byte, the swarm's
//! pre-encoded clip replayed at its frame rate, or frames encoded live by the device
//! publisher. No I/O and no clock: the bot passes `now` in and writes what comes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::clip::Clip;
use crate::media_encode::{EncodedAudio, EncodedVideo};
use crate::synthetic::{PayloadKind, Signature};
use crate::vp8_rtp;

/// Where a publishing bot's media comes from.
#[derive(Clone, Default)]
pub enum MediaSource {
    /// Synthetic payloads carrying a [`Signature`] (see [`crate::synthetic`]).
    #[default]
    Synthetic,
    /// The pre-encoded clip, replayed in a loop.
    Clip(Arc<Clip>),
    /// Frames encoded elsewhere (the device publisher), handed over as they come.
    Live(LiveFeed),
}

impl std::fmt::Debug for MediaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaSource::Synthetic => f.write_str("Synthetic"),
            MediaSource::Clip(c) => write!(f, "Clip({} frames)", c.frames()),
            MediaSource::Live(_) => f.write_str("Live"),
        }
    }
}

/// An encoded frame for a bot fed live.
#[derive(Debug, Clone)]
pub enum LiveFrame {
    /// A video frame of one layer.
    Video(EncodedVideo),
    /// A 20 ms audio packet.
    Audio(EncodedAudio),
}

/// Keyframe requests from the server, per layer, for an encoder running elsewhere.
#[derive(Debug, Default)]
pub struct KeyframeRequests {
    layers: [AtomicBool; 3],
}

impl KeyframeRequests {
    /// Asks for a keyframe on `layer`.
    pub fn request(&self, layer: usize) {
        if let Some(flag) = self.layers.get(layer) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a keyframe was asked for on `layer` since the last call (and clears it).
    pub fn take(&self, layer: usize) -> bool {
        self.layers
            .get(layer)
            .is_some_and(|flag| flag.swap(false, Ordering::Relaxed))
    }
}

/// The two ends between a live encoder and its bot.
#[derive(Clone)]
pub struct LiveFeed {
    frames: Arc<Mutex<Option<mpsc::Receiver<LiveFrame>>>>,
    /// Keyframe requests for the encoder.
    pub keyframes: Arc<KeyframeRequests>,
}

impl LiveFeed {
    /// A feed and the sender the encoder writes frames into.
    pub fn new(capacity: usize) -> (LiveFeed, mpsc::Sender<LiveFrame>) {
        let (tx, rx) = mpsc::channel(capacity);
        let feed = LiveFeed {
            frames: Arc::new(Mutex::new(Some(rx))),
            keyframes: Arc::default(),
        };
        (feed, tx)
    }

    /// The receiving end (once).
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<LiveFrame>> {
        self.frames.lock().take()
    }
}

/// Parameters of synthetic video.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyntheticVideo {
    pub(crate) tag: u32,
    pub(crate) fps: u32,
    pub(crate) packets_per_frame: u32,
    pub(crate) packet_bytes: usize,
    pub(crate) keyframe_interval: u32,
}

/// One RTP packet to write.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// Video layer index, or `None` for audio.
    pub(crate) layer: Option<usize>,
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    pub(crate) marker: bool,
    pub(crate) payload: Vec<u8>,
    /// Audio level for the RFC 6464 extension (audio only; `None`: the bot's own).
    pub(crate) level: Option<i8>,
}

/// One outgoing video stream's numbering.
struct LayerOut {
    seq: u64,
    picture_id: u16,
    packet: u32,
    packets_per_frame: u32,
    force_keyframe: bool,
}

enum Source {
    Synthetic(SyntheticVideo),
    Clip { clip: Arc<Clip>, pos: usize },
    Live { keyframes: Arc<KeyframeRequests> },
}

/// The media clock and numbering of one publishing bot.
pub(crate) struct MediaOut {
    source: Source,
    layers: Vec<LayerOut>,
    fps: u32,
    frame: u32,
    ts_base: u32,
    audio_seq: u64,
    audio_packet: u32,
    audio_ts_base: u32,
    next_video: Instant,
    next_audio: Instant,
    started: Instant,
    /// No audio is sent while set.
    pub(crate) audio_muted: bool,
}

/// A stall longer than this skips ahead rather than bursting.
const MAX_CATCH_UP: Duration = Duration::from_millis(500);

impl MediaOut {
    /// `layers` outgoing video streams (lowest first; none for an audio-only publisher),
    /// numbering from random starts.
    pub(crate) fn new(
        source: &MediaSource,
        synthetic: SyntheticVideo,
        layers: usize,
        now: Instant,
    ) -> MediaOut {
        // Below 2^14 so the rollover counter stays 0 for a long time (see STR0M notes).
        let start = u64::from(rand::random::<u16>() >> 2);
        let ppf = synthetic.packets_per_frame.max(1);
        let per_layer = |i: usize| match layers {
            1 => ppf,
            _ => [(ppf / 4).max(1), (ppf / 2).max(1), ppf]
                .get(i)
                .copied()
                .unwrap_or(ppf),
        };
        let (source, fps) = match source {
            MediaSource::Synthetic => (Source::Synthetic(synthetic), synthetic.fps),
            MediaSource::Clip(clip) => (
                Source::Clip {
                    clip: clip.clone(),
                    pos: 0,
                },
                clip.fps,
            ),
            MediaSource::Live(feed) => (
                Source::Live {
                    keyframes: feed.keyframes.clone(),
                },
                30,
            ),
        };
        MediaOut {
            source,
            layers: (0..layers)
                .map(|i| LayerOut {
                    seq: start + 20_000 * i as u64,
                    picture_id: rand::random::<u16>() & 0x7fff,
                    packet: 0,
                    packets_per_frame: per_layer(i),
                    force_keyframe: false,
                })
                .collect(),
            fps: fps.max(1),
            frame: 0,
            ts_base: rand::random(),
            audio_seq: start + 7,
            audio_packet: 0,
            audio_ts_base: rand::random(),
            next_video: now,
            next_audio: now,
            started: now,
            audio_muted: false,
        }
    }

    /// Restarts the media clock (when the connection is ready to send).
    pub(crate) fn start(&mut self, now: Instant) {
        self.next_video = now;
        self.next_audio = now;
        self.started = now;
        if matches!(self.source, Source::Live { .. }) {
            // Frames encoded before the connection was up were dropped: start on keyframes.
            self.request_keyframe(None);
        }
    }

    /// When the next paced packet is due (`None` for live media, which comes when it comes).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        match self.source {
            Source::Live { .. } => None,
            _ if self.layers.is_empty() => Some(self.next_audio),
            _ => Some(self.next_video.min(self.next_audio)),
        }
    }

    /// The server asked for a keyframe on `layer` (`None`: every layer).
    pub(crate) fn request_keyframe(&mut self, layer: Option<usize>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            if layer.is_none_or(|want| want == i) {
                l.force_keyframe = true;
                if let Source::Live { keyframes } = &self.source {
                    keyframes.request(i);
                }
            }
        }
    }

    /// Everything due at `now` (synthetic and clip media).
    pub(crate) fn due(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if matches!(self.source, Source::Live { .. }) {
            return;
        }
        let frame_interval = Duration::from_secs(1) / self.fps;
        if now.saturating_duration_since(self.next_video) > MAX_CATCH_UP {
            self.next_video = now;
        }
        if now.saturating_duration_since(self.next_audio) > MAX_CATCH_UP {
            self.next_audio = now;
        }
        while !self.layers.is_empty() && self.next_video <= now {
            self.video_frame(out);
            self.next_video += frame_interval;
        }
        while self.next_audio <= now {
            self.audio_packet(out);
            self.next_audio += Duration::from_millis(20);
        }
    }

    fn video_ts(&self) -> u32 {
        self.ts_base
            .wrapping_add(self.frame.wrapping_mul(90_000 / self.fps))
    }

    fn video_frame(&mut self, out: &mut Vec<Outgoing>) {
        let ts = self.video_ts();
        match &mut self.source {
            Source::Synthetic(params) => {
                let periodic = self.frame.is_multiple_of(params.keyframe_interval.max(1));
                for (index, layer) in self.layers.iter_mut().enumerate() {
                    let keyframe = periodic || layer.force_keyframe;
                    layer.force_keyframe = false;
                    for i in 0..layer.packets_per_frame {
                        let sig = Signature {
                            tag: params.tag,
                            kind: PayloadKind::Vp8,
                            packet: layer.packet,
                            frame: self.frame,
                            frame_start: i == 0,
                            keyframe,
                            layer: u8::try_from(index).unwrap_or(0),
                        };
                        out.push(Outgoing {
                            layer: Some(index),
                            seq: layer.seq,
                            ts,
                            marker: i + 1 == layer.packets_per_frame,
                            payload: sig.payload(params.packet_bytes),
                            level: None,
                        });
                        layer.seq += 1;
                        layer.packet += 1;
                    }
                }
            }
            Source::Clip { clip, pos } => {
                if self.layers.iter().any(|l| l.force_keyframe) {
                    *pos = clip.next_keyframe(*pos);
                    for layer in &mut self.layers {
                        layer.force_keyframe = false;
                    }
                }
                let last = clip.layers.len().saturating_sub(1);
                for (index, layer) in self.layers.iter_mut().enumerate() {
                    let Some(frame) = clip
                        .layers
                        .get(index.min(last))
                        .and_then(|l| l.frames.get(*pos))
                    else {
                        continue;
                    };
                    push_frame(layer, index, ts, &frame.data, out);
                }
                *pos = (*pos + 1) % clip.frames().max(1);
            }
            Source::Live { .. } => {}
        }
        self.frame = self.frame.wrapping_add(1);
    }

    fn audio_packet(&mut self, out: &mut Vec<Outgoing>) {
        let payload = match &self.source {
            Source::Synthetic(params) => Signature {
                tag: params.tag,
                kind: PayloadKind::Opus,
                packet: self.audio_packet,
                frame: 0,
                frame_start: true,
                keyframe: false,
                layer: 0,
            }
            .payload(80),
            Source::Clip { clip, .. } => clip
                .audio
                .get(self.audio_packet as usize % clip.audio.len().max(1))
                .map(|p| p.to_vec())
                .unwrap_or_else(|| vec![0xf8, 0xff, 0xfe]), // Opus silence
            Source::Live { .. } => return,
        };
        self.push_audio(payload, None, out);
    }

    /// Stamps the next 20 ms audio packet and sends it unless the microphone is muted (a
    /// muted one still moves the clock on).
    fn push_audio(&mut self, payload: Vec<u8>, level: Option<i8>, out: &mut Vec<Outgoing>) {
        let ts = self
            .audio_ts_base
            .wrapping_add(self.audio_packet.wrapping_mul(960));
        self.audio_packet = self.audio_packet.wrapping_add(1);
        if self.audio_muted {
            return;
        }
        out.push(Outgoing {
            layer: None,
            seq: self.audio_seq,
            ts,
            marker: false,
            payload,
            level,
        });
        self.audio_seq += 1;
    }

    /// A frame from a live encoder, stamped with the time since the media started.
    pub(crate) fn live(&mut self, frame: LiveFrame, now: Instant, out: &mut Vec<Outgoing>) {
        match frame {
            LiveFrame::Video(video) => {
                let elapsed = now.saturating_duration_since(self.started);
                let ts = self
                    .ts_base
                    .wrapping_add((elapsed.as_micros() * 9 / 100) as u32);
                if let Some(layer) = self.layers.get_mut(video.layer) {
                    if video.keyframe {
                        layer.force_keyframe = false;
                    }
                    push_frame(layer, video.layer, ts, &video.data, out);
                }
            }
            LiveFrame::Audio(audio) => self.push_audio(audio.data, Some(audio.level), out),
        }
    }
}

fn push_frame(layer: &mut LayerOut, index: usize, ts: u32, frame: &[u8], out: &mut Vec<Outgoing>) {
    let payloads = vp8_rtp::packetize(frame, layer.picture_id);
    layer.picture_id = (layer.picture_id + 1) & 0x7fff;
    let n = payloads.len();
    for (i, payload) in payloads.into_iter().enumerate() {
        out.push(Outgoing {
            layer: Some(index),
            seq: layer.seq,
            ts,
            marker: i + 1 == n,
            payload,
            level: None,
        });
        layer.seq += 1;
        layer.packet += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{ClipFrame, ClipLayer};
    use crate::media_encode::LayerSpec;

    fn synthetic() -> SyntheticVideo {
        SyntheticVideo {
            tag: 1,
            fps: 30,
            packets_per_frame: 4,
            packet_bytes: 100,
            keyframe_interval: 60,
        }
    }

    #[test]
    fn paced_synthetic_media_numbers_each_stream() {
        let t0 = Instant::now();
        let mut m = MediaOut::new(&MediaSource::Synthetic, synthetic(), 3, t0);
        let mut out = Vec::new();
        m.due(t0 + Duration::from_millis(100), &mut out);
        // 4 frames (0, 33, 66, 99 ms) x (1 + 2 + 4) packets, 6 audio packets (0..=100 ms).
        let video = out.iter().filter(|o| o.layer.is_some()).count();
        let audio = out.iter().filter(|o| o.layer.is_none()).count();
        assert_eq!((video, audio), (28, 6));
        let top: Vec<u64> = out
            .iter()
            .filter(|o| o.layer == Some(2))
            .map(|o| o.seq)
            .collect();
        assert!(top.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(
            out.iter()
                .filter(|o| o.layer == Some(2) && o.marker)
                .count(),
            4
        );
    }

    #[test]
    fn an_audio_only_publisher_sends_audio_alone_and_waits_for_it() {
        let t0 = Instant::now();
        let mut m = MediaOut::new(&MediaSource::Synthetic, synthetic(), 0, t0);
        let mut out = Vec::new();
        m.due(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|o| o.layer.is_none()));
        // The next wake-up is the next audio packet, not a video frame long overdue.
        assert_eq!(m.next_due(), Some(t0 + Duration::from_millis(120)));
    }

    #[test]
    fn a_keyframe_request_jumps_the_clip_to_a_keyframe() {
        let frame = |keyframe| ClipFrame {
            data: Arc::from(vec![if keyframe { 0x10 } else { 0x11 }; 2000]),
            keyframe,
        };
        let layer = ClipLayer {
            spec: LayerSpec {
                width: 320,
                height: 180,
                bitrate: 1,
            },
            frames: (0..10).map(|i| frame(i % 5 == 0)).collect(),
        };
        let clip = Arc::new(Clip {
            fps: 10,
            layers: vec![layer],
            audio: vec![Arc::from(vec![1u8, 2, 3])],
            encode_time: Duration::ZERO,
        });
        let t0 = Instant::now();
        let mut m = MediaOut::new(&MediaSource::Clip(clip), synthetic(), 1, t0);
        let mut out = Vec::new();
        m.due(t0 + Duration::from_millis(150), &mut out); // frames 0 and 1
        out.clear();
        m.request_keyframe(Some(0));
        m.due(t0 + Duration::from_millis(200), &mut out);
        let first = out.iter().find(|o| o.layer == Some(0)).unwrap();
        assert!(vp8_rtp::starts_keyframe(&first.payload));
        // Two packets per frame (2000 bytes), continuous numbering across the jump.
        assert_eq!(out.iter().filter(|o| o.layer == Some(0)).count(), 2);
    }
}
