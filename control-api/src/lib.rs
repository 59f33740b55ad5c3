//! The control plane of the SFU: an axum HTTP/WebSocket server in front of the media core.
//! It owns rooms, participants and access tokens; the media core (`sfu`) owns peers and tracks.
//!
//! [`Server::start`] runs everything in-process (the binary, and the integration tests);
//! [`protocol`] is the signalling protocol, shared with Rust clients.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod assets;
pub mod cluster;
pub use sfu_protocol::auth;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub use sfu_protocol::protocol;
pub mod rate_limit;
pub mod revoked;
pub mod room;
pub mod rooms_api;
pub mod serve;
pub mod session;
pub mod signalling;
pub mod tls;
pub mod turn;
pub mod webhook;
pub mod whip;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sfu::{Sfu, SfuConfig, SfuError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::ApiKeys;
use crate::room::{RoomLimits, Rooms};

/// Everything the server needs to start. [`ServerConfig::default`] is the development setup.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP (API, signalling, web demo) listen address. Default `127.0.0.1:7880`.
    pub http_addr: SocketAddr,
    /// The media core's configuration.
    pub sfu: SfuConfig,
    /// Accepted API keys. Default: the development key.
    pub keys: ApiKeys,
    /// Serve the web demo from this directory instead of the embedded copy.
    pub web_root: Option<PathBuf>,
    /// Largest WebSocket message accepted from a client, in bytes; a bigger one closes that
    /// socket. Default 256 KiB.
    pub ws_max_message: usize,
    /// Room policy.
    pub rooms: RoomLimits,
    /// Webhook receivers (none by default).
    pub webhooks: Option<webhook::WebhookConfig>,
    /// Serve HTTPS (and WSS) with this certificate instead of plain HTTP. Default: none.
    pub tls: Option<tls::TlsSource>,
    /// Proxies whose `X-Forwarded-Proto`/`Forwarded` headers are believed (a TLS-terminating
    /// reverse proxy in front of the server). Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TURN relays to hand clients credentials for. Default: none.
    pub turn: Option<turn::TurnConfig>,
    /// Join deadline, liveness and resume grace of signalling sockets.
    pub signalling: signalling::SignallingTimeouts,
    /// Cluster mode: the Redis node registry. Default: none (a single node).
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7880)),
            sfu: SfuConfig::default(),
            keys: ApiKeys::dev(),
            web_root: None,
            ws_max_message: 256 * 1024,
            rooms: RoomLimits {
                max_participants: 0,
                auto_create: true,
                max_rooms: 0,
                max_node_participants: 0,
                empty_timeout: std::time::Duration::from_secs(300),
            },
            webhooks: None,
            tls: None,
            trusted_proxies: Vec::new(),
            turn: None,
            signalling: signalling::SignallingTimeouts::default(),
            cluster: None,
        }
    }
}

/// State shared by every request handler.
pub struct AppState {
    /// The configuration the server started with.
    pub config: ServerConfig,
    /// The media core.
    pub sfu: Sfu,
    /// Accepted API keys.
    pub keys: ApiKeys,
    /// Rooms and participants.
    pub rooms: Rooms,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// Set when the server drains: not ready, no new joins, existing rooms carry on.
    pub draining: AtomicBool,
    /// Live WHIP and WHEP resources.
    pub resources: whip::Resources,
    /// Where room events go.
    pub webhooks: webhook::Webhooks,
    /// The HTTPS certificate, when the server speaks TLS.
    pub tls: Option<Arc<tls::Tls>>,
    /// Signalling sessions a new socket may resume.
    pub resumable: signalling::Resumable,
    /// Tokens of participants the room service removed.
    pub revoked: revoked::RevokedTokens,
    /// This server's metrics registry (`/metrics`).
    pub metrics: metrics::Metrics,
    /// This node's cluster membership (cluster mode only).
    pub cluster: Option<Arc<cluster::Cluster>>,
}

