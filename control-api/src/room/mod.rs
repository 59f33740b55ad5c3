//! Rooms: the registry of this server's rooms by name, and the handle through which sessions
//! and the room service talk to one room.
//!
//! Each room is owned by one task (`task.rs`), which alone holds its members, published
//! tracks, mutes and speakers, and alone sends its broadcasts, webhooks and the media-core
//! commands that follow from them (a joiner's subscriber peer, subscriptions to a new track,
//! removing a leaver's peers, an administrator's mute), in the order it decides them. A
//! [`Room`] is a handle: its methods send the task a command and wait for the answer.
//!
//! Rooms are created explicitly (room service, with settings) or, if the server allows it, by
//! the first join; a room created by a join ends when its last member leaves, an explicit one
//! after staying empty for its timeout, or when deleted.

mod state;
mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sfu::{EventSink, PeerId, PeerSpec, RoomId, Sfu, SfuError, TrackId};
use tokio::sync::{mpsc, oneshot};

pub use state::Kick;
use task::{Command, RoomTask};

use crate::outbox::Outbox;
use crate::protocol::{ErrorCode, ParticipantInfo, Refusal, TrackInfo};
use crate::turn::IceServer;
use crate::webhook::{EventKind, Webhooks};

/// What a participant removed by the room service is told (and, in cluster mode, how the node
/// serving it knows to revoke its token there too).
pub const REMOVED_BY_ROOM_SERVICE: &str = "removed by the room service";

/// Commands a room's task holds before senders wait.
const COMMAND_QUEUE: usize = 256;

/// Room policy.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Participants per room (0: unlimited), for rooms created by a join.
    pub max_participants: usize,
    /// Create a room when someone joins it.
    pub auto_create: bool,
    /// Rooms on this server (0: unlimited).
    pub max_rooms: usize,
    /// Participants on this server, over all rooms (0: unlimited).
    pub max_node_participants: usize,
    /// How long an explicitly created room may stay empty before it is closed.
    pub empty_timeout: Duration,
}

/// How a room was set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSettings {
    /// Participants at most (0: unlimited).
    pub max_participants: usize,
    /// Closed after being empty this long (explicit rooms; rooms created by a join close
    /// when their last participant leaves).
    pub empty_timeout: Duration,
    /// Application data, opaque to the server.
    pub metadata: String,
    /// Created through the room service (rather than by a join).
    pub explicit: bool,
}

/// How a participant is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The signalling WebSocket.
    WebSocket,
    /// A WHIP publisher.
    Whip,
    /// A WHEP viewer.
    Whep,
}

impl Via {
    /// `websocket`, `whip` or `whep`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::WebSocket => "websocket",
            Via::Whip => "whip",
            Via::Whep => "whep",
        }
    }
}

/// Who asks for a mute: a publisher can undo its own mute, not an administrator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutedBy {
    /// The participant publishing the track (its client stops sending).
    Publisher,
    /// The room service (the server stops forwarding the track).
    Admin,
}

/// A track published in a room.
#[derive(Debug, Clone)]
pub struct RoomTrack {
    /// Its id in the media core.
    pub id: TrackId,
    /// What clients are told about it.
    pub info: TrackInfo,
}

/// A participant, as the room service shows it.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    /// Who.
    pub info: ParticipantInfo,
    /// When it joined (seconds since the Unix epoch).
    pub joined_at: u64,
    /// How it is connected.
    pub via: Via,
    /// Its subscriber peer, if any.
    pub subscriber: Option<PeerId>,
    /// Hidden participants are listed for administrators.
    pub hidden: bool,
    /// Connected to another node of the cluster, which serves it (see [`Join::relayed`]).
    pub relayed: bool,
}

/// A room's participants and tracks, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct RoomSnapshot {
    /// Everyone, by arrival.
    pub members: Vec<MemberSummary>,
    /// Published tracks.
    pub tracks: Vec<RoomTrack>,
}

/// A participant asking to join.
pub struct Join {
    /// Who.
    pub info: ParticipantInfo,
    /// Invisible to others.
    pub hidden: bool,
    /// How it is connected.
    pub via: Via,
    /// Connected to another node of the cluster, which serves it: admitted here, at the
    /// room's host, so that the room's membership and limits hold cluster-wide (its messages
    /// go nowhere: that node tells it what happens).
    pub relayed: bool,
    /// Its messages (the room sends `joined` there first).
    pub outbox: Outbox,
    /// How to disconnect it.
    pub kick: Kick,
    /// TURN credentials for its `joined` message.
    pub ice_servers: Vec<IceServer>,
    /// Its resume token, for its `joined` message.
    pub resume_token: Option<String>,
    /// The cluster's other nodes, for its `joined` message.
    pub alternates: Vec<String>,
    /// The access token it joined with: its [`crate::revoked::token_id`] and expiry (revoked
    /// if the room service removes it).
    pub token: (String, u64),
    /// Give it a subscriber peer that receives every track in the room (the media core's
    /// identity of the participant, and where the peer's events go).
    pub subscribe: Option<(PeerSpec, EventSink)>,
}

