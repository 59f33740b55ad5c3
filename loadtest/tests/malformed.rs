//! Hostile and broken datagrams sent to the media ports while a call runs: nothing panics, the
//! call carries on, and the counters show the drops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::UdpSocket;

use common::{WAIT, bot, start_server};
use loadtest::synthetic::PayloadKind;
use rand::{Rng, SeedableRng};

/// A STUN binding request header with a USERNAME attribute, cut at `cut` bytes.
fn truncated_stun(username: &[u8], cut: usize) -> Vec<u8> {
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((4 + username.len().div_ceil(4) * 4) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&[0x00, 0x06]);
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username);
    m.truncate(cut);
    m
}

/// An RTP packet (version 2, PT 96) for an SSRC nobody announced.
fn rtp_unknown_ssrc(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&1234u32.to_be_bytes());
    p.extend_from_slice(&0xdead_beefu32.to_be_bytes());
    p.extend_from_slice(&[0x90, 0x80, 0x80, 0x01, 0x10, 0, 0]);
    p
}

/// RTCP (SR, RR, PSFB) whose length fields point past the datagram, or are zero.
fn rtcp_bad_lengths() -> Vec<Vec<u8>> {
    vec![
        vec![0x80, 200, 0xff, 0xff, 0, 0, 0, 1],
        vec![0x81, 201, 0x00, 0x00],
        vec![0x81, 206, 0x00, 0x09, 0, 0, 0, 1, 0, 0, 0, 2],
        vec![0x8f, 205, 0x00, 0x01],
        vec![0x80, 200],
    ]
}

fn junk(rng: &mut impl Rng) -> Vec<Vec<u8>> {
    let mut datagrams: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let len = rng.random_range(0..1400);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect();
    for cut in [0, 1, 4, 8, 19, 20, 21, 24, 27] {
        datagrams.push(truncated_stun(b"nobodyknowsthis:x", cut));
    }
    datagrams.push(truncated_stun(b"nobodyknowsthis:x", 200));
    for seq in 0..20 {
        datagrams.push(rtp_unknown_ssrc(seq));
    }
    datagrams.extend(rtcp_bad_lengths());
    // Truncated DTLS records.
    datagrams.push(vec![22, 0xfe, 0xfd, 0, 0]);
    datagrams.push(vec![23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    datagrams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_media_ports_is_dropped_and_counted_while_the_call_goes_on() {
    let server = start_server(2).await;
    let publisher = bot(&server, "junk", "pub", true, 1);
    let subscriber = bot(&server, "junk", "sub", false, 2);
    assert!(
        subscriber
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "the call is up"
    );
    let before = server.sfu().counters();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // From a stranger: every datagram must be unroutable.
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut sent_by_stranger = 0u64;
    for addr in server.sfu().media_addrs() {
        for d in junk(&mut rng) {
            stranger.send_to(&d, addr).expect("send");
            sent_by_stranger += 1;
        }
    }
    // From the publisher's own address: these reach the demux's address map and the peer.
    let mut sent_by_peer = 0u64;
    for d in junk(&mut rng) {
        publisher.inject(d);
        sent_by_peer += 1;
    }

    // The call carries on: the subscriber keeps receiving intact media.
    let received = subscriber.state().packets_from(1, PayloadKind::Vp8);
    assert!(
        subscriber
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8)
                >= received + 60)
            .await,
        "media keeps flowing after the garbage"
    );
    let state = subscriber.state();
    assert_eq!(state.bad_payloads, 0);
    assert!(state.streams.values().all(|s| s.seqs_continuous()));
    assert!(publisher.state().ended.is_none() && subscriber.state().ended.is_none());

    let after = server.sfu().counters();
    let unroutable = after.dropped_unroutable - before.dropped_unroutable;
    let refused = (after.dropped_malformed - before.dropped_malformed)
        + (after.dropped_rejected - before.dropped_rejected);
    // Junk from the stranger that looks like STUN for an unknown ufrag, or anything else from
    // an unknown address: unroutable. (Random bytes never form a valid STUN message for a
    // live ufrag.)
    assert!(
        unroutable >= sent_by_stranger,
        "stranger's {sent_by_stranger} datagrams counted as unroutable: {unroutable}"
    );
    // The peer's own junk is either refused by the demux/parser or by its state machine;
    // some (garbled SRTP) is dropped inside str0m without an error, so not all are counted.
    assert!(
        refused > 0,
        "some of the peer's {sent_by_peer} junk datagrams counted as refused"
    );
    assert_eq!(server.sfu().peer_count(), 3);
    server.shutdown();
}
