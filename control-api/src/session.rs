//! One participant's signalling session: the messages of its WebSocket and the events of its
//! two peers (publish and subscribe), turned into media-core commands and room broadcasts.
//!
//! The session is transport-agnostic: [`Session::handle`] takes parsed client messages and
//! replies through the participant's outbox; the WebSocket glue lives in `http`.

use std::sync::Arc;

use rand::Rng;
use std::collections::BTreeMap;

use sfu::{
    CloseReason, EventSink, PeerEvent, PeerId, PeerSpec, Quality, SfuError, TrackId, TrackKind,
    VideoPreference,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::AppState;
use crate::auth::Grants;
use crate::cluster::Placement;
use crate::protocol::{
    ClientMessage, ErrorCode, OfferedTrack, ParticipantInfo, PcTarget, QualityName, Refusal,
    ServerMessage, TrackInfo,
};
use crate::whip::Kind;

use crate::outbox::Outbox;
use crate::room::{Join, Kick, MutedBy, Room, RoomError, RoomTrack, Via};

/// Track sources a client may declare.
const KNOWN_SOURCES: [&str; 4] = ["camera", "microphone", "screen", "screen_audio"];
/// Mids a session remembers a declared source for (a browser uses four); others get the
/// default source.
const MAX_SOURCES: usize = 32;
/// Longest mid a source may be declared for (browsers use a number).
const MAX_MID_LEN: usize = 16;

/// The largest view size a client may report for a video track, per side.
const MAX_VIEW_SIDE: u32 = 16_384;

/// Whether the session goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// The client left: close the socket.
    Stop,
}

/// A participant's session.
pub struct Session {
    state: Arc<AppState>,
    outbox: Outbox,
    events: EventSink,
    joined: Option<Joined>,
    kick: Kick,
    kicked: Option<mpsc::UnboundedReceiver<String>>,
    /// Handed to the client in `joined`, if its connection may resume.
    resume_token: Option<String>,
}

struct Joined {
    room: Arc<Room>,
    me: ParticipantInfo,
    grants: Grants,
    spec: PeerSpec,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    /// What the client said each of its publish mids carries.
    sources: BTreeMap<String, String>,
    /// A peer connection has existed.
    had_media: bool,
    /// When the access token expires (TURN credentials end with it).
    expires: u64,
}

/// What a joining session will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// A WebSocket participant: subscribes to everything (if allowed) and may publish.
    Interactive,
    /// A WHIP publisher: publishes only.
    Publisher,
    /// A WHEP viewer: subscribes from its own offer.
    Viewer,
}

impl Session {
    /// A session replying to `outbox`; its peers' events go to `events`.
    pub fn new(state: Arc<AppState>, outbox: Outbox, events: EventSink) -> Self {
        let (kick, kicked) = mpsc::unbounded_channel();
        Self {
            state,
            outbox,
            events,
            joined: None,
            kick,
            kicked: Some(kicked),
            resume_token: None,
        }
    }

    /// The session may be resumed with `token`, which `joined` hands to the client.
    pub fn offer_resume(&mut self, token: String) {
        self.resume_token = Some(token);
    }

    /// Whether the session has joined a room.
    pub fn is_joined(&self) -> bool {
        self.joined.is_some()
    }

    /// Where requests to disconnect this session arrive (the room service removing the
    /// participant, or deleting the room). The driver takes it once and, on a message, calls
    /// [`Session::leave`] with it as the reason.
    pub fn take_kick_receiver(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.kicked.take()
    }

    fn send(&self, message: ServerMessage) {
        self.outbox.send(message);
    }

    /// Sends a message to this participant (e.g. an error about a frame that did not parse).
    pub fn reply(&self, message: ServerMessage) {
        self.send(message);
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.send(ServerMessage::error(code, message));
    }

