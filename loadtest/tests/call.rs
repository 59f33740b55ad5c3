//! End to end over real loopback UDP, no browser: str0m bots join through the real WebSocket
//! API, publish synthetic audio and VP8, and check what arrives byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{WAIT, bot, start_server};
use loadtest::bot::{Bot, BotState};
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;

/// Whether `state` has received at least `n` packets of each kind from each publisher tag.
fn receives_from(state: &BotState, tags: &[u32], n: usize) -> bool {
    tags.iter().all(|&t| {
        state.packets_from(t, PayloadKind::Vp8) >= n
            && state.packets_from(t, PayloadKind::Opus) >= n
    })
}

/// Checks everything a subscriber received: intact payloads, one publisher per outgoing SSRC,
/// continuous sequence numbers, video starting on a keyframe, and only `allowed` publishers.
fn assert_clean(name: &str, state: &BotState, allowed: &[u32]) {
    assert_eq!(state.bad_payloads, 0, "{name}: payloads altered in transit");
    for (ssrc, stream) in &state.streams {
        assert_eq!(
            stream.tags.len(),
            1,
            "{name}: SSRC {ssrc} mixes publishers {:?}",
            stream.tags
        );
        assert!(
            stream.tags.iter().all(|t| allowed.contains(t)),
            "{name}: SSRC {ssrc} carries {:?}, expected only {allowed:?}",
            stream.tags
        );
        assert!(
            stream.seqs_continuous(),
            "{name}: SSRC {ssrc} has gaps or repeats in its sequence numbers"
        );
        if stream.kind == PayloadKind::Vp8 {
            assert!(
                stream.starts_with_keyframe,
                "{name}: video SSRC {ssrc} did not start on a keyframe"
            );
        }
    }
}

fn participant(bot: &Bot) -> String {
    bot.state().participant.unwrap_or_default()
}

fn track_ids_of(state: &BotState, participant: &str) -> Vec<String> {
    state
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::TrackPublished { track } if track.participant == participant => {
                Some(track.id.clone())
            }
            _ => None,
        })
        .collect()
}

/// The first participant of a room, with nothing to receive yet, connects its subscribe
/// connection at once (its first offer carries only the data channel), and keeps it: the
/// churn soak lost such connections to the connect deadline while the bot's state machine
/// had not started its clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_alone_in_a_room_connects_and_receives_who_comes_later() {
    let server = start_server(2).await;
    let viewer = bot(&server, "alone", "viewer", false, 11);
    assert!(
        viewer.wait_for(WAIT, |s| s.subscribe_connected).await,
        "the lone viewer's subscribe connection connects: {:?}",
        viewer.state().subscribe_ice
    );
    let publisher = bot(&server, "alone", "publisher", true, 1);
    assert!(
        viewer.wait_for(WAIT, |s| receives_from(s, &[1], 60)).await,
        "the viewer receives the publisher who came later"
    );
    assert_clean("viewer", &viewer.state(), &[1]);
    drop(publisher);
}

