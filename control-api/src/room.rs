//! Rooms and their participants, as the control plane sees them: who is in, which tracks they
//! publish, the outbox of each participant's WebSocket for broadcasts, and the way to
//! disconnect them. Rooms are created explicitly (room service, with settings) or, if the
//! server allows it, by the first join.
//!
//! Locks here are short and never held across an `.await`: methods copy out what the caller
//! needs to await on (peer ids to subscribe) and return.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sfu::{PeerId, RoomId, Sfu, TrackId};
use tokio::sync::mpsc;

use crate::protocol::{ErrorCode, ParticipantInfo, Refusal, ServerMessage, Speaker, TrackInfo};
use crate::webhook::{EventKind, Webhooks};

/// Where a participant's messages go.
pub type Outbox = mpsc::UnboundedSender<ServerMessage>;

/// Where a participant's disconnection requests go (the reason is told to the client).
pub type Kick = mpsc::UnboundedSender<String>;

/// Room policy.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Participants per room (0: unlimited), for rooms created by a join.
    pub max_participants: usize,
    /// Create a room when someone joins it.
    pub auto_create: bool,
    /// Rooms on this server (0: unlimited).
    pub max_rooms: usize,
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

/// All rooms of this server.
pub struct Rooms {
    sfu: Sfu,
    limits: RoomLimits,
    webhooks: Webhooks,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// One room.
pub struct Room {
    /// Its name (from access tokens).
    pub name: String,
    /// Its id in the media core.
    pub id: RoomId,
    /// How it was set up.
    pub settings: RoomSettings,
    /// When it was created (seconds since the Unix epoch).
    pub created_at: u64,
    state: Mutex<RoomState>,
}

#[derive(Default)]
struct RoomState {
    members: HashMap<String, Member>,
    tracks: Vec<RoomTrack>,
    /// Current loudness of each speaking participant.
    levels: HashMap<String, f32>,
    /// The speakers last announced, in order.
    announced: Vec<String>,
    /// Set when the last participant left; a closed room takes nobody new.
    closed: bool,
    /// Since when the room has had nobody in it.
    empty_since: Option<Instant>,
    /// Join counter (orders participants by arrival).
    joins: u64,
    /// The room has been closed in the media core and announced as finished.
    finished: bool,
}

struct Member {
    info: ParticipantInfo,
    hidden: bool,
    outbox: Outbox,
    kick: Kick,
    joined_at: u64,
    seq: u64,
    via: &'static str,
    subscriber: Option<PeerId>,
    /// Receives only this participant's tracks (a WHEP viewer of one publisher).
    follows: Option<String>,
}

/// A track published in a room.
#[derive(Debug, Clone)]
pub struct RoomTrack {
    /// Its id in the media core.
    pub id: TrackId,
    /// What clients are told about it.
    pub info: TrackInfo,
}

/// A new participant.
pub struct NewMember {
    /// Who.
    pub info: ParticipantInfo,
    /// Invisible to others.
    pub hidden: bool,
    /// Its WebSocket outbox.
    pub outbox: Outbox,
    /// Its subscriber peer.
    pub subscriber: Option<PeerId>,
    /// How to disconnect it.
    pub kick: Kick,
    /// `websocket`, `whip` or `whep`.
    pub via: &'static str,
}

/// A participant, as the room service shows it.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    /// Who.
    pub info: ParticipantInfo,
    /// When it joined (seconds since the Unix epoch).
    pub joined_at: u64,
    /// `websocket`, `whip` or `whep`.
    pub via: &'static str,
    /// Its subscriber peer, if any.
    pub subscriber: Option<PeerId>,
    /// Hidden participants are listed for administrators.
    pub hidden: bool,
}

/// What someone who just joined needs to know.
pub struct JoinSnapshot {
    /// The visible others.
    pub others: Vec<ParticipantInfo>,
    /// Published tracks.
    pub tracks: Vec<RoomTrack>,
}