    /// Handles one client message.
    pub async fn handle(&mut self, message: ClientMessage) -> Flow {
        if let ClientMessage::Join { token } = &message {
            if self.joined.is_some() {
                self.error(
                    ErrorCode::AlreadyJoined,
                    "this session has already joined a room",
                );
            } else if let Err(e) = self.join(token, JoinMode::Interactive, None).await {
                self.send(e.into());
            }
            return Flow::Continue;
        }
        match message {
            ClientMessage::Ping => self.send(ServerMessage::Pong),
            _ if self.joined.is_none() => {
                self.error(
                    ErrorCode::NotJoined,
                    "send a join message with your token first",
                );
            }
            ClientMessage::PublishOffer { sdp, sources } => match self.publish(&sdp, sources).await
            {
                Ok(sdp) => self.send(ServerMessage::PublishAnswer { sdp }),
                Err(e) => self.send(e.into()),
            },
            ClientMessage::SubscribeAnswer { sdp } => self.subscribe_answer(&sdp).await,
            ClientMessage::Candidate { target, candidate } => {
                if let Err(e) = self.add_candidate(target, candidate.as_deref()).await {
                    self.send(e.into());
                }
            }
            ClientMessage::Mute { track, muted } => self.mute(&track, muted).await,
            ClientMessage::SetQuality {
                track,
                quality,
                width,
                height,
            } => self.set_quality(&track, quality, width, height).await,
            ClientMessage::Leave => {
                self.leave("client left").await;
                return Flow::Stop;
            }
            ClientMessage::RestartIce => self.restart_ice().await,
            ClientMessage::Resume { .. } => self.error(
                ErrorCode::AlreadyJoined,
                "send resume as the first message of a new socket",
            ),
            ClientMessage::Join { .. } => {}
        }
        Flow::Continue
    }

