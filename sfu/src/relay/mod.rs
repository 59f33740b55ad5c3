//! The media side of relaying tracks between cluster nodes. On the node that has a track's
//! publisher (the origin), a relay egress (`egress`) is one subscriber in the forwarding
//! graph per remote node: it takes the layers that node needs of each track and turns every
//! packet into a self-describing RTP packet ([`rtp`]) for the relay link. On the remote node
//! (the edge), a relay ingress (`ingress`) publishes each relayed track in its own graph, so
//! its viewers subscribe to it as to a local one, and sends their keyframe requests back. The
//! transport (QUIC datagrams, the control stream) is the control plane's; nothing here does
//! I/O beyond handing packets to a bounded channel.

pub(crate) mod egress;
pub(crate) mod ingress;
pub mod rtp;

pub use ingress::{MAX_NACK, RelayCodec, RelayRequest};

use crate::ids::TrackId;

/// Why a relayed packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The packet is not one this format writes.
    #[error("malformed relayed packet: {0}")]
    Malformed(&'static str),
}

/// One packet for the relay link, from a relay egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPacket {
    /// The track.
    pub track: TrackId,
    /// Its layer (simulcast stream or spatial layer).
    pub layer: u8,
    /// It starts a keyframe.
    pub keyframe: bool,
    /// It is sent again, asked for by the other node (a loss on the link repaired).
    pub repair: bool,
    /// The packet, as [`rtp::decode`] reads it.
    pub rtp: Vec<u8>,
}

/// What a relay egress tells the control plane besides packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A relayed track was unpublished at this node: the other node's copy ends.
    TrackEnded(TrackId),
    /// A data message of the room (already wrapped with its sender's identity), for the
    /// other node's members.
    Data {
        /// Binary (or text).
        binary: bool,
        /// The wrapped message.
        bytes: Vec<u8>,
    },
}

/// Events a relay endpoint queues for the control plane before dropping (and counting) more.
pub const RELAY_EVENT_QUEUE: usize = 1024;