/// Why a room did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// The room is full.
    #[error("room {room:?} is full ({max} participants); try later")]
    Full {
        /// Its name.
        room: String,
        /// Its limit.
        max: usize,
    },
    /// The room was ending (deleted, or its last member left); a new join opens it again.
    #[error("the room was closing; join again")]
    Closing,
    /// Nobody of that id or identity is in the room.
    #[error("no participant {0:?} in this room")]
    NoSuchParticipant(String),
    /// The participant publishes no such track.
    #[error("{participant:?} publishes no track {track:?}")]
    NoSuchTrack {
        /// Who was asked about.
        participant: String,
        /// The track id given.
        track: String,
    },
    /// The room has no such track.
    #[error("the room has no track {0:?}")]
    UnknownTrack(String),
    /// A publisher tried to unmute what an administrator muted.
    #[error("the room's administrator muted this track; only they can unmute it")]
    MutedByAdmin,
    /// The participant receives nothing.
    #[error("this participant has no subscribe connection")]
    NotSubscribing,
    /// The media core refused.
    #[error("{0}")]
    Media(#[from] SfuError),
}

impl From<RoomError> for Refusal {
    fn from(e: RoomError) -> Self {
        let code = match &e {
            RoomError::Full { .. } => ErrorCode::RoomFull,
            RoomError::Closing => ErrorCode::Internal,
            RoomError::NoSuchParticipant(_) | RoomError::NotSubscribing => ErrorCode::BadMessage,
            RoomError::NoSuchTrack { .. } | RoomError::UnknownTrack(_) => ErrorCode::UnknownTrack,
            RoomError::MutedByAdmin => ErrorCode::PermissionDenied,
            RoomError::Media(SfuError::BadSdp(_)) => ErrorCode::BadSdp,
            RoomError::Media(_) => ErrorCode::Internal,
        };
        Refusal::new(code, e.to_string())
    }
}

/// All rooms of this server.
pub struct Rooms {
    sfu: Sfu,
    limits: RoomLimits,
    webhooks: Webhooks,
    registry: Arc<Registry>,
}

/// The rooms by name (the registry's lock is held only to look up, add or remove one).
#[derive(Default)]
pub(crate) struct Registry {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

impl Registry {
    /// Forgets `room` if the name still refers to it.
    fn remove(&self, room: &Room) {
        let mut rooms = self.rooms.lock();
        if rooms.get(&room.name).is_some_and(|r| r.id == room.id) {
            rooms.remove(&room.name);
        }
    }
}

/// One room, as its users see it: its fixed properties and the way to its task.
pub struct Room {
    /// Its name (from access tokens).
    pub name: String,
    /// Its id in the media core.
    pub id: RoomId,
    /// How it was set up.
    pub settings: RoomSettings,
    /// When it was created (seconds since the Unix epoch).
    pub created_at: u64,
    /// Members now (kept by the task, read by the metrics).
    members: Arc<AtomicUsize>,
    commands: mpsc::Sender<Command>,
    /// Hosted by another node, opened here for its members (cluster mode): its events are
    /// the host's to announce (no webhooks from here). Cleared if this node takes the room
    /// over from a host that was lost.
    edge: std::sync::atomic::AtomicBool,
}

impl Rooms {
    /// No rooms yet.
    pub fn new(sfu: Sfu, limits: RoomLimits, webhooks: Webhooks) -> Self {
        Self {
            sfu,
            limits,
            webhooks,
            registry: Arc::new(Registry::default()),
        }
    }

    /// The room to join, created if the policy allows.
    pub fn open(&self, name: &str) -> Result<Arc<Room>, Refusal> {
        let mut rooms = self.registry.rooms.lock();
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if !self.limits.auto_create {
            return Err(Refusal::new(
                ErrorCode::UnknownRoom,
                format!("room {name:?} does not exist; create it first (room service)"),
            ));
        }
        let settings = RoomSettings {
            max_participants: self.limits.max_participants,
            empty_timeout: Duration::ZERO,
            metadata: String::new(),
            explicit: false,
        };
        self.insert(&mut rooms, name, settings, false)
    }

