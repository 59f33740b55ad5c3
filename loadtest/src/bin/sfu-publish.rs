//! `sfu-publish`: publishes a camera and a microphone into a room. Captures through ffmpeg's
//! device layer (v4l2 and ALSA/PulseAudio on Linux, AVFoundation on macOS; `lavfi` virtual
//! sources anywhere), encodes simulcast VP8 and Opus, and publishes over the signalling
//! protocol or WHIP. Ctrl-C leaves the room cleanly.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use loadtest::devices;
use loadtest::media_input::{InputKind, InputSpec};
use loadtest::publish::{self, Capture, PublishError, PublishOptions, PublishProtocol};
use loadtest::token::{self, Role};
use sfu_protocol::auth::{DEV_API_KEY, DEV_API_SECRET};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    /// The server's signalling WebSocket.
    Signalling,
    /// WHIP (`POST /whip/{room}`).
    Whip,
}

#[derive(Parser)]
#[command(
    name = "sfu-publish",
    version,
    about = "Publish a camera and microphone (or a test source) into an SFU room."
)]
struct Args {
    /// The server: host:port, http://host:port or ws://host:port.
    #[arg(long, visible_alias = "server", default_value = "127.0.0.1:7880")]
    url: String,
    /// Room to publish into.
    #[arg(long, default_value = "demo")]
    room: String,
    /// Your identity in the room (when the token is minted here).
    #[arg(long, default_value = "sfu-publish")]
    identity: String,
    /// Access token [default: minted with --api-key and --api-secret].
    #[arg(long, env = "SFU_TOKEN")]
    token: Option<String>,
    /// API key for minting the token.
    #[arg(long, env = "SFU_API_KEY", default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret for minting the token.
    #[arg(long, env = "SFU_API_SECRET", default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
    /// How to publish.
    #[arg(long, value_enum, default_value = "signalling")]
    protocol: ProtocolArg,
    /// Camera: `default`, a device (`/dev/video0`, `v4l2:/dev/video2`, `avfoundation:0`), a
    /// virtual source (`lavfi:testsrc=size=1280x720:rate=30`) or `none`.
    #[arg(long, default_value = "default")]
    video: String,
    /// Microphone: `default`, a device (`alsa:hw:0`, `pulse:default`, `avfoundation::0`), a
    /// virtual source (`lavfi:sine`) or `none`.
    #[arg(long, default_value = "default")]
    audio: String,
    /// Top layer size, WIDTHxHEIGHT [default: the camera's].
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Frames per second asked of the camera.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Publish one layer instead of three simulcast layers.
    #[arg(long)]
    no_simulcast: bool,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    duration: Option<f64>,
    /// List the cameras and microphones and exit.
    #[arg(long)]
    list_devices: bool,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("`{text}` is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| v.parse::<u32>().map_err(|e| format!("`{text}`: {e}"));
    Ok((parse(w)?, parse(h)?))
}

fn input(text: &str, kind: InputKind) -> Option<InputSpec> {
    (text != "none").then(|| InputSpec::parse(text, kind))
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_devices {
        print!("{}", devices::render(&devices::list()));
        return ExitCode::SUCCESS;
    }
    let server = match publish::host_port(&args.url) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let token = match &args.token {
        Some(t) => t.clone(),
        None => {
            let key = (args.api_key.as_str(), args.api_secret.as_str());
            let ttl = Duration::from_secs(24 * 3600);
            match token::mint(key, &args.identity, &args.room, Role::Publisher, ttl) {
                Ok(t) => t,
                Err(e) => return fail(&format!("cannot sign a token with the API secret: {e}")),
            }
        }
    };
    let options = PublishOptions {
        server,
        room: args.room.clone(),
        token,
        protocol: match args.protocol {
            ProtocolArg::Signalling => PublishProtocol::Signalling,
            ProtocolArg::Whip => PublishProtocol::Whip,
        },
        video: input(&args.video, InputKind::Video),
        audio: input(&args.audio, InputKind::Audio),
        size: args.size,
        fps: args.fps.clamp(1, 60),
        simulcast: !args.no_simulcast,
    };
    if options.video.is_none() && options.audio.is_none() {
        return fail(&"nothing to publish: give --video or --audio (or both)");
    }
    let capture = match Capture::start(&options) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let code = runtime.block_on(publish_until_stopped(&options, &capture, args.duration));
    capture.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn publish_until_stopped(
    options: &PublishOptions,
    capture: &Capture,
    duration: Option<f64>,
) -> ExitCode {
    let bot = match publish::connect(options, capture.media()).await {
        Ok(bot) => bot,
        Err(e) => return fail(&e),
    };
    println!(
        "publishing {} into room `{}` at {}; Ctrl-C to stop",
        capture.description, options.room, options.server
    );
    let deadline =
        duration.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut failure: Option<PublishError> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {
                if let Some(e) = capture.failure() {
                    failure = Some(e);
                    break;
                }
                if let Some(reason) = bot.with_state(|s| s.ended.clone()) {
                    failure = Some(PublishError::Refused(format!("the server ended the session: {reason}")));
                    break;
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    let sent = bot.with_state(|s| s.packets_sent);
    let left = publish::leave(bot).await;
    match failure {
        Some(e) => fail(&e),
        None => {
            println!(
                "{} ({sent} packets sent)",
                if left {
                    "left the room"
                } else {
                    "stopped (the server did not confirm the leave)"
                }
            );
            ExitCode::SUCCESS
        }
    }
}
