//! The publishing side of a peer: the tracks the client sends, each one owned here
//! ([`track`]: its subscribers, keyframe requests, layer rates, dynacast, mute, and the
//! latest group of pictures a joining subscriber starts with, [`start_cache`]), and each
//! incoming RTP packet resolved to its track and layer and fanned out.

mod start_cache;
pub(crate) mod track;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaAdded, MediaKind, Mid, Pt, Rid, Rids, Simulcast, SimulcastLayer};
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Event, Rtc};
use tracing::{debug, info};

use self::track::PublishedTrack;
use super::{Ctx, PeerInfo};
use crate::counters::WorkerCounters;
use crate::data_relay;
use crate::dependency_descriptor::{DescriptorReader, RawDescriptor};
use crate::event::{PeerEvent, TrackCounters, TrackInfo, TrackKind};
use crate::graph::{TrackRoute, TrackSnapshot};
use crate::ids::TrackId;
use crate::keyframe::{Vp8Temporal, starts_keyframe, vp8_keyframe_size, vp8_temporal, vp9_layers};
use crate::packet::{Delivery, ForwardedPacket, SvcFrame};

/// Publisher state of a peer.
pub(crate) struct Publisher {
    tracks: Vec<PublishedTrack>,
    /// Incoming SSRC -> where its packets go. Filled on a stream's first packet.
    streams: HashMap<Ssrc, IngressStream>,
    /// The m-lines whose Dependency Descriptor the latest answer kept.
    descriptor_mids: Vec<String>,
}

struct IngressStream {
    layer: u8,
    route: Arc<TrackRoute>,
    /// The last payload type seen and its codec (one lookup per codec change, not per packet).
    codec: Option<(Pt, PayloadParams)>,
    /// Its Dependency Descriptors, read with the structure of its latest keyframe (each
    /// simulcast stream has its own).
    descriptors: DescriptorReader,
}