impl AppState {
    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The scheme and host a request's client used (see [`origin`]).
    pub fn origin(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<SocketAddr>,
    ) -> origin::Origin {
        origin::of_request(
            headers,
            peer,
            self.tls.is_some(),
            &self.config.trusted_proxies,
            &self.http_addr.to_string(),
        )
    }

    /// TURN credentials for a participant whose token expires at `until` (none without
    /// `--turn-secret`).
    pub fn ice_servers(&self, identity: &str, until: u64) -> Vec<turn::IceServer> {
        self.config
            .turn
            .as_ref()
            .map(|t| vec![t.credentials(identity, auth::unix_now(), until)])
            .unwrap_or_default()
    }

    /// Signalling URLs of the cluster's other live nodes, for a client to try if this one
    /// becomes unreachable (none outside cluster mode).
    pub fn alternates(&self) -> Vec<String> {
        self.cluster
            .as_ref()
            .map(|c| c.alternates())
            .unwrap_or_default()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The media core did not start.
    #[error("media: {0}")]
    Media(#[from] SfuError),
    /// The TLS certificate could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The TURN configuration is not usable.
    #[error("TURN: {0}")]
    Turn(String),
    /// The cluster configuration is not usable.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The HTTP port could not be bound.
    #[error(
        "cannot listen for HTTP on {addr}: {source} (is another server running? use --http-addr)"
    )]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// How often the certificate files are checked for a renewal.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Folds recorded histogram samples into their buckets every few seconds, until the server
/// is gone (samples wait in a queue until then: without this, memory would grow while
/// nobody scrapes `/metrics`).
async fn metrics_upkeep(state: std::sync::Weak<AppState>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        every.tick().await;
        match state.upgrade() {
            Some(state) => state.metrics.run_upkeep(),
            None => return,
        }
    }
}

/// Reloads the certificate files when they change (checked every [`CERTIFICATE_CHECK`]) or
/// when the process gets SIGHUP, until the server is gone.
async fn watch_certificate(tls: std::sync::Weak<tls::Tls>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
        };
        let Some(tls) = tls.upgrade() else { break };
        match tls.reload(forced) {
            Ok(true) => tracing::info!(
                fingerprint = %tls.fingerprint(),
                "TLS certificate reloaded"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "the TLS certificate files changed but cannot be used; keeping the current one"
            ),
        }
    }
}

/// A running server.
pub struct Server {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The shared state (the media core is `state.sfu`).
    pub state: Arc<AppState>,
    http: JoinHandle<()>,
}

