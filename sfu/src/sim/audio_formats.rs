//! Audio formats on the virtual clock: a G.711-only publisher, RFC 4733 telephone events
//! (DTMF) beside Opus, and subscribers that did or did not accept each format. Nothing is
//! transcoded: what a viewer accepted arrives byte for byte, what it did not never arrives
//! and leaves no gap in its numbering.

use std::time::Duration;

use str0m::RtcConfig;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaKind, Pt};

use super::client::ReceivedRtp;
use super::world::{NodeId, World};
use crate::event::PeerEvent;

/// One audio frame every 20 ms.
const FRAME: Duration = Duration::from_millis(20);
/// The payload type a client uses for telephone events at 48 kHz.
const EVENTS_PT: u8 = 101;

/// A client configuration with telephone events at 48 kHz (beside its Opus).
fn with_events(mut config: RtcConfig) -> RtcConfig {
    config.codec_config().add_config(
        Pt::from(EVENTS_PT),
        None,
        Codec::Tele,
        Frequency::FORTY_EIGHT_KHZ,
        None,
        FormatParams::default(),
    );
    config
}

/// Writes one packet from sender `id`.
fn send(w: &mut World, id: NodeId, pt: u8, seq: u64, timestamp: u32, marker: bool, payload: &[u8]) {
    w.send_rtp(id, (pt, seq, timestamp), marker, payload.to_vec());
}

/// A recognisable payload for frame `i`.
fn frame_payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

/// The packets of payload type `pt` that subscriber `id` received.
fn received(w: &World, id: NodeId, pt: Option<u8>) -> Vec<ReceivedRtp> {
    w.other_received(id)
        .iter()
        .filter(|(_, p)| Some(p.pt) == pt)
        .map(|(_, p)| p.clone())
        .collect()
}

/// The received packets' sequence numbers follow each other.
fn assert_consecutive(packets: &[ReceivedRtp], what: &str) {
    for pair in packets.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "{what}: sequence number {} follows {}",
            pair[1].seq,
            pair[0].seq
        );
    }
}

/// A publisher that offers only PCMU is answered with PCMU; a viewer that accepts PCMU gets
/// every frame byte for byte, in order; a viewer that accepts only Opus gets nothing of the
/// track and is told once (`CodecRefused`).
#[test]
fn a_g711_only_publisher_reaches_viewers_that_accept_g711_and_the_others_are_told() {
    let mut w = World::new(71);
    let alice = w.sender(MediaKind::Audio, |c| {
        c.clear_codecs().enable_pcmu(true, false)
    });
    let Some(pcmu) = w.nodes[alice].client.pt(Codec::PCMU) else {
        panic!("the server did not answer PCMU");
    };
    let (mut seq, mut ts) = (4000u64, 0u32);
    let mut sent = Vec::new();
    let mut frame = |w: &mut World, sent: &mut Vec<Vec<u8>>| {
        let payload = frame_payload(seq, 160);
        send(w, alice, pcmu, seq, ts, false, &payload);
        sent.push(payload);
        seq += 1;
        ts = ts.wrapping_add(160);
        w.run_for(FRAME);
    };
    for _ in 0..10 {
        frame(&mut w, &mut sent);
    }
    let track = *w.nodes[alice]
        .tracks
        .first()
        .expect("the PCMU track is published");
    let bob = w.add_subscriber_with(vec![track], |c| c.enable_pcmu(true, false));
    let carol = w.add_subscriber_with(vec![track], |c| c);
    for _ in 0..150 {
        frame(&mut w, &mut sent);
    }
    w.run_for(Duration::from_millis(200));
    assert!(w.nodes[bob].client.connected && w.nodes[carol].client.connected);

    let got = received(&w, bob, w.nodes[bob].client.pt(Codec::PCMU));
    assert!(
        got.len() >= 100,
        "the G.711 viewer got {} frames",
        got.len()
    );
    let first = sent
        .iter()
        .position(|p| *p == got[0].payload)
        .expect("the first frame received was sent");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(
            p.payload,
            sent[first + i],
            "frame {i} arrives byte for byte"
        );
    }
    assert_eq!(
        first + got.len(),
        sent.len(),
        "every frame up to the last one arrives"
    );
    assert_consecutive(&got, "the G.711 viewer");

    assert!(
        w.other_received(carol).is_empty(),
        "the Opus-only viewer got {} packets",
        w.other_received(carol).len()
    );
    let told: Vec<&PeerEvent> = w
        .events
        .iter()
        .map(|(_, e)| e)
        .filter(
            |e| matches!(e, PeerEvent::CodecRefused { peer, .. } if *peer == w.nodes[carol].peer),
        )
        .collect();
    assert!(
        matches!(told.as_slice(), [PeerEvent::CodecRefused { track: t, codec, .. }] if *t == track && codec == "PCMU"),
        "the Opus-only viewer is told once: {told:?}"
    );
    assert!(w.events.iter().all(
        |(_, e)| !matches!(e, PeerEvent::CodecRefused { peer, .. } if *peer == w.nodes[bob].peer)
    ));
}

