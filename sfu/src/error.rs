//! Errors the media core returns to the control plane.

use crate::ids::{PeerId, RoomId, TrackId};

/// Why a command to the media core failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP could not be parsed or negotiated.
    #[error("invalid SDP: {0}")]
    BadSdp(String),
    /// No such room.
    #[error("room {0} does not exist")]
    UnknownRoom(RoomId),
    /// No such peer (it may have just closed).
    #[error("peer {0} does not exist")]
    UnknownPeer(PeerId),
    /// No such track (it may have just been unpublished).
    #[error("track {0} does not exist")]
    UnknownTrack(TrackId),
    /// The command does not apply to this kind of peer (e.g. an answer to a publisher).
    #[error("peer {0} cannot do that: {1}")]
    WrongPeerKind(PeerId, &'static str),
    /// Binding a media socket failed.
    #[error("cannot bind media socket {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The media core is shutting down.
    #[error("the media core has shut down")]
    Shutdown,
    /// Every media worker has stopped (see the server's log); the node needs a restart.
    #[error("no media worker is running on this server")]
    NoWorker,
    /// str0m refused an operation.
    #[error("WebRTC error: {0}")]
    Rtc(#[from] str0m::RtcError),
}