    /// The room `name` opened here for viewers of the same room hosted by another node (an
    /// edge room: see `cluster::relay_rooms`), or the room already open here.
    pub fn open_edge(&self, name: &str) -> Result<Arc<Room>, Refusal> {
        let mut rooms = self.registry.rooms.lock();
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        let settings = RoomSettings {
            // The host applies the room's limit to every member, wherever it joins.
            max_participants: 0,
            empty_timeout: Duration::ZERO,
            metadata: String::new(),
            explicit: false,
        };
        self.insert(&mut rooms, name, settings, true)
    }

    /// Creates a room through the room service.
    pub fn create(&self, name: &str, settings: RoomSettings) -> Result<Arc<Room>, Refusal> {
        let mut rooms = self.registry.rooms.lock();
        if rooms.contains_key(name) {
            return Err(Refusal::new(
                ErrorCode::RoomExists,
                format!("room {name:?} already exists"),
            ));
        }
        self.insert(&mut rooms, name, settings, false)
    }

    fn insert(
        &self,
        rooms: &mut HashMap<String, Arc<Room>>,
        name: &str,
        settings: RoomSettings,
        edge: bool,
    ) -> Result<Arc<Room>, Refusal> {
        let max = self.limits.max_rooms;
        if max > 0 && rooms.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!("this server already has {max} rooms (its --max-rooms); try later"),
            ));
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let room = Arc::new(Room {
            name: name.to_string(),
            id: self.sfu.create_room(),
            settings,
            created_at: crate::auth::unix_now(),
            members: Arc::new(AtomicUsize::new(0)),
            commands,
            edge: std::sync::atomic::AtomicBool::new(edge),
        });
        rooms.insert(name.to_string(), room.clone());
        tracing::info!(room = name, id = %room.id, explicit = room.settings.explicit, edge, "room created");
        if !edge {
            self.webhooks.emit(EventKind::RoomStarted, name, None, None);
        }
        let task = RoomTask::new(
            room.clone(),
            self.sfu.clone(),
            self.webhooks.clone(),
            Arc::downgrade(&self.registry),
        );
        tokio::spawn(task.run(command_rx));
        Ok(room)
    }

    /// A room by name.
    pub fn get(&self, name: &str) -> Option<Arc<Room>> {
        self.registry.rooms.lock().get(name).cloned()
    }

    /// Every room, by name.
    pub fn list(&self) -> Vec<Arc<Room>> {
        let mut rooms: Vec<Arc<Room>> = self.registry.rooms.lock().values().cloned().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Deletes a room: it takes nobody new, and everyone in it is disconnected. Returns
    /// `false` if there is no such room.
    pub async fn delete(&self, name: &str) -> bool {
        let Some(room) = self.registry.rooms.lock().remove(name) else {
            return false;
        };
        let reason = "the room was deleted".to_string();
        let _ = room.commands.send(Command::Delete { reason }).await;
        tracing::info!(room = name, "room deleted");
        true
    }

    /// Closes every room (the server is going away): each participant is told `reason`.
    pub async fn close_all(&self, reason: &str) {
        let rooms: Vec<Arc<Room>> = self.registry.rooms.lock().values().cloned().collect();
        for room in rooms {
            let reason = reason.to_string();
            let _ = room.commands.send(Command::Delete { reason }).await;
        }
    }

    /// Where room events go.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Number of rooms and participants.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.registry.rooms.lock();
        let participants = rooms
            .values()
            .map(|r| r.members.load(Ordering::Relaxed))
            .sum();
        (rooms.len(), participants)
    }

    /// The room limits.
    pub fn limits(&self) -> RoomLimits {
        self.limits
    }
}

