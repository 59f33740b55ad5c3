//! A room's bookkeeping, without I/O: its members, the tracks published in it with their two
//! mute flags, and who is speaking. Its only user is the room's task (`task.rs`), which does
//! the I/O each change calls for; the rules (who receives which track, who may unmute, the
//! speakers list) live here so they are tested without a server.

use std::collections::HashMap;

use sfu::{PeerId, TrackId};

use super::{MemberSummary, MutedBy, RoomError, RoomTrack, Via};
use crate::outbox::Outbox;
use crate::protocol::{ParticipantInfo, Speaker, TrackInfo};

/// Members at other nodes an edge room shows, at most.
pub(super) const MAX_REMOTE: usize = 10_000;

/// Where a member's disconnection requests go (the reason is told to the client).
pub type Kick = tokio::sync::mpsc::UnboundedSender<String>;

/// One participant in the room.
pub(super) struct Member {
    pub(super) info: ParticipantInfo,
    pub(super) hidden: bool,
    pub(super) outbox: Outbox,
    pub(super) kick: Kick,
    pub(super) joined_at: u64,
    pub(super) seq: u64,
    pub(super) via: Via,
    /// Served by another node of the cluster (see `Join::relayed`).
    pub(super) relayed: bool,
    pub(super) subscriber: Option<PeerId>,
    /// Receives only this participant's tracks (a WHEP viewer of one publisher).
    pub(super) follows: Option<String>,
    /// The access token it joined with: id and expiry.
    pub(super) token: (String, u64),
}

impl Member {
    /// Whether this member receives the tracks `publisher` publishes.
    fn receives_from(&self, publisher: &str) -> bool {
        self.info.id != publisher && self.follows.as_deref().is_none_or(|f| f == publisher)
    }
}

/// A published track and who muted it.
struct Published {
    track: RoomTrack,
    by_publisher: bool,
    by_admin: bool,
}

impl Published {
    fn announce_muted(&mut self) {
        self.track.info.muted = self.by_publisher || self.by_admin;
    }
}

/// The state of one room.
#[derive(Default)]
pub(super) struct RoomState {
    members: HashMap<String, Member>,
    tracks: Vec<Published>,
    /// Current loudness of each speaking participant.
    levels: HashMap<String, f32>,
    /// The speakers last announced, in order.
    announced: Vec<String>,
    /// Join counter (orders participants by arrival).
    joins: u64,
    /// Members of the room at other nodes, as its host announces them (an edge room: see
    /// `cluster::relay_rooms`). Shown to members; not members here.
    remote: Vec<ParticipantInfo>,
}

/// What a mute request changed.
#[derive(Debug)]
pub(super) struct MuteChange {
    /// The track as it is now.
    pub(super) info: TrackInfo,
    /// Whether what the room was told (`muted`) changed: announce it.
    pub(super) announce: bool,
}

impl RoomState {
    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// Members connected to this node (not admitted for another node's session).
    pub(super) fn local_len(&self) -> usize {
        self.members.values().filter(|m| !m.relayed).count()
    }

    /// Adds a member, numbered by arrival.
    pub(super) fn add(&mut self, mut member: Member) {
        self.joins += 1;
        member.seq = self.joins;
        self.members.insert(member.info.id.clone(), member);
    }

    /// Removes a member (its tracks and speaking level go with it).
    pub(super) fn remove(&mut self, participant: &str) -> Option<(Member, Vec<RoomTrack>)> {
        let member = self.members.remove(participant)?;
        self.levels.remove(participant);
        let (gone, kept): (Vec<Published>, Vec<Published>) = std::mem::take(&mut self.tracks)
            .into_iter()
            .partition(|t| t.track.info.participant == participant);
        self.tracks = kept;
        Some((member, gone.into_iter().map(|p| p.track).collect()))
    }

    pub(super) fn member(&self, participant: &str) -> Option<&Member> {
        self.members.get(participant)
    }

    pub(super) fn member_mut(&mut self, participant: &str) -> Option<&mut Member> {
        self.members.get_mut(participant)
    }

    /// A member by id, or else by identity.
    pub(super) fn find(&self, id_or_identity: &str) -> Option<&Member> {
        self.members.get(id_or_identity).or_else(|| {
            self.members
                .values()
                .find(|m| m.info.identity == id_or_identity)
        })
    }

