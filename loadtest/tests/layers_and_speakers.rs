//! Simulcast layer choice on request (`set_quality`) and active-speaker announcements, with
//! str0m bots over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{WAIT, start_server, start_server_with, token, ws_url};
use loadtest::bot::{Bot, BotConfig, BotState, ReceivedStream};
use loadtest::signal::{ClientMessage, ServerMessage};
use loadtest::synthetic::PayloadKind;

fn video(state: &BotState) -> Option<&ReceivedStream> {
    state.streams.values().find(|s| s.kind == PayloadKind::Vp8)
}

fn video_track_of(state: &BotState) -> String {
    state
        .messages
        .iter()
        .find_map(|m| match m {
            ServerMessage::TrackPublished { track } if track.kind == "video" => {
                Some(track.id.clone())
            }
            _ => None,
        })
        .expect("a video track was published")
}

fn set_quality(bot: &Bot, track: &str, quality: &str) {
    let message = serde_json::from_value::<ClientMessage>(serde_json::json!({
        "type": "set_quality", "track": track, "quality": quality
    }))
    .expect("valid message");
    bot.signal(message);
}

/// The `layer_state` messages received: (current, target, reason).
fn layer_states(state: &BotState) -> Vec<(Option<u8>, Option<u8>, String)> {
    state
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::LayerState {
                current,
                target,
                reason,
                ..
            } => Some((*current, *target, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `layers` (every layer the subscriber was switched to) visits `expected` in order,
/// allowing intermediate steps on the way from one expected layer to the next (an upgrade may
/// pass through a layer the publisher resumes first) and a ramp up to the first one.
fn switched_in_order(layers: &[u8], expected: &[u8]) -> bool {
    let mut from: Option<u8> = None;
    let mut next = expected.iter().copied().peekable();
    for &layer in layers {
        let Some(to) = next.peek().copied() else {
            return false;
        };
        let on_the_way = match from {
            None => layer < to,
            Some(from) => from.min(to) < layer && layer < from.max(to),
        };
        if layer == to {
            from = Some(to);
            next.next();
        } else if !on_the_way {
            return false;
        }
    }
    next.peek().is_none()
}

/// Waits until the subscriber's video is on `layer` and has received 30 packets since.
async fn settles_on(bot: &Bot, layer: u8) -> bool {
    bot.wait_for(WAIT, |s| {
        video(s).is_some_and(|v| {
            v.layer == Some(layer)
                && v.layer_changes
                    .last()
                    .is_some_and(|(seq, _, _)| v.seqs.iter().filter(|x| *x >= seq).count() > 30)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_chooses_a_layer_and_switches_on_keyframes_without_gaps() {
    // Requests alone decide here: a CPU-starved test machine delays the bots' feedback, which
    // the estimator reads as congestion. Bandwidth-driven choices are proven by the allocator
    // simulation (fake clock) and the browser tests under tc limits.
    let server = start_server_with(2, |sfu| sfu.congestion_control = false).await;
    let mut publisher = BotConfig::new(&ws_url(&server), token("layers", "pub"), true, 1);
    publisher.simulcast = true;
    publisher.packets_per_frame = 4;
    publisher.keyframe_interval = u32::MAX; // keyframes only when asked
    let publisher = Bot::spawn(publisher);
    let viewer = Bot::spawn(BotConfig::new(
        &ws_url(&server),
        token("layers", "viewer"),
        false,
        2,
    ));

    assert!(
        settles_on(&viewer, 2).await,
        "auto quality forwards the top layer: {:?}",
        layer_states(&viewer.state())
    );
    let track = video_track_of(&viewer.state());
    for (quality, layer, reason) in [
        ("low", 0, "requested"),
        ("medium", 1, "requested"),
        ("high", 2, "best"),
        ("low", 0, "requested"),
        ("auto", 2, "best"),
    ] {
        set_quality(&viewer, &track, quality);
        assert!(
            settles_on(&viewer, layer).await,
            "{quality} -> layer {layer}: {:?} {:?}",
            video(&viewer.state()).map(|v| &v.layer_changes),
            layer_states(&viewer.state())
        );
        let reported = viewer
            .wait_for(WAIT, |s| {
                layer_states(s).last() == Some(&(Some(layer), Some(layer), reason.to_owned()))
            })
            .await;
        assert!(
            reported,
            "{quality}: layer state reported: {:?}",
            layer_states(&viewer.state())
        );
    }

    let state = viewer.state();
    let v = video(&state).unwrap();
    assert!(
        v.seqs_continuous(),
        "one continuous sequence space across switches"
    );
    assert_eq!(
        v.picture_id_jumps, 0,
        "VP8 picture IDs continue across switches"
    );
    assert_eq!(v.tags.len(), 1);
    assert_eq!(state.bad_payloads, 0);
    let layers: Vec<u8> = v.layer_changes.iter().map(|(_, l, _)| *l).collect();
    assert!(
        switched_in_order(&layers, &[2, 0, 1, 2, 0, 2]),
        "switches happened in order: {layers:?}"
    );
    assert!(
        server.sfu().counters().layer_switches >= 5,
        "switches are counted"
    );
    for (seq, layer, keyframe) in &v.layer_changes {
        assert!(
            keyframe,
            "switch to layer {layer} at seq {seq} was not on a keyframe"
        );
    }
    assert_eq!(
        state
            .streams
            .values()
            .filter(|s| s.kind == PayloadKind::Vp8)
            .count(),
        1,
        "one outgoing video SSRC"
    );
    drop(publisher);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_quality_for_an_unknown_track_is_refused() {
    let server = start_server(1).await;
    let viewer = Bot::spawn(BotConfig::new(
        &ws_url(&server),
        token("q", "viewer"),
        false,
        2,
    ));
    assert!(viewer.wait_for(WAIT, |s| s.participant.is_some()).await);
    set_quality(&viewer, "TR_12345", "low");
    set_quality(&viewer, "nonsense", "low");
    assert!(
        viewer
            .wait_for(WAIT, |s| s
                .messages
                .iter()
                .filter(|m| matches!(m, ServerMessage::Error { .. }))
                .count()
                == 2)
            .await
    );
    server.shutdown();
}

fn speakers(state: &BotState) -> Option<Vec<String>> {
    state.messages.iter().rev().find_map(|m| match m {
        ServerMessage::ActiveSpeakers { speakers } => {
            Some(speakers.iter().map(|s| s.participant.clone()).collect())
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_speakers_follow_audio_levels() {
    let server = start_server(2).await;
    let url = ws_url(&server);
    let alice = Bot::spawn(BotConfig::new(&url, token("talk", "alice"), true, 1));
    let bob = Bot::spawn(BotConfig::new(&url, token("talk", "bob"), true, 2));
    let carol = Bot::spawn(BotConfig::new(&url, token("talk", "carol"), false, 3));
    alice.set_audio_level(-20);
    bob.set_audio_level(-127);
    assert!(alice.wait_for(WAIT, |s| s.participant.is_some()).await);
    let alice_id = alice.state().participant.unwrap();
    assert!(
        carol
            .wait_for(WAIT, |s| speakers(s) == Some(vec![alice_id.clone()]))
            .await,
        "alice speaks: {:?}",
        speakers(&carol.state())
    );
    // Someone joining while alice speaks is told at once, not at the next change.
    let late = Bot::spawn(BotConfig::new(&url, token("talk", "late"), false, 4));
    assert!(
        late.wait_for(WAIT, |s| speakers(s) == Some(vec![alice_id.clone()]))
            .await,
        "a late joiner learns the current speakers: {:?}",
        speakers(&late.state())
    );
    let bob_id = bob.state().participant.unwrap();
    alice.set_audio_level(-127);
    bob.set_audio_level(-25);
    assert!(
        carol
            .wait_for(WAIT, |s| speakers(s) == Some(vec![bob_id.clone()]))
            .await,
        "bob speaks, alice stopped: {:?}",
        speakers(&carol.state())
    );
    bob.set_audio_level(-127);
    assert!(
        carol.wait_for(WAIT, |s| speakers(s) == Some(vec![])).await,
        "silence"
    );
    server.shutdown();
}

#[test]
fn switch_order_allows_only_steps_on_the_way() {
    let expected = [2, 0, 1, 2, 0, 2];
    assert!(switched_in_order(&[2, 0, 1, 2, 0, 2], &expected));
    assert!(switched_in_order(&[0, 2, 0, 1, 2, 0, 1, 2], &expected));
    assert!(!switched_in_order(&[2, 0, 1, 2, 0], &expected));
    assert!(!switched_in_order(&[2, 0, 1, 2, 0, 1, 0, 2], &expected));
    assert!(!switched_in_order(&[2, 0, 1, 2, 0, 2, 1], &expected));
}
