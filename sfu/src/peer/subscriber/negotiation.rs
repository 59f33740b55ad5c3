//! The subscribe connection's SDP: the server offers, one negotiation at a time, with the
//! tracks added and stopped meanwhile queued for the next one; or, for a client that made
//! the offer itself (WHEP), the client's m-lines are fixed and tracks are bound to free ones
//! of their kind, never renegotiated.

use std::collections::HashMap;

use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};

use super::data::DATA_CHANNEL_LABEL;
use super::subscription::Subscription;
use crate::error::SfuError;
use crate::event::{OfferedTrack, PeerEvent, TrackKind};
use crate::ids::TrackId;
use crate::peer::PeerInfo;

/// An m-line a client offered to receive on.
#[derive(Debug)]
struct Slot {
    mid: Mid,
    kind: TrackKind,
}

/// An offer sent, waiting for the answer.
#[derive(Debug)]
struct PendingOffer {
    token: SdpPendingOffer,
    added: Vec<TrackId>,
    /// It restarts ICE.
    ice_restart: bool,
}

/// Where a newly subscribed track goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// Bound at once to this free m-line of the client's offer.
    Bound(Mid),
    /// Added to the next offer.
    Queued,
    /// The client's offer has no free m-line of its kind.
    NoRoom,
}

/// The state of the subscribe connection's negotiation.
#[derive(Debug)]
pub(super) struct Negotiation {
    queued_adds: Vec<TrackId>,
    queued_stops: Vec<Mid>,
    pending: Option<PendingOffer>,
    /// The data channel still has to be offered (first negotiation).
    channel_unoffered: bool,
    /// The next offer restarts ICE.
    ice_restart: bool,
    /// Set for a subscriber whose client made the offer (WHEP): its m-lines are fixed.
    slots: Option<Vec<Slot>>,
}

impl Negotiation {
    /// The server makes the offers (the signalling WebSocket).
    pub(super) fn server_offers() -> Self {
        Self {
            queued_adds: Vec::new(),
            queued_stops: Vec::new(),
            pending: None,
            channel_unoffered: true,
            ice_restart: false,
            slots: None,
        }
    }

    /// The client made the offer (WHEP); its m-lines come with [`Self::set_slots`].
    pub(super) fn client_offered() -> Self {
        Self {
            channel_unoffered: false,
            slots: Some(Vec::new()),
            ..Self::server_offers()
        }
    }

    /// The m-lines a client-offered subscriber may send on, read from our SDP answer (str0m
    /// announces them as events only once connected).
    pub(super) fn set_slots(&mut self, answer: &str) {
        if let Some(slots) = &mut self.slots {
            *slots = crate::codec_order::sending_sections(answer)
                .into_iter()
                .map(|(kind, mid)| Slot {
                    mid: Mid::from(mid.as_str()),
                    kind,
                })
                .collect();
        }
    }

    /// The next offer carries new ICE credentials.
    pub(super) fn restart_ice(&mut self) {
        self.ice_restart = true;
    }

    /// Whether the client made the offer.
    pub(super) fn is_client_offered(&self) -> bool {
        self.slots.is_some()
    }

    /// Where a new track of `kind` goes (`by_mid`: the m-lines in use).
    pub(super) fn place(
        &mut self,
        track: TrackId,
        kind: TrackKind,
        by_mid: &HashMap<Mid, TrackId>,
    ) -> Placement {
        let Some(slots) = &self.slots else {
            self.queued_adds.push(track);
            return Placement::Queued;
        };
        slots
            .iter()
            .find(|s| s.kind == kind && !by_mid.contains_key(&s.mid))
            .map_or(Placement::NoRoom, |slot| Placement::Bound(slot.mid))
    }

    /// A track is gone: its m-line is stopped with the next offer (a client-offered one
    /// stays, free for the next track of its kind).
    pub(super) fn removed(&mut self, track: TrackId, mid: Option<Mid>) {
        if let (Some(mid), None) = (mid, &self.slots) {
            self.queued_stops.push(mid);
        }
        self.queued_adds.retain(|t| *t != track);
    }

