//! Rooms that span nodes: over each relay link, the rooms this node hosts and the other node
//! serves members of, and the rooms the other node hosts and this one serves members of (edge
//! rooms). This module owns that bookkeeping and the protocol ([`super::wire`]) on the link;
//! the media core does the forwarding (per room and link, a relay egress for the tracks
//! published at this node and a relay ingress for the other node's, see `sfu::relay`).
//!
//! A room is hosted by one node (its claim in Redis). A participant joining it at another
//! node is served there: that node opens the room locally as an edge room and asks the host
//! for it (`room_subscribe`); the host answers in kind. From then on each side is the origin
//! of the tracks published at its node: it announces them (`track_added`, `muted`,
//! `track_removed`) and relays them through a relay egress; the other side publishes each
//! through its relay ingress, and its members subscribe to them as to local ones. What
//! crosses is what the receiving side's members want: its dynacast sends `set_layers`, their
//! keyframe requests and the gaps it sees on the link go back as `keyframe_request` and
//! `nack`. A track published at one edge reaches another through the host.
//!
//! Membership is the host's room's: an edge asks it to `admit` each participant joining
//! there (the room's limit and its one-session-per-identity rule hold cluster-wide; the
//! participant is a member of the host's room, connected `via` relay, listed and counted
//! there, its webhooks sent from there) and says when it leaves; the host tells each edge of
//! the members elsewhere. When the edge's last member leaves, the edge room ends and the
//! edge unsubscribes.
//!
//! Data messages cross both ways, through the host's egress and the edge's ingress only (a
//! message would otherwise cross twice); the edge's active speakers come from the relayed
//! audio's levels, the host's from its ingress's. If the host is lost, its edge rooms keep
//! their members and find the room's next host through the directory.
//!
//! This module owns the bookkeeping per link (`LinkRooms`); `link` reads and writes its
//! control stream, `origin` sends the tracks published here, `edge` receives the other
//! node's, `members` keeps the room's membership across the link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sfu::relay::RelayRequest;
use sfu::{PeerEvent, PeerId, TrackId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Placement;
use super::relay::RelayLink;
use super::wire::{
    ControlDecoder, MAX_CODECS, MediaDatagram, RelayControl, RelayedTrack, TrackKind, WireCodec,
    WireParticipant, WireVia,
};
use crate::AppState;
use crate::protocol::{ErrorCode, ParticipantInfo, Refusal, TrackInfo};
use crate::room::{Join, Room, RoomError, RoomTrack, Via};

mod edge;
mod link;
mod members;
mod origin;

use link::{data_message, shutting_down, unix_micros, write_control};

/// Control messages queued for a link before it is considered stuck (and closed).
const CONTROL_QUEUE: usize = 4096;
/// Packets an origin room's relay egress holds for the link.
const EGRESS_QUEUE: usize = 4096;
/// How often a relayed room's members, tracks and mutes are compared with what the other
/// node was told.
const SYNC_POLL: Duration = Duration::from_millis(200);
/// Datagrams handed to the media core in one command, at most.
const DATAGRAM_BATCH: usize = 64;
/// Rooms one link may subscribe to at the origin.
const MAX_ROOMS_PER_LINK: usize = 4096;
/// An edge room with no member for this long is closed (its viewer's join failed).
const EDGE_EMPTY_FOR: Duration = Duration::from_secs(10);
/// How often an edge room whose host was lost asks the directory for its next host.
const REHOME_POLL: Duration = Duration::from_millis(250);
/// How long an edge room waits for a next host before its members are asked to join again.
const REHOME_WITHIN: Duration = Duration::from_secs(30);
/// How long an edge waits for the host to admit a participant.
const ADMIT_WITHIN: Duration = Duration::from_secs(5);
/// Admissions one link may have waiting for the host's answer (a room re-homed with all its
/// members asks for them together).
const MAX_PENDING_ADMITS: usize = 16_384;
/// Members one link may have admitted at the host, over all its rooms.
const MAX_ADMITTED_PER_LINK: usize = 100_000;

/// The relayed rooms of every link of this node.
#[derive(Default)]
pub struct RelayRooms {
    state: OnceLock<Weak<AppState>>,
    links: Mutex<HashMap<String, Arc<LinkRooms>>>,
    /// What a hop adds (recorded into the server's registry once started).
    hop: OnceLock<metrics::Histogram>,
    counts: Arc<Counts>,
}

/// What the relayed rooms counted.
#[derive(Default)]
struct Counts {
    datagrams_refused: AtomicU64,
    datagrams_dropped: AtomicU64,
    control_refused: AtomicU64,
}

/// What the relayed rooms counted, for the metrics page.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayCounts {
    /// Datagrams refused: malformed, or for no track relayed here.
    pub datagrams_refused: u64,
    /// Datagrams not sent: the link was congested or closed.
    pub datagrams_dropped: u64,
    /// Malformed control messages (each ended its link).
    pub control_refused: u64,
}

