//! What the media core times and samples, recorded into histogram handles its embedder gives
//! it (no registry here: the control plane decides where they go; by default they go nowhere).

use metrics::Histogram;

/// The media core's histograms: durations in seconds, bitrates in bits per second.
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
    /// Each receiving subscriber's egress bandwidth estimate, as its layers are allocated
    /// from it (every half second, and at once when it falls below what is sent).
    pub subscriber_estimate: Histogram,
    /// What each receiving subscriber's allocation sends (the video layers chosen plus the
    /// audio allowance), sampled with [`Self::subscriber_estimate`].
    pub subscriber_target: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            forward_latency: Histogram::noop(),
            connect: Histogram::noop(),
            first_video_packet: Histogram::noop(),
            subscriber_estimate: Histogram::noop(),
            subscriber_target: Histogram::noop(),
        }
    }
}
