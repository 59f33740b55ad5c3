//! One relay ingress: the edge's stand-in for the publishers of another node. Each track it
//! publishes is an ordinary published track of this node's forwarding graph ([`PublishedTrack`]:
//! its subscribers, their layers, dynacast, keyframe throttling), fed with the packets a relay
//! egress at the origin wrote ([`rtp`]) instead of a client's RTP. Its keyframe requests go
//! back to the origin (through the control plane) rather than to a client; its dynacast says
//! which layers the origin should keep sending, as `LayersWanted` events.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, Mid, Rid};
use str0m::rtp::VideoOrientation;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::rtp;
use crate::allocator::MAX_LAYERS;
use crate::counters::WorkerCounters;
use crate::event::{PeerEvent, TrackInfo, TrackKind};
use crate::ids::TrackId;
use crate::keyframe::vp8_keyframe_size;
use crate::packet::{Delivery, ForwardedPacket, SvcFrame};
use crate::peer::publisher::track::{PublishedTrack, Upstream, apply_delivery};
use crate::peer::{Ctx, PeerInfo};

/// Tracks one relay ingress may publish.
pub(crate) const MAX_INGRESS_TRACKS: usize = 1024;
/// Payload types one relayed track may use.
const MAX_CODECS: usize = 16;

/// One payload format of a relayed track, as the origin's publisher negotiated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCodec {
    /// Its payload type in the relayed packets.
    pub pt: u8,
    /// Codec name as in SDP (`opus`, `VP8`, ...).
    pub name: String,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels.
    pub channels: Option<u8>,
    /// Format parameters (`a=fmtp`).
    pub fmtp: String,
}

impl RelayCodec {
    /// The description of a payload format the forwarding graph holds; `None` for formats
    /// that are not a media codec (retransmissions, RED, which travel folded into theirs).
    pub(crate) fn of(params: &PayloadParams) -> Option<Self> {
        let spec = params.spec();
        if matches!(
            spec.codec,
            Codec::Rtx | Codec::Red | Codec::Null | Codec::Unknown
        ) {
            return None;
        }
        Some(Self {
            pt: *params.pt(),
            name: spec.codec.to_string(),
            clock_rate: spec.clock_rate.get(),
            channels: spec.channels,
            fmtp: spec.format.to_string(),
        })
    }

    /// The codec as the forwarding graph holds it; `None` for a codec this server does not
    /// forward.
    fn params(&self) -> Option<PayloadParams> {
        let codec = Codec::from(self.name.as_str());
        if matches!(codec, Codec::Unknown | Codec::Rtx | Codec::Null) || self.pt > 127 {
            return None;
        }
        let spec = CodecSpec {
            codec,
            clock_rate: Frequency::from_nonzero(std::num::NonZeroU32::new(self.clock_rate)?),
            channels: self.channels,
            format: FormatParams::parse_line(&self.fmtp),
        };
        Some(PayloadParams::new(self.pt.into(), None, spec))
    }
}

/// What the edge asks the origin for, about one relayed track (as this node knows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayRequest {
    /// A keyframe of `layer` (its viewers need one; coalesced and throttled per layer).
    Keyframe {
        /// The track.
        track: TrackId,
        /// Its layer.
        layer: u8,
    },
    /// These packets of `layer` did not arrive: send them again (at most
    /// [`MAX_NACK`] sequence numbers, the publisher's).
    Nack {
        /// The track.
        track: TrackId,
        /// Its layer.
        layer: u8,
        /// The missing sequence numbers.
        seqs: Vec<u16>,
    },
    /// A data message of this node's members (wrapped with its sender's identity), for the
    /// host's room.
    Data {
        /// Binary (or text).
        binary: bool,
        /// The wrapped message.
        bytes: Vec<u8>,
    },
}

/// Sequence numbers one loss report names at most (a longer gap is an outage: what it
/// missed is older than repairs help, and its viewers ask for a keyframe).
pub const MAX_NACK: usize = 64;

/// A relayed track and what reading its packets needs.
struct IngressTrack {
    track: PublishedTrack,
    codecs: Vec<PayloadParams>,
    /// The newest extended sequence number seen per layer.
    newest: [Option<u64>; MAX_LAYERS],
}

