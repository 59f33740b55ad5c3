//! The subscribing side of a peer: the tracks it receives, the SDP negotiations that add and
//! remove them (the server offers, one negotiation at a time, changes queued meanwhile), the
//! per-track layer choice and rewriting, and the room's data messages.
//!
//! Layer choice: every half second the [`Allocator`] shares the egress bandwidth estimate
//! among the video tracks, within what the subscriber asked for (quality, view size) and the
//! layers the publisher sends or can resume; each track then moves to its layer through its
//! [`LayerSwitcher`], which starts and switches only on a keyframe of the new layer (asked
//! for, and asked for again if it does not come). The state and the reason for it are
//! reported to the control plane ([`PeerEvent::LayerState`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Event, Rtc};
use tracing::{debug, info, trace};

use super::{Ctx, PeerInfo};
use crate::allocator::{Allocator, LayerReason, TrackNeeds, UP_FACTOR};
use crate::counters::WorkerCounters;
use crate::error::SfuError;
use crate::estimator_restart::EstimatorRestart;
use crate::event::{OfferedTrack, PeerEvent, TrackKind};
use crate::graph::{SubscriberLink, TrackRoute};
use crate::ids::TrackId;
use crate::keyframe::needs_keyframe;
use crate::keyframe_throttle::URGENT_RETRY;
use crate::layer_choice::VideoPreference;
use crate::layer_switch::{Forward, LayerSwitcher};
use crate::packet::{DataMessage, Delivery, ForwardedPacket};

/// Label of the data channel the server opens on every subscriber connection.
pub(crate) const DATA_CHANNEL_LABEL: &str = "data";
/// Data messages kept while the data channel is still opening.
const DATA_BACKLOG: usize = 64;

/// Subscriber state of a peer.
pub(crate) struct Subscriber {
    subs: HashMap<TrackId, Subscription>,
    by_mid: HashMap<Mid, TrackId>,
    queued_adds: Vec<TrackId>,
    queued_stops: Vec<Mid>,
    pending: Option<PendingOffer>,
    /// The data channel still has to be offered (first negotiation).
    channel_unoffered: bool,
    channel: Option<ChannelId>,
    backlog: VecDeque<Arc<DataMessage>>,
    /// Earliest keyframe re-request due.
    next_retry: Option<Instant>,
    /// Set for a subscriber whose client made the offer (WHEP): its m-lines are fixed, and
    /// subscribed tracks are bound to free ones of their kind, without renegotiation.
    slots: Option<Vec<Slot>>,
    /// Shares the bandwidth estimate among the video tracks.
    allocator: Allocator,
    /// Latest egress bandwidth estimate (bits per second).
    estimate: Option<u64>,
    /// Whether `estimate` is the raw one from the state machine's statistics (then the
    /// smoothed estimate events are ignored).
    raw_estimate: bool,
    /// What the last allocation sends (media plus audio allowance), bits per second: an
    /// estimate below it re-allocates at once.
    in_use: u64,
    /// Egress loss fraction over the last second (transport-wide feedback).
    loss: Option<f32>,
    /// Restarts the estimator when it is stuck below what the tracks want.
    restart: EstimatorRestart,
    /// When the allocator runs next (every [`ALLOCATION_PERIOD`] while tracks are received).
    next_allocation: Option<Instant>,
}

/// How often the layers are re-allocated from the bandwidth estimate.
const ALLOCATION_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);
/// Bandwidth set aside per audio track.
const AUDIO_BPS: u64 = 50_000;
/// How long sent video packets are kept to answer NACKs. str0m keeps 3 s by default; a NACK
/// later than 1.5 s (several round trips even on a 300 ms path) comes too late to help the
/// picture, and the cache is the largest per-subscriber allocation (~260 KiB per 1.5 Mbit/s
/// stream at 3 s, measured with heaptrack).
const RTX_CACHE_AGE: std::time::Duration = std::time::Duration::from_millis(1500);
/// At most this many packets in that cache (str0m's default).
const RTX_CACHE_PACKETS: usize = 1000;
/// Share of a stream's bytes that may be retransmissions before queued resends are dropped
/// (str0m's default): what bounds one subscriber's NACK storm.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// An m-line a client offered to receive on.
struct Slot {
    mid: Mid,
    kind: TrackKind,
}

