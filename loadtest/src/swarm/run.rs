//! Running a swarm: start the bots at the join rate, wait (bounded) until every viewer shows
//! frames from every publisher it should, measure for the scenario's duration with the server
//! sampled at both ends and bots and server sampled at a fixed interval in between (the
//! timeline), then leave. A live progress bar shows where it is.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::observe::BotSnapshot;
use super::report::{MediaInfo, NodeSamples, RunData, ServerSample};
use super::scenario::{BotPlan, Scenario, ScenarioError};
use super::speech;
use super::timeline::Sampler;
use crate::bot::{Bot, MediaSource};
use crate::server_probe::{ProcessSample, sample_process, scrape};

/// How often the progress line and the speech simulation are updated.
const TICK: Duration = Duration::from_millis(250);

/// How long bots get to leave before they are dropped.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the server's counters, and its CPU time and memory from `/proc` (with a PID) or from
/// its own metrics.
pub async fn sample_server(server: &str, pid: Option<u32>) -> Option<ServerSample> {
    let counters = scrape(server).await.ok()?;
    let process = match pid {
        Some(pid) => sample_process(pid).ok(),
        None => counters.cpu_seconds.map(|cpu_seconds| ProcessSample {
            cpu_seconds,
            rss_bytes: counters.rss_bytes.unwrap_or(0),
        }),
    };
    Some(ServerSample { counters, process })
}

/// Options of a run besides the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The server's PID, for its CPU time from `/proc` (same machine).
    pub server_pid: Option<u32>,
    /// Draw progress bars (they are hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// The clip's description, for the report.
    pub media_info: Option<MediaInfo>,
    /// How often the timeline samples bots and server (default 1 s).
    pub sample_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            server_pid: None,
            progress: false,
            media_info: None,
            sample_interval: Duration::from_secs(1),
        }
    }
}

