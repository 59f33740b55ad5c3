//! Offers built to hurt (RELIABILITY.md scenario 18) and client-filled lists past their bounds:
//! each is refused with a clear error (or silently bounded), leaves nothing behind, and the
//! call already running carries on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Instant;

use common::{WAIT, bot, start_server, token, ws_url};
use control_api::protocol::ErrorCode;
use loadtest::server_probe::http_request;
use loadtest::signal::{ClientMessage, ServerMessage, Signal};
use loadtest::synthetic::PayloadKind;
use str0m::media::{Direction, MediaKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A valid offer to publish audio and video.
fn offer() -> String {
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

/// The offer with its payload types renumbered past 127.
fn payload_type_over_127(sdp: &str) -> String {
    sdp.lines()
        .map(|line| {
            if line.starts_with("m=") {
                let mut parts: Vec<String> = line.split(' ').map(str::to_string).collect();
                for pt in parts.iter_mut().skip(3) {
                    *pt = format!("{}", 200 + pt.parse::<u32>().unwrap_or(0));
                }
                parts.join(" ")
            } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
                let (pt, codec) = rest.split_once(' ').unwrap();
                format!("a=rtpmap:{} {codec}", 200 + pt.parse::<u32>().unwrap())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn without_allow_mixed(sdp: &str) -> String {
    sdp.replace("a=extmap-allow-mixed\r\n", "")
}

fn without_fingerprint(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect()
}

/// The offer with small audio sections added until it has `sections` m-lines (well under the
/// HTTP and WebSocket size limits: the m-line count itself must be refused).
fn with_media_sections(sdp: &str, sections: usize) -> String {
    let mut out = sdp.to_string();
    for mid in 2..sections {
        out.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:x{mid}\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }
    out
}

async fn whip(addr: &str, room: &str, body: &str) -> (u16, String) {
    let bearer = format!("Bearer {}", token(room, "offerer"));
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    let r = http_request(addr, "POST", &format!("/whip/{room}"), &headers, body)
        .await
        .unwrap();
    (r.status, r.body)
}

/// A WHIP POST whose body is not UTF-8 (the probe only sends text).
async fn whip_bytes(addr: &str, room: &str, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /whip/{room} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
        token(room, "offerer"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_offers_get_a_4xx_and_leave_nothing_behind() {
    let server = start_server(1).await;
    let addr = server.http_addr.to_string();
    // A call in another room, which none of this may disturb.
    let alice = bot(&server, "calm", "alice", true, 1);
    let bob = bot(&server, "calm", "bob", false, 2);
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > 30)
            .await
    );
    let peers = server.sfu().peer_count();

    let valid = offer();
    let mut non_utf8 = valid.clone().into_bytes();
    non_utf8.extend_from_slice(b"a=x-note:\xff\xfe\xc3\x28\r\n");
    let hostile = [
        ("payload types over 127", payload_type_over_127(&valid)),
        ("no fingerprint", without_fingerprint(&valid)),
        ("1000 media sections", with_media_sections(&valid, 1000)),
        (
            "extmap id 15 in the one-byte form",
            without_allow_mixed(&valid).replace(
                "a=extmap:1 ",
                "a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:1 ",
            ),
        ),
        (
            "extmap id 0",
            valid.replace("a=extmap:1 ", "a=extmap:0 urn:x-test:zero\r\na=extmap:1 "),
        ),
        (
            "extmap id 4096",
            valid.replace("a=extmap:1 ", "a=extmap:4096 urn:x-test:big\r\na=extmap:1 "),
        ),
        ("no SDP at all", "{\"sdp\": 1}".to_string()),
    ];
    for (what, sdp) in &hostile {
        let (status, body) = whip(&addr, "hostile", sdp).await;
        assert!((400..500).contains(&status), "{what}: HTTP {status} {body}");
        assert!(body.contains("bad_sdp"), "{what}: {body}");
    }
    let status = whip_bytes(&addr, "hostile", &non_utf8).await;
    assert!((400..500).contains(&status), "non-UTF-8: HTTP {status}");
    assert_eq!(
        server.sfu().peer_count(),
        peers,
        "no WHIP peer was left behind"
    );

    // The same over signalling: refused with bad_sdp, the socket stays usable.
    let mut signal = Signal::connect(&ws_url(&server)).await.unwrap();
    let join = ClientMessage::Join {
        token: token("hostile", "signaller"),
    };
    signal.send(&join).await.unwrap();
    for (what, sdp) in &hostile {
        let offer = ClientMessage::PublishOffer {
            sdp: sdp.clone(),
            sources: Default::default(),
        };
        signal.send(&offer).await.unwrap();
        let refused = tokio::time::timeout(WAIT, async {
            while let Some(Ok(message)) = signal.recv().await {
                if let ServerMessage::Error { code, message, .. } = message {
                    return (code, message);
                }
            }
            panic!("socket closed");
        })
        .await
        .unwrap();
        assert_eq!(refused.0, ErrorCode::BadSdp, "{what}: {}", refused.1);
    }
    signal.send(&ClientMessage::Ping).await.unwrap();

    // The signaller's own subscribe connection is the only new peer.
    assert_eq!(
        server.sfu().peer_count(),
        peers + 1,
        "no publish peer was left behind"
    );
    let now = bob.with_state(|s| s.packets_from(1, PayloadKind::Vp8));
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > now + 30)
            .await,
        "the other room's call carries on"
    );
    drop(alice);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_candidates_and_sources_is_bounded() {
    let server = start_server(1).await;
    let alice = bot(&server, "flood", "alice", true, 1);
    let bob = bot(&server, "flood", "bob", false, 2);
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > 30)
            .await
    );
    // More distinct trickled candidates than a peer keeps, on alice's live publish connection
    // (fewer than the signalling rate limit's burst).
    for i in 0..150u32 {
        let port = 1024 + (i % 60_000) as u16;
        alice.signal(ClientMessage::Candidate {
            target: control_api::protocol::PcTarget::Publish,
            candidate: Some(format!(
                "candidate:{i} 1 udp 2130706431 198.18.{}.{} {port} typ host",
                (i / 250) % 250,
                1 + i % 250
            )),
        });
    }
    // And a publish offer declaring sources for five thousand mids.
    let mut signal = Signal::connect(&ws_url(&server)).await.unwrap();
    let join = ClientMessage::Join {
        token: token("flood", "carol"),
    };
    signal.send(&join).await.unwrap();
    let sources = (0..5_000)
        .map(|i| (format!("x{i}"), "camera".to_string()))
        .chain([("0".to_string(), "microphone".to_string())])
        .collect();
    let publish = ClientMessage::PublishOffer {
        sdp: offer(),
        sources,
    };
    signal.send(&publish).await.unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = signal.recv().await {
            match message {
                ServerMessage::PublishAnswer { .. } => return true,
                ServerMessage::Error { .. } => return false,
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(answered, "the offer itself is fine");

    // Alice's call is unaffected.
    let now = bob.with_state(|s| s.packets_from(1, PayloadKind::Vp8));
    assert!(
        bob.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > now + 60)
            .await,
        "media keeps flowing"
    );
    assert!(alice.state().ended.is_none(), "{:?}", alice.state().ended);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_joins_until_someone_leaves() {
    let server = common::start_server_configured(1, |config| {
        config.rooms.max_node_participants = 2;
    })
    .await;
    let first = bot(&server, "one", "first", false, 1);
    let second = bot(&server, "two", "second", false, 2);
    for b in [&first, &second] {
        assert!(b.wait_for(WAIT, |s| s.participant.is_some()).await);
    }
    let third = bot(&server, "three", "third", false, 3);
    assert!(
        third
            .wait_for(WAIT, |s| matches!(
                s.error(),
                Some((ErrorCode::ServerFull, _))
            ))
            .await,
        "{:?}",
        third.state().messages
    );
    let (status, body) = whip(&server.http_addr.to_string(), "three", &offer()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server_full"), "{body}");

    first.leave();
    assert!(
        first
            .wait_for(WAIT, |s| s.ended.is_some()
                || s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await
    );
    let started = Instant::now();
    while server.participants() > 1 && started.elapsed() < WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let fourth = bot(&server, "three", "fourth", false, 4);
    assert!(
        fourth.wait_for(WAIT, |s| s.participant.is_some()).await,
        "a place is free again: {:?}",
        fourth.state().messages
    );
    server.shutdown();
}
