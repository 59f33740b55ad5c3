//! Rooms that span nodes: over each relay link, the rooms this node relays to the other
//! (it hosts them: the origin) and those it receives from it (it serves some of their viewers:
//! the edge). This module owns that bookkeeping and the protocol ([`super::wire`]) on the
//! link; the media core does the forwarding (a relay egress per room at the origin, a relay
//! ingress per room at the edge, see `sfu::relay`).
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
//! audio's levels, the host's from its ingress's.

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

/// Control messages queued for a link before it is considered stuck (and closed).
const CONTROL_QUEUE: usize = 4096;
/// Packets an origin room's relay egress holds for the link.
const EGRESS_QUEUE: usize = 4096;
/// How often an origin room's tracks are compared with what the edge was told.
const TRACK_POLL: Duration = Duration::from_millis(200);
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
/// Admissions one link may have waiting for the host's answer.
const MAX_PENDING_ADMITS: usize = 1024;
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
                    && r.member_count() > 0
                    && state
                        .rooms
                        .get(&name)
                        .is_some_and(|now| Arc::ptr_eq(&now, r))
            }) else {
                return;
            };
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

    /// Opens `name` here as an edge room of `host` (this node serves some of its viewers):
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

    /// What is relayed now: per link, the rooms hosted here sent to the other node (with the
    /// layers it asked for of each track) and the rooms received from it.
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
                    .is_some_and(|e| e.room.upgrade().is_some_and(|r| Arc::ptr_eq(&r, room)))
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
        let link = self.link_of_edge(room).ok_or_else(unreachable)?;
        let answer = link.admit(&room.name, me, via, hidden)?;
        match tokio::time::timeout(ADMIT_WITHIN, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refusal))) => Err(refusal),
            _ => {
                link.member_left(&room.name, &me.id);
                Err(unreachable())
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
    /// `out`: hosted here, sent to that node's viewers; `in`: hosted there, received for
    /// viewers here.
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
}

/// The host's answer to an admission.
type Admission = tokio::sync::oneshot::Sender<Result<(), Refusal>>;

#[derive(Default)]
struct Inner {
    /// Rooms this node hosts that the other node subscribed to, by name.
    origin: HashMap<String, OriginRoom>,
    /// Origin side: relayed track by relay id (the room it is in, and its id here).
    relayed: HashMap<u32, (String, TrackId)>,
    next_relay_id: u32,
    /// Rooms this node serves viewers of, hosted by the other node, by name.
    edge: HashMap<String, EdgeRoom>,
    /// Edge side: relayed track by relay id (its room, its id here, its relay ingress).
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

/// A room hosted here, relayed to the other node.
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
    /// Stops the room's tasks.
    stop: tokio::sync::watch::Sender<bool>,
}

/// A room hosted by the other node, served here.
struct EdgeRoom {
    room: Weak<Room>,
    ingress: PeerId,
}

impl LinkRooms {
    fn send(&self, message: RelayControl) {
        if self.out.try_send(message).is_err() {
            warn!(peer = %self.link.peer(), "relay: the link's control queue is full; closing it");
            self.link.close("control queue full");
        }
    }

    // ---- the edge side ------------------------------------------------------------------

    /// Opens (or finds) the edge room `name`.
    async fn edge_room(self: &Arc<Self>, name: &str) -> Result<Arc<Room>, Refusal> {
        let state = self.state.upgrade().ok_or_else(shutting_down)?;
        if let Some(room) = self
            .inner
            .lock()
            .edge
            .get(name)
            .and_then(|e| e.room.upgrade())
        {
            return Ok(room);
        }
        let room = state.rooms.open_edge(name)?;
        self.serve_edge(&state, name, &room).await?;
        Ok(room)
    }

    /// Receives edge room `room` from the host over this link: its ingress, the subscription
    /// and the tasks that follow it.
    async fn serve_edge(
        self: &Arc<Self>,
        state: &AppState,
        name: &str,
        room: &Arc<Room>,
    ) -> Result<(), Refusal> {
        let (events, event_rx) = mpsc::unbounded_channel();
        let ingress = state
            .sfu
            .add_relay_ingress(room.id, events, true)
            .await
            .map_err(|e| crate::session::internal("start relaying the room", &e))?;
        let stale = self.inner.lock().edge.insert(
            name.to_string(),
            EdgeRoom {
                room: Arc::downgrade(room),
                ingress: ingress.id,
            },
        );
        if let Some(stale) = stale {
            let _ = state.sfu.remove_relay_ingress(stale.ingress).await;
        }
        info!(room = name, host = %self.link.peer(), "serving members of a room hosted by another node");
        self.send(RelayControl::RoomSubscribe {
            room: name.to_string(),
        });
        tokio::spawn(
            self.clone()
                .edge_requests(name.to_string(), ingress.id, ingress.requests),
        );
        tokio::spawn(self.clone().edge_events(event_rx));
        tokio::spawn(
            self.clone()
                .edge_watch(name.to_string(), Arc::downgrade(room)),
        );
        Ok(())
    }

