//! The report as one self-contained HTML page (`sfu-swarm --report FILE.html`): the verdict,
//! the summary figures, and charts of the timeline (viewers' bitrate, layers, freezes, audio;
//! the server's CPU, forwarded packets and memory) drawn as inline SVG by [`super::plot`].
//! No scripts, no external files: it opens anywhere, offline, and can be attached to an issue.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::plot::{Chart, escape};
use super::report::Report;
use super::timeline::Sample;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;\
max-width:1200px;padding:0 16px;color:#222}\
h1{margin-bottom:4px}h2{margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.meta{color:#555;margin:2px 0}\
.verdict{padding:10px 14px;margin:16px 0;font-size:18px;font-weight:bold}\
.pass{background:#e6f4ea;border-left:6px solid #2ca02c}\
.fail{background:#fdecea;border-left:6px solid #d62728}\
.verdict ul{margin:6px 0 0;font-size:14px;font-weight:normal}\
table.summary{border-collapse:collapse}\
table.summary th{text-align:left;font-weight:600;padding:3px 16px 3px 0;vertical-align:top}\
table.summary td{padding:3px 0}\
.charts{display:flex;flex-wrap:wrap;gap:14px}\
svg.chart{border:1px solid #ddd;background:#fff;font-family:inherit}\
pre{background:#f6f6f6;padding:10px;overflow-x:auto}\
.note{color:#555;font-size:13px}";

/// The page for `report`, stamped with `generated`.
pub fn page(report: &Report, generated: SystemTime) -> String {
    let mut out = String::new();
    let s = &report.scenario;
    let headline = format!(
        "{} room(s) x ({} {} + {} viewers){}{}",
        s.rooms,
        s.publishers,
        match s.publisher_role {
            super::scenario::Role::Both => "participants",
            _ => "publishers",
        },
        s.subscribers,
        s.preset
            .as_deref()
            .map(|p| format!(", preset {p}"))
            .unwrap_or_default(),
        if s.audio_only { ", audio only" } else { "" }
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>sfu-swarm: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&headline)
    );
    let _ = write!(
        out,
        "<h1>sfu-swarm report</h1>\n<p class=\"meta\">{}</p>\n<p class=\"meta\">against {}, \
{:.1} s measured after {:.1} s of joining; generated {} UTC</p>\n",
        escape(&headline),
        escape(&s.servers().join(", ")),
        report.window_seconds,
        report.join.seconds,
        utc(generated)
    );
    verdict(report, &mut out);
    out.push_str("<h2>Summary</h2>\n<table class=\"summary\">\n");
    for (what, value) in summary(report) {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&what),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
    let t = &report.timeline;
    let _ = write!(
        out,
        "<h2>Viewers over time</h2>\n<p class=\"note\">One sample every {:.1} s of the measured \
window ({} samples); each covers the interval before it.</p>\n<div class=\"charts\">\n",
        t.interval_seconds,
        t.samples.len()
    );
    for chart in viewer_charts(report) {
        out.push_str(&chart.svg());
        out.push('\n');
    }
    out.push_str("</div>\n<h2>Server over time</h2>\n<div class=\"charts\">\n");
    for chart in server_charts(report) {
        out.push_str(&chart.svg());
        out.push('\n');
    }
    out.push_str("</div>\n");
    let _ = write!(
        out,
        "<h2>The text report</h2>\n<pre>{}</pre>\n<p class=\"note\">Made by sfu-swarm {}; the \
same run's figures, timeline and per-viewer rows are in its <code>--json</code> output.</p>\n\
</body></html>\n",
        escape(&report.table()),
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn verdict(report: &Report, out: &mut String) {
    let v = &report.viewers;
    // The verdict is the thresholds'; say at a glance when viewers missed media anyway.
    let short = (v.receiving_everything < v.count).then(|| {
        format!(
            "Only {} of {} viewers received every publisher they should{}.",
            v.receiving_everything,
            v.count,
            if report.ttff_ms.missing > 0 {
                format!("; {} received nothing", report.ttff_ms.missing)
            } else {
                String::new()
            }
        )
    });
    if report.verdict.passed {
        out.push_str("<div class=\"verdict pass\">Verdict: pass");
        if let Some(short) = short {
            let _ = write!(
                out,
                "<ul><li>{} (No threshold covers this: see --max-loss and --max-ttff-p95.)</li></ul>",
                escape(&short)
            );
        }
        out.push_str("</div>\n");
        return;
    }
    out.push_str("<div class=\"verdict fail\">Verdict: FAIL<ul>");
    for violation in &report.verdict.violations {
        let _ = write!(out, "<li>{}</li>", escape(violation));
    }
    if let Some(short) = short {
        let _ = write!(out, "<li>{}</li>", escape(&short));
    }
    out.push_str("</ul></div>\n");
}

/// The summary rows: what, and the figure.
fn summary(r: &Report) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut row = |what: &str, value: String| rows.push((what.to_string(), value));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let video = r.scenario.video();
    row(
        "Joins",
        format!(
            "{} of {} bots ({:.1}%){}",
            r.join.joined,
            r.join.attempted,
            r.join.success_rate * 100.0,
            if r.join.failures.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", r.join.failures.join("; "))
            }
        ),
    );
    row(
        if video {
            "Join to first frame"
        } else {
            "Join to first audio"
        },
        format!(
            "p50 {}, p95 {}, p99 {}, max {}{}",
            ms(r.ttff_ms.p50),
            ms(r.ttff_ms.p95),
            ms(r.ttff_ms.p99),
            ms(r.ttff_ms.max),
            if r.ttff_ms.missing > 0 {
                format!(" ({} viewers got none)", r.ttff_ms.missing)
            } else {
                String::new()
            }
        ),
    );
    let v = &r.viewers;
    row(
        "Viewers receiving everything",
        format!("{} of {}", v.receiving_everything, v.count),
    );
    row(
        "Received bitrate per viewer",
        format!(
            "min {:.0}, median {:.0}, max {:.0} kbit/s",
            v.bitrate_kbps.min, v.bitrate_kbps.p50, v.bitrate_kbps.max
        ),
    );
    row(
        "Packet loss",
        format!(
            "{:.3}% ({} of {} packets); NACKs sent {}, PLIs sent {}",
            v.loss_percent, v.packets_lost, v.packets_expected, v.nacks_sent, v.plis_sent
        ),
    );
    let a = &v.audio;
    row(
        "Audio",
        format!(
            "{:.1} packets/s per viewer over {} streams; loss {:.3}%; jitter median {:.1} ms, max {:.1} ms",
            a.packets_per_second_per_viewer,
            a.streams,
            a.loss_percent,
            a.jitter_ms.p50,
            a.jitter_ms.max
        ),
    );
    if video {
        let layers: Vec<String> = v.layers.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        row(
            "Video",
            format!(
                "{} freezes totalling {:.1} s; layers at the end: {}",
                v.freezes,
                v.freeze_seconds,
                layers.join(", ")
            ),
        );
    } else {
        row(
            "Video",
            format!(
                "no video in this run (audio only); {} video packets received",
                v.video_packets_received
            ),
        );
    }
    if let Some(srv) = &r.server {
        row(
            "Server forwarded",
            format!(
                "{:.0} RTP packets/s, {:.1} Mbit/s",
                srv.rtp_forwarded_per_second, srv.mbit_per_second
            ),
        );
        if let Some(cpu) = srv.cpu_percent_of_core {
            row(
                "Server cost",
                format!(
                    "{cpu:.0}% of a core; {} packets per CPU-second; {} CPU-s per Gbit",
                    srv.forwarded_per_cpu_second
                        .map_or("-".to_string(), |v| format!("{v:.0}")),
                    srv.cpu_seconds_per_gbit
                        .map_or("-".to_string(), |v| format!("{v:.3}"))
                ),
            );
        }
        if let (Some(p50), Some(p99)) = (srv.latency_p50_ms, srv.latency_p99_ms) {
            row(
                "SFU-added latency",
                format!("p50 at most {p50} ms, p99 at most {p99} ms"),
            );
        }
        if let Some(rss) = srv.rss_bytes {
            row(
                "Server memory",
                format!(
                    "RSS {:.1} MiB{}",
                    rss as f64 / 1048576.0,
                    srv.rss_per_viewer_bytes
                        .map(|b| format!(", {:.0} KiB per viewer over the baseline", b / 1024.0))
                        .unwrap_or_default()
                ),
            );
        }
    } else {
        row("Server", "metrics not available".to_string());
    }
    if r.bad_payloads > 0 {
        row("Payloads", format!("{} did not verify", r.bad_payloads));
    }
    rows
}

const TIME: &str = "time in the window (s)";

/// `(t, f(sample))` for every sample.
fn series(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    samples.iter().map(|s| (s.t, f(s))).collect()
}

/// `(t, f(sample))` for the samples where `f` has a value.
fn some_series(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    samples.iter().filter_map(|s| Some((s.t, f(s)?))).collect()
}

fn viewer_charts(r: &Report) -> Vec<Chart> {
    let samples = &r.timeline.samples;
    let viewers = r.viewers.count.max(1) as f64;
    let no_video = "no video in this run (audio only)";
    let mut charts = vec![
        Chart::new("Received bitrate per viewer", TIME, "kbit/s")
            .band(
                "min-max",
                samples
                    .iter()
                    .map(|s| (s.t, s.bitrate_kbps.min, s.bitrate_kbps.max)),
            )
            .line("median", series(samples, |s| s.bitrate_kbps.p50)),
    ];
    let mut layers = Chart::new("Video layer received", TIME, "video streams");
    let mut freezes = Chart::new("Freezes (no frame for > 500 ms)", TIME, "count");
    if r.scenario.video() {
        let mut names: Vec<&String> = samples.iter().flat_map(|s| s.layers.keys()).collect();
        names.sort_by_key(|name| layer_order(name));
        names.dedup();
        for name in names {
            layers = layers.line(
                name,
                series(samples, |s| s.layers.get(name).copied().unwrap_or(0) as f64),
            );
        }
        freezes = freezes
            .dotted_line("freezes started", series(samples, |s| f64::from(s.freezes)))
            .line(
                "viewers frozen",
                series(samples, |s| s.frozen_viewers as f64),
            );
    } else {
        layers = layers.empty_note(no_video);
        freezes = freezes.empty_note(no_video);
    }
    charts.push(layers);
    charts.push(freezes);
    charts.push(
        Chart::new("Audio received per viewer", TIME, "packets/s").line(
            "audio",
            series(samples, |s| s.audio_packets_per_second / viewers),
        ),
    );
    charts.push(
        Chart::new("Audio jitter (RFC 3550, bots' view)", TIME, "ms")
            .line("mean", some_series(samples, |s| s.audio_jitter_ms))
            .line("max", some_series(samples, |s| s.audio_jitter_max_ms)),
    );
    charts.push(
        Chart::new("Packet loss", TIME, "% of packets expected")
            .line("audio and video", series(samples, |s| s.loss_percent)),
    );
    charts
}

fn server_charts(r: &Report) -> Vec<Chart> {
    let samples = &r.timeline.samples;
    let server = |f: fn(&super::timeline::ServerPoint) -> Option<f64>| {
        some_series(samples, move |s| s.server.as_ref().and_then(f))
    };
    let note = "server metrics not available";
    vec![
        Chart::new("Server CPU", TIME, "cores used")
            .line("sfu-server", server(|p| p.cpu_cores))
            .empty_note(note),
        Chart::new("Forwarded RTP packets", TIME, "packets/s")
            .line("forwarded", server(|p| Some(p.forwarded_per_second)))
            .empty_note(note),
        Chart::new("Server media send rate", TIME, "Mbit/s")
            .line("sent", server(|p| Some(p.mbit_per_second)))
            .empty_note(note),
        Chart::new("Server memory (RSS)", TIME, "MiB")
            .line(
                "resident",
                server(|p| p.rss_bytes.map(|b| b as f64 / 1048576.0)),
            )
            .empty_note(note),
    ]
}

/// Layers from the smallest picture up: `WxH` by area, then `layer q/h/f`, then the rest.
fn layer_order(name: &str) -> (u64, String) {
    let area = name
        .split_once('x')
        .and_then(|(w, h)| Some(w.parse::<u64>().ok()? * h.parse::<u64>().ok()?));
    let rank = match name {
        "layer q" => Some(1),
        "layer h" => Some(2),
        "layer f" => Some(3),
        _ => area,
    };
    (rank.unwrap_or(u64::MAX), name.to_string())
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::swarm::report::{RunData, Thresholds};
    use crate::swarm::timeline::{ServerPoint, Timeline};

    fn report(audio_only: bool) -> Report {
        let samples = (1..=5)
            .map(|i| Sample {
                t: f64::from(i),
                audio_packets_per_second: 50.0,
                server: Some(ServerPoint {
                    cpu_cores: Some(0.25),
                    forwarded_per_second: 1000.0,
                    mbit_per_second: 1.0,
                    rss_bytes: Some(40 << 20),
                }),
                ..Sample::default()
            })
            .collect();
        let run = RunData {
            scenario: crate::swarm::scenario::Scenario {
                audio_only,
                ..crate::swarm::scenario::tests::scenario()
            },
            plans: Vec::new(),
            start: Vec::new(),
            end: Vec::new(),
            window: Duration::from_secs(5),
            join_time: Duration::from_secs(1),
            server_baseline: None,
            server_start: None,
            server_end: None,
            nodes: Vec::new(),
            media: None,
            timeline: Timeline {
                interval_seconds: 1.0,
                samples,
            },
        };
        Report::new(&run, Thresholds::default())
    }

    #[test]
    fn the_page_has_the_verdict_a_summary_and_a_chart_per_series() {
        let html = page(
            &report(false),
            UNIX_EPOCH + Duration::from_secs(1_764_547_200),
        );
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(html.contains("Verdict: pass"));
        assert!(html.contains("generated 2025-12-01 00:00 UTC"), "{html}");
        assert_eq!(html.matches("<svg").count(), 10);
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        assert!(html.contains(">Server CPU</text>"));
        assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains("<link"));
    }

    #[test]
    fn an_audio_only_page_says_there_is_no_video() {
        let html = page(&report(true), UNIX_EPOCH);
        assert!(html.contains("no video in this run (audio only)"));
        assert!(html.contains("generated 1970-01-01 00:00 UTC"));
    }

    #[test]
    fn a_pass_still_says_when_viewers_missed_media() {
        let mut r = report(true);
        r.viewers.count = 310;
        r.viewers.receiving_everything = 97;
        r.ttff_ms.missing = 213;
        let html = page(&r, UNIX_EPOCH);
        assert!(html.contains("Verdict: pass"));
        assert!(
            html.contains(
                "Only 97 of 310 viewers received every publisher they should; 213 received nothing."
            ),
            "{html}"
        );
    }

    #[test]
    fn layers_are_ordered_by_picture_size() {
        let mut names = vec!["1280x720", "320x180", "640x360", "layer f", "layer q"];
        names.sort_by_key(|n| layer_order(n));
        assert_eq!(
            names,
            ["layer q", "layer f", "320x180", "640x360", "1280x720"]
        );
    }
}