/// A participant who left and the tracks that went with them.
pub struct Departure {
    /// Whether they were hidden (nobody is told they left).
    pub hidden: bool,
    /// Tracks they had published.
    pub tracks: Vec<RoomTrack>,
    /// Whether the room is now empty.
    pub room_empty: bool,
    /// The new `active_speakers` list, if the participant was among them.
    pub speakers: Option<Vec<Speaker>>,
}

impl RoomState {
    /// The speakers, loudest first, if the list differs from the one last announced.
    fn speakers_if_changed(&mut self) -> Option<Vec<Speaker>> {
        let mut speakers: Vec<Speaker> = self
            .levels
            .iter()
            .filter(|(id, _)| self.members.get(*id).is_some_and(|m| !m.hidden))
            .map(|(id, level)| Speaker {
                participant: id.clone(),
                level: *level,
            })
            .collect();
        speakers.sort_by(|a, b| {
            b.level
                .total_cmp(&a.level)
                .then(a.participant.cmp(&b.participant))
        });
        let order: Vec<String> = speakers.iter().map(|s| s.participant.clone()).collect();
        if order == self.announced {
            return None;
        }
        self.announced = order;
        Some(speakers)
    }
}

impl Rooms {
    /// No rooms yet.
    pub fn new(sfu: Sfu, limits: RoomLimits, webhooks: Webhooks) -> Self {
        Self {
            sfu,
            limits,
            webhooks,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// The room to join, created if the policy allows.
    pub fn open(&self, name: &str) -> Result<Arc<Room>, Refusal> {
        let mut rooms = self.rooms.lock();
        if let Some(room) = rooms.get(name)
            && !room.state.lock().closed
        {
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
        self.insert(&mut rooms, name, settings)
    }

    /// Creates a room through the room service.
    pub fn create(&self, name: &str, settings: RoomSettings) -> Result<Arc<Room>, Refusal> {
        let mut rooms = self.rooms.lock();
        if rooms.get(name).is_some_and(|r| !r.state.lock().closed) {
            return Err(Refusal::new(
                ErrorCode::RoomExists,
                format!("room {name:?} already exists"),
            ));
        }
        let room = self.insert(&mut rooms, name, settings)?;
        room.state.lock().empty_since = Some(Instant::now());
        Ok(room)
    }

    fn insert(
        &self,
        rooms: &mut HashMap<String, Arc<Room>>,
        name: &str,
        settings: RoomSettings,
    ) -> Result<Arc<Room>, Refusal> {
        let max = self.limits.max_rooms;
        if max > 0 && rooms.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManyRooms,
                format!("this server already has {max} rooms (its --max-rooms); try later"),
            ));
        }
        let room = Arc::new(Room {
            name: name.to_string(),
            id: self.sfu.create_room(),
            settings,
            created_at: crate::auth::unix_now(),
            state: Mutex::new(RoomState::default()),
        });
        rooms.insert(name.to_string(), room.clone());
        tracing::info!(room = name, id = %room.id, explicit = room.settings.explicit, "room created");
        self.webhooks.emit(EventKind::RoomStarted, name, None, None);
        Ok(room)
    }

    /// A room by name.
    pub fn get(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms.lock().get(name).cloned()
    }

