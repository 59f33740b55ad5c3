//! `sfu-server`: the SFU media server. With no arguments it serves the web demo and the API on
//! 127.0.0.1:7880 with development credentials; `sfu-server token` mints access tokens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, DEV_API_SECRET, Grants};
use control_api::room::RoomLimits;
use control_api::webhook::WebhookConfig;
use control_api::{Server, ServerConfig};
use sfu::SfuConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sfu-server",
    version,
    about = "WebRTC SFU media server: group calls, live-stream fan-out, WHIP/WHEP."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Print a signed access token.
    Token(TokenArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address for HTTP: the API, the signalling WebSocket (/rtc) and the web demo.
    #[arg(long, env = "SFU_HTTP_ADDR", default_value = "127.0.0.1:7880")]
    http_addr: SocketAddr,
    /// IP address the media (UDP) sockets bind to. 0.0.0.0 needs --advertise-ip.
    #[arg(long, env = "SFU_MEDIA_IP", default_value = "127.0.0.1")]
    media_ip: IpAddr,
    /// UDP port of the first media worker; worker N uses this port + N. 0 picks free ports.
    #[arg(long, env = "SFU_MEDIA_PORT", default_value_t = 7882)]
    media_port: u16,
    /// Address clients must reach for media (the ICE candidate). Repeat for several.
    /// [default: the --media-ip address]
    #[arg(
        long = "advertise-ip",
        env = "SFU_ADVERTISE_IPS",
        value_delimiter = ','
    )]
    advertise_ips: Vec<IpAddr>,
    /// Number of media worker threads. [default: the number of CPU cores]
    #[arg(long, env = "SFU_WORKERS")]
    workers: Option<usize>,
    /// API key and secret as KEY:SECRET; repeat (or separate with commas) for key rotation.
    /// [default: the public development key, which also enables /dev/token]
    #[arg(long = "api-key", env = "SFU_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Serve the web demo from this directory instead of the copy built into the binary.
    #[arg(long, env = "SFU_WEB_ROOT")]
    web_root: Option<PathBuf>,
    /// Largest WebSocket message accepted from a client, in bytes; a larger one closes that
    /// client's socket.
    #[arg(long, env = "SFU_WS_MAX_MESSAGE", default_value_t = 256 * 1024)]
    ws_max_message: usize,
    /// Maximum participants per room (0: unlimited).
    #[arg(long, env = "SFU_MAX_PARTICIPANTS", default_value_t = 0)]
    max_participants: usize,
    /// Create a room when the first participant joins it. [default: true with the development
    /// key, false with --api-key (rooms are then created through the room service)]
    #[arg(long, env = "SFU_AUTO_CREATE_ROOMS", action = ArgAction::Set)]
    auto_create_rooms: Option<bool>,
    /// Maximum number of rooms (0: unlimited).
    #[arg(long, env = "SFU_MAX_ROOMS", default_value_t = 0)]
    max_rooms: usize,
    /// Seconds a room created through the room service may stay empty before it is closed
    /// (the default when the request gives none).
    #[arg(long, env = "SFU_EMPTY_TIMEOUT", default_value_t = 300)]
    empty_timeout: u64,
    /// Seconds a draining server (after SIGTERM or Ctrl-C) waits for its rooms to empty before
    /// it exits; a second signal exits at once.
    #[arg(long, env = "SFU_DRAIN_TIMEOUT", default_value_t = 600)]
    drain_timeout: u64,
    /// URL to POST room events to (webhooks, signed with the first API key's secret);
    /// repeat, or separate with commas, for several. [default: none]
    #[arg(long = "webhook-url", env = "SFU_WEBHOOK_URLS", value_delimiter = ',')]
    webhook_urls: Vec<String>,
    /// Estimate each subscriber's downlink (transport-wide congestion control) and fit its
    /// simulcast layers to it. false: layers follow only the subscriber's requests.
    #[arg(long, env = "SFU_CONGESTION_CONTROL", default_value_t = true, action = ArgAction::Set)]
    congestion_control: bool,
    /// Log filter (tracing syntax, e.g. "info" or "info,sfu=debug").
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

