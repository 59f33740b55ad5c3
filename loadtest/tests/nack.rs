//! Loss between the server and a subscriber: the subscriber's NACKs are answered from the
//! server's egress RTX cache, so video arrives complete while (non-retransmitted) audio shows
//! the loss.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{WAIT, start_server, token, ws_url};
use loadtest::bot::{Bot, BotConfig};
use loadtest::synthetic::PayloadKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_losses_are_repaired_from_the_egress_cache() {
    let server = start_server(2).await;
    let mut sender = BotConfig::new(&ws_url(&server), token("lossy", "pub"), true, 1);
    sender.packets_per_frame = 4;
    let publisher = Bot::spawn(sender);
    let mut lossy = BotConfig::new(&ws_url(&server), token("lossy", "sub"), false, 2);
    lossy.drop_rtp_percent = 5;
    let subscriber = Bot::spawn(lossy);

    assert!(
        subscriber
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 600)
            .await,
        "video flows despite the loss"
    );
    let state = subscriber.state();
    let video = state
        .streams
        .values()
        .find(|s| s.kind == PayloadKind::Vp8)
        .expect("video");
    let audio = state
        .streams
        .values()
        .find(|s| s.kind == PayloadKind::Opus)
        .expect("audio");
    let newest = video.seqs.iter().max().copied().unwrap_or(0);
    // Packets lost in the last moments may still be waiting for their retransmission.
    let unrepaired: Vec<u64> = video
        .missing()
        .into_iter()
        .filter(|s| *s + 60 < newest)
        .collect();
    assert!(
        unrepaired.is_empty(),
        "video holes left unrepaired: {unrepaired:?}"
    );
    assert!(
        !audio.missing().is_empty(),
        "audio (not retransmitted) shows the 5% loss, so the loss was real"
    );
    assert_eq!(state.bad_payloads, 0, "retransmitted payloads are intact");
    let deadline = std::time::Instant::now() + WAIT;
    while server.sfu().counters().nacks_received == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        server.sfu().counters().nacks_received > 0,
        "the subscriber's NACKs are counted"
    );
    drop(publisher);
    server.shutdown();
}