    /// Every room, by name.
    pub fn list(&self) -> Vec<Arc<Room>> {
        let mut rooms: Vec<Arc<Room>> = self.rooms.lock().values().cloned().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Deletes a room: it takes nobody new, and everyone in it is disconnected. Returns
    /// `false` if there is no such room.
    pub fn delete(&self, name: &str) -> bool {
        let Some(room) = self.rooms.lock().remove(name) else {
            return false;
        };
        let kicks: Vec<Kick> = {
            let mut state = room.state.lock();
            state.closed = true;
            state.members.values().map(|m| m.kick.clone()).collect()
        };
        for kick in kicks {
            let _ = kick.send("the room was deleted".to_string());
        }
        if room.state.lock().members.is_empty() {
            self.finish(&room);
        }
        tracing::info!(room = name, "room deleted");
        true
    }

    /// Closes explicit rooms that have been empty for longer than their timeout.
    pub fn reap(&self, now: Instant) {
        let expired: Vec<String> = self
            .rooms
            .lock()
            .values()
            .filter(|r| {
                let state = r.state.lock();
                r.settings.explicit
                    && state.members.is_empty()
                    && state.empty_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= r.settings.empty_timeout
                    })
            })
            .map(|r| r.name.clone())
            .collect();
        for name in expired {
            tracing::info!(room = %name, "empty timeout");
            self.delete(&name);
        }
    }

    /// Removes a room once it is empty.
    pub fn close_if_empty(&self, room: &Room) {
        let mut rooms = self.rooms.lock();
        let mut state = room.state.lock();
        if state.members.is_empty() && room.settings.explicit && !state.closed {
            // Kept for its empty timeout (see `reap`).
            state.empty_since = Some(Instant::now());
            return;
        }
        if state.members.is_empty() {
            state.closed = true;
            if rooms.get(&room.name).is_some_and(|r| r.id == room.id) {
                rooms.remove(&room.name);
            }
            drop(state);
            drop(rooms);
            self.finish(room);
        }
    }

    /// The room is gone for good: free it in the media core, tell the webhooks (once).
    fn finish(&self, room: &Room) {
        let first = !std::mem::replace(&mut room.state.lock().finished, true);
        if first {
            self.sfu.close_room(room.id);
            self.webhooks
                .emit(EventKind::RoomFinished, &room.name, None, None);
            tracing::info!(room = %room.name, "room closed");
        }
    }

    /// Where room events go.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Number of rooms and participants.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.rooms.lock();
        let participants = rooms.values().map(|r| r.state.lock().members.len()).sum();
        (rooms.len(), participants)
    }

    /// The room limits.
    pub fn limits(&self) -> RoomLimits {
        self.limits
    }
}

impl Room {
    /// The tracks published now.
    pub fn tracks(&self) -> Vec<RoomTrack> {
        self.state.lock().tracks.clone()
    }

