//! `sfu-swarm`: a swarm of WebRTC bots against a running server (this one over its signalling
//! protocol, or any WHIP/WHEP server), reporting what viewers experienced and, when the server
//! runs on this machine, what it cost the server per forwarded packet: as a table, JSON, or a
//! self-contained HTML page with charts over time. Thresholds make it exit non-zero, so it can
//! gate a deployment.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, ValueEnum};
use loadtest::bot::MediaSource;
use loadtest::clip::{Clip, ClipSpec};
use loadtest::swarm::html;
use loadtest::swarm::report::{MediaInfo, Report, Thresholds};
use loadtest::swarm::run::{RunOptions, run};
use loadtest::swarm::scenario::{Media, Protocol, Role, Scenario};
use sfu_protocol::auth::{DEV_API_KEY, DEV_API_SECRET};

/// Named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// Everyone publishes and watches everyone else (`--publishers` participants per room,
    /// default 5; no extra viewers).
    Meeting,
    /// One publisher, many viewers (`--subscribers`, default 50).
    Livestream,
    /// An audio room, like LiveKit's audio benchmark: 10 speakers who talk and fall silent
    /// (`--speech`) and hear each other, 300 listeners, audio only (`--audio-only`).
    AudioRoom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    /// The server's signalling WebSocket (`/rtc`).
    Signalling,
    /// Publishers over WHIP, viewers over WHEP (any WHIP/WHEP server).
    WhipWhep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MediaArg {
    /// A test pattern and a tone encoded once at start with ffmpeg (VP8 + Opus).
    Clip,
    /// Synthetic payloads verified byte for byte by the viewers.
    Synthetic,
}

