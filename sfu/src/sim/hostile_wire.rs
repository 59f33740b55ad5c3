//! Reliability rows 12 to 14, 16 and 17 on the virtual clock: a hand-made endpoint
//! ([`super::raw`]) sends, encrypted and authenticated as a connected peer, what no WebRTC
//! stack writes (header extensions past the packet, padding longer than the payload, a NACK
//! naming every sequence number, malformed SCTP chunks), and the scenario checks what the
//! server does with it and that nobody else notices.

use std::time::{Duration, Instant};

use super::client::sdp_value;
use super::raw::sctp;
use super::vp8::{CHROMIUM_720P, FRAME, Vp8Simulcast};
use super::world::{NodeId, World, call};
use crate::event::CloseReason;

const SECOND: Duration = Duration::from_secs(1);

/// What a raw publisher needs to write its video: VP8's payload type, an SSRC, and the
/// MID header extension (id and value).
struct Wire {
    pt: u8,
    ssrc: u32,
    mid_id: u8,
    mid: String,
    /// A one-byte-form extension ID the offer does not use.
    unused_id: u8,
}

impl Wire {
    fn of(offer: &str) -> Self {
        let pt = offer
            .lines()
            .find_map(|l| l.strip_prefix("a=rtpmap:")?.strip_suffix(" VP8/90000"))
            .and_then(|pt| pt.parse().ok());
        let mid_id = offer.lines().find_map(|l| {
            let (id, uri) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
            (uri.trim() == "urn:ietf:params:rtp-hdrext:sdes:mid")
                .then(|| id.parse().ok())
                .flatten()
        });
        let mid = sdp_value(offer, "video", "a=mid:");
        let ssrc = sdp_value(offer, "video", "a=ssrc:")
            .and_then(|v| v.split(' ').next()?.parse().ok())
            .unwrap_or(0x5eed_0001);
        let used: Vec<u8> = offer
            .lines()
            .filter_map(|l| {
                l.strip_prefix("a=extmap:")?
                    .split([' ', '/'])
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let unused = (1..15).rev().find(|id| !used.contains(id));
        match (pt, mid_id, mid, unused) {
            (Some(pt), Some(mid_id), Some(mid), Some(unused_id)) => Self {
                pt,
                ssrc,
                mid_id,
                mid: mid.trim().to_string(),
                unused_id,
            },
            _ => panic!("the raw offer lacks VP8, the MID extension, a mid or a free ID: {offer}"),
        }
    }

    /// The MID extension element (one-byte form).
    fn mid_element(&self) -> Vec<u8> {
        let mut e = vec![self.mid_id << 4 | (self.mid.len() as u8 - 1)];
        e.extend_from_slice(self.mid.as_bytes());
        e
    }

    /// An RTP header. `ext` holds one-byte-form extension elements (zero-padded to whole
    /// words); `ext_words` overrides the block's length word. The padding bit is set if
    /// `padding`.
    fn header(
        &self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        ext: &[u8],
        ext_words: Option<u16>,
        padding: bool,
    ) -> Vec<u8> {
        let mut h = vec![
            0x80 | if padding { 0x20 } else { 0 } | if ext.is_empty() { 0 } else { 0x10 },
            self.pt | if marker { 0x80 } else { 0 },
        ];
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&timestamp.to_be_bytes());
        h.extend_from_slice(&self.ssrc.to_be_bytes());
        if !ext.is_empty() {
            let mut block = ext.to_vec();
            block.resize(ext.len().div_ceil(4) * 4, 0);
            let words = u16::try_from(block.len() / 4).unwrap_or(u16::MAX);
            h.extend_from_slice(&[0xbe, 0xde]);
            h.extend_from_slice(&ext_words.unwrap_or(words).to_be_bytes());
            h.extend_from_slice(&block);
        }
        h
    }
}

/// The hostile packets of rows 12, 13 and 14. The first three kinds carry real media and must
/// be forwarded (parsing of the extensions stops, the packet stays); the others take a
/// sequence number of their own between two media packets (as a sender's padding does) and
/// must not reach the viewer, nor leave it a gap to ask about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hostile {
    /// Extension ID 15 (reserved: stop parsing) after the MID, then bytes that would be
    /// nonsense as extensions.
    Id15,
    /// A byte of ID 0 with a length (a malformed padding byte) before the MID.
    Id0WithLength,
    /// An abs-capture-time element at its most extreme (all ones), on an ID the server
    /// never negotiated (it does not offer the extension).
    ExtremeAbsCaptureTime,
    /// An extension block whose length word runs past the end of the packet.
    PastThePacket,
    /// The padding bit with an empty payload.
    PaddingNoPayload,
    /// The padding bit with a pad count longer than the payload.
    PaddingPastThePayload,
}

