//! The room service over real HTTP: admin tokens (and every way a token can be wrong), room
//! lifecycle, participants, server-side mute, subscriptions, removal and deletion with bots
//! connected, limits and malformed requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, bot, token};
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, DEV_API_SECRET, Grants, unix_now};
use control_api::protocol::ErrorCode;
use control_api::{Server, ServerConfig};
use loadtest::bot::Bot;
use loadtest::server_probe::{HttpResponse, http_request};
use loadtest::signal::{ClientMessage, ServerMessage, Signal};
use loadtest::synthetic::PayloadKind;
use serde_json::{Value, json};
use sfu::TrackId;

async fn server(max_rooms: usize) -> Server {
    let mut config = ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    config.sfu.first_port = 0;
    config.sfu.ice_tcp_port = Some(0);
    config.sfu.workers = 2;
    config.rooms.max_rooms = max_rooms;
    Server::start(config).await.unwrap()
}

fn admin(grants: Grants) -> String {
    let claims = Claims::new(DEV_API_KEY, "backend", Duration::from_secs(60), grants);
    ApiKeys::dev().mint(&claims).unwrap()
}

fn all_admin() -> String {
    admin(Grants {
        room_create: true,
        room_list: true,
        ..Grants::default()
    })
}

fn room_admin(room: &str) -> String {
    admin(Grants {
        room: Some(room.into()),
        room_admin: true,
        ..Grants::default()
    })
}

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http_request(&server.http_addr.to_string(), method, path, &headers, &body)
        .await
        .unwrap()
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = json(r);
    assert_eq!(body["code"], code, "{}", r.body);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Signs arbitrary header and claims with the dev secret (for wrong algorithms).