impl RelayRooms {
    /// Gives the server's state (once it exists).
    pub(crate) fn start(&self, state: Weak<AppState>) {
        if let Some(s) = state.upgrade() {
            let _ = self.hop.set(s.metrics.relay_hop());
        }
        let _ = self.state.set(state);
    }

    /// What the relayed rooms counted so far.
    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            datagrams_refused: self.counts.datagrams_refused.load(Ordering::Relaxed),
            datagrams_dropped: self.counts.datagrams_dropped.load(Ordering::Relaxed),
            control_refused: self.counts.control_refused.load(Ordering::Relaxed),
        }
    }

    /// A link came up: its rooms are served from now on (replacing those of an older link to
    /// the same node, which closed).
    pub fn attach(self: &Arc<Self>, link: RelayLink) {
        let Some(state) = self.state.get().cloned() else {
            return;
        };
        let peer = link.peer().to_string();
        let (out, queue) = mpsc::channel(CONTROL_QUEUE);
        let rooms = Arc::new(LinkRooms {
            link: link.clone(),
            state,
            out,
            inner: Mutex::new(Inner::default()),
            hop: self.hop.get().cloned(),
            counts: self.counts.clone(),
            opening: tokio::sync::Mutex::new(()),
        });
        self.links.lock().insert(peer.clone(), rooms.clone());
        tokio::spawn(write_control(link.clone(), queue));
        tokio::spawn(rooms.clone().read_control());
        tokio::spawn(rooms.clone().read_datagrams());
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let why = link.closed().await;
            let orphans = rooms.close(&why).await;
            if let Some(this) = this.upgrade() {
                {
                    let mut links = this.links.lock();
                    if links.get(&peer).is_some_and(|r| Arc::ptr_eq(r, &rooms)) {
                        links.remove(&peer);
                    }
                }
                for (name, room) in orphans {
                    tokio::spawn(this.clone().rehome(name, room));
                }
            }
        });
    }

    /// Edge room `name` lost its link to its host: once the cluster's directory names the
    /// room's next host, it is served from there (its members admitted again), or, if that is
    /// this node, hosted here. Its members stay connected meanwhile (their local media
    /// carries on); after [`REHOME_WITHIN`] without a host they are told to join again.
    async fn rehome(self: Arc<Self>, name: String, room: Weak<Room>) {
        let started = tokio::time::Instant::now();
        let mut every = tokio::time::interval(REHOME_POLL);
        loop {
            every.tick().await;
            let Some(state) = self.state.get().and_then(Weak::upgrade) else {
                return;
            };
            let Some(room) = room.upgrade().filter(|r| {
                r.is_edge()
                    && state
                        .rooms
                        .get(&name)
                        .is_some_and(|now| Arc::ptr_eq(&now, r))
            }) else {
                return;
            };
            if room.member_count() == 0 {
                // Nobody to serve (a join was under way when the link closed): closed here.
                state.rooms.delete(&name).await;
                return;
            }
            let Some(cluster) = state.cluster.clone() else {
                return;
            };
            match cluster.place(&name).await {
                Placement::Here => {
                    room.become_host();
                    info!(room = %name, "the room's host was lost: this node hosts it now");
                    return;
                }
                Placement::Elsewhere(node, Some(_)) => {
                    let link = self.links.lock().get(&node).cloned();
                    if let Some(link) = link {
                        link.reattach_edge(&name, &room).await;
                        return;
                    }
                }
                _ => {}
            }
            if started.elapsed() >= REHOME_WITHIN {
                warn!(room = %name, "the room's host was lost and no node took it over; its members here are asked to join again");
                state.rooms.delete(&name).await;
                return;
            }
        }
    }

    /// Opens `name` here as an edge room of `host` (this node serves some of its members):
    /// the local room, subscribed over the link to `host`. Refused if there is no link.
    pub async fn edge_room(&self, name: &str, host: &str) -> Result<Arc<Room>, Refusal> {
        let link = self.links.lock().get(host).cloned().ok_or_else(|| {
            Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "room {name:?} is hosted by node {host}, which this node cannot reach; join again in a few seconds"
                ),
            )
        })?;
        link.edge_room(name).await
    }

    /// What is relayed now: per link, the rooms whose tracks published here go to the other
    /// node (with the layers it asked for of each track) and those whose tracks come from it.
    pub fn summary(&self) -> Vec<RelayedRoom> {
        let links: Vec<Arc<LinkRooms>> = self.links.lock().values().cloned().collect();
        let mut rooms = Vec::new();
        for link in links {
            let node = link.link.peer().to_string();
            let inner = link.inner.lock();
            for (name, origin) in &inner.origin {
                let mut tracks: Vec<RelayedTrackState> = origin
                    .tracks
                    .iter()
                    .map(|(id, relay_id)| {
                        let (kind, bits) = origin
                            .layers
                            .get(relay_id)
                            .copied()
                            .unwrap_or((TrackKind::Video, 0));
                        RelayedTrackState {
                            track: id.to_string(),
                            kind: kind_name(kind).to_string(),
                            layers: (0..32u8).filter(|l| bits & 1 << l != 0).collect(),
                        }
                    })
                    .collect();
                tracks.sort_by(|a, b| a.track.cmp(&b.track));
                rooms.push(RelayedRoom {
                    node: node.clone(),
                    direction: "out".into(),
                    room: name.clone(),
                    tracks,
                });
            }
            for name in inner.edge.keys() {
                let mut tracks: Vec<RelayedTrackState> = inner
                    .received
                    .values()
                    .filter(|(r, ..)| r == name)
                    .map(|(_, id, _)| RelayedTrackState {
                        track: id.to_string(),
                        kind: String::new(),
                        layers: Vec::new(),
                    })
                    .collect();
                tracks.sort_by(|a, b| a.track.cmp(&b.track));
                rooms.push(RelayedRoom {
                    node: node.clone(),
                    direction: "in".into(),
                    room: name.clone(),
                    tracks,
                });
            }
        }
        rooms.sort_by(|a, b| {
            (&a.node, &a.direction, &a.room).cmp(&(&b.node, &b.direction, &b.room))
        });
        rooms
    }

    /// Whether this node has a relay link to `node`.
    pub fn linked_to(&self, node: &str) -> bool {
        self.links.lock().contains_key(node)
    }

    /// The link serving edge room `room`.
    fn link_of_edge(&self, room: &Arc<Room>) -> Option<Arc<LinkRooms>> {
        self.links
            .lock()
            .values()
            .find(|l| {
                l.inner
                    .lock()
                    .edge
                    .get(&room.name)
                    .is_some_and(|e| e.is(room))
            })
            .cloned()
    }

    /// Asks the host of edge room `room` to admit `me` (the room's limit and its
    /// one-session-per-identity rule are the host's). Once admitted, the participant is a
    /// member there until [`Self::member_left`].
    pub async fn admit(
        &self,
        room: &Arc<Room>,
        me: &ParticipantInfo,
        via: Via,
        hidden: bool,
    ) -> Result<(), Refusal> {
        let unreachable = || {
            Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "room {:?} is hosted by another node, which did not answer; join again in a few seconds",
                    room.name
                ),
            )
        };
        /// Links lost while one admission waits, at most (each host lost is followed by
        /// the room's next).
        const LINKS_LOST: usize = 3;
        for _ in 0..LINKS_LOST {
            // The room may still be opening (another join opened it a moment ago) or finding
            // a new host (its host was lost): its link is waited for.
            let deadline = tokio::time::Instant::now() + ADMIT_WITHIN;
            let link = loop {
                if let Some(link) = self.link_of_edge(room) {
                    break link;
                }
                if !room.is_edge() {
                    // This node hosts the room now: the room here decides.
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(unreachable());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let (request, answer) = link.admit(&room.name, me, via, hidden)?;
            match tokio::time::timeout(ADMIT_WITHIN, answer).await {
                Ok(Ok(result)) => return result,
                // The link closed before the host answered: asked again of the room's next
                // host.
                Ok(Err(_)) => continue,
                Err(_) => {
                    link.abandon(request);
                    return Err(unreachable());
                }
            }
        }
        Err(unreachable())
    }

    /// The node that hosts edge room `room` (over whose link it is served).
    pub fn host_of(&self, room: &Arc<Room>) -> Option<String> {
        self.link_of_edge(room).map(|l| l.link.peer().to_string())
    }

    /// The room service here muted (or unmuted) `track` of hosted room `room`: if the track
    /// comes from another node, it is muted where its publisher is too (its members there
    /// receive it without crossing any link).
    pub fn admin_muted(&self, room: &str, track: TrackId, muted: bool) {
        let links: Vec<Arc<LinkRooms>> = self.links.lock().values().cloned().collect();
        for link in links {
            let relay_id = link
                .inner
                .lock()
                .received
                .iter()
                .find(|(_, (r, t, _))| r == room && *t == track)
                .map(|(id, _)| *id);
            if let Some(relay_id) = relay_id {
                link.send(RelayControl::AdminMute { relay_id, muted });
            }
        }
    }

    /// A member of edge room `room` admitted by its host left.
    pub fn member_left(&self, room: &Arc<Room>, participant: &str) {
        if let Some(link) = self.link_of_edge(room) {
            link.member_left(&room.name, participant);
        }
    }
}

