//! One track a subscriber receives (its "down track"): the layer it follows and switches on
//! keyframes, the rewriting that hides the switches, the keyframe requests it sends upstream,
//! the payload-type mapping and the retransmission cache of its outgoing stream, and what the
//! track's owner (the publisher's worker) is told about it. Written to by the subscriber's
//! worker only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::format::Codec;
use str0m::media::{Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};
use tracing::{debug, warn};

use crate::allocator::LayerReason;
use crate::counters::WorkerCounters;
use crate::dependency_descriptor::DescriptorRewriter;
use crate::event::{PeerEvent, TrackKind};
use crate::graph::{PeerLocation, TrackRoute};
use crate::ids::TrackId;
use crate::keyframe::needs_keyframe;
use crate::keyframe_throttle::URGENT_RETRY;
use crate::layer_choice::VideoPreference;
use crate::layer_switch::{Forward, LayerSwitcher};
use crate::packet::{Delivery, ForwardedPacket};
use crate::peer::{Ctx, PeerInfo};
use crate::red;

use super::backlog;

/// How long sent video packets are kept to answer NACKs. str0m keeps 3 s by default; a NACK
/// later than 1.5 s (several round trips even on a 300 ms path) comes too late to help the
/// picture, and the cache is the largest per-subscriber allocation (~260 KiB per 1.5 Mbit/s
/// stream at 3 s, measured with heaptrack).
const RTX_CACHE_AGE: Duration = Duration::from_millis(1500);
/// At most this many packets in that cache (str0m's default).
const RTX_CACHE_PACKETS: usize = 1000;
/// Share of a stream's bytes that may be retransmissions before queued resends are dropped
/// (str0m's default): what bounds one subscriber's NACK storm.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// One track this peer receives.
pub(super) struct Subscription {
    pub(super) route: Arc<TrackRoute>,
    /// Set when the track is put in an offer.
    pub(super) mid: Option<Mid>,
    /// What the track's owner was last told this subscription wants; set when the client
    /// has accepted the track (the publisher sends to us from then on).
    told: Option<Told>,
    /// Bit of the best layer the subscriber asks for (dynacast keeps it sent).
    demand: u32,
    /// Which layer is forwarded, and the rewriting.
    pub(super) switcher: LayerSwitcher,
    /// Publisher payload type -> ours (`None`: not accepted), for the last one seen.
    pub(super) pt_map: Option<(Pt, Option<OutFormat>)>,
    /// The track's codec was refused (the subscriber did not accept it): said once.
    pub(super) codec_refused: bool,
    /// What the subscriber asked for (quality, view size).
    pub(super) preference: VideoPreference,
    /// The highest layer the subscriber's bandwidth allows (set by the allocator).
    pub(super) bandwidth_cap: Option<u8>,
    /// NACKs from the subscriber counted so far (str0m reports a running total).
    pub(super) nacks_seen: u64,
    pub(super) keyframe_asked_at: Option<Instant>,
    /// When this subscription last asked urgently (at most one per [`URGENT_BUDGET`]: the
    /// downgrades that make a request urgent follow the client's own feedback).
    pub(super) urgent_asked_at: Option<Instant>,
    /// Why the target layer is what it is (video; set by the allocator).
    pub(super) reason: Option<LayerReason>,
    /// The layer state last reported to the control plane.
    pub(super) reported: Option<ReportedLayers>,
    /// Whether our stream's retransmission cache has been sized ([`RTX_CACHE_AGE`]).
    pub(super) rtx_cache_sized: bool,
    /// A video subscription not yet sent a packet: since when (for the first-packet timing).
    pub(super) awaiting_first_video: Option<Instant>,
    /// When a keyframe request from the client was last passed on.
    client_request_at: Option<Instant>,
    /// The Dependency Descriptors of a scalable AV1 track, told the layers this subscriber
    /// gets.
    descriptors: DescriptorRewriter,
    /// Audio: its last packet went out as RED (which costs about twice plain Opus).
    pub(super) sending_red: bool,
}

/// What a subscription wants of its track's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wants {
    layers: u32,
    demand: u32,
}

/// What the owner was told, and who told it.
#[derive(Debug, Clone, Copy)]
struct Told {
    /// The subscriber.
    from: PeerLocation,
    wants: Wants,
}

