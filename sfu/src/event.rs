//! What the control plane tells the media core about a peer, and what the core tells back.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ids::{PeerId, RoomId, TrackId};

/// Who a new peer belongs to and what it may do.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// The room the peer is in. Media and data never leave it.
    pub room: RoomId,
    /// The participant's session id, shown to others as the sender of data messages and as
    /// the stream id (`msid`) of its tracks.
    pub participant: Arc<str>,
    /// The participant's identity (from its access token).
    pub identity: Arc<str>,
    /// Whether data channel messages from this peer are relayed.
    pub can_publish_data: bool,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

impl TrackKind {
    /// `"audio"` or `"video"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

/// A track a publisher has added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// The track's id, unique in the server.
    pub id: TrackId,
    /// The publisher's participant id.
    pub participant: Arc<str>,
    /// Audio or video.
    pub kind: TrackKind,
    /// The media id of the track in the publisher's session.
    pub mid: String,
    /// RIDs of the simulcast layers, in the publisher's order (empty without simulcast).
    pub simulcast: Vec<String>,
}

/// One track in a subscriber offer: which `mid` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    /// The media id in the subscriber's session.
    pub mid: String,
    /// The track it carries.
    pub track: TrackId,
    /// The track's publisher.
    pub participant: Arc<str>,
    /// Audio or video.
    pub kind: TrackKind,
}

/// Why a peer closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The control plane removed it.
    Removed,
    /// The remote side closed the connection (DTLS close or ICE timeout).
    Disconnected,
    /// The peer's WebRTC state machine failed (a bug or hostile input); only it is closed.
    Failed(String),
    /// ICE and DTLS did not complete within [`crate::SfuConfig::connect_timeout`] of the
    /// peer's creation or of an ICE restart, or connectivity lost did not come back in time.
    ConnectTimeout,
    /// The media core is shutting down.
    Shutdown,
}

/// A peer's transport statistics over its whole life so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    /// All bytes received (including ICE, DTLS, RTCP).
    pub bytes_received: u64,
    /// All bytes sent.
    pub bytes_sent: u64,
    /// Media (RTP payload) bytes received.
    pub media_bytes_received: u64,
    /// Media (RTP payload) bytes sent.
    pub media_bytes_sent: u64,
    /// Fraction of packets lost towards the remote side, from its receiver reports.
    pub egress_loss: Option<f32>,
    /// Fraction of packets lost from the remote side.
    pub ingress_loss: Option<f32>,
    /// Round-trip time.
    pub rtt: Option<std::time::Duration>,
    /// Estimated bandwidth towards the remote side, bits per second (when estimated).
    pub egress_estimate_bps: Option<u64>,
}

/// What the publisher's worker counted for one published track. Read from the worker that
/// owns the track, so a value read after a command (a mute, say) took effect is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackCounters {
    /// RTP packets received from the publisher (every layer).
    pub received_packets: u64,
    /// Of those, packets handed to at least one subscriber (each counted once, however many
    /// subscribers got it).
    pub forwarded_packets: u64,
    /// Whether the control plane has muted the track (nothing is forwarded).
    pub muted: bool,
}

/// Events about one peer, delivered to the sink given when the peer was created. None of them
/// is per packet.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow.
    Connected {
        /// The peer.
        peer: PeerId,
    },
    /// A publisher added a track.
    TrackPublished {
        /// The publishing peer.
        peer: PeerId,
        /// The track.
        track: TrackInfo,
    },
    /// A publisher's track is gone (removed by the client, or the peer closed).
    TrackUnpublished {
        /// The publishing peer.
        peer: PeerId,
        /// The track.
        track: TrackId,
    },
    /// A subscriber needs a new SDP negotiation: send this offer to the client and give its
    /// answer to [`crate::Sfu::subscriber_answer`].
    SubscriberOffer {
        /// The subscribing peer.
        peer: PeerId,
        /// The SDP offer.
        sdp: String,
        /// Every track the session carries after this negotiation.
        tracks: Vec<OfferedTrack>,
    },
    /// A publisher's audio track is speaking (`level` 0 to 1, a few times a second) or has
    /// stopped (`level` 0, once).
    AudioLevel {
        /// The publishing peer.
        peer: PeerId,
        /// The audio track.
        track: TrackId,
        /// Smoothed loudness, 0 to 1.
        level: f32,
    },
    /// A subscriber's video track changed layer, target or reason (reported at most every
    /// half second): explains what the subscriber receives and why.
    LayerState {
        /// The subscribing peer.
        peer: PeerId,
        /// The track.
        track: TrackId,
        /// Layer being forwarded (0 = lowest).
        current: Option<u8>,
        /// Layer wanted (switched to on its next keyframe).
        target: Option<u8>,
        /// Why the target is what it is.
        reason: crate::LayerReason,
        /// How many layers the track offers (simulcast streams or SVC spatial layers).
        layers: u8,
        /// Highest VP8 temporal layer forwarded, when upper ones are dropped for bandwidth
        /// (`None`: all of them).
        max_temporal: Option<u8>,
    },
    /// Dynacast: which simulcast layers of a published video track the publisher should send
    /// (nobody receives the others). The client should set the other encodings inactive;
    /// a client that does not is still served correctly, only less efficiently.
    LayersWanted {
        /// The publishing peer.
        peer: PeerId,
        /// The track.
        track: TrackId,
        /// Per layer, lowest first (the track's simulcast RIDs' order): send it or not.
        active: Vec<bool>,
    },
    /// A subscriber did not accept the codec a track is sent in (the server does not
    /// transcode): the track is not forwarded to it. Said once per subscription.
    CodecRefused {
        /// The subscribing peer.
        peer: PeerId,
        /// The track.
        track: TrackId,
        /// The track's codec (`"PCMU"`, `"VP9"`, ...).
        codec: String,
    },
    /// Periodic statistics (see [`crate::SfuConfig::stats_interval`]).
    Stats {
        /// The peer.
        peer: PeerId,
        /// The figures.
        stats: PeerStats,
    },
    /// The peer is gone; everything it published or subscribed is removed.
    Closed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
}

/// Where a peer's events go.
pub type EventSink = mpsc::UnboundedSender<PeerEvent>;