/// A room relayed over a link, as `GET /api/nodes` lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RelayedRoom {
    /// The node at the other end of the link.
    pub node: String,
    /// `out`: tracks published here, sent to that node's members; `in`: tracks published
    /// there, received for the members here.
    pub direction: String,
    /// The room's name.
    pub room: String,
    /// Its tracks relayed: their ids on this node.
    pub tracks: Vec<RelayedTrackState>,
}

/// A track relayed over a link.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RelayedTrackState {
    /// Its id on this node.
    pub track: String,
    /// `audio` or `video` (for tracks sent; empty for tracks received).
    pub kind: String,
    /// The layers crossing (for tracks sent: what the other node asked for last).
    pub layers: Vec<u8>,
}

fn kind_name(kind: TrackKind) -> &'static str {
    match kind {
        TrackKind::Audio => "audio",
        TrackKind::Video => "video",
    }
}

/// One link's relayed rooms.
struct LinkRooms {
    link: RelayLink,
    state: Weak<AppState>,
    out: mpsc::Sender<RelayControl>,
    inner: Mutex<Inner>,
    hop: Option<metrics::Histogram>,
    counts: Arc<Counts>,
    /// Held while an edge room is opened, so that joins arriving together open it once.
    opening: tokio::sync::Mutex<()>,
}

