//! Media inputs through ffmpeg's device layer: cameras (v4l2, AVFoundation), microphones (ALSA,
//! PulseAudio, AVFoundation) and virtual `lavfi` sources, opened by a `FORMAT:TARGET` spec and
//! decoded to raw frames. Failures become one sentence that says what to do.

use std::sync::Once;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::util::error::{EACCES, EAGAIN, EBUSY, EIO, ENODEV, ENOENT, ENXIO, EPERM};
use ffmpeg_next::{Dictionary, Rational, codec, format, frame, media};

/// Prepares ffmpeg (codecs, formats, devices) once per process and quiets its log.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::device::register_all();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A camera or a virtual video source.
    Video,
    /// A microphone or a virtual audio source.
    Audio,
}

impl InputKind {
    fn virtual_hint(self) -> &'static str {
        match self {
            InputKind::Video => {
                "`--video lavfi:testsrc=size=1280x720:rate=30` for a test pattern (or `--video none`)"
            }
            InputKind::Audio => "`--audio lavfi:sine` for a test tone (or `--audio none`)",
        }
    }

    fn device_word(self) -> &'static str {
        match self {
            InputKind::Video => "camera",
            InputKind::Audio => "microphone",
        }
    }
}

/// An input named on the command line: `FORMAT:TARGET` (`lavfi:testsrc=size=1280x720:rate=30`,
/// `v4l2:/dev/video0`, `alsa:default`, `pulse:default`, `avfoundation:0`), a bare device path
/// (`/dev/video0`), or `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// ffmpeg's name of the input device format (`lavfi`, `v4l2`, `alsa`, ...).
    pub format: String,
    /// What that format opens: a device path or name, or a filter graph for `lavfi`.
    pub target: String,
    /// Audio or video.
    pub kind: InputKind,
}

/// Device formats recognised as a `FORMAT:` prefix.
const FORMATS: [&str; 12] = [
    "lavfi",
    "v4l2",
    "video4linux2",
    "alsa",
    "pulse",
    "avfoundation",
    "dshow",
    "gdigrab",
    "oss",
    "jack",
    "x11grab",
    "xcbgrab",
];

impl InputSpec {
    /// Parses a spec; anything without a known `FORMAT:` prefix is a target of the platform's
    /// default format for `kind`.
    pub fn parse(text: &str, kind: InputKind) -> InputSpec {
        if text == "default" {
            return Self::platform_default(kind);
        }
        if let Some((format, target)) = text.split_once(':')
            && FORMATS.contains(&format)
        {
            let format = if format == "video4linux2" {
                "v4l2"
            } else {
                format
            };
            return InputSpec {
                format: format.to_string(),
                target: target.to_string(),
                kind,
            };
        }
        InputSpec {
            target: text.to_string(),
            ..Self::platform_default(kind)
        }
    }

    /// The platform's usual camera or microphone.
    pub fn platform_default(kind: InputKind) -> InputSpec {
        let (format, target) = if cfg!(target_os = "macos") {
            match kind {
                InputKind::Video => ("avfoundation", "0"),
                InputKind::Audio => ("avfoundation", ":0"),
            }
        } else {
            match kind {
                InputKind::Video => ("v4l2", "/dev/video0"),
                InputKind::Audio => ("pulse", "default"),
            }
        };
        InputSpec {
            format: format.to_string(),
            target: target.to_string(),
            kind,
        }
    }

    /// Whether this is a virtual source that produces frames as fast as it is read (it must
    /// be paced to real time).
    pub fn is_virtual(&self) -> bool {
        self.format == "lavfi"
    }

    /// A human name: "camera /dev/video0", "virtual video source testsrc=...".
    pub fn describe(&self) -> String {
        if self.is_virtual() {
            format!(
                "virtual {} source {}",
                match self.kind {
                    InputKind::Video => "video",
                    InputKind::Audio => "audio",
                },
                self.target
            )
        } else {
            format!(
                "{} {} ({})",
                self.kind.device_word(),
                self.target,
                self.format
            )
        }
    }
}

