//! The publishing side of a peer: tracks the client sends, each RTP packet fanned out to the
//! track's subscribers, keyframe requests from subscribers coalesced per layer, per-layer
//! bitrates and frame sizes measured for the subscribers' layer choice, and simulcast layers
//! nobody receives paused (dynacast).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    KeyframeRequestKind, MediaAdded, MediaKind, Mid, Pt, Rid, Rids, Simulcast, SimulcastLayer,
};
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Event, Rtc};
use tracing::{debug, info};

use super::{Ctx, PeerInfo};
use crate::allocator::MAX_LAYERS;
use crate::audio_level::AudioLevelMeter;
use crate::counters::WorkerCounters;
use crate::data_relay;
use crate::dynacast::Dynacast;
use crate::event::{PeerEvent, TrackCounters, TrackInfo, TrackKind};
use crate::graph::TrackRoute;
use crate::ids::TrackId;
use crate::keyframe::{starts_keyframe, vp8_keyframe_size, vp8_temporal};
use crate::keyframe_throttle::KeyframeThrottle;
use crate::packet::{Delivery, ForwardedPacket};

/// Publisher state of a peer.
pub(crate) struct Publisher {
    tracks: Vec<PublishedTrack>,
    /// Incoming SSRC -> where its packets go. Filled on a stream's first packet.
    streams: HashMap<Ssrc, IngressStream>,
}

struct PublishedTrack {
    mid: Mid,
    route: Arc<TrackRoute>,
    /// Simulcast RIDs in layer order (empty without simulcast).
    rids: Vec<Rid>,
    /// One per layer.
    throttles: Vec<KeyframeThrottle>,
    /// Audio tracks only.
    meter: Option<AudioLevelMeter>,
    /// Payload bytes per layer since the last rate sample.
    layer_bytes: [u64; MAX_LAYERS],
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
    /// Asks the publisher for a keyframe of `layer` through its throttle (`urgent`: at once
    /// unless one is on its way). Returns whether a request went out now.
    fn ask_keyframe(
        &mut self,
        rtc: &mut Rtc,
        layer: usize,
        urgent: bool,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let sent = self
            .throttles
            .get_mut(layer)
            .is_some_and(|throttle| throttle.request(ctx.now, urgent));
        if sent {
            request_keyframe(rtc, self.mid, self.rids.get(layer).copied(), ctx);
        }
        sent
    }

    fn counters(&self) -> TrackCounters {
        TrackCounters {
            received_packets: self.received_packets,
            forwarded_packets: self.forwarded_packets,
            muted: self.muted,
        }
    }
}

struct IngressStream {
    layer: u8,
    route: Arc<TrackRoute>,
    /// The last payload type seen and its codec (one lookup per codec change, not per packet).
    codec: Option<(Pt, PayloadParams)>,
}