#[derive(Args)]
struct TokenArgs {
    /// API key to sign with.
    #[arg(long, env = "SFU_TOKEN_KEY", default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret to sign with.
    #[arg(long, env = "SFU_TOKEN_SECRET", default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
    /// The participant's identity (the token's subject).
    #[arg(long)]
    identity: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// The room the token is for.
    #[arg(long)]
    room: Option<String>,
    /// Validity, in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    ttl: u64,
    /// Grant: may join the room.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    room_join: bool,
    /// Grant: may publish audio and video.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    can_publish: bool,
    /// Grant: may subscribe.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    can_subscribe: bool,
    /// Grant: may send data messages.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    can_publish_data: bool,
    /// Grant: joins invisibly.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    hidden: bool,
    /// Admin grant: may create rooms.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    room_create: bool,
    /// Admin grant: may list rooms.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    room_list: bool,
    /// Admin grant: may administer the room.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    room_admin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let grants = Grants {
        room: args.room,
        room_join: args.room_join,
        can_publish: Some(args.can_publish),
        can_subscribe: Some(args.can_subscribe),
        can_publish_data: Some(args.can_publish_data),
        hidden: args.hidden,
        room_create: args.room_create,
        room_list: args.room_list,
        room_admin: args.room_admin,
    };
    let mut claims = Claims::new(
        &args.api_key,
        &args.identity,
        Duration::from_secs(args.ttl),
        grants,
    );
    claims.name = args.name;
    let keys = ApiKeys::new([(args.api_key, args.api_secret)]);
    match keys.mint(&claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let keys = match parse_keys(&args.api_keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let dev_keys = keys.is_dev();
    let webhooks = (!args.webhook_urls.is_empty())
        .then(|| {
            let key = keys.first_key()?.to_string();
            let secret = keys.secret(&key)?.to_string();
            Some(WebhookConfig {
                urls: args.webhook_urls.clone(),
                key,
                secret,
                initial_backoff: Duration::from_secs(1),
                attempts: 6,
                timeout: Duration::from_secs(10),
            })
        })
        .flatten();
    let mut sfu = SfuConfig {
        bind_ip: args.media_ip,
        first_port: args.media_port,
        advertise_ips: args.advertise_ips.clone(),
        congestion_control: args.congestion_control,
        ..SfuConfig::default()
    };
    if let Some(workers) = args.workers {
        sfu.workers = workers;
    }
    let config = ServerConfig {
        http_addr: args.http_addr,
        sfu,
        keys,
        web_root: args.web_root.clone(),
        ws_max_message: args.ws_max_message,
        rooms: RoomLimits {
            max_participants: args.max_participants,
            auto_create: args.auto_create_rooms.unwrap_or(dev_keys),
            max_rooms: args.max_rooms,
            empty_timeout: Duration::from_secs(args.empty_timeout),
        },
        webhooks,
    };
    let drain_timeout = args.drain_timeout;
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
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        print_banner(&server);
        run_until_drained(&server, Duration::from_secs(drain_timeout)).await;
        tracing::info!("shutting down");
        server.shutdown();
        ExitCode::SUCCESS
    })
}

/// Serves until a termination signal (SIGTERM or Ctrl-C), then drains: not ready, no new
/// joins, rooms carry on until they are empty or `timeout` passes. A second signal ends the
/// drain at once.
async fn run_until_drained(server: &Server, timeout: Duration) {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop the server with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    signals.next().await;
    server.start_drain();
    let participants = server.participants();
    if participants > 0 {
        eprintln!(
            "draining: {participants} participant(s) still connected; exiting when they leave or in {} s (signal again to exit now)",
            timeout.as_secs()
        );
    }
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::select! {
        emptied = server.drained(deadline) => {
            if !emptied {
                tracing::warn!(participants = server.participants(), "drain deadline reached");
            }
        }
        () = signals.next() => tracing::info!("second signal: exiting now"),
    }
}

/// SIGTERM and SIGINT as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn parse_keys(pairs: &[String]) -> Result<ApiKeys, String> {
    if pairs.is_empty() {
        return Ok(ApiKeys::dev());
    }
    let mut parsed = Vec::new();
    for pair in pairs {
        let Some((key, secret)) = pair
            .split_once(':')
            .filter(|(k, s)| !k.is_empty() && s.len() >= 16)
        else {
            return Err(format!(
                "--api-key must be KEY:SECRET with a secret of at least 16 characters (got {:?})",
                pair.split(':').next().unwrap_or_default()
            ));
        };
        parsed.push((key.to_string(), secret.to_string()));
    }
    Ok(ApiKeys::new(parsed))
}

fn print_banner(server: &Server) {
    let http = server.http_addr;
    let media: Vec<String> = server
        .sfu()
        .advertised_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let workers = server.sfu().media_addrs().len();
    println!("sfu-server {} ready", env!("CARGO_PKG_VERSION"));
    println!("  web demo    http://{http}/");
    println!("  signalling  ws://{http}/rtc");
    println!("  metrics     http://{http}/metrics");
    println!("  media       udp {} ({workers} workers)", media.join(", "));
    if server.state.keys.is_dev() {
        println!("  api key     {DEV_API_KEY}");
        println!("  api secret  {DEV_API_SECRET}");
        println!(
            "  (development credentials: anyone can get a token from /dev/token; pass --api-key KEY:SECRET in production)"
        );
    }
    println!("Open http://{http}/ in two browser tabs to start a call.");
}