/// Why an input could not be used. Each message is one sentence saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// ffmpeg here has no such device format.
    #[error(
        "this ffmpeg has no input format `{0}`: run `sfu-publish --list-devices` to see the ones it has"
    )]
    UnknownFormat(String),
    /// The device does not exist.
    #[error(
        "there is no {what} at {target}: run `sfu-publish --list-devices` to see the devices, or use {hint}"
    )]
    NotFound {
        /// "camera" or "microphone".
        what: &'static str,
        /// The device.
        target: String,
        /// A virtual input to try instead.
        hint: &'static str,
    },
    /// Another program holds the device.
    #[error("the {what} {target} is busy: close the program using it, or choose another device")]
    Busy {
        /// "camera" or "microphone".
        what: &'static str,
        /// The device.
        target: String,
    },
    /// No permission to open the device.
    #[error(
        "no permission to open the {what} {target}: add your user to the `video`/`audio` group (or grant camera access) and try again"
    )]
    Permission {
        /// "camera" or "microphone".
        what: &'static str,
        /// The device.
        target: String,
    },
    /// The input opened but has no stream of the wanted kind.
    #[error("{0} has no {1} stream: choose another input")]
    NoStream(String, &'static str),
    /// Anything else ffmpeg reported.
    #[error(
        "cannot use the {what}: {error}: run `sfu-publish --list-devices` to see what works here, or use {hint}"
    )]
    Other {
        /// The input, described.
        what: String,
        /// ffmpeg's error.
        error: ffmpeg::Error,
        /// A virtual input to try instead.
        hint: &'static str,
    },
}

impl InputError {
    fn other(spec: &InputSpec, error: ffmpeg::Error) -> InputError {
        InputError::Other {
            what: spec.describe(),
            error,
            hint: spec.kind.virtual_hint(),
        }
    }

    fn from_open(spec: &InputSpec, error: ffmpeg::Error) -> InputError {
        let what = spec.kind.device_word();
        let target = spec.target.clone();
        let hint = spec.kind.virtual_hint();
        match error {
            ffmpeg::Error::Other { errno } if !spec.is_virtual() => match errno {
                ENOENT | ENODEV | ENXIO => InputError::NotFound { what, target, hint },
                EBUSY => InputError::Busy { what, target },
                EACCES | EPERM => InputError::Permission { what, target },
                // v4l2 reports EIO for a path that is not a capture device.
                EIO => InputError::NotFound { what, target, hint },
                _ => InputError::other(spec, error),
            },
            _ => InputError::other(spec, error),
        }
    }
}

/// Finds ffmpeg's input format called `name` among the input devices.
pub fn find_input_format(name: &str) -> Option<ffmpeg::Format> {
    init();
    ffmpeg::device::input::video()
        .chain(ffmpeg::device::input::audio())
        .find(|f| f.name().split(',').any(|n| n == name))
}

/// An opened input, reading packets of one stream.
struct Demuxer {
    input: format::context::Input,
    stream: usize,
    time_base: Rational,
    done: bool,
    /// Presentation time of the first decoded frame.
    start: Option<Duration>,
}

impl Demuxer {
    fn open(spec: &InputSpec, options: &[(&str, String)]) -> Result<Demuxer, InputError> {
        let format = find_input_format(&spec.format)
            .ok_or_else(|| InputError::UnknownFormat(spec.format.clone()))?;
        let mut dict = Dictionary::new();
        for (k, v) in options {
            dict.set(k, v);
        }
        let context = format::open_with(&spec.target, &format, dict)
            .map_err(|e| InputError::from_open(spec, e))?;
        let format::context::Context::Input(input) = context else {
            return Err(InputError::other(spec, ffmpeg::Error::Bug));
        };
        let wanted = match spec.kind {
            InputKind::Video => media::Type::Video,
            InputKind::Audio => media::Type::Audio,
        };
        let stream = input.streams().best(wanted).ok_or_else(|| {
            InputError::NoStream(
                spec.describe(),
                match spec.kind {
                    InputKind::Video => "video",
                    InputKind::Audio => "audio",
                },
            )
        })?;
        let (index, time_base) = (stream.index(), stream.time_base());
        Ok(Demuxer {
            input,
            stream: index,
            time_base,
            done: false,
            start: None,
        })
    }

