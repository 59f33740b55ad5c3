//! `sfu-publish` end to end: with virtual (lavfi) inputs it publishes simulcast VP8 and Opus
//! into a room, where a bot viewer reassembles frames that ffmpeg decodes at the expected sizes;
//! Ctrl-C leaves the room at once. The same over WHIP, ending after `--duration`.
//! `--list-devices` runs, and a missing camera, an unreachable server or a refused token each
//! give one sentence and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{
    Running, WAIT, run_binary, spawn_binary, start_server, start_server_with, token, ws_url,
};
use control_api::Server;
use ffmpeg_next as ffmpeg;
use loadtest::bot::{Bot, BotConfig, BotState, ReceivedStream};
use loadtest::signal::{ClientMessage, ServerMessage};
use loadtest::vp8_rtp;

const PUBLISH: &str = env!("CARGO_BIN_EXE_sfu-publish");

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Decodes VP8 frames with ffmpeg; returns the size of every picture that came out.
fn decode(frames: &[Vec<u8>]) -> Vec<(u32, u32)> {
    loadtest::media_input::init();
    let codec = ffmpeg::decoder::find(ffmpeg::codec::Id::VP8).expect("a VP8 decoder");
    let mut decoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .decoder()
        .video()
        .expect("decoder opens");
    let mut sizes = Vec::new();
    for frame in frames {
        decoder
            .send_packet(&ffmpeg::Packet::copy(frame))
            .expect("the frame decodes");
        let mut picture = ffmpeg::frame::Video::empty();
        while decoder.receive_frame(&mut picture).is_ok() {
            sizes.push((picture.width(), picture.height()));
        }
    }
    sizes
}

fn video(state: &BotState) -> Option<&ReceivedStream> {
    state
        .streams
        .values()
        .find(|s| s.quality.video && s.quality.frames > 0)
}

/// The viewer holds at least `n` frames of `size`, starting with a keyframe of that size.
fn holds_frames(state: &BotState, size: (u16, u16), n: usize) -> bool {
    video(state).is_some_and(|v| {
        v.frames.len() >= n && v.frames.first().and_then(|f| vp8_rtp::frame_size(f)) == Some(size)
    })
}

/// A server, and a viewer in `room` that keeps frames for decoding. The viewer's requests
/// alone pick the layer (no bandwidth estimate to dent on a busy machine): these tests are
/// about what the publisher sends.
async fn server_and_viewer(room: &str) -> (Server, Bot) {
    let server = start_server_with(2, |sfu| sfu.congestion_control = false).await;
    let mut config = BotConfig::new(&ws_url(&server), token(room, "viewer"), false, 2);
    config.verify_payloads = false;
    config.keep_frames = 8;
    let viewer = Bot::spawn(config);
    assert!(viewer.wait_for(WAIT, |s| s.participant.is_some()).await);
    (server, viewer)
}

