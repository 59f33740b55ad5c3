//! What the media core times, recorded into histogram handles its embedder gives it (no
//! registry here: the control plane decides where they go; by default they go nowhere).

use metrics::Histogram;

/// The media core's histograms, in seconds.
#[derive(Debug, Clone)]
pub struct Timings {
    /// SFU-added latency of forwarded RTP packets (sampled): from reading the publisher's
    /// datagram off the socket to writing the subscriber's copy to the socket.
    pub forward_latency: Histogram,
    /// From a peer's creation to its ICE and DTLS completing (media can flow).
    pub connect: Histogram,
    /// From a video subscription's creation to its first packet written to the subscriber
    /// (a keyframe's first packet; includes connecting when the peer is new).
    pub first_video_packet: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            forward_latency: Histogram::noop(),
            connect: Histogram::noop(),
            first_video_packet: Histogram::noop(),
        }
    }
}