impl Server {
    /// Starts the media workers and the HTTP server.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        if let Some(turn) = &config.turn {
            turn.validate().map_err(StartError::Turn)?;
        }
        let tls = config
            .tls
            .clone()
            .map(tls::Tls::new)
            .transpose()?
            .map(Arc::new);
        let tls_config = tls.as_ref().map(|t| t.server_config()).transpose()?;
        let metrics = metrics::Metrics::new();
        let sfu = Sfu::start(SfuConfig {
            timings: metrics.timings(),
            ..config.sfu.clone()
        })?;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.http_addr,
            source,
        })?;
        let cluster = config
            .cluster
            .clone()
            .map(|c| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let host = match (
                    http_addr.ip().is_unspecified(),
                    config.sfu.advertise_ips.first(),
                ) {
                    (true, Some(ip)) => {
                        std::net::SocketAddr::new(*ip, http_addr.port()).to_string()
                    }
                    _ => http_addr.to_string(),
                };
                let default_id = format!("{}-{}", host_name(), http_addr.port());
                cluster::Cluster::new(
                    c,
                    default_id,
                    format!("{scheme}://{host}"),
                    config.sfu.advertise_ips.first().copied(),
                )
            })
            .transpose()
            .map_err(StartError::Cluster)?
            .map(Arc::new);
        let webhooks = config
            .webhooks
            .clone()
            .map(webhook::Webhooks::start)
            .unwrap_or_default();
        let state = Arc::new(AppState {
            keys: config.keys.clone(),
            rooms: Rooms::new(sfu.clone(), config.rooms, webhooks.clone()),
            webhooks,
            config,
            sfu,
            http_addr,
            draining: AtomicBool::new(false),
            resources: whip::Resources::default(),
            tls: tls.clone(),
            resumable: signalling::Resumable::default(),
            revoked: revoked::RevokedTokens::default(),
            metrics,
            cluster: cluster.clone(),
        });
        tracing::info!(
            %http_addr,
            tls = tls.is_some(),
            "HTTP API, signalling (/rtc) and web demo listening"
        );
        let router = http::app(state.clone());
        let http = match tls_config {
            Some(config) => tokio::spawn(serve::tls(listener, router, config)),
            None => tokio::spawn(async move {
                if let Err(e) = serve::plain(listener, router).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            }),
        };
        tokio::spawn(metrics_upkeep(Arc::downgrade(&state)));
        if let Some(cluster) = cluster {
            tracing::info!(
                node = %cluster.id(),
                url = %cluster.me().url,
                redis = %state.config.cluster.as_ref().map(|c| cluster::redacted(&c.redis_url)).unwrap_or_default(),
                "cluster mode: announcing this node in the Redis registry"
            );
            if let Some(relay) = cluster.relay() {
                tracing::info!(
                    addr = %cluster.me().relay_addr.unwrap_or_default(),
                    "media relay listening (QUIC; links to the other nodes, authenticated by the cluster secret)"
                );
                let relayed = cluster.relayed().clone();
                relayed.start(Arc::downgrade(&state));
                tokio::spawn(relay.clone().serve(move |link| relayed.attach(link)));
            }
            tokio::spawn(cluster::heartbeat(Arc::downgrade(&state), cluster));
        }
        if let Some(tls) = tls.filter(|t| t.files().is_some()) {
            tokio::spawn(watch_certificate(Arc::downgrade(&tls)));
        }
        Ok(Server {
            http_addr,
            state,
            http,
        })
    }

    /// The media core.
    pub fn sfu(&self) -> &Sfu {
        &self.state.sfu
    }

    /// Starts draining: `/readyz` fails and joins are refused, while the rooms in progress
    /// carry on.
    pub fn start_drain(&self) {
        if !self.state.draining.swap(true, Ordering::Relaxed) {
            let (rooms, participants) = self.state.rooms.counts();
            tracing::info!(
                rooms,
                participants,
                "draining: refusing new joins until the rooms empty"
            );
        }
    }

    /// Number of participants in all rooms.
    pub fn participants(&self) -> usize {
        self.state.rooms.counts().1
    }

    /// Waits until no participant is left, or `deadline` passes. Returns whether the rooms
    /// emptied.
    pub async fn drained(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.participants() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Ends what the drain left (the server is exiting): every participant still connected
    /// is told why (`left`) and leaves its room, and the webhooks queued by then (those
    /// leaves and `room_finished` included) are delivered. Each step waits at most `grace`.
    pub async fn finish(&self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.state
            .rooms
            .close_all("the server is shutting down; join again to be placed on another server")
            .await;
        if !self.drained(deadline).await {
            tracing::warn!(
                participants = self.participants(),
                "participants still connected at exit"
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        if !self.state.webhooks.flushed(deadline).await {
            tracing::warn!("webhooks still queued at exit");
        }
    }

    /// Removes this node from the cluster's registry at once (cluster mode; otherwise its
    /// entry would linger until it expires). Waits at most `within`.
    pub async fn leave_cluster(&self, within: std::time::Duration) {
        if let Some(cluster) = &self.state.cluster {
            cluster.leave(within).await;
        }
    }

    /// Stops the HTTP server and the media workers.
    pub fn shutdown(self) {
        self.http.abort();
        self.state.sfu.shutdown();
    }
}

/// This machine's host name (a Kubernetes pod's name), for a default node id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .unwrap_or_else(|| "node".to_string())
}
