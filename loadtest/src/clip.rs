//! The swarm's media, encoded once at start: a moving test pattern as VP8 at up to three
//! simulcast sizes (real frames, a keyframe at the start of each loop) and a tone as 20 ms
//! Opus packets. Every publishing bot replays it with its own SSRCs, sequence numbers and
//! timestamps, so a thousand bots cost no more encoding than one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media_encode::{EncodeError, LayerSpec, OpusEncoder, SimulcastEncoder};
use crate::media_input::{AudioInput, InputError, InputKind, InputSpec, VideoInput};

/// What to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSpec {
    /// Top layer width.
    pub width: u32,
    /// Top layer height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Length of the loop, in seconds.
    pub seconds: u32,
    /// Three layers (full, half, quarter size) instead of the top one alone.
    pub simulcast: bool,
    /// A keyframe every this many frames (0: only at the start of the loop).
    pub keyframe_interval: u32,
}

impl Default for ClipSpec {
    /// 1280x720 at 30 fps, three layers, a 4-second loop.
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 30,
            seconds: 4,
            simulcast: true,
            keyframe_interval: 0,
        }
    }
}

/// One encoded video frame.
#[derive(Debug, Clone)]
pub struct ClipFrame {
    /// The VP8 frame.
    pub data: Arc<[u8]>,
    /// Whether it is a keyframe.
    pub keyframe: bool,
}

/// One layer of the clip.
#[derive(Debug, Clone)]
pub struct ClipLayer {
    /// Size and target bitrate.
    pub spec: LayerSpec,
    /// Frames, in order.
    pub frames: Vec<ClipFrame>,
}

impl ClipLayer {
    /// Average bitrate over the loop, bits per second.
    pub fn bitrate(&self, fps: u32) -> f64 {
        let bytes: usize = self.frames.iter().map(|f| f.data.len()).sum();
        bytes as f64 * 8.0 * f64::from(fps) / self.frames.len().max(1) as f64
    }
}

/// The encoded clip.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Frames per second.
    pub fps: u32,
    /// Video layers, lowest first; all have the same number of frames.
    pub layers: Vec<ClipLayer>,
    /// Opus packets, 20 ms each.
    pub audio: Vec<Arc<[u8]>>,
    /// How long encoding took.
    pub encode_time: Duration,
}

/// Why the clip could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The test source would not open.
    #[error(transparent)]
    Input(#[from] InputError),
    /// An encoder failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The sources ended early or the encoder skipped frames.
    #[error("the clip came out short: {0}")]
    Short(String),
}

impl Clip {
    /// Encodes the clip (about a second of CPU for four seconds of 720p simulcast).
    pub fn encode(spec: &ClipSpec) -> Result<Clip, ClipError> {
        let started = Instant::now();
        let layers = if spec.simulcast {
            LayerSpec::simulcast(spec.width, spec.height)
        } else {
            LayerSpec::simulcast(spec.width, spec.height)
                .into_iter()
                .last()
                .into_iter()
                .collect()
        };
        let frames = (spec.fps * spec.seconds.max(1)) as usize;
        let keyframe_every = match spec.keyframe_interval {
            0 => frames,
            n => n as usize,
        };
        let pattern = InputSpec::parse(
            &format!(
                "lavfi:testsrc2=size={}x{}:rate={}",
                spec.width, spec.height, spec.fps
            ),
            InputKind::Video,
        );
        let mut input = VideoInput::open(&pattern, &[])?;
        let mut encoder = SimulcastEncoder::new(&layers, spec.fps, u32::MAX / 2)?;
        let mut out: Vec<ClipLayer> = layers
            .iter()
            .map(|l| ClipLayer {
                spec: *l,
                frames: Vec::with_capacity(frames),
            })
            .collect();
        for i in 0..frames {
            let Some(picture) = input.next_frame()? else {
                return Err(ClipError::Short(format!("the pattern ended at frame {i}")));
            };
            for encoded in encoder.encode(&picture.frame, |_| i.is_multiple_of(keyframe_every))? {
                if let Some(layer) = out.get_mut(encoded.layer) {
                    layer.frames.push(ClipFrame {
                        data: encoded.data.into(),
                        keyframe: encoded.keyframe,
                    });
                }
            }
        }
        if let Some(layer) = out.iter().find(|l| l.frames.len() != frames) {
            return Err(ClipError::Short(format!(
                "{} frames of {} on the {} layer",
                layer.frames.len(),
                frames,
                layer.spec.size()
            )));
        }
        let audio = encode_tone(spec.seconds.max(1) as usize * 50)?;
        Ok(Clip {
            fps: spec.fps,
            layers: out,
            audio,
            encode_time: started.elapsed(),
        })
    }