    pub(super) fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The visible members other than `except`, and the remote participants.
    pub(super) fn visible_others(&self, except: &str) -> Vec<ParticipantInfo> {
        let mut others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| !m.hidden && m.info.id != except)
            .collect();
        others.sort_by_key(|m| m.seq);
        let members = others.into_iter().map(|m| m.info.clone());
        members.chain(self.remote.iter().cloned()).collect()
    }

    /// Records a member of the room at another node; `true` if new. At most [`MAX_REMOTE`]
    /// (another node's announcements are input too).
    pub(super) fn add_remote(&mut self, info: ParticipantInfo) -> bool {
        if self.remote.len() >= MAX_REMOTE || self.remote.iter().any(|r| r.id == info.id) {
            return false;
        }
        self.remote.push(info);
        true
    }

    /// The remote participants' ids.
    pub(super) fn remote_ids(&self) -> Vec<String> {
        self.remote.iter().map(|r| r.id.clone()).collect()
    }

    /// Whether `participant` is a remote participant.
    pub(super) fn is_remote(&self, participant: &str) -> bool {
        self.remote.iter().any(|r| r.id == participant)
    }

    /// Forgets a remote participant and its tracks (still to be unpublished in the media
    /// core by whoever relayed them).
    pub(super) fn remove_remote(
        &mut self,
        participant: &str,
    ) -> Option<(ParticipantInfo, Vec<RoomTrack>)> {
        let pos = self.remote.iter().position(|r| r.id == participant)?;
        self.levels.remove(participant);
        let (gone, kept): (Vec<Published>, Vec<Published>) = std::mem::take(&mut self.tracks)
            .into_iter()
            .partition(|t| t.track.info.participant == participant);
        self.tracks = kept;
        Some((
            self.remote.remove(pos),
            gone.into_iter().map(|p| p.track).collect(),
        ))
    }

    /// Everyone, by arrival.
    pub(super) fn summaries(&self) -> Vec<MemberSummary> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        members
            .into_iter()
            .map(|m| MemberSummary {
                info: m.info.clone(),
                joined_at: m.joined_at,
                via: m.via,
                relayed: m.relayed,
                subscriber: m.subscriber,
                hidden: m.hidden,
            })
            .collect()
    }

    pub(super) fn tracks(&self) -> Vec<RoomTrack> {
        self.tracks.iter().map(|p| p.track.clone()).collect()
    }

    /// The tracks `member` receives.
    pub(super) fn tracks_for(&self, member: &str, follows: Option<&str>) -> Vec<TrackId> {
        self.tracks
            .iter()
            .map(|p| &p.track)
            .filter(|t| t.info.participant != member)
            .filter(|t| follows.is_none_or(|f| f == t.info.participant))
            .map(|t| t.id)
            .collect()
    }

    pub(super) fn track(&self, id: &str) -> Option<&RoomTrack> {
        self.tracks
            .iter()
            .map(|p| &p.track)
            .find(|t| t.info.id == id)
    }

    /// Records a published track; returns the subscriber peers that receive it.
    pub(super) fn publish(&mut self, track: RoomTrack) -> Vec<PeerId> {
        let receivers = self
            .members
            .values()
            .filter(|m| m.receives_from(&track.info.participant))
            .filter_map(|m| m.subscriber)
            .collect();
        let by_publisher = track.info.muted;
        self.tracks.push(Published {
            track,
            by_publisher,
            by_admin: false,
        });
        receivers
    }

    /// Forgets a track; returns it if it was there.
    pub(super) fn unpublish(&mut self, id: TrackId) -> Option<RoomTrack> {
        let pos = self.tracks.iter().position(|p| p.track.id == id)?;
        Some(self.tracks.remove(pos).track)
    }

    /// The track `participant` publishes as `track`, checked before a mute is applied.
    pub(super) fn published_by(
        &self,
        participant: &str,
        track: &str,
    ) -> Result<TrackId, RoomError> {
        self.tracks
            .iter()
            .find(|p| p.track.info.id == track && p.track.info.participant == participant)
            .map(|p| p.track.id)
            .ok_or_else(|| RoomError::NoSuchTrack {
                participant: participant.to_string(),
                track: track.to_string(),
            })
    }

    /// Whether unmuting `track` by `by` is allowed: a publisher cannot lift an
    /// administrator's mute.
    pub(super) fn may_set_muted(
        &self,
        track: &str,
        muted: bool,
        by: MutedBy,
    ) -> Result<(), RoomError> {
        let by_admin = self
            .tracks
            .iter()
            .any(|p| p.track.info.id == track && p.by_admin);
        if by == MutedBy::Publisher && !muted && by_admin {
            return Err(RoomError::MutedByAdmin);
        }
        Ok(())
    }

    /// Sets one of a track's mute flags (the caller checked [`Self::may_set_muted`] and, for
    /// an administrator, applied it in the media core).
    pub(super) fn set_muted(
        &mut self,
        participant: &str,
        track: &str,
        muted: bool,
        by: MutedBy,
    ) -> Result<MuteChange, RoomError> {
        self.may_set_muted(track, muted, by)?;
        let published = self
            .tracks
            .iter_mut()
            .find(|p| p.track.info.id == track && p.track.info.participant == participant)
            .ok_or_else(|| RoomError::NoSuchTrack {
                participant: participant.to_string(),
                track: track.to_string(),
            })?;
        let before = published.track.info.muted;
        match by {
            MutedBy::Publisher => published.by_publisher = muted,
            MutedBy::Admin => published.by_admin = muted,
        }
        published.announce_muted();
        Ok(MuteChange {
            info: published.track.info.clone(),
            announce: published.track.info.muted != before,
        })
    }

    /// Records a participant's speaking level (0: stopped). Returns the new speakers list if
    /// who speaks, or their order, changed.
    pub(super) fn update_speaker(&mut self, participant: &str, level: f32) -> Option<Vec<Speaker>> {
        if level > 0.0 && (self.members.contains_key(participant) || self.is_remote(participant)) {
            self.levels.insert(participant.to_string(), level);
        } else {
            self.levels.remove(participant);
        }
        self.speakers_if_changed()
    }

    /// The speakers, loudest first, if the list differs from the one last announced.
    pub(super) fn speakers_if_changed(&mut self) -> Option<Vec<Speaker>> {
        let mut speakers: Vec<Speaker> = self
            .levels
            .iter()
            .filter(|(id, _)| {
                self.members.get(*id).is_some_and(|m| !m.hidden) || self.is_remote(id)
            })
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

    /// Who is speaking now (what was last announced).
    pub(super) fn speakers(&self) -> Vec<Speaker> {
        self.announced
            .iter()
            .filter_map(|id| {
                Some(Speaker {
                    participant: id.clone(),
                    level: *self.levels.get(id)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, subscriber: Option<u64>) -> Member {
        Member {
            info: ParticipantInfo {
                id: id.into(),
                identity: format!("{id}-identity"),
                name: id.into(),
            },
            hidden: false,
            outbox: crate::outbox::outbox().0,
            kick: tokio::sync::mpsc::unbounded_channel().0,
            joined_at: 0,
            seq: 0,
            via: Via::WebSocket,
            relayed: false,
            subscriber: subscriber.map(PeerId),
            follows: None,
            token: (String::new(), 0),
        }
    }

    fn track(id: u64, participant: &str) -> RoomTrack {
        RoomTrack {
            id: TrackId(id),
            info: TrackInfo {
                id: TrackId(id).to_string(),
                participant: participant.into(),
                kind: "audio".into(),
                mid: "0".into(),
                source: "microphone".into(),
                simulcast: Vec::new(),
                muted: false,
            },
        }
    }

    #[test]
    fn a_track_goes_to_everyone_but_its_publisher_and_those_following_someone_else() {
        let mut room = RoomState::default();
        room.add(member("alice", Some(1)));
        room.add(member("bob", Some(2)));
        let mut carol = member("carol", Some(3));
        carol.follows = Some("bob".into());
        room.add(carol);
        room.add(member("whip", None));
        let mut to = room.publish(track(10, "alice"));
        to.sort();
        assert_eq!(to, vec![PeerId(2)]);
        let mut to = room.publish(track(11, "bob"));
        to.sort();
        assert_eq!(to, vec![PeerId(1), PeerId(3)]);
        assert_eq!(room.tracks_for("carol", Some("bob")), vec![TrackId(11)]);
    }

    #[test]
    fn members_served_by_other_nodes_count_in_the_room_not_on_this_node() {
        let mut room = RoomState::default();
        room.add(member("alice", Some(1)));
        let mut bob = member("bob", None);
        bob.relayed = true;
        room.add(bob);
        assert_eq!((room.len(), room.local_len()), (2, 1));
    }

    #[test]
    fn a_remote_participant_leaves_with_its_tracks() {
        let mut room = RoomState::default();
        room.add(member("alice", Some(1)));
        let carol = ParticipantInfo {
            id: "carol".into(),
            identity: "carol".into(),
            name: "Carol".into(),
        };
        assert!(room.add_remote(carol.clone()));
        assert!(!room.add_remote(carol), "once");
        assert_eq!(room.publish(track(20, "carol")), vec![PeerId(1)]);
        room.publish(track(21, "alice"));
        assert_eq!(room.visible_others("alice").len(), 1);
        let (gone, tracks) = room.remove_remote("carol").unwrap();
        assert_eq!(gone.id, "carol");
        assert_eq!(
            tracks.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![TrackId(20)]
        );
        assert_eq!(room.tracks().len(), 1, "alice's track stays");
        assert!(room.visible_others("alice").is_empty());
        assert!(room.remove_remote("carol").is_none());
    }

    #[test]
    fn members_announced_by_other_nodes_are_bounded() {
        let mut room = RoomState::default();
        for i in 0..MAX_REMOTE + 5 {
            room.add_remote(ParticipantInfo {
                id: format!("PA_{i}"),
                identity: format!("i{i}"),
                name: String::new(),
            });
        }
        assert_eq!(room.remote_ids().len(), MAX_REMOTE);
    }

    #[test]
    fn a_publisher_cannot_unmute_what_an_administrator_muted() {
        let mut room = RoomState::default();
        room.add(member("alice", None));
        let id = TrackId(10);
        room.publish(track(10, "alice"));
        let t = id.to_string();
        let change = room.set_muted("alice", &t, true, MutedBy::Admin).unwrap();
        assert!(change.announce && change.info.muted);
        assert!(matches!(
            room.set_muted("alice", &t, false, MutedBy::Publisher),
            Err(RoomError::MutedByAdmin)
        ));
        // The publisher's own mute on top changes nothing the others see.
        let change = room
            .set_muted("alice", &t, true, MutedBy::Publisher)
            .unwrap();
        assert!(!change.announce && change.info.muted);
        // The administrator lifts theirs: still muted by the publisher.
        let change = room.set_muted("alice", &t, false, MutedBy::Admin).unwrap();
        assert!(!change.announce && change.info.muted);
        let change = room
            .set_muted("alice", &t, false, MutedBy::Publisher)
            .unwrap();
        assert!(change.announce && !change.info.muted);
    }

    #[test]
    fn only_the_publisher_of_a_track_mutes_it() {
        let mut room = RoomState::default();
        room.add(member("alice", None));
        room.add(member("bob", None));
        room.publish(track(10, "alice"));
        let t = TrackId(10).to_string();
        assert!(matches!(
            room.set_muted("bob", &t, true, MutedBy::Publisher),
            Err(RoomError::NoSuchTrack { .. })
        ));
    }

    #[test]
    fn leaving_takes_tracks_and_speaking_level() {
        let mut room = RoomState::default();
        room.add(member("alice", None));
        room.add(member("bob", None));
        room.publish(track(10, "alice"));
        assert!(room.update_speaker("alice", 0.5).is_some());
        assert!(room.update_speaker("alice", 0.6).is_none());
        let (_, tracks) = room.remove("alice").unwrap();
        assert_eq!(tracks.len(), 1);
        assert!(room.tracks().is_empty());
        assert_eq!(room.speakers_if_changed(), Some(Vec::new()));
    }

    #[test]
    fn members_are_found_by_id_or_identity_and_listed_by_arrival() {
        let mut room = RoomState::default();
        room.add(member("b", None));
        room.add(member("a", None));
        assert!(room.find("a-identity").is_some());
        assert!(room.find("a").is_some());
        assert!(room.find("c").is_none());
        let order: Vec<String> = room.summaries().into_iter().map(|m| m.info.id).collect();
        assert_eq!(order, vec!["b", "a"]);
        assert_eq!(room.visible_others("b").len(), 1);
    }
}
