//! `GET /metrics`: the media core's histograms, counters and the control plane's gauges in
//! the Prometheus text format (version 0.0.4), through a `metrics` recorder per server.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use sfu::{CounterSnapshot, Timings};

/// Panics in this process so far (any thread), counted by [`count_panics`]'s hook.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts every panic in `sfu_panics_total` (then reports it as before). A worker or task
/// that panics is recovered from; the count is how a soak or an operator notices.
pub fn count_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        report(info);
    }));
}

/// What the control plane adds to the media core's counters.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Rooms open.
    pub rooms: usize,
    /// Participants in rooms.
    pub participants: usize,
    /// Peer connections.
    pub peers: usize,
    /// Published tracks.
    pub tracks: usize,
    /// Per worker: (batches queued from other workers, queue capacity, batches dropped).
    pub worker_queues: Vec<(usize, usize, u64)>,
    /// Webhook events dropped because a queue was full.
    pub webhooks_dropped: u64,
    /// ICE-TCP connections open.
    pub tcp_connections: usize,
    /// Cluster mode only.
    pub cluster: Option<ClusterGauges>,
}

/// What a cluster node reports about its membership.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterGauges {
    /// Redis answered the last heartbeat.
    pub redis_up: bool,
    /// Live nodes it listed.
    pub nodes: usize,
    /// Malformed registry entries it ignored.
    pub ignored_entries: usize,
    /// Relay links to other nodes (with a relay endpoint).
    pub relay_links: Option<usize>,
    /// Relay peers refused (no proof of the cluster secret).
    pub relay_refused: u64,
    /// What the relayed rooms counted on the links.
    pub relayed: crate::cluster::relay_rooms::RelayCounts,
}

/// Counters of the media core that are gauges (levels, not totals).
/// (The `video_*` gauges are rendered as one labelled metric.)
const CORE_GAUGES: [&str; 2] = ["peers", "egress_estimate_bps"];

/// Bucket bounds of the SFU-added latency histogram, seconds: 50 us to 1 s (the design
/// target is a p99 under 1 ms at 80% of a core).
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
    0.1, 0.25, 0.5, 1.0,
];
/// Bucket bounds of the subscribers' estimate and target histograms, bits per second: 50 kbit/s
/// (audio only) to 20 Mbit/s (several screens and cameras in full).
const BITRATE_BUCKETS: [f64; 16] = [
    50e3, 100e3, 150e3, 250e3, 400e3, 600e3, 800e3, 1e6, 1.25e6, 1.5e6, 2e6, 3e6, 5e6, 8e6, 12e6,
    20e6,
];
/// Bucket bounds of the connect and first-packet histograms, seconds: 10 ms to 30 s.
const SETUP_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0,
];

/// The server's metrics registry: one Prometheus recorder per server instance (never the
/// process-wide one, so a test process can run several servers). The media core records its
/// histograms into it directly; counters and gauges are copied in from their owners'
/// snapshots when `/metrics` is scraped.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with the histograms' buckets.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let buckets = [
            ("sfu_forward_latency_seconds", &LATENCY_BUCKETS[..]),
            ("sfu_connect_seconds", &SETUP_BUCKETS[..]),
            ("sfu_first_video_packet_seconds", &SETUP_BUCKETS[..]),
            ("sfu_relay_hop_seconds", &LATENCY_BUCKETS[..]),
            ("sfu_subscriber_estimate_bps", &BITRATE_BUCKETS[..]),
            ("sfu_subscriber_target_bps", &BITRATE_BUCKETS[..]),
        ];
        let builder = buckets.into_iter().fold(builder, |b, (name, bounds)| {
            // The bucket lists are constants and not empty: this cannot fail.
            b.set_buckets_for_metric(Matcher::Full(name.into()), bounds)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    /// Histogram handles for the media core ([`sfu::SfuConfig::timings`]).
    pub fn timings(&self) -> Timings {
        metrics::with_local_recorder(&self.recorder, || {
            describe_histogram!(
                "sfu_forward_latency_seconds",
                Unit::Seconds,
                "SFU-added latency of forwarded RTP packets, from the publisher's datagram read \
                 to the subscriber's copy written (one packet in 64 per worker)."
            );
            describe_histogram!(
                "sfu_connect_seconds",
                Unit::Seconds,
                "From a peer connection's creation to its ICE and DTLS completing."
            );
            describe_histogram!(
                "sfu_first_video_packet_seconds",
                Unit::Seconds,
                "From a video subscription to its first packet sent to the subscriber."
            );
            describe_histogram!(
                "sfu_subscriber_estimate_bps",
                Unit::BitsPerSecond,
                "Each receiving subscriber's egress bandwidth estimate, sampled as its layers are \
                 allocated from it (every 0.5 s, and at once when it falls below what is sent)."
            );
            describe_histogram!(
                "sfu_subscriber_target_bps",
                Unit::BitsPerSecond,
                "What each receiving subscriber's allocation sends (video layers chosen plus an \
                 audio allowance), sampled with sfu_subscriber_estimate_bps."
            );
            Timings {
                forward_latency: histogram!("sfu_forward_latency_seconds"),
                connect: histogram!("sfu_connect_seconds"),
                first_video_packet: histogram!("sfu_first_video_packet_seconds"),
                subscriber_estimate: histogram!("sfu_subscriber_estimate_bps"),
                subscriber_target: histogram!("sfu_subscriber_target_bps"),
            }
        })
    }

    /// The histogram of what a relay hop adds (cluster mode).
    pub fn relay_hop(&self) -> metrics::Histogram {
        metrics::with_local_recorder(&self.recorder, || {
            describe_histogram!(
                "sfu_relay_hop_seconds",
                Unit::Seconds,
                "What a relay hop adds: from the origin node writing a packet's datagram to this \
                 node reading it (the nodes' clocks must agree)."
            );
            histogram!("sfu_relay_hop_seconds")
        })
    }

    /// Folds the histograms' recorded samples into their buckets, so their memory stays
    /// bounded whether or not anyone scrapes `/metrics`. Call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Renders the metrics page: the histograms as recorded, the counters and gauges as
    /// they are now.
    pub fn render(&self, counters: &CounterSnapshot, gauges: &Gauges) -> String {
        metrics::with_local_recorder(&self.recorder, || record_levels(counters, gauges));
        let mut out = self.handle.render();
        // Floating-point process figures: the recorder's counters are integers.
        if let Some(process) = ProcessStats::read_self() {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total User and system CPU time of the server process.\n\
                 # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
                process.cpu_seconds
            );
        }
        out
    }
}

