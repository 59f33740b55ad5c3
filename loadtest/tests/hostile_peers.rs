//! Peers that lie (RELIABILITY.md scenarios 3, 8 and 10), over real UDP: a publisher whose
//! offer announces another certificate's fingerprint gets no media through and its connection
//! is closed; SRTP packets replayed byte for byte are not counted or forwarded again; a
//! connectivity check with USE-CANDIDATE from another address but the wrong password moves
//! nothing (the same check with the right password is answered, so it is the password that
//! stops it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{WAIT, bot, start_server, token, ws_url};
use control_api::protocol::ErrorCode;
use loadtest::bot::{Bot, BotConfig};
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;
use sfu::TrackId;

/// The offer with its DTLS fingerprint changed (the certificate it will present does not
/// match what it announced).
fn wrong_fingerprint(sdp: &str) -> String {
    sdp.lines()
        .map(|l| match l.strip_prefix("a=fingerprint:sha-256 ") {
            Some(hex) => {
                let flipped: String = hex
                    .chars()
                    .map(|c| match c {
                        '0' => '1',
                        '1' => '0',
                        'A' | 'a' => 'B',
                        'B' | 'b' => 'A',
                        c => c,
                    })
                    .collect();
                format!("a=fingerprint:sha-256 {flipped}\r\n")
            }
            None => format!("{l}\r\n"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_with_a_wrong_fingerprint_gets_nothing_through() {
    let server = start_server(1).await;
    let viewer = bot(&server, "fingerprint", "viewer", false, 2);
    let mut config = BotConfig::new(&ws_url(&server), token("fingerprint", "liar"), true, 1);
    config.mangle_offer = Some(wrong_fingerprint);
    let liar = Bot::spawn(config);
    assert!(
        liar.wait_for(WAIT, |s| matches!(
            s.error(),
            Some((ErrorCode::MediaClosed, _))
        ))
        .await,
        "the server closes the connection whose certificate does not match: {:?}",
        liar.state().messages
    );
    assert!(!liar.with_state(|s| s.publish_connected));
    assert_eq!(
        viewer.with_state(
            |s| s.packets_from(1, PayloadKind::Vp8) + s.packets_from(1, PayloadKind::Opus)
        ),
        0,
        "no media from it reached anyone"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_srtp_is_not_received_twice() {
    let server = start_server(1).await;
    let mut config = BotConfig::new(&ws_url(&server), token("replay", "pub"), true, 1);
    config.keep_sent = true;
    config.keyframe_interval = u32::MAX;
    let publisher = Bot::spawn(config);
    let viewer = bot(&server, "replay", "viewer", false, 2);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > 60)
            .await
    );
    let video: TrackId = publisher.with_state(|s| {
        let (_, id) = s
            .own_tracks
            .iter()
            .find(|(kind, _)| kind == "video")
            .unwrap();
        id.parse().unwrap()
    });

    // Quiet: nothing new is sent, so anything the server counts now is a replay it accepted.
    publisher.pause_media(true);
    assert!(publisher.wait_for(WAIT, |s| s.media_paused).await);
    // Until the server has read what was in flight: two equal readings 300 ms apart.
    let mut before = server.sfu().track_counters(video).await.unwrap();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.sfu().track_counters(video).await.unwrap();
        if now.received_packets == before.received_packets || started.elapsed() > WAIT {
            break;
        }
        before = now;
    }
    let datagrams = server.sfu().counters().datagrams_received;
    let seen = viewer.with_state(|s| s.packets_from(1, PayloadKind::Vp8));
    for _ in 0..3 {
        publisher.replay_sent();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.sfu().track_counters(video).await.unwrap();
    let arrived = server.sfu().counters().datagrams_received - datagrams;
    assert!(
        arrived >= 3 * 60,
        "the replays reached the server ({arrived} datagrams)"
    );
    assert_eq!(
        after.received_packets, before.received_packets,
        "replayed packets are refused by SRTP replay protection"
    );
    assert_eq!(
        after.forwarded_packets, before.forwarded_packets,
        "and none is forwarded"
    );

    // And the connection is fine: media resumes.
    publisher.pause_media(false);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > seen + 30)
            .await
    );
    server.shutdown();
}

/// CRC-32 (IEEE), for the STUN FINGERPRINT attribute.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A STUN binding request from a controlling agent nominating this path (USE-CANDIDATE),
/// signed with `password` (RFC 8489 MESSAGE-INTEGRITY, then FINGERPRINT).
fn nominating_check(username: &str, password: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&rand::random::<[u8; 12]>());
    attribute(&mut m, 0x0006, username.as_bytes());
    attribute(&mut m, 0x0024, &0x7eff_ffffu32.to_be_bytes());
    attribute(&mut m, 0x0025, &[]);
    attribute(&mut m, 0x802a, &rand::random::<[u8; 8]>());
    let set_length = |m: &mut Vec<u8>, extra: usize| {
        let len = (m.len() - 20 + extra) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    };
    set_length(&mut m, 24);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password);
    let tag = aws_lc_rs::hmac::sign(&key, &m);
    attribute(&mut m, 0x0008, tag.as_ref());
    set_length(&mut m, 8);
    let fingerprint = crc32(&m) ^ 0x5354_554e;
    attribute(&mut m, 0x8028, &fingerprint.to_be_bytes());
    m
}

/// A STUN binding success response in `datagram`, for `request`'s transaction.
fn answers(datagram: &[u8], request: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0..2] == [0x01, 0x01] && datagram[8..20] == request[8..20]
}

fn sdp_value(sdp: &str, name: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nominating_check_with_the_wrong_password_moves_nothing() {
    let server = start_server(1).await;
    let publisher = bot(&server, "hijack", "pub", true, 1);
    let viewer = bot(&server, "hijack", "viewer", false, 2);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > 30)
            .await
    );
    // What an eavesdropper on the signalling would know: both ufrags and the server's password.
    let offer = viewer.with_state(|s| {
        s.messages
            .iter()
            .rev()
            .find_map(|m| match m {
                ServerMessage::SubscribeOffer { sdp, .. } => Some(sdp.clone()),
                _ => None,
            })
            .unwrap()
    });
    let username = format!(
        "{}:{}",
        sdp_value(&offer, "a=ice-ufrag:"),
        viewer.with_state(|s| s.subscribe_ufrag.clone().unwrap())
    );
    let password = sdp_value(&offer, "a=ice-pwd:");
    let media = server.sfu().media_addrs()[0];
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let heard = |request: &[u8]| -> (bool, usize) {
        let mut answered = false;
        let mut datagrams = 0;
        let until = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            if let Ok((n, _)) = attacker.recv_from(&mut buf) {
                datagrams += 1;
                answered |= answers(&buf[..n], request);
            }
        }
        (answered, datagrams)
    };

    let forged = nominating_check(&username, b"not the password");
    for _ in 0..5 {
        attacker.send_to(&forged, media).unwrap();
    }
    let (answered, datagrams) = heard(&forged);
    assert!(!answered, "a check with the wrong password is not answered");
    assert_eq!(datagrams, 0, "nothing at all is sent to the attacker");
    let seen = viewer.with_state(|s| s.packets_from(1, PayloadKind::Vp8));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) > seen + 30)
            .await,
        "the viewer keeps its media"
    );

    // Control: the same check signed with the right password is answered.
    let signed = nominating_check(&username, password.as_bytes());
    attacker.send_to(&signed, media).unwrap();
    let (answered, _) = heard(&signed);
    assert!(
        answered,
        "the test's checks are well formed: the right password is answered"
    );
    drop(publisher);
    server.shutdown();
}
