//! The bot swarm end to end: `sfu-swarm` against a server started here, 2 rooms x 1 publisher
//! x 3 viewers with the ffmpeg-encoded clip (simulcast), then WHIP/WHEP bots with synthetic
//! media. Every viewer receives every publisher's audio and video, nothing is lost on
//! loopback, and the JSON report parses and agrees with the server's own counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{run_binary, start_server};
use serde_json::Value;

const SWARM: &str = env!("CARGO_BIN_EXE_sfu-swarm");

/// The swarm's arguments: the server, JSON, no progress bars, everyone at once, and `extra`
/// (split on whitespace).
fn args(server: &str, extra: &str) -> Vec<String> {
    let common = format!("--server {server} --json --quiet --join-rate 0 {extra}");
    common.split_whitespace().map(str::to_string).collect()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.max(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_reports_what_the_server_forwarded() {
    let server = start_server(2).await;
    let addr = server.http_addr.to_string();
    let output = run_binary(
        SWARM,
        &args(
            &addr,
            concat!(
                "--rooms 2 --publishers 1 --subscribers 3 --publishers-subscribe false",
                " --simulcast --video-size 640x360 --duration 6 --join-timeout 15",
                " --max-loss 0 --max-ttff-p95 5000 --speech --mute-every 3",
            ),
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        output.status.success(),
        "the swarm passes its thresholds: {}",
        output.stderr
    );
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");
    assert!(output.stderr.contains("first frame"), "a table on stderr");

    assert_eq!(report["join"]["attempted"], 8);
    assert_eq!(report["join"]["success_rate"], 1.0);
    assert_eq!(
        report["media"]["layers"],
        serde_json::json!(["160x90", "320x180", "640x360"])
    );
    let viewers = &report["viewers"];
    assert_eq!(viewers["count"], 6);
    assert_eq!(viewers["receiving_everything"], 6, "{viewers}");
    assert_eq!(viewers["packets_lost"], 0);
    assert_eq!(viewers["loss_percent"], 0.0);
    assert!(viewers["freezes"].is_u64(), "{viewers}");
    let per_viewer = report["per_viewer"].as_array().unwrap();
    assert_eq!(per_viewer.len(), 6);
    for v in per_viewer {
        assert_eq!(v["publishers_received"], 1, "{v}");
        assert!(v["bitrate_kbps"].as_f64().unwrap() > 50.0, "{v}");
        assert!(v["ttff_ms"].as_f64().unwrap() < 5000.0, "{v}");
        assert_eq!(
            v["layers"].as_array().unwrap().len(),
            1,
            "one video each: {v}"
        );
    }
    assert!(report["ttff_ms"]["p95"].as_f64().is_some());

    // The window's numbers agree with the server's counters over the same window...
    let srv = &report["server"];
    let forwarded = srv["rtp_forwarded"].as_f64().unwrap();
    let received = viewers["packets_received"].as_f64().unwrap();
    assert!(forwarded > 1000.0, "{srv}");
    assert!(
        close(forwarded, received, 0.02),
        "server forwarded {forwarded}, viewers received {received}"
    );
    assert!(srv["forwarded_per_cpu_second"].as_f64().unwrap() > 0.0);
    assert!(srv["cpu_seconds_per_gbit"].as_f64().unwrap() > 0.0);
    // ... and everything received agrees with what the server says it forwarded in total.
    let counters = server.sfu().counters();
    let total = report["totals"]["packets_received"].as_f64().unwrap();
    assert!(
        close(counters.rtp_forwarded as f64, total, 0.02),
        "server forwarded {} in all, bots received {total}",
        counters.rtp_forwarded
    );
    assert_eq!(
        counters.nacks_received,
        viewers["nacks_sent"].as_u64().unwrap()
    );

    // The server timed what it did: forwarded packets (sampled), every peer's connection,
    // every viewer's first video packet.
    assert!(srv["latency_samples"].as_u64().unwrap() > 0, "{srv}");
    let (p50, p99) = (
        srv["latency_p50_ms"].as_f64(),
        srv["latency_p99_ms"].as_f64(),
    );
    assert!(p50.unwrap() <= p99.unwrap(), "{srv}");
    let page = loadtest::server_probe::http_get(&addr, "/metrics")
        .await
        .unwrap();
    let count = |name: &str| loadtest::server_probe::metric(&page, name).unwrap_or(0.0);
    // 2 publishers' and 6 viewers' connections at least (each viewer subscribes on its own).
    assert!(count("sfu_connect_seconds_count") >= 8.0, "{page}");
    assert!(
        count("sfu_first_video_packet_seconds_count") >= 6.0,
        "{page}"
    );
    assert!(count("sfu_forward_latency_seconds_count") > 0.0, "{page}");
    // Every viewer's estimate and what its allocation sent, sampled at least once each.
    let estimates = count("sfu_subscriber_estimate_bps_count");
    assert!(estimates >= 6.0, "{page}");
    assert_eq!(count("sfu_subscriber_target_bps_count"), estimates);
    let mean = count("sfu_subscriber_estimate_bps_sum") / estimates;
    assert!(mean >= 100_000.0, "mean estimate {mean} bit/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_bots_verify_every_byte() {
    let server = start_server(1).await;
    let addr = server.http_addr.to_string();
    let output = run_binary(
        SWARM,
        &args(
            &addr,
            "--protocol whip-whep --media synthetic --publishers 1 --subscribers 2 --duration 2 --join-timeout 15 --max-loss 0",
        ),
        Duration::from_secs(40),
    )
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");
    assert_eq!(report["scenario"]["protocol"], "whip-whep");
    assert_eq!(report["viewers"]["receiving_everything"], 2, "{report}");
    assert_eq!(report["bad_payloads"], 0);
    assert!(report["viewers"]["packets_received"].as_u64().unwrap() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_fails_the_run() {
    // Nothing listens here: no bot joins, no frame is seen, so the TTFF threshold fails.
    let output = run_binary(
        SWARM,
        &args(
            "127.0.0.1:9",
            "--media synthetic --subscribers 1 --duration 0.2 --join-timeout 1 --max-ttff-p95 1000",
        ),
        Duration::from_secs(30),
    )
    .await;
    assert!(!output.status.success());
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");
    assert_eq!(report["join"]["joined"], 0);
    assert_eq!(report["verdict"]["passed"], false);
    assert!(output.stderr.contains("FAIL"), "{}", output.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_room_hears_every_speaker_and_reports_no_video() {
    let server = start_server(2).await;
    let addr = server.http_addr.to_string();
    // The audio-room preset (speakers who talk, hear each other and send no video), smaller.
    let output = run_binary(
        SWARM,
        &args(
            &addr,
            "--preset audio-room --publishers 3 --subscribers 5 --duration 4 --join-timeout 15 --max-loss 0",
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");
    let scenario = &report["scenario"];
    assert_eq!(scenario["preset"], "audio-room");
    assert_eq!(scenario["audio_only"], true);
    assert_eq!(scenario["speech"], true);
    assert_eq!(report["media"]["layers"], serde_json::json!([]));
    assert!(report["media"]["audio_kbps"].as_f64().unwrap() > 0.0);

    // 5 listeners and 3 speakers (who hear the other two) all hear everyone they should.
    let viewers = &report["viewers"];
    assert_eq!(viewers["count"], 8);
    assert_eq!(viewers["receiving_everything"], 8, "{viewers}");
    for v in report["per_viewer"].as_array().unwrap() {
        let listener = v["identity"].as_str().unwrap().contains("-sub-");
        let speakers = if listener { 3 } else { 2 };
        assert_eq!(v["publishers_received"], speakers, "{v}");
        assert_eq!(v["publishers_expected"], speakers, "{v}");
        // 50 packets a second from each speaker over the 4-second window.
        let packets = v["audio_packets"].as_f64().unwrap();
        assert!(packets > f64::from(speakers) * 50.0 * 4.0 * 0.8, "{v}");
        assert_eq!(v["packets"].as_f64().unwrap(), packets, "audio alone: {v}");
        assert_eq!(v["layers"], serde_json::json!([]), "{v}");
        assert!(v["ttff_ms"].as_f64().is_some(), "first audio: {v}");
    }
    // No video anywhere, and the report says so.
    assert_eq!(viewers["video_packets_received"], 0);
    assert_eq!(viewers["layers"], serde_json::json!({}));
    let audio = &viewers["audio"];
    assert_eq!(audio["streams"], 5 * 3 + 3 * 2, "{audio}");
    assert_eq!(audio["packets_lost"], 0);
    assert!(
        audio["packets_per_second_per_viewer"].as_f64().unwrap() > 80.0,
        "{audio}"
    );
    assert!(audio["jitter_ms"]["max"].as_f64().unwrap() >= 0.0);
    assert!(
        output.stderr.contains("none in this run (audio only)"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("first audio"), "{}", output.stderr);
    // What the server forwarded is what the listeners heard.
    let forwarded = report["server"]["rtp_forwarded"].as_f64().unwrap();
    let heard = audio["packets_received"].as_f64().unwrap();
    assert!(
        close(forwarded, heard, 0.02),
        "server forwarded {forwarded}, viewers heard {heard}"
    );
}

/// The `points` of the first polyline in the chart titled `title`.
fn chart_points<'a>(html: &'a str, title: &str) -> Vec<&'a str> {
    let chart = html
        .split("<svg")
        .find(|svg| svg.contains(&format!(">{title}</text>")))
        .unwrap_or_else(|| panic!("a chart titled {title}"));
    let points = chart
        .split("<polyline")
        .nth(1)
        .and_then(|p| p.split("points=\"").nth(1))
        .and_then(|p| p.split('"').next())
        .unwrap_or_else(|| panic!("{title} has a line: {chart}"));
    points.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_charts_a_timeline_sampled_every_second() {
    let server = start_server(2).await;
    let addr = server.http_addr.to_string();
    let dir = std::env::temp_dir().join(format!("sfu-swarm-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.html");
    let output = run_binary(
        SWARM,
        &args(
            &addr,
            &format!(
                "--publishers 1 --subscribers 3 --publishers-subscribe false --simulcast \
                 --video-size 640x360 --duration 5 --join-timeout 15 --report {}",
                path.display()
            ),
        ),
        Duration::from_secs(60),
    )
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");
    let html = std::fs::read_to_string(&path).expect("the HTML report was written");
    let _ = std::fs::remove_dir_all(&dir);

    // One self-contained page: no scripts, no files fetched.
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains("<link"));
    let charts = html.matches("<svg").count();
    assert!(charts >= 8, "{charts} charts");
    assert_eq!(charts, html.matches("</svg>").count());
    // Lines through the samples for the viewers' bitrate and the server's CPU.
    for title in [
        "Received bitrate per viewer",
        "Server CPU",
        "Forwarded RTP packets",
    ] {
        let points = chart_points(&html, title);
        assert!(points.len() >= 4, "{title}: {points:?}");
        for point in points {
            let (x, y) = point.split_once(',').unwrap();
            assert!(
                x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok(),
                "{point}"
            );
        }
    }
    // The summary figures and the verdict.
    assert!(html.contains("Verdict: pass"));
    assert!(html.contains("4 of 4 bots"), "{html}");
    let forwarded = report["server"]["rtp_forwarded_per_second"]
        .as_f64()
        .unwrap();
    assert!(
        html.contains(&format!("{forwarded:.0} RTP packets/s")),
        "{forwarded:.0} pkt/s in the page"
    );

    // The timeline in the JSON: one sample a second across the 5-second window.
    let timeline = &report["timeline"];
    assert_eq!(timeline["interval_seconds"], 1.0);
    let samples = timeline["samples"].as_array().unwrap();
    assert!((5..=6).contains(&samples.len()), "{timeline}");
    let times: Vec<f64> = samples.iter().map(|s| s["t"].as_f64().unwrap()).collect();
    assert!((0.9..1.5).contains(&times[0]), "{times:?}");
    assert!(*times.last().unwrap() >= 4.9, "{times:?}");
    for pair in times.windows(2) {
        assert!((0.4..1.6).contains(&(pair[1] - pair[0])), "{times:?}");
    }
    for s in samples {
        assert!(s["bitrate_kbps"]["p50"].as_f64().unwrap() > 20.0, "{s}");
        assert!(s["video_packets_per_second"].as_f64().unwrap() > 0.0, "{s}");
        let srv = &s["server"];
        assert!(srv["forwarded_per_second"].as_f64().unwrap() > 100.0, "{s}");
        assert!(srv["cpu_cores"].as_f64().is_some(), "{s}");
        assert!(srv["rss_bytes"].as_u64().unwrap() > 0, "{s}");
    }
}