    /// Names of the devices the format knows of: ffmpeg asks the device layer. (Descriptions
    /// are left out: ffmpeg leaves some of them NULL, which ffmpeg-next cannot read safely.)
    fn devices(&self) -> Vec<String> {
        match self.input.devices() {
            Ok(list) => list.map(|d| d.name().to_string()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn parameters(&self) -> Option<codec::Parameters> {
        self.input.stream(self.stream).map(|s| s.parameters())
    }

    /// The next packet of our stream; `None` at the end.
    fn next_packet(&mut self) -> Result<Option<codec::packet::Packet>, ffmpeg::Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            let mut packet = codec::packet::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() == self.stream => return Ok(Some(packet)),
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => {
                    self.done = true;
                    return Ok(None);
                }
                Err(ffmpeg::Error::Other { errno: EAGAIN }) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Seconds from the stream's start to `pts`.
    fn seconds(&self, pts: Option<i64>) -> Option<Duration> {
        let pts = pts?;
        let secs = pts as f64 * f64::from(self.time_base);
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    }

    /// Decodes the next frame of our stream into `frame`, feeding `decoder` packets as it
    /// needs them. `None` at the end of the input; otherwise the frame's time since the first
    /// frame, if the input says.
    fn decode_next(
        &mut self,
        decoder: &mut ffmpeg::decoder::Opened,
        frame: &mut ffmpeg::Frame,
    ) -> Result<Option<Option<Duration>>, ffmpeg::Error> {
        loop {
            match decoder.receive_frame(frame) {
                Ok(()) => {
                    let at = self.seconds(frame.timestamp().or(frame.pts())).map(|t| {
                        let start = *self.start.get_or_insert(t);
                        t.saturating_sub(start)
                    });
                    return Ok(Some(at));
                }
                Err(ffmpeg::Error::Other { errno: EAGAIN }) => {}
                Err(ffmpeg::Error::Eof) => return Ok(None),
                Err(e) => return Err(e),
            }
            match self.next_packet()? {
                Some(packet) => decoder.send_packet(&packet)?,
                None => decoder.send_eof()?,
            }
        }
    }
}

/// A decoded video frame and when it should be shown, from the start of the input.
pub struct VideoFrame {
    /// The picture.
    pub frame: frame::Video,
    /// Presentation time since the input's first frame (if the input says).
    pub at: Option<Duration>,
}

/// A camera or virtual video source, decoded.
pub struct VideoInput {
    demuxer: Demuxer,
    decoder: ffmpeg::decoder::Video,
    spec: InputSpec,
}

impl VideoInput {
    /// Names of the devices of the same format, where the format can list them.
    pub fn devices(&self) -> Vec<String> {
        self.demuxer.devices()
    }

    /// Opens the input. `options` go to the device (`framerate`, `video_size`, ...).
    pub fn open(spec: &InputSpec, options: &[(&str, String)]) -> Result<VideoInput, InputError> {
        init();
        let demuxer = Demuxer::open(spec, options)?;
        let other = |error| InputError::other(spec, error);
        let parameters = demuxer
            .parameters()
            .ok_or(other(ffmpeg::Error::StreamNotFound))?;
        let decoder = codec::context::Context::from_parameters(parameters)
            .and_then(|c| c.decoder().video())
            .map_err(other)?;
        Ok(VideoInput {
            demuxer,
            decoder,
            spec: spec.clone(),
        })
    }

    /// Picture width.
    pub fn width(&self) -> u32 {
        self.decoder.width()
    }

    /// Picture height.
    pub fn height(&self) -> u32 {
        self.decoder.height()
    }

    /// The spec this input was opened with.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// The next frame; `None` at the end of the input.
    pub fn next_frame(&mut self) -> Result<Option<VideoFrame>, InputError> {
        let mut frame = frame::Video::empty();
        let at = self
            .demuxer
            .decode_next(&mut self.decoder, &mut frame)
            .map_err(|e| InputError::other(&self.spec, e))?;
        Ok(at.map(|at| VideoFrame { frame, at }))
    }
}

/// A decoded audio frame.
pub struct AudioFrame {
    /// The samples.
    pub frame: frame::Audio,
    /// Presentation time since the input's first frame (if the input says).
    pub at: Option<Duration>,
}

/// A microphone or virtual audio source, decoded.
pub struct AudioInput {
    demuxer: Demuxer,
    decoder: ffmpeg::decoder::Audio,
    spec: InputSpec,
}

impl AudioInput {
    /// Names of the devices of the same format, where the format can list them.
    pub fn devices(&self) -> Vec<String> {
        self.demuxer.devices()
    }

    /// Opens the input. `options` go to the device (`sample_rate`, `channels`, ...).
    pub fn open(spec: &InputSpec, options: &[(&str, String)]) -> Result<AudioInput, InputError> {
        init();
        let demuxer = Demuxer::open(spec, options)?;
        let other = |error| InputError::other(spec, error);
        let parameters = demuxer
            .parameters()
            .ok_or(other(ffmpeg::Error::StreamNotFound))?;
        let decoder = codec::context::Context::from_parameters(parameters)
            .and_then(|c| c.decoder().audio())
            .map_err(other)?;
        Ok(AudioInput {
            demuxer,
            decoder,
            spec: spec.clone(),
        })
    }

    /// The spec this input was opened with.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// The next frame; `None` at the end of the input.
    pub fn next_frame(&mut self) -> Result<Option<AudioFrame>, InputError> {
        let mut frame = frame::Audio::empty();
        let at = self
            .demuxer
            .decode_next(&mut self.decoder, &mut frame)
            .map_err(|e| InputError::other(&self.spec, e))?;
        Ok(at.map(|at| AudioFrame { frame, at }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = InputSpec::parse("lavfi:testsrc=size=1280x720:rate=30", InputKind::Video);
        assert_eq!(s.format, "lavfi");
        assert_eq!(s.target, "testsrc=size=1280x720:rate=30");
        assert!(s.is_virtual());
        let s = InputSpec::parse("/dev/video9", InputKind::Video);
        assert_eq!(s.target, "/dev/video9");
        let s = InputSpec::parse("alsa:hw:0,0", InputKind::Audio);
        assert_eq!((s.format.as_str(), s.target.as_str()), ("alsa", "hw:0,0"));
    }

    #[test]
    fn a_virtual_source_decodes() {
        let spec = InputSpec::parse("lavfi:testsrc=size=320x180:rate=10", InputKind::Video);
        let mut input = VideoInput::open(&spec, &[]).unwrap();
        let f = input.next_frame().unwrap().unwrap();
        assert_eq!((f.frame.width(), f.frame.height()), (320, 180));
        let spec = InputSpec::parse("lavfi:sine=sample_rate=48000", InputKind::Audio);
        let mut input = AudioInput::open(&spec, &[]).unwrap();
        assert!(input.next_frame().unwrap().is_some());
    }

    #[test]
    fn a_missing_camera_says_so() {
        let spec = InputSpec::parse("/dev/video9", InputKind::Video);
        let e = VideoInput::open(&spec, &[]).err().unwrap();
        assert!(matches!(e, InputError::NotFound { .. }), "{e}");
    }
}
