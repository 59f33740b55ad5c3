//! What the run looked like over time: at a fixed interval through the measured window, what
//! viewers received since the previous sample (bitrate spread over viewers, audio and video
//! packets per second, loss, audio jitter, freezes, the layers they were on) and what the
//! server did (CPU cores, forwarded packets per second, memory). Sampling is a pure function
//! of bot snapshots and server samples with their instants; the run loop passes them in.
//! The number of samples is bounded: a long window gets a longer interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::observe::BotSnapshot;
use super::report::{ServerSample, Spread};
use super::scenario::BotPlan;

/// The most samples a timeline keeps (an hour at one per second).
pub const MAX_SAMPLES: usize = 3600;

/// What the server did between two samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerPoint {
    /// CPU cores used (CPU-seconds per second), if the CPU time is known.
    pub cpu_cores: Option<f64>,
    /// RTP packets forwarded per second.
    pub forwarded_per_second: f64,
    /// Mbit/s sent on the media sockets.
    pub mbit_per_second: f64,
    /// Resident memory at the sample, if known.
    pub rss_bytes: Option<u64>,
}

/// One sample: the interval that ends `t` seconds into the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the window started.
    pub t: f64,
    /// Received bitrate per viewer over the interval, kbit/s (payload, audio and video).
    pub bitrate_kbps: Spread,
    /// Audio packets received per second, all viewers together.
    pub audio_packets_per_second: f64,
    /// Video packets received per second, all viewers together.
    pub video_packets_per_second: f64,
    /// Packets lost in the interval, percent of those expected (audio and video).
    pub loss_percent: f64,
    /// Audio interarrival jitter now, mean over the viewers' audio streams, ms.
    pub audio_jitter_ms: Option<f64>,
    /// The largest audio jitter now, ms.
    pub audio_jitter_max_ms: Option<f64>,
    /// Freezes that started in the interval.
    pub freezes: u32,
    /// Viewers with a video stream frozen at the sample.
    pub frozen_viewers: usize,
    /// Received video streams by size (or layer) at the sample.
    pub layers: BTreeMap<String, usize>,
    /// The server, when its metrics could be read at both ends of the interval.
    pub server: Option<ServerPoint>,
}

/// Samples at a fixed interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// The samples, in time order.
    pub samples: Vec<Sample>,
}

/// Takes the samples of a timeline.
#[derive(Debug, Clone)]
pub struct Sampler {
    interval: Duration,
    started: Instant,
    bots: (Instant, Vec<BotSnapshot>),
    server: Option<(Instant, ServerSample)>,
    timeline: Timeline,
}

impl Sampler {
    /// Samples every `interval` (longer if a window of `window` would need more than
    /// [`MAX_SAMPLES`]) from the window's start: when it started, the bots then, and the
    /// server then (with the instant it was read).
    pub fn new(
        interval: Duration,
        window: Duration,
        started: Instant,
        bots: Vec<BotSnapshot>,
        server: Option<(Instant, ServerSample)>,
    ) -> Sampler {
        let interval = interval
            .max(window / MAX_SAMPLES as u32)
            .max(Duration::from_millis(10));
        Sampler {
            interval,
            started,
            bots: (started, bots),
            server,
            timeline: Timeline {
                interval_seconds: interval.as_secs_f64(),
                samples: Vec::new(),
            },
        }
    }

    /// When the next sample is due.
    pub fn next_due(&self) -> Instant {
        let taken = u32::try_from(self.timeline.samples.len()).unwrap_or(u32::MAX);
        self.started + self.interval.saturating_mul(taken.saturating_add(1))
    }

