//! Commands from the control plane to the worker that owns (or will own) a peer.

use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};
use tokio::sync::oneshot;

use crate::error::SfuError;
use crate::event::{EventSink, PeerSpec, TrackCounters};
use crate::ids::{PeerId, TrackId};

/// Where a command's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

/// One command for a worker.
pub(crate) enum Command {
    /// Create a publisher peer from the client's offer; replies with the SDP answer.
    AddPublisher {
        peer: PeerId,
        spec: PeerSpec,
        offer: Box<SdpOffer>,
        /// Video codecs in the publisher's order of preference.
        video_codecs: Vec<str0m::format::Codec>,
        events: EventSink,
        reply: Reply<String>,
    },
    /// Create a subscriber peer already subscribed to `tracks`; its first offer arrives as
    /// an event.
    AddSubscriber {
        peer: PeerId,
        spec: PeerSpec,
        tracks: Vec<TrackId>,
        events: EventSink,
        reply: Reply<()>,
    },
    /// Create a subscriber from the client's offer (WHEP), bound to those of `tracks` its
    /// m-lines can carry; replies with the SDP answer.
    AddOfferingSubscriber {
        peer: PeerId,
        spec: PeerSpec,
        offer: Box<SdpOffer>,
        tracks: Vec<TrackId>,
        events: EventSink,
        reply: Reply<String>,
    },
    /// A publisher's client offers again (tracks added or removed); replies with the answer.
    PublisherOffer {
        peer: PeerId,
        offer: Box<SdpOffer>,
        reply: Reply<String>,
    },
    /// A subscriber's client answers the latest offer.
    SubscriberAnswer {
        peer: PeerId,
        answer: Box<SdpAnswer>,
        reply: Reply<()>,
    },
    /// Start sending a track to a subscriber.
    Subscribe {
        peer: PeerId,
        track: TrackId,
        reply: Reply<()>,
    },
    /// Start sending a track to several subscribers of this worker (a track published into
    /// a room with many viewers: one command per worker, not one per viewer). Replies with
    /// the subscribers it could not be sent to, and why.
    SubscribeMany {
        peers: Vec<PeerId>,
        track: TrackId,
        reply: oneshot::Sender<Vec<(PeerId, SfuError)>>,
    },
    /// Stop sending a track to a subscriber.
    Unsubscribe {
        peer: PeerId,
        track: TrackId,
        reply: Reply<()>,
    },
    /// Offer the subscriber new ICE credentials with its next offer.
    RestartIce { peer: PeerId, reply: Reply<()> },
    /// Set what a subscriber wants of one video track.
    SetVideoPreference {
        peer: PeerId,
        track: TrackId,
        preference: crate::layer_choice::VideoPreference,
        reply: Reply<()>,
    },
    /// Mute (or unmute) a published track; replies with its counters once it took effect.
    SetTrackMuted {
        track: TrackId,
        muted: bool,
        reply: Reply<TrackCounters>,
    },
    /// Describe a published track's payload formats (for another node to relay it).
    TrackCodecs {
        track: TrackId,
        reply: Reply<Vec<crate::relay::RelayCodec>>,
    },
    /// Read a published track's counters.
    TrackCounters {
        track: TrackId,
        reply: Reply<TrackCounters>,
    },
    /// The tracks published by this worker's peers, and who receives each.
    Tracks {
        reply: Reply<Vec<crate::graph::TrackSnapshot>>,
    },
    /// Panic, for tests of what follows ([`crate::Sfu::crash_worker_for_tests`]).
    Crash,
    /// A trickled remote ICE candidate.
    RemoteCandidate {
        peer: PeerId,
        candidate: Box<Candidate>,
    },
    /// Close and forget a peer.
    RemovePeer { peer: PeerId, reply: Reply<()> },
    /// Create a relay egress (the stand-in for a remote node) in `room`.
    AddRelayEgress {
        id: PeerId,
        room: crate::ids::RoomId,
        packets: tokio::sync::mpsc::Sender<crate::relay::RelayPacket>,
        events: tokio::sync::mpsc::Sender<crate::relay::RelayEvent>,
        /// Receives the room's data messages (see [`crate::Sfu::add_relay_egress`]).
        carries_data: bool,
        reply: Reply<()>,
    },
    /// Set which layers of a track a relay egress carries (none: stop relaying it).
    RelayLayers {
        id: PeerId,
        track: TrackId,
        layers: u32,
        reply: Reply<()>,
    },
    /// A remote node's viewers need a keyframe of one layer of a relayed track.
    RelayKeyframe {
        id: PeerId,
        track: TrackId,
        layer: u8,
    },
    /// Send packets of a relayed track's layer again (lost on the link).
    RelayNack {
        id: PeerId,
        track: TrackId,
        layer: u8,
        seqs: Vec<u16>,
    },
    /// Remove a relay egress: its tracks stop being relayed.
    RemoveRelayEgress { id: PeerId, reply: Reply<()> },
    /// Create a relay ingress (the stand-in for another node's publishers of `spec.room`).
    AddRelayIngress {
        id: PeerId,
        spec: PeerSpec,
        events: EventSink,
        requests: tokio::sync::mpsc::Sender<crate::relay::RelayRequest>,
        /// Receives the room's data messages (see [`crate::Sfu::add_relay_ingress`]).
        carries_data: bool,
        reply: Reply<()>,
    },
    /// Publish a relayed track through a relay ingress; replies with its id here.
    RelayPublish {
        id: PeerId,
        participant: std::sync::Arc<str>,
        kind: crate::event::TrackKind,
        layers: u8,
        codecs: Vec<crate::relay::RelayCodec>,
        reply: Reply<TrackId>,
    },
    /// Unpublish a relayed track.
    RelayUnpublish { id: PeerId, track: TrackId },
    /// Packets from the origin for a relay ingress's tracks.
    RelayPackets {
        id: PeerId,
        packets: Vec<(TrackId, Vec<u8>)>,
    },
    /// A data message from another node (wrapped with its sender's identity) for the members
    /// of relay endpoint `id`'s room (not back to the relay itself).
    RelayData {
        id: PeerId,
        binary: bool,
        bytes: Vec<u8>,
    },
    /// Remove a relay ingress: its tracks are unpublished.
    RemoveRelayIngress { id: PeerId, reply: Reply<()> },
}
