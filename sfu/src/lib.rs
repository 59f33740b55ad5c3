//! The media core of the SFU: WebRTC peers (str0m, ICE-lite, RTP mode), the forwarding graph
//! and the media workers. No HTTP, no JSON: the control plane drives it through [`Sfu`]
//! (commands in) and [`PeerEvent`]s (events out).
//!
//! The packet path, per ingress datagram: a worker's socket -> demux (by ICE ufrag, then
//! by remote address) -> the publisher's `Rtc` (SRTP, NACK and TWCC bookkeeping) -> the
//! publisher role forwards the RTP packet, shared as one `Arc`, to each subscriber that wants
//! its layer (the publisher's worker owns each track's subscriber list; subscribers join,
//! change layers and leave by message), on this worker or through a bounded queue to another
//! -> the subscriber role
//! rewrites sequence numbers and timestamps and writes it to the subscriber's `Rtc` (SRTP,
//! RTX cache) -> the socket. Everything between the sockets is sans-IO: time is an argument.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod allocator;
mod audio_codecs;
mod audio_level;
mod codec_order;
mod command;
mod config;
mod counters;
mod data_relay;
mod demux;
mod dependency_descriptor;
mod dynacast;
mod error;
mod estimator_restart;
mod event;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod graph;
mod handle;
#[cfg(test)]
mod hostile_rtcp;
mod ice_tcp;
mod ids;
mod keyframe;
mod keyframe_throttle;
mod layer_choice;
mod layer_switch;
mod packet;
mod peer;
mod red;
pub mod relay;
mod rewrite;
mod shared;
#[cfg(any(test, feature = "fuzzing"))]
mod sim;
mod stun;
mod timings;
mod vp8_munger;
mod worker;

pub use allocator::LayerReason;
pub use config::SfuConfig;
pub use counters::CounterSnapshot;
pub use error::SfuError;
pub use event::{
    CloseReason, EventSink, OfferedTrack, PeerEvent, PeerSpec, PeerStats, TrackCounters, TrackInfo,
    TrackKind,
};
pub use graph::TrackSnapshot;
pub use handle::{RelayEgressHandle, RelayIngressHandle, Sfu};
pub use ids::{ParseIdError, PeerId, RoomId, TrackId};
pub use layer_choice::{Quality, VideoPreference};
pub use timings::Timings;