    /// Whether the last sample is further than half an interval from `now` (the window's
    /// end deserves a last, shorter sample then).
    pub fn behind(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.bots.0) > self.interval / 2
    }

    /// Records the interval that ends at `now`: the bots at `now` (in plan order) and the
    /// server with the instant it was read. Beyond [`MAX_SAMPLES`] nothing is kept.
    pub fn record(
        &mut self,
        now: Instant,
        plans: &[BotPlan],
        bots: Vec<BotSnapshot>,
        server: Option<(Instant, ServerSample)>,
    ) {
        if self.timeline.samples.len() >= MAX_SAMPLES {
            return;
        }
        let seconds = now.saturating_duration_since(self.bots.0).as_secs_f64();
        let mut sample = viewers_sample(plans, &self.bots.1, &bots, seconds);
        sample.t = now.saturating_duration_since(self.started).as_secs_f64();
        sample.server = match (self.server, server) {
            (Some(a), Some(b)) => Some(server_point(a, b)),
            _ => None,
        };
        self.timeline.samples.push(sample);
        self.bots = (now, bots);
        if server.is_some() {
            self.server = server;
        }
    }

    /// The samples taken.
    pub fn finish(self) -> Timeline {
        self.timeline
    }
}

/// What viewers received between snapshots `before` and `after`, `seconds` apart.
fn viewers_sample(
    plans: &[BotPlan],
    before: &[BotSnapshot],
    after: &[BotSnapshot],
    seconds: f64,
) -> Sample {
    let seconds = seconds.max(1e-3);
    let mut sample = Sample::default();
    let (mut expected, mut lost) = (0, 0);
    let (mut audio, mut video) = (0, 0);
    let mut rates = Vec::new();
    let mut jitter = Vec::new();
    for ((plan, a), b) in plans.iter().zip(before).zip(after) {
        if !plan.role.subscribes() {
            continue;
        }
        rates.push(b.bytes().saturating_sub(a.bytes()) as f64 * 8.0 / seconds / 1000.0);
        audio += b.packets_of(false).saturating_sub(a.packets_of(false));
        video += b.packets_of(true).saturating_sub(a.packets_of(true));
        let ((e0, l0), (e1, l1)) = (a.expected_and_lost(), b.expected_and_lost());
        expected += e1.saturating_sub(e0);
        lost += l1.saturating_sub(l0);
        sample.freezes += b.freezes().0.saturating_sub(a.freezes().0);
        sample.frozen_viewers += usize::from(b.frozen());
        jitter.extend(b.audio_jitter_ms());
        for layer in b.sizes() {
            *sample.layers.entry(layer).or_default() += 1;
        }
    }
    sample.bitrate_kbps = Spread::of(&rates);
    sample.audio_packets_per_second = audio as f64 / seconds;
    sample.video_packets_per_second = video as f64 / seconds;
    sample.loss_percent = if expected > 0 {
        lost as f64 * 100.0 / expected as f64
    } else {
        0.0
    };
    if !jitter.is_empty() {
        sample.audio_jitter_ms = Some(jitter.iter().sum::<f64>() / jitter.len() as f64);
        sample.audio_jitter_max_ms = jitter.iter().copied().reduce(f64::max);
    }
    sample
}