const HOSTILE: [Hostile; 6] = [
    Hostile::Id15,
    Hostile::Id0WithLength,
    Hostile::ExtremeAbsCaptureTime,
    Hostile::PastThePacket,
    Hostile::PaddingNoPayload,
    Hostile::PaddingPastThePayload,
];

/// Reliability 12 and 14 after SRTP, one kind of hostile packet at a time (see
/// [`Hostile`]): a connected publisher's packets, valid SRTP, each malformed or preceded by a
/// malformed one with the same sequence number. The viewer decodes every frame and receives
/// nothing else: extensions are parsed up to the bad element and the packet forwarded; a
/// packet that cannot be parsed is dropped.
#[test]
fn bad_extensions_and_padding_after_srtp_are_parsed_safely_or_dropped() {
    for (i, kind) in HOSTILE.into_iter().enumerate() {
        let seen = publish_with(41 + i as u64, kind);
        assert!(seen.sent >= 100, "{kind:?}: {} sent", seen.sent);
        assert_eq!(
            seen.untagged, 0,
            "{kind:?}: a hostile packet's payload reached the viewer"
        );
        assert_eq!(
            seen.undecodable, 0,
            "{kind:?}: a well-formed packet was lost"
        );
        assert!(
            seen.decoded >= seen.frames,
            "{kind:?}: {} of {} frames decoded",
            seen.decoded,
            seen.frames
        );
        assert!(
            seen.freeze < Duration::from_millis(100),
            "{kind:?}: the viewer froze for {:?}",
            seen.freeze
        );
        assert_eq!(seen.closed, None, "{kind:?}: the publisher was closed");
    }
}

/// What a viewer of a hostile publisher saw.
struct Seen {
    /// Hostile packets sent.
    sent: u32,
    /// Frames sent while hostile, and frames the viewer decoded meanwhile.
    frames: u32,
    decoded: u32,
    untagged: u64,
    undecodable: u32,
    freeze: Duration,
    closed: Option<CloseReason>,
}