#[derive(Parser)]
#[command(
    name = "sfu-swarm",
    version,
    about = "Load-test an SFU with a swarm of WebRTC bots and report what viewers experienced."
)]
struct Args {
    /// The server: `host:port`, `http://host:port` or `ws://host:port/rtc` (no TLS). Repeat
    /// for the nodes of a cluster: bots join at each in turn, and each node's cost is reported.
    #[arg(long = "server", visible_alias = "url", default_value = "127.0.0.1:7880", action = clap::ArgAction::Append)]
    servers: Vec<String>,
    /// A named scenario; explicit flags override its numbers.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishing bots per room (in a meeting, participants per room). [default: 1; meeting:
    /// 5; audio-room: 10]
    #[arg(long)]
    publishers: Option<usize>,
    /// Viewing-only bots per room. [default: 20; meeting: 0; livestream: 50; audio-room: 300]
    #[arg(long)]
    subscribers: Option<usize>,
    /// Whether publishers also subscribe. [default: yes, except in a livestream]
    #[arg(long)]
    publishers_subscribe: Option<bool>,
    /// Seconds to measure, after everyone has joined and media flows.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Bots started per second (0: all at once).
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// Seconds to wait for every viewer's first frames before measuring anyway.
    #[arg(long, default_value_t = 30.0)]
    join_timeout: f64,
    /// Publishers send three simulcast layers (full, half and quarter size).
    #[arg(long)]
    simulcast: bool,
    /// What publishers send.
    #[arg(long, value_enum, default_value = "clip")]
    media: MediaArg,
    /// Publishers send audio alone, no video (the report then shows audio packets, loss and
    /// jitter, and says there was no video). [default: no; audio-room: yes]
    #[arg(long)]
    audio_only: bool,
    /// Top video size of the clip, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    video_size: (u32, u32),
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Synthetic media: RTP packets per video frame.
    #[arg(long, default_value_t = 8)]
    packets_per_frame: u32,
    /// Synthetic media: bytes per video RTP payload.
    #[arg(long, default_value_t = 1100)]
    packet_bytes: usize,
    /// How bots reach the server.
    #[arg(long, value_enum, default_value = "signalling")]
    protocol: ProtocolArg,
    /// Carry every bot's media over one ICE-TCP connection each to this address (the
    /// server's --ice-tcp-port) instead of UDP. [default: UDP]
    #[arg(long, value_name = "HOST:PORT")]
    ice_tcp: Option<std::net::SocketAddr>,
    /// WHIP endpoint path (`{room}` is replaced by the room name).
    #[arg(long, default_value = "/whip/{room}")]
    whip_path: String,
    /// WHEP endpoint path (`{room}` is replaced by the room name).
    #[arg(long, default_value = "/whep/{room}")]
    whep_path: String,
    /// Publishers talk and fall silent (the audio-level extension changes). [default: no;
    /// audio-room: yes]
    #[arg(long)]
    speech: bool,
    /// Publishers mute their microphone for a third of every period of this many seconds.
    #[arg(long)]
    mute_every: Option<f64>,
    /// Room names are this prefix, a dash and a number.
    #[arg(long, default_value = "swarm")]
    room_prefix: String,
    /// API key for minting tokens.
    #[arg(long, env = "SFU_API_KEY", default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret for minting tokens.
    #[arg(long, env = "SFU_API_SECRET", default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
    /// A fixed bearer token for every bot instead of minted ones (other WHIP/WHEP servers).
    #[arg(long)]
    bearer: Option<String>,
    /// PID of the server process, to read its CPU time from /proc (same machine only).
    /// [default: the CPU time the server reports on /metrics]
    #[arg(long)]
    server_pid: Option<u32>,
    /// Fail (exit 1) when viewers lose more than this percentage of packets.
    #[arg(long)]
    max_loss: Option<f64>,
    /// Fail (exit 1) when the 95th percentile of join to first frame exceeds this (ms).
    #[arg(long)]
    max_ttff_p95: Option<f64>,
    /// Print the report as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also write the report as one self-contained HTML page with charts over time (viewers'
    /// bitrate, layers, freezes and audio; the server's CPU, forwarded packets and memory).
    /// [default: none]
    #[arg(long, value_name = "FILE.html")]
    report: Option<std::path::PathBuf>,
    /// Seconds between the samples of the timeline (in the JSON and the HTML report); longer
    /// when the window would need more than 3600 samples.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    sample_interval: f64,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("`{text}` is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| v.parse::<u32>().map_err(|e| format!("`{text}`: {e}"));
    let (w, h) = (parse(w)?, parse(h)?);
    if w < 16 || h < 16 || w > 4096 || h > 4096 {
        return Err(format!("`{text}`: sizes go from 16x16 to 4096x4096"));
    }
    Ok((w, h))
}

