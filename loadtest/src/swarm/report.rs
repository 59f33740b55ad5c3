//! The swarm's report: what viewers experienced (joins, time to first frame, bitrate, loss,
//! NACKs, PLIs, freezes, layers; in an audio-only run, audio packets, loss and jitter) and what
//! it cost the server, computed from bot snapshots and server samples taken at the start and
//! end of the measured window, with a timeline sampled through it; printed as a table, JSON or
//! an HTML page (see [`super::html`]), and checked against thresholds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::observe::BotSnapshot;
use super::scenario::{BotPlan, Scenario};
use super::timeline::Timeline;
use crate::server_probe::{ProcessSample, ServerCounters};

/// The server's counters and (if known) its process's CPU time and memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSample {
    /// From `/metrics`.
    pub counters: ServerCounters,
    /// From `/proc/PID` or `/metrics`.
    pub process: Option<ProcessSample>,
}

/// One node of a cluster at the start and end of the measured window.
#[derive(Debug, Clone)]
pub struct NodeSamples {
    /// Its `host:port`.
    pub server: String,
    /// At the start of the window.
    pub start: Option<ServerSample>,
    /// At the end of the window.
    pub end: Option<ServerSample>,
}

/// What one node of a cluster did in the window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its `host:port`.
    pub server: String,
    /// What it forwarded and what that cost (memory per viewer is not split by node).
    #[serde(flatten)]
    pub report: ServerReport,
}

/// Limits that make the run fail.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Thresholds {
    /// Largest packet loss, in percent of packets expected by viewers.
    pub max_loss_percent: Option<f64>,
    /// Largest 95th percentile of join to first frame, in milliseconds.
    pub max_ttff_p95_ms: Option<f64>,
}

/// The clip publishers replayed.
#[derive(Debug, Clone, Serialize)]
pub struct MediaInfo {
    /// Layer sizes, lowest first (`"1280x720"`; none in an audio-only run).
    pub layers: Vec<String>,
    /// Average bitrate of each layer, kbit/s.
    pub layer_kbps: Vec<f64>,
    /// Average bitrate of the Opus audio, kbit/s.
    pub audio_kbps: f64,
    /// Time spent encoding it, ms.
    pub encode_ms: f64,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The scenario.
    pub scenario: Scenario,
    /// One per bot, in start order.
    pub plans: Vec<BotPlan>,
    /// Bots at the start of the measured window.
    pub start: Vec<BotSnapshot>,
    /// Bots at the end of the measured window.
    pub end: Vec<BotSnapshot>,
    /// Length of the measured window.
    pub window: Duration,
    /// How long starting the bots and waiting for first frames took.
    pub join_time: Duration,
    /// The server before any bot joined.
    pub server_baseline: Option<ServerSample>,
    /// The server at the start of the window.
    pub server_start: Option<ServerSample>,
    /// The server at the end of the window.
    pub server_end: Option<ServerSample>,
    /// Each node of a cluster (`server` and the others), at the start and end of the window;
    /// empty with one server.
    pub nodes: Vec<NodeSamples>,
    /// The clip, if publishers replayed one.
    pub media: Option<MediaInfo>,
    /// Samples through the window.
    pub timeline: Timeline,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples present.
    pub count: usize,
    /// Samples missing (counted as infinite in the percentiles).
    pub missing: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles; a missing sample ranks above every present one, so a viewer
    /// that never saw a frame pushes the percentiles up rather than vanishing.
    pub fn of(samples: &[Option<f64>]) -> Percentiles {
        let mut present: Vec<f64> = samples.iter().flatten().copied().collect();
        present.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |p: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let index = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
            present.get(index).copied()
        };
        Percentiles {
            count: present.len(),
            missing: n - present.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: if present.len() == n {
                present.last().copied()
            } else {
                None
            },
        }
    }
}

/// Smallest, median, mean and largest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of `values` (all zero when there are none).
    pub(crate) fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Spread::default();
        }
        Spread {
            min: v.first().copied().unwrap_or(0.0),
            p50: v.get((n - 1) / 2).copied().unwrap_or(0.0),
            mean: v.iter().sum::<f64>() / n as f64,
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// Joining.
#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    /// Bots started.
    pub attempted: usize,
    /// Bots the server accepted.
    pub joined: usize,
    /// `joined / attempted`.
    pub success_rate: f64,
    /// Why bots failed (distinct reasons, at most 10).
    pub failures: Vec<String>,
    /// Seconds from the first start to the window (everyone receiving, or the timeout).
    pub seconds: f64,
}

