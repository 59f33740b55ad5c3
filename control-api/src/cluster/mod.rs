//! Cluster mode (`--redis-url`): this node's entry in the node registry kept in Redis, and what
//! it last read there about the other nodes.
//!
//! Without a Redis URL there is no [`Cluster`] and the server is a single node. With one, a
//! heartbeat task (`heartbeat`) writes this node's [`NodeInfo`] (URL, relay address, load)
//! every [`ClusterConfig::heartbeat`] under a key that expires after [`ClusterConfig::ttl`], and
//! reads every node's entry back: a node that dies leaves the registry within the time to live,
//! one that drains says so, and one that leaves withdraws its entry at once. Redis going away
//! changes nothing for the calls in progress: the node keeps the last list it read (marked
//! stale), logs the outage once, and announces itself again when Redis is back, restarted
//! empty or not. This module owns that view; [`registry`] owns the Redis commands.

pub mod registry;
pub mod relay;
pub mod relay_rooms;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use registry::Registry;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT` of the registry.
    pub redis_url: String,
    /// This node's id in the registry [default: the host name and HTTP port].
    pub node_id: Option<String>,
    /// The URL clients reach this node's HTTP/WebSocket API at [default: from the HTTP
    /// address, and TLS].
    pub public_url: Option<String>,
    /// The UDP address this node's media relay listens on (port 0: any free one), published
    /// for the other nodes; needs [`ClusterConfig::secret`].
    pub relay_addr: Option<SocketAddr>,
    /// The cluster secret: nodes relay media only to nodes that prove they know it.
    pub secret: Option<String>,
    /// Prefix of the registry's Redis keys (several clusters may share one Redis).
    pub key_prefix: String,
    /// How often the node renews its entry and reads the others'.
    pub heartbeat: Duration,
    /// How long an entry outlives its node's last heartbeat.
    pub ttl: Duration,
}

impl ClusterConfig {
    /// A cluster at `redis_url` with the default prefix (`sfu`), a heartbeat every second and
    /// entries that expire 5 s after the last one.
    pub fn new(redis_url: &str) -> Self {
        Self {
            redis_url: redis_url.to_string(),
            node_id: None,
            public_url: None,
            relay_addr: None,
            secret: None,
            key_prefix: "sfu".to_string(),
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
        }
    }
}

/// A node as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Unique id in the cluster.
    pub id: String,
    /// Where clients reach its HTTP API and signalling (`https://host:port`).
    pub url: String,
    /// UDP address of its media relay, for other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<String>,
    /// Server version.
    pub version: String,
    /// When it started (Unix seconds).
    pub started_at: u64,
    /// It is shutting down and takes no new participants.
    pub draining: bool,
    /// How busy it is.
    pub load: NodeLoad,
}

/// How busy a node is, as of its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeLoad {
    /// Participants in its rooms.
    pub participants: u64,
    /// Rooms open.
    pub rooms: u64,
    /// Peer connections.
    pub peers: u64,
    /// CPU cores busy (user + system time per second, since the previous heartbeat).
    pub cpu_cores: f64,
    /// Media bits per second sent, since the previous heartbeat.
    pub egress_bps: u64,
}

impl NodeInfo {
    /// Whether an entry read from Redis looks like a node (ids and URLs of sane length and
    /// form): others are ignored.
    pub fn is_plausible(&self) -> bool {
        (1..=128).contains(&self.id.len())
            && self.url.len() <= 2048
            && (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self.version.len() <= 64
            && self.relay_addr.as_ref().is_none_or(|a| a.len() <= 64)
    }

    /// Its signalling WebSocket URL (`wss://host:port/rtc`).
    pub fn signalling_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let ws = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.trim_start_matches("http://")),
        };
        format!("{ws}/rtc")
    }
}

/// This node's membership and its view of the cluster.
pub struct Cluster {
    registry: Registry,
    config: ClusterConfig,
    me: Mutex<NodeInfo>,
    view: Mutex<View>,
    /// The rooms this node hosted at the last heartbeat (their claims are renewed, and given
    /// up once they close).
    hosted: Mutex<HashSet<String>>,
    /// The media relay's endpoint (with `--relay-addr`).
    relay: Option<Arc<relay::RelayEndpoint>>,
    /// When a failed dial to a node may be tried again, by node id.
    dial_after: Mutex<HashMap<String, Instant>>,
    /// The rooms relayed over the links, both ways.
    relayed: Arc<relay_rooms::RelayRooms>,
}

/// How long after a failed relay dial the node is tried again.
const REDIAL_AFTER: Duration = Duration::from_secs(10);

