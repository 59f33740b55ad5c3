//! The subscribing side of a peer: the tracks it receives, and the four jobs that serve them,
//! one module each:
//!
//! - [`subscription`]: one received track (its "down track"): the layer it follows and
//!   switches on keyframes, the rewriting, its keyframe requests, its outgoing stream;
//! - [`negotiation`]: the SDP that adds and removes tracks (the server offers, one
//!   negotiation at a time; or the client's fixed m-lines for WHEP);
//! - [`bandwidth`]: the egress estimate and the [`crate::allocator::Allocator`] that shares it
//!   among the video tracks, within what the subscriber asked for and what the publishers send;
//! - [`data`]: the room's data messages;
//! - [`backlog`]: how long a packet may wait behind the pacer before new ones are dropped.
//!
//! This module routes the peer's inputs (events, deliveries, timeouts, commands) to them and
//! reports each video track's layer state to the control plane ([`PeerEvent::LayerState`]).

mod backlog;
mod bandwidth;
mod data;
mod negotiation;
mod subscription;

use std::collections::HashMap;
use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::change::SdpAnswer;
use str0m::media::Mid;
use str0m::{Event, Rtc};
use tracing::{debug, info};

use self::bandwidth::Bandwidth;
pub(crate) use self::data::DATA_CHANNEL_LABEL;
use self::data::DataRelay;
use self::negotiation::{Negotiation, Placement};
use self::subscription::{
    ReportedLayers, Subscription, ask_keyframe, awaits_keyframe, earliest_retry, layer_gauge,
};
use super::{Ctx, PeerInfo};
use crate::counters::WorkerCounters;
use crate::error::SfuError;
use crate::event::{PeerEvent, TrackKind};
use crate::ids::TrackId;
use crate::layer_choice::VideoPreference;
use crate::packet::{Delivery, ForwardedPacket};

/// Subscriber state of a peer.
pub(crate) struct Subscriber {
    subs: HashMap<TrackId, Subscription>,
    by_mid: HashMap<Mid, TrackId>,
    negotiation: Negotiation,
    data: DataRelay,
    bandwidth: Bandwidth,
    /// Earliest keyframe re-request due.
    next_retry: Option<Instant>,
}

impl Subscriber {
    pub(crate) fn new() -> Self {
        Self::with(Negotiation::server_offers())
    }

    /// A subscriber whose client offers (WHEP). Its m-lines are set from the answer
    /// ([`Self::set_slots`]) before any track is subscribed.
    pub(crate) fn client_offered() -> Self {
        Self::with(Negotiation::client_offered())
    }

    fn with(negotiation: Negotiation) -> Self {
        Self {
            subs: HashMap::new(),
            by_mid: HashMap::new(),
            negotiation,
            data: DataRelay::default(),
            bandwidth: Bandwidth::default(),
            next_retry: None,
        }
    }

    /// The m-lines this (client-offered) subscriber may send on, read from its SDP answer.
    pub(crate) fn set_slots(&mut self, answer: &str) {
        self.negotiation.set_slots(answer);
    }