impl Subscription {
    pub(super) fn new(route: Arc<TrackRoute>, mid: Option<Mid>, now: Instant) -> Self {
        let video = route.kind == TrackKind::Video;
        Self {
            route,
            mid,
            told: None,
            demand: 0,
            switcher: LayerSwitcher::new(video),
            pt_map: None,
            codec_refused: false,
            preference: VideoPreference::default(),
            bandwidth_cap: None,
            nacks_seen: 0,
            keyframe_asked_at: None,
            urgent_asked_at: None,
            reason: None,
            reported: None,
            rtx_cache_sized: false,
            awaiting_first_video: video.then_some(now),
            client_request_at: None,
            descriptors: DescriptorRewriter::default(),
            sending_red: false,
        }
    }

    /// Whether the track flows: the client accepted it and its owner was told.
    pub(super) fn is_active(&self) -> bool {
        self.told.is_some()
    }

    /// The client accepted the track: its owner is asked to send `layers` (subscriber
    /// `at`). If the track has ended meanwhile, the owner answers with `TrackEnded`.
    pub(super) fn join(&mut self, at: PeerLocation, layers: u32, ctx: &mut Ctx<'_>) {
        let told = Told {
            from: at,
            wants: Wants {
                layers: self.route.needed_layers(layers),
                demand: self.demand,
            },
        };
        self.told = Some(told);
        self.send(told, ctx);
    }

    /// Tells the owner that this subscriber leaves the track, if it had joined.
    pub(super) fn leave(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(told) = self.told.take() {
            let owner = self.route.publisher;
            ctx.deliver(
                owner,
                Delivery::Leave {
                    to: owner.peer,
                    track: self.route.id,
                    from: told.from,
                },
            );
        }
    }

    /// Tells the owner what this subscription wants now, if that changed since last told.
    fn tell_owner(&mut self, ctx: &mut Ctx<'_>) {
        let Some(told) = self.told else {
            return;
        };
        let wants = Wants {
            layers: self.route.needed_layers(self.switcher.wanted_layers()),
            demand: self.demand,
        };
        if wants != told.wants {
            let told = Told { wants, ..told };
            self.told = Some(told);
            self.send(told, ctx);
        }
    }

    fn send(&self, told: Told, ctx: &mut Ctx<'_>) {
        let owner = self.route.publisher;
        ctx.deliver(
            owner,
            Delivery::Want {
                to: owner.peer,
                track: self.route.id,
                from: told.from,
                layers: told.wants.layers,
                demand: told.wants.demand,
            },
        );
    }

    /// The client asked for a keyframe (a PLI or FIR): passed on to the publisher for the
    /// layer it receives, at most once per [`CLIENT_REQUEST_GAP`] (the publisher's throttle
    /// would merge the rest anyway, and a client cannot flood the owner's queue).
    pub(super) fn on_client_keyframe_request(&mut self, ctx: &mut Ctx<'_>) {
        if !self.is_active()
            || self
                .client_request_at
                .is_some_and(|t| ctx.now.saturating_duration_since(t) < CLIENT_REQUEST_GAP)
        {
            return;
        }
        if let Some(layer) = self.switcher.current().or(self.switcher.target()) {
            self.client_request_at = Some(ctx.now);
            ask_keyframe(self, layer, false, ctx);
        }
    }