/// A raw publisher of one VP8 layer and a viewer; 150 frames (5 s) where every packet is
/// hostile in the way `kind` says.
fn publish_with(seed: u64, kind: Hostile) -> Seen {
    let mut w = World::new(seed);
    let r = w.raw_publisher(false);
    let wire = Wire::of(&w.raw[r].offer);
    let mut encoder = Vp8Simulcast::new(&CHROMIUM_720P[..1], false);
    encoder.source = 7;
    let mut sent = 0u32;
    // Sequence numbers taken by hostile packets so far.
    let mut inserted = 0u64;
    let mut send_frame = |w: &mut World, encoder: &mut Vp8Simulcast, hostile: bool| {
        for p in encoder.frame() {
            let mut seq = (p.seq + inserted) as u16;
            let raw = &mut w.raw[r].raw;
            let junk = [0xa5u8; 40];
            let mid = wire.mid_element();
            let before = match (hostile, kind) {
                (true, Hostile::PastThePacket) => {
                    let h = wire.header(seq, p.timestamp, p.marker, &mid, Some(400), false);
                    Some((h.len(), [h, junk.to_vec()].concat()))
                }
                (true, Hostile::PaddingNoPayload) => {
                    let h = wire.header(seq, p.timestamp, p.marker, &mid, None, true);
                    Some((h.len(), h))
                }
                (true, Hostile::PaddingPastThePayload) => {
                    let h = wire.header(seq, p.timestamp, p.marker, &mid, None, true);
                    Some((h.len(), [h, junk.to_vec(), vec![200]].concat()))
                }
                _ => None,
            };
            if let Some((header_len, packet)) = before {
                raw.send_rtp(&packet, header_len);
                inserted += 1;
                seq = seq.wrapping_add(1);
            }
            let ext = match (hostile, kind) {
                (true, Hostile::Id15) => [mid, vec![0xf3, 0x21, 0x7f, 0x00, 0xff, 0x1e]].concat(),
                (true, Hostile::Id0WithLength) => [vec![0x03], mid].concat(),
                (true, Hostile::ExtremeAbsCaptureTime) => {
                    [mid, vec![wire.unused_id << 4 | 15], vec![0xff; 16]].concat()
                }
                _ => mid,
            };
            if hostile {
                sent += 1;
            }
            let h = wire.header(seq, p.timestamp, p.marker, &ext, None, false);
            raw.send_rtp(&[h.clone(), p.payload].concat(), h.len());
        }
        w.run_for(FRAME);
    };
    // Well-formed until the track is published and a viewer is watching.
    for _ in 0..30 {
        send_frame(&mut w, &mut encoder, false);
        if !w.raw[r].tracks.is_empty() {
            break;
        }
    }
    let track = *w.raw[r]
        .tracks
        .first()
        .expect("the raw publisher's track is published");
    let bob = w.add_subscriber(vec![track]);
    for _ in 0..60 {
        send_frame(&mut w, &mut encoder, false);
    }
    assert!(w.nodes[bob].client.connected, "the viewer connects");
    encoder.request_keyframe(0);
    for _ in 0..3 {
        send_frame(&mut w, &mut encoder, false);
    }
    let from = w.now();
    let decoded_before = w.video(bob).decoded.len();
    let frames = 150;
    for _ in 0..frames {
        send_frame(&mut w, &mut encoder, true);
    }
    let end = w.now();
    for _ in 0..5 {
        send_frame(&mut w, &mut encoder, false);
    }
    let video = w.video(bob);
    Seen {
        sent,
        frames,
        decoded: (video.decoded.len() - decoded_before) as u32,
        untagged: video.untagged,
        undecodable: video.undecodable,
        freeze: video.longest_freeze(from, end),
        closed: w.raw[r].closed.clone(),
    }
}

/// The media and RTX SSRCs the server's answer declares for its video.
fn fid_of(answer: &str) -> (u32, u32) {
    let group = sdp_value(answer, "video", "a=ssrc-group:FID ")
        .unwrap_or_else(|| panic!("no FID group in the answer: {answer}"));
    let mut ssrcs = group.split_whitespace().filter_map(|s| s.parse().ok());
    match (ssrcs.next(), ssrcs.next()) {
        (Some(media), Some(rtx)) => (media, rtx),
        _ => panic!("a FID group without two SSRCs: {group}"),
    }
}

/// Generic NACKs (RFC 4585 section 6.2.1) from `sender` naming every sequence number of
/// `media`, in packets of at most 300 entries (a 17-number stretch each).
fn nack_every_sequence_number(sender: u32, media: u32) -> Vec<Vec<u8>> {
    let entries: Vec<[u8; 4]> = (0..=u16::MAX)
        .step_by(17)
        .map(|pid| {
            let [a, b] = pid.to_be_bytes();
            [a, b, 0xff, 0xff]
        })
        .collect();
    entries
        .chunks(300)
        .map(|fci| {
            let words = u16::try_from(2 + fci.len()).unwrap_or(u16::MAX);
            let mut p = vec![0x81, 205];
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&sender.to_be_bytes());
            p.extend_from_slice(&media.to_be_bytes());
            fci.iter().for_each(|e| p.extend_from_slice(e));
            p
        })
        .collect()
}