/// One viewer.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerReport {
    /// Identity.
    pub identity: String,
    /// Room.
    pub room: String,
    /// Join to first frame (audio only: to the first audio packet), ms.
    pub ttff_ms: Option<f64>,
    /// Received bitrate over the window, kbit/s (payload).
    pub bitrate_kbps: f64,
    /// Packets received in the window.
    pub packets: u64,
    /// Packets lost in the window.
    pub lost: u64,
    /// Audio packets received in the window.
    pub audio_packets: u64,
    /// Audio interarrival jitter at the end, the largest over its audio streams, ms.
    pub audio_jitter_ms: Option<f64>,
    /// NACKs sent (whole run).
    pub nacks: u64,
    /// PLIs and FIRs sent (whole run).
    pub plis: u64,
    /// Freezes in the window.
    pub freezes: u32,
    /// Their total length, ms.
    pub freeze_ms: f64,
    /// Picture size (or layer) of each video stream at the end.
    pub layers: Vec<String>,
    /// Publishers whose audio and video (audio only: whose audio) arrived.
    pub publishers_received: usize,
    /// Publishers it should receive.
    pub publishers_expected: usize,
}

/// Audio received by all viewers together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AudioSummary {
    /// Audio streams received at the end (one per viewer and publisher heard).
    pub streams: usize,
    /// Audio packets received in the window.
    pub packets_received: u64,
    /// Per viewer and second (mean).
    pub packets_per_second_per_viewer: f64,
    /// Audio packets the sequence numbers say were sent in the window.
    pub packets_expected: u64,
    /// Audio packets lost in the window.
    pub packets_lost: u64,
    /// `packets_lost / packets_expected`, percent.
    pub loss_percent: f64,
    /// Interarrival jitter (RFC 3550) of the audio streams at the end, ms, as the bots saw
    /// it (their own scheduling delays included).
    pub jitter_ms: Spread,
}

/// All viewers together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerSummary {
    /// Viewers (bots that subscribe).
    pub count: usize,
    /// Viewers that received audio and video (audio only: audio) from every publisher they
    /// should.
    pub receiving_everything: usize,
    /// Received bitrate per viewer, kbit/s.
    pub bitrate_kbps: Spread,
    /// Packets received in the window.
    pub packets_received: u64,
    /// Video packets among them (none in an audio-only run).
    pub video_packets_received: u64,
    /// Payload bytes received in the window.
    pub bytes_received: u64,
    /// Packets the sequence numbers say were sent in the window.
    pub packets_expected: u64,
    /// Packets lost in the window.
    pub packets_lost: u64,
    /// `packets_lost / packets_expected`, percent.
    pub loss_percent: f64,
    /// NACKs sent (whole run).
    pub nacks_sent: u64,
    /// PLIs and FIRs sent (whole run).
    pub plis_sent: u64,
    /// Freezes in the window (no new frame for more than 500 ms).
    pub freezes: u32,
    /// Their total length, seconds.
    pub freeze_seconds: f64,
    /// Video streams by the size (or layer) received at the end.
    pub layers: BTreeMap<String, usize>,
    /// Audio alone.
    pub audio: AudioSummary,
}

/// What the server did in the window and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    /// RTP packets forwarded to subscribers.
    pub rtp_forwarded: u64,
    /// Per second.
    pub rtp_forwarded_per_second: f64,
    /// RTP payload bytes forwarded.
    pub rtp_bytes_forwarded: u64,
    /// Bytes sent on the media sockets (SRTP, RTCP, ...).
    pub bytes_sent: u64,
    /// Mbit/s sent.
    pub mbit_per_second: f64,
    /// RTP packets received from publishers.
    pub rtp_received: u64,
    /// NACKs received from subscribers.
    pub nacks_received: u64,
    /// Keyframe requests received from subscribers.
    pub keyframe_requests_received: u64,
    /// CPU seconds the server process used (if known).
    pub cpu_seconds: Option<f64>,
    /// CPU use, percent of one core.
    pub cpu_percent_of_core: Option<f64>,
    /// Forwarded RTP packets per server CPU-second.
    pub forwarded_per_cpu_second: Option<f64>,
    /// Server CPU-seconds per forwarded Gbit (bytes sent on the media sockets).
    pub cpu_seconds_per_gbit: Option<f64>,
    /// SFU-added latency of forwarded packets in the window (the server's sampled
    /// histogram): at most this many milliseconds for half of them, and for 99%.
    pub latency_p50_ms: Option<f64>,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: Option<f64>,
    /// Packets in the server's latency sample in the window.
    pub latency_samples: u64,
    /// Resident memory at the end.
    pub rss_bytes: Option<u64>,
    /// Resident memory before any bot joined.
    pub rss_baseline_bytes: Option<u64>,
    /// `(rss - baseline) / viewers`.
    pub rss_per_viewer_bytes: Option<f64>,
}

