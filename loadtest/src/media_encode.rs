//! Encoders shared by the swarm's clip and the device publisher: a picture scaled to the
//! simulcast sizes and encoded as VP8 (libvpx, real-time settings, keyframes on demand), and
//! sound resampled to 48 kHz mono and encoded as 20 ms Opus packets (libopus), with the audio
//! level (RFC 6464) of each packet.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::{Pixel, Sample, sample};
use ffmpeg_next::software::{resampling, scaling};
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{ChannelLayout, Dictionary, Rational, codec, frame, picture};

use crate::media_input::init;

/// Opus samples per 20 ms packet at 48 kHz.
pub const OPUS_FRAME: usize = 960;

/// Why an encoder failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// This ffmpeg has no such encoder.
    #[error(
        "this ffmpeg has no {0} encoder: install FFmpeg with {0} (Debian: libavcodec-extra or libavcodec59)"
    )]
    Missing(&'static str),
    /// ffmpeg refused.
    #[error("{0}: {1}")]
    Ffmpeg(&'static str, ffmpeg::Error),
}

/// One simulcast layer's size and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Target bitrate, bits per second.
    pub bitrate: u32,
}

impl LayerSpec {
    /// The usual three layers for a top size: full, half and quarter, lowest first (the order
    /// of the RIDs `q`, `h`, `f`), with bitrates like a browser's.
    pub fn simulcast(width: u32, height: u32) -> Vec<LayerSpec> {
        [4, 2, 1]
            .into_iter()
            .map(|div| {
                let (w, h) = (even(width / div), even(height / div));
                LayerSpec {
                    width: w,
                    height: h,
                    // ~1.6 bits per pixel per second at 720p: 1.5 Mbit/s, 0.45, 0.15.
                    bitrate: ((u64::from(w) * u64::from(h) * 163 / 100).clamp(30_000, 4_000_000))
                        as u32,
                }
            })
            .collect()
    }

    /// `"1280x720"`.
    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

fn even(x: u32) -> u32 {
    (x & !1).max(2)
}

/// An encoded VP8 frame of one layer.
#[derive(Debug, Clone)]
pub struct EncodedVideo {
    /// Layer index (0 = lowest).
    pub layer: usize,
    /// The VP8 frame.
    pub data: Vec<u8>,
    /// Whether it is a keyframe.
    pub keyframe: bool,
}

struct VideoLayer {
    spec: LayerSpec,
    scaler: Option<(scaling::Context, Pixel, u32, u32)>,
    encoder: ffmpeg::encoder::Video,
}

/// Scales each picture to the layers' sizes and encodes each with libvpx.
pub struct SimulcastEncoder {
    layers: Vec<VideoLayer>,
    frames: i64,
}

impl SimulcastEncoder {
    /// Encoders for `layers` at `fps`; a keyframe every `keyframe_interval` frames (and when
    /// asked).
    pub fn new(
        layers: &[LayerSpec],
        fps: u32,
        keyframe_interval: u32,
    ) -> Result<SimulcastEncoder, EncodeError> {
        init();
        let codec = ffmpeg::encoder::find_by_name("libvpx").ok_or(EncodeError::Missing("VP8"))?;
        let mut out = Vec::new();
        for spec in layers {
            let mut encoder = codec::context::Context::new_with_codec(codec)
                .encoder()
                .video()
                .map_err(|e| EncodeError::Ffmpeg("VP8 encoder", e))?;
            encoder.set_width(spec.width);
            encoder.set_height(spec.height);
            encoder.set_format(Pixel::YUV420P);
            encoder.set_time_base(Rational::new(1, fps.max(1) as i32));
            encoder.set_frame_rate(Some(Rational::new(fps.max(1) as i32, 1)));
            encoder.set_bit_rate(spec.bitrate as usize);
            encoder.set_gop(keyframe_interval.max(1));
            let mut options = Dictionary::new();
            for (k, v) in [
                ("deadline", "realtime"),
                ("cpu-used", "8"),
                ("lag-in-frames", "0"),
                ("error-resilient", "1"),
                ("static-thresh", "0"),
            ] {
                options.set(k, v);
            }
            let encoder = encoder
                .open_as_with(codec, options)
                .map_err(|e| EncodeError::Ffmpeg("VP8 encoder", e))?;
            out.push(VideoLayer {
                spec: *spec,
                scaler: None,
                encoder,
            });
        }
        Ok(SimulcastEncoder {
            layers: out,
            frames: 0,
        })
    }

