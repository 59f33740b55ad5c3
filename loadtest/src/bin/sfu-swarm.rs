//! `sfu-swarm`: a swarm of bots against a running server, reporting what viewers received and,
//! when the server runs on this machine, what it cost the server per forwarded packet.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, DEV_API_SECRET, Grants};
use loadtest::bot::{Bot, BotConfig};
use loadtest::server_probe::{ProcessSample, ServerCounters, sample_process, scrape};
use loadtest::synthetic::PayloadKind;

#[derive(Parser)]
#[command(
    name = "sfu-swarm",
    version,
    about = "Load-test an SFU with a swarm of WebRTC bots."
)]
struct Args {
    /// The server's HTTP address (host:port).
    #[arg(long, default_value = "127.0.0.1:7880")]
    server: String,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishing bots per room.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribing-only bots per room.
    #[arg(long, default_value_t = 20)]
    subscribers: usize,
    /// Seconds to measure, after everyone has joined and media flows.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Video frames per second per publisher.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// RTP packets per video frame.
    #[arg(long, default_value_t = 8)]
    packets_per_frame: u32,
    /// Bytes per video RTP payload.
    #[arg(long, default_value_t = 1100)]
    packet_bytes: usize,
    /// PID of the server process, to read its CPU time from /proc (same machine only).
    /// [default: the CPU time the server reports on /metrics]
    #[arg(long)]
    server_pid: Option<u32>,
    /// API key for minting tokens.
    #[arg(long, default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret for minting tokens.
    #[arg(long, default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let keys = ApiKeys::new([(args.api_key.clone(), args.api_secret.clone())]);
    let ws_url = format!("ws://{}/rtc", args.server);
    let mut bots = Vec::new();
    let mut tag = 0u32;
    for room in 0..args.rooms {
        let room_name = format!("swarm-{room}");
        for i in 0..args.publishers + args.subscribers {
            tag += 1;
            let publish = i < args.publishers;
            let grants = Grants {
                room: Some(room_name.clone()),
                room_join: true,
                ..Grants::default()
            };
            let claims = Claims::new(
                &args.api_key,
                &format!("bot-{tag}"),
                Duration::from_secs(3600),
                grants,
            );
            let token = match keys.mint(&claims) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot sign tokens: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut config = BotConfig::new(&ws_url, token, publish, tag);
            config.fps = args.fps;
            config.packets_per_frame = args.packets_per_frame;
            config.video_packet_bytes = args.packet_bytes;
            bots.push((publish, Bot::spawn(config)));
        }
    }
    let total = bots.len();
    eprintln!("joining {total} bots in {} room(s)...", args.rooms);
    let flowing = |b: &Bot| {
        b.with_state(|s| {
            s.streams
                .values()
                .any(|st| st.kind == PayloadKind::Vp8 && st.seqs.len() > 10)
        })
    };
    let join_deadline = Instant::now() + Duration::from_secs(30);
    for (publish, bot) in &bots {
        if !*publish {
            let left = join_deadline.saturating_duration_since(Instant::now());
            bot.wait_for(left, |s| {
                s.streams
                    .values()
                    .any(|st| st.kind == PayloadKind::Vp8 && st.seqs.len() > 10)
            })
            .await;
        }
    }
    let receiving = bots.iter().filter(|(p, b)| !*p && flowing(b)).count();
    let viewers = bots.iter().filter(|(p, _)| !*p).count();
    eprintln!(
        "{receiving}/{viewers} viewers receive video; measuring for {} s...",
        args.duration
    );

    let before = measure(&args).await;
    let received_before: Vec<usize> = bots.iter().map(|(_, b)| received(b)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let after = measure(&args).await;
    let received_after: Vec<usize> = bots.iter().map(|(_, b)| received(b)).collect();

    let bad: u64 = bots
        .iter()
        .map(|(_, b)| b.with_state(|s| s.bad_payloads))
        .sum();
    let viewer_packets: usize = bots
        .iter()
        .zip(received_before.iter().zip(&received_after))
        .filter(|((p, _), _)| !*p)
        .map(|(_, (b, a))| a - b)
        .sum();
    println!(
        "swarm: {} room(s) x ({} publishers + {} subscribers), {:.1} s measured",
        args.rooms, args.publishers, args.subscribers, elapsed
    );
    println!(
        "viewers receiving video: {receiving}/{viewers}; packets received by viewers: {viewer_packets} ({:.0}/s); bad payloads: {bad}",
        viewer_packets as f64 / elapsed
    );
    if let (Some((c0, p0)), Some((c1, p1))) = (before, after) {
        let forwarded = c1.rtp_forwarded.saturating_sub(c0.rtp_forwarded);
        let bits = (c1.bytes_sent.saturating_sub(c0.bytes_sent) * 8) as f64;
        println!(
            "server: forwarded {forwarded} RTP packets ({:.0}/s), {:.1} Mbit/s sent",
            forwarded as f64 / elapsed,
            bits / elapsed / 1e6
        );
        if let (Some(p0), Some(p1)) = (p0, p1) {
            let cpu = p1.cpu_seconds - p0.cpu_seconds;
            println!(
                "server cost: {cpu:.2} CPU-s = {:.0}% of one core; {:.0} forwarded packets per CPU-second; {:.3} CPU-seconds per forwarded Gbit; RSS {:.1} MiB",
                cpu / elapsed * 100.0,
                forwarded as f64 / cpu.max(1e-9),
                cpu / (bits / 1e9).max(1e-12),
                p1.rss_bytes as f64 / (1 << 20) as f64
            );
        }
    }
    for (_, bot) in &bots {
        bot.leave();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ExitCode::SUCCESS
}

fn received(bot: &Bot) -> usize {
    bot.with_state(|s| s.streams.values().map(|st| st.seqs.len()).sum())
}

async fn measure(args: &Args) -> Option<(ServerCounters, Option<ProcessSample>)> {
    let counters = match scrape(&args.server).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: cannot read the server's metrics: {e}");
            return None;
        }
    };
    let process = match args.server_pid {
        Some(pid) => sample_process(pid).ok(),
        None => counters.cpu_seconds.map(|cpu_seconds| ProcessSample {
            cpu_seconds,
            rss_bytes: counters.rss_bytes.unwrap_or(0),
        }),
    };
    Some((counters, process))
}