/// Reliability 16 (NACK of everything): a viewer naming all 65,536 sequence numbers of
/// its video 50 times a second for 5 s, as valid SRTCP, against the same call without the
/// storm. The server takes every NACK and sends that viewer no more than it would have
/// anyway (retransmissions take the place of padding and media within its estimate, they
/// do not add to it); the other viewer's video goes on and the publisher is not asked for
/// more keyframes.
#[test]
fn a_nack_for_every_sequence_number_gets_no_more_bytes_sent() {
    let calm = nack_storm(51, false);
    let storm = nack_storm(51, true);
    assert!(
        storm.nacks >= 250 * 13 && calm.nacks == 0,
        "the server counted {} NACK packets of 3,250 ({} without the storm)",
        storm.nacks,
        calm.nacks
    );
    assert!(
        storm.media_bytes > 100_000 && storm.rtx_bytes > 0,
        "{storm:?} {calm:?}"
    );
    let (calm_total, storm_total) = (
        calm.media_bytes + calm.rtx_bytes,
        storm.media_bytes + storm.rtx_bytes,
    );
    assert!(
        storm_total as f64 <= calm_total as f64 * 1.15,
        "the storm made the server send {storm_total} bytes against {calm_total} without it"
    );
    for seen in [&calm, &storm] {
        assert!(
            seen.keyframe_requests <= 3,
            "{} keyframe requests reached the publisher",
            seen.keyframe_requests
        );
        assert!(
            seen.viewer_freeze < Duration::from_millis(100),
            "the other viewer froze for {:?}",
            seen.viewer_freeze
        );
        assert_eq!(seen.viewer_undecodable, 0);
        assert!(seen.all_open, "a peer was closed");
    }
}

/// What a NACK storm (or its absence) did.
#[derive(Debug)]
struct Storm {
    /// Bytes the hostile viewer was sent on its video's media and RTX SSRCs.
    media_bytes: u64,
    rtx_bytes: u64,
    /// NACK packets the server counted.
    nacks: u64,
    /// Keyframe requests that reached the publisher's encoder.
    keyframe_requests: u32,
    viewer_freeze: Duration,
    viewer_undecodable: u32,
    all_open: bool,
}

/// A call with a raw viewer that, if `storm`, NACKs every sequence number for 5 s.
fn nack_storm(seed: u64, storm: bool) -> Storm {
    let (mut w, alice, bob) = call(seed);
    let track = w.video_track(alice);
    let r = w.raw_subscriber(vec![track]);
    w.run_for(3 * SECOND);
    let (media, rtx) = fid_of(&w.raw[r].answer);
    let bytes = |w: &World, ssrc: u32, from: Instant| -> u64 {
        let srtp = &w.raw[r].raw.srtp_in;
        srtp.iter()
            .filter(|(at, d)| *at >= from && d.len() > 12 && d[8..12] == ssrc.to_be_bytes())
            .map(|(_, d)| d.len() as u64)
            .sum()
    };
    let keyframes_before: u32 = w.encoder(alice).keyframe_requests.iter().sum();
    let nacks_before = w.h.counters().nacks_received;
    let from = w.now();
    let nacks = nack_every_sequence_number(0x0bad_cafe, media);
    for _ in 0..250 {
        if storm {
            for nack in &nacks {
                w.raw[r].raw.send_rtcp(nack);
            }
        }
        w.run_for(Duration::from_millis(20));
    }
    let end = w.now();
    // The stats that carry the NACK count come every few seconds.
    w.run_for(6 * SECOND);
    let keyframes: u32 = w.encoder(alice).keyframe_requests.iter().sum();
    Storm {
        media_bytes: bytes(&w, media, from) - bytes(&w, media, end),
        rtx_bytes: bytes(&w, rtx, from) - bytes(&w, rtx, end),
        nacks: w.h.counters().nacks_received - nacks_before,
        keyframe_requests: keyframes - keyframes_before,
        viewer_freeze: w.video(bob).longest_freeze(from, end),
        viewer_undecodable: w.video(bob).undecodable,
        all_open: w.nodes.iter().all(|n| n.closed.is_none()) && w.raw[r].closed.is_none(),
    }
}

/// Sends one SCTP packet from raw endpoint `r` and lets 50 ms pass; returns the chunk types
/// of what came back.
fn sctp_exchange(w: &mut World, r: usize, packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
    w.raw[r].raw.send_sctp(packet);
    w.run_for(Duration::from_millis(50));
    std::mem::take(&mut w.raw[r].raw.sctp_in)
        .iter()
        .flat_map(|p| sctp::chunks(p))
        .collect()
}