struct PendingOffer {
    token: SdpPendingOffer,
    added: Vec<TrackId>,
}

/// One track this peer receives.
struct Subscription {
    route: Arc<TrackRoute>,
    /// Set when the track is put in an offer.
    mid: Option<Mid>,
    /// Set when the client has accepted it: the publisher now sends to us.
    link: Option<Arc<SubscriberLink>>,
    /// Which layer is forwarded, and the rewriting.
    switcher: LayerSwitcher,
    /// Publisher payload type -> ours, for the last codec seen.
    pt_map: Option<(Pt, Pt)>,
    /// What the subscriber asked for (quality, view size).
    preference: VideoPreference,
    /// The highest layer the subscriber's bandwidth allows (set by the allocator).
    bandwidth_cap: Option<u8>,
    /// NACKs from the subscriber counted so far (str0m reports a running total).
    nacks_seen: u64,
    keyframe_asked_at: Option<Instant>,
    /// When this subscription last asked urgently (at most one per [`URGENT_BUDGET`]: the
    /// downgrades that make a request urgent follow the client's own feedback).
    urgent_asked_at: Option<Instant>,
    /// Why the target layer is what it is (video; set by the allocator).
    reason: Option<LayerReason>,
    /// The layer state last reported to the control plane.
    reported: Option<ReportedLayers>,
    /// Whether our stream's retransmission cache has been sized ([`RTX_CACHE_AGE`]).
    rtx_cache_sized: bool,
}

impl Subscription {
    fn new(route: Arc<TrackRoute>, mid: Option<Mid>) -> Self {
        let video = route.kind == TrackKind::Video;
        Self {
            route,
            mid,
            link: None,
            switcher: LayerSwitcher::new(video),
            pt_map: None,
            preference: VideoPreference::default(),
            bandwidth_cap: None,
            nacks_seen: 0,
            keyframe_asked_at: None,
            urgent_asked_at: None,
            reason: None,
            reported: None,
            rtx_cache_sized: false,
        }
    }

    /// Records why the target layer is what it is (and keeps the worker's gauges).
    fn set_reason(&mut self, reason: Option<LayerReason>, ctx: &Ctx<'_>) {
        if self.reason == reason {
            return;
        }
        if let Some(old) = self.reason {
            WorkerCounters::sub(reason_gauge(old, ctx), 1);
        }
        if let Some(new) = reason {
            WorkerCounters::add(reason_gauge(new, ctx), 1);
        }
        self.reason = reason;
    }

    /// Takes the subscription out of the worker's gauges (it is going away).
    fn clear_gauges(&mut self, ctx: &Ctx<'_>) {
        self.set_reason(None, ctx);
        if self.reported.take().is_some_and(awaits_keyframe) {
            WorkerCounters::sub(&ctx.counters().video_waiting_keyframe, 1);
        }
    }

    fn is_video(&self) -> bool {
        self.route.kind == TrackKind::Video
    }

    /// A video subscription whose chosen layer has not started (audio never waits).
    fn waiting_for_keyframe(&self) -> bool {
        self.link.is_some() && self.switcher.waiting()
    }

    /// The highest layer the subscriber asked for (by quality or view size).
    fn requested_cap(&self) -> Option<u8> {
        self.preference
            .cap(self.route.layer_count, &self.route.layer_sizes())
    }