    /// The layers, lowest first.
    pub fn layers(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec).collect()
    }

    /// Encodes one picture on every layer; `force_keyframe(layer)` says which must be
    /// keyframes. Returns what the encoders produced (one frame per layer with these
    /// settings).
    pub fn encode(
        &mut self,
        picture: &frame::Video,
        force_keyframe: impl Fn(usize) -> bool,
    ) -> Result<Vec<EncodedVideo>, EncodeError> {
        let pts = self.frames;
        self.frames += 1;
        let mut out = Vec::new();
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let (fmt, w, h) = (picture.format(), picture.width(), picture.height());
            let stale = layer
                .scaler
                .as_ref()
                .is_none_or(|(_, f, sw, sh)| (*f, *sw, *sh) != (fmt, w, h));
            if stale {
                let scaler = scaling::Context::get(
                    fmt,
                    w,
                    h,
                    Pixel::YUV420P,
                    layer.spec.width,
                    layer.spec.height,
                    scaling::Flags::BILINEAR,
                )
                .map_err(|e| EncodeError::Ffmpeg("scaler", e))?;
                layer.scaler = Some((scaler, fmt, w, h));
            }
            let mut scaled = frame::Video::empty();
            if let Some((scaler, ..)) = &mut layer.scaler {
                scaler
                    .run(picture, &mut scaled)
                    .map_err(|e| EncodeError::Ffmpeg("scaler", e))?;
            }
            scaled.set_pts(Some(pts));
            if force_keyframe(index) {
                scaled.set_kind(picture::Type::I);
            } else {
                scaled.set_kind(picture::Type::None);
            }
            layer
                .encoder
                .send_frame(&scaled)
                .map_err(|e| EncodeError::Ffmpeg("VP8 encoder", e))?;
            receive_video(&mut layer.encoder, index, &mut out)?;
        }
        Ok(out)
    }
}

fn receive_video(
    encoder: &mut ffmpeg::encoder::Video,
    layer: usize,
    out: &mut Vec<EncodedVideo>,
) -> Result<(), EncodeError> {
    loop {
        let mut packet = codec::packet::Packet::empty();
        match encoder.receive_packet(&mut packet) {
            Ok(()) => {
                if let Some(data) = packet.data() {
                    out.push(EncodedVideo {
                        layer,
                        data: data.to_vec(),
                        keyframe: packet.is_key(),
                    });
                }
            }
            Err(ffmpeg::Error::Other { errno: EAGAIN }) | Err(ffmpeg::Error::Eof) => {
                return Ok(());
            }
            Err(e) => return Err(EncodeError::Ffmpeg("VP8 encoder", e)),
        }
    }
}

/// One 20 ms Opus packet.
#[derive(Debug, Clone)]
pub struct EncodedAudio {
    /// The Opus packet.
    pub data: Vec<u8>,
    /// Its audio level, -dBov (0 loudest, -127 silence), for the RFC 6464 extension.
    pub level: i8,
}

/// Resamples sound to 48 kHz mono and encodes 20 ms Opus packets.
pub struct OpusEncoder {
    encoder: ffmpeg::encoder::Audio,
    resampler: Option<(resampling::Context, Sample, u32, u64)>,
    fifo: Vec<i16>,
    pts: i64,
    /// Audio levels of the packets queued in the encoder, oldest first.
    levels: std::collections::VecDeque<i8>,
}

