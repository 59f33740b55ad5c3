//! Churn: bots joining, publishing, muting, restarting ICE, dropping their signalling socket
//! and resuming, leaving, and vanishing without a word, continuously, while the server's
//! memory, descriptors, threads, peers and participants are sampled. What a soak checks:
//! nothing grows after warm-up, everything returns to its baseline once the bots are gone,
//! nothing panics, and no bot meets an error it did not cause.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sfu_protocol::auth::{ApiKeys, Claims, Grants};
use sfu_protocol::protocol::{ClientMessage, ErrorCode, QualityName};

use crate::bot::{Bot, BotConfig};
use crate::server_probe::{http_get, metric};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// The server, `host:port`.
    pub server: String,
    /// Rooms the bots spread over.
    pub rooms: usize,
    /// Bots alive at once, at most (a third publish).
    pub bots: usize,
    /// How long to churn.
    pub duration: Duration,
    /// Actions (join, leave, vanish, drop and resume, mute, ICE restart, quality) per second.
    pub actions_per_second: f64,
    /// How often the server is sampled.
    pub sample_every: Duration,
    /// Seed of the action sequence.
    pub seed: u64,
    /// API key and secret that sign the bots' tokens.
    pub keys: (String, String),
    /// How long to wait, after the last bot left, for the server to forget everyone.
    pub settle: Duration,
}

/// One look at the server.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub at: f64,
    /// Bots alive (ours).
    pub bots: usize,
    /// The server's peer connections.
    pub peers: u64,
    /// The server's participants.
    pub participants: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
    /// Panics so far.
    pub panics: u64,
    /// Media worker restarts so far.
    pub worker_restarts: u64,
}

/// What a churn run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    /// Before the first bot.
    pub baseline: Sample,
    /// During the run.
    pub samples: Vec<Sample>,
    /// After the last bot left and the server settled (or `settle` passed).
    pub after: Sample,
    /// Actions taken, by name.
    pub actions: BTreeMap<&'static str, u64>,
    /// Bots that did not get `joined` within 10 s.
    pub join_failures: u64,
    /// Errors bots received that they did not provoke, by code and message.
    pub errors: BTreeMap<String, u64>,
}

/// How long a bot may take to join.
const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// A bot of the churn and what it is doing.
struct Live {
    bot: Bot,
    publishes: bool,
    started: Instant,
    /// Its socket is down until then, when it resumes.
    resume_at: Option<Instant>,
    counted_join: bool,
}