/// Publishers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherSummary {
    /// Publishing bots.
    pub count: usize,
    /// Media packets they sent in the window.
    pub packets_sent: u64,
    /// Keyframe requests they received (whole run).
    pub keyframe_requests: u64,
}

/// Everything received by every bot since it started, at the end of the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Packets.
    pub packets_received: u64,
    /// Payload bytes.
    pub bytes_received: u64,
}

/// Pass or fail.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// No threshold was exceeded.
    pub passed: bool,
    /// What was exceeded, as sentences.
    pub violations: Vec<String>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub scenario: Scenario,
    /// The clip, if any.
    pub media: Option<MediaInfo>,
    /// Length of the measured window, seconds.
    pub window_seconds: f64,
    /// Joining.
    pub join: JoinReport,
    /// Join to first frame over viewers, ms.
    pub ttff_ms: Percentiles,
    /// Viewers together.
    pub viewers: ViewerSummary,
    /// Publishers together.
    pub publishers: PublisherSummary,
    /// The server, when its metrics could be read.
    pub server: Option<ServerReport>,
    /// Each node of a cluster, when bots were spread over several servers.
    pub nodes: Vec<NodeReport>,
    /// Everything received since the start.
    pub totals: Totals,
    /// Synthetic payloads that did not verify.
    pub bad_payloads: u64,
    /// Thresholds applied.
    pub thresholds: Thresholds,
    /// Pass or fail.
    pub verdict: Verdict,
    /// One entry per viewer.
    pub per_viewer: Vec<ViewerReport>,
    /// Samples through the window (viewers and server over time).
    pub timeline: Timeline,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    /// Computes the report.
    pub fn new(run: &RunData, thresholds: Thresholds) -> Report {
        let window = run.window.as_secs_f64().max(1e-9);
        let video = run.scenario.video();
        let mut audio = AudioSummary::default();
        let mut jitter = Vec::new();
        let bots = run.plans.iter().zip(run.start.iter().zip(&run.end));
        let mut per_viewer = Vec::new();
        let mut publishers = PublisherSummary::default();
        let mut failures: Vec<String> = Vec::new();
        let mut bad_payloads = 0;
        let mut totals = Totals::default();
        for (plan, (start, end)) in bots {
            bad_payloads += end.bad_payloads;
            totals.packets_received += end.packets();
            totals.bytes_received += end.bytes();
            if !end.joined() {
                let reason = end
                    .error
                    .clone()
                    .or_else(|| end.ended.clone())
                    .unwrap_or_else(|| "no answer from the server".into());
                if failures.len() < 10 && !failures.contains(&reason) {
                    failures.push(reason);
                }
            }
            if plan.role.publishes() {
                publishers.count += 1;
                publishers.packets_sent += end.packets_sent.saturating_sub(start.packets_sent);
                publishers.keyframe_requests += end.keyframe_requests;
            }
            if !plan.role.subscribes() {
                continue;
            }
            let (e0, l0) = start.expected_and_lost();
            let (e1, l1) = end.expected_and_lost();
            let (f0, t0) = start.freezes();
            let (f1, t1) = end.freezes();
            let packets = end.packets().saturating_sub(start.packets());
            let bytes = end.bytes().saturating_sub(start.bytes());
            let audio_packets = end
                .packets_of(false)
                .saturating_sub(start.packets_of(false));
            let ((ae0, al0), (ae1, al1)) = (
                start.expected_and_lost_of(false),
                end.expected_and_lost_of(false),
            );
            audio.streams += end.streams.iter().filter(|s| !s.video).count();
            audio.packets_received += audio_packets;
            audio.packets_expected += ae1.saturating_sub(ae0);
            audio.packets_lost += al1.saturating_sub(al0);
            let viewer_jitter: Vec<f64> = end.audio_jitter_ms().collect();
            jitter.extend(&viewer_jitter);
            per_viewer.push((
                ViewerReport {
                    identity: plan.identity.clone(),
                    room: plan.room.clone(),
                    ttff_ms: end.time_to_first_frame(video).map(ms),
                    bitrate_kbps: bytes as f64 * 8.0 / window / 1000.0,
                    packets,
                    lost: l1.saturating_sub(l0),
                    audio_packets,
                    audio_jitter_ms: viewer_jitter.into_iter().reduce(f64::max),
                    nacks: end.nacks_sent,
                    plis: end.plis_sent,
                    freezes: f1.saturating_sub(f0),
                    freeze_ms: ms(t1.saturating_sub(t0)),
                    layers: end.sizes(),
                    publishers_received: end.complete_publishers(video),
                    publishers_expected: run.scenario.expected_publishers(plan.role),
                },
                bytes,
                e1.saturating_sub(e0),
            ));
        }
        let attempted = run.plans.len();
        let joined = run.end.iter().filter(|b| b.joined()).count();
        let ttff: Vec<Option<f64>> = per_viewer.iter().map(|(v, ..)| v.ttff_ms).collect();
        let mut viewers = ViewerSummary {
            count: per_viewer.len(),
            ..ViewerSummary::default()
        };
        let mut rates = Vec::new();
        for (v, bytes, expected) in &per_viewer {
            if v.publishers_received >= v.publishers_expected {
                viewers.receiving_everything += 1;
            }
            rates.push(v.bitrate_kbps);
            viewers.packets_received += v.packets;
            viewers.video_packets_received += v.packets.saturating_sub(v.audio_packets);
            viewers.bytes_received += bytes;
            viewers.packets_expected += expected;
            viewers.packets_lost += v.lost;
            viewers.nacks_sent += v.nacks;
            viewers.plis_sent += v.plis;
            viewers.freezes += v.freezes;
            viewers.freeze_seconds += v.freeze_ms / 1000.0;
            for layer in &v.layers {
                *viewers.layers.entry(layer.clone()).or_default() += 1;
            }
        }
        viewers.bitrate_kbps = Spread::of(&rates);
        audio.packets_per_second_per_viewer = if viewers.count > 0 {
            audio.packets_received as f64 / viewers.count as f64 / window
        } else {
            0.0
        };
        audio.loss_percent = if audio.packets_expected > 0 {
            audio.packets_lost as f64 * 100.0 / audio.packets_expected as f64
        } else {
            0.0
        };
        audio.jitter_ms = Spread::of(&jitter);
        viewers.audio = audio;
        viewers.loss_percent = if viewers.packets_expected > 0 {
            viewers.packets_lost as f64 * 100.0 / viewers.packets_expected as f64
        } else {
            0.0
        };
        let server = server_report(run, window, viewers.count);
        let nodes = run
            .nodes
            .iter()
            .filter_map(|n| {
                Some(NodeReport {
                    server: n.server.clone(),
                    report: window_report(n.start?, n.end?, None, window, 0),
                })
            })
            .collect();
        let mut report = Report {
            scenario: run.scenario.clone(),
            media: run.media.clone(),
            window_seconds: run.window.as_secs_f64(),
            join: JoinReport {
                attempted,
                joined,
                success_rate: if attempted > 0 {
                    joined as f64 / attempted as f64
                } else {
                    1.0
                },
                failures,
                seconds: run.join_time.as_secs_f64(),
            },
            ttff_ms: Percentiles::of(&ttff),
            viewers,
            publishers,
            server,
            nodes,
            totals,
            bad_payloads,
            thresholds,
            verdict: Verdict::default(),
            per_viewer: per_viewer.into_iter().map(|(v, ..)| v).collect(),
            timeline: run.timeline.clone(),
        };
        report.verdict = report.check();
        report
    }

    fn check(&self) -> Verdict {
        let mut violations = Vec::new();
        if self.join.joined < self.join.attempted {
            violations.push(format!(
                "{} of {} bots could not join",
                self.join.attempted - self.join.joined,
                self.join.attempted
            ));
        }
        if let Some(max) = self.thresholds.max_loss_percent
            && self.viewers.loss_percent > max
        {
            violations.push(format!(
                "packet loss {:.3}% is above --max-loss {max}%",
                self.viewers.loss_percent
            ));
        }
        if let Some(max) = self.thresholds.max_ttff_p95_ms {
            match self.ttff_ms.p95 {
                Some(p95) if p95 <= max => {}
                Some(p95) => violations.push(format!(
                    "join-to-first-frame p95 {p95:.0} ms is above --max-ttff-p95 {max} ms"
                )),
                None if self.viewers.count > 0 => violations.push(format!(
                    "join-to-first-frame p95 is unknown ({} of {} viewers saw no frame), --max-ttff-p95 {max} ms",
                    self.ttff_ms.missing, self.viewers.count
                )),
                None => {}
            }
        }
        Verdict {
            passed: violations.is_empty(),
            violations,
        }
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let f1 = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "scenario   {} room(s) x ({} {} + {} viewers), {} media{}{}, {}, {:.1} s measured",
            s.rooms,
            s.publishers,
            match s.publisher_role {
                super::scenario::Role::Both => "participants",
                _ => "publishers",
            },
            s.subscribers,
            match s.media {
                super::scenario::Media::Clip => "clip",
                super::scenario::Media::Synthetic => "synthetic",
            },
            if s.simulcast && s.video() {
                ", simulcast"
            } else {
                ""
            },
            if s.audio_only { ", audio only" } else { "" },
            match s.protocol {
                super::scenario::Protocol::Signalling => "signalling",
                super::scenario::Protocol::WhipWhep => "WHIP/WHEP",
            },
            self.window_seconds
        );
        let _ = writeln!(
            out,
            "joins      {}/{} ({:.1}%) in {:.1} s{}",
            self.join.joined,
            self.join.attempted,
            self.join.success_rate * 100.0,
            self.join.seconds,
            if self.join.failures.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", self.join.failures.join("; "))
            }
        );
        let t = &self.ttff_ms;
        let _ = writeln!(
            out,
            "{}  p50 {} ms  p95 {} ms  p99 {} ms  max {} ms{}",
            if s.video() {
                "first frame"
            } else {
                "first audio"
            },
            f1(t.p50),
            f1(t.p95),
            f1(t.p99),
            f1(t.max),
            if t.missing > 0 {
                format!("  ({} viewers saw none)", t.missing)
            } else {
                String::new()
            }
        );
        let v = &self.viewers;
        let _ = writeln!(
            out,
            "viewers    {} receiving everything of {}; bitrate kbit/s min {:.0} p50 {:.0} max {:.0}",
            v.receiving_everything,
            v.count,
            v.bitrate_kbps.min,
            v.bitrate_kbps.p50,
            v.bitrate_kbps.max
        );
        let _ = writeln!(
            out,
            "loss       {:.3}% ({} of {} packets); NACKs sent {}; PLIs sent {}",
            v.loss_percent, v.packets_lost, v.packets_expected, v.nacks_sent, v.plis_sent
        );
        let a = &v.audio;
        let _ = writeln!(
            out,
            "audio      {:.1} packets/s per viewer ({} streams), loss {:.3}% ({} of {}); jitter ms p50 {:.1} max {:.1}",
            a.packets_per_second_per_viewer,
            a.streams,
            a.loss_percent,
            a.packets_lost,
            a.packets_expected,
            a.jitter_ms.p50,
            a.jitter_ms.max
        );
        if s.video() {
            let layers: Vec<String> = v.layers.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = writeln!(
                out,
                "freezes    {} totalling {:.1} s; layers received: {}",
                v.freezes,
                v.freeze_seconds,
                layers.join(", ")
            );
        } else {
            let _ = writeln!(
                out,
                "video      none in this run (audio only): no freezes or layers; {} video packets received",
                v.video_packets_received
            );
        }
        if let Some(srv) = &self.server {
            let _ = writeln!(
                out,
                "server     forwarded {} RTP packets ({:.0}/s), {:.1} Mbit/s; NACKs in {}, keyframe requests in {}",
                srv.rtp_forwarded,
                srv.rtp_forwarded_per_second,
                srv.mbit_per_second,
                srv.nacks_received,
                srv.keyframe_requests_received
            );
            if let (Some(cpu), Some(per_cpu), Some(per_gbit)) = (
                srv.cpu_seconds,
                srv.forwarded_per_cpu_second,
                srv.cpu_seconds_per_gbit,
            ) {
                let _ = writeln!(
                    out,
                    "cost       {cpu:.2} CPU-s ({:.0}% of a core): {per_cpu:.0} packets per CPU-second, {per_gbit:.3} CPU-s per Gbit",
                    srv.cpu_percent_of_core.unwrap_or(0.0)
                );
            }
            if let (Some(p50), Some(p99)) = (srv.latency_p50_ms, srv.latency_p99_ms) {
                let _ = writeln!(
                    out,
                    "latency    SFU-added (socket to socket): p50 <= {p50} ms, p99 <= {p99} ms ({} packets sampled)",
                    srv.latency_samples
                );
            }
            if let Some(rss) = srv.rss_bytes {
                let _ = writeln!(
                    out,
                    "memory     RSS {:.1} MiB{}",
                    rss as f64 / 1048576.0,
                    srv.rss_per_viewer_bytes
                        .map(|b| format!(", {:.0} KiB per viewer over the baseline", b / 1024.0))
                        .unwrap_or_default()
                );
            }
        } else {
            let _ = writeln!(out, "server     metrics not available");
        }
        for node in &self.nodes {
            let n = &node.report;
            let _ = writeln!(
                out,
                "node       {}: forwarded {} RTP packets ({:.0}/s), {:.1} Mbit/s{}",
                node.server,
                n.rtp_forwarded,
                n.rtp_forwarded_per_second,
                n.mbit_per_second,
                match (n.cpu_percent_of_core, n.forwarded_per_cpu_second) {
                    (Some(cpu), Some(per_cpu)) =>
                        format!(", {cpu:.0}% of a core, {per_cpu:.0} packets per CPU-second"),
                    (Some(cpu), None) => format!(", {cpu:.0}% of a core"),
                    _ => String::new(),
                }
            );
        }
        if self.bad_payloads > 0 {
            let _ = writeln!(out, "payloads   {} did not verify", self.bad_payloads);
        }
        let _ = writeln!(
            out,
            "verdict    {}",
            if self.verdict.passed {
                "pass".to_string()
            } else {
                format!("FAIL: {}", self.verdict.violations.join("; "))
            }
        );
        out
    }
}