/// Where the host's answer to an admission goes, with the room and participant it is for.
type Admission = (
    tokio::sync::oneshot::Sender<Result<(), Refusal>>,
    String,
    String,
);

#[derive(Default)]
struct Inner {
    /// Rooms whose tracks published here go to the other node (it serves members of a room
    /// hosted here, or hosts a room served here), by name.
    origin: HashMap<String, OriginRoom>,
    /// Sending side: relayed track by relay id (the room it is in, and its id here).
    relayed: HashMap<u32, (String, TrackId)>,
    next_relay_id: u32,
    /// Rooms whose tracks published at the other node come here (edge rooms of the other
    /// node's, or at the host the tracks of the other node's publishers), by name.
    edge: HashMap<String, EdgeRoom>,
    /// Receiving side: relayed track by relay id (its room, its id here, its relay ingress).
    received: HashMap<u32, (String, TrackId, PeerId)>,
    /// Host side: per room, the members admitted for the other node's sessions.
    admitted: HashMap<String, std::collections::HashSet<String>>,
    /// Edge side: admissions waiting for the host's answer, by request.
    pending: HashMap<u32, Admission>,
    /// Edge side: per room, the members the host admitted for this node.
    asked: HashMap<String, std::collections::HashSet<String>>,
    next_request: u32,
}

impl Inner {
    fn admitted_count(&self) -> usize {
        self.admitted
            .values()
            .map(std::collections::HashSet::len)
            .sum()
    }
}

/// A room whose tracks published here are relayed to the other node.
struct OriginRoom {
    egress: PeerId,
    /// Its tracks as the other node was told: id here to relay id.
    tracks: HashMap<TrackId, u32>,
    /// The layers the other node asked for last, per relay id (bit per layer), and the kind.
    layers: HashMap<u32, (TrackKind, u32)>,
    /// Whether each track was last announced muted, per relay id.
    muted: HashMap<u32, bool>,
    /// The members the other node was told of (the host's side).
    members: std::collections::HashSet<String>,
    /// The room (even once out of the registry: a deleted room's members still leave it).
    room: Weak<Room>,
    /// Stops the room's tasks.
    stop: tokio::sync::watch::Sender<bool>,
}

/// A room that receives the tracks published at the other node.
struct EdgeRoom {
    room: Weak<Room>,
    ingress: PeerId,
}

impl EdgeRoom {
    /// Whether it is `room` (not an earlier room of the same name).
    fn is(&self, room: &Arc<Room>) -> bool {
        self.room.upgrade().is_some_and(|r| Arc::ptr_eq(&r, room))
    }
}
