//! A media worker that panics is not silent: each of its peers is closed and its session told
//! (`media_closed`), the worker restarts and takes new peers again; one that keeps failing
//! stops for good, new peers go to the other workers, and `/healthz` says the node is unhealthy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{WAIT, bot, eventually, start_server};
use control_api::Server;
use control_api::protocol::ErrorCode;
use loadtest::bot::Bot;
use loadtest::server_probe::http_request;
use loadtest::synthetic::PayloadKind;

fn media_closed(bot: &Bot) -> usize {
    bot.with_state(|s| {
        s.messages
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    loadtest::signal::ServerMessage::Error {
                        code: ErrorCode::MediaClosed,
                        ..
                    }
                )
            })
            .count()
    })
}

/// A publisher and a viewer in `room`; returns them once the viewer receives video.
async fn call(server: &Server, room: &str, tag: u32) -> (Bot, Bot) {
    let publisher = bot(server, room, &format!("pub-{tag}"), true, tag);
    let viewer = bot(server, room, &format!("view-{tag}"), false, tag + 1);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(tag, PayloadKind::Vp8) > 30)
            .await,
        "a call in {room} works"
    );
    (publisher, viewer)
}

async fn health(server: &Server) -> u16 {
    http_request(&server.http_addr.to_string(), "GET", "/healthz", &[], "")
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_closes_its_peers_restarts_and_finally_stops() {
    let server = start_server(2).await;
    let sfu = server.sfu().clone();
    let (alice, bob) = call(&server, "before", 10).await;
    let peers = sfu.peer_count();
    assert_eq!(peers, 3, "alice publishes and subscribes, bob subscribes");

    sfu.crash_worker_for_tests(0).await.unwrap();
    assert!(
        eventually(|| sfu.counters().worker_restarts == 1).await,
        "the worker restarted"
    );
    let closed = peers - sfu.peer_count();
    assert!(closed >= 1, "worker 0 had peers");
    assert!(
        eventually(|| media_closed(&alice) + media_closed(&bob) == closed).await,
        "each closed peer's session is told: {closed} closed, alice {}, bob {}",
        media_closed(&alice),
        media_closed(&bob)
    );
    assert_eq!(health(&server).await, 200, "a restarted worker is healthy");

    // The restarted worker takes new peers: three calls, six peers, spread over both workers.
    let mut calls = Vec::new();
    for (i, room) in ["after-1", "after-2", "after-3"].iter().enumerate() {
        calls.push(call(&server, room, 20 + 2 * i as u32).await);
    }

    // Failing again and again: it stops for good; new peers go to worker 1 only.
    for restarts in 2..=4 {
        sfu.crash_worker_for_tests(0).await.unwrap();
        assert!(
            eventually(|| sfu.counters().worker_restarts == restarts.min(3)
                && (restarts < 4 || !sfu.dead_workers().is_empty()))
            .await,
            "crash {restarts}"
        );
    }
    assert_eq!(sfu.dead_workers(), vec![0]);
    assert_eq!(
        health(&server).await,
        503,
        "the node reports itself unhealthy"
    );
    let (_p, _v) = call(&server, "on-the-survivor", 40).await;
    server.shutdown();
}

/// A track's owner (its publisher's worker) forgets the subscribers another worker had when
/// that worker crashed: their leave messages are passed on after the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_on_other_workers_forget_the_subscribers_of_a_crashed_worker() {
    let server = start_server(2).await;
    let sfu = server.sfu().clone();
    let (_alice, _bob) = call(&server, "crash", 10).await;
    let carol = bot(&server, "crash", "carol", false, 12);
    assert!(
        carol
            .wait_for(WAIT, |s| s.packets_from(10, PayloadKind::Vp8) > 30)
            .await,
        "carol receives"
    );
    let tracks = sfu.tracks().await;
    let video = tracks.first().expect("alice's tracks");
    let owner = sfu
        .worker_of_peer_for_tests(video.publisher)
        .expect("alice's publisher lives");
    let other = 1 - owner;
    // Bob and carol joined after alice's two connections, one on each worker.
    let doomed: Vec<_> = video
        .subscribers
        .iter()
        .copied()
        .filter(|p| sfu.worker_of_peer_for_tests(*p) == Some(other))
        .collect();
    assert!(
        !doomed.is_empty(),
        "a viewer of alice on worker {other}: {tracks:?}"
    );

    sfu.crash_worker_for_tests(other).await.unwrap();
    assert!(
        eventually(|| sfu.counters().worker_restarts == 1).await,
        "the worker restarted"
    );
    let (tracks, forgotten) = common::tracks_when(&server, |tracks| {
        tracks
            .iter()
            .all(|t| t.subscribers.iter().all(|p| !doomed.contains(p)))
    })
    .await;
    assert!(
        forgotten,
        "worker {owner} still sends to {doomed:?}, closed with worker {other}: {tracks:?}"
    );
    server.shutdown();
}
