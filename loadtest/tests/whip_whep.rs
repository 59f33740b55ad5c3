//! WHIP and WHEP: a WHIP publisher appears in the room like any participant and reaches both
//! WebSocket and WHEP viewers byte for byte; the HTTP resource semantics of RFC 9725 (status
//! codes, Location, ETag/If-Match, trickle ICE and ICE restart by PATCH, DELETE, CORS).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{WAIT, eventually, start_server, token, ws_url};
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, Grants};
use loadtest::bot::{Bot, BotConfig, Transport};
use loadtest::server_probe::http_request;
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;

fn whip_bot(server: &str, room: &str, identity: &str, tag: u32) -> Bot {
    let mut config = BotConfig::new("", token(room, identity), true, tag);
    config.transport = Transport::Whip {
        server: server.to_string(),
        room: room.to_string(),
    };
    Bot::spawn(config)
}

/// The participant id `participant_joined` gave the first participant of `identity`.
fn joined_id(messages: &[ServerMessage], identity: &str) -> Option<String> {
    messages.iter().find_map(|m| match m {
        ServerMessage::ParticipantJoined { participant } if participant.identity == identity => {
            Some(participant.id.clone())
        }
        _ => None,
    })
}

fn whep_bot(server: &str, room: &str, identity: &str, tag: u32) -> Bot {
    let mut config = BotConfig::new("", token(room, identity), false, tag);
    config.transport = Transport::Whep {
        server: server.to_string(),
        room: room.to_string(),
        participant: None,
    };
    Bot::spawn(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_reaches_websocket_and_whep_viewers_then_delete_leaves() {
    let server = start_server(2).await;
    let addr = server.http_addr.to_string();
    let room_viewer = Bot::spawn(BotConfig::new(
        &ws_url(&server),
        token("w", "viewer"),
        false,
        9,
    ));
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.participant.is_some())
            .await
    );
    let publisher = whip_bot(&addr, "w", "obs", 1);
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 60
                && s.packets_from(1, PayloadKind::Opus) >= 60)
            .await,
        "the WebSocket viewer receives the WHIP publisher"
    );
    let whep = whep_bot(&addr, "w", "watcher", 2);
    assert!(
        whep.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 60
            && s.packets_from(1, PayloadKind::Opus) >= 60)
            .await,
        "the WHEP viewer receives the WHIP publisher: {:?}",
        whep.state().ended
    );
    for (name, bot) in [("viewer", &room_viewer), ("whep", &whep)] {
        let state = bot.state();
        assert_eq!(state.bad_payloads, 0, "{name}: payloads intact");
        assert!(
            state.streams.values().all(|s| s.seqs_continuous()),
            "{name}: no gaps"
        );
        assert!(
            state
                .streams
                .values()
                .filter(|s| s.kind == PayloadKind::Vp8)
                .all(|s| s.starts_with_keyframe),
            "{name}: video starts on a keyframe"
        );
    }
    // The WHIP publisher is a participant like any other.
    let viewer_state = room_viewer.state();
    let whip_id = joined_id(&viewer_state.messages, "obs")
        .expect("participant_joined for the WHIP publisher");
    let sources: Vec<String> = viewer_state
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::TrackPublished { track } if track.participant == whip_id => {
                Some(track.source.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(sources.len(), 2);
    assert!(sources.contains(&"camera".to_string()) && sources.contains(&"microphone".to_string()));
    assert!(
        publisher
            .state()
            .resource
            .is_some_and(|l| l.starts_with("/whip/w/"))
    );

    whep.leave();
    tokio::time::timeout(WAIT, whep.join())
        .await
        .expect("WHEP DELETE in time")
        .expect("200");
    publisher.leave();
    tokio::time::timeout(WAIT, publisher.join())
        .await
        .expect("WHIP DELETE in time")
        .expect("200");
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::ParticipantLeft { participant } if *participant == whip_id)))
            .await,
        "DELETE removes the WHIP participant from the room"
    );
    assert_eq!(server.sfu().track_count(), 0);
    assert_eq!(server.state.resources.len(), 0);
    server.shutdown();
}