    /// Sends an offer if changes are queued and none is under way.
    pub(super) fn maybe_offer(
        &mut self,
        rtc: &mut Rtc,
        subs: &mut HashMap<TrackId, Subscription>,
        by_mid: &mut HashMap<Mid, TrackId>,
        info: &PeerInfo,
    ) {
        if self.slots.is_some()
            || self.pending.is_some()
            || (self.queued_adds.is_empty()
                && self.queued_stops.is_empty()
                && !self.channel_unoffered
                && !self.ice_restart)
        {
            return;
        }
        let mut api = rtc.sdp_api();
        let ice_restart = std::mem::take(&mut self.ice_restart);
        if ice_restart {
            // Our host candidates stay; only the credentials change.
            api.ice_restart(true);
        }
        for mid in self.queued_stops.drain(..) {
            api.stop_media(mid);
        }
        // The data channel's m-line goes first in the first offer and stays first: the first
        // m-line tags the BUNDLE group (RFC 8843), and a tag that moves because its track's
        // m-line was stopped makes Chromium build a new DTLS transport, aborting the SCTP
        // association and with it the whole connection.
        if self.channel_unoffered {
            api.add_channel(DATA_CHANNEL_LABEL.to_string());
            self.channel_unoffered = false;
        }
        let mut added = Vec::new();
        for track in self.queued_adds.drain(..) {
            let Some(sub) = subs.get_mut(&track) else {
                continue;
            };
            let kind = match sub.route.kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(sub.route.participant.to_string()),
                Some(track.to_string()),
                None,
            );
            sub.mid = Some(mid);
            by_mid.insert(mid, track);
            added.push(track);
        }
        if let Some((offer, token)) = api.apply() {
            // The descriptor only on m-lines of tracks whose publisher sends it.
            let (sdp, _) =
                crate::dependency_descriptor::offer_only_where(&offer.to_sdp_string(), |section| {
                    section
                        .mid
                        .and_then(|mid| by_mid.get(&Mid::from(mid)))
                        .and_then(|track| subs.get(track))
                        .is_some_and(|sub| sub.route.carries_descriptor())
                });
            tracing::debug!(
                peer = %info.id,
                ice_restart,
                added = added.len(),
                candidates = sdp.matches("a=candidate").count(),
                "subscribe offer sent"
            );
            self.pending = Some(PendingOffer {
                token,
                added,
                ice_restart,
            });
            info.emit(PeerEvent::SubscriberOffer {
                peer: info.id,
                sdp,
                tracks: offered_tracks(subs),
            });
        }
    }

    /// The client answered the pending offer. Returns the tracks it added (which start
    /// flowing now); if the answer is refused, they go back to the queue for the next offer.
    pub(super) fn answered(
        &mut self,
        rtc: &mut Rtc,
        answer: SdpAnswer,
        subs: &mut HashMap<TrackId, Subscription>,
        by_mid: &mut HashMap<Mid, TrackId>,
        channel_open: bool,
        info: &PeerInfo,
    ) -> Result<Vec<TrackId>, SfuError> {
        let Some(pending) = self.pending.take() else {
            return Err(SfuError::WrongPeerKind(
                info.id,
                "no offer is waiting for an answer",
            ));
        };
        if let Err(e) = rtc.sdp_api().accept_answer(pending.token, answer) {
            // Nothing of that offer was applied: offer its tracks again with the next one.
            for track in pending.added {
                if let Some(sub) = subs.get_mut(&track) {
                    if let Some(mid) = sub.mid.take() {
                        by_mid.remove(&mid);
                    }
                    self.queued_adds.push(track);
                }
            }
            if !channel_open {
                self.channel_unoffered = true;
            }
            self.ice_restart |= pending.ice_restart;
            tracing::debug!(peer = %info.id, error = %e, "subscribe answer refused");
            return Err(SfuError::BadSdp(e.to_string()));
        }
        tracing::debug!(
            peer = %info.id,
            ice_restart = pending.ice_restart,
            "subscribe answer accepted"
        );
        Ok(pending.added)
    }
}

/// Every track the session carries, by m-line, for the offer's signalling message.
fn offered_tracks(subs: &HashMap<TrackId, Subscription>) -> Vec<OfferedTrack> {
    let mut tracks: Vec<OfferedTrack> = subs
        .iter()
        .filter_map(|(id, s)| {
            Some(OfferedTrack {
                mid: s.mid?.to_string(),
                track: *id,
                participant: s.route.participant.clone(),
                kind: s.route.kind,
            })
        })
        .collect();
    tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
    tracks
}
