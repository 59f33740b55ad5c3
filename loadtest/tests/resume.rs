//! Calls that survive network trouble, over real sockets: a signalling socket that drops is
//! resumed on a new one without anyone noticing (media never stops, missed messages arrive),
//! a participant that does not come back within the grace period leaves cleanly, sockets that
//! never join or go silent are closed, peer connections and WHIP resources that never connect
//! are removed, and ICE restarts on both connections while media flows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, bot, eventually, start_server_configured, token, ws_url};
use control_api::protocol::ErrorCode;
use loadtest::bot::{Bot, BotState};
use loadtest::server_probe::http_request;
use loadtest::signal::{ClientMessage, ServerMessage, Signal};
use loadtest::synthetic::PayloadKind;
use str0m::IceConnectionState;
use str0m::media::{Direction, MediaKind};

const ALICE: u32 = 1;

fn left(state: &BotState, who: &str) -> bool {
    state.saw(|m| matches!(m, ServerMessage::ParticipantLeft { participant } if participant == who))
}

/// The bot has let go of its signalling socket (the drop is a command its task runs).
fn dropped(state: &BotState) -> bool {
    state.sent_before_drop > 0
}

fn unpublished(state: &BotState) -> bool {
    state.saw(|m| matches!(m, ServerMessage::TrackUnpublished { .. }))
}

fn count(state: &BotState, f: impl Fn(&ServerMessage) -> bool) -> usize {
    state.messages.iter().filter(|m| f(m)).count()
}

fn audio_muted(state: &BotState, muted: bool) -> usize {
    count(
        state,
        |m| matches!(m, ServerMessage::TrackMuted { muted: value, .. } if *value == muted),
    )
}

/// Waits until `viewer` has received `more` video packets from alice beyond what it has now.
async fn media_keeps_flowing(viewer: &Bot, more: usize) -> bool {
    let now = viewer.with_state(|s| s.packets_from(ALICE, PayloadKind::Vp8));
    viewer
        .wait_for(WAIT, |s| {
            s.packets_from(ALICE, PayloadKind::Vp8) >= now + more
        })
        .await
}