    /// The highest layer allowed by the request and the bandwidth.
    fn cap(&self) -> Option<u8> {
        let requested = self.requested_cap();
        match (requested, self.bandwidth_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides whether `packet` is forwarded, following the chosen layer and switching only on
    /// a keyframe of it. Returns the packet's outgoing numbers if it is forwarded, and whether
    /// the keyframe wait changed.
    fn admit(&mut self, packet: &ForwardedPacket, ctx: &mut Ctx<'_>) -> (Option<Forward>, bool) {
        let mut waits_changed = false;
        if self.is_video() {
            waits_changed = self.retarget(Some(packet.layer), ctx);
        }
        let before = (self.switcher.current(), self.switcher.stalled());
        let forward = self.switcher.on_packet(packet, ctx.now);
        let after = (self.switcher.current(), self.switcher.stalled());
        if after != before {
            if forward.as_ref().is_some_and(|f| f.switched) {
                WorkerCounters::add(&ctx.counters().layer_switches, 1);
            }
            if !after.1 {
                self.keyframe_asked_at = None;
                debug!(track = %packet.track, layer = packet.layer, "forwarding layer");
            } else {
                debug!(track = %packet.track, layer = packet.layer, "layer stopped for bandwidth");
            }
            self.set_wanted_layers();
            waits_changed = true;
        }
        (forward, waits_changed)
    }

    /// Re-chooses the layer to forward (`fallback` if the publisher's layers are not known
    /// yet); asks for a keyframe when it changes. Returns whether the keyframe wait changed.
    ///
    /// A current layer above what the bandwidth allows is stopped at once rather than
    /// forwarded until the new layer's keyframe (which would queue behind it on the saturated
    /// link), and that keyframe is asked for urgently.
    fn retarget(&mut self, fallback: Option<u8>, ctx: &mut Ctx<'_>) -> bool {
        let too_big = match (self.switcher.current(), self.bandwidth_cap) {
            (Some(current), Some(cap)) => current > cap,
            _ => false,
        };
        self.switcher.set_stop_current(too_big);
        let best = self.route.choose_layer_capped(self.cap()).or(fallback);
        if best.is_none() || self.switcher.target() == best {
            return false;
        }
        let needs_keyframe = self.switcher.set_target(best);
        self.set_wanted_layers();
        if let (Some(layer), true) = (best, needs_keyframe) {
            ask_keyframe(self, layer, too_big, ctx);
        }
        true
    }

    /// How long to wait for a requested keyframe before asking again: soon while nothing is
    /// forwarded (the current layer was stopped for bandwidth), since a publisher may ignore
    /// a request that follows another within [`URGENT_RETRY`] (Chromium ignores those within
    /// 300 ms).
    fn keyframe_retry(&self, ctx: &Ctx<'_>) -> std::time::Duration {
        let normal = ctx.shared.config.keyframe_retry;
        if self.switcher.stalled() {
            normal.min(URGENT_RETRY)
        } else {
            normal
        }
    }

    /// Tells the publisher's dynacast the best layer this subscriber asks for.
    fn publish_demand(&self) {
        let best = self.route.choose_layer_capped(self.requested_cap());
        if let (Some(link), Some(layer)) = (&self.link, best) {
            link.demand.store(1 << layer.min(31), Ordering::Relaxed);
        }
    }

    fn set_wanted_layers(&self) {
        if let Some(link) = &self.link {
            link.layers
                .store(self.switcher.wanted_layers(), Ordering::Relaxed);
        }
    }
}

impl Subscriber {
    pub(crate) fn new() -> Self {
        Self {
            subs: HashMap::new(),
            by_mid: HashMap::new(),
            queued_adds: Vec::new(),
            queued_stops: Vec::new(),
            pending: None,
            channel_unoffered: true,
            channel: None,
            backlog: VecDeque::new(),
            next_retry: None,
            slots: None,
            allocator: Allocator::default(),
            estimate: None,
            raw_estimate: false,
            in_use: 0,
            loss: None,
            restart: EstimatorRestart::default(),
            next_allocation: None,
        }
    }

    /// A subscriber whose client offers (WHEP). Its m-lines are set from the answer
    /// ([`Self::set_slots`]) before any track is subscribed.
    pub(crate) fn client_offered() -> Self {
        Self {
            channel_unoffered: false,
            slots: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// The m-lines this (client-offered) subscriber may send on, read from its SDP answer
    /// (str0m announces them as events only once connected).
    pub(crate) fn set_slots(&mut self, answer: &str) {
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

    /// Whether the client made the offer (WHEP).
    pub(crate) fn is_client_offered(&self) -> bool {
        self.slots.is_some()
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.next_retry, self.next_allocation) {
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
        let fixed_mid = match &self.slots {
            None => None,
            Some(slots) => {
                let free = slots
                    .iter()
                    .find(|s| s.kind == route.kind && !self.by_mid.contains_key(&s.mid));
                let Some(slot) = free else {
                    debug!(%track, "no free m-line of this kind in the client's offer");
                    return Ok(());
                };
                Some(slot.mid)
            }
        };
        self.subs.insert(track, Subscription::new(route, fixed_mid));
        match fixed_mid {
            Some(mid) => {
                self.by_mid.insert(mid, track);
                self.activate(track, info, ctx);
            }
            None => self.queued_adds.push(track),
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
        if sub.link.is_some() && sub.route.kind == TrackKind::Video {
            self.next_allocation = Some(ctx.now);
        }
        debug!(%track, ?preference, "video preference set");
        Ok(())
    }

    /// Removes a track: forwarding stops now, the m-line is stopped with the next offer.
    pub(crate) fn unsubscribe(&mut self, track: TrackId, info: &PeerInfo, ctx: &Ctx<'_>) {
        let Some(mut sub) = self.subs.remove(&track) else {
            return;
        };
        sub.clear_gauges(ctx);
        if sub.link.is_some() {
            ctx.shared.graph.unsubscribe(track, ctx.here(info.id));
        }
        if let Some(mid) = sub.mid {
            self.by_mid.remove(&mid);
            // A client-offered m-line stays, free for the next track of its kind.
            if self.slots.is_none() {
                self.queued_stops.push(mid);
            }
        }
        self.queued_adds.retain(|t| *t != track);
        debug!(%track, "unsubscribed");
    }

    /// Starts a negotiation if changes are queued and none is under way.
    pub(crate) fn maybe_offer(&mut self, rtc: &mut Rtc, info: &PeerInfo) {
        if self.slots.is_some()
            || self.pending.is_some()
            || (self.queued_adds.is_empty()
                && self.queued_stops.is_empty()
                && !self.channel_unoffered)
        {
            return;
        }
        let mut api = rtc.sdp_api();
        for mid in self.queued_stops.drain(..) {
            api.stop_media(mid);
        }
        let mut added = Vec::new();
        for track in self.queued_adds.drain(..) {
            let Some(sub) = self.subs.get_mut(&track) else {
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
            self.by_mid.insert(mid, track);
            added.push(track);
        }
        if self.channel_unoffered {
            api.add_channel(DATA_CHANNEL_LABEL.to_string());
            self.channel_unoffered = false;
        }
        if let Some((offer, token)) = api.apply() {
            self.pending = Some(PendingOffer { token, added });
            info.emit(PeerEvent::SubscriberOffer {
                peer: info.id,
                sdp: offer.to_sdp_string(),
                tracks: self.offered_tracks(),
            });
        }
    }

    fn offered_tracks(&self) -> Vec<OfferedTrack> {
        let mut tracks: Vec<OfferedTrack> = self
            .subs
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

    /// The client answered the pending offer: the tracks in it start flowing.
    pub(crate) fn accept_answer(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        answer: SdpAnswer,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), SfuError> {
        let Some(pending) = self.pending.take() else {
            return Err(SfuError::WrongPeerKind(
                info.id,
                "no offer is waiting for an answer",
            ));
        };
        if let Err(e) = rtc.sdp_api().accept_answer(pending.token, answer) {
            // Nothing of that offer was applied: offer its tracks again with the next one.
            for track in pending.added {
                if let Some(sub) = self.subs.get_mut(&track) {
                    if let Some(mid) = sub.mid.take() {
                        self.by_mid.remove(&mid);
                    }
                    self.queued_adds.push(track);
                }
            }
            if self.channel.is_none() {
                self.channel_unoffered = true;
            }
            return Err(SfuError::BadSdp(e.to_string()));
        }
        for track in pending.added {
            self.activate(track, info, ctx);
        }
        Ok(())
    }

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
        match ctx.shared.graph.subscribe(track, here, layers) {
            Some(link) => {
                sub.link = Some(link);
                sub.switcher.set_target(target);
                self.next_allocation.get_or_insert(ctx.now);
                if sub.route.kind == TrackKind::Video
                    && let Some(layer) = target
                {
                    ask_keyframe(sub, layer, false, ctx);
                    self.next_retry = earliest_retry(&self.subs, ctx);
                }
                info!(%track, "subscription active");
            }
            None => {
                // Unpublished while we negotiated.
                self.unsubscribe(track, info, ctx);
            }
        }
    }

    pub(crate) fn on_event(&mut self, rtc: &mut Rtc, event: Event, ctx: &mut Ctx<'_>) {
        match event {
            Event::KeyframeRequest(req) => {
                WorkerCounters::add(&ctx.counters().keyframe_requests_received, 1);
                let Some(sub) = self.by_mid.get(&req.mid).and_then(|t| self.subs.get_mut(t)) else {
                    return;
                };
                if sub.link.is_some()
                    && let Some(layer) = sub.switcher.current().or(sub.switcher.target())
                {
                    ask_keyframe(sub, layer, false, ctx);
                }
            }
            Event::ChannelOpen(id, label) if label == DATA_CHANNEL_LABEL => {
                self.channel = Some(id);
                while let Some(message) = self.backlog.pop_front() {
                    write_data(rtc, id, &message, ctx);
                }
            }
            Event::ChannelClose(id) if self.channel == Some(id) => self.channel = None,
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) => {
                if !can_probe {
                    debug!(%estimate, "egress estimate frozen: the estimator cannot probe");
                }
                // This event is a three-second average: only the first estimate, until the
                // raw one arrives with the statistics.
                if !self.raw_estimate {
                    self.on_estimate_value(estimate.as_u64(), ctx.now);
                }
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
        self.raw_estimate = true;
        self.loss = loss;
        self.on_estimate_value(bps, ctx.now);
    }

    /// A new estimate: if what is being sent no longer fits, the layers are re-allocated now
    /// rather than at the next period (a congested link should not wait).
    fn on_estimate_value(&mut self, bps: u64, now: Instant) {
        self.estimate = Some(bps);
        if bps < self.in_use && self.next_allocation.is_some() {
            self.next_allocation = Some(now);
        }
    }

    pub(crate) fn handle_delivery(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        delivery: Delivery,
        ctx: &mut Ctx<'_>,
    ) {
        match delivery {
            Delivery::Rtp { packet, .. } => self.forward(rtc, &packet, ctx),
            Delivery::Data { message, .. } => match self.channel {
                Some(id) => write_data(rtc, id, &message, ctx),
                None if self.backlog.len() < DATA_BACKLOG => self.backlog.push_back(message),
                None => WorkerCounters::add(&ctx.counters().data_dropped, 1),
            },
            Delivery::TrackEnded { track, .. } => {
                self.unsubscribe(track, info, ctx);
                self.maybe_offer(rtc, info);
            }
            Delivery::KeyframeRequest { .. } => {}
        }
    }

    /// The hot path: rewrite one packet for this subscriber and hand it to its state machine.
    fn forward(&mut self, rtc: &mut Rtc, packet: &ForwardedPacket, ctx: &mut Ctx<'_>) {
        let Some(sub) = self.subs.get_mut(&packet.track) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let (Some(mid), Some(_)) = (sub.mid, &sub.link) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let (out, waits_changed) = sub.admit(packet, ctx);
        let Some(out) = out else {
            if waits_changed {
                self.next_retry = earliest_retry(&self.subs, ctx);
            }
            return;
        };
        let in_pt = packet.params.pt();
        let out_pt = match sub.pt_map {
            Some((i, o)) if i == in_pt => Some(o),
            _ => {
                let o = negotiated_pt(rtc, mid, packet);
                sub.pt_map = o.map(|o| (in_pt, o));
                o
            }
        };
        if !sub.rtx_cache_sized
            && let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None)
        {
            // Before its first packet, so nothing cached is dropped.
            tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
            sub.rtx_cache_sized = true;
        }
        if waits_changed {
            self.next_retry = earliest_retry(&self.subs, ctx);
        }
        let Some(out_pt) = out_pt else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let ext = ExtensionValues {
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            video_orientation: packet.video_orientation,
            ..ExtensionValues::default()
        };
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let mut write = RtpWrite::new(
            out_pt,
            out.seq.into(),
            out.ts,
            packet.arrival,
            packet.payload.clone(),
        )
        .marker(packet.marker)
        .ext_vals(ext)
        .nackable(needs_keyframe(packet.params.spec().codec));
        if let Some(patch) = out.vp8 {
            write = write.vp8_patch(patch);
        }
        tx.write_rtp(write);
        let counters = ctx.counters();
        WorkerCounters::add(&counters.rtp_forwarded, 1);
        WorkerCounters::add(&counters.rtp_bytes_forwarded, packet.payload.len() as u64);
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
        if self.next_allocation.is_some_and(|t| t <= ctx.now) {
            mutated = self.allocate(rtc, ctx);
            self.report_layers(info, ctx);
            let receiving = self.subs.values().any(|s| s.link.is_some());
            self.next_allocation = receiving.then_some(ctx.now + ALLOCATION_PERIOD);
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

    /// Shares the bandwidth estimate among the video tracks and applies the result. Returns
    /// whether it told the estimator (the state machine) what to probe for.
    fn allocate(&mut self, rtc: &mut Rtc, ctx: &mut Ctx<'_>) -> bool {
        let video: Vec<(TrackId, TrackNeeds)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.is_video() && s.link.is_some())
            .map(|(id, s)| {
                let needs = TrackNeeds {
                    active: s.route.available_layers(),
                    rates: s.route.layer_rates(),
                    cap: s.requested_cap(),
                    current: s.switcher.target(),
                    temporal: s.route.has_temporal.load(Ordering::Relaxed),
                    max_temporal: s.switcher.wanted_max_temporal(),
                };
                (*id, needs)
            })
            .collect();
        if video.is_empty() {
            return false;
        }
        let audio = self
            .subs
            .values()
            .filter(|s| !s.is_video() && s.link.is_some())
            .count() as u64
            * AUDIO_BPS;
        // Without an estimate (no transport-wide feedback from this client) there is no
        // bandwidth limit, only the requested quality.
        let budget = self.estimate.map_or(u64::MAX, |e| e.saturating_sub(audio));
        let allocation = self.allocator.allocate(ctx.now, budget, &video);
        trace!(estimate = ?self.estimate, audio, ?allocation, "allocated");
        let mut waits_changed = false;
        for ((id, choice), max_temporal) in allocation.choices.iter().zip(&allocation.max_temporal)
        {
            if let Some(sub) = self.subs.get_mut(id) {
                sub.switcher.set_max_temporal(*max_temporal);
                sub.publish_demand();
                sub.bandwidth_cap = choice
                    .layer
                    .filter(|_| choice.reason == LayerReason::Bandwidth);
                sub.set_reason(Some(choice.reason), ctx);
                waits_changed |= sub.retarget(None, ctx);
            }
        }
        if waits_changed {
            self.next_retry = earliest_retry(&self.subs, ctx);
        }
        if self.estimate.is_none() {
            return false;
        }
        // While a track is held back by the bandwidth, sustain (media plus padding) the rate
        // of the next layer up with its headroom, but at most PAD_SHARE of the estimate, and
        // ask the estimator to probe for it. Without padding the estimate cannot grow past
        // 1.5 times what media carries (str0m's AIMD cap) and probes are rare, so a viewer
        // that once dropped a layer stays down; padding up to the whole estimate instead fills
        // a constrained link and causes the losses and freezes it should avoid (measured).
        let used = allocation.used.saturating_add(audio);
        self.in_use = used;
        let (minimum, wanted) = if allocation.next_step > allocation.used {
            let next = (allocation.next_step.saturating_add(audio) as f64 * UP_FACTOR) as u64;
            let estimate = self.estimate.unwrap_or(0) as f64;
            let padded = next.min((estimate * PAD_SHARE) as u64).max(used);
            (padded, next)
        } else {
            (used, used)
        };
        rtc.bwe()
            .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(wanted));
        let held_back = allocation.next_step > allocation.used;
        if let Some(estimate) = self.estimate
            && self.restart.check(ctx.now, estimate, held_back, self.loss)
        {
            // Stuck below what the tracks want on a link without loss: probe afresh.
            rtc.bwe().reset(Bitrate::bps(estimate));
            WorkerCounters::add(&ctx.counters().estimator_restarts, 1);
            debug!(
                estimate,
                "bandwidth estimator restarted: stuck below the demand"
            );
        }
        true
    }

    /// Tells the control plane about video tracks whose layer state changed.
    fn report_layers(&mut self, info: &PeerInfo, ctx: &Ctx<'_>) {
        for (id, sub) in &mut self.subs {
            let Some(reason) = sub.reason.filter(|_| sub.link.is_some()) else {
                continue;
            };
            let state = ReportedLayers {
                current: sub.switcher.current(),
                target: sub.switcher.target(),
                reason,
                max_temporal: sub.switcher.temporal_in_force(),
            };
            if sub.reported != Some(state) {
                let was_waiting = sub.reported.is_some_and(awaits_keyframe);
                match (was_waiting, awaits_keyframe(state)) {
                    (false, true) => WorkerCounters::add(&ctx.counters().video_waiting_keyframe, 1),
                    (true, false) => WorkerCounters::sub(&ctx.counters().video_waiting_keyframe, 1),
                    _ => {}
                }
                sub.reported = Some(state);
                info.emit(PeerEvent::LayerState {
                    peer: info.id,
                    track: *id,
                    current: state.current,
                    target: state.target,
                    reason,
                    max_temporal: state.max_temporal,
                });
            }
        }
    }

    /// Leaves every track and the room's data relay.
    pub(crate) fn teardown(&mut self, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let here = ctx.here(info.id);
        let subs: Vec<(TrackId, Subscription)> = self.subs.drain().collect();
        for (track, mut sub) in subs {
            sub.clear_gauges(ctx);
            if sub.link.is_some() {
                ctx.shared.graph.unsubscribe(track, here);
            }
        }
        if let Some(mut room) = ctx.shared.rooms.get_mut(&info.spec.room) {
            room.data_receivers.retain(|r| r.at != here);
        }
    }
}

/// Our payload type for the publisher's codec, if the subscriber accepted that codec on this
/// m-line.
fn negotiated_pt(rtc: &Rtc, mid: Mid, packet: &ForwardedPacket) -> Option<Pt> {
    let pt = rtc.codec_config().match_params(packet.params)?.pt();
    rtc.media(mid)?.remote_pts().contains(&pt).then_some(pt)
}

/// A subscription asks urgently at most once per this long; more often, its requests wait
/// for the publisher's throttle like any other.
const URGENT_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Share of the egress estimate that padding may fill while a track waits to go up a layer.
const PAD_SHARE: f64 = 0.85;

/// What was last reported about a video subscription's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReportedLayers {
    current: Option<u8>,
    target: Option<u8>,
    reason: LayerReason,
    max_temporal: Option<u8>,
}

/// A reported layer state that waits for the target's keyframe.
fn awaits_keyframe(state: ReportedLayers) -> bool {
    state.target.is_some() && state.current != state.target
}

fn reason_gauge<'a>(reason: LayerReason, ctx: &'a Ctx<'_>) -> &'a std::sync::atomic::AtomicU64 {
    let c = ctx.counters();
    match reason {
        LayerReason::Best => &c.video_best,
        LayerReason::Requested => &c.video_requested,
        LayerReason::Bandwidth => &c.video_bandwidth,
        LayerReason::Unavailable => &c.video_unavailable,
    }
}

/// Asks the publisher for a keyframe of `layer`; `urgent` when the subscriber sees nothing
/// until it comes (the publisher's throttle lets it through unless one is already on its way).
fn ask_keyframe(sub: &mut Subscription, layer: u8, urgent: bool, ctx: &mut Ctx<'_>) {
    sub.keyframe_asked_at = Some(ctx.now);
    let urgent = urgent
        && sub
            .urgent_asked_at
            .is_none_or(|t| ctx.now.saturating_duration_since(t) >= URGENT_BUDGET);
    if urgent {
        sub.urgent_asked_at = Some(ctx.now);
    }
    let publisher = sub.route.publisher;
    ctx.deliver(
        publisher,
        Delivery::KeyframeRequest {
            to: publisher.peer,
            track: sub.route.id,
            layer,
            urgent,
        },
    );
}

fn earliest_retry(subs: &HashMap<TrackId, Subscription>, ctx: &Ctx<'_>) -> Option<Instant> {
    subs.values()
        .filter(|s| s.waiting_for_keyframe())
        .map(|s| {
            s.keyframe_asked_at
                .map_or(ctx.now, |t| t + s.keyframe_retry(ctx))
        })
        .min()
}

fn write_data(rtc: &mut Rtc, id: ChannelId, message: &DataMessage, ctx: &mut Ctx<'_>) {
    let written = rtc
        .channel(id)
        .map(|mut c| c.write(message.binary, &message.bytes));
    let counters = ctx.counters();
    match written {
        Some(Ok(true)) => WorkerCounters::add(&counters.data_relayed, 1),
        _ => WorkerCounters::add(&counters.data_dropped, 1),
    }
}