impl Publisher {
    pub(crate) fn new() -> Self {
        Self {
            tracks: Vec::new(),
            streams: HashMap::new(),
            descriptor_mids: Vec::new(),
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.tracks
            .iter()
            .filter_map(PublishedTrack::deadline)
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
        self.mark_descriptor(added.mid, &route);
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
        self.tracks.push(PublishedTrack::new(
            added.mid,
            route,
            rids,
            ctx.shared.config.keyframe_request_interval,
            ctx.now,
        ));
    }

    fn unpublish(&mut self, mid: Mid, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        let Some(pos) = self.tracks.iter().position(|t| t.mid == mid) else {
            return;
        };
        let track = self.tracks.remove(pos);
        self.streams
            .retain(|_, s| !Arc::ptr_eq(&s.route, &track.route));
        track.end(info, ctx);
    }

    /// Unpublishes everything (the peer is going away).
    pub(crate) fn teardown(&mut self, info: &PeerInfo, ctx: &mut Ctx<'_>) {
        self.streams.clear();
        for track in self.tracks.drain(..) {
            track.end(info, ctx);
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
                // A RED payload type (RFC 2198) stands for its primary codec.
                let Some(params) = rtc
                    .codec_config()
                    .find(|p| p.pt() == pt || p.red() == Some(pt))
                    .copied()
                else {
                    WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                    return;
                };
                stream.codec = Some((pt, params));
                params
            }
        };
        let codec = params.spec().codec;
        let red = params.pt() != pt;
        if red {
            WorkerCounters::add(&ctx.counters().rtp_red_received, 1);
        }
        let keyframe = starts_keyframe(codec, &packet.payload);
        let ext = &packet.header.ext_vals;
        // Looked up only for the codecs that read it (not per audio or plain VP8 packet).
        let raw_descriptor = || ext.user_values.get_arc::<RawDescriptor>();
        let temporal = match codec {
            // Chromium leaves the temporal fields out of VP8's payload descriptor when the
            // Dependency Descriptor is negotiated: then they come from it.
            Codec::Vp8 => vp8_temporal(&packet.payload).or_else(|| {
                let (layers, _) = stream.descriptors.read(raw_descriptor()?)?;
                Some(Vp8Temporal {
                    tid: layers.temporal,
                    layer_sync: layers.temporal == 0,
                    frame_start: layers.frame_start,
                })
            }),
            _ => None,
        };
        if temporal.is_some_and(|t| t.tid > 0) && !stream.route.has_temporal.load(Ordering::Relaxed)
        {
            stream.route.has_temporal.store(true, Ordering::Relaxed);
        }
        let Some(track) = self
            .tracks
            .iter_mut()
            .find(|t| Arc::ptr_eq(&t.route, &stream.route))
        else {
            return;
        };
        // A scalable stream (one SSRC, no simulcast): its spatial layers are the layers, read
        // from the VP9 payload descriptor, or from the Dependency Descriptor when an AV1 or
        // H264 stream carries one (VP8's temporal layers are read above).
        let mut descriptor = None;
        let svc = match codec {
            Codec::Vp9 if track.rids.is_empty() => vp9_layers(&packet.payload),
            Codec::Av1 | Codec::H264 if track.rids.is_empty() => {
                match raw_descriptor() {
                    Some(raw) => {
                        let Some((layers, forwarded)) = stream.descriptors.read(raw) else {
                            // Its layer is unknown until the structure is (a keyframe's).
                            WorkerCounters::add(&ctx.counters().rtp_not_forwarded, 1);
                            return;
                        };
                        descriptor = Some(forwarded);
                        Some(layers)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        // Without a readable payload (end-to-end encrypted), a frame that carries the
        // descriptor's structure starts a keyframe.
        let keyframe = keyframe
            || descriptor.is_some()
                && svc.is_some_and(|l| l.frame_start && l.spatial == 0 && l.structure.is_some());
        let layer = match &svc {
            Some(layers) => track.on_svc_packet(layers),
            None => stream.layer,
        };
        if keyframe {
            // Answers the keyframe requests of the stream (all spatial layers of an SVC one).
            track.on_keyframe(stream.layer);
            if codec == Codec::Vp8
                && let Some(size) = vp8_keyframe_size(&packet.payload)
            {
                track.route.set_layer_size(layer, size);
            }
        }
        if let Some(meter) = &mut track.meter {
            meter.on_packet(ext.audio_level, ext.voice_activity, ctx.now);
        }
        track.on_received(layer, packet.payload.len(), ctx.now);
        if !track.admits(stream.layer, packet.header.timestamp, keyframe) {
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
            red,
            temporal,
            svc: svc.map(|l| SvcFrame {
                start: l.frame_start,
                end: l.frame_end,
                temporal: l.temporal,
            }),
            descriptor,
            payload: packet.payload,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            arrival: packet.timestamp,
            capture,
        });
        track.fan_out(&forwarded, ctx);
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
        t.set_muted(rtc, muted, ctx);
        Some(t.counters())
    }

    /// The tracks on these m-lines carry the Dependency Descriptor (their publisher's answer
    /// kept it): their subscribers are offered it too.
    pub(crate) fn mark_descriptor_mids(&mut self, mids: Vec<String>) {
        self.descriptor_mids = mids;
        for track in &self.tracks {
            self.mark_descriptor(track.mid, &track.route);
        }
    }

    fn mark_descriptor(&self, mid: Mid, route: &TrackRoute) {
        if self.descriptor_mids.iter().any(|m| m.as_str() == &*mid) {
            route.set_carries_descriptor();
        }
    }

    /// The payload formats a published track's packets may carry, as negotiated with its
    /// publisher (for another node that relays it).
    pub(crate) fn codecs(
        &self,
        rtc: &Rtc,
        track: TrackId,
    ) -> Option<Vec<crate::relay::RelayCodec>> {
        let t = self.tracks.iter().find(|t| t.route.id == track)?;
        let media = rtc.media(t.mid)?;
        let codecs = media
            .remote_pts()
            .iter()
            .filter_map(|pt| rtc.codec_config().find(|p| p.pt() == *pt))
            .filter_map(crate::relay::RelayCodec::of)
            .collect();
        Some(codecs)
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
            descriptors: DescriptorReader::default(),
        })
    }

    /// Every published track and who receives it.
    pub(crate) fn snapshot(&self) -> impl Iterator<Item = TrackSnapshot> + '_ {
        self.tracks.iter().map(PublishedTrack::snapshot)
    }

    /// A subscriber joins, changes or leaves a track, or wants a keyframe of a layer. One who
    /// wants a track that is no longer published hears that it ended.
    pub(crate) fn handle_delivery(
        &mut self,
        rtc: &mut Rtc,
        info: &PeerInfo,
        delivery: Delivery,
        ctx: &mut Ctx<'_>,
    ) {
        track::apply_delivery(self.tracks.iter_mut(), delivery, rtc, info, ctx);
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
            mutated |= t.on_timeout(rtc, info, ctx);
        }
        mutated
    }
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