    /// Records why the target layer is what it is (and keeps the worker's gauges).
    pub(super) fn set_reason(&mut self, reason: Option<LayerReason>, ctx: &Ctx<'_>) {
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
    pub(super) fn clear_gauges(&mut self, ctx: &Ctx<'_>) {
        self.set_reason(None, ctx);
        let reported = self.reported.take();
        if reported.is_some_and(awaits_keyframe) {
            WorkerCounters::sub(&ctx.counters().video_waiting_keyframe, 1);
        }
        if let Some(gauge) = layer_gauge(reported.and_then(|r| r.current), ctx) {
            WorkerCounters::sub(gauge, 1);
        }
    }

    pub(super) fn is_video(&self) -> bool {
        self.route.kind == TrackKind::Video
    }

    /// A video subscription whose chosen layer has not started (audio never waits).
    pub(super) fn waiting_for_keyframe(&self) -> bool {
        self.is_active() && self.switcher.waiting()
    }

    /// The highest layer the subscriber asked for (by quality or view size).
    pub(super) fn requested_cap(&self) -> Option<u8> {
        self.preference
            .cap(self.route.layer_count(), &self.route.layer_sizes())
    }

    /// The highest layer allowed by the request and the bandwidth.
    pub(super) fn cap(&self) -> Option<u8> {
        let requested = self.requested_cap();
        match (requested, self.bandwidth_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides whether `packet` is forwarded, following the chosen layer and switching only on
    /// a keyframe of it. Returns the packet's outgoing numbers if it is forwarded, and whether
    /// the keyframe wait changed.
    pub(super) fn admit(
        &mut self,
        packet: &ForwardedPacket,
        ctx: &mut Ctx<'_>,
    ) -> (Option<Forward>, bool) {
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
                debug!(track = %packet.track, layer = ?after.0, "forwarding layer");
            } else {
                debug!(track = %packet.track, layer = packet.layer, "layer stopped for bandwidth");
            }
            self.tell_owner(ctx);
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
    pub(super) fn retarget(&mut self, fallback: Option<u8>, ctx: &mut Ctx<'_>) -> bool {
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
        self.tell_owner(ctx);
        // A step down forced by the bandwidth asks at once even where the new layer needs no
        // keyframe (a scalable stream's lower layer): the congested link has lost some of its
        // packets too, and a keyframe repairs that sooner than retransmissions through it.
        if let (Some(layer), true) = (best, needs_keyframe || too_big) {
            ask_keyframe(self, layer, too_big, ctx);
        }
        true
    }

    /// How long to wait for a requested keyframe before asking again: soon while nothing is
    /// forwarded (the current layer was stopped for bandwidth), since a publisher may ignore
    /// a request that follows another within [`URGENT_RETRY`] (Chromium ignores those within
    /// 300 ms).
    pub(super) fn keyframe_retry(&self, ctx: &Ctx<'_>) -> Duration {
        let normal = ctx.shared.config.keyframe_retry;
        if self.switcher.stalled() {
            normal.min(URGENT_RETRY)
        } else {
            normal
        }
    }

    /// Tells the publisher's dynacast the best layer this subscriber asks for.
    pub(super) fn publish_demand(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(layer) = self.route.choose_layer_capped(self.requested_cap()) {
            self.demand = 1 << layer.min(31);
            self.tell_owner(ctx);
        }
    }

    /// Our payload types for `packet`'s format on this subscriber's m-line: `None` if the
    /// subscriber did not accept that format (no transcoding). One lookup per change of the
    /// incoming payload type, accepted or not.
    pub(super) fn out_format(
        &mut self,
        rtc: &Rtc,
        mid: Mid,
        packet: &ForwardedPacket,
    ) -> Option<OutFormat> {
        let in_pt = packet.params.pt();
        match self.pt_map {
            Some((i, o)) if i == in_pt => o,
            _ => {
                let o = negotiated_format(rtc, mid, packet);
                self.pt_map = Some((in_pt, o));
                o
            }
        }
    }

    /// `packet` is in a format the subscriber did not accept: it leaves the subscriber's
    /// numbering (no gap to ask about). The first refusal of a track's own codec (not of
    /// telephone events beside it) is said: a log line, a counter and an event for the
    /// control plane.
    pub(super) fn refuse(&mut self, packet: &ForwardedPacket, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        self.switcher.skip(packet);
        WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
        let codec = packet.params.spec().codec;
        if codec == Codec::Tele || std::mem::replace(&mut self.codec_refused, true) {
            return;
        }
        warn!(
            track = %packet.track,
            %codec,
            "the subscriber did not accept the track's codec; the track is not forwarded to it"
        );
        WorkerCounters::add(&ctx.counters().codec_refusals, 1);
        info.emit(PeerEvent::CodecRefused {
            peer: info.id,
            track: packet.track,
            codec: codec.to_string(),
        });
    }

    /// The hot path's second half: rewrites an admitted packet for this subscriber (payload
    /// type, numbers, VP8 patch) and writes it to the subscriber's state machine. A packet
    /// `replayed` from the start cache arrived long ago: not a latency sample.
    pub(super) fn write(
        &mut self,
        rtc: &mut Rtc,
        mid: Mid,
        packet: &ForwardedPacket,
        (out, format): (Forward, OutFormat),
        replayed: bool,
        ctx: &mut Ctx<'_>,
    ) {
        // RED goes on as it came to a subscriber that negotiated it, and as its primary block
        // (plain Opus) to the others. Always the same for one subscriber: a Chromium receiver
        // switched between RED and plain Opus packets went silent (measured).
        self.sending_red = packet.red && format.red.is_some();
        let (out_pt, payload) = match (packet.red, format.red) {
            (true, Some(red)) if packet.params.pt() == format.pt => (red, packet.payload.clone()),
            (true, Some(red)) => {
                // Its blocks name the publisher's payload type: this subscriber's, then.
                let from = *packet.params.pt();
                let Some(blocks) = red::with_block_type(&packet.payload, from, *format.pt) else {
                    WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                    return;
                };
                (red, Arc::from(blocks))
            }
            (true, None) => {
                let Some(primary) = red::primary_block(&packet.payload, *packet.params.pt()) else {
                    WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                    return;
                };
                WorkerCounters::add(&ctx.counters().rtp_red_stripped, 1);
                (format.pt, Arc::from(primary))
            }
            (false, _) => (format.pt, packet.payload.clone()),
        };
        if !self.rtx_cache_sized
            && let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None)
        {
            // Before its first packet, so nothing cached is dropped.
            tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
            self.rtx_cache_sized = true;
        }
        let mut ext = ExtensionValues {
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            video_orientation: packet.video_orientation,
            ..ExtensionValues::default()
        };
        if let (Some(descriptor), Some(spatial)) = (&packet.descriptor, self.switcher.current()) {
            let temporal = self.switcher.temporal_in_force();
            ext.user_values
                .set_arc(self.descriptors.for_receiver(descriptor, spatial, temporal));
        }
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
            return;
        };
        let video = needs_keyframe(packet.params.spec().codec);
        if backlog::is_stuck(tx.queue_info(), ctx.now, video) {
            WorkerCounters::add(&ctx.counters().rtp_dropped_backlog, 1);
            return;
        }
        let mut write = RtpWrite::new(out_pt, out.seq.into(), out.ts, packet.arrival, payload)
            .marker(out.marker)
            .ext_vals(ext)
            .nackable(video);
        if let Some(patch) = out.vp8 {
            write = write.vp8_patch(patch);
        }
        let ssrc = tx.ssrc();
        tx.write_rtp(write);
        if !replayed {
            // The low 16 bits are the sequence number on the wire.
            ctx.out
                .latency
                .on_forward(*ssrc, out.seq as u16, packet.arrival);
        }
        if let Some(since) = self.awaiting_first_video.take() {
            let took = ctx.now.saturating_duration_since(since);
            let timings = &ctx.shared.config.timings;
            timings.first_video_packet.record(took.as_secs_f64());
        }
        let counters = ctx.counters();
        WorkerCounters::add(&counters.rtp_forwarded, 1);
        WorkerCounters::add(&counters.rtp_bytes_forwarded, packet.payload.len() as u64);
    }
}

/// The payload types a subscriber gets a track's packets with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutFormat {
    /// The publisher's codec.
    pt: Pt,
    /// RED around it (RFC 2198), when the subscriber negotiated that too.
    red: Option<Pt>,
}