/// A DTMF digit (RFC 4733: three updates, then three end packets, on one timestamp) sent
/// between Opus frames reaches the viewer that negotiated telephone events unchanged: same
/// payloads, marker on the first, on the audio's timeline. A viewer without telephone events
/// gets every Opus frame and no event, with no gap in its sequence numbers.
#[test]
fn telephone_events_reach_viewers_that_negotiated_them_and_leave_no_gap_for_the_others() {
    let mut w = World::new(72);
    let alice = w.sender(MediaKind::Audio, with_events);
    let opus = w.nodes[alice]
        .client
        .pt(Codec::Opus)
        .expect("Opus negotiated");
    let events = w.nodes[alice]
        .client
        .pt(Codec::Tele)
        .expect("telephone events negotiated");
    let (mut seq, mut ts) = (7000u64, 0u32);
    let mut opus_sent = Vec::new();
    let mut events_sent: Vec<(u32, bool, Vec<u8>)> = Vec::new();
    let mut step = |w: &mut World, i: u64, digit: Option<usize>| {
        let payload = frame_payload(i, 60);
        send(w, alice, opus, seq, ts, false, &payload);
        opus_sent.push((ts, payload));
        seq += 1;
        if let Some(k) = digit {
            // Digit 5, volume 10; the event starts at the first update's timestamp.
            let start = ts.wrapping_sub(960 * k as u32);
            let end = k >= 3;
            let duration = (960 * (k as u16 + 1)).to_be_bytes();
            let payload = vec![
                5,
                if end { 0x80 | 10 } else { 10 },
                duration[0],
                duration[1],
            ];
            send(w, alice, events, seq, start, k == 0, &payload);
            events_sent.push((start, k == 0, payload));
            seq += 1;
        }
        ts = ts.wrapping_add(960);
        w.run_for(FRAME);
    };
    for i in 0..10 {
        step(&mut w, i, None);
    }
    let track = *w.nodes[alice]
        .tracks
        .first()
        .expect("the audio track is published");
    let bob = w.add_subscriber_with(vec![track], with_events);
    let carol = w.add_subscriber_with(vec![track], |c| c);
    for i in 10..60 {
        step(&mut w, i, None);
    }
    for (k, i) in (60..66).enumerate() {
        step(&mut w, i, Some(k));
    }
    for i in 66..100 {
        step(&mut w, i, None);
    }
    w.run_for(Duration::from_millis(200));

    let bob_events = received(&w, bob, w.nodes[bob].client.pt(Codec::Tele));
    assert_eq!(
        bob_events.len(),
        events_sent.len(),
        "every event packet reaches bob"
    );
    for (got, (_, marker, payload)) in bob_events.iter().zip(&events_sent) {
        assert_eq!(&got.payload, payload, "event payloads are unchanged");
        assert_eq!(got.marker, *marker, "the marker starts the event");
    }
    assert!(
        bob_events
            .iter()
            .all(|e| e.timestamp == bob_events[0].timestamp),
        "one event, one timestamp"
    );
    // On the audio's timeline: the event's timestamp is that of the Opus frame it started at.
    let bob_opus = received(&w, bob, w.nodes[bob].client.pt(Codec::Opus));
    let start_payload = &opus_sent
        .iter()
        .find(|(t, _)| *t == events_sent[0].0)
        .expect("the event starts at an Opus frame")
        .1;
    let start_frame = bob_opus
        .iter()
        .find(|p| &p.payload == start_payload)
        .expect("bob got the frame the event starts at");
    assert_eq!(bob_events[0].timestamp, start_frame.timestamp);
    let mut all = w
        .other_received(bob)
        .iter()
        .map(|(_, p)| p.clone())
        .collect::<Vec<_>>();
    all.sort_by_key(|p| p.seq);
    assert_consecutive(&all, "bob");

    let carol_all: Vec<ReceivedRtp> = w
        .other_received(carol)
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    let carol_opus = w.nodes[carol].client.pt(Codec::Opus);
    assert!(
        carol_all.iter().all(|p| Some(p.pt) == carol_opus),
        "carol got something other than Opus"
    );
    assert!(
        carol_all.len() >= 80,
        "carol got {} Opus frames",
        carol_all.len()
    );
    assert_consecutive(&carol_all, "carol (the events left no gap)");
    assert!(
        w.events
            .iter()
            .all(|(_, e)| !matches!(e, PeerEvent::CodecRefused { .. })),
        "telephone events not negotiated are not a refused track"
    );
}

