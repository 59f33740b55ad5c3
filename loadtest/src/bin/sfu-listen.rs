//! `sfu-listen`: joins a room as a viewer and prints what it received, as one JSON object: per
//! incoming stream its kind, packets, bytes and losses, and every RFC 4733 telephone event
//! (DTMF digit, duration, end bit). A probe for people checking what a room sends, and for the
//! browser test of DTMF (a Chromium publisher's `insertDTMF` heard by a bot).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use loadtest::bot::{Bot, BotConfig};
use loadtest::publish;
use loadtest::token::{self, Role};
use sfu_protocol::auth::{DEV_API_KEY, DEV_API_SECRET};

#[derive(Parser)]
#[command(
    name = "sfu-listen",
    version,
    about = "Join an SFU room as a viewer and print what arrives (streams, DTMF) as JSON."
)]
struct Args {
    /// The server: host:port, http://host:port or ws://host:port.
    #[arg(long, visible_alias = "server", default_value = "127.0.0.1:7880")]
    url: String,
    /// Room to listen to.
    #[arg(long, default_value = "demo")]
    room: String,
    /// Your identity in the room (when the token is minted here).
    #[arg(long, default_value = "sfu-listen")]
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
    /// Listen this many seconds at most.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Stop early once this many telephone events have ended.
    #[arg(long)]
    tones: Option<usize>,
    /// Print `joined` on standard error once in the room (for scripts that act then).
    #[arg(long)]
    announce: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let server = match publish::host_port(&args.url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token = match args.token.clone() {
        Some(t) => t,
        None => {
            let key = (args.api_key.as_str(), args.api_secret.as_str());
            let ttl = Duration::from_secs(3600);
            match token::mint(key, &args.identity, &args.room, Role::Viewer, ttl) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot sign a token with the API secret: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(listen(args, server, token))
}

async fn listen(args: Args, server: String, token: String) -> ExitCode {
    let mut config = BotConfig::new(&format!("ws://{server}/rtc"), token, false, 0);
    config.verify_payloads = false;
    config.record_seqs = false;
    let bot = Bot::spawn(config);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.clamp(0.0, 86_400.0));
    let left = || deadline.saturating_duration_since(Instant::now());
    if !bot.wait_for(left(), |s| s.participant.is_some()).await {
        eprintln!(
            "error: not in room {} within {} s: {}",
            args.room,
            args.seconds,
            bot.state().ended.unwrap_or_else(|| "no answer".into())
        );
        return ExitCode::FAILURE;
    }
    if args.announce {
        eprintln!("joined");
    }
    let wanted = args.tones;
    bot.wait_for(left(), |s| {
        wanted.is_some_and(|n| s.tones.iter().filter(|t| t.ended).count() >= n)
    })
    .await;
    let state = bot.state();
    bot.leave();
    let streams: Vec<serde_json::Value> = state
        .streams
        .iter()
        .map(|(ssrc, s)| {
            serde_json::json!({
                "ssrc": ssrc,
                "mid": s.mid,
                "video": s.quality.video,
                "packets": s.quality.packets,
                "bytes": s.quality.bytes,
                "lost": s.quality.lost(),
            })
        })
        .collect();
    let tones: Vec<serde_json::Value> = state
        .tones
        .iter()
        .map(|t| {
            serde_json::json!({
                "digit": t.digit().to_string(),
                "event": t.event,
                "duration_ms": t.duration_ms(),
                "ended": t.ended,
                "clock_rate": t.clock_rate,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "room": args.room, "streams": streams, "tones": tones })
    );
    ExitCode::SUCCESS
}
