//! The signalling WebSocket under bad input: malformed JSON, unknown types, messages out of
//! order, bad tokens and oversized frames. Errors come back as messages and the socket stays
//! usable; an oversized frame closes that socket alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, Grants};
use control_api::protocol::{ErrorCode, ServerMessage};
use control_api::signalling::{WS_BURST, WS_RATE};
use control_api::{Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

async fn server(ws_max_message: usize) -> Server {
    let mut config = ServerConfig {
        http_addr: "127.0.0.1:0".parse().expect("literal"),
        ws_max_message,
        ..ServerConfig::default()
    };
    config.sfu.first_port = 0;
    config.sfu.ice_tcp_port = Some(0);
    config.sfu.workers = 1;
    Server::start(config).await.expect("server starts")
}

async fn connect(server: &Server) -> Ws {
    let (ws, _) = connect_async(format!("ws://{}/rtc", server.http_addr))
        .await
        .expect("websocket connects");
    ws
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .expect("send");
}

/// The next protocol message, or `None` if the socket closed.
async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("reply in time")?
        {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(&t).expect("server sends protocol JSON"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn expect_error(ws: &mut Ws, expected: ErrorCode) {
    match recv(ws).await {
        Some(ServerMessage::Error { code, message, .. }) => {
            assert_eq!(code, expected, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {expected:?}, got {other:?}"),
    }
}

async fn expect_pong(ws: &mut Ws) {
    send(ws, r#"{"type":"ping"}"#).await;
    assert_eq!(
        recv(ws).await,
        Some(ServerMessage::Pong),
        "socket still usable"
    );
}

fn token(room: &str, secret_ok: bool) -> String {
    let grants = Grants {
        room: Some(room.into()),
        room_join: true,
        ..Grants::default()
    };
    let claims = Claims::new(DEV_API_KEY, "tester", Duration::from_secs(60), grants);
    let keys = if secret_ok {
        ApiKeys::dev()
    } else {
        ApiKeys::new([(DEV_API_KEY.to_string(), "some other secret".to_string())])
    };
    keys.mint(&claims).expect("sign")
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let server = server(64 * 1024).await;
    let mut ws = connect(&server).await;

    send(&mut ws, "{not json").await;
    expect_error(&mut ws, ErrorCode::BadMessage).await;
    send(&mut ws, r#"{"no_type":1}"#).await;
    expect_error(&mut ws, ErrorCode::BadMessage).await;
    send(&mut ws, r#"{"type":"dance"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownType).await;
    send(&mut ws, r#"{"type":"join"}"#).await;
    expect_error(&mut ws, ErrorCode::BadMessage).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::BadMessage).await;
    send(&mut ws, r#"{"type":"publish_offer","sdp":"v=0"}"#).await;
    expect_error(&mut ws, ErrorCode::NotJoined).await;
    send(
        &mut ws,
        &format!(r#"{{"type":"join","token":"{}"}}"#, token("r", false)),
    )
    .await;
    expect_error(&mut ws, ErrorCode::BadToken).await;
    expect_pong(&mut ws).await;

    // After all that, a good join works on the same socket.
    send(
        &mut ws,
        &format!(r#"{{"type":"join","token":"{}"}}"#, token("r", true)),
    )
    .await;
    assert!(matches!(recv(&mut ws).await, Some(ServerMessage::Joined { room, .. }) if room == "r"));
    // The first subscribe offer arrives; answering it with garbage is refused cleanly.
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerMessage::SubscribeOffer { .. })
    ));
    send(&mut ws, r#"{"type":"join","token":"x"}"#).await;
    expect_error(&mut ws, ErrorCode::AlreadyJoined).await;
    send(&mut ws, r#"{"type":"subscribe_answer","sdp":"garbage"}"#).await;
    expect_error(&mut ws, ErrorCode::BadSdp).await;
    send(
        &mut ws,
        r#"{"type":"publish_offer","sdp":"v=0\r\nnonsense"}"#,
    )
    .await;
    expect_error(&mut ws, ErrorCode::BadSdp).await;
    send(
        &mut ws,
        r#"{"type":"candidate","target":"subscribe","candidate":"candidate:nope"}"#,
    )
    .await;
    expect_error(&mut ws, ErrorCode::BadSdp).await;
    // An mDNS host candidate (a browser page without camera permission) is ignored quietly:
    // the next answer is the pong, not an error.
    send(
        &mut ws,
        r#"{"type":"candidate","target":"subscribe","candidate":"candidate:1 1 udp 2122260223 3f2a9c1e-7b1d-4c2e-9a55-0d7e6f1b2c3d.local 54321 typ host"}"#,
    )
    .await;
    expect_pong(&mut ws).await;
    send(&mut ws, r#"{"type":"mute","track":"TR_1","muted":true}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownTrack).await;
    expect_pong(&mut ws).await;

    send(&mut ws, r#"{"type":"leave"}"#).await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerMessage::Left { .. })
    ));
    assert_eq!(
        server.sfu().peer_count(),
        0,
        "leaving removed the subscriber peer"
    );
    server.shutdown();
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_socket() {
    let server = server(4096).await;
    let mut victim = connect(&server).await;
    let mut bystander = connect(&server).await;
    send(
        &mut bystander,
        &format!(r#"{{"type":"join","token":"{}"}}"#, token("big", true)),
    )
    .await;
    assert!(matches!(
        recv(&mut bystander).await,
        Some(ServerMessage::Joined { .. })
    ));

    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(10_000));
    // The server may close before the whole frame is written; either way the socket ends.
    let _ = victim.send(Message::Text(huge.into())).await;
    let mut closed = false;
    for _ in 0..3 {
        match tokio::time::timeout(WAIT, victim.next())
            .await
            .expect("closed in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "the oversized socket is closed");

    // The other participant's socket is unaffected.
    assert!(matches!(
        recv(&mut bystander).await,
        Some(ServerMessage::SubscribeOffer { .. })
    ));
    expect_pong(&mut bystander).await;
    server.shutdown();
}

#[tokio::test]
async fn too_many_messages_are_refused_and_a_flood_closes_only_that_socket() {
    let server = server(64 * 1024).await;
    let mut client = connect(&server).await;
    let mut bystander = connect(&server).await;

    // Past the burst (200): the excess is refused with rate_limited, the socket stays open.
    // The bucket refills at 50 per second while the server works through the pings, so the
    // exact bounds depend on how long that took (a loaded machine is slow, not wrong).
    let started = std::time::Instant::now();
    for _ in 0..260 {
        send(&mut client, r#"{"type":"ping"}"#).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 260 {
        match recv(&mut client).await {
            Some(ServerMessage::Pong) => pongs += 1,
            Some(ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let refilled = (WS_RATE * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        pongs >= WS_BURST as usize && pongs <= WS_BURST as usize + refilled,
        "the burst and no more than the refill are answered: pongs {pongs}, refused {limited}, \
         refill at most {refilled}"
    );
    assert!(
        limited + refilled >= 260 - WS_BURST as usize,
        "the rest is refused: pongs {pongs}, refused {limited}, refill at most {refilled}"
    );
    // The bucket refills: a ping is answered again within a second or so.
    let deadline = std::time::Instant::now() + WAIT;
    let mut answered = false;
    while !answered && std::time::Instant::now() < deadline {
        send(&mut client, r#"{"type":"ping"}"#).await;
        answered = recv(&mut client).await == Some(ServerMessage::Pong);
        if !answered {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(answered, "usable again once the rate drops");

    // A sustained flood closes the socket (reset or close), and only that one.
    let mut flooder = connect(&server).await;
    for _ in 0..2000 {
        if flooder
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut closed = false;
    while let Ok(frame) = tokio::time::timeout(WAIT, flooder.next()).await {
        if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a sustained flood closes the socket");
    expect_pong(&mut bystander).await;
    server.shutdown();
}