impl Publisher {
    pub(crate) fn new() -> Self {
        Self {
            tracks: Vec::new(),
            streams: HashMap::new(),
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.tracks
            .iter()
            .flat_map(|t| {
                let throttles = t.throttles.iter().filter_map(KeyframeThrottle::deadline);
                let sample = t.sampled_at.map(|at| at + RATE_SAMPLE);
                throttles
                    .chain(t.meter.as_ref().and_then(AudioLevelMeter::deadline))
                    .chain(sample)
                    .chain(t.dynacast.as_ref().map(Dynacast::deadline))
            })
            .min()
    }

    pub(crate) fn on_event(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        event: Event,
        ctx: &mut Ctx<'_>,
    ) {
        match event {
            Event::RtpPacket(packet) => self.forward(rtc, packet, ctx),
            Event::MediaAdded(added) if added.direction.is_receiving() => {
                self.publish(info, added, ctx);
            }
            Event::MediaChanged(changed) => {
                let published = self.tracks.iter().any(|t| t.mid == changed.mid);
                if published && !changed.direction.is_receiving() {
                    self.unpublish(changed.mid, info, ctx);
                } else if !published && changed.direction.is_receiving() {
                    // A track the client had stopped sending is back: publish it anew.
                    if let Some(media) = rtc.media(changed.mid) {
                        let simulcast = match media.rids_rx() {
                            Rids::Specific(rids) => Some(Simulcast {
                                send: Vec::new(),
                                recv: rids
                                    .iter()
                                    .map(|r| SimulcastLayer::new(&r.to_string()))
                                    .collect(),
                            }),
                            _ => None,
                        };
                        let added = MediaAdded {
                            mid: changed.mid,
                            kind: media.kind(),
                            direction: changed.direction,
                            simulcast,
                        };
                        self.publish(info, added, ctx);
                    }
                }
            }
            Event::ChannelData(data) => {
                let counters = ctx.counters();
                if !info.spec.can_publish_data {
                    WorkerCounters::add(&counters.data_dropped, 1);
                    return;
                }
                let spec = &info.spec;
                let Some(message) =
                    data_relay::wrap(&spec.participant, &spec.identity, data.binary, &data.data)
                else {
                    WorkerCounters::add(&counters.data_dropped, 1);
                    return;
                };
                relay_data(info, Arc::new(message), ctx);
            }
            Event::StreamPaused(paused) => {
                debug!(mid = %paused.mid, rid = ?paused.rid, paused = paused.paused, "stream pause state");
                // A paused layer is not selected; it becomes active again with its next packet
                // (see `resolve_stream`, which runs again once the stream is forgotten here).
                if let Some(track) = self.tracks.iter().find(|t| t.mid == paused.mid) {
                    let layer = match paused.rid {
                        Some(rid) => track.rids.iter().position(|r| *r == rid),
                        None => Some(0),
                    };
                    if let Some(layer) = layer.and_then(|l| u8::try_from(l).ok())
                        && paused.paused
                    {
                        track.route.set_layer_active(layer, false);
                        self.streams.retain(|_, s| {
                            !(Arc::ptr_eq(&s.route, &track.route) && s.layer == layer)
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self, info: &PeerInfo, added: MediaAdded, ctx: &mut Ctx<'_>) {
        let rids = added
            .simulcast
            .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
            .map(|layers| order_layers(layers.into_iter().map(|l| l.rid).collect()))
            .unwrap_or_default();
        let id = TrackId(ctx.shared.ids.next());
        let kind = match added.kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let layers = rids.len().max(1);
        let route = ctx.shared.graph.publish(
            id,
            info.spec.room,
            ctx.here(info.id),
            kind,
            info.spec.participant.clone(),
            u8::try_from(layers).unwrap_or(u8::MAX),
        );
        let interval = ctx.shared.config.keyframe_request_interval;
        info!(track = %id, mid = %added.mid, kind = kind.as_str(), layers, "track published");
        info.emit(PeerEvent::TrackPublished {
            peer: info.id,
            track: TrackInfo {
                id,
                participant: info.spec.participant.clone(),
                kind,
                mid: added.mid.to_string(),
                simulcast: rids.iter().map(|r| r.to_string()).collect(),
            },
        });
        self.tracks.push(PublishedTrack {
            mid: added.mid,
            route,
            rids,
            throttles: (0..layers)
                .map(|_| KeyframeThrottle::new(interval))
                .collect(),
            meter: (kind == TrackKind::Audio).then(AudioLevelMeter::default),
            layer_bytes: [0; MAX_LAYERS],
            sampled_at: None,
            dynacast: (kind == TrackKind::Video && layers > 1)
                .then(|| Dynacast::new(u8::try_from(layers).unwrap_or(u8::MAX), ctx.now)),
            muted: false,
            resume_at_keyframe: 0,
            received_packets: 0,
            forwarded_packets: 0,
        });
    }

    fn unpublish(&mut self, mid: Mid, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let Some(pos) = self.tracks.iter().position(|t| t.mid == mid) else {
            return;
        };
        let track = self.tracks.remove(pos);
        self.streams
            .retain(|_, s| !Arc::ptr_eq(&s.route, &track.route));
        end_track(&track.route, info, ctx);
    }

    /// Unpublishes everything (the peer is going away).
    pub(crate) fn teardown(&mut self, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        self.streams.clear();
        for track in self.tracks.drain(..) {
            end_track(&track.route, info, ctx);
        }
    }

    /// The hot path: one incoming RTP packet to every subscriber that wants its layer.
    fn forward(&mut self, rtc: &mut Rtc, packet: RtpPacket, ctx: &mut Ctx<'_>) {
        WorkerCounters::add(&ctx.counters().rtp_received, 1);
        let ssrc = packet.header.ssrc;
        if !self.streams.contains_key(&ssrc) {
            let Some(stream) = self.resolve_stream(rtc, ssrc) else {
                WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                return;
            };
            // One SSRC per layer: a publisher that changes SSRCs replaces its old ones, so
            // the map stays as small as its tracks and layers.
            self.streams
                .retain(|_, s| !(s.route.id == stream.route.id && s.layer == stream.layer));
            self.streams.insert(ssrc, stream);
        }
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            return;
        };
        let pt = packet.header.payload_type;
        let params = match stream.codec {
            Some((cached, params)) if cached == pt => params,
            _ => {
                let Some(params) = rtc.codec_config().find(|p| p.pt() == pt).copied() else {
                    WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                    return;
                };
                stream.codec = Some((pt, params));
                params
            }
        };
        let codec = params.spec().codec;
        let keyframe = starts_keyframe(codec, &packet.payload);
        let temporal = (codec == Codec::Vp8)
            .then(|| vp8_temporal(&packet.payload))
            .flatten();
        if temporal.is_some() && !stream.route.has_temporal.load(Ordering::Relaxed) {
            stream.route.has_temporal.store(true, Ordering::Relaxed);
        }
        let layer = stream.layer;
        let ext = &packet.header.ext_vals;
        let Some(track) = self
            .tracks
            .iter_mut()
            .find(|t| Arc::ptr_eq(&t.route, &stream.route))
        else {
            return;
        };
        {
            if keyframe && let Some(throttle) = track.throttles.get_mut(usize::from(layer)) {
                throttle.on_keyframe();
                if codec == Codec::Vp8
                    && let Some(size) = vp8_keyframe_size(&packet.payload)
                {
                    track.route.set_layer_size(layer, size);
                }
            }
            if let Some(meter) = &mut track.meter {
                meter.on_packet(ext.audio_level, ext.voice_activity, ctx.now);
            }
            if let Some(bytes) = track.layer_bytes.get_mut(usize::from(layer)) {
                *bytes += packet.payload.len() as u64;
            }
            track.sampled_at.get_or_insert(ctx.now);
        }
        track.received_packets += 1;
        if track.muted {
            return;
        }
        let bit = 1u32 << u32::from(layer.min(31));
        if track.resume_at_keyframe & bit != 0 {
            if !keyframe {
                return;
            }
            track.resume_at_keyframe &= !bit;
        }
        let subscribers = stream.route.subscribers();
        if subscribers.is_empty() {
            return;
        }
        let capture = packet.last_sender_info.map(|sr| {
            let clock = params.spec().clock_rate;
            let ntp = sr
                .ntp_time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let sr_rtp = sr.rtp_time.rebase(clock).numer() as u32;
            // Signed distance in the 32-bit RTP space: right within ~6 hours at 90 kHz.
            let delta = packet.header.timestamp.wrapping_sub(sr_rtp) as i32;
            ntp + f64::from(delta) / f64::from(clock.get())
        });
        let forwarded = Arc::new(ForwardedPacket {
            track: stream.route.id,
            layer,
            params,
            seq: *packet.seq_no,
            ts: packet.header.timestamp,
            marker: packet.header.marker,
            keyframe,
            temporal,
            payload: packet.payload,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            arrival: packet.timestamp,
            capture,
        });
        let mut delivered = false;
        for link in subscribers.iter() {
            if link.layers.load(Ordering::Relaxed) & bit != 0 {
                delivered = true;
                ctx.deliver(
                    link.at,
                    Delivery::Rtp {
                        to: link.at.peer,
                        packet: forwarded.clone(),
                    },
                );
            }
        }
        track.forwarded_packets += u64::from(delivered);
    }

    /// Mutes (or unmutes) a track: from the next packet on, nothing of it is forwarded. A
    /// video track unmuted resumes each layer at its next keyframe, asked for at once.
    /// Returns its counters at this moment, or `None` if this peer does not publish it.
    pub(crate) fn set_muted(
        &mut self,
        rtc: &mut Rtc,
        track: TrackId,
        muted: bool,
        ctx: &mut Ctx<'_>,
    ) -> Option<TrackCounters> {
        let t = self.tracks.iter_mut().find(|t| t.route.id == track)?;
        if t.muted != muted {
            info!(%track, muted, "track mute set by the control plane");
            if !muted && t.route.kind == TrackKind::Video {
                let layers = t.throttles.len().clamp(1, 32);
                t.resume_at_keyframe = u32::MAX >> (32 - layers);
                for layer in 0..layers {
                    t.ask_keyframe(rtc, layer, true, ctx);
                }
            }
        }
        t.muted = muted;
        Some(t.counters())
    }

    /// A published track's counters.
    pub(crate) fn counters(&self, track: TrackId) -> Option<TrackCounters> {
        self.tracks
            .iter()
            .find(|t| t.route.id == track)
            .map(PublishedTrack::counters)
    }

    /// Finds the track and layer of a new incoming SSRC.
    fn resolve_stream(&self, rtc: &mut Rtc, ssrc: Ssrc) -> Option<IngressStream> {
        let mut api = rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        let (mid, rid) = (rx.mid(), rx.rid());
        let track = self.tracks.iter().find(|t| t.mid == mid)?;
        let layer = match rid {
            Some(rid) => track.rids.iter().position(|r| *r == rid)?,
            None => 0,
        };
        let layer = u8::try_from(layer).ok()?;
        track.route.mark_layer_active(layer);
        Some(IngressStream {
            layer,
            route: track.route.clone(),
            codec: None,
        })
    }

    /// A subscriber wants a keyframe (of a layer it wants: resumed if dynacast paused it).
    pub(crate) fn handle_delivery(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        delivery: Delivery,
        ctx: &mut Ctx<'_>,
    ) {
        let Delivery::KeyframeRequest {
            track,
            layer,
            urgent,
            ..
        } = delivery
        else {
            return;
        };
        let Some(t) = self
            .tracks
            .iter_mut()
            .find(|t| t.route.id == track && t.route.kind == TrackKind::Video)
        else {
            return;
        };
        if let Some(paused) = t.dynacast.as_mut().and_then(|d| d.demand(layer, ctx.now)) {
            WorkerCounters::add(&ctx.counters().layers_resumed, 1);
            announce_layers(t, paused, info);
        }
        if t.ask_keyframe(rtc, usize::from(layer), urgent, ctx) && urgent {
            WorkerCounters::add(&ctx.counters().urgent_keyframe_requests, 1);
        }
    }

    /// Sends coalesced keyframe requests and audio levels that are due. Returns whether it
    /// changed the state machine (which must then be drained).
    pub(crate) fn handle_timeout(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let mut mutated = false;
        for t in &mut self.tracks {
            sample_rates(t, ctx.now);
            run_dynacast(t, info, ctx);
            if let Some(level) = t.meter.as_mut().and_then(|m| m.poll(ctx.now)) {
                info.emit(PeerEvent::AudioLevel {
                    peer: info.id,
                    track: t.route.id,
                    level,
                });
            }
            for (layer, throttle) in t.throttles.iter_mut().enumerate() {
                if throttle.poll(ctx.now) {
                    let rid = t.rids.get(layer).copied();
                    request_keyframe(rtc, t.mid, rid, ctx);
                    mutated = true;
                }
            }
        }
        mutated
    }
}

/// Pauses the layers of a simulcast track that nobody has wanted for a while.
fn run_dynacast(t: &mut PublishedTrack, info: &PeerInfo, ctx: &Ctx<'_>) {
    let Some(dynacast) = t.dynacast.as_mut() else {
        return;
    };
    if dynacast.deadline() > ctx.now {
        return;
    }
    let wanted = t.route.subscribers().iter().fold(0, |all, link| {
        all | link.layers.load(Ordering::Relaxed) | link.demand.load(Ordering::Relaxed)
    });
    let before = dynacast.paused();
    if let Some(paused) = dynacast.poll(ctx.now, wanted) {
        let newly = u64::from((paused & !before).count_ones());
        WorkerCounters::add(&ctx.counters().layers_paused, newly);
        announce_layers(t, paused, info);
    }
}

/// Records which layers are paused and asks the publisher (through the control plane) to
/// send only the others.
fn announce_layers(t: &PublishedTrack, paused: u32, info: &PeerInfo) {
    t.route.paused_layers.store(paused, Ordering::Relaxed);
    let active = t
        .dynacast
        .as_ref()
        .map(Dynacast::active_list)
        .unwrap_or_default();
    debug!(track = %t.route.id, ?active, "dynacast: layers wanted");
    info.emit(PeerEvent::LayersWanted {
        peer: info.id,
        track: t.route.id,
        active,
    });
}

/// Layer bitrates are measured over this period.
const RATE_SAMPLE: Duration = Duration::from_millis(500);
/// Weight of a new sample in a layer's smoothed bitrate.
const RATE_SMOOTHING: f64 = 0.25;

/// Updates a track's measured layer bitrates (smoothed) when a sample period has passed.
fn sample_rates(t: &mut PublishedTrack, now: Instant) {
    let Some(at) = t.sampled_at else {
        return;
    };
    let elapsed = now.saturating_duration_since(at);
    if elapsed < RATE_SAMPLE {
        return;
    }
    let seconds = elapsed.as_secs_f64();
    let previous = t.route.layer_rates();
    for (layer, bytes) in t.layer_bytes.iter_mut().enumerate() {
        if *bytes == 0 {
            // Paused or not sent: its last rate is the best guess of what it costs.
            continue;
        }
        let sample = (*bytes * 8) as f64 / seconds;
        let old = previous.get(layer).copied().unwrap_or(0) as f64;
        // A moving average over about two seconds: keyframes and encoder bursts do not make
        // the allocator's costs (and so its choices) jump.
        let smoothed = if old == 0.0 {
            sample
        } else {
            old + RATE_SMOOTHING * (sample - old)
        };
        t.route.set_layer_rate(layer, smoothed as u64);
        *bytes = 0;
    }
    t.sampled_at = Some(now);
}

fn request_keyframe(rtc: &mut Rtc, mid: Mid, rid: Option<Rid>, ctx: &mut Ctx<'_>) {
    let mut api = rtc.direct_api();
    if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
        rx.request_keyframe(KeyframeRequestKind::Pli);
        WorkerCounters::add(&ctx.counters().keyframe_requests_sent, 1);
        debug!(%mid, ?rid, "keyframe requested from publisher");
    }
}

/// Removes a track from the graph and tells its subscribers and the control plane.
fn end_track(route: &Arc<TrackRoute>, info: &PeerInfo, ctx: &mut Ctx<'_>) {
    ctx.shared.graph.unpublish(route.id);
    for link in route.subscribers().iter() {
        ctx.deliver(
            link.at,
            Delivery::TrackEnded {
                to: link.at.peer,
                track: route.id,
            },
        );
    }
    info!(track = %route.id, "track unpublished");
    info.emit(PeerEvent::TrackUnpublished {
        peer: info.id,
        track: route.id,
    });
}

/// Sends a data message to every other participant of the room.
fn relay_data(info: &PeerInfo, message: Arc<crate::packet::DataMessage>, ctx: &mut Ctx<'_>) {
    let receivers = ctx
        .shared
        .rooms
        .get(&info.spec.room)
        .map(|r| r.data_receivers.clone())
        .unwrap_or_default();
    for r in receivers {
        if r.participant != info.spec.participant {
            ctx.deliver(
                r.at,
                Delivery::Data {
                    to: r.at.peer,
                    message: message.clone(),
                },
            );
        }
    }
}

/// Orders simulcast RIDs from lowest to highest quality. Layers named with the usual
/// conventions (`q`/`h`/`f`, `l`/`m`/`h`, `low`/`mid`/`high`, `0`/`1`/`2`) are sorted by
/// name; otherwise the publisher's order is kept (which browsers take from `sendEncodings`).
fn order_layers(mut rids: Vec<Rid>) -> Vec<Rid> {
    fn rank(rid: &str, names: &[&str]) -> Option<usize> {
        names.iter().position(|n| *n == rid)
    }
    const CONVENTIONS: [&[&str]; 4] = [
        &["q", "h", "f"],
        &["l", "m", "h"],
        &["low", "mid", "high"],
        &["0", "1", "2"],
    ];
    for names in CONVENTIONS {
        if rids.iter().all(|r| rank(r, names).is_some()) {
            rids.sort_by_key(|r| rank(r, names));
            return rids;
        }
    }
    rids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(names: &[&str]) -> Vec<Rid> {
        names.iter().map(|n| Rid::from(*n)).collect()
    }

    #[test]
    fn layers_are_ordered_low_to_high() {
        assert_eq!(order_layers(rids(&["f", "h", "q"])), rids(&["q", "h", "f"]));
        assert_eq!(order_layers(rids(&["h", "l"])), rids(&["l", "h"]));
        assert_eq!(order_layers(rids(&["b", "a"])), rids(&["b", "a"]));
    }
}
