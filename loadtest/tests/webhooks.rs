//! Webhooks delivered to a local receiver: signed with the API secret, in the order the events
//! happened, despite a receiver that fails every event's first attempt.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{WAIT, bot};
use control_api::auth::{DEV_API_KEY, DEV_API_SECRET};
use control_api::webhook::{WebhookConfig, sign};
use control_api::{Server, ServerConfig};
use loadtest::synthetic::PayloadKind;
use serde_json::Value;

#[derive(Default)]
struct Receiver {
    /// Every attempt: (event id, signature valid, body).
    attempts: Vec<(String, bool, Value)>,
    seen: HashSet<String>,
}

async fn hook(
    State(rx): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers
        .get("x-sfu-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let valid = headers.get("x-sfu-key").is_some_and(|k| k == DEV_API_KEY)
        && signature == format!("sha256={}", sign(DEV_API_SECRET, &body));
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = json["id"].as_str().unwrap_or_default().to_string();
    let mut rx = rx.lock().unwrap();
    rx.attempts.push((id.clone(), valid, json));
    // Fail each event once: the server must retry, and keep the order.
    if rx.seen.insert(id) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_arrive_signed_and_in_order_despite_failures() {
    let receiver = Arc::new(Mutex::new(Receiver::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        webhooks: Some(WebhookConfig {
            urls: vec![url],
            key: DEV_API_KEY.into(),
            secret: DEV_API_SECRET.into(),
            initial_backoff: Duration::from_millis(20),
            attempts: 5,
            timeout: Duration::from_secs(5),
        }),
        ..ServerConfig::default()
    };
    config.sfu.first_port = 0;
    config.sfu.ice_tcp_port = Some(0);
    config.sfu.workers = 1;
    let server = Server::start(config).await.unwrap();

    let alice = bot(&server, "hooks", "alice", true, 1);
    assert!(alice.wait_for(WAIT, |s| s.publish_connected).await);
    // Bob joins once the room has announced alice's video (her connection being up on her
    // side does not mean the server has published her tracks yet): the order is the test's.
    let published = || {
        let rx = receiver.lock().unwrap();
        rx.attempts
            .iter()
            .any(|(_, _, e)| e["event"] == "track_published" && e["track"]["kind"] == "video")
    };
    let deadline = Instant::now() + WAIT;
    while !published() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(published(), "alice's video was not announced");
    let bob = bot(&server, "hooks", "bob", false, 2);
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > 10)
            .await
    );
    bob.leave();
    bob.join().await.unwrap();
    alice.leave();
    alice.join().await.unwrap();

    let delivered = || -> Vec<Value> {
        let rx = receiver.lock().unwrap();
        // An event is delivered by its second attempt (the first is refused).
        let mut seen = HashSet::new();
        rx.attempts
            .iter()
            .filter(|(id, _, _)| !seen.insert(id.clone()))
            .map(|(_, _, body)| body.clone())
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while !delivered().iter().any(|e| e["event"] == "room_finished") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = delivered();
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            let who = e["participant"]["identity"]
                .as_str()
                .map(|i| format!(":{i}"))
                .unwrap_or_default();
            let what = e["track"]["kind"]
                .as_str()
                .map(|k| format!(":{k}"))
                .unwrap_or_default();
            format!("{}{who}{what}", e["event"].as_str().unwrap_or("?"))
        })
        .collect();
    let expected_prefix = ["room_started", "participant_joined:alice"];
    assert_eq!(&names[..2], &expected_prefix, "{names:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("room_finished"),
        "{names:?}"
    );
    let position = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
    };
    assert!(position("track_published:alice:video") < position("participant_joined:bob"));
    assert!(position("participant_left:bob") < position("track_unpublished:alice:video"));
    assert!(position("track_unpublished:alice:audio") < position("participant_left:alice"));
    assert_eq!(names.len(), 10, "{names:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(events.iter().all(|e| e["room"] == "hooks"));
    let rx = receiver.lock().unwrap();
    assert!(
        rx.attempts.iter().all(|(_, valid, _)| *valid),
        "every request is signed"
    );
    assert_eq!(
        rx.attempts.len(),
        20,
        "each event twice: refused, then accepted"
    );
    drop(rx);
    server.shutdown();
}
