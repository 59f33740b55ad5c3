//! One published track and its owner's state: who receives it and which of its layers each
//! wants (plain fields: the publisher's worker alone reads and writes them, subscribers on any
//! worker send [`Delivery::Want`] and [`Delivery::Leave`]), its keyframe requests coalesced
//! per layer, its measured layer rates, dynacast and mute, and each incoming stream's latest
//! group of pictures that a joining subscriber starts with. A scalable (SVC) stream's spatial
//! layers are its layers: learned from its packets, each one's rate published as what
//! receiving up to it costs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{KeyframeRequestKind, Mid, Rid};
use tracing::{debug, info};

use crate::allocator::MAX_LAYERS;
use crate::audio_level::AudioLevelMeter;
use crate::counters::WorkerCounters;
use crate::dynacast::Dynacast;
use crate::event::{PeerEvent, TrackCounters, TrackKind};
use crate::graph::{PeerLocation, TrackRoute, TrackSnapshot};
use crate::ids::TrackId;
use crate::keyframe::SvcLayers;
use crate::keyframe_throttle::KeyframeThrottle;
use crate::packet::{Delivery, ForwardedPacket};
use crate::peer::{Ctx, PeerInfo};

use super::start_cache::StartCache;

/// Where a track's keyframe requests go: the publisher's own state machine (as a PLI), or,
/// for a track relayed from another node, that node (see `relay::ingress`).
pub(crate) trait Upstream {
    /// Asks for a keyframe of `track`'s stream `layer` (`mid`, and `rid` in the track's
    /// simulcast order, where the publisher sends it).
    fn request_keyframe(
        &mut self,
        track: TrackId,
        mid: Mid,
        rid: Option<Rid>,
        layer: usize,
        ctx: &mut Ctx<'_>,
    );
}

impl Upstream for Rtc {
    fn request_keyframe(
        &mut self,
        _track: TrackId,
        mid: Mid,
        rid: Option<Rid>,
        _layer: usize,
        ctx: &mut Ctx<'_>,
    ) {
        let mut api = self.direct_api();
        if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            WorkerCounters::add(&ctx.counters().keyframe_requests_sent, 1);
            debug!(%mid, ?rid, "keyframe requested from publisher");
        }
    }
}

/// One subscriber of the track, as its owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Downstream {
    pub(crate) at: PeerLocation,
    /// Bit `i` set: the subscriber is sent the packets of layer `i`.
    pub(crate) layers: u32,
    /// Bit `i` set: the subscriber asks for up to layer `i`; dynacast keeps it sent.
    pub(crate) demand: u32,
}

pub(crate) struct PublishedTrack {
    pub(crate) mid: Mid,
    /// The track's shared facts, written here and read by the subscribers' workers.
    pub(crate) route: Arc<TrackRoute>,
    /// Simulcast RIDs in layer order (empty without simulcast).
    pub(crate) rids: Vec<Rid>,
    /// Who receives the track, in the order they joined.
    downstream: Vec<Downstream>,
    /// One per incoming stream (simulcast layer; the one stream of a scalable track).
    throttles: Vec<KeyframeThrottle>,
    /// Video: one per incoming stream, what a joining subscriber starts with.
    start: Vec<StartCache>,
    /// Audio tracks only.
    pub(crate) meter: Option<AudioLevelMeter>,
    /// Payload bytes per layer since the last rate sample.
    layer_bytes: [u64; MAX_LAYERS],
    /// Smoothed bitrate of each layer alone, bits per second.
    layer_rates: [u64; MAX_LAYERS],
    /// When the rates were last sampled.
    sampled_at: Option<Instant>,
    /// Simulcast video only: pauses the layers nobody receives.
    dynacast: Option<Dynacast>,
    /// Muted by the control plane: nothing is forwarded.
    muted: bool,
    /// Layers (bits) that resume only at their next keyframe: after an unmute, subscribers
    /// have missed the frames the next ones reference.
    resume_at_keyframe: u32,
    /// Packets received, and packets handed to at least one subscriber.
    received_packets: u64,
    forwarded_packets: u64,
}

