//! `GET /metrics`: the media core's counters and the control plane's gauges in the Prometheus
//! text format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use sfu::CounterSnapshot;

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
}

/// Counters of the media core that are gauges (levels, not totals).
/// (The `video_*` gauges are rendered as one labelled metric.)
const CORE_GAUGES: [&str; 2] = ["peers", "egress_estimate_bps"];

/// Renders the metrics page.
pub fn render(counters: &CounterSnapshot, gauges: &Gauges) -> String {
    let mut out = String::new();
    let mut video = Vec::new();
    for (name, value) in counters.fields() {
        if let Some(state) = name.strip_prefix("video_") {
            video.push((state, value));
            continue;
        }
        if CORE_GAUGES.contains(&name) {
            // `peers` is rendered below with the control plane's gauges.
            if name != "peers" {
                let _ = writeln!(out, "# TYPE sfu_{name} gauge\nsfu_{name} {value}");
            }
            continue;
        }
        let _ = writeln!(
            out,
            "# TYPE sfu_{name}_total counter\nsfu_{name}_total {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_video_subscriptions Video subscriptions by why their layer is what it is \
         (best, requested, bandwidth, unavailable) and those waiting_keyframe for a switch.\n\
         # TYPE sfu_video_subscriptions gauge"
    );
    for (state, value) in video {
        let _ = writeln!(out, "sfu_video_subscriptions{{state=\"{state}\"}} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP sfu_worker_queue_depth Batches waiting in a media worker's queue from other workers.\n\
         # TYPE sfu_worker_queue_depth gauge"
    );
    for (worker, (depth, _, _)) in gauges.worker_queues.iter().enumerate() {
        let _ = writeln!(out, "sfu_worker_queue_depth{{worker=\"{worker}\"}} {depth}");
    }
    let _ = writeln!(out, "# TYPE sfu_worker_queue_capacity gauge");
    for (worker, (_, capacity, _)) in gauges.worker_queues.iter().enumerate() {
        let _ = writeln!(
            out,
            "sfu_worker_queue_capacity{{worker=\"{worker}\"}} {capacity}"
        );
    }
    let _ = writeln!(out, "# TYPE sfu_worker_queue_drops_total counter");
    for (worker, (_, _, drops)) in gauges.worker_queues.iter().enumerate() {
        let _ = writeln!(
            out,
            "sfu_worker_queue_drops_total{{worker=\"{worker}\"}} {drops}"
        );
    }
    let _ = writeln!(
        out,
        "# TYPE sfu_webhooks_dropped_total counter\nsfu_webhooks_dropped_total {}",
        gauges.webhooks_dropped
    );
    let _ = writeln!(
        out,
        "# HELP sfu_panics_total Panics in the server process (recovered from; each is a bug).\n\
         # TYPE sfu_panics_total counter\nsfu_panics_total {}",
        PANICS.load(Ordering::Relaxed)
    );
    if let Some(process) = ProcessStats::read_self() {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time of the server process.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n\
             # HELP process_resident_memory_bytes Resident memory of the server process.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
             # HELP process_open_fds Open file descriptors of the server process.\n\
             # TYPE process_open_fds gauge\nprocess_open_fds {}\n\
             # HELP process_threads Threads of the server process.\n\
             # TYPE process_threads gauge\nprocess_threads {}",
            process.cpu_seconds, process.rss_bytes, process.open_fds, process.threads
        );
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
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
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
        };
        let text = render(&CounterSnapshot::default(), &gauges);
        assert!(text.contains("sfu_rtp_forwarded_total 0"));
        assert!(text.contains("sfu_nacks_received_total 0"));
        assert!(text.contains("sfu_layer_switches_total 0"));
        assert!(text.contains("sfu_egress_estimate_bps 0"));
        assert!(text.contains("sfu_participants 2"));
        assert!(text.contains("sfu_tracks 4"));
        assert!(text.contains("sfu_worker_queue_depth{worker=\"1\"} 5"));
        assert!(text.contains("sfu_worker_queue_drops_total{worker=\"1\"} 2"));
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_cpu_seconds_total "));
            assert!(ProcessStats::read_self().is_some_and(|p| p.rss_bytes > 0));
        }
    }
}
