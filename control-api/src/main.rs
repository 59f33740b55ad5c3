//! `sfu-server`: the SFU media server. With no arguments it serves the web demo and the API on
//! 127.0.0.1:7880 with development credentials; `sfu-server token` mints access tokens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, DEV_API_SECRET, Grants};
use control_api::cluster::ClusterConfig;
use control_api::room::RoomLimits;
use control_api::signalling::SignallingTimeouts;
use control_api::tls::TlsSource;
use control_api::turn::TurnConfig;
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
    Serve(Box<ServeArgs>),
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
    /// TCP port for ICE over TCP (passive candidates next to the UDP ones, for networks that
    /// block UDP); 0 turns it off. [default: 7881, or a free port with --media-port 0]
    #[arg(long, env = "SFU_ICE_TCP_PORT")]
    ice_tcp_port: Option<u16>,
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
    /// Seconds a participant whose signalling socket dropped may reconnect and resume its
    /// session (same participant, tracks and subscriptions; the others see no leave) before
    /// it is removed from its room (0: removed at once).
    #[arg(long, env = "SFU_RESUME_GRACE", default_value_t = 20)]
    resume_grace: u64,
    /// Seconds a new signalling socket has to send `join` (or `resume`) before it is closed.
    #[arg(long, env = "SFU_JOIN_TIMEOUT", default_value_t = 10)]
    join_timeout: u64,
    /// Seconds a new peer connection (or WHIP/WHEP resource) has to complete ICE and DTLS
    /// before it is closed. A connected one whose ICE goes down (an ICE restart, or 15 s
    /// without a connectivity check) is closed after 15 s plus this without a packet.
    #[arg(long, env = "SFU_CONNECT_TIMEOUT", default_value_t = 15)]
    connect_timeout: u64,
    /// Maximum participants on this server, over all rooms (0: unlimited). Joins past it get
    /// `server_full` (WHIP/WHEP: 503), so a client or load balancer tries another server.
    #[arg(long, env = "SFU_MAX_NODE_PARTICIPANTS", default_value_t = 0)]
    max_node_participants: usize,
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
    /// Bandwidth a new subscriber's estimate starts from, in kbit/s, before it has measured
    /// its link. Its first keyframe is paced at about this rate: higher gets it there sooner
    /// on a fast link but sends a join burst harder into slow links and a busy server.
    #[arg(long, env = "SFU_INITIAL_ESTIMATE_KBPS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=100_000))]
    initial_estimate_kbps: u64,
    /// Negotiate RED (redundant audio, RFC 2198) around Opus: forwarded as it came to
    /// subscribers that negotiated it, as plain Opus to the others, each for the whole call.
    /// It doubles the audio bitrate; worth it where loss, not bandwidth, is the problem.
    #[arg(long, env = "SFU_RED_AUDIO", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    red_audio: bool,
    /// TLS certificate chain (PEM) for HTTPS and WSS on the HTTP port; needs --tls-key.
    /// Reloaded when the file changes (checked every 10 s) or on SIGHUP. [default: plain HTTP]
    #[arg(long, env = "SFU_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SFU_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate generated at start for --tls-name, the advertised
    /// addresses and localhost (browsers warn about it; for LANs and tests). Prints its
    /// SHA-256 fingerprint.
    #[arg(long, env = "SFU_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Extra host name for the --tls-self-signed certificate; repeat for several.
    #[arg(long = "tls-name", env = "SFU_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Address or network (CIDR) of a TLS-terminating proxy in front of the server whose
    /// X-Forwarded-Proto/-Host and Forwarded headers are believed; repeat for several.
    /// [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "SFU_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// TURN relay URL handed to clients (turn:HOST:3478?transport=udp,
    /// turn:HOST:3478?transport=tcp, turns:HOST:5349?transport=tcp); repeat for several.
    /// Needs --turn-secret. [default: none]
    #[arg(long = "turn-server", env = "SFU_TURN_SERVERS", value_delimiter = ',')]
    turn_servers: Vec<String>,
    /// The relay's shared secret (coturn: use-auth-secret, static-auth-secret=SECRET): the
    /// server mints time-limited TURN credentials per participant with it.
    #[arg(long, env = "SFU_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Seconds the minted TURN credentials stay valid.
    #[arg(long, env = "SFU_TURN_TTL", default_value_t = 4 * 3600)]
    turn_ttl: u64,
    /// Cluster mode: the Redis server of the cluster's node registry (redis://HOST:PORT, or
    /// redis://:PASSWORD@HOST:PORT/DB). This node announces itself there every second and
    /// lists the others; without it the server is a single node. [default: none]
    #[arg(long, env = "SFU_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// This node's id in the cluster. [default: the host name and the HTTP port]
    #[arg(long, env = "SFU_NODE_ID", requires = "redis_url")]
    node_id: Option<String>,
    /// The URL clients reach this node at (like `https://sfu-1.example.com`), handed to clients of
    /// other nodes as a place to reconnect. [default: from --http-addr (and the first
    /// --advertise-ip if it is 0.0.0.0)]
    #[arg(long, env = "SFU_PUBLIC_URL", requires = "redis_url")]
    public_url: Option<String>,
    /// UDP address of this node's media relay (QUIC) for the other nodes (IP:PORT; port 0: any
    /// free one; 0.0.0.0 is published as the first --advertise-ip). The nodes link up, one
    /// connection per pair, each proving the cluster secret. Needs --cluster-secret.
    /// [default: none]
    #[arg(long, env = "SFU_RELAY_ADDR", requires_all = ["redis_url", "cluster_secret"])]
    relay_addr: Option<SocketAddr>,
    /// The cluster's shared secret (at least 16 characters, the same on every node): a node
    /// links its media relay only to nodes that prove they know it.
    #[arg(
        long,
        env = "SFU_CLUSTER_SECRET",
        hide_env_values = true,
        requires = "relay_addr"
    )]
    cluster_secret: Option<String>,
    /// Prefix of the registry's Redis keys, so several clusters can share one Redis.
    #[arg(long, env = "SFU_CLUSTER_PREFIX", default_value = "sfu")]
    cluster_prefix: String,
    /// Seconds a node stays in the registry after its last heartbeat (one per second): how
    /// soon the others forget a node that died.
    #[arg(long, env = "SFU_NODE_TTL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=300))]
    node_ttl: u64,
    /// Allow the public development key on a non-loopback --http-addr (anyone who can reach
    /// the server can then mint tokens). Never in production.
    #[arg(long, env = "SFU_DEV")]
    dev: bool,
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
    /// Print a link to the web demo at this address that opens it signed in with the token
    /// (in the URL fragment, which browsers never send to a server), instead of the token.
    #[arg(long, value_name = "URL")]
    join_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(args)) => serve(*args),
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
            match &args.join_url {
                Some(url) => {
                    let base = url.split('#').next().unwrap_or_default();
                    if !(base.starts_with("https://") || base.starts_with("http://")) {
                        eprintln!("error: --join-url must be an http:// or https:// address");
                        return ExitCode::from(2);
                    }
                    println!("{base}#token={token}");
                }
                None => println!("{token}"),
            }
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
    control_api::metrics::count_panics();

    let keys = match parse_keys(&args.api_keys) {
        Ok(keys) => keys,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let dev_keys = keys.is_dev();
    // Signs that the server is meant for others: a public address, TLS, a proxy in front of
    // it (which may make a loopback address public), or a TURN relay to hand out.
    let exposed = if !args.http_addr.ip().is_loopback() {
        Some(format!(
            "--http-addr {} is reachable from other machines",
            args.http_addr
        ))
    } else if args.tls_cert.is_some() || args.tls_self_signed {
        Some("TLS is configured".to_string())
    } else if !args.trusted_proxies.is_empty() {
        Some("a reverse proxy is configured (--trusted-proxy)".to_string())
    } else if args.turn_secret.is_some() || !args.turn_servers.is_empty() {
        Some("a TURN relay is configured (its credentials would go to anyone)".to_string())
    } else {
        None
    };
    if let (true, Some(why)) = (dev_keys, exposed) {
        if !args.dev {
            eprintln!(
                "error: {why}, and without --api-key the server would use the public \
                 development key (anyone could mint tokens).\n\
                 Pass your own key: --api-key mykey:$(head -c 24 /dev/urandom | base64)\n\
                 (or --dev to run with the development key anyway, on a network you trust)"
            );
            return ExitCode::from(2);
        }
        tracing::warn!(
            http_addr = %args.http_addr,
            "--dev: the public development key on a non-loopback address; anyone who can \
             reach this server can mint tokens and join any room"
        );
    }
    let trusted_proxies = match args
        .trusted_proxies
        .iter()
        .map(|p| control_api::origin::parse_proxy(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(proxies) => proxies,
        Err(message) => {
            eprintln!("error: --trusted-proxy {message}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (_, _, true) => Some(TlsSource::SelfSigned {
            names: self_signed_names(&args),
        }),
        _ => None,
    };
    let turn = match (&args.turn_secret, args.turn_servers.is_empty()) {
        (None, true) => None,
        (secret, _) => Some(TurnConfig {
            servers: args.turn_servers.clone(),
            secret: secret.clone().unwrap_or_default(),
            ttl: Duration::from_secs(args.turn_ttl),
        }),
    };
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
        initial_egress_bitrate: args.initial_estimate_kbps * 1000,
        red_audio: args.red_audio,
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        ice_tcp_port: match args.ice_tcp_port {
            Some(0) => None,
            Some(port) => Some(port),
            None if args.media_port == 0 => Some(0),
            None => Some(7881),
        },
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
            max_node_participants: args.max_node_participants,
            auto_create: args.auto_create_rooms.unwrap_or(dev_keys),
            max_rooms: args.max_rooms,
            empty_timeout: Duration::from_secs(args.empty_timeout),
        },
        webhooks,
        tls,
        trusted_proxies,
        turn,
        signalling: SignallingTimeouts {
            join: Duration::from_secs(args.join_timeout.max(1)),
            resume_grace: Duration::from_secs(args.resume_grace),
            ..SignallingTimeouts::default()
        },
        cluster: args.redis_url.as_ref().map(|url| ClusterConfig {
            node_id: args.node_id.clone(),
            public_url: args.public_url.clone(),
            relay_addr: args.relay_addr,
            secret: args.cluster_secret.clone(),
            key_prefix: args.cluster_prefix.clone(),
            ttl: Duration::from_secs(args.node_ttl),
            ..ClusterConfig::new(url)
        }),
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
        if run_until_drained(&server, Duration::from_secs(drain_timeout)).await {
            server.finish(Duration::from_secs(5)).await;
        }
        tracing::info!("shutting down");
        server.leave_cluster(Duration::from_secs(1)).await;
        server.shutdown();
        ExitCode::SUCCESS
    })
}