    /// The tone alone, `seconds` long, for publishers that send no video (an audio room).
    pub fn audio_only(seconds: u32) -> Result<Clip, ClipError> {
        let started = Instant::now();
        let audio = encode_tone(seconds.max(1) as usize * 50)?;
        Ok(Clip {
            fps: 30,
            layers: Vec::new(),
            audio,
            encode_time: started.elapsed(),
        })
    }

    /// Average bitrate of the audio, bits per second (20 ms packets).
    pub fn audio_bitrate(&self) -> f64 {
        let bytes: usize = self.audio.iter().map(|p| p.len()).sum();
        bytes as f64 * 8.0 / (self.audio.len().max(1) as f64 * 0.02)
    }

    /// Frames in the loop.
    pub fn frames(&self) -> usize {
        self.layers.first().map_or(0, |l| l.frames.len())
    }

    /// The first frame at or after `from` (wrapping) where every layer has a keyframe.
    pub fn next_keyframe(&self, from: usize) -> usize {
        let n = self.frames();
        (0..n)
            .map(|i| (from + i) % n.max(1))
            .find(|&i| {
                self.layers
                    .iter()
                    .all(|l| l.frames.get(i).is_some_and(|f| f.keyframe))
            })
            .unwrap_or(0)
    }
}

/// A 440 Hz tone as `packets` Opus packets.
fn encode_tone(packets: usize) -> Result<Vec<Arc<[u8]>>, ClipError> {
    let tone = InputSpec::parse(
        "lavfi:sine=frequency=440:sample_rate=48000",
        InputKind::Audio,
    );
    let mut input = AudioInput::open(&tone, &[])?;
    let mut encoder = OpusEncoder::new(32_000)?;
    let mut out = Vec::with_capacity(packets);
    while out.len() < packets {
        let Some(frame) = input.next_frame()? else {
            return Err(ClipError::Short("the tone ended".into()));
        };
        for packet in encoder.push(&frame.frame)? {
            out.push(Arc::from(packet.data));
        }
    }
    out.truncate(packets);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_clip_has_real_keyframes_of_each_size() {
        let spec = ClipSpec {
            width: 320,
            height: 180,
            fps: 10,
            seconds: 1,
            simulcast: true,
            keyframe_interval: 5,
        };
        let clip = Clip::encode(&spec).unwrap();
        assert_eq!(clip.layers.len(), 3);
        assert_eq!(clip.frames(), 10);
        assert_eq!(clip.audio.len(), 50);
        for layer in &clip.layers {
            let key = &layer.frames[0];
            assert!(key.keyframe && layer.frames[5].keyframe && !layer.frames[1].keyframe);
            let payloads = crate::vp8_rtp::packetize(&key.data, 0);
            assert_eq!(
                crate::vp8_rtp::keyframe_size(&payloads[0]),
                Some((layer.spec.width as u16, layer.spec.height as u16))
            );
        }
        assert_eq!(clip.next_keyframe(1), 5);
        assert_eq!(clip.next_keyframe(6), 0);
    }

    #[test]
    fn an_audio_only_clip_has_the_tone_and_no_video() {
        let clip = Clip::audio_only(1).unwrap();
        assert!(clip.layers.is_empty());
        assert_eq!((clip.frames(), clip.audio.len()), (0, 50));
        let kbps = clip.audio_bitrate() / 1000.0;
        assert!((8.0..=64.0).contains(&kbps), "{kbps} kbit/s");
    }
}