/// Where a room is hosted.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Here: this node holds the room's claim.
    Here,
    /// On another live node: its id, and its entry if known.
    Elsewhere(String, Option<NodeInfo>),
    /// Unknown: Redis cannot be reached (the reason).
    Unavailable(String),
}

/// What the last heartbeats found.
#[derive(Default)]
struct View {
    /// Every live node, this one included, as last read.
    nodes: Vec<NodeInfo>,
    /// The last heartbeat reached Redis.
    redis_up: bool,
    /// A heartbeat has reached Redis since the start.
    announced: bool,
    /// Entries the last listing ignored.
    ignored: usize,
}

impl Cluster {
    /// This node's membership (nothing is sent until the first heartbeat). `url` is where
    /// clients reach it unless [`ClusterConfig::public_url`] says otherwise; `default_id` is its
    /// id unless [`ClusterConfig::node_id`] gives one; `advertised_ip` replaces an unspecified
    /// relay address in the registry. Binds the relay's endpoint (call within a tokio runtime).
    pub fn new(
        config: ClusterConfig,
        default_id: String,
        url: String,
        advertised_ip: Option<std::net::IpAddr>,
    ) -> Result<Self, String> {
        let timeout = config.heartbeat.max(Duration::from_millis(500));
        let registry = Registry::new(&config.redis_url, &config.key_prefix, timeout)?;
        let id = config.node_id.clone().unwrap_or(default_id);
        if !(1..=128).contains(&id.len()) || id.contains(|c: char| c.is_whitespace() || c == '*') {
            return Err(format!(
                "--node-id {id:?} must be 1 to 128 characters without spaces or '*'"
            ));
        }
        let url = config.public_url.clone().unwrap_or(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--public-url {url:?} must be an http:// or https:// URL"
            ));
        }
        let relay = match (config.relay_addr, &config.secret) {
            (Some(addr), Some(secret)) => Some(
                relay::RelayEndpoint::bind(addr, &id, secret.as_bytes())
                    .map_err(|e| e.to_string())?,
            ),
            (Some(_), None) => {
                return Err(
                    "--relay-addr needs --cluster-secret (the nodes' shared secret)".into(),
                );
            }
            (None, _) => None,
        };
        let relay_addr = match &relay {
            Some(endpoint) => {
                let bound = endpoint.local_addr().map_err(|e| e.to_string())?;
                // An unspecified address (0.0.0.0) is not one others can reach: publish the
                // advertised one instead.
                let ip = match (bound.ip().is_unspecified(), advertised_ip) {
                    (true, Some(ip)) => ip,
                    _ => bound.ip(),
                };
                Some(SocketAddr::new(ip, bound.port()).to_string())
            }
            None => None,
        };
        let me = NodeInfo {
            id,
            url: url.trim_end_matches('/').to_string(),
            relay_addr,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: crate::auth::unix_now(),
            draining: false,
            load: NodeLoad::default(),
        };
        Ok(Self {
            registry,
            config,
            me: Mutex::new(me),
            view: Mutex::new(View::default()),
            hosted: Mutex::new(HashSet::new()),
            relay,
            dial_after: Mutex::new(HashMap::new()),
            relayed: Arc::default(),
        })
    }

    /// The media relay's endpoint, when this node has one.
    pub fn relay(&self) -> Option<&Arc<relay::RelayEndpoint>> {
        self.relay.as_ref()
    }

    /// The rooms relayed over this node's links (rooms hosted here with viewers elsewhere,
    /// rooms hosted elsewhere with viewers here).
    pub fn relayed(&self) -> &Arc<relay_rooms::RelayRooms> {
        &self.relayed
    }

    /// Ids of the nodes this one has a relay link with, sorted.
    pub fn linked(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .relay
            .iter()
            .flat_map(|r| r.links())
            .map(|l| l.peer().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Dials the live nodes this one has no relay link with yet: one connection per pair, so
    /// the node with the smaller id dials. A refused or failed dial is tried again after
    /// [`REDIAL_AFTER`].
    fn link_up(&self, nodes: &[NodeInfo]) {
        let Some(endpoint) = &self.relay else { return };
        let me = self.id();
        let now = Instant::now();
        // Only waits still running are kept (node ids come and go).
        self.dial_after.lock().retain(|_, after| *after > now);
        for node in nodes {
            if node.id <= me || endpoint.link(&node.id).is_some() {
                continue;
            }
            let Some(addr) = node
                .relay_addr
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            {
                let mut after = self.dial_after.lock();
                if after.get(&node.id).is_some_and(|t| *t > now) {
                    continue;
                }
                // Not again while this dial is in flight (the handshake takes at most 5 s).
                after.insert(node.id.clone(), now + REDIAL_AFTER);
            }
            let endpoint = endpoint.clone();
            let id = node.id.clone();
            let relayed = self.relayed.clone();
            tokio::spawn(async move {
                match endpoint.connect(addr).await {
                    Ok(link) if link.peer() != id => tracing::warn!(
                        expected = %id,
                        peer = %link.peer(),
                        "relay: the node at a registered address has another id"
                    ),
                    Ok(link) => relayed.attach(link),
                    Err(e) => {
                        tracing::warn!(node = %id, %addr, error = %e, "relay: cannot link to node; trying again in 10 s")
                    }
                }
            });
        }
    }

    /// Finds the node that hosts `room`, claiming it for this node if none does (a room is
    /// hosted by one node at a time; its claim lapses within the time to live if that node
    /// dies). Call it before starting a room here.
    pub async fn place(&self, room: &str) -> Placement {
        if !self.redis_up() {
            return Placement::Unavailable("Redis did not answer the last heartbeat".into());
        }
        let me = self.id();
        let wait = self.config.heartbeat.max(Duration::from_millis(500)) * 2;
        let owner =
            match tokio::time::timeout(wait, self.registry.claim_room(room, &me, self.config.ttl))
                .await
            {
                Ok(Ok(owner)) => owner,
                Ok(Err(e)) => return Placement::Unavailable(e.to_string()),
                Err(_) => return Placement::Unavailable("Redis did not answer in time".into()),
            };
        if owner == me {
            return Placement::Here;
        }
        let known = self
            .view
            .lock()
            .nodes
            .iter()
            .find(|n| n.id == owner)
            .cloned();
        let entry = match known {
            Some(node) => Some(node),
            None => tokio::time::timeout(wait, self.registry.node(&owner))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
        };
        Placement::Elsewhere(owner, entry)
    }

    /// This node's id.
    pub fn id(&self) -> String {
        self.me.lock().id.clone()
    }

    /// This node's entry as it last announced it.
    pub fn me(&self) -> NodeInfo {
        self.me.lock().clone()
    }

    /// Every live node as last read (this one included once announced), sorted by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.view.lock().nodes.clone()
    }

    /// Signalling URLs of the other nodes a client may reconnect to if this one becomes
    /// unreachable: live, not draining, least busy first.
    pub fn alternates(&self) -> Vec<String> {
        let me = self.id();
        let mut others: Vec<NodeInfo> = self
            .view
            .lock()
            .nodes
            .iter()
            .filter(|n| n.id != me && !n.draining)
            .cloned()
            .collect();
        others.sort_by_key(|n| n.load.participants);
        others.iter().map(NodeInfo::signalling_url).collect()
    }

    /// Whether the last heartbeat reached Redis.
    pub fn redis_up(&self) -> bool {
        self.view.lock().redis_up
    }

    /// Whether this node has been in the registry since it started (it is ready once it has).
    pub fn announced(&self) -> bool {
        self.view.lock().announced
    }

    /// Registry entries the last listing ignored (malformed).
    pub fn ignored_entries(&self) -> usize {
        self.view.lock().ignored
    }

    /// One heartbeat: announces this node with `load`, then reads the registry. Logs when
    /// Redis goes away and comes back.
    async fn beat(&self, load: NodeLoad, draining: bool, rooms: HashSet<String>) {
        let me = {
            let mut me = self.me.lock();
            me.load = load;
            me.draining = draining;
            me.clone()
        };
        let result = async {
            self.registry.announce(&me, self.config.ttl).await?;
            self.keep_rooms(&me.id, rooms).await?;
            self.registry.list().await
        }
        .await;
        let mut view = self.view.lock();
        match result {
            Ok(listing) => {
                if !view.announced {
                    tracing::info!(
                        node = %me.id,
                        nodes = listing.nodes.len(),
                        "joined the cluster (Redis registry)"
                    );
                } else if !view.redis_up {
                    tracing::info!(node = %me.id, "Redis is back: this node is in the registry again");
                }
                if listing.ignored > view.ignored {
                    tracing::warn!(
                        ignored = listing.ignored,
                        "malformed entries in the Redis node registry were ignored"
                    );
                }
                self.link_up(&listing.nodes);
                view.nodes = listing.nodes;
                view.ignored = listing.ignored;
                view.redis_up = true;
                view.announced = true;
            }
            Err(e) => {
                if view.redis_up || !view.announced {
                    tracing::warn!(
                        error = %e,
                        redis = %redacted(&self.config.redis_url),
                        "cannot reach Redis: calls in progress carry on; other nodes will not \
                         see this one until Redis is back"
                    );
                }
                view.redis_up = false;
            }
        }
    }

    /// Renews the claims on the rooms this node hosts (claiming them again after Redis lost
    /// them) and gives up those of rooms that closed since the last heartbeat.
    async fn keep_rooms(&self, id: &str, rooms: HashSet<String>) -> redis::RedisResult<()> {
        let closed: Vec<String> = self.hosted.lock().difference(&rooms).cloned().collect();
        self.registry.release_rooms(&closed, id).await?;
        let open: Vec<String> = rooms.iter().cloned().collect();
        for (room, owner) in self
            .registry
            .renew_rooms(&open, id, self.config.ttl)
            .await?
        {
            tracing::warn!(
                room,
                owner,
                "this node hosts a room another node has claimed (Redis lost its claims); \
                 its participants here do not meet those there until they rejoin"
            );
        }
        *self.hosted.lock() = rooms;
        Ok(())
    }

    /// Removes this node from the registry (it is exiting), waiting at most `within`.
    pub async fn leave(&self, within: Duration) {
        let id = self.id();
        match tokio::time::timeout(within, self.registry.withdraw(&id)).await {
            Ok(Ok(())) => tracing::info!(node = %id, "left the cluster"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot remove this node from Redis; its entry expires by itself")
            }
            Err(_) => tracing::warn!("Redis did not answer; this node's entry expires by itself"),
        }
    }
}