/// Serves until a termination signal (SIGTERM or Ctrl-C), then drains: not ready, no new
/// joins, rooms carry on until they are empty or `timeout` passes. A second signal ends the
/// drain at once. Returns `false` after a second signal (exit now, without finishing).
async fn run_until_drained(server: &Server, timeout: Duration) -> bool {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop the server with SIGKILL");
            std::future::pending::<()>().await;
            return false;
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
            true
        }
        () = signals.next() => {
            tracing::info!("second signal: exiting now");
            false
        }
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

/// Names the self-signed certificate is valid for: those given, the advertised media
/// addresses, the HTTP address if it is a specific one, and localhost.
fn self_signed_names(args: &ServeArgs) -> Vec<String> {
    let mut names = args.tls_names.clone();
    names.extend(args.advertise_ips.iter().map(ToString::to_string));
    let http_ip = args.http_addr.ip();
    if !http_ip.is_unspecified() {
        names.push(http_ip.to_string());
    }
    names.extend([
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]);
    let mut unique = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

fn print_banner(server: &Server) {
    let http = server.http_addr;
    let (web, ws) = match &server.state.tls {
        Some(_) => ("https", "wss"),
        None => ("http", "ws"),
    };
    let media: Vec<String> = server
        .sfu()
        .advertised_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let workers = server.sfu().media_addrs().len();
    println!("sfu-server {} ready", env!("CARGO_PKG_VERSION"));
    println!("  web demo    {web}://{http}/");
    println!("  signalling  {ws}://{http}/rtc");
    println!("  metrics     {web}://{http}/metrics");
    if let Some(tls) = &server.state.tls {
        match tls.files() {
            Some((cert, _)) => println!(
                "  tls         {} (reloaded when it changes)",
                cert.display()
            ),
            None => println!("  tls         self-signed certificate"),
        }
        println!("  sha-256     {}", tls.fingerprint());
    }
    if let Some(turn) = &server.state.config.turn {
        println!("  turn        {}", turn.servers.join(", "));
    }
    if let Some(cluster) = &server.state.cluster {
        let redis = server
            .state
            .config
            .cluster
            .as_ref()
            .map(|c| control_api::cluster::redacted(&c.redis_url))
            .unwrap_or_default();
        println!("  cluster     node {} via {redis}", cluster.id());
    }
    println!("  media       udp {} ({workers} workers)", media.join(", "));
    let tcp: Vec<String> = server
        .sfu()
        .tcp_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    if !tcp.is_empty() {
        println!("  ice-tcp     tcp {}", tcp.join(", "));
    }
    if server.state.keys.is_dev() {
        println!("  api key     {DEV_API_KEY}");
        println!("  api secret  {DEV_API_SECRET}");
        println!(
            "  (development credentials: anyone can get a token from /dev/token; pass --api-key KEY:SECRET in production)"
        );
    }
    println!("Open {web}://{http}/ in two browser tabs to start a call.");
}