fn server_report(run: &RunData, window: f64, viewers: usize) -> Option<ServerReport> {
    let (a, b) = (run.server_start?, run.server_end?);
    Some(window_report(a, b, run.server_baseline, window, viewers))
}

/// What a server did between samples `a` and `b`, `window` seconds apart.
fn window_report(
    a: ServerSample,
    b: ServerSample,
    baseline: Option<ServerSample>,
    window: f64,
    viewers: usize,
) -> ServerReport {
    let (c0, c1) = (a.counters, b.counters);
    let d = |f: fn(&ServerCounters) -> u64| f(&c1).saturating_sub(f(&c0));
    let forwarded = d(|c| c.rtp_forwarded);
    let bytes_sent = d(|c| c.bytes_sent);
    let gbit = bytes_sent as f64 * 8.0 / 1e9;
    let cpu = match (a.process, b.process) {
        (Some(p0), Some(p1)) => Some(p1.cpu_seconds - p0.cpu_seconds),
        _ => None,
    };
    let rss = b.process.map(|p| p.rss_bytes);
    let latency = c1.forward_latency.since(&c0.forward_latency);
    let ms = |q: f64| latency.quantile_at_most(q).map(|s| s * 1000.0);
    let baseline = baseline.and_then(|s| s.process).map(|p| p.rss_bytes);
    ServerReport {
        rtp_forwarded: forwarded,
        rtp_forwarded_per_second: forwarded as f64 / window,
        rtp_bytes_forwarded: d(|c| c.rtp_bytes_forwarded),
        bytes_sent,
        mbit_per_second: bytes_sent as f64 * 8.0 / window / 1e6,
        rtp_received: d(|c| c.rtp_received),
        nacks_received: d(|c| c.nacks_received),
        keyframe_requests_received: d(|c| c.keyframe_requests_received),
        cpu_seconds: cpu,
        cpu_percent_of_core: cpu.map(|c| c / window * 100.0),
        forwarded_per_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| forwarded as f64 / c),
        cpu_seconds_per_gbit: cpu.filter(|_| gbit > 0.0).map(|c| c / gbit),
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
        latency_samples: latency.count(),
        rss_bytes: rss,
        rss_baseline_bytes: baseline,
        rss_per_viewer_bytes: match (rss, baseline) {
            (Some(r), Some(b)) if viewers > 0 => Some(r.saturating_sub(b) as f64 / viewers as f64),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_rank_missing_samples_last() {
        let samples: Vec<Option<f64>> = (1..=100).map(|i| Some(f64::from(i))).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max),
            (Some(50.0), Some(95.0), Some(99.0), Some(100.0))
        );
        let mut some_missing = samples[..96].to_vec();
        some_missing.extend([None, None, None, None]);
        let p = Percentiles::of(&some_missing);
        assert_eq!(
            (p.p95, p.p99, p.missing, p.max),
            (Some(95.0), None, 4, None)
        );
        assert_eq!(Percentiles::of(&[]).p50, None);
    }

    #[test]
    fn spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.p50, s.mean, s.max), (1.0, 2.0, 2.0, 3.0));
    }
}