/// Reliability 17 with a hand-made SCTP association over a connected peer's DTLS: an INIT
/// asking for 65,535 streams each way, then DATA on streams 65,534 and 65,535, a chunk of
/// length 0 (the classic endless loop), of length 2, one running past the packet, DATA
/// without user data, an unknown chunk type, a packet of 300 empty chunks. The association
/// ends with an ABORT or answers a heartbeat afterwards (never hangs), and the call beside
/// it does not notice.
#[test]
fn malformed_sctp_chunks_end_cleanly_and_touch_nothing_else() {
    let (mut w, _alice, bob) = call(61);
    let r = w.raw_publisher(true);
    w.run_for(SECOND);
    let from = w.now();
    let my_tag = 0x5c7a_0001;
    let reply = sctp_exchange(
        &mut w,
        r,
        &sctp::packet(0, &[sctp::init(my_tag, u16::MAX, 1)]),
    );
    let (their_tag, cookie) = reply
        .iter()
        .find(|(kind, _)| *kind == sctp::INIT_ACK)
        .and_then(|(_, value)| sctp::parse_init_ack(value))
        .unwrap_or_else(|| panic!("no INIT ACK with a cookie: {reply:?}"));
    let echo = sctp::chunk(sctp::COOKIE_ECHO, 0, None, &cookie);
    let reply = sctp_exchange(&mut w, r, &sctp::packet(their_tag, &[echo]));
    assert!(
        reply.iter().any(|(kind, _)| *kind == sctp::COOKIE_ACK),
        "the association is not established: {reply:?}"
    );
    let data = |tsn: u32, stream: u16| sctp::data(tsn, stream, 51, b"hostile");
    let hostile: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "DATA on streams 65,534 and 65,535",
            vec![data(1, 65_534), data(2, 65_535)],
        ),
        (
            "a chunk of length 0",
            vec![sctp::chunk(0x0e, 0, Some(0), &[]), data(3, 1)],
        ),
        (
            "a chunk of length 2",
            vec![sctp::chunk(sctp::DATA, 0, Some(2), &[0; 12])],
        ),
        (
            "a chunk past the packet",
            vec![sctp::chunk(sctp::DATA, 3, Some(4000), &[0; 16])],
        ),
        (
            "DATA without user data",
            vec![sctp::chunk(
                sctp::DATA,
                3,
                None,
                &[0, 0, 0, 4, 0, 1, 0, 0, 0, 0, 0, 51],
            )],
        ),
        (
            "an unknown chunk type",
            vec![sctp::chunk(0xff, 0xff, None, &[1; 8])],
        ),
        (
            "300 empty chunks",
            vec![sctp::chunk(sctp::DATA, 0, Some(4), &[]); 300],
        ),
    ];
    let mut aborted = None;
    for (name, chunks) in &hostile {
        let reply = sctp_exchange(&mut w, r, &sctp::packet(their_tag, chunks));
        if aborted.is_none() && reply.iter().any(|(kind, _)| *kind == sctp::ABORT) {
            aborted = Some(*name);
        }
    }
    let info = [0u8, 1, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8];
    let heartbeat = sctp::chunk(sctp::HEARTBEAT, 0, None, &info);
    let reply = sctp_exchange(&mut w, r, &sctp::packet(their_tag, &[heartbeat]));
    let alive = reply.iter().any(|(kind, _)| *kind == sctp::HEARTBEAT_ACK);
    assert!(
        aborted.is_some() != alive,
        "the association neither aborted nor answers (aborted at {aborted:?}, heartbeat \
         answered {alive})"
    );
    w.run_for(SECOND);
    let end = w.now();
    assert_smooth(&w, bob, from, end);
    assert_eq!(w.video(bob).undecodable, 0);
    assert_eq!(w.nodes[bob].closed, None);
}

/// The viewer decoded a frame at least every 100 ms between `from` and `to`.
fn assert_smooth(w: &World, viewer: NodeId, from: Instant, to: Instant) {
    let freeze = w.video(viewer).longest_freeze(from, to);
    assert!(
        freeze < Duration::from_millis(100),
        "viewer {viewer} froze for {freeze:?} between {:.2}s and {:.2}s",
        w.t(from),
        w.t(to)
    );
}