/// Runs the scenario with publishers sending `media`.
pub async fn run(
    scenario: &Scenario,
    media: &MediaSource,
    options: &RunOptions,
) -> Result<RunData, ScenarioError> {
    let plans = scenario.plans();
    let configs = plans
        .iter()
        .map(|plan| scenario.bot_config(plan, media))
        .collect::<Result<Vec<_>, _>>()?;
    let server_baseline = sample_server(&scenario.server, options.server_pid).await;
    let bar = progress_bar(options.progress, plans.len() as u64);
    bar.set_style(style("joining  [{bar:30}] {pos}/{len} bots  {msg}"));
    let started = Instant::now();
    let mut speech = Speech::new(scenario);
    let mut bots = Vec::with_capacity(plans.len());
    let interval =
        (scenario.join_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / scenario.join_rate));
    let mut last_draw = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval * i as u32).into()).await;
        }
        bots.push(Bot::spawn(config));
        bar.inc(1);
        if last_draw.elapsed() >= TICK {
            last_draw = Instant::now();
            bar.set_message(join_status(scenario, &plans, &bots));
            speech.tick(&plans, &bots);
        }
    }
    // Wait until every viewer has frames from every publisher it should (or the timeout).
    let deadline = Instant::now() + scenario.join_timeout;
    while Instant::now() < deadline {
        let message = join_status(scenario, &plans, &bots);
        bar.set_message(message);
        speech.tick(&plans, &bots);
        if everyone_receiving(scenario, &plans, &bots)
            || bots.iter().all(|b| b.with_state(|s| s.ended.is_some()))
        {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    let join_time = started.elapsed();
    bar.finish_with_message(join_status(scenario, &plans, &bots));

    let bar = progress_bar(options.progress, scenario.duration.as_millis() as u64);
    bar.set_style(style("running  [{bar:30}] {elapsed}/{duration}  {msg}"));
    let server_start = sample_server(&scenario.server, options.server_pid).await;
    let server_start_at = Instant::now();
    let nodes_start = sample_nodes(scenario).await;
    let now = Instant::now();
    let start: Vec<BotSnapshot> = bots.iter().map(|b| BotSnapshot::take(b, now)).collect();
    let window_start = Instant::now();
    let window_end = window_start + scenario.duration;
    let mut sampler = Sampler::new(
        options.sample_interval,
        scenario.duration,
        window_start,
        start.clone(),
        server_start.map(|s| (server_start_at, s)),
    );
    let mut previous = (
        window_start,
        start.iter().map(BotSnapshot::bytes).sum::<u64>(),
    );
    while Instant::now() < window_end {
        let wake = (Instant::now() + TICK)
            .min(sampler.next_due())
            .min(window_end);
        tokio::time::sleep_until(wake.into()).await;
        speech.tick(&plans, &bots);
        let now = Instant::now();
        let snapshots: Vec<BotSnapshot> = bots.iter().map(|b| BotSnapshot::take(b, now)).collect();
        if now >= sampler.next_due() && sampler.next_due() <= window_end {
            let server = sample_server(&scenario.server, options.server_pid).await;
            let server = server.map(|s| (Instant::now(), s));
            sampler.record(now, &plans, snapshots.clone(), server);
        }
        let bytes: u64 = snapshots.iter().map(BotSnapshot::bytes).sum();
        let rate = (bytes.saturating_sub(previous.1)) as f64 * 8.0
            / now
                .saturating_duration_since(previous.0)
                .as_secs_f64()
                .max(1e-3);
        previous = (now, bytes);
        bar.set_position(window_start.elapsed().as_millis() as u64);
        bar.set_message(running_status(&plans, &start, &snapshots, rate));
    }
    let server_end = sample_server(&scenario.server, options.server_pid).await;
    let server_end_at = Instant::now();
    let nodes_end = sample_nodes(scenario).await;
    let now = Instant::now();
    let end: Vec<BotSnapshot> = bots.iter().map(|b| BotSnapshot::take(b, now)).collect();
    let window = window_start.elapsed();
    if sampler.behind(now) {
        // The window's tail, shorter than an interval.
        sampler.record(
            now,
            &plans,
            end.clone(),
            server_end.map(|s| (server_end_at, s)),
        );
    }
    bar.finish();

    leave_all(bots).await;
    Ok(RunData {
        scenario: scenario.clone(),
        plans,
        start,
        end,
        window,
        join_time,
        server_baseline,
        server_start,
        server_end,
        nodes: nodes_start
            .into_iter()
            .zip(nodes_end)
            .map(|((server, start), (_, end))| NodeSamples { server, start, end })
            .collect(),
        media: options.media_info.clone(),
        timeline: sampler.finish(),
    })
}

/// Each server of a cluster (none with one server), from its own metrics.
async fn sample_nodes(scenario: &Scenario) -> Vec<(String, Option<ServerSample>)> {
    if scenario.other_servers.is_empty() {
        return Vec::new();
    }
    let mut samples = Vec::new();
    for server in scenario.servers() {
        samples.push((server.to_string(), sample_server(server, None).await));
    }
    samples
}

/// Asks every bot to leave and waits for them, at most five seconds in all.
pub async fn leave_all(bots: Vec<Bot>) {
    for bot in &bots {
        bot.leave();
    }
    let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
    for bot in bots {
        let handle = bot.abort_handle();
        if tokio::time::timeout_at(deadline, bot.join()).await.is_err() {
            handle.abort();
        }
    }
}

fn progress_bar(visible: bool, len: u64) -> ProgressBar {
    if visible {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn receiving_everything(scenario: &Scenario, plan: &BotPlan, snapshot: &BotSnapshot) -> bool {
    snapshot.complete_publishers(scenario.video()) >= scenario.expected_publishers(plan.role)
}

fn everyone_receiving(scenario: &Scenario, plans: &[BotPlan], bots: &[Bot]) -> bool {
    let now = Instant::now();
    plans.iter().zip(bots).all(|(plan, bot)| {
        let s = BotSnapshot::take(bot, now);
        s.joined() && (!plan.role.subscribes() || receiving_everything(scenario, plan, &s))
    })
}

fn join_status(scenario: &Scenario, plans: &[BotPlan], bots: &[Bot]) -> String {
    let now = Instant::now();
    let (mut joined, mut failed, mut receiving, mut viewers) = (0, 0, 0, 0);
    for (plan, bot) in plans.iter().zip(bots) {
        let s = BotSnapshot::take(bot, now);
        joined += usize::from(s.joined());
        failed += usize::from(s.ended.is_some() || s.error.is_some());
        if plan.role.subscribes() {
            viewers += 1;
            receiving += usize::from(receiving_everything(scenario, plan, &s));
        }
    }
    format!("joined {joined}, failed {failed}, viewers receiving everything {receiving}/{viewers}")
}

fn running_status(
    plans: &[BotPlan],
    start: &[BotSnapshot],
    now_snapshots: &[BotSnapshot],
    rate_bps: f64,
) -> String {
    let (mut expected, mut lost, mut freezes) = (0, 0, 0);
    for ((plan, a), b) in plans.iter().zip(start).zip(now_snapshots) {
        if !plan.role.subscribes() {
            continue;
        }
        let (e0, l0) = a.expected_and_lost();
        let (e1, l1) = b.expected_and_lost();
        expected += e1.saturating_sub(e0);
        lost += l1.saturating_sub(l0);
        freezes += b.freezes().0.saturating_sub(a.freezes().0);
    }
    let loss = if expected > 0 {
        lost as f64 * 100.0 / expected as f64
    } else {
        0.0
    };
    format!(
        "viewers receive {:.1} Mbit/s, loss {loss:.2}%, freezes {freezes}",
        rate_bps / 1e6
    )
}

/// Drives the speech and mute simulation of the publishers.
struct Speech {
    enabled: bool,
    mute_every: Option<Duration>,
    started: Instant,
    /// Last (level, muted) sent to each bot.
    last: Vec<Option<(i8, bool)>>,
}

impl Speech {
    fn new(scenario: &Scenario) -> Speech {
        Speech {
            enabled: scenario.speech,
            mute_every: scenario.mute_every,
            started: Instant::now(),
            last: Vec::new(),
        }
    }

    fn tick(&mut self, plans: &[BotPlan], bots: &[Bot]) {
        if !self.enabled && self.mute_every.is_none() {
            return;
        }
        let t = self.started.elapsed();
        self.last.resize(bots.len(), None);
        for ((plan, bot), last) in plans.iter().zip(bots).zip(&mut self.last) {
            if !plan.role.publishes() {
                continue;
            }
            let level = if self.enabled {
                speech::level_at(plan.tag, t)
            } else {
                -30
            };
            let muted = self
                .mute_every
                .is_some_and(|period| speech::muted_at(plan.tag, t, period));
            if last.is_none_or(|(l, _)| l != level) {
                bot.set_audio_level(level);
            }
            if last.map_or(muted, |(_, m)| m != muted) {
                bot.set_audio_muted(muted);
            }
            *last = Some((level, muted));
        }
    }
}