/// Sends relayed tracks' keyframe requests to the origin.
struct ToOrigin<'a> {
    requests: &'a mpsc::Sender<RelayRequest>,
}

impl Upstream for ToOrigin<'_> {
    fn request_keyframe(
        &mut self,
        track: TrackId,
        _mid: Mid,
        _rid: Option<Rid>,
        layer: usize,
        ctx: &mut Ctx<'_>,
    ) {
        let layer = u8::try_from(layer).unwrap_or(u8::MAX);
        let request = RelayRequest::Keyframe { track, layer };
        if self.requests.try_send(request).is_ok() {
            WorkerCounters::add(&ctx.counters().keyframe_requests_sent, 1);
            debug!(%track, layer, "keyframe requested from the origin node");
        }
    }
}

/// The stand-in, in this worker, for another node's publishers of one room.
pub(crate) struct RelayIngress {
    pub(crate) info: PeerInfo,
    tracks: Vec<IngressTrack>,
    requests: mpsc::Sender<RelayRequest>,
    published: u32,
}

impl RelayIngress {
    pub(crate) fn new(info: PeerInfo, requests: mpsc::Sender<RelayRequest>) -> Self {
        Self {
            info,
            tracks: Vec::new(),
            requests,
            published: 0,
        }
    }

    /// Publishes a relayed track of `participant` in this node's graph (announced with a
    /// `TrackPublished` event like a local one).
    pub(crate) fn publish(
        &mut self,
        participant: Arc<str>,
        kind: TrackKind,
        layers: u8,
        codecs: &[RelayCodec],
        ctx: &mut Ctx<'_>,
    ) -> Result<TrackId, crate::SfuError> {
        if self.tracks.len() >= MAX_INGRESS_TRACKS {
            return Err(crate::SfuError::Config(format!(
                "a relay publishes at most {MAX_INGRESS_TRACKS} tracks"
            )));
        }
        let codecs: Vec<PayloadParams> = codecs
            .iter()
            .take(MAX_CODECS)
            .filter_map(RelayCodec::params)
            .collect();
        if codecs.is_empty() {
            return Err(crate::SfuError::Config(
                "a relayed track needs a codec this server forwards".into(),
            ));
        }
        let layers = layers.clamp(1, MAX_LAYERS as u8);
        let id = TrackId(ctx.shared.ids.next());
        let route = ctx.shared.graph.publish(
            id,
            self.info.spec.room,
            ctx.here(self.info.id),
            kind,
            participant.clone(),
            layers,
        );
        let mid = Mid::from(format!("r{}", self.published).as_str());
        self.published += 1;
        let rids: Vec<Rid> = if layers > 1 {
            (0..layers)
                .map(|l| Rid::from(l.to_string().as_str()))
                .collect()
        } else {
            Vec::new()
        };
        info!(track = %id, kind = kind.as_str(), layers, "relayed track published");
        self.info.emit(PeerEvent::TrackPublished {
            peer: self.info.id,
            track: TrackInfo {
                id,
                participant,
                kind,
                mid: mid.to_string(),
                simulcast: rids.iter().map(|r| r.to_string()).collect(),
            },
        });
        self.tracks.push(IngressTrack {
            track: PublishedTrack::new(
                mid,
                route,
                rids,
                ctx.shared.config.keyframe_request_interval,
                ctx.now,
            ),
            codecs,
            newest: [None; MAX_LAYERS],
        });
        Ok(id)
    }

    /// The payload formats of a track it publishes (to relay it further).
    pub(crate) fn codecs(&self, track: TrackId) -> Option<Vec<RelayCodec>> {
        let t = self.tracks.iter().find(|t| t.track.route.id == track)?;
        Some(t.codecs.iter().filter_map(RelayCodec::of).collect())
    }

    /// Unpublishes a relayed track (it ended at the origin, or the link went away).
    pub(crate) fn unpublish(&mut self, track: TrackId, ctx: &mut Ctx<'_>) {
        if let Some(pos) = self.tracks.iter().position(|t| t.track.route.id == track) {
            let t = self.tracks.remove(pos);
            t.track.end(&self.info, ctx);
        }
    }