/// `sfu-publish` into `room` on `server` with `extra` arguments.
fn spawn_publisher(server: &Server, room: &str, extra: &[&str]) -> Running {
    let url = server.http_addr.to_string();
    let mut args = strings(&["--url", &url, "--room", room]);
    args.extend(strings(extra));
    spawn_binary(PUBLISH, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_camera_and_microphone_reach_a_viewer_that_decodes_every_layer() {
    let (server, viewer) = server_and_viewer("cam").await;
    let publisher = spawn_publisher(
        &server,
        "cam",
        &[
            "--video",
            "lavfi:testsrc=size=640x360:rate=15",
            "--audio",
            "lavfi:sine",
        ],
    );

    // Ask for the top layer, then the lowest: both decode at their sizes.
    assert!(
        viewer
            .wait_for(WAIT, |s| s.saw(
                |m| matches!(m, ServerMessage::TrackPublished { track } if track.kind == "video")
            ))
            .await,
        "the publisher's video track is announced"
    );
    let track = viewer
        .state()
        .messages
        .iter()
        .find_map(|m| match m {
            ServerMessage::TrackPublished { track } if track.kind == "video" => {
                assert_eq!(track.simulcast, ["q", "h", "f"]);
                Some(track.id.clone())
            }
            _ => None,
        })
        .unwrap();
    for (quality, size) in [("high", (640, 360)), ("low", (160, 90))] {
        let message =
            serde_json::json!({"type": "set_quality", "track": track, "quality": quality});
        viewer.signal(serde_json::from_value::<ClientMessage>(message).unwrap());
        assert!(
            viewer.wait_for(WAIT, |s| holds_frames(s, size, 8)).await,
            "{quality}: frames of {size:?}: {:?}",
            video(&viewer.state()).map(|v| (v.quality.size, v.frames.len()))
        );
        let frames = video(&viewer.state()).unwrap().frames.clone();
        let decoded = decode(&frames);
        assert!(decoded.len() >= 7, "{quality}: {} pictures", decoded.len());
        assert!(
            decoded
                .iter()
                .all(|&(w, h)| (w, h) == (u32::from(size.0), u32::from(size.1))),
            "{quality}: {decoded:?}"
        );
    }
    let state = viewer.state();
    let audio = state.streams.values().find(|s| !s.quality.video).unwrap();
    assert!(
        audio.quality.packets >= 25,
        "about half a second of Opus at least"
    );
    assert!(state.streams.values().all(|s| s.quality.lost() == 0));

    // Ctrl-C: the publisher leaves the room at once and exits 0.
    publisher.signal("-INT");
    let output = publisher.finish(Duration::from_secs(10)).await;
    assert!(output.status.success(), "{}", output.stderr);
    assert!(output.stdout.contains("left the room"), "{}", output.stdout);
    assert!(
        viewer
            .wait_for(Duration::from_secs(2), |s| s
                .saw(|m| matches!(m, ServerMessage::ParticipantLeft { .. })))
            .await,
        "the viewer sees the publisher leave"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishing_reaches_a_viewer_and_ends_after_its_duration() {
    let (server, viewer) = server_and_viewer("whip-cam").await;
    let publisher = spawn_publisher(
        &server,
        "whip-cam",
        &[
            "--protocol",
            "whip",
            "--no-simulcast",
            "--video",
            "lavfi:testsrc=size=320x180:rate=15",
            "--audio",
            "lavfi:sine",
            "--duration",
            "5",
        ],
    );
    assert!(
        viewer
            .wait_for(WAIT, |s| holds_frames(s, (320, 180), 8))
            .await,
        "frames of 320x180 over WHIP: {:?}",
        video(&viewer.state()).map(|v| (v.quality.size, v.frames.len()))
    );
    let frames = video(&viewer.state()).unwrap().frames.clone();
    assert!(decode(&frames).iter().all(|&size| size == (320, 180)));
    assert!(
        viewer
            .wait_for(WAIT, |s| s
                .streams
                .values()
                .any(|a| !a.quality.video && a.quality.packets >= 25))
            .await,
        "Opus arrives too"
    );
    // --duration ends the session (WHIP DELETE): the viewer sees the publisher leave.
    let output = publisher.finish(Duration::from_secs(20)).await;
    assert!(output.status.success(), "{}", output.stderr);
    assert!(
        viewer
            .wait_for(Duration::from_secs(3), |s| s
                .saw(|m| matches!(m, ServerMessage::ParticipantLeft { .. })))
            .await,
        "the viewer sees the WHIP publisher leave"
    );
}

#[tokio::test]
async fn list_devices_runs() {
    let output = run_binary(
        PUBLISH,
        &strings(&["--list-devices"]),
        Duration::from_secs(20),
    )
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    assert!(output.stdout.contains("lavfi:testsrc"), "{}", output.stdout);
    assert!(output.stdout.contains("v4l2"), "{}", output.stdout);
}

/// The last line of stderr: the one sentence for people.
fn sentence(stderr: &str) -> String {
    stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_missing_camera_is_one_clear_sentence() {
    let output = run_binary(
        PUBLISH,
        &strings(&["--video", "/dev/video9", "--audio", "none"]),
        Duration::from_secs(20),
    )
    .await;
    assert!(!output.status.success());
    let line = sentence(&output.stderr);
    assert!(
        line.contains("no camera at /dev/video9") && line.contains("--list-devices"),
        "{}",
        output.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_or_a_refused_token_says_what_to_do() {
    let lavfi = [
        "--video",
        "lavfi:testsrc=size=320x180:rate=10",
        "--audio",
        "none",
    ];
    let mut args = strings(&lavfi);
    args.extend(strings(&["--url", "127.0.0.1:9"]));
    let output = run_binary(PUBLISH, &args, Duration::from_secs(20)).await;
    assert!(!output.status.success());
    let line = sentence(&output.stderr);
    assert!(
        line.contains("cannot reach the server") && line.contains("--url"),
        "{}",
        output.stderr
    );

    let server = start_server(1).await;
    let mut args = strings(&lavfi);
    args.extend(strings(&[
        "--url",
        &server.http_addr.to_string(),
        "--token",
        "not-a-token",
    ]));
    let output = run_binary(PUBLISH, &args, Duration::from_secs(20)).await;
    assert!(!output.status.success());
    let line = sentence(&output.stderr);
    assert!(
        line.contains("refused the token") && line.contains("--token"),
        "{}",
        output.stderr
    );
}