/// Copies the current counters and gauges into the recorder in scope.
fn record_levels(counters: &CounterSnapshot, gauges: &Gauges) {
    for (name, value) in counters.fields() {
        if let Some(state) = name.strip_prefix("video_") {
            gauge!("sfu_video_subscriptions", "state" => state).set(value as f64);
        } else if let Some(layer) = name.strip_prefix("on_layer_") {
            gauge!("sfu_video_subscriptions_on_layer", "layer" => layer).set(value as f64);
        } else if name == "peers" {
            // Rendered below with the control plane's gauges.
        } else if CORE_GAUGES.contains(&name) {
            gauge!(format!("sfu_{name}")).set(value as f64);
        } else {
            counter!(format!("sfu_{name}_total")).absolute(value);
        }
    }
    describe_gauge!(
        "sfu_video_subscriptions",
        "Video subscriptions by why their layer is what it is (best, requested, bandwidth, \
         unavailable) and those waiting_keyframe for a switch."
    );
    describe_gauge!(
        "sfu_video_subscriptions_on_layer",
        "Video subscriptions by the layer they forward now (simulcast stream or spatial layer; \
         3 counts 3 and above)."
    );
    describe_gauge!(
        "sfu_worker_queue_depth",
        "Batches waiting in a media worker's queue from other workers."
    );
    for (worker, (depth, capacity, drops)) in gauges.worker_queues.iter().enumerate() {
        let worker = worker.to_string();
        gauge!("sfu_worker_queue_depth", "worker" => worker.clone()).set(*depth as f64);
        gauge!("sfu_worker_queue_capacity", "worker" => worker.clone()).set(*capacity as f64);
        counter!("sfu_worker_queue_drops_total", "worker" => worker).absolute(*drops);
    }
    counter!("sfu_webhooks_dropped_total").absolute(gauges.webhooks_dropped);
    describe_counter!(
        "sfu_panics_total",
        "Panics in the server process (recovered from; each is a bug)."
    );
    counter!("sfu_panics_total").absolute(PANICS.load(Ordering::Relaxed));
    if let Some(process) = ProcessStats::read_self() {
        describe_gauge!(
            "process_resident_memory_bytes",
            Unit::Bytes,
            "Resident memory of the server process."
        );
        gauge!("process_resident_memory_bytes").set(process.rss_bytes as f64);
        describe_gauge!(
            "process_open_fds",
            "Open file descriptors of the server process."
        );
        gauge!("process_open_fds").set(process.open_fds as f64);
        describe_gauge!("process_threads", "Threads of the server process.");
        gauge!("process_threads").set(process.threads as f64);
    }
    for (name, help, value) in [
        ("sfu_rooms", "Rooms open.", gauges.rooms),
        (
            "sfu_participants",
            "Participants in rooms.",
            gauges.participants,
        ),
        (
            "sfu_peers",
            "Peer connections on the media workers.",
            gauges.peers,
        ),
        ("sfu_tracks", "Published tracks.", gauges.tracks),
        (
            "sfu_ice_tcp_connections",
            "ICE-TCP connections open.",
            gauges.tcp_connections,
        ),
    ] {
        describe_gauge!(name, help);
        gauge!(name).set(value as f64);
    }
    if let Some(cluster) = gauges.cluster {
        describe_gauge!(
            "sfu_cluster_redis_up",
            "1 if the last heartbeat reached the Redis node registry, else 0."
        );
        gauge!("sfu_cluster_redis_up").set(f64::from(u8::from(cluster.redis_up)));
        describe_gauge!(
            "sfu_cluster_nodes",
            "Live nodes in the registry as last read (this one included)."
        );
        gauge!("sfu_cluster_nodes").set(cluster.nodes as f64);
        describe_gauge!(
            "sfu_cluster_ignored_entries",
            "Malformed entries in the Redis node registry, ignored."
        );
        gauge!("sfu_cluster_ignored_entries").set(cluster.ignored_entries as f64);
        if let Some(links) = cluster.relay_links {
            describe_gauge!(
                "sfu_relay_links",
                "Authenticated media relay links (QUIC) to other nodes."
            );
            gauge!("sfu_relay_links").set(links as f64);
            describe_counter!(
                "sfu_relay_refused_total",
                "Relay peers refused: no proof of the cluster secret, garbage, or a stalled handshake."
            );
            counter!("sfu_relay_refused_total").absolute(cluster.relay_refused);
            let counts = cluster.relayed;
            for (name, help, value) in [
                (
                    "sfu_relay_datagrams_refused_total",
                    "Relay datagrams refused: malformed, or for no track relayed here.",
                    counts.datagrams_refused,
                ),
                (
                    "sfu_relay_datagrams_dropped_total",
                    "Relay datagrams not sent: the link was congested or closed.",
                    counts.datagrams_dropped,
                ),
                (
                    "sfu_relay_control_refused_total",
                    "Malformed relay control messages (each ended its link).",
                    counts.control_refused,
                ),
            ] {
                describe_counter!(name, help);
                counter!(name).absolute(value);
            }
        }
    }
}