impl OpusEncoder {
    /// An encoder at `bitrate` bits per second.
    pub fn new(bitrate: u32) -> Result<OpusEncoder, EncodeError> {
        init();
        let codec = ffmpeg::encoder::find_by_name("libopus").ok_or(EncodeError::Missing("Opus"))?;
        let mut encoder = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| EncodeError::Ffmpeg("Opus encoder", e))?;
        encoder.set_rate(48_000);
        encoder.set_channel_layout(ChannelLayout::MONO);
        encoder.set_format(Sample::I16(sample::Type::Packed));
        encoder.set_bit_rate(bitrate as usize);
        encoder.set_time_base(Rational::new(1, 48_000));
        let mut options = Dictionary::new();
        options.set("application", "voip");
        options.set("frame_duration", "20");
        let encoder = encoder
            .open_as_with(codec, options)
            .map_err(|e| EncodeError::Ffmpeg("Opus encoder", e))?;
        Ok(OpusEncoder {
            encoder,
            resampler: None,
            fifo: Vec::new(),
            pts: 0,
            levels: Default::default(),
        })
    }

    /// Adds decoded sound of any format, rate and layout; returns the packets completed.
    pub fn push(&mut self, input: &frame::Audio) -> Result<Vec<EncodedAudio>, EncodeError> {
        let resample = |e| EncodeError::Ffmpeg("resampler", e);
        let (fmt, rate) = (input.format(), input.rate());
        let layout = input_layout(input);
        let key = layout.bits();
        let stale = self
            .resampler
            .as_ref()
            .is_none_or(|(_, f, r, k)| (*f, *r, *k) != (fmt, rate, key));
        if stale {
            let context = resampling::Context::get(
                fmt,
                layout,
                rate,
                Sample::I16(sample::Type::Packed),
                ChannelLayout::MONO,
                48_000,
            )
            .map_err(resample)?;
            self.resampler = Some((context, fmt, rate, key));
        }
        let capacity = input.samples() * 48_000 / rate.max(1) as usize + 256;
        let mut out = frame::Audio::new(
            Sample::I16(sample::Type::Packed),
            capacity,
            ChannelLayout::MONO,
        );
        out.set_rate(48_000);
        if let Some((context, ..)) = &mut self.resampler {
            context.run(input, &mut out).map_err(resample)?;
        }
        if out.samples() > 0 {
            let samples: &[i16] = out.plane(0);
            self.fifo
                .extend_from_slice(samples.get(..out.samples()).unwrap_or(samples));
        }
        let mut packets = Vec::new();
        while self.fifo.len() >= OPUS_FRAME {
            let chunk: Vec<i16> = self.fifo.drain(..OPUS_FRAME).collect();
            self.levels.push_back(audio_level(&chunk));
            let mut frame = frame::Audio::new(
                Sample::I16(sample::Type::Packed),
                OPUS_FRAME,
                ChannelLayout::MONO,
            );
            frame.set_rate(48_000);
            frame.set_pts(Some(self.pts));
            self.pts += OPUS_FRAME as i64;
            frame.plane_mut::<i16>(0).copy_from_slice(&chunk);
            self.encoder
                .send_frame(&frame)
                .map_err(|e| EncodeError::Ffmpeg("Opus encoder", e))?;
            loop {
                let mut packet = codec::packet::Packet::empty();
                match self.encoder.receive_packet(&mut packet) {
                    Ok(()) => {
                        let level = self.levels.pop_front().unwrap_or(-127);
                        if let Some(data) = packet.data() {
                            packets.push(EncodedAudio {
                                data: data.to_vec(),
                                level,
                            });
                        }
                    }
                    Err(ffmpeg::Error::Other { errno: EAGAIN }) | Err(ffmpeg::Error::Eof) => {
                        break;
                    }
                    Err(e) => return Err(EncodeError::Ffmpeg("Opus encoder", e)),
                }
            }
        }
        Ok(packets)
    }
}

fn input_layout(input: &frame::Audio) -> ChannelLayout {
    let layout = input.channel_layout();
    if layout.channels() > 0 {
        layout
    } else {
        ChannelLayout::default(i32::from(input.channels().max(1)))
    }
}

/// RFC 6464 level of 16-bit samples: -dBov, 0 (loudest) to -127 (silence).
pub fn audio_level(samples: &[i16]) -> i8 {
    if samples.is_empty() {
        return -127;
    }
    let mean_square = samples
        .iter()
        .map(|s| f64::from(*s) / 32768.0)
        .map(|x| x * x)
        .sum::<f64>()
        / samples.len() as f64;
    if mean_square <= 0.0 {
        return -127;
    }
    let db = 10.0 * mean_square.log10();
    db.clamp(-127.0, 0.0).round() as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(audio_level(&[0; 960]), -127);
        let full: Vec<i16> = (0..960)
            .map(|i| if i % 2 == 0 { 32767 } else { -32767 })
            .collect();
        assert_eq!(audio_level(&full), 0);
        let quiet: Vec<i16> = full.iter().map(|s| s / 100).collect();
        assert_eq!(audio_level(&quiet), -40);
    }

    #[test]
    fn layer_sizes() {
        let l = LayerSpec::simulcast(1280, 720);
        let sizes: Vec<String> = l.iter().map(LayerSpec::size).collect();
        assert_eq!(sizes, ["320x180", "640x360", "1280x720"]);
        assert!(l[2].bitrate > l[1].bitrate && l[1].bitrate > l[0].bitrate);
    }
}
