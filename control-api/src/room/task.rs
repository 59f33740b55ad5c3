//! The task that owns one room: it applies each command to the room's state (`state.rs`) and
//! does what follows from it, in order: messages to members, webhooks, media-core commands.
//! Nothing else writes the room's state, so a join and a track published at the same moment
//! are seen by everyone in one order, and a joiner's subscriber peer starts with exactly the
//! tracks published before it.

use std::sync::{Arc, Weak};

use sfu::{EventSink, PeerId, PeerSpec, Sfu, TrackId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use super::state::{Member, RoomState};
use super::{Join, MutedBy, Registry, Room, RoomError, RoomSnapshot, RoomTrack};
use crate::protocol::{ParticipantInfo, ServerMessage, TrackInfo};
use crate::webhook::{EventKind, Webhooks};

/// One command for a room's task.
pub(super) enum Command {
    Join {
        join: Box<Join>,
        reply: oneshot::Sender<Result<Option<PeerId>, RoomError>>,
    },
    Leave {
        participant: String,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<()>,
    },
    PublishTrack {
        track: RoomTrack,
    },
    /// A track of a participant of the room's host node, relayed here (an edge room).
    PublishRemoteTrack {
        track: RoomTrack,
        publisher: ParticipantInfo,
    },
    UnpublishTrack {
        track: TrackId,
    },
    /// A member of the room at another node (an edge room, told by the host).
    AddRemote {
        participant: ParticipantInfo,
    },
    /// That member left.
    RemoveRemote {
        participant: String,
    },
    /// Every member at another node left (the link to the host closed).
    ClearRemote,
    SetMuted {
        participant: String,
        track: String,
        muted: bool,
        by: MutedBy,
        reply: oneshot::Sender<Result<TrackInfo, RoomError>>,
    },
    AudioLevel {
        participant: String,
        level: f32,
    },
    SubscribeFromOffer {
        participant: String,
        spec: Box<PeerSpec>,
        offer: String,
        follow: Option<String>,
        events: EventSink,
        reply: oneshot::Sender<Result<(PeerId, String), RoomError>>,
    },
    SubscriberClosed {
        participant: String,
    },
    UpdateSubscriptions {
        participant: String,
        tracks: Vec<String>,
        subscribe: bool,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Snapshot {
        reply: oneshot::Sender<RoomSnapshot>,
    },
    Kick {
        participant: String,
        reason: String,
        reply: oneshot::Sender<Option<(String, u64)>>,
    },
    /// The room service deleted the room (or the server is shutting down): disconnect
    /// everyone, telling them why; take nobody new.
    Delete {
        reason: String,
    },
}

/// The owner of one room.
pub(super) struct RoomTask {
    room: Arc<Room>,
    sfu: Sfu,
    webhooks: Webhooks,
    registry: Weak<Registry>,
    state: RoomState,
    /// Deleted: takes nobody new and ends once empty.
    deleted: bool,
    /// Since when an explicit room has had nobody in it.
    empty_since: Option<Instant>,
}

impl RoomTask {
    pub(super) fn new(
        room: Arc<Room>,
        sfu: Sfu,
        webhooks: Webhooks,
        registry: Weak<Registry>,
    ) -> Self {
        let empty_since = room.settings.explicit.then(Instant::now);
        Self {
            room,
            sfu,
            webhooks,
            registry,
            state: RoomState::default(),
            deleted: false,
            empty_since,
        }
    }

    /// Runs the room until it ends.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let timeout = self
                .empty_since
                .map(|since| since + self.room.settings.empty_timeout);
            let command = tokio::select! {
                command = commands.recv() => command,
                () = sleep_until(timeout) => {
                    info!(room = %self.room.name, "empty timeout");
                    break;
                }
            };
            let Some(command) = command else { break };
            let may_end = matches!(
                command,
                Command::Join { .. } | Command::Leave { .. } | Command::Delete { .. }
            );
            self.handle(command).await;
            self.count_members();
            if may_end && self.state.is_empty() {
                if self.deleted || !self.room.settings.explicit {
                    break;
                }
                self.empty_since.get_or_insert_with(Instant::now);
            }
        }
        self.finish();
    }

    /// The room is gone for good: out of the registry (a new join opens a new room), freed in
    /// the media core, announced once. Commands still queued are dropped; their senders see
    /// [`RoomError::Closing`].
    fn finish(&self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(&self.room);
        }
        self.sfu.close_room(self.room.id);
        if !self.room.is_edge() {
            self.webhooks
                .emit(EventKind::RoomFinished, &self.room.name, None, None);
        }
        info!(room = %self.room.name, "room closed");
    }

    /// Publishes the count of members connected to this node (read by the node's participant
    /// cap and stats; members admitted for another node count there).
    fn count_members(&self) {
        self.room
            .members
            .store(self.state.local_len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends a room event's webhook, unless the room is hosted by another node, which sends
    /// it (once per event, cluster-wide).
    fn emit(
        &self,
        kind: EventKind,
        participant: Option<&ParticipantInfo>,
        track: Option<&TrackInfo>,
    ) {
        if !self.room.is_edge() {
            self.webhooks
                .emit(kind, &self.room.name, participant, track);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join { join, reply } => {
                let joined = self.join(*join).await;
                // Counted before the participant hears it joined: a join that follows at
                // once must see the node's participant cap with it.
                self.count_members();
                let _ = reply.send(joined);
            }
            Command::Leave {
                participant,
                peers,
                reply,
            } => {
                self.leave(&participant, peers).await;
                let _ = reply.send(());
            }
            Command::PublishTrack { track } => self.publish(track).await,
            Command::PublishRemoteTrack { track, publisher } => {
                self.publish_remote(track, publisher).await;
            }
            Command::AddRemote { participant } => {
                if self.state.member(&participant.id).is_none() {
                    self.add_remote(participant);
                }
            }
            Command::RemoveRemote { participant } => self.remove_remote(&participant),
            Command::ClearRemote => {
                for participant in self.state.remote_ids() {
                    self.remove_remote(&participant);
                }
            }
            Command::UnpublishTrack { track } => self.unpublish(track),
            Command::SetMuted {
                participant,
                track,
                muted,
                by,
                reply,
            } => {
                let _ = reply.send(self.set_muted(&participant, &track, muted, by).await);
            }
            Command::AudioLevel { participant, level } => {
                if let Some(speakers) = self.state.update_speaker(&participant, level) {
                    self.broadcast(&ServerMessage::ActiveSpeakers { speakers }, None);
                }
            }
            Command::SubscribeFromOffer {
                participant,
                spec,
                offer,
                follow,
                events,
                reply,
            } => {
                let result = self
                    .subscribe_from_offer(&participant, *spec, &offer, follow, events)
                    .await;
                let _ = reply.send(result);
            }
            Command::SubscriberClosed { participant } => {
                if let Some(m) = self.state.member_mut(&participant) {
                    m.subscriber = None;
                }
            }
            Command::UpdateSubscriptions {
                participant,
                tracks,
                subscribe,
                reply,
            } => {
                let result = self
                    .update_subscriptions(&participant, &tracks, subscribe)
                    .await;
                let _ = reply.send(result);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(RoomSnapshot {
                    members: self.state.summaries(),
                    tracks: self.state.tracks(),
                });
            }
            Command::Kick {
                participant,
                reason,
                reply,
            } => {
                let kicked = self
                    .state
                    .find(&participant)
                    .filter(|m| m.kick.send(reason).is_ok())
                    .map(|m| m.token.clone());
                let _ = reply.send(kicked);
            }
            Command::Delete { reason } => {
                self.deleted = true;
                for member in self.state.members() {
                    let _ = member.kick.send(reason.clone());
                }
                // Members served by other nodes leave at once: the room is out of the
                // registry, where their nodes' word that they left would look for it.
                let relayed: Vec<String> = self
                    .state
                    .members()
                    .filter(|m| m.relayed)
                    .map(|m| m.info.id.clone())
                    .collect();
                for participant in relayed {
                    self.leave(&participant, Vec::new()).await;
                }
            }
        }
    }

    /// Sends a message to every member except `except`.
    fn broadcast(&self, message: &ServerMessage, except: Option<&str>) {
        for m in self.state.members() {
            if Some(m.info.id.as_str()) != except {
                m.outbox.send(message.clone());
            }
        }
    }

    async fn join(&mut self, join: Join) -> Result<Option<PeerId>, RoomError> {
        if self.deleted {
            return Err(RoomError::Closing);
        }
        // One interactive session and one WHIP publisher per identity: the newest wins (a
        // client that lost its connection and joined again, or an encoder that restarted,
        // replaces the session it left behind, which therefore does not count against the
        // room's limit). WHEP viewers may share an identity (one token embedded in a page for
        // a live stream's audience): the room's and the node's limits bound them.
        let replaced: Vec<&Member> = self
            .state
            .members()
            .filter(|old| {
                join.via != super::Via::Whep
                    && old.via == join.via
                    && old.info.identity == join.info.identity
            })
            .collect();
        let max = self.room.settings.max_participants;
        if max > 0 && self.state.len() - replaced.len() >= max {
            return Err(RoomError::Full {
                room: self.room.name.clone(),
                max,
            });
        }
        let me = join.info.id.clone();
        for old in replaced {
            info!(room = %self.room.name, participant = %old.info.id, "replaced by a new session of the same identity");
            let _ = old
                .kick
                .send("the same identity joined again from another connection".into());
        }
        let subscriber = match join.subscribe {
            Some((spec, events)) => {
                let tracks = self.state.tracks_for(&me, None);
                Some(self.sfu.add_subscriber(spec, tracks, events).await?)
            }
            None => None,
        };
        join.outbox.send(ServerMessage::Joined {
            room: self.room.name.clone(),
            participant: join.info.clone(),
            participants: self.state.visible_others(&me),
            tracks: self.state.tracks().into_iter().map(|t| t.info).collect(),
            ice_servers: join.ice_servers,
            resume_token: join.resume_token,
            alternates: join.alternates,
        });
        let speakers = self.state.speakers();
        if !speakers.is_empty() {
            join.outbox.send(ServerMessage::ActiveSpeakers { speakers });
        }
        if !join.hidden {
            self.broadcast(
                &ServerMessage::ParticipantJoined {
                    participant: join.info.clone(),
                },
                None,
            );
        }
        self.emit(EventKind::ParticipantJoined, Some(&join.info), None);
        info!(room = %self.room.name, participant = %me, identity = %join.info.identity, "joined");
        self.state.add(Member {
            info: join.info,
            hidden: join.hidden,
            outbox: join.outbox,
            kick: join.kick,
            joined_at: crate::auth::unix_now(),
            seq: 0,
            via: join.via,
            relayed: join.relayed,
            subscriber,
            follows: None,
            token: join.token,
        });
        self.empty_since = None;
        Ok(subscriber)
    }

    async fn leave(&mut self, participant: &str, peers: Vec<PeerId>) {
        let Some((member, tracks)) = self.state.remove(participant) else {
            for peer in peers {
                let _ = self.sfu.remove_peer(peer).await;
            }
            return;
        };
        // The forwarding graph holds nothing of the participant before anyone is told.
        for peer in peers.into_iter().chain(member.subscriber) {
            let _ = self.sfu.remove_peer(peer).await;
        }
        self.announce_departure(&member.info, member.hidden, &tracks);
    }

    /// Tells the room that `who` left with its `tracks` (and, at the host, the webhooks).
    fn announce_departure(&mut self, who: &ParticipantInfo, hidden: bool, tracks: &[RoomTrack]) {
        for track in tracks {
            self.emit(EventKind::TrackUnpublished, Some(who), Some(&track.info));
            self.broadcast(
                &ServerMessage::TrackUnpublished {
                    track: track.info.id.clone(),
                    participant: who.id.clone(),
                },
                None,
            );
        }
        if let Some(speakers) = self.state.speakers_if_changed() {
            self.broadcast(&ServerMessage::ActiveSpeakers { speakers }, None);
        }
        if !hidden {
            self.broadcast(
                &ServerMessage::ParticipantLeft {
                    participant: who.id.clone(),
                },
                None,
            );
        }
        self.emit(EventKind::ParticipantLeft, Some(who), None);
    }

    async fn publish(&mut self, track: RoomTrack) {
        let Some(publisher) = self.state.member(&track.info.participant) else {
            // Published by someone who has left meanwhile: its peer is gone with it.
            return;
        };
        let publisher = publisher.info.clone();
        let id = track.id;
        let info = track.info.clone();
        let receivers = self.state.publish(track);
        self.emit(EventKind::TrackPublished, Some(&publisher), Some(&info));
        self.broadcast(&ServerMessage::TrackPublished { track: info }, None);
        // Every receiver at once: one command per media worker.
        for (subscriber, e) in self.sfu.subscribe_all(&receivers, id).await {
            debug!(%subscriber, error = %e, "auto-subscribe failed");
        }
    }

    /// A relayed track of the host's participant `publisher`: its members see the
    /// participant appear (once) and the track, and receive it. No webhook: the host sends
    /// them, once per event.
    async fn publish_remote(&mut self, track: RoomTrack, publisher: ParticipantInfo) {
        if publisher.id != track.info.participant {
            return;
        }
        if self.state.member(&publisher.id).is_some() {
            // At the host: a member admitted for another node publishes there.
            self.publish(track).await;
            return;
        }
        if !self.room.is_edge() {
            // At the host, a relayed track is a member's (one that left meanwhile: its node
            // ends the track too).
            return;
        }
        self.add_remote(publisher);
        let id = track.id;
        let info = track.info.clone();
        let receivers = self.state.publish(track);
        self.broadcast(&ServerMessage::TrackPublished { track: info }, None);
        for (subscriber, e) in self.sfu.subscribe_all(&receivers, id).await {
            debug!(%subscriber, error = %e, "auto-subscribe failed");
        }
    }

    /// A member at another node, as the host announced it: the members see it join (once).
    fn add_remote(&mut self, participant: ParticipantInfo) {
        if self.state.add_remote(participant.clone()) {
            self.broadcast(&ServerMessage::ParticipantJoined { participant }, None);
        }
    }

    /// A member at another node left: its relayed tracks end here and the members are told
    /// (an edge room: no webhooks).
    fn remove_remote(&mut self, participant: &str) {
        if let Some((gone, tracks)) = self.state.remove_remote(participant) {
            self.announce_departure(&gone, false, &tracks);
        }
    }

    fn unpublish(&mut self, track: TrackId) {
        let Some(removed) = self.state.unpublish(track) else {
            return;
        };
        if self.state.is_remote(&removed.info.participant) {
            self.broadcast(
                &ServerMessage::TrackUnpublished {
                    track: removed.info.id,
                    participant: removed.info.participant.clone(),
                },
                None,
            );
            return;
        }
        let publisher = self
            .state
            .member(&removed.info.participant)
            .map(|m| m.info.clone());
        self.emit(
            EventKind::TrackUnpublished,
            publisher.as_ref(),
            Some(&removed.info),
        );
        self.broadcast(
            &ServerMessage::TrackUnpublished {
                track: removed.info.id,
                participant: removed.info.participant,
            },
            None,
        );
    }

    async fn set_muted(
        &mut self,
        participant: &str,
        track: &str,
        muted: bool,
        by: MutedBy,
    ) -> Result<TrackInfo, RoomError> {
        let participant = match by {
            MutedBy::Publisher => participant.to_string(),
            MutedBy::Admin => self
                .state
                .find(participant)
                .map(|m| m.info.id.clone())
                .ok_or_else(|| RoomError::NoSuchParticipant(participant.to_string()))?,
        };
        let id = self.state.published_by(&participant, track)?;
        self.state.may_set_muted(track, muted, by)?;
        if by == MutedBy::Admin {
            // Applied where packets are forwarded before anyone is told.
            self.sfu.set_track_muted(id, muted).await?;
        }
        let change = self.state.set_muted(&participant, track, muted, by)?;
        if change.announce {
            self.broadcast(
                &ServerMessage::TrackMuted {
                    track: track.to_string(),
                    participant,
                    muted: change.info.muted,
                },
                None,
            );
        }
        Ok(change.info)
    }

    async fn subscribe_from_offer(
        &mut self,
        participant: &str,
        spec: PeerSpec,
        offer: &str,
        follow: Option<String>,
        events: EventSink,
    ) -> Result<(PeerId, String), RoomError> {
        if self.state.member(participant).is_none() {
            return Err(RoomError::NoSuchParticipant(participant.to_string()));
        }
        let tracks = self.state.tracks();
        let follow = follow.or_else(|| {
            tracks
                .iter()
                .find(|t| t.info.kind == "video")
                .map(|t| t.info.participant.clone())
        });
        let chosen = self.state.tracks_for(participant, follow.as_deref());
        let (peer, answer) = self
            .sfu
            .add_offering_subscriber(spec, offer, chosen, events)
            .await?;
        if let Some(m) = self.state.member_mut(participant) {
            m.subscriber = Some(peer);
            m.follows = follow;
        }
        Ok((peer, answer))
    }

    async fn update_subscriptions(
        &mut self,
        participant: &str,
        tracks: &[String],
        subscribe: bool,
    ) -> Result<(), RoomError> {
        let member = self
            .state
            .find(participant)
            .ok_or_else(|| RoomError::NoSuchParticipant(participant.to_string()))?;
        let peer = member.subscriber.ok_or(RoomError::NotSubscribing)?;
        let ids = tracks
            .iter()
            .map(|t| {
                self.state
                    .track(t)
                    .map(|t| t.id)
                    .ok_or_else(|| RoomError::UnknownTrack(t.clone()))
            })
            .collect::<Result<Vec<TrackId>, RoomError>>()?;
        for id in ids {
            if subscribe {
                self.sfu.subscribe(peer, id).await?;
            } else {
                self.sfu.unsubscribe(peer, id).await?;
            }
        }
        Ok(())
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