fn token_with(room: &str, grants: Grants) -> String {
    let grants = Grants {
        room: Some(room.to_string()),
        room_join: true,
        ..grants
    };
    let claims = Claims::new(DEV_API_KEY, "http-client", Duration::from_secs(60), grants);
    ApiKeys::dev().mint(&claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_http_semantics() {
    let server = start_server(1).await;
    let addr = server.http_addr.to_string();
    let post = |path: &'static str, headers: Vec<(&'static str, String)>, body: &'static str| {
        let addr = addr.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http_request(&addr, "POST", path, &headers, body)
                .await
                .unwrap()
        }
    };
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    let sdp = ("Content-Type", "application/sdp".to_string());

    let options = http_request(&addr, "OPTIONS", "/whip/r", &[], "")
        .await
        .unwrap();
    assert_eq!(options.status, 204);
    assert_eq!(options.header("accept-post"), Some("application/sdp"));
    let preflight = http_request(
        &addr,
        "OPTIONS",
        "/whip/r",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST"))
    );

    let r = post("/whip/r", vec![sdp.clone()], "v=0").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(
        "/whip/r",
        vec![
            bearer(&token("r", "a")),
            ("Content-Type", "text/plain".into()),
        ],
        "v=0",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = post("/whip/r", vec![bearer("not-a-token"), sdp.clone()], "v=0").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("bad_token"));
    let r = post(
        "/whip/r",
        vec![bearer(&token("other-room", "a")), sdp.clone()],
        "v=0",
    )
    .await;
    assert_eq!(r.status, 403);
    let no_publish = token_with(
        "r",
        Grants {
            can_publish: Some(false),
            ..Grants::default()
        },
    );
    let r = post("/whip/r", vec![bearer(&no_publish), sdp.clone()], "v=0").await;
    assert_eq!(r.status, 403);
    let no_subscribe = token_with(
        "r",
        Grants {
            can_subscribe: Some(false),
            ..Grants::default()
        },
    );
    let r = post("/whep/r", vec![bearer(&no_subscribe), sdp.clone()], "v=0").await;
    assert_eq!(r.status, 403);
    let r = post(
        "/whip/r",
        vec![bearer(&token("r", "a")), sdp.clone()],
        "v=0\r\nthis is not sdp",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("bad_sdp"), "{}", r.body);
    assert_eq!(
        server.sfu().peer_count(),
        0,
        "refused offers leave nothing behind"
    );

    let frag = ("Content-Type", "application/trickle-ice-sdpfrag");
    let r = http_request(&addr, "PATCH", "/whip/r/nope", &[frag], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = http_request(&addr, "DELETE", "/whip/r/nope", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // A live resource.
    let publisher = whip_bot(&addr, "r", "pub", 1);
    assert!(publisher.wait_for(WAIT, |s| s.publish_connected).await);
    let location = publisher.state().resource.unwrap();
    let candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let r = http_request(&addr, "PATCH", &location, &[frag], candidate)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http_request(
        &addr,
        "PATCH",
        &location,
        &[("Content-Type", "application/sdp")],
        candidate,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    let r = http_request(
        &addr,
        "PATCH",
        &location,
        &[frag, ("If-Match", "\"stale\"")],
        candidate,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 412);
    let restart = "a=ice-ufrag:newufrag\r\na=ice-pwd:newpasswordnewpassword12\r\n";
    let r = http_request(
        &addr,
        "PATCH",
        &location,
        &[frag, ("If-Match", "*")],
        restart,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let new_ufrag = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_string();
    assert!(r.body.contains("a=ice-pwd:") && r.body.contains("a=candidate:"));
    assert_eq!(r.header("etag"), Some(format!("\"{new_ufrag}\"").as_str()));
    let r = http_request(&addr, "DELETE", &location, &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = http_request(&addr, "DELETE", &location, &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "a deleted resource is gone");
    assert_eq!(server.state.resources.len(), 0);
    publisher.abort();
    server.shutdown();
}

/// Per identity: a second WHIP publisher with the same identity (an encoder that restarted)
/// replaces the first, whose resource ends; WHEP viewers may share one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_whip_publisher_of_an_identity_replaces_the_first_and_whep_viewers_share_a_token()
{
    let server = start_server(2).await;
    let addr = server.http_addr.to_string();
    let room_viewer = Bot::spawn(BotConfig::new(
        &ws_url(&server),
        token("r", "viewer"),
        false,
        9,
    ));
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.participant.is_some())
            .await
    );
    let first = whip_bot(&addr, "r", "obs", 1);
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "the first WHIP publisher is received"
    );
    let first_id =
        joined_id(&room_viewer.state().messages, "obs").expect("the first WHIP publisher joined");
    let second = whip_bot(&addr, "r", "obs", 2);
    assert!(
        room_viewer
            .wait_for(WAIT, |s| s.packets_from(2, PayloadKind::Vp8) >= 30
                && s.saw(|m| matches!(m, ServerMessage::ParticipantLeft { participant } if *participant == first_id)))
            .await,
        "the second WHIP publisher is received and the first has left"
    );
    assert!(
        eventually(|| server.state.resources.len() == 1).await,
        "the replaced publisher's resource ends: {} left",
        server.state.resources.len()
    );
    assert!(second.state().ended.is_none());
    drop(first);
    let whep = [
        whep_bot(&addr, "r", "audience", 3),
        whep_bot(&addr, "r", "audience", 4),
    ];
    for w in &whep {
        assert!(
            w.wait_for(WAIT, |s| s.packets_from(2, PayloadKind::Vp8) >= 30)
                .await,
            "every WHEP viewer of the shared token receives the stream: {:?}",
            w.state().ended
        );
    }
    server.shutdown();
}