/// Our payload types for the publisher's codec, if the subscriber accepted that codec on this
/// m-line.
fn negotiated_format(rtc: &Rtc, mid: Mid, packet: &ForwardedPacket) -> Option<OutFormat> {
    let ours = rtc.codec_config().match_params(packet.params)?;
    let remote = rtc.media(mid)?.remote_pts();
    let pt = ours.pt();
    // Negotiation keeps our RED payload type only if the subscriber's SDP has RED too.
    remote.contains(&pt).then(|| OutFormat {
        pt,
        red: ours.red(),
    })
}

/// A client's keyframe requests are passed on at most once per this long.
const CLIENT_REQUEST_GAP: Duration = Duration::from_millis(250);

/// A subscription asks urgently at most once per this long; more often, its requests wait
/// for the publisher's throttle like any other.
const URGENT_BUDGET: Duration = Duration::from_secs(2);

/// What was last reported about a video subscription's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReportedLayers {
    pub(super) current: Option<u8>,
    pub(super) target: Option<u8>,
    pub(super) reason: LayerReason,
    pub(super) layers: u8,
    pub(super) max_temporal: Option<u8>,
}

/// A reported layer state that waits for the target's keyframe.
pub(super) fn awaits_keyframe(state: ReportedLayers) -> bool {
    state.target.is_some() && state.current != state.target
}

/// The worker's gauge of video subscriptions forwarding `layer`.
pub(super) fn layer_gauge<'a>(
    layer: Option<u8>,
    ctx: &'a Ctx<'_>,
) -> Option<&'a std::sync::atomic::AtomicU64> {
    let c = ctx.counters();
    Some(match layer? {
        0 => &c.on_layer_0,
        1 => &c.on_layer_1,
        2 => &c.on_layer_2,
        _ => &c.on_layer_3,
    })
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
pub(super) fn ask_keyframe(sub: &mut Subscription, layer: u8, urgent: bool, ctx: &mut Ctx<'_>) {
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

pub(super) fn earliest_retry(
    subs: &HashMap<TrackId, Subscription>,
    ctx: &Ctx<'_>,
) -> Option<Instant> {
    subs.values()
        .filter(|s| s.waiting_for_keyframe())
        .map(|s| {
            s.keyframe_asked_at
                .map_or(ctx.now, |t| t + s.keyframe_retry(ctx))
        })
        .min()
}