/// `url` without the password it may carry (`redis://user:secret@host` to
/// `redis://user:***@host`), for logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Turns totals (CPU seconds, bytes sent) into rates between heartbeats.
#[derive(Default)]
struct LoadSampler {
    last: Option<(Instant, f64, u64)>,
}

impl LoadSampler {
    /// The node's load now, from the server's state.
    fn sample(&mut self, state: &AppState) -> NodeLoad {
        let (rooms, participants) = state.rooms.counts();
        let now = Instant::now();
        let cpu = crate::metrics::ProcessStats::read_self().map_or(0.0, |p| p.cpu_seconds);
        let sent = state.sfu.counters().bytes_sent;
        let (cpu_cores, egress_bps) = match self.last {
            Some((then, cpu_then, sent_then)) => {
                let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
                (
                    ((cpu - cpu_then) / seconds).max(0.0),
                    (sent.saturating_sub(sent_then) as f64 * 8.0 / seconds) as u64,
                )
            }
            None => (0.0, 0),
        };
        self.last = Some((now, cpu, sent));
        NodeLoad {
            participants: participants as u64,
            rooms: rooms as u64,
            peers: state.sfu.peer_count() as u64,
            cpu_cores: (cpu_cores * 100.0).round() / 100.0,
            egress_bps,
        }
    }
}