/// Runs the churn; `progress` is told each sample.
pub async fn churn(plan: &ChurnPlan, mut progress: impl FnMut(&Sample)) -> ChurnReport {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut report = ChurnReport {
        baseline: sample(&plan.server, 0.0, 0).await,
        ..ChurnReport::default()
    };
    let started = Instant::now();
    let mut live: Vec<Live> = Vec::new();
    // Bots that said `leave`, stopped if the server has not let them go within 5 s.
    let mut leaving: Vec<(Instant, Bot)> = Vec::new();
    let mut next_tag = 1u32;
    let mut next_sample = started + plan.sample_every;
    let pause = Duration::from_secs_f64(1.0 / plan.actions_per_second.max(0.1));
    while started.elapsed() < plan.duration {
        tokio::time::sleep(pause).await;
        let now = Instant::now();
        for l in &mut live {
            if l.resume_at.is_some_and(|at| at <= now) {
                l.resume_at = None;
                l.bot.resume();
            }
            if !l.counted_join && now.duration_since(l.started) > JOIN_WITHIN {
                l.counted_join = true;
                if l.bot.with_state(|s| s.participant.is_none()) {
                    report.join_failures += 1;
                }
            }
        }
        leaving.retain(|(since, bot)| {
            let stuck = since.elapsed() > Duration::from_secs(5);
            if stuck {
                bot.abort();
            }
            !stuck
        });
        let action = act(
            plan,
            &mut rng,
            &mut live,
            &mut leaving,
            &mut next_tag,
            &mut report,
        );
        *report.actions.entry(action).or_default() += 1;
        if now >= next_sample {
            next_sample = now + plan.sample_every;
            let s = sample(&plan.server, started.elapsed().as_secs_f64(), live.len()).await;
            progress(&s);
            report.samples.push(s);
        }
    }
    // Everyone still here leaves properly; the server must then forget them all.
    for l in &live {
        if l.resume_at.is_some() {
            l.bot.resume();
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for l in &live {
        l.bot.leave();
    }
    let bots = live
        .drain(..)
        .map(|l| l.bot)
        .chain(leaving.drain(..).map(|(_, b)| b));
    for bot in bots {
        note_errors(&bot, &mut report);
        let stop = bot.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), bot.join())
            .await
            .is_err()
        {
            stop.abort();
        }
    }
    let settle_by = Instant::now() + plan.settle;
    loop {
        let s = sample(&plan.server, started.elapsed().as_secs_f64(), 0).await;
        report.after = s;
        if (s.peers == 0 && s.participants == 0) || Instant::now() > settle_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report
}

/// Takes one action; returns its name.
fn act(
    plan: &ChurnPlan,
    rng: &mut StdRng,
    live: &mut Vec<Live>,
    leaving: &mut Vec<(Instant, Bot)>,
    next_tag: &mut u32,
    report: &mut ChurnReport,
) -> &'static str {
    let joined: Vec<usize> = live
        .iter()
        .enumerate()
        .filter(|(_, l)| l.resume_at.is_none() && l.bot.with_state(|s| s.participant.is_some()))
        .map(|(i, _)| i)
        .collect();
    let roll = rng.random_range(0..100);
    if live.len() < plan.bots && (roll < 40 || joined.is_empty()) {
        let tag = *next_tag;
        *next_tag += 1;
        let publishes = tag % 3 == 1;
        let room = format!("churn-{}", rng.random_range(0..plan.rooms.max(1)));
        let Some(config) = bot_config(plan, &room, tag, publishes) else {
            return "token failed";
        };
        live.push(Live {
            bot: Bot::spawn(config),
            publishes,
            started: Instant::now(),
            resume_at: None,
            counted_join: false,
        });
        return "join";
    }
    let Some(&i) = joined.get(rng.random_range(0..joined.len().max(1))) else {
        return "wait";
    };
    if roll < 60 {
        let l = live.swap_remove(i);
        note_errors(&l.bot, report);
        return if roll < 50 {
            l.bot.leave();
            leaving.push((Instant::now(), l.bot));
            "leave"
        } else {
            l.bot.abort();
            "vanish"
        };
    }
    let Some(l) = live.get_mut(i) else {
        return "wait";
    };
    match roll {
        60..=69 => {
            l.bot.drop_signalling();
            l.resume_at = Some(Instant::now() + Duration::from_millis(rng.random_range(300..3000)));
            "drop and resume"
        }
        70..=79 if l.publishes => {
            let muted = l.bot.with_state(|s| s.audio_muted);
            l.bot.set_audio_muted(!muted);
            "mute"
        }
        80..=89 => {
            l.bot.restart_ice();
            "restart ICE"
        }
        _ => {
            let track = l
                .bot
                .with_state(|s| s.offered.values().next().map(|(_, t)| t.clone()));
            let Some(track) = track else {
                return "wait";
            };
            let quality = match rng.random_range(0..3) {
                0 => QualityName::Low,
                1 => QualityName::High,
                _ => QualityName::Auto,
            };
            l.bot.signal(ClientMessage::SetQuality {
                track,
                quality,
                width: None,
                height: None,
            });
            "set quality"
        }
    }
}

/// Light synthetic media (15 fps, 2 small packets per frame): many bots on one machine.
fn bot_config(plan: &ChurnPlan, room: &str, tag: u32, publishes: bool) -> Option<BotConfig> {
    let keys = ApiKeys::new([plan.keys.clone()]);
    let grants = Grants {
        room: Some(room.to_string()),
        room_join: true,
        ..Grants::default()
    };
    let claims = Claims::new(
        &plan.keys.0,
        &format!("churn-{tag}"),
        Duration::from_secs(24 * 3600),
        grants,
    );
    let token = keys.mint(&claims).ok()?;
    let mut config = BotConfig::new(&format!("ws://{}/rtc", plan.server), token, publishes, tag);
    config.fps = 15;
    config.packets_per_frame = 2;
    config.video_packet_bytes = 600;
    config.keyframe_interval = 60;
    config.record_seqs = false;
    Some(config)
}

/// Counts the errors a bot got that churn does not provoke.
fn note_errors(bot: &Bot, report: &mut ChurnReport) {
    bot.with_state(|s| {
        for m in &s.messages {
            if let sfu_protocol::protocol::ServerMessage::Error { code, message, .. } = m
                && !matches!(code, ErrorCode::UnknownTrack)
            {
                let what: String = format!("{code:?}: {message}").chars().take(100).collect();
                *report.errors.entry(what).or_default() += 1;
            }
        }
    });
}

/// Reads the server's `/metrics`.
async fn sample(server: &str, at: f64, bots: usize) -> Sample {
    let text = http_get(server, "/metrics").await.unwrap_or_default();
    let value = |name: &str| metric(&text, name).map_or(0, |v| v as u64);
    Sample {
        at,
        bots,
        peers: value("sfu_peers"),
        participants: value("sfu_participants"),
        rss_bytes: value("process_resident_memory_bytes"),
        open_fds: value("process_open_fds"),
        threads: value("process_threads"),
        panics: value("sfu_panics_total"),
        worker_restarts: value("sfu_worker_restarts_total"),
    }
}