/// What the server did between samples `a` and `b`.
fn server_point(a: (Instant, ServerSample), b: (Instant, ServerSample)) -> ServerPoint {
    let seconds = b.0.saturating_duration_since(a.0).as_secs_f64().max(1e-3);
    let (c0, c1) = (a.1.counters, b.1.counters);
    ServerPoint {
        cpu_cores: match (a.1.process, b.1.process) {
            (Some(p0), Some(p1)) => Some((p1.cpu_seconds - p0.cpu_seconds).max(0.0) / seconds),
            _ => None,
        },
        forwarded_per_second: c1.rtp_forwarded.saturating_sub(c0.rtp_forwarded) as f64 / seconds,
        mbit_per_second: c1.bytes_sent.saturating_sub(c0.bytes_sent) as f64 * 8.0 / seconds / 1e6,
        rss_bytes: b.1.process.map(|p| p.rss_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_probe::{ProcessSample, ServerCounters};
    use crate::swarm::observe::StreamSnapshot;
    use crate::swarm::scenario::Role;

    fn stream(video: bool, packets: u64, bytes: u64, freezes: u32) -> StreamSnapshot {
        StreamSnapshot {
            video,
            publisher: Some("p".into()),
            packets,
            bytes,
            expected: packets + 1,
            lost: 1,
            frames: packets,
            freezes,
            frozen: false,
            freeze_time: Duration::ZERO,
            first_frame: None,
            size: video.then_some((640, 360)),
            layer: None,
            jitter_ms: (!video).then_some(2.0),
        }
    }

    fn viewer(audio: u64, video: u64, freezes: u32) -> BotSnapshot {
        BotSnapshot {
            streams: vec![
                stream(false, audio, audio * 100, 0),
                stream(true, video, video * 1000, freezes),
            ],
            ..BotSnapshot::default()
        }
    }

    fn plan(role: Role) -> BotPlan {
        BotPlan {
            room: "r".into(),
            identity: "i".into(),
            role,
            tag: 1,
        }
    }

    fn server(cpu: f64, forwarded: u64) -> ServerSample {
        ServerSample {
            counters: ServerCounters {
                rtp_forwarded: forwarded,
                bytes_sent: forwarded * 1000,
                ..ServerCounters::default()
            },
            process: Some(ProcessSample {
                cpu_seconds: cpu,
                rss_bytes: 50 << 20,
            }),
        }
    }

    #[test]
    fn a_sample_holds_the_rates_over_its_interval() {
        let t0 = Instant::now();
        let plans = [
            plan(Role::Publisher),
            plan(Role::Subscriber),
            plan(Role::Subscriber),
        ];
        let start = vec![BotSnapshot::default(), viewer(0, 0, 0), viewer(0, 0, 0)];
        let mut sampler = Sampler::new(
            Duration::from_secs(1),
            Duration::from_secs(10),
            t0,
            start,
            Some((t0, server(1.0, 0))),
        );
        assert_eq!(sampler.next_due(), t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(2);
        let now = vec![
            BotSnapshot::default(),
            viewer(100, 200, 1),
            viewer(100, 400, 0),
        ];
        sampler.record(t1, &plans, now, Some((t1, server(2.0, 1000))));
        assert_eq!(sampler.next_due(), t0 + Duration::from_secs(2));
        let timeline = sampler.finish();
        let s = &timeline.samples[0];
        assert_eq!(s.t, 2.0);
        // Viewer 1: 10,000 + 200,000 bytes in 2 s = 840 kbit/s; viewer 2: 1640 kbit/s.
        assert_eq!((s.bitrate_kbps.min, s.bitrate_kbps.max), (840.0, 1640.0));
        assert_eq!(s.audio_packets_per_second, 100.0);
        assert_eq!(s.video_packets_per_second, 300.0);
        assert_eq!((s.freezes, s.audio_jitter_ms), (1, Some(2.0)));
        assert_eq!(s.layers.get("640x360"), Some(&2));
        let srv = s.server.as_ref().unwrap();
        assert_eq!(
            (srv.cpu_cores, srv.forwarded_per_second),
            (Some(0.5), 500.0)
        );
        assert_eq!(srv.rss_bytes, Some(50 << 20));
    }

    #[test]
    fn a_long_window_gets_a_longer_interval_and_samples_stay_bounded() {
        let t0 = Instant::now();
        let hours = Duration::from_secs(10 * 3600);
        let mut sampler = Sampler::new(Duration::from_secs(1), hours, t0, Vec::new(), None);
        assert_eq!(sampler.interval, Duration::from_secs(10));
        for i in 1..=MAX_SAMPLES as u64 + 5 {
            sampler.record(t0 + Duration::from_secs(i * 10), &[], Vec::new(), None);
        }
        assert_eq!(sampler.finish().samples.len(), MAX_SAMPLES);
    }
}