    /// Unpublishes everything (the relay is going away).
    pub(crate) fn teardown(&mut self, ctx: &mut Ctx<'_>) {
        for t in self.tracks.drain(..) {
            t.track.end(&self.info, ctx);
        }
    }

    /// The earliest moment a track has work to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.tracks.iter().filter_map(|t| t.track.deadline()).min()
    }

    /// Mutes (or unmutes) a relayed track here (the room's administrator did): its packets
    /// stop at this node, as a local publisher's would.
    pub(crate) fn set_muted(
        &mut self,
        track: TrackId,
        muted: bool,
        ctx: &mut Ctx<'_>,
    ) -> Option<crate::event::TrackCounters> {
        let mut origin = ToOrigin {
            requests: &self.requests,
        };
        let t = self.tracks.iter_mut().find(|t| t.track.route.id == track)?;
        t.track.set_muted(&mut origin, muted, ctx);
        Some(t.track.counters())
    }

    /// Periodic work of every track (rates, dynacast, audio levels, throttled requests).
    pub(crate) fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let mut origin = ToOrigin {
            requests: &self.requests,
        };
        for t in &mut self.tracks {
            t.track.on_timeout(&mut origin, &self.info, ctx);
        }
    }

    /// A subscriber of this node joins, changes or leaves a relayed track, or wants a
    /// keyframe of it.
    pub(crate) fn handle_delivery(&mut self, delivery: Delivery, ctx: &mut Ctx<'_>) {
        if let Delivery::Data { message, .. } = &delivery {
            let data = RelayRequest::Data {
                binary: message.binary,
                bytes: message.bytes.clone(),
            };
            if self.requests.try_send(data).is_err() {
                WorkerCounters::add(&ctx.counters().data_dropped, 1);
            }
            return;
        }
        let mut origin = ToOrigin {
            requests: &self.requests,
        };
        let tracks = self.tracks.iter_mut().map(|t| &mut t.track);
        apply_delivery(tracks, delivery, &mut origin, &self.info, ctx);
    }

    /// One packet from the origin for `track`: read, accounted and fanned out as a local
    /// publisher's would be. A packet that does not read, or names a layer or payload type
    /// the track does not have, is dropped and counted.
    pub(crate) fn on_packet(&mut self, track: TrackId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let counters = ctx.counters();
        WorkerCounters::add(&counters.relay_packets_received, 1);
        let Some(t) = self.tracks.iter_mut().find(|t| t.track.route.id == track) else {
            WorkerCounters::add(&counters.relay_packets_refused, 1);
            return;
        };
        let Ok(p) = rtp::decode(bytes) else {
            WorkerCounters::add(&counters.relay_packets_refused, 1);
            return;
        };
        let Some(params) = t.codecs.iter().find(|c| *c.pt() == p.pt).copied() else {
            WorkerCounters::add(&counters.relay_packets_refused, 1);
            return;
        };
        let svc = p.svc.map(|(start, end, temporal)| SvcFrame {
            start,
            end,
            temporal,
        });
        let Some(newest) = t.newest.get_mut(usize::from(p.layer)) else {
            WorkerCounters::add(&counters.relay_packets_refused, 1);
            return;
        };
        {
            let route = &t.track.route;
            if svc.is_some() {
                // A scalable stream's spatial layers are learned from its packets.
                if !route.is_scalable() {
                    route.set_scalable();
                }
                if p.layer >= route.layer_count() {
                    route.set_layer_count(p.layer + 1);
                }
            } else if p.layer >= route.layer_count() {
                WorkerCounters::add(&counters.relay_packets_refused, 1);
                return;
            }
            if route.active_layers.load(Ordering::Relaxed) & 1 << p.layer == 0 {
                route.mark_layer_active(p.layer);
            }
            let tid = p.temporal.map(|(tid, ..)| tid).or(svc.map(|s| s.temporal));
            if tid.is_some_and(|t| t > 0) && !route.has_temporal.load(Ordering::Relaxed) {
                route.has_temporal.store(true, Ordering::Relaxed);
            }
        }
        let before = *newest;
        let seq = extend(newest, p.seq);
        if let Some(last) = before
            && seq > last + 1
        {
            // A gap on the link: ask the origin to send what is missing again.
            let missing = seq - last - 1;
            if missing as usize <= MAX_NACK {
                let seqs = (last + 1..seq).map(|s| s as u16).collect();
                let nack = RelayRequest::Nack {
                    track,
                    layer: p.layer,
                    seqs,
                };
                if self.requests.try_send(nack).is_ok() {
                    WorkerCounters::add(&counters.relay_nacks_sent, 1);
                }
            }
        }
        if p.keyframe {
            t.track.on_keyframe(if svc.is_some() { 0 } else { p.layer });
            if params.spec().codec == Codec::Vp8
                && let Some(size) = vp8_keyframe_size(p.payload)
            {
                t.track.route.set_layer_size(p.layer, size);
            }
        }
        let (audio_level, voice_activity) = match p.audio_level {
            Some((level, vad)) => (Some(level), vad),
            None => (None, None),
        };
        if let Some(meter) = &mut t.track.meter {
            meter.on_packet(audio_level, voice_activity, ctx.now);
        }
        t.track.on_received(p.layer, p.payload.len(), ctx.now);
        if !t.track.admits(p.layer, p.ts, p.keyframe) {
            return;
        }
        let forwarded = Arc::new(ForwardedPacket {
            track,
            layer: p.layer,
            params,
            seq,
            ts: p.ts,
            marker: p.marker,
            keyframe: p.keyframe,
            red: p.red,
            temporal: p.temporal.map(|(tid, layer_sync, frame_start)| {
                crate::keyframe::Vp8Temporal {
                    tid,
                    layer_sync,
                    frame_start,
                }
            }),
            svc,
            descriptor: None,
            payload: Arc::from(p.payload),
            audio_level,
            voice_activity,
            video_orientation: p.orientation.map(VideoOrientation::from),
            arrival: ctx.now,
            capture: p.capture,
        });
        t.track.fan_out(&forwarded, ctx);
    }
}