/// Announces this node every heartbeat until the server is gone.
pub(crate) async fn heartbeat(state: Weak<AppState>, cluster: Arc<Cluster>) {
    let mut every = tokio::time::interval(cluster.config.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = LoadSampler::default();
    loop {
        every.tick().await;
        let Some((load, draining, rooms)) = state.upgrade().map(|state| {
            // Rooms hosted here: not those served here for another node (edge rooms).
            let rooms = state
                .rooms
                .list()
                .iter()
                .filter(|r| !r.is_edge())
                .map(|r| r.name.clone())
                .collect();
            (sampler.sample(&state), state.is_draining(), rooms)
        }) else {
            return;
        };
        cluster.beat(load, draining, rooms).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signalling_urls_follow_the_scheme() {
        let mut node = NodeInfo {
            id: "a".into(),
            url: "https://a.example:443/".into(),
            relay_addr: None,
            version: "0".into(),
            started_at: 0,
            draining: false,
            load: NodeLoad::default(),
        };
        assert_eq!(node.signalling_url(), "wss://a.example:443/rtc");
        node.url = "http://127.0.0.1:7880".into();
        assert_eq!(node.signalling_url(), "ws://127.0.0.1:7880/rtc");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redacted("redis://:hunter2@r:6379"), "redis://:***@r:6379");
        assert_eq!(redacted("redis://u:p@r:6379/0"), "redis://u:***@r:6379/0");
        assert_eq!(redacted("redis://r:6379"), "redis://r:6379");
    }

    #[tokio::test]
    async fn bad_ids_and_urls_are_refused_at_start() {
        let config = ClusterConfig::new("redis://127.0.0.1:1");
        assert!(Cluster::new(config.clone(), "a b".into(), "http://x".into(), None).is_err());
        assert!(Cluster::new(config.clone(), "a".into(), "ftp://x".into(), None).is_err());
        assert!(
            Cluster::new(
                ClusterConfig::new("mysql://x"),
                "a".into(),
                "http://x".into(),
                None
            )
            .is_err()
        );
        assert!(Cluster::new(config, "a".into(), "http://x".into(), None).is_ok());
    }
}