impl Room {
    /// Sends the task a command that answers on `reply`; `Closing` if the room has ended.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RoomError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| RoomError::Closing)?;
        answer.await.map_err(|_| RoomError::Closing)
    }

    /// Sends the task a command that needs no answer (nothing happens if the room has ended).
    async fn tell(&self, command: Command) {
        let _ = self.commands.send(command).await;
    }

    /// Whether the room is hosted by another node (an edge room, see `cluster::relay_rooms`).
    pub fn is_edge(&self) -> bool {
        self.edge.load(Ordering::Acquire)
    }

    /// This node hosts the room from now on (its host was lost and this node holds its claim
    /// now); its members become the room's whole membership.
    pub fn become_host(&self) {
        self.edge.store(false, Ordering::Release);
    }

    /// Members now.
    pub fn member_count(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// Adds a participant: the room sends it `joined` (and the speakers), gives it a
    /// subscriber peer if asked, and tells the others. Returns the subscriber peer.
    pub async fn join(&self, join: Join) -> Result<Option<PeerId>, RoomError> {
        self.ask(|reply| Command::Join {
            join: Box::new(join),
            reply,
        })
        .await?
    }

    /// Removes a participant: its `peers` are removed from the media core (with its subscriber
    /// peer), then the others are told it left and its tracks ended.
    pub async fn leave(&self, participant: &str, peers: Vec<PeerId>) {
        let _ = self
            .ask(|reply| Command::Leave {
                participant: participant.to_string(),
                peers,
                reply,
            })
            .await;
    }

    /// A participant published a track: the others are told and subscribed.
    pub async fn publish_track(&self, track: RoomTrack) {
        self.tell(Command::PublishTrack { track }).await;
    }

    /// Publishes a track relayed from the room's host node, by its participant `publisher`
    /// (this node serves some of the room's viewers: see `cluster::relay_rooms`).
    pub async fn publish_remote_track(&self, track: RoomTrack, publisher: ParticipantInfo) {
        self.tell(Command::PublishRemoteTrack { track, publisher })
            .await;
    }

    /// A member of the room at another node, as the host announced it (an edge room).
    pub async fn add_remote(&self, participant: ParticipantInfo) {
        self.tell(Command::AddRemote { participant }).await;
    }

    /// A member at another node left: it and its relayed tracks leave the members' view.
    pub async fn remove_remote(&self, participant: &str) {
        self.tell(Command::RemoveRemote {
            participant: participant.to_string(),
        })
        .await;
    }

    /// The link to the room's host closed: the members at other nodes leave the members' view
    /// (an edge room).
    pub async fn clear_remote(&self) {
        self.tell(Command::ClearRemote).await;
    }

    /// A track ended.
    pub async fn unpublish_track(&self, track: TrackId) {
        self.tell(Command::UnpublishTrack { track }).await;
    }

    /// Mutes or unmutes a track of `participant` (an id, or for an administrator also an
    /// identity). An administrator's mute stops forwarding; a publisher cannot lift it.
    pub async fn set_muted(
        &self,
        participant: &str,
        track: &str,
        muted: bool,
        by: MutedBy,
    ) -> Result<TrackInfo, RoomError> {
        self.ask(|reply| Command::SetMuted {
            participant: participant.to_string(),
            track: track.to_string(),
            muted,
            by,
            reply,
        })
        .await?
    }

    /// A participant's speaking level (0: stopped).
    pub async fn audio_level(&self, participant: &str, level: f32) {
        self.tell(Command::AudioLevel {
            participant: participant.to_string(),
            level,
        })
        .await;
    }

    /// Gives `participant` a subscriber peer from its own offer (WHEP), receiving the tracks
    /// of `follow` (a participant id) or, without one, of the first participant publishing
    /// video. Returns the peer and the SDP answer.
    pub async fn subscribe_from_offer(
        &self,
        participant: &str,
        spec: PeerSpec,
        offer: &str,
        follow: Option<&str>,
        events: EventSink,
    ) -> Result<(PeerId, String), RoomError> {
        self.ask(|reply| Command::SubscribeFromOffer {
            participant: participant.to_string(),
            spec: Box::new(spec),
            offer: offer.to_string(),
            follow: follow.map(str::to_string),
            events,
            reply,
        })
        .await?
    }

    /// A participant's subscriber peer closed.
    pub async fn subscriber_closed(&self, participant: &str) {
        self.tell(Command::SubscriberClosed {
            participant: participant.to_string(),
        })
        .await;
    }

    /// Subscribes a participant (id or identity) to tracks, or unsubscribes it.
    pub async fn update_subscriptions(
        &self,
        participant: &str,
        tracks: Vec<String>,
        subscribe: bool,
    ) -> Result<(), RoomError> {
        self.ask(|reply| Command::UpdateSubscriptions {
            participant: participant.to_string(),
            tracks,
            subscribe,
            reply,
        })
        .await?
    }

    /// Its participants and tracks now (empty if the room has ended).
    pub async fn snapshot(&self) -> RoomSnapshot {
        self.ask(|reply| Command::Snapshot { reply })
            .await
            .unwrap_or_default()
    }

    /// The tracks published now.
    pub async fn tracks(&self) -> Vec<RoomTrack> {
        self.snapshot().await.tracks
    }

    /// Who publishes `track` (its participant id), if it is published here.
    pub async fn publisher_of(&self, track: TrackId) -> Option<String> {
        self.tracks()
            .await
            .into_iter()
            .find(|t| t.id == track)
            .map(|t| t.info.participant)
    }

    /// Disconnects a participant (by id or identity). Returns the token it joined with (id
    /// and expiry), or `None` if it is not here.
    pub async fn kick(&self, participant: &str, reason: &str) -> Option<(String, u64)> {
        self.ask(|reply| Command::Kick {
            participant: participant.to_string(),
            reason: reason.to_string(),
            reply,
        })
        .await
        .ok()
        .flatten()
    }
}
