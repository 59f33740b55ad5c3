//! `sfu-churn`: a soak of a running server. Bots join, publish, mute, restart ICE, drop their
//! signalling socket and resume, leave and vanish without a word, continuously; the server's
//! memory, descriptors, threads, peers and participants are sampled from its `/metrics`. Exits
//! non-zero when anything grows after warm-up, does not come back to its baseline once the bots
//! are gone, panics, or when a bot meets an error it did not cause.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadtest::swarm::churn::{ChurnPlan, churn};
use sfu_protocol::auth::{DEV_API_KEY, DEV_API_SECRET};

#[derive(Parser)]
#[command(
    name = "sfu-churn",
    version,
    about = "Soak a running SFU with churning bots and check nothing leaks."
)]
struct Args {
    /// The server, `host:port` (its HTTP port, serving /rtc and /metrics).
    #[arg(long, default_value = "127.0.0.1:7880")]
    server: String,
    /// Seconds to churn.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Bots alive at once, at most (a third publish).
    #[arg(long, default_value_t = 30)]
    bots: usize,
    /// Rooms the bots spread over.
    #[arg(long, default_value_t = 3)]
    rooms: usize,
    /// Actions per second (join, leave, vanish, drop and resume, mute, ICE restart, quality).
    #[arg(long, default_value_t = 4.0)]
    actions_per_second: f64,
    /// Seconds between samples of the server.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Seed of the action sequence (the same seed takes the same actions).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fail when resident memory grows more than this (percent) from the first to the last
    /// third of the run after warm-up (its first quarter).
    #[arg(long, default_value_t = 10.0)]
    max_memory_growth: f64,
    /// Seconds to wait, after the last bot left, for the server to forget everyone (vanished
    /// bots are removed after the server's resume grace).
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// API key for minting tokens.
    #[arg(long, env = "SFU_API_KEY", default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret for minting tokens.
    #[arg(long, env = "SFU_API_SECRET", default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = ChurnPlan {
        server: args
            .server
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        rooms: args.rooms.max(1),
        bots: args.bots.max(1),
        duration: Duration::from_secs(args.duration),
        actions_per_second: args.actions_per_second,
        sample_every: Duration::from_secs(args.sample_every.max(1)),
        seed: args.seed,
        keys: (args.api_key, args.api_secret),
        settle: Duration::from_secs(args.settle),
    };
    eprintln!(
        "churning {} bots over {} rooms on {} for {} s (a sample every {} s)",
        plan.bots, plan.rooms, plan.server, args.duration, args.sample_every
    );
    let report = runtime.block_on(churn(&plan, |s| {
        eprintln!(
            "  {:>6.0}s  bots {:>4}  peers {:>4}  RSS {:>7.1} MiB  fds {:>5}",
            s.at,
            s.bots,
            s.peers,
            s.rss_bytes as f64 / 1048576.0,
            s.open_fds
        );
    }));
    eprintln!("\n{}", report.render());
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: cannot write JSON: {e}"),
        }
    }
    let failures = report.failures(args.max_memory_growth);
    if failures.is_empty() {
        eprintln!("PASS: nothing leaked, nothing panicked");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}
