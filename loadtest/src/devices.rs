//! `--list-devices`: the cameras and microphones ffmpeg's device layer can open here, format by
//! format, with the spec to pass to `--video` or `--audio`, and the virtual sources.

use std::fmt::Write;

use crate::media_input::{self, AudioInput, InputError, InputKind, InputSpec, VideoInput};

/// One input device format and what it found.
#[derive(Debug, Clone)]
pub struct FormatDevices {
    /// ffmpeg's name (`video4linux2,v4l2`, `alsa`, ...).
    pub format: String,
    /// ffmpeg's description.
    pub description: String,
    /// Audio or video.
    pub kind: InputKind,
    /// Devices found, as (spec to pass, description); why none could be listed (empty: the
    /// format is not probed).
    pub devices: Result<Vec<(String, String)>, String>,
}

/// Lists the input devices of every device format this ffmpeg has.
pub fn list() -> Vec<FormatDevices> {
    media_input::init();
    let video = ffmpeg_next::device::input::video().map(|f| (f, InputKind::Video));
    let audio = ffmpeg_next::device::input::audio().map(|f| (f, InputKind::Audio));
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (format, kind) in video.chain(audio) {
        let name = format.name().to_string();
        if seen.contains(&name) {
            continue;
        }
        seen.push(name.clone());
        let short = name.split(',').next_back().unwrap_or(&name).to_string();
        let devices = match short.as_str() {
            "v4l2" => Ok(v4l2_cameras()),
            "alsa" | "pulse" => ask_format(&short, "default", InputKind::Audio),
            "avfoundation" => ask_format(&short, "", kind),
            "lavfi" => Ok(vec![
                (
                    "lavfi:testsrc=size=1280x720:rate=30".to_string(),
                    "a moving test pattern (--video)".to_string(),
                ),
                (
                    "lavfi:sine=frequency=440".to_string(),
                    "a tone (--audio)".to_string(),
                ),
            ]),
            _ => Err(String::new()),
        };
        out.push(FormatDevices {
            format: name,
            description: describe(&short).to_string(),
            kind: if short == "lavfi" {
                kind
            } else {
                kind_of(&short, kind)
            },
            devices,
        });
    }
    out
}

/// What a device format is (ffmpeg's own descriptions cannot all be read safely).
fn describe(short: &str) -> &'static str {
    match short {
        "v4l2" => "cameras (Video4Linux2)",
        "alsa" => "microphones (ALSA)",
        "pulse" => "microphones (PulseAudio)",
        "avfoundation" => "cameras and microphones (AVFoundation)",
        "lavfi" => "virtual sources (libavfilter)",
        "x11grab" | "xcbgrab" | "gdigrab" => "screen capture",
        "fbdev" | "kmsgrab" => "framebuffer capture",
        "dshow" => "cameras and microphones (DirectShow)",
        _ => "other capture",
    }
}

fn kind_of(short: &str, listed: InputKind) -> InputKind {
    match short {
        "alsa" | "pulse" | "oss" | "jack" | "openal" | "sndio" => InputKind::Audio,
        _ => listed,
    }
}

/// Every `/dev/video*` that opens as a camera (v4l2 lists its metadata nodes too).
fn v4l2_cameras() -> Vec<(String, String)> {
    let mut paths: Vec<String> = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path().display().to_string())
                .filter(|p| p.starts_with("/dev/video"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = std::fs::read_to_string(format!(
                "/sys/class/video4linux/{}/name",
                path.trim_start_matches("/dev/")
            ))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|_| "camera".to_string());
            let spec = InputSpec::parse(&format!("v4l2:{path}"), InputKind::Video);
            let status = match VideoInput::open(&spec, &[]) {
                Ok(input) => format!("{name}, {}x{}", input.width(), input.height()),
                Err(e) => format!("{name} (cannot open now: {})", reason(&e)),
            };
            (format!("v4l2:{path}"), status)
        })
        .collect()
}

/// Opens `format:target` and asks ffmpeg for the format's devices.
fn ask_format(
    format: &str,
    target: &str,
    kind: InputKind,
) -> Result<Vec<(String, String)>, String> {
    let spec = InputSpec::parse(&format!("{format}:{target}"), kind);
    let devices = match kind {
        InputKind::Video => VideoInput::open(&spec, &[]).map(|i| i.devices()),
        InputKind::Audio => AudioInput::open(&spec, &[]).map(|i| i.devices()),
    };
    match devices {
        Ok(list) if list.is_empty() => Ok(vec![(
            format!("{format}:{target}"),
            "the default device".to_string(),
        )]),
        Ok(list) => Ok(list
            .into_iter()
            .map(|name| (format!("{format}:{name}"), String::new()))
            .collect()),
        Err(e) => Err(reason(&e)),
    }
}

/// A short reason for the list (the full sentences point back at `--list-devices`).
fn reason(e: &InputError) -> String {
    match e {
        InputError::NotFound { .. } => "no such device".to_string(),
        InputError::Busy { .. } => "busy".to_string(),
        InputError::Permission { .. } => "no permission".to_string(),
        InputError::Other { error, .. } => error.to_string(),
        other => other.to_string(),
    }
}

/// The list for people: formats this tool probes, then the others by name.
pub fn render(formats: &[FormatDevices]) -> String {
    let mut out = String::from(
        "Input devices through ffmpeg's device layer; pass a spec to --video or --audio.\n",
    );
    let mut others = Vec::new();
    for f in formats {
        let list = match &f.devices {
            Ok(list) => list,
            Err(e) if e.is_empty() => {
                others.push(f.format.as_str());
                continue;
            }
            Err(e) => {
                let _ = writeln!(out, "\n{} ({}): none usable: {e}", f.format, f.description);
                continue;
            }
        };
        let _ = writeln!(out, "\n{} ({}):", f.format, f.description);
        if list.is_empty() {
            let _ = writeln!(out, "  none found");
        }
        for (spec, description) in list {
            let _ = writeln!(out, "  {spec:<40} {description}");
        }
    }
    if !others.is_empty() {
        let _ = writeln!(
            out,
            "\nother input formats of this ffmpeg (not probed): {}",
            others.join(", ")
        );
    }
    out
}