    /// Joins the room named in `token` (which must be `room`, if given).
    pub async fn join(
        &mut self,
        token: &str,
        mode: JoinMode,
        room: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.state.is_draining() {
            return Err(Refusal::new(
                ErrorCode::Draining,
                "this server is shutting down; join again to be placed on another server",
            ));
        }
        let max = self.state.config.rooms.max_node_participants;
        if max > 0 && self.state.rooms.counts().1 >= max {
            return Err(Refusal::new(
                ErrorCode::ServerFull,
                format!("this server has its {max} participants; try another server or later"),
            ));
        }
        let claims = self
            .state
            .keys
            .verify(token)
            .map_err(|e| Refusal::new(ErrorCode::BadToken, format!("{e}; get a new token")))?;
        let token_id = crate::revoked::token_id(token);
        if self.state.revoked.is_revoked(token_id) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                "the room service removed the participant that used this token; get a new token",
            ));
        }
        let grants = claims.video;
        let Some(room_name) = grants.room.clone().filter(|_| grants.room_join) else {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                "the token does not grant roomJoin for a room",
            ));
        };
        if room.is_some_and(|r| r != room_name) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("the token is for room {room_name:?}, not this one"),
            ));
        }
        match mode {
            JoinMode::Publisher if !grants.may_publish() => {
                return Err(Refusal::new(
                    ErrorCode::PermissionDenied,
                    "the token does not allow publishing (canPublish)",
                ));
            }
            JoinMode::Viewer if !grants.may_subscribe() => {
                return Err(Refusal::new(
                    ErrorCode::PermissionDenied,
                    "the token does not allow subscribing (canSubscribe)",
                ));
            }
            _ => {}
        }
        let me = ParticipantInfo {
            id: new_participant_id(),
            identity: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
        };
        let token = (token_id.to_string(), claims.exp);
        let (room, spec, subscriber) = self.enter(&room_name, &me, &grants, mode, token).await?;
        self.joined = Some(Joined {
            room,
            me,
            grants,
            spec,
            publisher: None,
            subscriber,
            sources: BTreeMap::new(),
            had_media: subscriber.is_some(),
            expires: claims.exp,
        });
        Ok(())
    }

    /// In cluster mode, why this node may not start `room_name` (it does not host it): another
    /// node hosts it (the client is pointed at the same endpoint there: its signalling URL, or
    /// its WHIP/WHEP URL for `mode`), or the directory cannot be reached. A participant is
    /// served here instead, when this node has a relay link to the host: the
    /// room is opened here as an edge room of the host's, and the host admits it.
    async fn placed_elsewhere(&self, room_name: &str, mode: JoinMode) -> Option<Refusal> {
        let cluster = self.state.cluster.as_ref()?;
        let relayed = cluster.relayed();
        // Every participant is served at any node with a relay link to the room's host (an
        // edge room here).
        if self.state.rooms.get(room_name).is_some() {
            return None;
        }
        match cluster.place(room_name).await {
            Placement::Here => None,
            Placement::Elsewhere(node, Some(_)) if relayed.linked_to(&node) => {
                relayed.edge_room(room_name, &node).await.err()
            }
            Placement::Elsewhere(node, Some(entry)) => {
                let url = match mode {
                    JoinMode::Interactive => entry.signalling_url(),
                    JoinMode::Publisher => {
                        entry.url + &crate::whip::endpoint_path(Kind::Whip, room_name)
                    }
                    JoinMode::Viewer => {
                        entry.url + &crate::whip::endpoint_path(Kind::Whep, room_name)
                    }
                };
                Some(
                    Refusal::new(
                        ErrorCode::RoomElsewhere,
                        format!(
                            "room {room_name:?} is hosted by node {node}: join at {url} with the same token"
                        ),
                    )
                    .at(url),
                )
            }
            Placement::Elsewhere(node, None) => Some(Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "room {room_name:?} is hosted by node {node}, which is not answering; join again in a few seconds"
                ),
            )),
            Placement::Unavailable(why) => Some(Refusal::new(
                ErrorCode::ClusterUnavailable,
                format!(
                    "cannot start room {room_name:?} here: the cluster's directory (Redis) is unreachable ({why}); rooms already on this server can be joined; try again shortly"
                ),
            )),
        }
    }

    /// Joins `room_name` as `me`: opens the room (again, if it was ending as we came) and asks
    /// it to admit us; the room sends `joined`. Returns the room, our media-core identity and
    /// our subscriber peer.
    async fn enter(
        &mut self,
        room_name: &str,
        me: &ParticipantInfo,
        grants: &Grants,
        mode: JoinMode,
        token: (String, u64),
    ) -> Result<(Arc<Room>, PeerSpec, Option<PeerId>), Refusal> {
        let expires = token.1;
        /// A room may end between being opened and admitting us; it is then opened anew.
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Each attempt: a room that ended meanwhile may be hosted elsewhere by now.
            if let Some(refusal) = self.placed_elsewhere(room_name, mode).await {
                return Err(refusal);
            }
            let room = self.state.rooms.open(room_name)?;
            let spec = PeerSpec {
                room: room.id,
                participant: Arc::from(me.id.as_str()),
                identity: Arc::from(me.identity.as_str()),
                can_publish_data: grants.may_publish_data(),
            };
            let subscribe = (mode == JoinMode::Interactive && grants.may_subscribe())
                .then(|| (spec.clone(), self.events.clone()));
            let via = match mode {
                JoinMode::Interactive => Via::WebSocket,
                JoinMode::Publisher => Via::Whip,
                JoinMode::Viewer => Via::Whep,
            };
            let join = Join {
                info: me.clone(),
                hidden: grants.hidden,
                via,
                relayed: false,
                outbox: self.outbox.clone(),
                kick: self.kick.clone(),
                ice_servers: self.state.ice_servers(&me.identity, expires),
                resume_token: self.resume_token.clone(),
                alternates: self.state.alternates(),
                token: token.clone(),
                subscribe,
            };
            let relayed = self.state.cluster.as_ref().map(|c| c.relayed().clone());
            if room.is_edge()
                && let Some(relayed) = &relayed
            {
                // The room's host decides (its limit, one session per identity).
                relayed.admit(&room, me, via, grants.hidden).await?;
            }
            let joined = room.join(join).await;
            if joined.is_err()
                && room.is_edge()
                && let Some(relayed) = &relayed
            {
                relayed.member_left(&room, &me.id);
            }
            match joined {
                Ok(subscriber) => return Ok((room, spec, subscriber)),
                Err(RoomError::Closing) if attempt < ATTEMPTS => continue,
                Err(RoomError::Media(e)) => {
                    return Err(internal("create the subscriber connection", &e));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Offers (or re-offers) the publish connection; returns the answer.
    pub async fn publish(
        &mut self,
        sdp: &str,
        sources: BTreeMap<String, String>,
    ) -> Result<String, Refusal> {
        let Some(joined) = &mut self.joined else {
            return Err(not_joined());
        };
        // Known before the answer, so the tracks the offer creates are announced with them.
        for (mid, source) in sources {
            let room_for_it =
                joined.sources.len() < MAX_SOURCES || joined.sources.contains_key(&mid);
            if KNOWN_SOURCES.contains(&source.as_str()) && mid.len() <= MAX_MID_LEN && room_for_it {
                joined.sources.insert(mid, source);
            }
        }
        if !joined.grants.may_publish() && has_media_sections(sdp) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                "the token does not allow publishing audio or video (canPublish)",
            ));
        }
        let result = match joined.publisher {
            Some(peer) => self.state.sfu.publisher_offer(peer, sdp).await,
            None => {
                let added = self
                    .state
                    .sfu
                    .add_publisher(joined.spec.clone(), sdp, self.events.clone())
                    .await;
                added.map(|(peer, answer)| {
                    joined.publisher = Some(peer);
                    joined.had_media = true;
                    answer
                })
            }
        };
        result.map_err(|e| sfu_refusal(&e))
    }

    /// Subscribes from the client's offer (WHEP), to the tracks of `follow` (a participant id)
    /// or, without one, of the first participant publishing video; returns the answer.
    pub async fn whep(&mut self, offer: &str, follow: Option<&str>) -> Result<String, Refusal> {
        let Some(joined) = &mut self.joined else {
            return Err(not_joined());
        };
        if joined.room.is_edge() {
            relayed_tracks_arrived(&joined.room, follow).await;
        }
        let (peer, answer) = joined
            .room
            .subscribe_from_offer(
                &joined.me.id,
                joined.spec.clone(),
                offer,
                follow,
                self.events.clone(),
            )
            .await
            .map_err(|e| match e {
                RoomError::Media(e) => sfu_refusal(&e),
                e => e.into(),
            })?;
        joined.subscriber = Some(peer);
        joined.had_media = true;
        Ok(answer)
    }

    /// The peer of one of this session's connections.
    pub fn peer(&self, target: PcTarget) -> Option<PeerId> {
        let joined = self.joined.as_ref()?;
        match target {
            PcTarget::Publish => joined.publisher,
            PcTarget::Subscribe => joined.subscriber,
        }
    }

    /// TURN credentials for this participant, once joined (see [`AppState::ice_servers`]).
    pub fn ice_servers(&self) -> Vec<crate::turn::IceServer> {
        self.joined
            .as_ref()
            .map(|j| self.state.ice_servers(&j.me.identity, j.expires))
            .unwrap_or_default()
    }

    /// Whether the session joined and every peer connection it had has closed.
    pub fn media_gone(&self) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|j| j.publisher.is_none() && j.subscriber.is_none() && j.had_media)
    }

    async fn subscribe_answer(&mut self, sdp: &str) {
        let Some(peer) = self.joined.as_ref().and_then(|j| j.subscriber) else {
            self.error(
                ErrorCode::BadSdp,
                "there is no subscribe connection to answer for",
            );
            return;
        };
        if let Err(e) = self.state.sfu.subscriber_answer(peer, sdp).await {
            self.send(sfu_error(&e));
        }
    }

    /// Adds a trickled ICE candidate to one of the connections (an empty one, or one for a
    /// connection that does not exist yet, is ignored: an ICE-lite server learns addresses
    /// from the connectivity checks).
    pub async fn add_candidate(
        &mut self,
        target: PcTarget,
        candidate: Option<&str>,
    ) -> Result<(), Refusal> {
        let (Some(peer), Some(candidate)) = (
            self.peer(target),
            candidate.filter(|c| !c.trim().is_empty()),
        ) else {
            return Ok(());
        };
        self.state
            .sfu
            .add_remote_candidate(peer, candidate)
            .await
            .map_err(|e| sfu_refusal(&e))
    }

    async fn mute(&mut self, track: &str, muted: bool) {
        let Some(joined) = &self.joined else {
            return;
        };
        let result = joined
            .room
            .set_muted(&joined.me.id, track, muted, MutedBy::Publisher)
            .await;
        if let Err(e) = result {
            self.send(Refusal::from(e).into());
        }
    }

    async fn restart_ice(&mut self) {
        let Some(peer) = self.joined.as_ref().and_then(|j| j.subscriber) else {
            self.error(
                ErrorCode::BadSdp,
                "there is no subscribe connection to restart",
            );
            return;
        };
        if let Err(e) = self.state.sfu.restart_ice(peer).await {
            self.send(sfu_error(&e));
        }
    }

    async fn set_quality(
        &mut self,
        track: &str,
        quality: QualityName,
        width: Option<u32>,
        height: Option<u32>,
    ) {
        let max_size = match (width, height) {
            (None, None) => None,
            (Some(w), Some(h))
                if (1..=MAX_VIEW_SIDE).contains(&w) && (1..=MAX_VIEW_SIDE).contains(&h) =>
            {
                Some((w, h))
            }
            _ => {
                self.error(
                    ErrorCode::BadMessage,
                    format!("width and height go together, each 1 to {MAX_VIEW_SIDE}"),
                );
                return;
            }
        };
        let Some(peer) = self.joined.as_ref().and_then(|j| j.subscriber) else {
            self.error(ErrorCode::UnknownTrack, "you do not subscribe to anything");
            return;
        };
        let Ok(id) = track.parse::<TrackId>() else {
            self.error(
                ErrorCode::UnknownTrack,
                format!("{track:?} is not a track id"),
            );
            return;
        };
        let quality = match quality {
            QualityName::Auto => Quality::Auto,
            QualityName::High => Quality::High,
            QualityName::Medium => Quality::Medium,
            QualityName::Low => Quality::Low,
        };
        let preference = VideoPreference { quality, max_size };
        if let Err(e) = self
            .state
            .sfu
            .set_video_preference(peer, id, preference)
            .await
        {
            self.send(sfu_error(&e));
        }
    }

    /// Handles an event of one of this participant's peers.
    pub async fn on_peer_event(&mut self, event: PeerEvent) {
        let Some(joined) = &mut self.joined else {
            return;
        };
        match event {
            PeerEvent::Connected { peer } => debug!(%peer, "media connected"),
            PeerEvent::Stats { peer, stats } => debug!(%peer, ?stats, "peer stats"),
            PeerEvent::LayerState {
                peer,
                track,
                current,
                target,
                reason,
                layers,
                max_temporal,
            } if Some(peer) == joined.subscriber => {
                self.send(ServerMessage::LayerState {
                    track: track.to_string(),
                    current,
                    target,
                    reason: reason.as_str().to_string(),
                    layers,
                    waiting_keyframe: target.is_some() && current != target,
                    max_temporal,
                });
            }
            PeerEvent::CodecRefused { peer, track, codec } if Some(peer) == joined.subscriber => {
                self.error(
                    ErrorCode::UnsupportedCodec,
                    format!(
                        "track {track} is sent in {codec}, which this connection did not \
                         accept; it is not forwarded (the server does not transcode)"
                    ),
                );
            }
            PeerEvent::LayersWanted {
                peer,
                track,
                active,
            } if Some(peer) == joined.publisher => {
                self.send(ServerMessage::LayersWanted {
                    track: track.to_string(),
                    active,
                });
            }
            PeerEvent::AudioLevel { peer, level, .. } if Some(peer) == joined.publisher => {
                joined.room.audio_level(&joined.me.id, level).await;
            }
            PeerEvent::SubscriberOffer { peer, sdp, tracks } if Some(peer) == joined.subscriber => {
                let tracks = tracks
                    .into_iter()
                    .map(|t| OfferedTrack {
                        mid: t.mid,
                        track: t.track.to_string(),
                        participant: t.participant.to_string(),
                        kind: t.kind.as_str().to_string(),
                    })
                    .collect();
                self.send(ServerMessage::SubscribeOffer { sdp, tracks });
            }
            PeerEvent::TrackPublished { peer, track } if Some(peer) == joined.publisher => {
                let source = joined.sources.get(&track.mid).cloned().unwrap_or_else(|| {
                    match track.kind {
                        TrackKind::Audio => "microphone",
                        TrackKind::Video => "camera",
                    }
                    .to_string()
                });
                let info = TrackInfo {
                    id: track.id.to_string(),
                    participant: joined.me.id.clone(),
                    kind: track.kind.as_str().to_string(),
                    source,
                    mid: track.mid,
                    simulcast: track.simulcast,
                    muted: false,
                };
                joined
                    .room
                    .publish_track(RoomTrack { id: track.id, info })
                    .await;
            }
            PeerEvent::TrackUnpublished { peer, track } if Some(peer) == joined.publisher => {
                joined.room.unpublish_track(track).await;
            }
            PeerEvent::Closed { peer, reason } => {
                let which = if Some(peer) == joined.publisher {
                    joined.publisher = None;
                    "publish"
                } else if Some(peer) == joined.subscriber {
                    joined.subscriber = None;
                    joined.room.subscriber_closed(&joined.me.id).await;
                    "subscribe"
                } else {
                    return;
                };
                if reason != CloseReason::Removed && reason != CloseReason::Shutdown {
                    warn!(%peer, ?reason, "media connection closed");
                    self.error(
                        ErrorCode::MediaClosed,
                        format!("the {which} connection closed ({reason:?}); rejoin to continue"),
                    );
                }
            }
            _ => {}
        }
    }

    /// Leaves the room: removes this participant's peers (so the forwarding graph holds
    /// nothing of it), then tells the others.
    pub async fn leave(&mut self, reason: &str) {
        let Some(joined) = self.joined.take() else {
            return;
        };
        let peers = [joined.publisher, joined.subscriber]
            .into_iter()
            .flatten()
            .collect();
        joined.room.leave(&joined.me.id, peers).await;
        if joined.room.is_edge()
            && let Some(cluster) = &self.state.cluster
        {
            cluster.relayed().member_left(&joined.room, &joined.me.id);
        }
        info!(room = %joined.room.name, participant = %joined.me.id, reason, "left");
        self.send(ServerMessage::Left {
            reason: reason.to_string(),
        });
    }
}