impl ChurnReport {
    /// What went wrong, one sentence each (empty: the run passed). Memory may grow by
    /// `max_growth_percent` between the first and last third of the run after warm-up (the
    /// first quarter); descriptors must come back to within 4 of the baseline.
    pub fn failures(&self, max_growth_percent: f64) -> Vec<String> {
        let mut failures = Vec::new();
        let last = self.samples.last().copied().unwrap_or(self.after);
        if self.after.panics > self.baseline.panics {
            failures.push(format!(
                "{} panics in the server",
                self.after.panics - self.baseline.panics
            ));
        }
        if last.worker_restarts > self.baseline.worker_restarts {
            failures.push("a media worker restarted".into());
        }
        if self.after.peers > 0 || self.after.participants > 0 {
            failures.push(format!(
                "the server still holds {} peers and {} participants after every bot left",
                self.after.peers, self.after.participants
            ));
        }
        if self.after.open_fds > self.baseline.open_fds + 4 {
            failures.push(format!(
                "open descriptors went from {} to {} and stayed",
                self.baseline.open_fds, self.after.open_fds
            ));
        }
        if let Some(growth) = self.memory_growth_percent()
            && growth > max_growth_percent
        {
            failures.push(format!(
                "resident memory grew {growth:.0}% after warm-up (limit {max_growth_percent}%)"
            ));
        }
        if self.join_failures > 0 {
            failures.push(format!("{} bots could not join", self.join_failures));
        }
        for (code, n) in &self.errors {
            failures.push(format!("bots got {n} `{code}` errors"));
        }
        failures
    }

    /// Growth of mean memory from the first to the last third of the samples after the
    /// first quarter (warm-up), in percent.
    pub fn memory_growth_percent(&self) -> Option<f64> {
        let steady = self.samples.get(self.samples.len() / 4..)?;
        let third = steady.len() / 3;
        if third == 0 {
            return None;
        }
        let mean =
            |s: &[Sample]| s.iter().map(|x| x.rss_bytes as f64).sum::<f64>() / s.len() as f64;
        let first = mean(steady.get(..third)?);
        let last = mean(steady.get(steady.len() - third..)?);
        (first > 0.0).then(|| (last - first) / first * 100.0)
    }

    /// A table of the samples with sparklines of memory and descriptors.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        out.push_str("    time   bots  peers  people   RSS MiB   fds  threads\n");
        let row = |label: String, s: &Sample| {
            format!(
                "{label:>8} {:>6} {:>6} {:>7} {:>9.1} {:>5} {:>8}\n",
                s.bots,
                s.peers,
                s.participants,
                mib(s.rss_bytes),
                s.open_fds,
                s.threads
            )
        };
        out.push_str(&row("start".into(), &self.baseline));
        for s in &self.samples {
            out.push_str(&row(format!("{:.0}s", s.at), s));
        }
        out.push_str(&row("after".into(), &self.after));
        let rss: Vec<u64> = self.samples.iter().map(|s| s.rss_bytes).collect();
        let fds: Vec<u64> = self.samples.iter().map(|s| s.open_fds).collect();
        out.push_str(&format!(
            "\nRSS  {}\nfds  {}\n",
            sparkline(&rss),
            sparkline(&fds)
        ));
        if let Some(growth) = self.memory_growth_percent() {
            out.push_str(&format!("memory growth after warm-up: {growth:+.1}%\n"));
        }
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        out.push_str(&format!("actions: {}\n", actions.join(", ")));
        out
    }
}

/// One character per value, from ▁ (the minimum) to █ (the maximum).
fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (Some(min), Some(max)) = (values.iter().min(), values.iter().max()) else {
        return String::new();
    };
    let span = (max - min).max(1) as f64;
    values
        .iter()
        .map(|v| {
            let level = (((v - min) as f64 / span) * 7.0).round() as usize;
            BARS.get(level).copied().unwrap_or('█')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rss: u64) -> Sample {
        Sample {
            rss_bytes: rss,
            ..Sample::default()
        }
    }

    #[test]
    fn growth_compares_thirds_after_warm_up() {
        let report = ChurnReport {
            samples: [50, 100, 100, 100, 100, 110, 110, 120].map(at).to_vec(),
            ..ChurnReport::default()
        };
        let growth = report.memory_growth_percent().unwrap();
        assert!((growth - 15.0).abs() < 0.1, "{growth}");
        assert!(report.failures(10.0).iter().any(|f| f.contains("memory")));
        assert!(
            report.failures(20.0).is_empty(),
            "{:?}",
            report.failures(20.0)
        );
    }

    #[test]
    fn leftovers_and_panics_fail() {
        let report = ChurnReport {
            baseline: Sample {
                open_fds: 10,
                ..Sample::default()
            },
            after: Sample {
                open_fds: 30,
                peers: 2,
                panics: 1,
                ..Sample::default()
            },
            ..ChurnReport::default()
        };
        let failures = report.failures(100.0);
        assert_eq!(failures.len(), 3, "{failures:?}");
    }

    #[test]
    fn sparkline_spans_min_to_max() {
        assert_eq!(sparkline(&[1, 5, 9]), "▁▅█");
        assert_eq!(sparkline(&[]), "");
    }
}