async fn participant(bot: &Bot) -> String {
    assert!(bot.wait_for(WAIT, |s| s.participant.is_some()).await);
    bot.with_state(|s| s.participant.clone().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_and_nobody_notices() {
    let server = start_server_configured(1, |_| {}).await;
    let alice = bot(&server, "resume", "alice", true, ALICE);
    let bob = bot(&server, "resume", "bob", false, 2);
    let alice_id = participant(&alice).await;
    let bob_id = participant(&bob).await;
    assert!(
        bob.with_state(|s| s.resume_token.is_some()),
        "joined carries a resume token"
    );
    assert!(media_keeps_flowing(&bob, 30).await, "bob receives alice");

    // Bob's socket drops. While he is away alice mutes her microphone: bob misses it.
    bob.drop_signalling();
    assert!(bob.wait_for(WAIT, dropped).await);
    alice.set_audio_muted(true);
    assert!(
        alice.wait_for(WAIT, |s| audio_muted(s, true) == 1).await,
        "alice hears her own mute back"
    );
    assert!(
        media_keeps_flowing(&bob, 60).await,
        "media goes on while the socket is down"
    );
    assert_eq!(bob.with_state(|s| audio_muted(s, true)), 0);

    // Alice's socket drops too; a newcomer joins while she is away.
    alice.drop_signalling();
    assert!(alice.wait_for(WAIT, dropped).await);
    let carol = bot(&server, "resume", "carol", false, 3);
    let carol_id = participant(&carol).await;
    assert!(
        media_keeps_flowing(&carol, 30).await,
        "carol receives alice"
    );

    // Both come back on new sockets and get what they missed.
    bob.resume();
    alice.resume();
    assert!(
        bob.wait_for(WAIT, |s| audio_muted(s, true) == 1).await,
        "bob gets the mute he missed: {:?}",
        bob.state().messages
    );
    assert!(
        alice
            .wait_for(WAIT, |s| s.saw(|m| matches!(
                m,
                ServerMessage::ParticipantJoined { participant } if participant.id == carol_id
            )))
            .await,
        "alice learns carol joined while she was away"
    );
    for (who, b) in [("alice", &alice), ("bob", &bob)] {
        let state = b.state();
        let handled = state.messages.iter().find_map(|m| match m {
            ServerMessage::Resumed { last_seq } => Some(*last_seq),
            _ => None,
        });
        assert_eq!(
            handled,
            Some(state.sent_before_drop),
            "{who}: the server handled every numbered message sent before the drop"
        );
        assert!(state.sent_before_drop > 0, "{who} numbered its messages");
        assert_eq!(
            count(&state, |m| matches!(m, ServerMessage::Resumed { .. })),
            1,
            "{who} resumed once"
        );
        assert_eq!(
            count(&state, |m| matches!(m, ServerMessage::Joined { .. })),
            1,
            "{who} joined once"
        );
        assert!(state.error().is_none(), "{who}: {:?}", state.error());
    }

    // The new sockets carry new messages; the session is the same.
    alice.set_audio_muted(false);
    assert!(bob.wait_for(WAIT, |s| audio_muted(s, false) == 1).await);
    assert!(media_keeps_flowing(&bob, 30).await);
    for observer in [&alice, &bob, &carol] {
        let state = observer.state();
        assert!(!left(&state, &alice_id) && !left(&state, &bob_id));
        assert!(!unpublished(&state), "no track was unpublished");
    }
    assert_eq!(
        bob.with_state(|s| s.participant.clone()),
        Some(bob_id.clone())
    );

    // Leaving after a resume is a normal leave.
    bob.leave();
    assert!(carol.wait_for(WAIT, |s| left(s, &bob_id)).await);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_participant_leaves() {
    let server = start_server_configured(1, |config| {
        config.signalling.resume_grace = Duration::from_secs(1);
    })
    .await;
    let alice = bot(&server, "grace", "alice", true, ALICE);
    let bob = bot(&server, "grace", "bob", false, 2);
    let alice_id = participant(&alice).await;
    participant(&bob).await;
    assert!(media_keeps_flowing(&bob, 30).await);

    alice.drop_signalling();
    assert!(
        bob.wait_for(WAIT, |s| left(s, &alice_id) && unpublished(s))
            .await,
        "the room is told alice left and her tracks are gone: {:?}",
        bob.state().messages
    );
    alice.resume();
    assert!(
        alice
            .wait_for(WAIT, |s| s.error().is_some() || s.ended.is_some())
            .await
    );
    let state = alice.state();
    assert_eq!(
        state.error().map(|(code, _)| code),
        Some(ErrorCode::ResumeFailed),
        "{:?}",
        state.messages
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_a_wrong_token_is_refused() {
    let server = start_server_configured(1, |_| {}).await;
    let mut signal = Signal::connect(&ws_url(&server)).await.unwrap();
    signal
        .send(&ClientMessage::Resume {
            token: "not-a-token".into(),
            last_seq: 0,
        })
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, signal.recv()).await.unwrap();
    assert!(
        matches!(
            reply,
            Some(Ok(ServerMessage::Error {
                code: ErrorCode::ResumeFailed,
                ..
            }))
        ),
        "{reply:?}"
    );
    let end = tokio::time::timeout(WAIT, signal.recv()).await.unwrap();
    assert!(
        !matches!(end, Some(Ok(_))),
        "the socket closes after a refused resume: {end:?}"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_join_or_go_silent_are_closed() {
    let server = start_server_configured(1, |config| {
        config.signalling.join = Duration::from_secs(1);
        config.signalling.ping = Duration::from_millis(200);
        config.signalling.silence = Duration::from_secs(1);
        config.signalling.resume_grace = Duration::from_secs(1);
    })
    .await;

    // Never joins: told why, then closed.
    let mut idle = Signal::connect(&ws_url(&server)).await.unwrap();
    let reply = tokio::time::timeout(WAIT, idle.recv()).await.unwrap();
    assert!(
        matches!(
            reply,
            Some(Ok(ServerMessage::Error {
                code: ErrorCode::NotJoined,
                ..
            }))
        ),
        "{reply:?}"
    );
    let end = tokio::time::timeout(WAIT, idle.recv()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");

    // Joins, then stops reading (pings go unanswered): detached, and gone after the grace.
    let watcher = bot(&server, "silent", "watcher", false, 2);
    participant(&watcher).await;
    let mut silent = Signal::connect(&ws_url(&server)).await.unwrap();
    silent
        .send(&ClientMessage::Join {
            token: token("silent", "mute-client"),
        })
        .await
        .unwrap();
    let joined = tokio::time::timeout(WAIT, silent.recv()).await.unwrap();
    let Some(Ok(ServerMessage::Joined { participant, .. })) = joined else {
        panic!("{joined:?}");
    };
    assert!(
        watcher.wait_for(WAIT, |s| left(s, &participant.id)).await,
        "a client that stops answering is removed: {:?}",
        watcher.state().messages
    );
    drop(silent);
    server.shutdown();
}

fn ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}

fn offers(state: &BotState) -> Vec<String> {
    state
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::SubscribeOffer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .collect()
}

/// Whether, after the first `from` states, the connection went through checking and came back.
fn reconnected(states: &[IceConnectionState], from: usize) -> bool {
    let after = states.get(from..).unwrap_or_default();
    let checking = after
        .iter()
        .position(|s| *s == IceConnectionState::Checking);
    checking.is_some_and(|i| {
        after[i..].iter().any(|s| {
            matches!(
                s,
                IceConnectionState::Connected | IceConnectionState::Completed
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_on_both_connections_while_media_flows() {
    // A restarted connection has 2 s to connect again: the test outlives that, so a restart
    // the server does not see complete closes the connection.
    let server = start_server_configured(1, |config| {
        config.sfu.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let alice = bot(&server, "restart", "alice", true, ALICE);
    let bob = bot(&server, "restart", "bob", true, 2);
    participant(&alice).await;
    participant(&bob).await;
    assert!(media_keeps_flowing(&bob, 30).await);
    let before = bob.state();
    let old_offers = offers(&before).len();
    let old_ufrag = ufrag(offers(&before).last().unwrap()).unwrap();
    let (publish_states, subscribe_states) = (before.publish_ice.len(), before.subscribe_ice.len());

    bob.restart_ice();
    assert!(
        bob.wait_for(WAIT, |s| reconnected(&s.publish_ice, publish_states)
            && reconnected(&s.subscribe_ice, subscribe_states))
            .await,
        "both connections check again and reconnect: {:?}",
        bob.state()
    );
    let after = bob.state();
    let new_offers = offers(&after);
    assert_eq!(new_offers.len(), old_offers + 1, "one new subscribe offer");
    let new_ufrag = ufrag(new_offers.last().unwrap()).unwrap();
    assert_ne!(new_ufrag, old_ufrag, "the offer restarts ICE");
    assert!(after.error().is_none(), "{:?}", after.error());

    // Media flows both ways over the restarted connections.
    assert!(media_keeps_flowing(&bob, 60).await, "bob receives alice");
    let from_bob = alice.with_state(|s| s.packets_from(2, PayloadKind::Vp8));
    assert!(
        alice
            .wait_for(WAIT, |s| s.packets_from(2, PayloadKind::Vp8)
                >= from_bob + 60)
            .await,
        "alice receives bob"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.sfu().peer_count(), 4, "no connection was closed");
    assert!(bob.state().error().is_none(), "{:?}", bob.state().error());
    assert!(media_keeps_flowing(&bob, 30).await);
    server.shutdown();
}

/// An offer to publish audio from a state machine nobody drives: it never connects.
fn offer_that_never_connects() -> String {
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_connect_are_removed() {
    let server = start_server_configured(1, |config| {
        config.sfu.connect_timeout = Duration::from_secs(1);
    })
    .await;

    // Over signalling: the client is told its publish connection closed, and why.
    let mut signal = Signal::connect(&ws_url(&server)).await.unwrap();
    let join = ClientMessage::Join {
        token: token("never", "stuck"),
    };
    signal.send(&join).await.unwrap();
    let publish = ClientMessage::PublishOffer {
        sdp: offer_that_never_connects(),
        sources: Default::default(),
    };
    signal.send(&publish).await.unwrap();
    let mut answered = false;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = signal.recv().await {
            match message {
                ServerMessage::PublishAnswer { .. } => answered = true,
                ServerMessage::Error {
                    code: ErrorCode::MediaClosed,
                    message,
                    ..
                } => return message,
                _ => {}
            }
        }
        panic!("the socket closed first");
    })
    .await
    .unwrap();
    assert!(answered, "the offer was answered first");
    assert!(closed.contains("ConnectTimeout"), "{closed}");
    assert!(
        eventually(|| server.sfu().peer_count() == 0).await,
        "the peer is closed"
    );

    // Over WHIP: the resource ends, and its participant leaves.
    let addr = server.http_addr.to_string();
    let bearer = format!("Bearer {}", token("never", "whip-client"));
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    let offer = offer_that_never_connects();
    let participants = server.participants();
    let created = http_request(&addr, "POST", "/whip/never", &headers, &offer)
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let location = created.header("location").unwrap().to_string();
    assert_eq!(server.sfu().peer_count(), 1);
    assert!(
        eventually(|| server.sfu().peer_count() == 0 && server.participants() == participants)
            .await,
        "the resource's peer is closed and its participant gone"
    );
    let deleted = http_request(&addr, "DELETE", &location, &[], "")
        .await
        .unwrap();
    assert_eq!(deleted.status, 404, "the resource is gone");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_again_with_the_same_identity_replaces_the_old_session() {
    // A full room: the session being replaced does not count against the limit.
    let server = start_server_configured(1, |config| config.rooms.max_participants = 2).await;
    let first = bot(&server, "twice", "alice", true, ALICE);
    let bob = bot(&server, "twice", "bob", false, 2);
    let first_id = participant(&first).await;
    participant(&bob).await;
    assert!(media_keeps_flowing(&bob, 30).await);

    // Alice's client lost its session (or she opened a second tab) and joins again.
    let second = bot(&server, "twice", "alice", true, 3);
    let second_id = participant(&second).await;
    assert!(
        first
            .wait_for(WAIT, |s| s.saw(|m| matches!(
                m,
                ServerMessage::Left { reason } if reason.contains("joined again")
            )))
            .await,
        "the old session is told why it ended: {:?}",
        first.state().messages
    );
    assert!(
        bob.wait_for(WAIT, |s| left(s, &first_id)).await,
        "the room sees the old session leave"
    );
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(3, PayloadKind::Vp8) > 30)
            .await,
        "and receives the new one"
    );
    assert!(!bob.with_state(|s| left(s, &second_id)));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_is_closed_within_the_bound() {
    // 15 s without a connectivity check (str0m's ICE-lite limit), then 1 s more.
    let server = start_server_configured(1, |config| {
        config.sfu.connect_timeout = Duration::from_secs(1);
        config.signalling.resume_grace = Duration::from_secs(120);
    })
    .await;
    let alice = bot(&server, "silent-peer", "alice", true, ALICE);
    let bob = bot(&server, "silent-peer", "bob", false, 2);
    let alice_id = participant(&alice).await;
    participant(&bob).await;
    assert!(media_keeps_flowing(&bob, 30).await);
    let peers = server.sfu().peer_count();

    // Alice's machine goes away: no packet, no close (her session waits for a resume).
    alice.abort();
    let gone = Instant::now();
    assert!(
        bob.wait_for(Duration::from_secs(30), unpublished).await,
        "alice's tracks go once her peers are closed: {:?}",
        bob.state().messages
    );
    let after = gone.elapsed();
    assert!(
        after >= Duration::from_secs(15) && after < Duration::from_secs(25),
        "closed between 15 s and 25 s after the last packet: {after:?}"
    );
    assert!(
        eventually(|| server.sfu().peer_count() == peers - 2).await,
        "both of alice's peers are closed"
    );
    assert!(
        !bob.with_state(|s| left(s, &alice_id)),
        "alice is still in the room, her session waiting for a resume"
    );
    server.shutdown();
}
