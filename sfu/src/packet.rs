//! What travels between peers: media from a publisher's worker to its subscribers' workers,
//! and a subscriber's wishes (join, layers, keyframes, leave) back to the track's owner.
//!
//! An ingress RTP packet becomes one reference-counted [`ForwardedPacket`] (its payload is the
//! `Arc<[u8]>` str0m already allocated), shared by every subscriber however many there are and
//! whichever worker they are on. Everything a subscriber needs to rewrite and re-send it is in
//! it, so the subscriber's worker never looks at the publisher's state.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::PayloadParams;
use str0m::rtp::VideoOrientation;

use crate::dependency_descriptor::ForwardedDescriptor;
use crate::graph::PeerLocation;
use crate::ids::{PeerId, TrackId};

/// One RTP packet of a published track, as every subscriber receives it.
#[derive(Debug)]
pub(crate) struct ForwardedPacket {
    pub(crate) track: TrackId,
    /// Simulcast layer index (0 without simulcast).
    pub(crate) layer: u8,
    /// The publisher's codec parameters for this packet's payload type.
    pub(crate) params: PayloadParams,
    /// Extended (64-bit) incoming sequence number.
    pub(crate) seq: u64,
    /// Incoming RTP timestamp.
    pub(crate) ts: u32,
    pub(crate) marker: bool,
    /// The packet starts a keyframe (always true for audio).
    pub(crate) keyframe: bool,
    /// The payload is RFC 2198 RED around `params`' codec (redundant audio).
    pub(crate) red: bool,
    /// VP8 temporal layer information, when the publisher sends temporal layers.
    pub(crate) temporal: Option<crate::keyframe::Vp8Temporal>,
    /// The frame boundaries of a packet of a scalable (SVC) stream, which carries every
    /// spatial layer on one SSRC; `layer` is then its spatial layer.
    pub(crate) svc: Option<SvcFrame>,
    /// The Dependency Descriptor of a scalable AV1 stream's packet, for subscribers to pass on
    /// with their own active layers.
    pub(crate) descriptor: Option<ForwardedDescriptor>,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) audio_level: Option<i8>,
    pub(crate) voice_activity: Option<bool>,
    pub(crate) video_orientation: Option<VideoOrientation>,
    /// When the packet arrived at the server.
    pub(crate) arrival: Instant,
    /// When the publisher captured it (seconds since the Unix epoch), from its latest sender
    /// report: lines up the layers of a simulcast track, and audio with video.
    pub(crate) capture: Option<f64>,
}

/// Where one packet of a scalable (SVC) stream sits in its spatial layer's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SvcFrame {
    /// First packet of the frame.
    pub(crate) start: bool,
    /// Last packet of the frame.
    pub(crate) end: bool,
    /// Its temporal layer (every spatial layer of a picture has the same).
    pub(crate) temporal: u8,
}

/// A data channel message, already wrapped with its sender's identity.
#[derive(Debug)]
pub(crate) struct DataMessage {
    pub(crate) binary: bool,
    pub(crate) bytes: Vec<u8>,
}

/// Work for a peer, produced by another peer (on the same or another worker).
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Forward an RTP packet to a subscriber.
    Rtp {
        to: PeerId,
        packet: Arc<ForwardedPacket>,
    },
    /// Start a new subscriber with a stream's packets from its latest keyframe on (the
    /// owner's start cache), in order, before the packets that follow them.
    Replay {
        to: PeerId,
        packets: Vec<Arc<ForwardedPacket>>,
    },
    /// Send a data channel message to a subscriber.
    Data {
        to: PeerId,
        message: Arc<DataMessage>,
    },
    /// A subscriber joins a track, or changes what it wants of it: the track's owner (its
    /// publisher) sends it the packets of `layers` and keeps `demand` sent (dynacast).
    Want {
        to: PeerId,
        track: TrackId,
        from: PeerLocation,
        /// Bit `i` set: forward the packets of layer `i` to this subscriber (a scalable
        /// stream's subscriber asks for every layer: it renumbers what it drops).
        layers: u32,
        /// Bit `i` set: the subscriber asks for up to layer `i` (its quality request, whatever
        /// its bandwidth allows now), so that layer is not paused.
        demand: u32,
    },
    /// A subscriber leaves a track.
    Leave {
        to: PeerId,
        track: TrackId,
        from: PeerLocation,
    },
    /// Ask a publisher for a keyframe on one layer of a track.
    KeyframeRequest {
        to: PeerId,
        track: TrackId,
        layer: u8,
        /// The subscriber shows nothing until the keyframe comes (a downgrade for bandwidth):
        /// not held back by the throttle unless a request is already answered by a keyframe
        /// on its way.
        urgent: bool,
    },
    /// A track a subscriber receives has been unpublished.
    TrackEnded { to: PeerId, track: TrackId },
}

impl Delivery {
    /// The peer this delivery is for.
    pub(crate) fn to(&self) -> PeerId {
        match self {
            Delivery::Rtp { to, .. }
            | Delivery::Replay { to, .. }
            | Delivery::Data { to, .. }
            | Delivery::Want { to, .. }
            | Delivery::Leave { to, .. }
            | Delivery::KeyframeRequest { to, .. }
            | Delivery::TrackEnded { to, .. } => *to,
        }
    }

    /// What to tell the sender if this delivery's peer is gone: a subscriber that wants a
    /// track whose publisher left hears that the track ended.
    pub(crate) fn bounce(&self) -> Option<(PeerLocation, Delivery)> {
        match self {
            Delivery::Want { track, from, .. } => Some((
                *from,
                Delivery::TrackEnded {
                    to: from.peer,
                    track: *track,
                },
            )),
            _ => None,
        }
    }

    /// Whether losing this delivery would leave state inconsistent or a viewer frozen (it
    /// must travel on the reliable control lane, not the droppable media lane). Their rate is
    /// bounded by their senders: a subscription's changes of layer and its keyframe requests.
    pub(crate) fn is_control(&self) -> bool {
        !matches!(
            self,
            Delivery::Rtp { .. } | Delivery::Replay { .. } | Delivery::Data { .. }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::{Frequency, Pt};

    use super::ForwardedPacket;

    /// A VP8 packet of layer 0 with RTP timestamp `ts`, `bytes` of payload, arrived `at`.
    pub(crate) fn video_packet(
        ts: u32,
        keyframe: bool,
        bytes: usize,
        at: Instant,
    ) -> ForwardedPacket {
        let spec = CodecSpec {
            codec: Codec::Vp8,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        ForwardedPacket {
            track: crate::ids::TrackId(1),
            layer: 0,
            params: PayloadParams::new(Pt::from(96), None, spec),
            seq: u64::from(ts),
            ts,
            marker: true,
            keyframe,
            red: false,
            temporal: None,
            svc: None,
            descriptor: None,
            payload: Arc::from(vec![0u8; bytes]),
            audio_level: None,
            voice_activity: None,
            video_orientation: None,
            arrival: at,
            capture: None,
        }
    }
}