/// `host:port` from any of the accepted URL forms.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn scenario(args: &Args) -> Scenario {
    let (publishers, subscribers, subscribe) = match args.preset {
        Some(Preset::Meeting) => (5, 0, true),
        Some(Preset::Livestream) => (1, 50, false),
        Some(Preset::AudioRoom) => (10, 300, true),
        None => (1, 20, true),
    };
    let audio_room = args.preset == Some(Preset::AudioRoom);
    let subscribe = args.publishers_subscribe.unwrap_or(subscribe);
    Scenario {
        preset: args
            .preset
            .and_then(|p| p.to_possible_value())
            .map(|v| v.get_name().to_string()),
        server: host_port(
            args.servers
                .first()
                .map_or("127.0.0.1:7880", String::as_str),
        ),
        other_servers: args.servers.iter().skip(1).map(|s| host_port(s)).collect(),
        rooms: args.rooms,
        publishers: args.publishers.unwrap_or(publishers),
        publisher_role: if subscribe {
            Role::Both
        } else {
            Role::Publisher
        },
        subscribers: args.subscribers.unwrap_or(subscribers),
        duration: Duration::from_secs_f64(args.duration.max(0.1)),
        join_rate: args.join_rate.max(0.0),
        join_timeout: Duration::from_secs_f64(args.join_timeout.max(0.0)),
        simulcast: args.simulcast,
        media: match args.media {
            MediaArg::Clip => Media::Clip,
            MediaArg::Synthetic => Media::Synthetic,
        },
        audio_only: args.audio_only || audio_room,
        video_size: args.video_size,
        fps: args.fps.clamp(1, 120),
        packets_per_frame: args.packets_per_frame,
        packet_bytes: args.packet_bytes,
        protocol: match args.protocol {
            ProtocolArg::Signalling => Protocol::Signalling,
            ProtocolArg::WhipWhep => Protocol::WhipWhep,
        },
        whip_path: args.whip_path.clone(),
        whep_path: args.whep_path.clone(),
        speech: args.speech || audio_room,
        mute_every: args.mute_every.map(|s| Duration::from_secs_f64(s.max(0.3))),
        room_prefix: args.room_prefix.clone(),
        api_key: args.api_key.clone(),
        api_secret: args.api_secret.clone(),
        bearer: args.bearer.clone(),
        ice_tcp: args.ice_tcp,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let scenario = scenario(&args);
    let (media, media_info) = match scenario.media {
        Media::Synthetic => (MediaSource::Synthetic, None),
        Media::Clip if scenario.audio_only => {
            let clip = match Clip::audio_only(ClipSpec::default().seconds) {
                Ok(clip) => clip,
                Err(e) => {
                    eprintln!("error: cannot encode the bots' media: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let info = MediaInfo {
                layers: Vec::new(),
                layer_kbps: Vec::new(),
                audio_kbps: (clip.audio_bitrate() / 100.0).round() / 10.0,
                encode_ms: clip.encode_time.as_secs_f64() * 1000.0,
            };
            eprintln!(
                "media: {} s loop of Opus ({} kbit/s), no video, encoded in {:.0} ms",
                ClipSpec::default().seconds,
                info.audio_kbps,
                info.encode_ms
            );
            (MediaSource::Clip(Arc::new(clip)), Some(info))
        }
        Media::Clip => {
            let spec = ClipSpec {
                width: scenario.video_size.0,
                height: scenario.video_size.1,
                fps: scenario.fps,
                simulcast: scenario.simulcast,
                ..ClipSpec::default()
            };
            let clip = match Clip::encode(&spec) {
                Ok(clip) => clip,
                Err(e) => {
                    eprintln!("error: cannot encode the bots' media: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let info = MediaInfo {
                layers: clip.layers.iter().map(|l| l.spec.size()).collect(),
                layer_kbps: clip
                    .layers
                    .iter()
                    .map(|l| (l.bitrate(clip.fps) / 100.0).round() / 10.0)
                    .collect(),
                audio_kbps: (clip.audio_bitrate() / 100.0).round() / 10.0,
                encode_ms: clip.encode_time.as_secs_f64() * 1000.0,
            };
            eprintln!(
                "media: {} s loop of VP8 {} (kbit/s {:?}) + Opus, encoded in {:.0} ms",
                spec.seconds,
                info.layers.join(" + "),
                info.layer_kbps,
                info.encode_ms
            );
            (MediaSource::Clip(Arc::new(clip)), Some(info))
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "swarm: {} bots against {} ({} viewers)",
        scenario.plans().len(),
        scenario.server,
        scenario.viewers()
    );
    let options = RunOptions {
        server_pid: args.server_pid,
        progress: !args.quiet,
        media_info,
        sample_interval: Duration::from_secs_f64(if args.sample_interval.is_finite() {
            args.sample_interval.clamp(0.05, 3600.0)
        } else {
            1.0
        }),
    };
    let run = match runtime.block_on(run(&scenario, &media, &options)) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let thresholds = Thresholds {
        max_loss_percent: args.max_loss,
        max_ttff_p95_ms: args.max_ttff_p95,
    };
    let report = Report::new(&run, thresholds);
    if let Some(path) = &args.report {
        let page = html::page(&report, SystemTime::now());
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("error: cannot write the report to {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("report: {}", path.display());
    }
    if args.json {
        eprint!("{}", report.table());
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: cannot write the report as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.table());
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    if report.verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