impl PublishedTrack {
    pub(crate) fn new(
        mid: Mid,
        route: Arc<TrackRoute>,
        rids: Vec<Rid>,
        keyframe_interval: Duration,
        now: Instant,
    ) -> Self {
        let layers = rids.len().max(1);
        let kind = route.kind;
        Self {
            mid,
            route,
            rids,
            downstream: Vec::new(),
            throttles: (0..layers)
                .map(|_| KeyframeThrottle::new(keyframe_interval))
                .collect(),
            start: if kind == TrackKind::Video {
                (0..layers).map(|_| StartCache::default()).collect()
            } else {
                Vec::new()
            },
            meter: (kind == TrackKind::Audio).then(AudioLevelMeter::default),
            layer_bytes: [0; MAX_LAYERS],
            layer_rates: [0; MAX_LAYERS],
            sampled_at: None,
            dynacast: (kind == TrackKind::Video && layers > 1)
                .then(|| Dynacast::new(u8::try_from(layers).unwrap_or(u8::MAX), now)),
            muted: false,
            resume_at_keyframe: 0,
            received_packets: 0,
            forwarded_packets: 0,
        }
    }

    /// The earliest moment this track has work to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let throttles = self.throttles.iter().filter_map(KeyframeThrottle::deadline);
        let sample = self.sampled_at.map(|at| at + RATE_SAMPLE);
        throttles
            .chain(self.meter.as_ref().and_then(AudioLevelMeter::deadline))
            .chain(sample)
            .chain(self.dynacast.as_ref().map(Dynacast::deadline))
            .min()
    }

    /// A subscriber joins, or changes the layers it receives and asks for. A layer it asks for
    /// that dynacast paused is resumed at once. A joining video subscriber is started: sent
    /// the stream's latest group of pictures if it is recent, else a keyframe is asked for.
    pub(crate) fn want(
        &mut self,
        upstream: &mut impl Upstream,
        wanted: Downstream,
        info: &PeerInfo,
        ctx: &mut Ctx<'_>,
    ) {
        match self.downstream.iter_mut().find(|d| d.at == wanted.at) {
            Some(known) => *known = wanted,
            None => {
                self.downstream.push(wanted);
                self.start_downstream(upstream, wanted, ctx);
            }
        }
        let asked = wanted.layers | wanted.demand;
        let Some(dynacast) = self.dynacast.as_mut() else {
            return;
        };
        let mut resumed = None;
        for layer in 0..self.route.layer_count().min(32) {
            if asked & dynacast.paused() & (1 << layer) != 0 {
                resumed = dynacast.demand(layer, ctx.now).or(resumed);
            }
        }
        if let Some(paused) = resumed {
            WorkerCounters::add(&ctx.counters().layers_resumed, 1);
            self.announce_layers(paused, info);
        }
    }

    /// Starts a joining subscriber on the streams of the layers it receives: from the start
    /// cache where it holds a recent keyframe, else with a keyframe request (through the
    /// throttle). Not while its layers are unknown (it wants them all until the publisher's
    /// are known, and will ask for the one it picks).
    fn start_downstream(
        &mut self,
        upstream: &mut impl Upstream,
        joined: Downstream,
        ctx: &mut Ctx<'_>,
    ) {
        if self.start.is_empty() || joined.layers == 0 {
            return;
        }
        let streams = if self.route.is_scalable() {
            // Its one stream (the subscriber asks for every layer: it drops what it skips).
            1
        } else if joined.layers == u32::MAX {
            return;
        } else {
            joined.layers
        };
        let paused = self.dynacast.as_ref().map_or(0, Dynacast::paused);
        for stream in 0..self.start.len().min(32) {
            let bit = 1u32 << stream;
            if streams & bit == 0 {
                continue;
            }
            // A paused layer's group is of a stream that has stopped: it resumes (in `want`)
            // with a keyframe.
            let cached = self
                .start
                .get(stream)
                .and_then(|c| c.fresh(ctx.now))
                .filter(|_| !self.muted && paused & bit == 0);
            if let Some(group) = cached {
                WorkerCounters::add(&ctx.counters().subscriptions_started_from_cache, 1);
                let packets = group.to_vec();
                ctx.deliver(
                    joined.at,
                    Delivery::Replay {
                        to: joined.at.peer,
                        packets,
                    },
                );
            } else {
                self.ask_keyframe(upstream, stream, false, ctx);
            }
        }
    }

    /// A subscriber leaves.
    pub(crate) fn leave(&mut self, at: PeerLocation) {
        self.downstream.retain(|d| d.at != at);
    }

    /// Counts an incoming packet of `layer` (its payload size) for the layer rates.
    pub(crate) fn on_received(&mut self, layer: u8, bytes: usize, now: Instant) {
        if let Some(sum) = self.layer_bytes.get_mut(usize::from(layer)) {
            *sum += bytes as u64;
        }
        self.sampled_at.get_or_insert(now);
        self.received_packets += 1;
    }

    /// A packet of a scalable stream: the track's layers are its spatial layers, counted and
    /// sized from the scalability structure its keyframes carry. Returns the packet's layer.
    pub(crate) fn on_svc_packet(&mut self, layers: &SvcLayers) -> u8 {
        if !self.route.is_scalable() {
            // Before its layers are marked active: a subscriber that sees them also sees this.
            self.route.set_scalable();
        }
        let top = (MAX_LAYERS - 1) as u8;
        let layer = layers.spatial.min(top);
        if let Some(structure) = &layers.structure {
            let count = structure.spatial_layers.min(top + 1);
            if self.route.layer_count() != count {
                self.route.set_layer_count(count);
            }
            for (index, size) in (0..count).zip(structure.sizes) {
                if size != (0, 0) {
                    self.route.set_layer_size(index, size);
                }
            }
        } else if layer >= self.route.layer_count() {
            self.route.set_layer_count(layer + 1);
        }
        let bit = 1u32 << layer;
        if self.route.active_layers.load(Ordering::Relaxed) & bit == 0 {
            self.route.mark_layer_active(layer);
        }
        if layers.temporal > 0 && !self.route.has_temporal.load(Ordering::Relaxed) {
            // Its upper temporal layers can be dropped for a viewer short of bandwidth.
            self.route.has_temporal.store(true, Ordering::Relaxed);
        }
        layer
    }

    /// The incoming stream that carries `layer` (the one stream of a scalable track).
    fn stream_of(&self, layer: usize) -> usize {
        if self.route.is_scalable() { 0 } else { layer }
    }

    /// A keyframe of `layer` arrived (it answers the requests on their way).
    pub(crate) fn on_keyframe(&mut self, layer: u8) {
        if let Some(throttle) = self.throttles.get_mut(usize::from(layer)) {
            throttle.on_keyframe();
        }
    }

    /// Whether a packet of stream `layer` (picture `ts`) goes out: not while muted, after an
    /// unmute not before the layer's next keyframe, and not while nobody receives the track.
    /// A packet that does not go out also ends the stream's start cache (a group of pictures
    /// with a gap would not decode).
    pub(crate) fn admits(&mut self, layer: u8, ts: u32, keyframe: bool) -> bool {
        let bit = 1u32 << u32::from(layer.min(31));
        let admitted = !self.muted && (keyframe || self.resume_at_keyframe & bit == 0);
        if admitted {
            self.resume_at_keyframe &= !bit;
        }
        if admitted && !self.downstream.is_empty() {
            return true;
        }
        let stream = self.stream_of(usize::from(layer));
        if let Some(cache) = self.start.get_mut(stream) {
            cache.spoil(ts);
        }
        false
    }

    /// The hot path's last step: `packet` to every subscriber that receives its layer (and
    /// to the start cache of its stream).
    pub(crate) fn fan_out(&mut self, packet: &Arc<ForwardedPacket>, ctx: &mut Ctx<'_>) {
        let stream = self.stream_of(usize::from(packet.layer));
        if let Some(cache) = self.start.get_mut(stream) {
            cache.on_packet(packet);
        }
        let bit = 1u32 << u32::from(packet.layer.min(31));
        let mut delivered = false;
        for d in &self.downstream {
            if d.layers & bit != 0 {
                delivered = true;
                ctx.deliver(
                    d.at,
                    Delivery::Rtp {
                        to: d.at.peer,
                        packet: packet.clone(),
                    },
                );
            }
        }
        self.forwarded_packets += u64::from(delivered);
    }

    /// Asks the publisher for a keyframe of `layer` through its throttle (`urgent`: at once
    /// unless one is on its way). Returns whether a request went out now.
    pub(crate) fn ask_keyframe(
        &mut self,
        upstream: &mut impl Upstream,
        layer: usize,
        urgent: bool,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let stream = self.stream_of(layer);
        let sent = self
            .throttles
            .get_mut(stream)
            .is_some_and(|throttle| throttle.request(ctx.now, urgent));
        if sent {
            let rid = self.rids.get(stream).copied();
            upstream.request_keyframe(self.route.id, self.mid, rid, stream, ctx);
        }
        sent
    }

    /// A subscriber wants a keyframe of `layer` (a layer dynacast paused is resumed first).
    pub(crate) fn on_keyframe_request(
        &mut self,
        upstream: &mut impl Upstream,
        info: &PeerInfo,
        layer: u8,
        urgent: bool,
        ctx: &mut Ctx<'_>,
    ) {
        if let Some(paused) = self
            .dynacast
            .as_mut()
            .and_then(|d| d.demand(layer, ctx.now))
        {
            WorkerCounters::add(&ctx.counters().layers_resumed, 1);
            self.announce_layers(paused, info);
        }
        if self.ask_keyframe(upstream, usize::from(layer), urgent, ctx) && urgent {
            WorkerCounters::add(&ctx.counters().urgent_keyframe_requests, 1);
        }
    }

    /// Mutes (or unmutes) the track. A video track unmuted resumes each layer at its next
    /// keyframe, asked for at once.
    pub(crate) fn set_muted(
        &mut self,
        upstream: &mut impl Upstream,
        muted: bool,
        ctx: &mut Ctx<'_>,
    ) {
        if self.muted != muted {
            info!(track = %self.route.id, muted, "track mute set by the control plane");
            if !muted && self.route.kind == TrackKind::Video {
                let layers = self.throttles.len().clamp(1, 32);
                self.resume_at_keyframe = u32::MAX >> (32 - layers);
                for layer in 0..layers {
                    self.ask_keyframe(upstream, layer, true, ctx);
                }
            }
        }
        self.muted = muted;
    }

    pub(crate) fn counters(&self) -> TrackCounters {
        TrackCounters {
            received_packets: self.received_packets,
            forwarded_packets: self.forwarded_packets,
            muted: self.muted,
        }
    }

    /// The track and who receives it, for stats and tests.
    pub(crate) fn snapshot(&self) -> TrackSnapshot {
        TrackSnapshot {
            track: self.route.id,
            room: self.route.room,
            publisher: self.route.publisher.peer,
            subscribers: self.downstream.iter().map(|d| d.at.peer).collect(),
        }
    }

    /// Periodic work: layer rates, dynacast, audio level, keyframe requests held back by the
    /// throttle. Returns whether it wrote to the state machine.
    pub(crate) fn on_timeout(
        &mut self,
        upstream: &mut impl Upstream,
        info: &PeerInfo,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        self.sample_rates(ctx.now);
        self.run_dynacast(info, ctx);
        for cache in &mut self.start {
            cache.expire(ctx.now);
        }
        if let Some(level) = self.meter.as_mut().and_then(|m| m.poll(ctx.now)) {
            info.emit(PeerEvent::AudioLevel {
                peer: info.id,
                track: self.route.id,
                level,
            });
        }
        let mut mutated = false;
        for (layer, throttle) in self.throttles.iter_mut().enumerate() {
            if throttle.poll(ctx.now) {
                let rid = self.rids.get(layer).copied();
                upstream.request_keyframe(self.route.id, self.mid, rid, layer, ctx);
                mutated = true;
            }
        }
        mutated
    }

    /// The track is unpublished: out of the directory, and every subscriber told.
    pub(crate) fn end(self, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let id = self.route.id;
        ctx.shared.graph.unpublish(id);
        for d in &self.downstream {
            ctx.deliver(
                d.at,
                Delivery::TrackEnded {
                    to: d.at.peer,
                    track: id,
                },
            );
        }
        info!(track = %id, "track unpublished");
        info.emit(PeerEvent::TrackUnpublished {
            peer: info.id,
            track: id,
        });
    }

    /// Pauses the layers that nobody has wanted for a while.
    fn run_dynacast(&mut self, info: &PeerInfo, ctx: &Ctx<'_>) {
        let Some(dynacast) = self.dynacast.as_mut() else {
            return;
        };
        if dynacast.deadline() > ctx.now {
            return;
        }
        let wanted = self
            .downstream
            .iter()
            .fold(0, |all, d| all | d.layers | d.demand);
        let before = dynacast.paused();
        if let Some(paused) = dynacast.poll(ctx.now, wanted) {
            let newly = u64::from((paused & !before).count_ones());
            WorkerCounters::add(&ctx.counters().layers_paused, newly);
            self.announce_layers(paused, info);
        }
    }

    /// Records which layers are paused and asks the publisher (through the control plane) to
    /// send only the others.
    fn announce_layers(&self, paused: u32, info: &PeerInfo) {
        self.route.paused_layers.store(paused, Ordering::Relaxed);
        let active = self
            .dynacast
            .as_ref()
            .map(Dynacast::active_list)
            .unwrap_or_default();
        debug!(track = %self.route.id, ?active, "dynacast: layers wanted");
        info.emit(PeerEvent::LayersWanted {
            peer: info.id,
            track: self.route.id,
            active,
        });
    }

    /// Updates the measured layer bitrates (smoothed) when a sample period has passed.
    fn sample_rates(&mut self, now: Instant) {
        let Some(at) = self.sampled_at else {
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < RATE_SAMPLE {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        for (bytes, rate) in self.layer_bytes.iter_mut().zip(&mut self.layer_rates) {
            if *bytes == 0 {
                // Paused or not sent: its last rate is the best guess of what it costs.
                continue;
            }
            let sample = (*bytes * 8) as f64 / seconds;
            // A moving average over about two seconds: keyframes and encoder bursts do not
            // make the allocator's costs (and so its choices) jump.
            *rate = if *rate == 0 {
                sample as u64
            } else {
                (*rate as f64 + RATE_SMOOTHING * (sample - *rate as f64)) as u64
            };
            *bytes = 0;
        }
        // What receiving a layer costs: itself, or with a scalable stream every layer up to
        // it (the lower ones are forwarded too).
        let scalable = self.route.is_scalable();
        let mut below = 0;
        for (layer, rate) in self.layer_rates.iter().enumerate() {
            let cost = if scalable { below + rate } else { *rate };
            below += rate;
            if cost > 0 {
                self.route.set_layer_rate(layer, cost);
            }
        }
        self.sampled_at = Some(now);
    }
}

/// A subscriber's wish about one of a publisher's `tracks` (join or change its layers, leave,
/// want a keyframe), applied to that track; one who wants a track that is gone hears that it
/// ended. Media and data deliveries are not for a publisher: ignored.
pub(crate) fn apply_delivery<'a>(
    tracks: impl IntoIterator<Item = &'a mut PublishedTrack>,
    delivery: Delivery,
    upstream: &mut impl Upstream,
    info: &PeerInfo,
    ctx: &mut Ctx<'_>,
) {
    let Some(track) = (match &delivery {
        Delivery::Want { track, .. }
        | Delivery::Leave { track, .. }
        | Delivery::KeyframeRequest { track, .. } => Some(*track),
        Delivery::Rtp { .. }
        | Delivery::Replay { .. }
        | Delivery::Data { .. }
        | Delivery::TrackEnded { .. } => None,
    }) else {
        return;
    };
    let found = tracks.into_iter().find(|t| t.route.id == track);
    match (delivery, found) {
        (
            Delivery::Want {
                from,
                layers,
                demand,
                ..
            },
            Some(t),
        ) => t.want(
            upstream,
            Downstream {
                at: from,
                layers,
                demand,
            },
            info,
            ctx,
        ),
        (Delivery::Want { from, .. }, None) => ctx.deliver(
            from,
            Delivery::TrackEnded {
                to: from.peer,
                track,
            },
        ),
        (Delivery::Leave { from, .. }, Some(t)) => t.leave(from),
        (Delivery::KeyframeRequest { layer, urgent, .. }, Some(t))
            if t.route.kind == TrackKind::Video =>
        {
            t.on_keyframe_request(upstream, info, layer, urgent, ctx);
        }
        _ => {}
    }
}

/// Layer bitrates are measured over this period.
const RATE_SAMPLE: Duration = Duration::from_millis(500);
/// Weight of a new sample in a layer's smoothed bitrate.
const RATE_SMOOTHING: f64 = 0.25;