    /// Serves edge room `room`, whose host was lost, from its new host over this link: the
    /// host admits its members again (those it refuses are disconnected, told why).
    async fn reattach_edge(self: &Arc<Self>, name: &str, room: &Arc<Room>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if let Err(refusal) = self.serve_edge(&state, name, room).await {
            warn!(room = name, reason = %refusal.message, "relay: cannot serve the room from its new host");
            return;
        }
        let members = room.snapshot().await.members;
        // Every request first, then the answers: one round trip for them all.
        let answers: Vec<(String, Result<_, Refusal>)> = members
            .iter()
            .filter(|m| !m.relayed)
            .map(|m| {
                (
                    m.info.id.clone(),
                    self.admit(name, &m.info, m.via, m.hidden),
                )
            })
            .collect();
        let count = answers.len();
        for (participant, answer) in answers {
            let answer = match answer {
                Ok(answer) => tokio::time::timeout(ADMIT_WITHIN, answer).await,
                Err(refusal) => Ok(Ok(Err(refusal))),
            };
            let refused = match answer {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(refusal))) => refusal.message,
                _ => "the room's new host did not answer; join again".to_string(),
            };
            self.member_left(name, &participant);
            room.kick(&participant, &refused).await;
        }
        info!(room = name, host = %self.link.peer(), members = count, "the room's new host serves it");
    }

    /// Asks the host to admit `me` to edge room `room`; the answer comes on the receiver.
    fn admit(
        &self,
        room: &str,
        me: &ParticipantInfo,
        via: Via,
        hidden: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), Refusal>>, Refusal> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let request = {
            let mut inner = self.inner.lock();
            if inner.pending.len() >= MAX_PENDING_ADMITS {
                return Err(Refusal::new(
                    ErrorCode::ClusterUnavailable,
                    "too many joins waiting for the room's host node; join again in a few seconds",
                ));
            }
            inner.next_request = inner.next_request.wrapping_add(1);
            let request = inner.next_request;
            inner.pending.insert(request, answer);
            inner
                .asked
                .entry(room.to_string())
                .or_default()
                .insert(me.id.clone());
            request
        };
        self.send(RelayControl::Admit {
            room: room.to_string(),
            request,
            participant: WireParticipant {
                id: me.id.clone(),
                identity: me.identity.clone(),
                name: me.name.clone(),
            },
            via: match via {
                Via::WebSocket => WireVia::Websocket,
                Via::Whip => WireVia::Whip,
                Via::Whep => WireVia::Whep,
            },
            hidden,
        });
        Ok(answered)
    }

    /// A member this node asked the host to admit left (or its join failed here).
    fn member_left(&self, room: &str, participant: &str) {
        let known = {
            let mut inner = self.inner.lock();
            let known = inner
                .asked
                .get_mut(room)
                .is_some_and(|members| members.remove(participant));
            if inner.asked.get(room).is_some_and(|m| m.is_empty()) {
                inner.asked.remove(room);
            }
            known
        };
        if known {
            self.send(RelayControl::MemberLeft {
                room: room.to_string(),
                participant: participant.to_string(),
            });
        }
    }

    /// The host's answer to an admission.
    fn on_admitted(&self, request: u32, refused: Option<String>, full: bool) {
        let Some(answer) = self.inner.lock().pending.remove(&request) else {
            return;
        };
        let result = match refused {
            None => Ok(()),
            Some(reason) => Err(Refusal::new(
                if full {
                    ErrorCode::RoomFull
                } else {
                    ErrorCode::ClusterUnavailable
                },
                reason,
            )),
        };
        let _ = answer.send(result);
    }

    /// The host tells of a member elsewhere, or that one left.
    async fn on_member(&self, room: &str, joined: Option<WireParticipant>, left: Option<String>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(room) = state.rooms.get(room).filter(|r| r.is_edge()) else {
            return;
        };
        if !self.inner.lock().edge.contains_key(&room.name) {
            return;
        }
        if let Some(p) = joined {
            room.add_remote(ParticipantInfo {
                id: p.id,
                identity: p.identity,
                name: p.name,
            })
            .await;
        }
        if let Some(participant) = left {
            room.remove_remote(&participant).await;
        }
    }

    /// The host disconnects a member it admitted for this node.
    async fn on_kick(&self, room: &str, participant: &str, reason: &str) {
        let asked = self
            .inner
            .lock()
            .asked
            .get(room)
            .is_some_and(|m| m.contains(participant));
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(room) = state.rooms.get(room).filter(|r| r.is_edge() && asked) else {
            return;
        };
        if let Some((token, expires)) = room.kick(participant, reason).await
            && reason == crate::room::REMOVED_BY_ROOM_SERVICE
        {
            // It cannot come straight back here with the same token either.
            state.revoked.revoke(&token, expires);
        }
    }

    /// The ingress's requests (keyframes, lost packets) and its room's data messages go to the
    /// host.
    async fn edge_requests(
        self: Arc<Self>,
        room: String,
        ingress: PeerId,
        mut requests: mpsc::Receiver<RelayRequest>,
    ) {
        while let Some(request) = requests.recv().await {
            let track = match &request {
                RelayRequest::Keyframe { track, .. } | RelayRequest::Nack { track, .. } => *track,
                RelayRequest::Data { binary, bytes } => {
                    if let Some(message) = data_message(&room, *binary, bytes) {
                        self.send(message);
                    }
                    continue;
                }
            };
            let Some(relay_id) = self.relay_id_of(ingress, track) else {
                continue;
            };
            self.send(match request {
                RelayRequest::Keyframe { layer, .. } => {
                    RelayControl::KeyframeRequest { relay_id, layer }
                }
                RelayRequest::Nack { layer, seqs, .. } => RelayControl::Nack {
                    relay_id,
                    layer,
                    seqs,
                },
                RelayRequest::Data { .. } => continue,
            });
        }
    }

    /// The ingress's dynacast says which layers its viewers want: the host sends only those.
    async fn edge_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<PeerEvent>) {
        while let Some(event) = events.recv().await {
            if let PeerEvent::AudioLevel { peer, track, level } = event {
                self.edge_audio_level(peer, track, level).await;
                continue;
            }
            if let PeerEvent::LayersWanted {
                peer,
                track,
                active,
                ..
            } = event
                && let Some(relay_id) = self.relay_id_of(peer, track)
            {
                let layers = active
                    .iter()
                    .take(32)
                    .enumerate()
                    .filter(|(_, on)| **on)
                    .fold(0u32, |bits, (i, _)| bits | 1 << i);
                self.send(RelayControl::SetLayers { relay_id, layers });
            }
        }
    }

    /// A relayed audio track's level: its publisher speaks (or stops) in the edge room.
    async fn edge_audio_level(&self, ingress: PeerId, track: TrackId, level: f32) {
        let room_name = self
            .inner
            .lock()
            .received
            .values()
            .find(|(_, t, i)| *t == track && *i == ingress)
            .map(|(room, ..)| room.clone());
        let (Some(room_name), Some(state)) = (room_name, self.state.upgrade()) else {
            return;
        };
        let Some(room) = state.rooms.get(&room_name) else {
            return;
        };
        let participant = room
            .tracks()
            .await
            .into_iter()
            .find(|t| t.id == track)
            .map(|t| t.info.participant);
        if let Some(participant) = participant {
            room.audio_level(&participant, level).await;
        }
    }

    /// When the edge room ends (its last viewer left), unsubscribes and forgets it.
    async fn edge_watch(self: Arc<Self>, name: String, room: Weak<Room>) {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        let mut empty_since = None;
        loop {
            every.tick().await;
            let open = room.upgrade().filter(|r| {
                self.state
                    .upgrade()
                    .and_then(|s| s.rooms.get(&name))
                    .is_some_and(|now| Arc::ptr_eq(&now, r))
            });
            if self.link.is_closed() || open.as_ref().is_some_and(|r| !r.is_edge()) {
                // Served over another link now, or hosted here.
                return;
            }
            if let Some(open) = open {
                // A room opened for a viewer whose join then failed has no member to leave
                // and end it: it ends here after a while, not relayed for nobody.
                if open.member_count() > 0 {
                    empty_since = None;
                    continue;
                }
                let since = *empty_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= EDGE_EMPTY_FOR
                    && let Some(state) = self.state.upgrade()
                {
                    info!(room = %name, "an edge room nobody joined is closed");
                    state.rooms.delete(&name).await;
                }
                continue;
            }
            let ingress = {
                let mut inner = self.inner.lock();
                let mine = inner.edge.get(&name).is_some_and(|e| e.room.ptr_eq(&room));
                if !mine {
                    return;
                }
                let ingress = inner.edge.remove(&name).map(|e| e.ingress);
                inner.received.retain(|_, (r, ..)| *r != name);
                ingress
            };
            let left = self.inner.lock().asked.remove(&name).unwrap_or_default();
            for participant in left {
                self.send(RelayControl::MemberLeft {
                    room: name.clone(),
                    participant,
                });
            }
            info!(room = %name, "no member of the relayed room left here; unsubscribed");
            self.send(RelayControl::RoomUnsubscribe { room: name.clone() });
            self.room_unsubscribe(&name).await;
            if let (Some(ingress), Some(state)) = (ingress, self.state.upgrade()) {
                let _ = state.sfu.remove_relay_ingress(ingress).await;
            }
            return;
        }
    }

    fn relay_id_of(&self, ingress: PeerId, track: TrackId) -> Option<u32> {
        self.inner
            .lock()
            .received
            .iter()
            .find(|(_, (_, t, i))| *t == track && *i == ingress)
            .map(|(id, _)| *id)
    }

    /// The host announced a track of an edge room: published here, all its layers asked for
    /// until the edge's dynacast says otherwise.
    async fn track_added(&self, room_name: String, relay_id: u32, track: RelayedTrack) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let (ingress, room) = {
            let inner = self.inner.lock();
            let Some(edge) = inner.edge.get(&room_name) else {
                return;
            };
            if inner.received.contains_key(&relay_id) {
                return;
            }
            (edge.ingress, edge.room.upgrade())
        };
        let Some(room) = room else { return };
        let kind = match track.kind {
            TrackKind::Audio => sfu::TrackKind::Audio,
            TrackKind::Video => sfu::TrackKind::Video,
        };
        let codecs = track
            .codecs
            .iter()
            .take(MAX_CODECS)
            .map(|c| sfu::relay::RelayCodec {
                pt: c.pt,
                name: c.name.clone(),
                clock_rate: c.clock_rate,
                channels: c.channels,
                fmtp: c.fmtp.clone(),
            })
            .collect();
        let participant: Arc<str> = Arc::from(track.participant.as_str());
        let id = match state
            .sfu
            .relay_publish(ingress, participant, kind, track.layers.max(1), codecs)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                warn!(room = %room_name, error = %e, "relay: cannot publish a relayed track");
                return;
            }
        };
        self.inner
            .lock()
            .received
            .insert(relay_id, (room_name, id, ingress));
        let layers = u32::MAX >> (32 - u32::from(track.layers.clamp(1, 32)));
        self.send(RelayControl::SetLayers { relay_id, layers });
        let publisher = crate::protocol::ParticipantInfo {
            id: track.participant.clone(),
            identity: track.identity,
            name: track.name,
        };
        let info = TrackInfo {
            id: id.to_string(),
            participant: track.participant,
            kind: kind.as_str().to_string(),
            source: track.source,
            mid: format!("relay-{relay_id}"),
            simulcast: track.simulcast,
            muted: track.muted,
        };
        room.publish_remote_track(RoomTrack { id, info }, publisher)
            .await;
    }

    /// The host's track ended (or the room is no longer relayed): unpublished here.
    async fn track_removed(&self, relay_id: u32) {
        let Some((room_name, id, ingress)) = self.inner.lock().received.remove(&relay_id) else {
            return;
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let _ = state.sfu.relay_unpublish(ingress, id).await;
        if let Some(room) = state.rooms.get(&room_name) {
            room.unpublish_track(id).await;
        }
    }

    /// Media from the host, batched per ingress into the media core.
    async fn read_datagrams(self: Arc<Self>) {
        let Some(state) = self.state.upgrade().map(|s| Arc::downgrade(&s)) else {
            return;
        };
        while let Ok(first) = self.link.read_datagram().await {
            let mut datagrams = vec![first];
            while datagrams.len() < DATAGRAM_BATCH {
                match tokio::time::timeout(Duration::ZERO, self.link.read_datagram()).await {
                    Ok(Ok(more)) => datagrams.push(more),
                    _ => break,
                }
            }
            let mut batches: HashMap<PeerId, Vec<(TrackId, Vec<u8>)>> = HashMap::new();
            let now_us = unix_micros();
            {
                let inner = self.inner.lock();
                for datagram in &datagrams {
                    let Ok(media) = MediaDatagram::decode(datagram) else {
                        self.counts
                            .datagrams_refused
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some((_, track, ingress)) = inner.received.get(&media.relay_id) else {
                        self.counts
                            .datagrams_refused
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(hop) = &self.hop
                        && !media.repair
                        && now_us >= media.sent_at_us
                    {
                        hop.record((now_us - media.sent_at_us) as f64 / 1e6);
                    }
                    batches
                        .entry(*ingress)
                        .or_default()
                        .push((*track, media.rtp.to_vec()));
                }
            }
            let Some(state) = state.upgrade() else { return };
            for (ingress, packets) in batches {
                let _ = state.sfu.relay_packets(ingress, packets).await;
            }
        }
    }

    // ---- the origin side ----------------------------------------------------------------

    /// The other node serves members of `name`: relays the tracks published here (at the
    /// host: all but those the other node sent; at an edge, answering its host: its own
    /// members'). The host also subscribes in turn, to receive the edge's publishers.
    async fn room_subscribe(self: &Arc<Self>, name: String) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if self.inner.lock().origin.contains_key(&name) {
            return;
        }
        let refuse = |reason: &str| RelayControl::RoomRefused {
            room: name.clone(),
            reason: reason.to_string(),
        };
        if self.inner.lock().origin.len() >= MAX_ROOMS_PER_LINK {
            self.send(refuse("too many rooms relayed on this link"));
            return;
        }
        let Some(room) = state.rooms.get(&name) else {
            self.send(refuse("no such room on this node"));
            return;
        };
        let hosted = !room.is_edge();
        let egress = match state
            .sfu
            .add_relay_egress(room.id, EGRESS_QUEUE, hosted)
            .await
        {
            Ok(egress) => egress,
            Err(e) => {
                self.send(refuse(&format!("cannot relay it: {e}")));
                return;
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.inner.lock().origin.insert(
            name.clone(),
            OriginRoom {
                egress: egress.id,
                tracks: HashMap::new(),
                layers: HashMap::new(),
                muted: HashMap::new(),
                members: std::collections::HashSet::new(),
                stop,
            },
        );
        if hosted {
            self.host_ingress(&name, &room).await;
        }
        info!(room = %name, node = %self.link.peer(), "relaying a room to another node's viewers");
        tokio::spawn(
            self.clone()
                .origin_packets(name.clone(), egress.packets, stopped.clone()),
        );
        tokio::spawn(
            self.clone()
                .origin_events(name.clone(), egress.events, stopped.clone()),
        );
        tokio::spawn(
            self.clone()
                .origin_tracks(name, Arc::downgrade(&room), stopped),
        );
    }

    /// At the host: receives the edge's publishers' tracks of `room` (an ingress that carries
    /// no data: the host's egress does) and asks the edge for them.
    async fn host_ingress(self: &Arc<Self>, name: &str, room: &Arc<Room>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let (events, event_rx) = mpsc::unbounded_channel();
        let ingress = match state.sfu.add_relay_ingress(room.id, events, false).await {
            Ok(ingress) => ingress,
            Err(e) => {
                warn!(room = name, error = %e, "relay: cannot receive the edge's tracks");
                return;
            }
        };
        let stale = self.inner.lock().edge.insert(
            name.to_string(),
            EdgeRoom {
                room: Arc::downgrade(room),
                ingress: ingress.id,
            },
        );
        if let Some(stale) = stale {
            let _ = state.sfu.remove_relay_ingress(stale.ingress).await;
        }
        tokio::spawn(
            self.clone()
                .edge_requests(name.to_string(), ingress.id, ingress.requests),
        );
        tokio::spawn(self.clone().edge_events(event_rx));
        self.send(RelayControl::RoomSubscribe {
            room: name.to_string(),
        });
    }

    /// The other node has no member of `name` any more (or the link closed): relaying stops
    /// both ways, and at the host the members it had admitted leave.
    async fn room_unsubscribe(&self, name: &str) {
        let Some(origin) = self.inner.lock().origin.remove(name) else {
            return;
        };
        let _ = origin.stop.send(true);
        self.inner.lock().relayed.retain(|_, (r, _)| r != name);
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let _ = state.sfu.remove_relay_egress(origin.egress).await;
        let Some(room) = state.rooms.get(name).filter(|r| !r.is_edge()) else {
            return;
        };
        let (ingress, admitted) = {
            let mut inner = self.inner.lock();
            let ingress = inner
                .edge
                .remove(name)
                .filter(|e| e.room.upgrade().is_some_and(|r| Arc::ptr_eq(&r, &room)))
                .map(|e| e.ingress);
            if ingress.is_some() {
                inner.received.retain(|_, (r, ..)| r != name);
            }
            (ingress, inner.admitted.remove(name).unwrap_or_default())
        };
        for participant in admitted {
            room.leave(&participant, Vec::new()).await;
        }
        if let Some(ingress) = ingress {
            let _ = state.sfu.remove_relay_ingress(ingress).await;
        }
    }

    /// At the host: admits a participant joining at the other node as a member of the room
    /// here (connected `via` relay), or says why not.
    async fn on_admit(
        self: &Arc<Self>,
        name: String,
        request: u32,
        participant: WireParticipant,
        via: WireVia,
        hidden: bool,
    ) {
        let refuse = |reason: String, full: bool| RelayControl::Admitted {
            request,
            refused: Some(reason),
            full,
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let room = state.rooms.get(&name).filter(|r| !r.is_edge());
        let subscribed = self.inner.lock().origin.contains_key(&name);
        let (Some(room), true) = (room, subscribed) else {
            self.send(refuse(
                format!("room {name:?} is not hosted there any more; join again"),
                false,
            ));
            return;
        };
        if self.inner.lock().admitted_count() >= MAX_ADMITTED_PER_LINK {
            self.send(refuse(
                "too many members relayed from one node".into(),
                false,
            ));
            return;
        }
        let (kick, mut kicks) = mpsc::unbounded_channel::<String>();
        let info = ParticipantInfo {
            id: participant.id.clone(),
            identity: participant.identity,
            name: participant.name,
        };
        let join = Join {
            info,
            hidden,
            via: match via {
                WireVia::Websocket => Via::WebSocket,
                WireVia::Whip => Via::Whip,
                WireVia::Whep => Via::Whep,
            },
            relayed: true,
            outbox: crate::outbox::outbox().0,
            kick,
            ice_servers: Vec::new(),
            resume_token: None,
            alternates: Vec::new(),
            token: (String::new(), 0),
            subscribe: None,
        };
        match room.join(join).await {
            Ok(_) => {
                self.inner
                    .lock()
                    .admitted
                    .entry(name.clone())
                    .or_default()
                    .insert(participant.id.clone());
                self.send(RelayControl::Admitted {
                    request,
                    refused: None,
                    full: false,
                });
                // The room's kicks for the member go to the node that serves it (the channel
                // closes when the member leaves).
                let link = self.clone();
                tokio::spawn(async move {
                    while let Some(reason) = kicks.recv().await {
                        link.send(RelayControl::Kick {
                            room: name.clone(),
                            participant: participant.id.clone(),
                            reason,
                        });
                    }
                });
            }
            Err(e) => {
                let full = matches!(e, RoomError::Full { .. });
                self.send(refuse(e.to_string(), full));
            }
        }
    }

    /// At the host: a member admitted for the other node left.
    async fn on_member_left_at_host(&self, name: &str, participant: &str) {
        let known = self
            .inner
            .lock()
            .admitted
            .get_mut(name)
            .is_some_and(|m| m.remove(participant));
        if !known {
            return;
        }
        if let Some(room) = self
            .state
            .upgrade()
            .and_then(|s| s.rooms.get(name))
            .filter(|r| !r.is_edge())
        {
            room.leave(participant, Vec::new()).await;
        }
    }

    /// A relayed track was muted or unmuted at its origin: so it is here.
    async fn on_muted(&self, relay_id: u32, muted: bool) {
        let Some((room_name, id, _)) = self.inner.lock().received.get(&relay_id).cloned() else {
            return;
        };
        let Some(room) = self.state.upgrade().and_then(|s| s.rooms.get(&room_name)) else {
            return;
        };
        let track = id.to_string();
        let participant = room
            .tracks()
            .await
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.info.participant);
        if let Some(participant) = participant
            && let Err(e) = room
                .set_muted(&participant, &track, muted, crate::room::MutedBy::Publisher)
                .await
        {
            debug!(relay_id, error = %e, "relay: a relayed track's mute not applied");
        }
    }

    /// The egress's packets, as datagrams on the link.
    async fn origin_packets(
        self: Arc<Self>,
        name: String,
        mut packets: mpsc::Receiver<sfu::relay::RelayPacket>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut relay_ids: HashMap<TrackId, u32> = HashMap::new();
        loop {
            let packet = tokio::select! {
                p = packets.recv() => p,
                _ = stopped.changed() => None,
            };
            let Some(packet) = packet else { return };
            let relay_id = match relay_ids.get(&packet.track) {
                Some(id) => *id,
                None => {
                    let inner = self.inner.lock();
                    let Some(id) = inner
                        .origin
                        .get(&name)
                        .and_then(|o| o.tracks.get(&packet.track))
                    else {
                        continue;
                    };
                    relay_ids.insert(packet.track, *id);
                    *id
                }
            };
            let datagram = MediaDatagram {
                relay_id,
                layer: packet.layer,
                keyframe: packet.keyframe,
                repair: packet.repair,
                sent_at_us: unix_micros(),
                rtp: &packet.rtp,
            };
            // Written once into the buffer the link sends (no copy into a scratch buffer first).
            let mut buffer = Vec::new();
            datagram.encode_into(&mut buffer);
            if self.link.send_datagram(bytes::Bytes::from(buffer)).is_err() {
                self.counts
                    .datagrams_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The room's data messages go to the other node's members.
    async fn origin_events(
        self: Arc<Self>,
        name: String,
        mut events: mpsc::Receiver<sfu::relay::RelayEvent>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = stopped.changed() => None,
            };
            match event {
                Some(sfu::relay::RelayEvent::Data { binary, bytes }) => {
                    if let Some(message) = data_message(&name, binary, &bytes) {
                        self.send(message);
                    }
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// A data message from the other node's members of `room`, for the members here.
    async fn on_data(&self, room: &str, binary: bool, data: String) {
        let bytes = if binary {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        } else {
            data.into_bytes()
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(edge) = state.rooms.get(room).map(|r| r.is_edge()) else {
            return;
        };
        // The endpoint that carries the room's data on this link: the edge's ingress, the
        // host's egress.
        let relay = {
            let inner = self.inner.lock();
            if edge {
                inner.edge.get(room).map(|e| e.ingress)
            } else {
                inner.origin.get(room).map(|o| o.egress)
            }
        };
        if let Some(relay) = relay {
            let _ = state.sfu.relay_data(relay, binary, bytes).await;
        }
    }

    /// Tells the other node about the room as it changes: at the host, the members elsewhere
    /// than at that node; on both sides, the tracks published here (not those received from
    /// that node) and their mutes.
    async fn origin_tracks(
        self: Arc<Self>,
        name: String,
        room: Weak<Room>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut every = tokio::time::interval(TRACK_POLL);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stopped.changed() => return,
            }
            let (Some(room), Some(state)) = (room.upgrade(), self.state.upgrade()) else {
                self.room_gone(&name).await;
                return;
            };
            if !state
                .rooms
                .get(&name)
                .is_some_and(|r| Arc::ptr_eq(&r, &room))
            {
                self.room_gone(&name).await;
                return;
            }
            let snapshot = room.snapshot().await;
            // Members admitted for the other node, and tracks received from it: its own.
            let (theirs, received): (std::collections::HashSet<String>, Vec<TrackId>) = {
                let inner = self.inner.lock();
                (
                    inner.admitted.get(&name).cloned().unwrap_or_default(),
                    inner
                        .received
                        .values()
                        .filter(|(r, ..)| *r == name)
                        .map(|(_, id, _)| *id)
                        .collect(),
                )
            };
            let ours = |participant: &str| {
                !theirs.contains(participant)
                    && snapshot.members.iter().any(|m| m.info.id == participant)
            };
            let mut left = Vec::new();
            if !room.is_edge() {
                let visible: Vec<&ParticipantInfo> = snapshot
                    .members
                    .iter()
                    .filter(|m| !m.hidden && ours(&m.info.id))
                    .map(|m| &m.info)
                    .collect();
                let mut joined = Vec::new();
                {
                    let mut inner = self.inner.lock();
                    let Some(origin) = inner.origin.get_mut(&name) else {
                        return;
                    };
                    for m in &visible {
                        if origin.members.insert(m.id.clone()) {
                            joined.push((*m).clone());
                        }
                    }
                    origin.members.retain(|id| {
                        let here = visible.iter().any(|m| m.id == *id);
                        if !here {
                            left.push(id.clone());
                        }
                        here
                    });
                }
                for p in joined {
                    self.send(RelayControl::MemberJoined {
                        room: name.clone(),
                        participant: WireParticipant {
                            id: p.id,
                            identity: p.identity,
                            name: p.name,
                        },
                    });
                }
            }
            let tracks: Vec<&RoomTrack> = snapshot
                .tracks
                .iter()
                .filter(|t| !received.contains(&t.id) && ours(&t.info.participant))
                .collect();
            let known: HashMap<TrackId, u32> = match self.inner.lock().origin.get(&name) {
                Some(o) => o.tracks.clone(),
                None => return,
            };
            for track in tracks.iter().filter(|t| !known.contains_key(&t.id)) {
                let Some(publisher) = snapshot
                    .members
                    .iter()
                    .find(|m| m.info.id == track.info.participant)
                    .map(|m| m.info.clone())
                else {
                    continue;
                };
                self.announce_track(&state, &name, track, publisher).await;
            }
            let changed: Vec<(u32, bool)> = {
                let mut inner = self.inner.lock();
                let Some(origin) = inner.origin.get_mut(&name) else {
                    return;
                };
                tracks
                    .iter()
                    .filter_map(|t| {
                        let relay_id = *origin.tracks.get(&t.id)?;
                        let was = origin.muted.insert(relay_id, t.info.muted);
                        (was != Some(t.info.muted)).then_some((relay_id, t.info.muted))
                    })
                    .filter(|(relay_id, _)| known.values().any(|k| k == relay_id))
                    .collect()
            };
            for (relay_id, muted) in changed {
                self.send(RelayControl::Muted { relay_id, muted });
            }
            let gone: Vec<(TrackId, u32)> = known
                .into_iter()
                .filter(|(id, _)| !tracks.iter().any(|t| t.id == *id))
                .collect();
            for (id, relay_id) in gone {
                {
                    let mut inner = self.inner.lock();
                    if let Some(origin) = inner.origin.get_mut(&name) {
                        origin.tracks.remove(&id);
                        origin.layers.remove(&relay_id);
                        origin.muted.remove(&relay_id);
                    }
                    inner.relayed.remove(&relay_id);
                }
                self.send(RelayControl::TrackRemoved { relay_id });
            }
            for participant in left {
                self.send(RelayControl::MemberLeft {
                    room: name.clone(),
                    participant,
                });
            }
        }
    }

    /// Announces a track published here to the other node (its relay id on this link).
    async fn announce_track(
        &self,
        state: &AppState,
        name: &str,
        track: &RoomTrack,
        publisher: ParticipantInfo,
    ) {
        let Ok(codecs) = state.sfu.track_codecs(track.id).await else {
            return;
        };
        let layers = u8::try_from(track.info.simulcast.len().clamp(1, 8)).unwrap_or(1);
        let kind = if track.info.kind == "audio" {
            TrackKind::Audio
        } else {
            TrackKind::Video
        };
        let relay_id = {
            let mut inner = self.inner.lock();
            inner.next_relay_id = inner.next_relay_id.wrapping_add(1);
            let id = inner.next_relay_id;
            let Some(origin) = inner.origin.get_mut(name) else {
                return;
            };
            origin.tracks.insert(track.id, id);
            origin.layers.insert(id, (kind, 0));
            origin.muted.insert(id, track.info.muted);
            inner.relayed.insert(id, (name.to_string(), track.id));
            id
        };
        self.send(RelayControl::TrackAdded {
            room: name.to_string(),
            relay_id,
            track: RelayedTrack {
                participant: track.info.participant.clone(),
                identity: publisher.identity,
                name: publisher.name,
                kind,
                source: track.info.source.clone(),
                simulcast: track.info.simulcast.iter().take(8).cloned().collect(),
                layers,
                muted: track.info.muted,
                codecs: codecs
                    .into_iter()
                    .take(MAX_CODECS)
                    .map(|c| WireCodec {
                        pt: c.pt,
                        name: c.name,
                        clock_rate: c.clock_rate,
                        channels: c.channels,
                        fmtp: c.fmtp,
                    })
                    .collect(),
            },
        });
    }

    /// A relayed room closed here: the other node hears that its tracks ended.
    async fn room_gone(&self, name: &str) {
        let ids: Vec<u32> = self
            .inner
            .lock()
            .origin
            .get(name)
            .map(|o| o.tracks.values().copied().collect())
            .unwrap_or_default();
        for relay_id in ids {
            self.send(RelayControl::TrackRemoved { relay_id });
        }
        self.send(RelayControl::RoomRefused {
            room: name.to_string(),
            reason: "the room closed".into(),
        });
        self.room_unsubscribe(name).await;
    }

    /// What the other node asks of a track relayed from here.
    async fn on_track_request(&self, message: RelayControl) {
        let relay_id = match &message {
            RelayControl::SetLayers { relay_id, .. }
            | RelayControl::KeyframeRequest { relay_id, .. }
            | RelayControl::Nack { relay_id, .. } => *relay_id,
            _ => return,
        };
        let found = {
            let inner = self.inner.lock();
            inner
                .relayed
                .get(&relay_id)
                .and_then(|(room, track)| inner.origin.get(room).map(|o| (o.egress, *track)))
        };
        let (Some((egress, track)), Some(state)) = (found, self.state.upgrade()) else {
            return;
        };
        let result = match message {
            RelayControl::SetLayers { layers, .. } => {
                let result = state.sfu.relay_layers(egress, track, layers).await;
                if result.is_ok() {
                    let mut inner = self.inner.lock();
                    let room = inner.relayed.get(&relay_id).map(|(r, _)| r.clone());
                    if let Some(entry) = room
                        .and_then(|r| inner.origin.get_mut(&r))
                        .and_then(|o| o.layers.get_mut(&relay_id))
                    {
                        entry.1 = layers;
                    }
                }
                result
            }
            RelayControl::KeyframeRequest { layer, .. } => {
                state.sfu.relay_keyframe(egress, track, layer).await
            }
            RelayControl::Nack { layer, seqs, .. } => {
                state.sfu.relay_nack(egress, track, layer, seqs).await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            debug!(relay_id, error = %e, "relay: request for a track that is gone");
        }
    }

    // ---- both ---------------------------------------------------------------------------

    /// Reads the other node's control stream and acts on each message; a malformed one ends
    /// the link.
    async fn read_control(self: Arc<Self>) {
        let Ok(mut stream) = self.link.accept_uni().await else {
            return;
        };
        let mut decoder = ControlDecoder::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = match stream.read(&mut buf).await {
                Ok(Some(n)) => n,
                _ => return,
            };
            let Some(bytes) = buf.get(..read) else { return };
            if let Err(e) = decoder.push(bytes) {
                self.malformed(&e);
                return;
            }
            loop {
                match decoder.next_message() {
                    Ok(Some(message)) => self.on_message(message).await,
                    Ok(None) => break,
                    Err(e) => {
                        self.malformed(&e);
                        return;
                    }
                }
            }
        }
    }

    fn malformed(&self, error: &super::wire::WireError) {
        self.counts.control_refused.fetch_add(1, Ordering::Relaxed);
        warn!(peer = %self.link.peer(), %error, "relay: malformed control message; closing the link");
        self.link.close("malformed control message");
    }

    async fn on_message(self: &Arc<Self>, message: RelayControl) {
        match message {
            RelayControl::RoomSubscribe { room } => self.room_subscribe(room).await,
            RelayControl::RoomUnsubscribe { room } => self.room_unsubscribe(&room).await,
            RelayControl::RoomRefused { room, reason } => {
                warn!(room = %room, %reason, "relay: the host refused (or stopped) relaying a room");
                let ids: Vec<u32> = self
                    .inner
                    .lock()
                    .received
                    .iter()
                    .filter(|(_, (r, ..))| *r == room)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.track_removed(id).await;
                }
            }
            RelayControl::TrackAdded {
                room,
                relay_id,
                track,
            } => self.track_added(room, relay_id, track).await,
            RelayControl::TrackRemoved { relay_id } => self.track_removed(relay_id).await,
            RelayControl::Muted { relay_id, muted } => self.on_muted(relay_id, muted).await,
            RelayControl::Admit {
                room,
                request,
                participant,
                via,
                hidden,
            } => self.on_admit(room, request, participant, via, hidden).await,
            RelayControl::Admitted {
                request,
                refused,
                full,
            } => self.on_admitted(request, refused, full),
            RelayControl::MemberJoined { room, participant } => {
                self.on_member(&room, Some(participant), None).await;
            }
            RelayControl::MemberLeft { room, participant } => {
                self.on_member_left_at_host(&room, &participant).await;
                self.on_member(&room, None, Some(participant)).await;
            }
            RelayControl::Kick {
                room,
                participant,
                reason,
            } => self.on_kick(&room, &participant, &reason).await,
            RelayControl::Data { room, binary, data } => self.on_data(&room, binary, data).await,
            request @ (RelayControl::SetLayers { .. }
            | RelayControl::KeyframeRequest { .. }
            | RelayControl::Nack { .. }) => self.on_track_request(request).await,
        }
    }

    /// The link closed: relayed rooms stop both ways; edge rooms lose their tracks (their
    /// viewers stay and get them again if a new link comes up and they rejoin).
    async fn close(&self, why: &str) -> Vec<(String, Weak<Room>)> {
        info!(peer = %self.link.peer(), reason = why, "relay: rooms over the link stop");
        let origin: Vec<String> = self.inner.lock().origin.keys().cloned().collect();
        for name in origin {
            self.room_unsubscribe(&name).await;
        }
        let received: Vec<u32> = self.inner.lock().received.keys().copied().collect();
        for id in received {
            self.track_removed(id).await;
        }
        let edges: Vec<(PeerId, Weak<Room>)> = self
            .inner
            .lock()
            .edge
            .drain()
            .map(|(_, e)| (e.ingress, e.room))
            .collect();
        let pending: Vec<Admission> = self.inner.lock().pending.drain().map(|(_, a)| a).collect();
        for answer in pending {
            let _ = answer.send(Err(Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!("the link to node {} closed; join again", self.link.peer()),
            )));
        }
        self.inner.lock().asked.clear();
        let mut orphans = Vec::new();
        if let Some(state) = self.state.upgrade() {
            for (ingress, room) in edges {
                let _ = state.sfu.remove_relay_ingress(ingress).await;
                if let Some(room) = room.upgrade().filter(|r| r.is_edge()) {
                    room.clear_remote().await;
                    orphans.push((room.name.clone(), Arc::downgrade(&room)));
                }
            }
        }
        orphans
    }
}

/// Writes this node's control messages on a stream of their own.
async fn write_control(link: RelayLink, mut queue: mpsc::Receiver<RelayControl>) {
    let Ok(mut stream) = link.open_uni().await else {
        return;
    };
    while let Some(message) = queue.recv().await {
        let frame = match message.encode() {
            Ok(frame) => frame,
            Err(e) => {
                warn!(error = %e, "relay: a control message past the bounds was not sent");
                continue;
            }
        };
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// A data message for the link (`None`: longer than the link carries; dropped).
fn data_message(room: &str, binary: bool, bytes: &[u8]) -> Option<RelayControl> {
    let data = if binary {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    } else {
        String::from_utf8(bytes.to_vec()).ok()?
    };
    (data.len() <= super::wire::MAX_DATA).then(|| RelayControl::Data {
        room: room.to_string(),
        binary,
        data,
    })
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn shutting_down() -> Refusal {
    Refusal::new(ErrorCode::Draining, "the server is shutting down")
}