    /// Adds a participant; tells the caller who else is here.
    pub fn add_member(&self, member: NewMember) -> Result<JoinSnapshot, Refusal> {
        let max = self.settings.max_participants;
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the room was closing; join again",
            ));
        }
        if max > 0 && state.members.len() >= max {
            return Err(Refusal::new(
                ErrorCode::RoomFull,
                format!(
                    "room {:?} is full ({max} participants); try later",
                    self.name
                ),
            ));
        }
        let others = state
            .members
            .values()
            .filter(|m| !m.hidden)
            .map(|m| m.info.clone())
            .collect();
        state.joins += 1;
        let seq = state.joins;
        state.members.insert(
            member.info.id.clone(),
            Member {
                info: member.info,
                hidden: member.hidden,
                outbox: member.outbox,
                kick: member.kick,
                joined_at: crate::auth::unix_now(),
                seq,
                via: member.via,
                subscriber: member.subscriber,
                follows: None,
            },
        );
        Ok(JoinSnapshot {
            others,
            tracks: state.tracks.clone(),
        })
    }

    /// Removes a participant and the tracks it published.
    pub fn remove_member(&self, participant: &str) -> Option<Departure> {
        let mut state = self.state.lock();
        let member = state.members.remove(participant)?;
        if state.members.is_empty() {
            state.empty_since = Some(Instant::now());
        }
        state.levels.remove(participant);
        let (gone, kept) = std::mem::take(&mut state.tracks)
            .into_iter()
            .partition(|t| t.info.participant == participant);
        state.tracks = kept;
        let speakers = state.speakers_if_changed();
        Some(Departure {
            hidden: member.hidden,
            tracks: gone,
            room_empty: state.members.is_empty(),
            speakers,
        })
    }

    /// Sends a message to every participant except `except`.
    pub fn broadcast(&self, message: &ServerMessage, except: Option<&str>) {
        let state = self.state.lock();
        for (id, m) in &state.members {
            if Some(id.as_str()) != except {
                let _ = m.outbox.send(message.clone());
            }
        }
    }

    /// Records a published track; returns the subscriber peers of everyone else.
    pub fn add_track(&self, track: RoomTrack) -> Vec<PeerId> {
        let mut state = self.state.lock();
        let publisher = track.info.participant.clone();
        state.tracks.push(track);
        state
            .members
            .iter()
            .filter(|(id, m)| {
                **id != publisher && m.follows.as_ref().is_none_or(|f| *f == publisher)
            })
            .filter_map(|(_, m)| m.subscriber)
            .collect()
    }

    /// Forgets a track; returns it if it was there.
    pub fn remove_track(&self, id: TrackId) -> Option<RoomTrack> {
        let mut state = self.state.lock();
        let pos = state.tracks.iter().position(|t| t.id == id)?;
        Some(state.tracks.remove(pos))
    }

    /// Sets a track's muted flag if `participant` publishes it.
    pub fn set_muted(&self, participant: &str, track: &str, muted: bool) -> bool {
        let mut state = self.state.lock();
        match state
            .tracks
            .iter_mut()
            .find(|t| t.info.id == track && t.info.participant == participant)
        {
            Some(t) => {
                t.info.muted = muted;
                true
            }
            None => false,
        }
    }

    /// Records a participant's speaking level (0: stopped). Returns the new `active_speakers`
    /// list if who speaks, or their order, changed.
    pub fn update_speaker(&self, participant: &str, level: f32) -> Option<Vec<Speaker>> {
        let mut state = self.state.lock();
        if level > 0.0 && state.members.contains_key(participant) {
            state.levels.insert(participant.to_string(), level);
        } else {
            state.levels.remove(participant);
        }
        state.speakers_if_changed()
    }

    /// Every participant (hidden ones included), by join time.
    pub fn members(&self) -> Vec<MemberSummary> {
        let state = self.state.lock();
        let mut members: Vec<&Member> = state.members.values().collect();
        members.sort_by_key(|m| m.seq);
        members
            .into_iter()
            .map(|m| MemberSummary {
                info: m.info.clone(),
                joined_at: m.joined_at,
                via: m.via,
                subscriber: m.subscriber,
                hidden: m.hidden,
            })
            .collect()
    }

    /// Disconnects a participant (by id or identity). Returns `false` if it is not here.
    pub fn kick(&self, participant: &str, reason: &str) -> bool {
        let state = self.state.lock();
        let member = state
            .members
            .values()
            .find(|m| m.info.id == participant || m.info.identity == participant);
        member.is_some_and(|m| m.kick.send(reason.to_string()).is_ok())
    }

    /// Restricts which publishers' new tracks a participant receives.
    pub fn set_follow(&self, participant: &str, follows: Option<String>) {
        if let Some(m) = self.state.lock().members.get_mut(participant) {
            m.follows = follows;
        }
    }

    /// Who is speaking now (what was last announced), for a participant who just joined.
    pub fn speakers(&self) -> Vec<Speaker> {
        let state = self.state.lock();
        state
            .announced
            .iter()
            .filter_map(|id| {
                let level = *state.levels.get(id)?;
                Some(Speaker {
                    participant: id.clone(),
                    level,
                })
            })
            .collect()
    }

    /// Updates a participant's subscriber peer (e.g. after it closed).
    pub fn set_subscriber(&self, participant: &str, subscriber: Option<PeerId>) {
        if let Some(m) = self.state.lock().members.get_mut(participant) {
            m.subscriber = subscriber;
        }
    }
}
