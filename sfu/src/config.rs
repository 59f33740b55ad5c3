//! Configuration of the media core, with the defaults a laptop run needs.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::timings::Timings;

/// How the media core runs. Every field has a default that works on one machine.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Number of media worker threads, each with its own UDP socket. Default: the number of
    /// available cores.
    pub workers: usize,
    /// Address the media sockets bind to. Default `127.0.0.1`.
    pub bind_ip: IpAddr,
    /// UDP port of the first worker; worker `i` binds `first_port + i`. `0` lets the operating
    /// system choose a free port per worker (tests). Default `7882`.
    pub first_port: u16,
    /// Addresses advertised to clients as ICE host candidates (with each worker's port). Empty
    /// means `bind_ip`, which must then not be unspecified. Default: empty.
    pub advertise_ips: Vec<IpAddr>,
    /// Capacity, in batches, of each worker's queue of packets from other workers. A full queue
    /// drops the newest batch for that worker and counts it. Default `1024`.
    pub worker_queue_batches: usize,
    /// Minimum interval between two keyframe requests sent to a publisher for one track layer;
    /// requests in between are coalesced into one sent when the interval ends. Default 500 ms.
    pub keyframe_request_interval: Duration,
    /// How long a subscriber waits for a requested keyframe before asking again. Default 1 s.
    pub keyframe_retry: Duration,
    /// UDP socket send and receive buffer size in bytes. Default 4 MiB.
    pub socket_buffer_bytes: usize,
    /// Bandwidth a subscriber's estimator starts from, before it has measured anything
    /// (bits per second). Default 1 Mbit/s.
    pub initial_egress_bitrate: u64,
    /// Negotiate RED (RFC 2198 redundant audio) around Opus with publishers and subscribers.
    /// Off by default: it doubles the audio a subscriber's link carries, which starved video
    /// on thin links (BENCHMARKS.md, "The narrow link with RED").
    pub red_audio: bool,
    /// Estimate each subscriber's downlink (transport-wide congestion control) and fit its
    /// simulcast layers to the estimate. Off, layers follow only what the subscriber asks for
    /// and what the publisher sends: for networks whose capacity is known. Default on.
    pub congestion_control: bool,
    /// How often each peer reports [`crate::PeerEvent::Stats`]; `None` turns them off.
    /// Default 5 s.
    pub stats_interval: Option<Duration>,
    /// TCP port for ICE over TCP (RFC 6544 passive candidates, for clients whose network
    /// blocks UDP), on `bind_ip`, advertised on every advertised address. `Some(0)` lets the
    /// operating system choose (tests); `None` turns ICE-TCP off. Default `Some(7881)`.
    pub ice_tcp_port: Option<u16>,
    /// A new peer whose ICE and DTLS have not completed this long after it was created is
    /// closed ([`crate::CloseReason::ConnectTimeout`]). A connected peer whose ICE goes down
    /// (an ICE restart, or 15 s without a connectivity check) is closed once nothing at all has
    /// been heard from it for 15 s plus this. Default 15 s: a client whose network is down for
    /// up to about 30 s keeps its peers.
    pub connect_timeout: Duration,
    /// Where the media core records its histograms (latency, connect time, time to first
    /// video packet). Default: nowhere.
    pub timings: Timings,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            first_port: 7882,
            advertise_ips: Vec::new(),
            worker_queue_batches: 1024,
            keyframe_request_interval: Duration::from_millis(500),
            keyframe_retry: Duration::from_secs(1),
            socket_buffer_bytes: 4 << 20,
            initial_egress_bitrate: 1_000_000,
            red_audio: false,
            congestion_control: true,
            stats_interval: Some(Duration::from_secs(5)),
            ice_tcp_port: Some(7881),
            connect_timeout: Duration::from_secs(15),
            timings: Timings::default(),
        }
    }
}