/// Waits (at most [`RELAYED_TRACKS_WITHIN`]) until an edge room has the tracks a WHEP viewer
/// would receive (in a room just opened here they arrive over the relay link a moment later;
/// a WHEP answer binds its tracks at once): a track of `follow` (without one: a video track),
/// and then no new track for a moment (the host announces a publisher's tracks together).
async fn relayed_tracks_arrived(room: &Room, follow: Option<&str>) {
    use std::time::Duration;
    const RELAYED_TRACKS_WITHIN: Duration = Duration::from_secs(3);
    const SETTLED: Duration = Duration::from_millis(100);
    const POLL: Duration = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + RELAYED_TRACKS_WITHIN;
    let mut seen = 0;
    let mut settled_at = None;
    while tokio::time::Instant::now() < deadline {
        let tracks = room.tracks().await;
        let wanted = tracks.iter().any(|t| match follow {
            Some(f) => f == t.info.participant,
            None => t.info.kind == "video",
        });
        if wanted {
            let now = tokio::time::Instant::now();
            if tracks.len() != seen {
                seen = tracks.len();
                settled_at = Some(now + SETTLED);
            }
            if settled_at.is_some_and(|at| now >= at) {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A fresh participant id: `PA_` and 12 base-62 characters.
fn new_participant_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let suffix: String = (0..12)
        .filter_map(|_| ALPHABET.get(rng.random_range(0..ALPHABET.len())))
        .map(|b| char::from(*b))
        .collect();
    format!("PA_{suffix}")
}

/// Whether an SDP has audio or video sections.
fn has_media_sections(sdp: &str) -> bool {
    sdp.lines()
        .any(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
}

/// A media-core error as a refusal.
fn sfu_refusal(e: &SfuError) -> Refusal {
    match e {
        SfuError::BadSdp(_) => Refusal::new(ErrorCode::BadSdp, e.to_string()),
        SfuError::UnknownTrack(_) => Refusal::new(ErrorCode::UnknownTrack, e.to_string()),
        SfuError::UnknownPeer(_) | SfuError::WrongPeerKind(..) => {
            Refusal::new(ErrorCode::BadSdp, e.to_string())
        }
        _ => internal("do that", e),
    }
}

/// A media-core error as a client message.
fn sfu_error(e: &SfuError) -> ServerMessage {
    sfu_refusal(e).into()
}

fn not_joined() -> Refusal {
    Refusal::new(ErrorCode::NotJoined, "join first")
}

pub(crate) fn internal(what: &str, e: &SfuError) -> Refusal {
    warn!(error = %e, "cannot {what}");
    Refusal::new(
        ErrorCode::Internal,
        format!("the server could not {what}; try again"),
    )
}
