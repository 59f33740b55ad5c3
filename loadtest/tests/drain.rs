//! Graceful drain of the real server process: SIGTERM makes it unready and refuse new joins,
//! the call in progress keeps flowing until its participants leave, and then the process
//! exits 0. At the drain deadline, those still connected are told why they are leaving and
//! the webhooks for their leaving are delivered before the process exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{ServerProcess, WAIT, start_server_process, token};
use control_api::protocol::ErrorCode;
use loadtest::bot::{Bot, BotConfig};
use loadtest::server_probe::http_get;
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;

/// Starts the server; returns it and its HTTP address.
fn start() -> (ServerProcess, String) {
    start_with(&["--drain-timeout", "60"])
}

/// Starts the server (one worker) with `extra` arguments.
fn start_with(extra: &[&str]) -> (ServerProcess, String) {
    start_server_process(&[&["--workers", "1"], extra].concat())
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Polls `/readyz` until it answers 503 (bounded by [`WAIT`]).
async fn became_unready(addr: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if http_get(addr, "/readyz")
            .await
            .is_err_and(|e| e.to_string().contains("503"))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn exit_status(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_when_the_room_empties() {
    let (mut child, addr) = start();
    let url = format!("ws://{addr}/rtc");
    let publisher = Bot::spawn(BotConfig::new(&url, token("drain", "pub"), true, 1));
    let viewer = Bot::spawn(BotConfig::new(&url, token("drain", "viewer"), false, 2));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await
    );
    assert!(
        http_get(&addr, "/readyz").await.is_ok(),
        "ready before the signal"
    );

    signal(&child, "-TERM");
    assert!(became_unready(&addr).await, "readiness flips to 503");

    let late = Bot::spawn(BotConfig::new(&url, token("drain", "late"), false, 3));
    assert!(
        late.wait_for(WAIT, |s| s.saw(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Draining,
                ..
            }
        )))
        .await,
        "a new join is refused"
    );
    assert!(late.state().participant.is_none());

    let before = viewer.state().packets_from(1, PayloadKind::Vp8);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= before + 60)
            .await,
        "the call in progress keeps flowing"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "still running while the room is in use"
    );

    publisher.leave();
    viewer.leave();
    let status = exit_status(&mut child, Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits 0 once the room is empty: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (mut child, addr) = start();
    let url = format!("ws://{addr}/rtc");
    let viewer = Bot::spawn(BotConfig::new(&url, token("drain2", "viewer"), false, 2));
    assert!(viewer.wait_for(WAIT, |s| s.participant.is_some()).await);
    signal(&child, "-TERM");
    assert!(became_unready(&addr).await, "draining");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "draining, not gone"
    );
    signal(&child, "-INT");
    let status = exit_status(&mut child, Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "second signal exits: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_everyone_is_told_and_webhooks_are_delivered() {
    use std::sync::{Arc, Mutex};

    let events = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let record = events.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                if let Ok(event) = serde_json::from_slice(&body) {
                    record.lock().unwrap().push(event);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut child, addr) = start_with(&["--drain-timeout", "1", "--webhook-url", &hook]);
    let url = format!("ws://{addr}/rtc");
    let viewer = Bot::spawn(BotConfig::new(&url, token("deadline", "viewer"), false, 2));
    assert!(viewer.wait_for(WAIT, |s| s.participant.is_some()).await);
    signal(&child, "-TERM");
    assert!(
        viewer
            .wait_for(WAIT, |s| s.saw(|m| matches!(
                m,
                ServerMessage::Left { reason } if reason.contains("shutting down")
            )))
            .await,
        "the participant is told why: {:?}",
        viewer.state().messages
    );
    let status = exit_status(&mut child, WAIT).await;
    assert!(status.is_some_and(|s| s.success()), "exits 0: {status:?}");
    let names: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["room"] == "deadline")
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        names,
        [
            "room_started",
            "participant_joined",
            "participant_left",
            "room_finished"
        ],
        "every event was delivered before the process exited"
    );
}