    /// Whether the client made the offer (WHEP).
    pub(crate) fn is_client_offered(&self) -> bool {
        self.negotiation.is_client_offered()
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.next_retry, self.bandwidth.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Adds a track: negotiated with the next offer, or, for a client-offered subscriber, bound
    /// at once to a free m-line of its kind (and ignored if there is none). Subscribing twice
    /// is a no-op.
    pub(crate) fn subscribe(
        &mut self,
        track: TrackId,
        info: &PeerInfo,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), SfuError> {
        if self.subs.contains_key(&track) {
            return Ok(());
        }
        let route = ctx
            .shared
            .graph
            .get(track)
            .ok_or(SfuError::UnknownTrack(track))?;
        match self.negotiation.place(track, route.kind, &self.by_mid) {
            Placement::Queued => {
                self.subs
                    .insert(track, Subscription::new(route, None, ctx.now));
            }
            Placement::Bound(mid) => {
                self.subs
                    .insert(track, Subscription::new(route, Some(mid), ctx.now));
                self.by_mid.insert(mid, track);
                self.activate(track, info, ctx);
            }
            Placement::NoRoom => {
                debug!(%track, "no free m-line of this kind in the client's offer");
            }
        }
        Ok(())
    }

    /// Sets what the subscriber wants of a video track; the allocator applies it at once.
    pub(crate) fn set_preference(
        &mut self,
        track: TrackId,
        preference: VideoPreference,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), SfuError> {
        let sub = self
            .subs
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track))?;
        sub.preference = preference;
        // The allocator decides at once: down to the request, or up as far as the bandwidth
        // allows.
        if sub.is_active() && sub.route.kind == TrackKind::Video {
            self.bandwidth.allocate_now(ctx.now);
        }
        debug!(%track, ?preference, "video preference set");
        Ok(())
    }

    /// Removes a track: forwarding stops now, the m-line is stopped with the next offer.
    pub(crate) fn unsubscribe(&mut self, track: TrackId, ctx: &mut Ctx<'_>) {
        let Some(mut sub) = self.subs.remove(&track) else {
            return;
        };
        sub.clear_gauges(ctx);
        sub.leave(ctx);
        if let Some(mid) = sub.mid {
            self.by_mid.remove(&mid);
        }
        self.negotiation.removed(track, sub.mid);
        debug!(%track, "unsubscribed");
    }

    /// Asks for new ICE credentials with the next offer.
    pub(crate) fn restart_ice(&mut self, info: &PeerInfo) -> Result<(), SfuError> {
        if self.negotiation.is_client_offered() {
            return Err(SfuError::WrongPeerKind(
                info.id,
                "this client makes its own offers: it restarts ICE with a new offer",
            ));
        }
        self.negotiation.restart_ice();
        Ok(())
    }

    /// Starts a negotiation if changes are queued and none is under way.
    pub(crate) fn maybe_offer(&mut self, rtc: &mut Rtc, info: &PeerInfo) {
        self.negotiation
            .maybe_offer(rtc, &mut self.subs, &mut self.by_mid, info);
    }

    /// The client answered the pending offer: the tracks in it start flowing.
    pub(crate) fn accept_answer(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        answer: SdpAnswer,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), SfuError> {
        let added = self.negotiation.answered(
            rtc,
            answer,
            &mut self.subs,
            &mut self.by_mid,
            self.data.is_open(),
            info,
        )?;
        for track in added {
            self.activate(track, info, ctx);
        }
        Ok(())
    }

    /// A negotiated track starts: the publisher sends to us from now on. (If it was
    /// unpublished while we negotiated, its owner answers the join with `TrackEnded`.)
    fn activate(&mut self, track: TrackId, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let here = ctx.here(info.id);
        let Some(sub) = self.subs.get_mut(&track) else {
            return;
        };
        let target = match sub.route.kind {
            TrackKind::Audio => Some(0),
            TrackKind::Video => sub.route.choose_layer_capped(sub.cap()),
        };
        // Until the publisher has sent anything we do not know its layers: take them all.
        let layers = target.map_or(u32::MAX, |l| 1 << u32::from(l));
        sub.join(here, layers, ctx);
        sub.switcher.set_target(target);
        self.bandwidth.start(ctx.now);
        if sub.route.kind == TrackKind::Video && target.is_some() {
            // The join is the request: the owner starts us from its latest keyframe or asks
            // the publisher for one. Asked again if nothing comes.
            sub.keyframe_asked_at = Some(ctx.now);
            self.next_retry = earliest_retry(&self.subs, ctx);
        }
        info!(%track, "subscription active");
    }

    pub(crate) fn on_event(&mut self, rtc: &mut Rtc, event: Event, ctx: &mut Ctx<'_>) {
        match event {
            Event::KeyframeRequest(req) => {
                WorkerCounters::add(&ctx.counters().keyframe_requests_received, 1);
                if let Some(sub) = self.by_mid.get(&req.mid).and_then(|t| self.subs.get_mut(t)) {
                    sub.on_client_keyframe_request(ctx);
                }
            }
            Event::ChannelOpen(id, label) if label == DATA_CHANNEL_LABEL => {
                self.data.opened(rtc, id, ctx);
            }
            Event::ChannelClose(id) => self.data.closed(id),
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) => {
                if !can_probe {
                    debug!(%estimate, "egress estimate frozen: the estimator cannot probe");
                }
                self.bandwidth.on_smoothed(estimate.as_u64(), ctx.now);
            }
            Event::MediaEgressStats(stats) => {
                if let Some(sub) = self
                    .by_mid
                    .get(&stats.mid)
                    .and_then(|t| self.subs.get_mut(t))
                {
                    let new = stats.nacks.saturating_sub(sub.nacks_seen);
                    sub.nacks_seen = sub.nacks_seen.max(stats.nacks);
                    WorkerCounters::add(&ctx.counters().nacks_received, new);
                }
            }
            _ => {}
        }
    }

    /// The raw egress bandwidth estimate and the egress loss fraction, from the state
    /// machine's statistics.
    pub(crate) fn on_estimate(&mut self, bps: u64, loss: Option<f32>, ctx: &Ctx<'_>) {
        self.bandwidth.on_raw(bps, loss, ctx.now);
    }

    pub(crate) fn handle_delivery(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        delivery: Delivery,
        ctx: &mut Ctx<'_>,
    ) {
        match delivery {
            Delivery::Rtp { packet, .. } => self.forward(rtc, info, &packet, false, ctx),
            Delivery::Replay { packets, .. } => {
                for packet in &packets {
                    self.forward(rtc, info, packet, true, ctx);
                }
            }
            Delivery::Data { message, .. } => self.data.deliver(rtc, message, ctx),
            Delivery::TrackEnded { track, .. } => {
                self.unsubscribe(track, ctx);
                self.maybe_offer(rtc, info);
            }
            // For publishers.
            Delivery::KeyframeRequest { .. } | Delivery::Want { .. } | Delivery::Leave { .. } => {}
        }
    }

    /// The hot path: one packet of a track this peer receives.
    /// One packet of a track this peer receives (`replayed`: from its owner's start cache,
    /// not just arrived).
    fn forward(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        packet: &ForwardedPacket,
        replayed: bool,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(sub) = self.subs.get_mut(&packet.track) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let (Some(mid), true) = (sub.mid, sub.is_active()) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let Some(format) = sub.out_format(rtc, mid, packet) else {
            sub.refuse(packet, info, ctx);
            return;
        };
        let (out, waits_changed) = sub.admit(packet, ctx);
        if let Some(out) = out {
            sub.write(rtc, mid, packet, (out, format), replayed, ctx);
        }
        if waits_changed {
            self.next_retry = earliest_retry(&self.subs, ctx);
        }
    }

    /// Runs the allocator and asks again for keyframes that have not come. Returns whether
    /// it changed the state machine (which must then be drained).
    pub(crate) fn handle_timeout(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let mut mutated = false;
        if let Some(allocated) = self.bandwidth.run(rtc, &mut self.subs, ctx) {
            mutated = allocated.mutated;
            if allocated.waits_changed {
                self.next_retry = earliest_retry(&self.subs, ctx);
            }
            self.report_layers(info, ctx);
        }
        if self.next_retry.is_none_or(|t| t > ctx.now) {
            return mutated;
        }
        for sub in self.subs.values_mut() {
            let retry = sub.keyframe_retry(ctx);
            if sub.waiting_for_keyframe()
                && sub.keyframe_asked_at.is_none_or(|t| t + retry <= ctx.now)
                && let Some(target) = sub.switcher.target()
            {
                let urgent = sub.switcher.stalled();
                ask_keyframe(sub, target, urgent, ctx);
            }
        }
        self.next_retry = earliest_retry(&self.subs, ctx);
        mutated
    }

    /// Tells the control plane about video tracks whose layer state changed.
    fn report_layers(&mut self, info: &PeerInfo, ctx: &Ctx<'_>) {
        for (id, sub) in &mut self.subs {
            let Some(reason) = sub.reason.filter(|_| sub.is_active()) else {
                continue;
            };
            let state = ReportedLayers {
                current: sub.switcher.current(),
                target: sub.switcher.target(),
                reason,
                layers: sub.route.layer_count(),
                max_temporal: sub.switcher.temporal_in_force(),
            };
            if sub.reported != Some(state) {
                let was_waiting = sub.reported.is_some_and(awaits_keyframe);
                match (was_waiting, awaits_keyframe(state)) {
                    (false, true) => WorkerCounters::add(&ctx.counters().video_waiting_keyframe, 1),
                    (true, false) => WorkerCounters::sub(&ctx.counters().video_waiting_keyframe, 1),
                    _ => {}
                }
                let was_on = sub.reported.and_then(|r| r.current);
                if was_on != state.current {
                    if let Some(gauge) = layer_gauge(was_on, ctx) {
                        WorkerCounters::sub(gauge, 1);
                    }
                    if let Some(gauge) = layer_gauge(state.current, ctx) {
                        WorkerCounters::add(gauge, 1);
                    }
                }
                sub.reported = Some(state);
                debug!(
                    track = %id,
                    current = ?state.current,
                    target = ?state.target,
                    reason = reason.as_str(),
                    max_temporal = ?state.max_temporal,
                    "layer state"
                );
                info.emit(PeerEvent::LayerState {
                    peer: info.id,
                    track: *id,
                    current: state.current,
                    target: state.target,
                    reason,
                    layers: state.layers,
                    max_temporal: state.max_temporal,
                });
            }
        }
    }

    /// Leaves every track and the room's data relay.
    pub(crate) fn teardown(&mut self, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let here = ctx.here(info.id);
        let subs: Vec<(TrackId, Subscription)> = self.subs.drain().collect();
        for (_, mut sub) in subs {
            sub.clear_gauges(ctx);
            sub.leave(ctx);
        }
        if let Some(mut room) = ctx.shared.rooms.get_mut(&info.spec.room) {
            room.data_receivers.retain(|r| r.at != here);
        }
    }
}