fn forge(header: Value, claims: Value, algorithm: jsonwebtoken::Algorithm) -> String {
    let mut h = jsonwebtoken::Header::new(algorithm);
    h.typ = header["typ"].as_str().map(str::to_string);
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEV_API_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_stable_codes() {
    let server = server(0).await;
    let list = |t: Option<String>| {
        let s = &server;
        async move { call(s, "GET", "/api/rooms", t.as_deref(), None).await }
    };
    let r = list(None).await;
    assert_error(&r, 401, "bad_token");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let now = unix_now();
    let claims =
        json!({"iss": DEV_API_KEY, "sub": "x", "exp": now + 60, "video": {"roomList": true}});
    // alg: none, and a well-formed HS384 token: the algorithm is pinned to HS256.
    let payload = forge(json!({}), claims.clone(), jsonwebtoken::Algorithm::HS256);
    let body = payload.split('.').nth(1).unwrap();
    assert_error(
        &list(Some(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}."))).await,
        401,
        "bad_token",
    );
    assert_error(
        &list(Some(forge(
            json!({}),
            claims.clone(),
            jsonwebtoken::Algorithm::HS384,
        )))
        .await,
        401,
        "bad_token",
    );
    // Bad signature.
    let mut tampered = payload.clone();
    tampered.pop();
    tampered.push(if payload.ends_with('A') { 'B' } else { 'A' });
    assert_error(&list(Some(tampered)).await, 401, "bad_token");
    // Expired, and not yet valid.
    let expired =
        json!({"iss": DEV_API_KEY, "sub": "x", "exp": now - 3600, "video": {"roomList": true}});
    assert_error(
        &list(Some(forge(
            json!({}),
            expired,
            jsonwebtoken::Algorithm::HS256,
        )))
        .await,
        401,
        "bad_token",
    );
    let early = json!({"iss": DEV_API_KEY, "sub": "x", "exp": now + 7200, "nbf": now + 3600, "video": {"roomList": true}});
    assert_error(
        &list(Some(forge(
            json!({}),
            early,
            jsonwebtoken::Algorithm::HS256,
        )))
        .await,
        401,
        "bad_token",
    );
    // Unknown key.
    let other = json!({"iss": "someone-else", "sub": "x", "exp": now + 60});
    assert_error(
        &list(Some(forge(
            json!({}),
            other,
            jsonwebtoken::Algorithm::HS256,
        )))
        .await,
        401,
        "bad_token",
    );

    // Valid tokens without the needed grant.
    assert_error(
        &list(Some(token("r", "participant"))).await,
        403,
        "permission_denied",
    );
    let create = call(
        &server,
        "POST",
        "/api/rooms",
        Some(&admin(Grants {
            room_list: true,
            ..Grants::default()
        })),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_error(&create, 403, "permission_denied");
    // Admin of another room.
    let r = call(
        &server,
        "GET",
        "/api/rooms/b/participants",
        Some(&room_admin("a")),
        None,
    )
    .await;
    assert_error(&r, 403, "permission_denied");
    // And a valid one works.
    assert_eq!(list(Some(all_admin())).await.status, 200);
    server.shutdown();
}

/// The packet counter of the newest payload of `kind` the bot has written (before sending).
fn last_written(bot: &Bot, kind: PayloadKind) -> u32 {
    bot.with_state(|s| s.last_written.get(&kind).copied().unwrap_or(0))
}

fn left(bot: &Bot) -> bool {
    bot.with_state(|s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lifecycle_with_participants() {
    let server = server(0).await;
    let root = all_admin();
    let r = call(
        &server,
        "POST",
        "/api/rooms",
        Some(&root),
        Some(json!({"name": "meet", "max_participants": 5, "metadata": "{\"topic\":\"x\"}"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(json(&r)["metadata"], "{\"topic\":\"x\"}");
    assert_error(
        &call(
            &server,
            "POST",
            "/api/rooms",
            Some(&root),
            Some(json!({"name": "meet"})),
        )
        .await,
        409,
        "room_exists",
    );

    let publisher = bot(&server, "meet", "alice", true, 1);
    let bob_token = token("meet", "bob");
    let viewer = Bot::spawn(loadtest::bot::BotConfig::new(
        &common::ws_url(&server),
        bob_token.clone(),
        false,
        2,
    ));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30
                && s.packets_from(1, PayloadKind::Opus) >= 30)
            .await
    );

    let rooms = json(&call(&server, "GET", "/api/rooms", Some(&root), None).await);
    assert_eq!(rooms["rooms"][0]["name"], "meet");
    assert_eq!(rooms["rooms"][0]["num_participants"], 2);
    assert_eq!(rooms["rooms"][0]["num_tracks"], 2);
    let admin_meet = room_admin("meet");
    let people = json(
        &call(
            &server,
            "GET",
            "/api/rooms/meet/participants",
            Some(&admin_meet),
            None,
        )
        .await,
    );
    let mut identities: Vec<&str> = people["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    identities.sort_unstable();
    assert_eq!(identities, vec!["alice", "bob"]);
    let alice = json(
        &call(
            &server,
            "GET",
            "/api/rooms/meet/participants/alice",
            Some(&admin_meet),
            None,
        )
        .await,
    );
    assert_eq!(alice["via"], "websocket");
    let tracks = alice["tracks"].as_array().unwrap().clone();
    assert_eq!(tracks.len(), 2);
    let video = tracks.iter().find(|t| t["kind"] == "video").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let audio = tracks.iter().find(|t| t["kind"] == "audio").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Server-side mute: the track stops being forwarded, everyone is told; unmute resumes it.
    // Decided by the publisher's worker, which applies the mute before the API answers: its
    // forwarded count must not move after that, and no packet the publisher writes after the
    // answer may reach the viewer.
    let video_id: TrackId = video.parse().unwrap();
    let r = call(
        &server,
        "POST",
        &format!("/api/rooms/meet/participants/alice/tracks/{video}/mute"),
        Some(&admin_meet),
        Some(json!({"muted": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["muted"], true);
    let at_mute = server.sfu().track_counters(video_id).await.unwrap();
    let written_at_mute = last_written(&publisher, PayloadKind::Vp8);
    assert!(at_mute.muted);
    assert!(viewer.wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::TrackMuted { track, muted: true, .. } if *track == video))).await);
    assert!(
        publisher
            .wait_for(WAIT, |s| s.last_written.get(&PayloadKind::Vp8)
                > Some(&(written_at_mute + 150)))
            .await
    );
    // The worker may still have datagrams to read: wait until it has counted 100 more.
    let deadline = Instant::now() + WAIT;
    let mut muted = server.sfu().track_counters(video_id).await.unwrap();
    while muted.received_packets < at_mute.received_packets + 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        muted = server.sfu().track_counters(video_id).await.unwrap();
    }
    assert!(
        muted.received_packets >= at_mute.received_packets + 100,
        "the publisher kept sending: {at_mute:?} -> {muted:?}"
    );
    assert_eq!(
        muted.forwarded_packets, at_mute.forwarded_packets,
        "a muted track is not forwarded"
    );
    assert!(
        viewer.state().highest_packet_from(1, PayloadKind::Vp8) <= Some(written_at_mute),
        "nothing written after the mute reaches the viewer"
    );
    assert!(
        viewer.state().packets_from(1, PayloadKind::Opus) > 30,
        "audio still flows"
    );
    // One mute model: the publisher cannot lift the administrator's mute.
    publisher.signal(ClientMessage::Mute {
        track: video.clone(),
        muted: false,
    });
    assert!(
        publisher
            .wait_for(WAIT, |s| s
                .error()
                .is_some_and(|(code, _)| code == ErrorCode::PermissionDenied))
            .await,
        "a publisher's unmute of an administrator's mute is refused"
    );
    assert!(
        server.sfu().track_counters(video_id).await.unwrap().muted,
        "still muted where packets are forwarded"
    );
    assert!(
        !viewer.state().saw(
            |m| matches!(m, ServerMessage::TrackMuted { track, muted: false, .. } if *track == video)
        ),
        "nobody was told it is unmuted"
    );
    let r = call(
        &server,
        "POST",
        &format!("/api/rooms/meet/participants/alice/tracks/{video}/mute"),
        Some(&admin_meet),
        Some(json!({"muted": false})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let written_at_unmute = last_written(&publisher, PayloadKind::Vp8);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.highest_packet_from(1, PayloadKind::Vp8)
                > Some(written_at_unmute + 30))
            .await,
        "unmuted: flows again"
    );
    assert!(
        server
            .sfu()
            .track_counters(video_id)
            .await
            .unwrap()
            .forwarded_packets
            > muted.forwarded_packets
    );

    // Subscriptions: bob leaves alice's audio, then takes it again. The subscriber's worker
    // drops the subscription before the API answers, so no audio written after the answer
    // reaches him; the track's owner forgets him in its next turn.
    let audio_id: TrackId = audio.parse().unwrap();
    let r = call(
        &server,
        "POST",
        "/api/rooms/meet/participants/bob/subscriptions",
        Some(&admin_meet),
        Some(json!({"tracks": [audio], "subscribe": false})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let written_at_unsubscribe = last_written(&publisher, PayloadKind::Opus);
    let (tracks, bob_gone) = common::tracks_when(&server, |tracks| {
        tracks
            .iter()
            .any(|t| t.track == audio_id && t.subscribers.is_empty())
    })
    .await;
    assert!(bob_gone, "bob left the audio track: {tracks:?}");
    assert!(
        publisher
            .wait_for(WAIT, |s| s.last_written.get(&PayloadKind::Opus)
                > Some(&(written_at_unsubscribe + 150)))
            .await
    );
    assert!(
        viewer.state().highest_packet_from(1, PayloadKind::Opus) <= Some(written_at_unsubscribe),
        "unsubscribed audio stops"
    );
    let r = call(
        &server,
        "POST",
        "/api/rooms/meet/participants/bob/subscriptions",
        Some(&admin_meet),
        Some(json!({"tracks": [audio], "subscribe": true})),
    )
    .await;
    assert_eq!(r.status, 204);
    let written_at_subscribe = last_written(&publisher, PayloadKind::Opus);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.highest_packet_from(1, PayloadKind::Opus)
                > Some(written_at_subscribe + 30))
            .await,
        "subscribed again"
    );
    assert_error(
        &call(
            &server,
            "POST",
            "/api/rooms/meet/participants/bob/subscriptions",
            Some(&admin_meet),
            Some(json!({"tracks": ["TR_1"], "subscribe": true})),
        )
        .await,
        404,
        "unknown_track",
    );

    // Removing bob disconnects him alone.
    let r = call(
        &server,
        "DELETE",
        "/api/rooms/meet/participants/bob",
        Some(&admin_meet),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await,
        "bob is told"
    );
    assert!(
        publisher
            .wait_for(WAIT, |s| s
                .saw(|m| matches!(m, ServerMessage::ParticipantLeft { .. })))
            .await
    );
    assert!(!left(&publisher));
    // Bob cannot come straight back with the token he had; a new one lets him in.
    let mut again = Signal::connect(&common::ws_url(&server)).await.unwrap();
    again
        .send(&ClientMessage::Join {
            token: bob_token.clone(),
        })
        .await
        .unwrap();
    let refused = tokio::time::timeout(WAIT, again.recv()).await.unwrap();
    assert!(
        matches!(
            refused,
            Some(Ok(ServerMessage::Error {
                code: ErrorCode::PermissionDenied,
                ..
            }))
        ),
        "{refused:?}"
    );
    let fresh = Claims::new(
        DEV_API_KEY,
        "bob",
        Duration::from_secs(120),
        Grants {
            room: Some("meet".into()),
            room_join: true,
            ..Grants::default()
        },
    );
    let bob_again = Bot::spawn(loadtest::bot::BotConfig::new(
        &common::ws_url(&server),
        ApiKeys::dev().mint(&fresh).unwrap(),
        false,
        3,
    ));
    assert!(
        bob_again.wait_for(WAIT, |s| s.participant.is_some()).await,
        "a new token lets him in: {:?}",
        bob_again.state().messages
    );
    bob_again.leave();
    assert!(
        bob_again
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await
    );
    assert_error(
        &call(
            &server,
            "GET",
            "/api/rooms/meet/participants/bob",
            Some(&admin_meet),
            None,
        )
        .await,
        404,
        "unknown_participant",
    );

    // Deleting the room disconnects everyone and frees the media core.
    assert_eq!(
        call(&server, "DELETE", "/api/rooms/meet", Some(&root), None)
            .await
            .status,
        204
    );
    assert!(
        publisher
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await,
        "alice is told"
    );
    assert_error(
        &call(&server, "GET", "/api/rooms/meet", Some(&root), None).await,
        404,
        "unknown_room",
    );
    let deadline = Instant::now() + WAIT;
    while (server.sfu().peer_count() > 0 || server.sfu().track_count() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.sfu().peer_count(), 0);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_timeouts_and_malformed_requests() {
    let server = server(2).await;
    let root = all_admin();
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/rooms",
            Some(&root),
            Some(json!({"name": "short", "empty_timeout": 1}))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/rooms",
            Some(&root),
            Some(json!({"name": "second"}))
        )
        .await
        .status,
        201
    );
    assert_error(
        &call(
            &server,
            "POST",
            "/api/rooms",
            Some(&root),
            Some(json!({"name": "third"})),
        )
        .await,
        409,
        "too_many_rooms",
    );
    // An explicit room nobody joins closes after its empty timeout.
    let deadline = Instant::now() + WAIT;
    while call(&server, "GET", "/api/rooms/short", Some(&root), None)
        .await
        .status
        == 200
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_error(
        &call(&server, "GET", "/api/rooms/short", Some(&root), None).await,
        404,
        "unknown_room",
    );
    assert_eq!(
        call(&server, "GET", "/api/rooms/second", Some(&root), None)
            .await
            .status,
        200,
        "the other room stays"
    );

    for body in [
        json!({"name": ""}),
        json!({"name": "a/b"}),
        json!({"name": "x".repeat(200)}),
        json!({"nom": "x"}),
        json!({"name": 5}),
        json!([1]),
    ] {
        assert_error(
            &call(&server, "POST", "/api/rooms", Some(&root), Some(body)).await,
            400,
            "bad_request",
        );
    }
    let r = http_request(
        &server.http_addr.to_string(),
        "POST",
        "/api/rooms",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {root}")),
        ],
        "{not json",
    )
    .await
    .unwrap();
    assert_error(&r, 400, "bad_request");
    let huge = format!(
        "{{\"name\":\"big\",\"metadata\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let r = http_request(
        &server.http_addr.to_string(),
        "POST",
        "/api/rooms",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {root}")),
        ],
        &huge,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    assert_error(
        &call(
            &server,
            "POST",
            "/api/rooms/second/participants/nobody/tracks/TR_1/mute",
            Some(&room_admin("second")),
            Some(json!({"muted": true})),
        )
        .await,
        404,
        "unknown_participant",
    );
    let doc = call(&server, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(json(&doc)["paths"]["/api/rooms"].is_object());
    server.shutdown();
}