/// Extends a 16-bit sequence number against the newest one seen (the nearest 64-bit value,
/// as RFC 3550 unwraps it), and records it if newer.
fn extend(newest: &mut Option<u64>, seq: u16) -> u64 {
    let Some(last) = *newest else {
        let first = (1u64 << 16) | u64::from(seq); // room below for late packets
        *newest = Some(first);
        return first;
    };
    let delta = i64::from(seq.wrapping_sub(last as u16) as i16);
    let extended = (last as i64 + delta).max(0) as u64;
    if extended > last {
        *newest = Some(extended);
    }
    extended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_extend_across_the_wrap_and_late_packets_stay_behind() {
        let mut newest = None;
        let first = extend(&mut newest, 65_534);
        assert_eq!(extend(&mut newest, 65_535), first + 1);
        assert_eq!(extend(&mut newest, 0), first + 2, "across the wrap");
        assert_eq!(extend(&mut newest, 65_535), first + 1, "a late one");
        assert_eq!(newest, Some(first + 2));
        assert_eq!(extend(&mut newest, 5), first + 7, "after a gap");
    }

    #[test]
    fn codecs_this_server_does_not_forward_are_left_out() {
        let codec = |name: &str| RelayCodec {
            pt: 96,
            name: name.into(),
            clock_rate: 90_000,
            channels: None,
            fmtp: "profile-id=0".into(),
        };
        assert!(codec("VP8").params().is_some());
        let params = codec("VP8").params().expect("VP8");
        let back = RelayCodec::of(&params).expect("described");
        assert_eq!(
            (back.pt, back.name.as_str(), back.clock_rate),
            (96, "VP8", 90_000)
        );
        assert!(codec("rtx").params().is_none());
        assert!(codec("nonsense").params().is_none());
        assert!(
            RelayCodec {
                clock_rate: 0,
                ..codec("VP8")
            }
            .params()
            .is_none()
        );
        assert!(
            RelayCodec {
                pt: 200,
                ..codec("VP8")
            }
            .params()
            .is_none()
        );
    }
}