/// CPU time and memory of this process (Linux `/proc`; absent elsewhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcessStats {
    /// Reads `/proc/self/stat` and `/proc/self/statm`.
    pub fn read_self() -> Option<Self> {
        // Clock ticks are 1/100 s in Linux's user ABI (USER_HZ), pages 4 KiB on the platforms
        // we run on.
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let cpu_seconds = (ticks(11)? + ticks(12)?) / 100.0;
        let threads = fields.get(17).and_then(|f| f.parse().ok()).unwrap_or(0);
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        Some(Self {
            cpu_seconds,
            rss_bytes: pages * 4096,
            open_fds,
            threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_process_stats() {
        let gauges = Gauges {
            rooms: 1,
            participants: 2,
            peers: 3,
            tracks: 4,
            worker_queues: vec![(0, 1024, 0), (5, 1024, 2)],
            webhooks_dropped: 0,
            tcp_connections: 0,
            cluster: Some(ClusterGauges {
                redis_up: true,
                nodes: 2,
                relay_links: Some(1),
                ..ClusterGauges::default()
            }),
        };
        let metrics = Metrics::new();
        let timings = metrics.timings();
        timings.forward_latency.record(0.0003);
        timings.forward_latency.record(0.004);
        let text = metrics.render(&CounterSnapshot::default(), &gauges);
        assert!(text.contains("sfu_rtp_forwarded_total 0"));
        assert!(text.contains("sfu_nacks_received_total 0"));
        assert!(text.contains("sfu_layer_switches_total 0"));
        assert!(text.contains("sfu_egress_estimate_bps 0"));
        assert!(text.contains("sfu_participants 2"));
        assert!(text.contains("sfu_tracks 4"));
        assert!(text.contains("sfu_worker_queue_depth{worker=\"1\"} 5"));
        assert!(text.contains("sfu_worker_queue_drops_total{worker=\"1\"} 2"));
        assert!(text.contains("sfu_video_subscriptions{state=\"best\"} 0"));
        assert!(text.contains("sfu_video_subscriptions_on_layer{layer=\"0\"} 0"));
        assert!(text.contains("sfu_cluster_redis_up 1"));
        assert!(text.contains("sfu_cluster_nodes 2"));
        assert!(text.contains("sfu_relay_links 1"));
        assert!(
            text.contains("sfu_forward_latency_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("sfu_forward_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("sfu_forward_latency_seconds_count 2"));
        assert!(text.contains("# TYPE sfu_connect_seconds histogram"));
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_cpu_seconds_total "));
            assert!(ProcessStats::read_self().is_some_and(|p| p.rss_bytes > 0));
        }
    }
}