/// Opus with RED (RFC 2198, as Chromium sends it): a viewer that negotiated RED gets the
/// publisher's RED payloads byte for byte on its own RED payload type; a viewer that did not
/// gets each packet's primary block as plain Opus. Both get every packet, numbered without a
/// gap; plain Opus packets between RED ones reach both as they are.
#[test]
fn opus_red_reaches_a_viewer_with_red_as_it_came_and_one_without_as_plain_opus() {
    let mut w = World::with_config(73, |c| c.red_audio = true);
    let with_red = |c: RtcConfig| c.clear_codecs().enable_opus(true, true);
    let alice = w.sender(MediaKind::Audio, with_red);
    let red_pt = |w: &World, id: NodeId| {
        w.nodes[id]
            .client
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| p.red())
            .map(|pt| *pt)
    };
    let (Some(opus), Some(red)) = (w.nodes[alice].client.pt(Codec::Opus), red_pt(&w, alice)) else {
        panic!("the server did not answer Opus with RED");
    };
    let (mut seq, mut ts) = (7000u64, 0u32);
    // (sent payload, the Opus frame inside it) per packet.
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut frame = |w: &mut World, sent: &mut Vec<(Vec<u8>, Vec<u8>)>| {
        let primary = frame_payload(seq, 80);
        // Every fifth packet is plain Opus (RED is per packet: both payload types are live).
        let (pt, payload) = if seq % 5 == 0 {
            (opus, primary.clone())
        } else {
            let previous = frame_payload(seq - 1, 80);
            (
                red,
                crate::red::tests::red_payload(opus, &[(960, &previous)], &primary),
            )
        };
        send(w, alice, pt, seq, ts, false, &payload);
        sent.push((payload, primary));
        seq += 1;
        ts = ts.wrapping_add(960);
        w.run_for(FRAME);
    };
    for _ in 0..10 {
        frame(&mut w, &mut sent);
    }
    let track = *w.nodes[alice]
        .tracks
        .first()
        .expect("the Opus track is published");
    let bob = w.add_subscriber_with(vec![track], with_red);
    let carol = w.add_subscriber_with(vec![track], |c| c.clear_codecs().enable_opus(true, false));
    for _ in 0..100 {
        frame(&mut w, &mut sent);
    }
    w.run_for(Duration::from_millis(200));
    let bob_red = red_pt(&w, bob).expect("bob negotiated RED");
    assert_eq!(red_pt(&w, carol), None, "carol did not negotiate RED");

    let all = |w: &World, id: NodeId| -> Vec<ReceivedRtp> {
        w.other_received(id)
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    };
    for (viewer, name) in [(bob, "bob (RED)"), (carol, "carol (Opus)")] {
        let got = all(&w, viewer);
        assert!(got.len() >= 80, "{name} got {} packets", got.len());
        assert_consecutive(&got, name);
        let viewer_opus = w.nodes[viewer].client.pt(Codec::Opus);
        // Line up with what was sent by the first packet's Opus frame.
        let frame_of = |p: &ReceivedRtp| {
            if Some(p.pt) == viewer_opus {
                p.payload.clone()
            } else {
                crate::red::primary_block(&p.payload, opus)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            }
        };
        let first = sent
            .iter()
            .position(|(_, primary)| *primary == frame_of(&got[0]))
            .expect("the first packet received was sent");
        for (i, p) in got.iter().enumerate() {
            let (payload, primary) = &sent[first + i];
            let was_red = *payload != *primary;
            if viewer == bob && was_red {
                assert_eq!(p.pt, bob_red, "{name}: packet {i} on the RED payload type");
                assert_eq!(p.payload, *payload, "{name}: RED packet {i} byte for byte");
            } else {
                assert_eq!(Some(p.pt), viewer_opus, "{name}: packet {i} as Opus");
                assert_eq!(p.payload, *primary, "{name}: packet {i}'s Opus frame");
            }
        }
        assert_eq!(first + got.len(), sent.len(), "{name}: up to the last one");
    }
}