/// A track published into a room of viewers spread over both media workers reaches every one
/// of them (the room subscribes them all with one command per worker), intact and starting on
/// a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_published_into_a_room_of_viewers_on_every_worker_reaches_them_all() {
    let server = start_server(2).await;
    let viewers: Vec<Bot> = (0..6)
        .map(|i| bot(&server, "many", &format!("viewer-{i}"), false, 20 + i))
        .collect();
    for v in &viewers {
        assert!(v.wait_for(WAIT, |s| s.subscribe_connected).await);
    }
    let publisher = bot(&server, "many", "publisher", true, 1);
    for (i, v) in viewers.iter().enumerate() {
        assert!(
            v.wait_for(WAIT, |s| receives_from(s, &[1], 30)).await,
            "viewer {i} receives the track published after it joined"
        );
        assert_clean(&format!("viewer {i}"), &v.state(), &[1]);
    }
    let sfu = server.sfu();
    let tracks = sfu.tracks().await;
    let video = tracks
        .iter()
        .find(|t| t.subscribers.len() == viewers.len())
        .expect("a track with every viewer");
    let workers: std::collections::BTreeSet<usize> = video
        .subscribers
        .iter()
        .filter_map(|p| sfu.worker_of_peer_for_tests(*p))
        .collect();
    assert_eq!(workers.len(), 2, "the viewers are on both workers");
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_exchange_media_and_data_and_leave_cleanly() {
    let server = start_server(2).await;
    let alice = bot(&server, "room-1", "alice", true, 1);
    let bob = bot(&server, "room-1", "bob", true, 2);
    let carol = bot(&server, "room-1", "carol", false, 3);
    // A second room at the same time must stay isolated.
    let dave = bot(&server, "room-2", "dave", true, 4);
    let erin = bot(&server, "room-2", "erin", false, 5);

    assert!(
        alice.wait_for(WAIT, |s| receives_from(s, &[2], 60)).await,
        "alice receives bob"
    );
    assert!(
        bob.wait_for(WAIT, |s| receives_from(s, &[1], 60)).await,
        "bob receives alice"
    );
    assert!(
        carol
            .wait_for(WAIT, |s| receives_from(s, &[1, 2], 60))
            .await,
        "carol receives both"
    );
    assert!(
        erin.wait_for(WAIT, |s| receives_from(s, &[4], 60)).await,
        "erin receives dave"
    );

    assert_clean("alice", &alice.state(), &[2]);
    assert_clean("bob", &bob.state(), &[1]);
    assert_clean("carol", &carol.state(), &[1, 2]);
    assert_clean("erin", &erin.state(), &[4]);
    assert_clean("dave", &dave.state(), &[]);
    assert_eq!(
        alice.state().streams.len(),
        2,
        "alice gets bob's audio and video, nothing of her own"
    );
    assert_eq!(carol.state().streams.len(), 4);

    // A PLI from a subscriber reaches the publisher.
    let before = alice.state().keyframe_requests;
    let server_before = server.sfu().counters().keyframe_requests_received;
    carol.request_keyframes();
    assert!(
        alice.wait_for(WAIT, |s| s.keyframe_requests > before).await,
        "carol's PLI reaches alice"
    );
    assert!(server.sfu().counters().keyframe_requests_received > server_before);

    // A data message reaches the two others, with the sender's identity, and nobody else.
    assert!(
        alice.wait_for(WAIT, |s| s.data_open).await,
        "alice's data channel opens"
    );
    let alice_id = participant(&alice);
    alice.send_data("hello from alice");
    for (name, b) in [("bob", &bob), ("carol", &carol)] {
        assert!(
            b.wait_for(WAIT, |s| s
                .data
                .iter()
                .any(|d| d.contains("hello from alice")))
                .await,
            "{name} receives alice's message"
        );
        let message = b.with_state(|s| s.data.iter().find(|d| d.contains("hello")).cloned());
        let json: serde_json::Value =
            serde_json::from_str(&message.unwrap_or_default()).expect("JSON envelope");
        assert_eq!(json["from"], alice_id.as_str());
        assert_eq!(json["identity"], "alice");
        assert_eq!(json["data"], "hello from alice");
    }
    assert!(alice.state().data.is_empty(), "no echo to the sender");
    assert!(
        erin.state().data.is_empty() && dave.state().data.is_empty(),
        "no data across rooms"
    );

    // Alice leaves: the others are told, and the media core holds nothing of her.
    let alice_tracks = track_ids_of(&bob.state(), &alice_id);
    assert_eq!(alice_tracks.len(), 2);
    alice.leave();
    for (name, b) in [("bob", &bob), ("carol", &carol)] {
        assert!(
            b.wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::ParticipantLeft { participant } if *participant == alice_id)))
                .await,
            "{name} is told alice left"
        );
        for t in &alice_tracks {
            assert!(b.with_state(|s| s.saw(
                |m| matches!(m, ServerMessage::TrackUnpublished { track, .. } if track == t)
            )));
        }
    }
    // participant_left is sent only after the core removed her peers: her tracks are gone.
    let tracks = server.sfu().tracks().await;
    assert!(
        tracks
            .iter()
            .all(|t| !alice_tracks.contains(&t.track.to_string())),
        "alice's tracks are out of the graph: {tracks:?}"
    );
    // Room 1: bob's two tracks, each with carol as the only subscriber. Room 2: dave's two
    // tracks with erin. Peers: bob (2), carol (1), dave (2), erin (1). Alice's leave reaches
    // the owners of bob's tracks in their next turn.
    assert_eq!(tracks.len(), 4, "{tracks:?}");
    let (tracks, settled) =
        common::tracks_when(&server, |t| t.iter().all(|t| t.subscribers.len() == 1)).await;
    assert!(settled, "{tracks:?}");
    assert_eq!(server.sfu().peer_count(), 6);

    // The call carries on for the others.
    let carol_now = carol.state().packets_from(2, PayloadKind::Vp8);
    assert!(
        carol
            .wait_for(WAIT, |s| s.packets_from(2, PayloadKind::Vp8)
                > carol_now + 30)
            .await
    );
    assert_clean("carol", &carol.state(), &[1, 2]);
    assert_clean("erin", &erin.state(), &[4]);

    for b in [&bob, &carol, &dave, &erin] {
        b.leave();
    }
    for b in [bob, carol, dave, erin] {
        tokio::time::timeout(Duration::from_secs(5), b.join())
            .await
            .expect("bot leaves")
            .expect("bot ends cleanly");
    }
    assert!(server.sfu().tracks().await.is_empty());
    assert_eq!(server.sfu().peer_count(), 0);
    server.shutdown();
}
