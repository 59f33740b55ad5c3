//! The `worker_datagrams` fuzz target: a whole media worker in-process ([`crate::sim`]), a
//! publisher (VP8 simulcast and Opus) and a subscriber connected to it, then a program of
//! datagrams, media and commands read from the fuzz input.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use str0m::Input;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::ice::{StunMessage, TransId};
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::RtpWrite;

use super::Reader;
use crate::codec_order::video_codec_order;
use crate::command::Command;
use crate::event::PeerEvent;
use crate::ids::{PeerId, TrackId};
use crate::layer_choice::{Quality, VideoPreference};
use crate::sim::client::{Client, Creds, ReceivedRtp, accept_answer, creds_of};
use crate::sim::worker::{Harness, SERVER, SERVER_TCP};

/// How long a datagram from the worker takes to reach a client. Not zero: str0m's bandwidth
/// estimator schedules its next update one round-trip time ahead, and a worker whose peers have
/// a zero round-trip time never leaves its timer loop (see the report on the fuzz targets).
const LATENCY: Duration = Duration::from_millis(1);
/// Where datagrams from strangers come from.
const STRANGER: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 6666));

/// A publisher and a subscriber, connected to one worker.
struct Session {
    h: Harness,
    publisher: Client,
    subscriber: Client,
    subscriber_peer: PeerId,
    video: Mid,
    audio: Mid,
    tracks: Vec<TrackId>,
    /// The subscriber's video m-line (from the server's latest offer).
    subscriber_video: Option<Mid>,
    /// The server's ICE credentials of each peer, and the clients' own.
    server_creds: [Creds; 2],
    client_creds: [Creds; 2],
    /// Datagrams handed to the worker.
    fed: u64,
    /// The server's subscribe offers, in order.
    offers: Vec<String>,
}

const RIDS: [&str; 3] = ["q", "h", "f"];

impl Session {
    fn clients(&mut self) -> [&mut Client; 2] {
        [&mut self.publisher, &mut self.subscriber]
    }

    /// Delivers every datagram in flight, both ways, until there are none.
    fn pump(&mut self) {
        for _ in 0..64 {
            let mut sent: Vec<Transmit> = Vec::new();
            for c in self.clients() {
                sent.append(&mut c.outbox);
            }
            let moved = !sent.is_empty();
            for t in sent {
                self.fed += 1;
                let now = self.h.now;
                self.h
                    .core
                    .handle_datagram(now, t.source, Some(t.destination.ip()), &t.contents);
            }
            let replies = self.h.flush();
            if !moved && replies.is_empty() {
                return;
            }
            // Time on the wire: with none, round-trip times would be zero.
            self.h.now += LATENCY;
            let now = self.h.now;
            for t in replies {
                for c in self.clients() {
                    if c.addr == t.destination
                        && t.proto == Protocol::Udp
                        && let Ok(r) = Receive::new(t.proto, t.source, t.destination, &t.contents)
                    {
                        c.input(Input::Receive(now, r));
                    }
                }
            }
        }
    }

    /// Lets `by` pass, running every timeout due on the way.
    fn advance(&mut self, by: Duration) {
        let end = self.h.now + by;
        for _ in 0..256 {
            let mut next = end;
            for c in self.clients() {
                next = next.min(c.timeout);
            }
            if let Some(at) = self.h.core.next_deadline() {
                next = next.min(at);
            }
            self.h.now = self.h.now.max(next);
            let now = self.h.now;
            for c in self.clients() {
                if c.timeout <= now {
                    c.input(Input::Timeout(now));
                }
            }
            self.h.core.handle_timers(now, &mut |_| {});
            self.pump();
            if now >= end {
                return;
            }
        }
        // Timeouts that keep firing at one instant: jump.
        self.h.now = self.h.now.max(end);
    }

    /// Negotiates the subscriber's pending server offer, if there is one.
    fn negotiate_subscriber(&mut self) {
        for event in self.h.events() {
            if let PeerEvent::SubscriberOffer { peer, sdp, tracks } = event
                && peer == self.subscriber_peer
            {
                self.subscriber_video = tracks
                    .iter()
                    .find(|t| t.kind == crate::event::TrackKind::Video)
                    .map(|t| Mid::from(t.mid.as_str()));
                let Ok(offer) = SdpOffer::from_sdp_string(&sdp) else {
                    panic!("the server's offer does not parse: {sdp}");
                };
                self.offers.push(sdp.clone());
                let answer = match self.subscriber.rtc.sdp_api().accept_offer(offer) {
                    Ok(a) => a,
                    Err(e) => panic!("a client refuses the server's offer ({e}): {sdp}"),
                };
                self.subscriber.drain();
                self.server_creds[1] = creds_of(&sdp);
                self.client_creds[1] = creds_of(&answer.to_sdp_string());
                // Refused when the peer closed meanwhile.
                let _ = self.h.subscriber_answer(peer, answer);
            }
        }
    }

    /// A publisher (VP8 in three simulcast layers, Opus) and a subscriber to its tracks,
    /// connected.
    fn connect() -> Self {
        let mut h = Harness::new();
        let now = h.now;
        let mut publisher = Client::new(SocketAddr::from(([192, 0, 2, 10], 40000)), now);
        let subscriber = Client::new(SocketAddr::from(([192, 0, 2, 20], 40000)), now);

        let mut api = publisher.rtc.sdp_api();
        let mut simulcast = Simulcast::new();
        for rid in RIDS {
            simulcast.add_send_layer(SimulcastLayer::new(rid));
        }
        let video = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("s".into()),
            None,
            Some(simulcast),
        );
        let audio = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("s".into()),
            None,
            None,
        );
        let Some((offer, pending)) = api.apply() else {
            panic!("nothing to offer");
        };
        publisher.drain();
        let offer_sdp = offer.to_sdp_string();
        let (_, answer) = match h.add_publisher(offer, video_codec_order(&offer_sdp)) {
            Ok(a) => a,
            Err(e) => panic!("a client's offer is refused: {e}"),
        };
        accept_answer(&mut publisher, pending, &answer);
        let mut session = Session {
            h,
            publisher,
            subscriber,
            subscriber_peer: PeerId(0),
            video,
            audio,
            tracks: Vec::new(),
            subscriber_video: None,
            server_creds: [creds_of(&answer), Creds::default()],
            client_creds: [creds_of(&offer_sdp), Creds::default()],
            fed: 0,
            offers: Vec::new(),
        };
        // Tracks are published once the publisher is connected (str0m reports its m-lines
        // when media can flow).
        let mut tracks = Vec::new();
        for _ in 0..40 {
            session.advance(Duration::from_millis(50));
            tracks.extend(session.h.events().into_iter().filter_map(|e| match e {
                PeerEvent::TrackPublished { track, .. } => Some(track.id),
                _ => None,
            }));
            if session.publisher.connected && tracks.len() == 2 {
                break;
            }
        }
        assert!(
            session.publisher.connected,
            "the publisher does not connect"
        );
        assert_eq!(tracks.len(), 2, "a video and an audio track");
        session.subscriber_peer = match session.h.add_subscriber(tracks.clone()) {
            Ok(p) => p,
            Err(e) => panic!("cannot subscribe: {e}"),
        };
        session.tracks = tracks;
        session.negotiate_subscriber();
        for _ in 0..40 {
            if session.subscriber.connected {
                break;
            }
            session.advance(Duration::from_millis(50));
        }
        assert!(
            session.subscriber.connected,
            "the subscriber does not connect"
        );
        session
    }
}

/// A binding request for a peer: the right USERNAME, fuzzed priority and flags, and message
/// integrity with the right password or not.
fn binding_request(server: &Creds, client: &Creds, r: &mut Reader<'_>, right: bool) -> Vec<u8> {
    let username = format!("{}:{}", server.ufrag, client.ufrag);
    let flags = r.u8();
    let message = StunMessage::binding_request(
        &username,
        TransId::new(),
        flags & 1 == 1,
        u64::from(r.u32()),
        r.u32(),
        flags & 2 == 2,
    );
    let password = if right {
        server.pwd.clone().into_bytes()
    } else {
        r.bytes(16).to_vec()
    };
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let mut buf = vec![0; 1500];
    match message.to_bytes(Some(&password), &mut buf, |key, payloads| {
        hmac.sha1_hmac(key, payloads)
    }) {
        Ok(n) => buf.truncate(n),
        Err(_) => buf.clear(),
    }
    buf
}

/// `worker_datagrams`: a connected publisher and subscriber, then a program read from the
/// input: media the publisher sends (any payload, payload type, sequence number, timestamp,
/// marker), raw datagrams from the clients' addresses, from strangers and over ICE-TCP,
/// connectivity checks from new addresses with the right or a wrong password, time passing,
/// keyframe requests, layer and quality requests, mutes, unsubscribes and ICE restarts.
///
/// Checks: the clients connect; the worker counts every datagram it was given; a stranger's
/// datagram, a check with a wrong password or a datagram from an address no check proved
/// closes no peer and teaches the worker no address; the subscriber receives only payloads
/// the publisher sent, unchanged except for the VP8 descriptor fields the munger rewrites,
/// never two different payloads under one sequence number.
pub fn worker_datagrams(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut s = Session::connect();
    let vp8 = s.publisher.pt(Codec::Vp8);
    let h264 = s.publisher.pt(Codec::H264);
    let opus = s.publisher.pt(Codec::Opus);
    let (Some(vp8), Some(h264), Some(opus)) = (vp8, h264, opus) else {
        panic!("the publisher has no VP8, H264 or Opus payload type");
    };
    // Per layer and for audio: sequence number and timestamp the publisher sends next.
    let mut seq = [1000u64, 20_000, 40_000, 60_000];
    let mut ts = [0u32, 1 << 20, 1 << 24, 7];
    let mut sent = Sent::new();
    let mut stranger_port = STRANGER.port();

    for _ in 0..256 {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let peers_before = s.h.peers();
        let mut harmless = false;
        match op % 12 {
            0..=2 => {
                // Video on one simulcast layer.
                let layer = usize::from(op >> 4) % 3;
                let codec = if op & 0x80 == 0 {
                    Codec::Vp8
                } else {
                    Codec::H264
                };
                let pt = if codec == Codec::Vp8 { vp8 } else { h264 };
                let step = r.u8();
                if let (Some(sq), Some(t)) = (seq.get_mut(layer), ts.get_mut(layer)) {
                    *sq = sq.wrapping_add(u64::from(step % 4) + 1);
                    *t = t.wrapping_add(u32::from(step >> 2) * 300);
                }
                let payload = r.chunk(1200).to_vec();
                remember(&mut sent, codec, &payload);
                let (sq, t) = (seq.get(layer).copied(), ts.get(layer).copied());
                let rid = RIDS.get(layer).map(|r| Rid::from(*r));
                let now = s.h.now;
                let video = s.video;
                if let (Some(sq), Some(t)) = (sq, t)
                    && let Some(tx) = s.publisher.rtc.direct_api().stream_tx_by_mid(video, rid)
                {
                    tx.write_rtp(
                        RtpWrite::new(pt.into(), sq.into(), t, now, payload)
                            .marker(op & 0x40 != 0)
                            .nackable(true),
                    );
                }
                s.publisher.drain();
                s.pump();
            }
            3 => {
                let payload = r.chunk(400).to_vec();
                remember(&mut sent, Codec::Opus, &payload);
                if let (Some(sq), Some(t)) = (seq.get_mut(3), ts.get_mut(3)) {
                    *sq += 1;
                    *t = t.wrapping_add(960);
                    let (sq, t, now, audio) = (*sq, *t, s.h.now, s.audio);
                    if let Some(tx) = s.publisher.rtc.direct_api().stream_tx_by_mid(audio, None) {
                        tx.write_rtp(RtpWrite::new(opus.into(), sq.into(), t, now, payload));
                    }
                }
                s.publisher.drain();
                s.pump();
            }
            4 => {
                // Raw bytes from a client's address (spoofed, or a broken client).
                let from = if op & 0x10 == 0 {
                    s.publisher.addr
                } else {
                    s.subscriber.addr
                };
                let datagram = r.chunk(1500);
                s.fed += 1;
                let now = s.h.now;
                s.h.core
                    .handle_datagram(now, from, Some(SERVER.ip()), datagram);
                s.pump();
                harmless = true;
            }
            5 => {
                // A stranger: a new address each time, so nothing can have been learned.
                stranger_port = stranger_port.wrapping_add(1);
                let from = SocketAddr::new(STRANGER.ip(), stranger_port);
                let datagram = r.chunk(1500).to_vec();
                stranger(&mut s, from, &datagram);
                harmless = true;
            }
            6 => {
                // A connectivity check from a new address, for one of the peers.
                stranger_port = stranger_port.wrapping_add(1);
                let from = SocketAddr::new(STRANGER.ip(), stranger_port);
                let which = usize::from(op >> 7);
                let right = op & 0x10 != 0;
                let (Some(server), Some(client)) =
                    (s.server_creds.get(which), s.client_creds.get(which))
                else {
                    continue;
                };
                let check = binding_request(server, client, &mut r, right);
                if right {
                    s.fed += 1;
                    let now = s.h.now;
                    s.h.core
                        .handle_datagram(now, from, Some(SERVER.ip()), &check);
                    s.pump();
                } else {
                    stranger(&mut s, from, &check);
                    harmless = true;
                }
            }
            7 => {
                // ICE-TCP frames from a connection.
                stranger_port = stranger_port.wrapping_add(1);
                let from = SocketAddr::new(STRANGER.ip(), stranger_port);
                for _ in 0..=(op >> 4) % 4 {
                    let frame = r.chunk(1500);
                    s.fed += 1;
                    let now = s.h.now;
                    s.h.core.handle_tcp_frame(now, from, SERVER_TCP, frame);
                }
                s.pump();
                s.h.core.forget_tcp(from);
                harmless = true;
            }
            8 => {
                let ms = u64::from(r.u8()) * 8;
                s.advance(Duration::from_millis(ms));
            }
            9 => {
                // The subscriber asks for a keyframe, or the control plane changes what it
                // wants of the video.
                let quality = match r.u8() % 5 {
                    0 => Quality::Auto,
                    1 => Quality::Low,
                    2 => Quality::Medium,
                    3 => Quality::High,
                    _ => {
                        let kind = if op & 0x80 == 0 {
                            KeyframeRequestKind::Pli
                        } else {
                            KeyframeRequestKind::Fir
                        };
                        if let Some(mid) = s.subscriber_video
                            && let Some(rx) =
                                s.subscriber.rtc.direct_api().stream_rx_by_mid(mid, None)
                        {
                            rx.request_keyframe(kind);
                        }
                        let now = s.h.now;
                        s.subscriber.input(Input::Timeout(now));
                        s.pump();
                        continue;
                    }
                };
                let max_size = (op & 0x80 != 0).then(|| (u32::from(r.u16()), u32::from(r.u16())));
                let preference = VideoPreference { quality, max_size };
                let (peer, track) = (s.subscriber_peer, s.tracks.first().copied());
                if let Some(track) = track {
                    let _ = s.h.request(|reply| Command::SetVideoPreference {
                        peer,
                        track,
                        preference,
                        reply,
                    });
                }
                s.pump();
            }
            10 => {
                // Mute, unmute, unsubscribe, subscribe again.
                let Some(track) = s.tracks.get(usize::from(op >> 7)).copied() else {
                    continue;
                };
                let peer = s.subscriber_peer;
                let _ = match r.u8() % 4 {
                    0 | 1 => {
                        s.h.request(|reply| Command::SetTrackMuted {
                            track,
                            muted: op & 0x10 != 0,
                            reply,
                        })
                        .map(|_| ())
                    }
                    2 => {
                        s.h.request(|reply| Command::Unsubscribe { peer, track, reply })
                    }
                    _ => {
                        s.h.request(|reply| Command::Subscribe { peer, track, reply })
                    }
                };
                s.negotiate_subscriber();
                s.pump();
            }
            _ => {
                // The subscriber restarts ICE.
                let peer = s.subscriber_peer;
                let _ = s.h.request(|reply| Command::RestartIce { peer, reply });
                s.negotiate_subscriber();
                s.advance(Duration::from_millis(100));
            }
        }
        if harmless {
            assert_eq!(s.h.peers(), peers_before, "a datagram closed a peer");
        }
        let closed: Vec<PeerEvent> =
            s.h.events()
                .into_iter()
                .filter(|e| matches!(e, PeerEvent::Closed { .. }))
                .collect();
        assert!(!harmless || closed.is_empty(), "{closed:?} after op {op}");
        assert_eq!(
            s.h.counters().datagrams_received,
            s.fed,
            "datagrams counted"
        );
    }

    check_received(&s, &sent);
}

/// Hands a datagram from an unknown address to the worker: it must be dropped without
/// teaching the worker anything (a datagram sent from there afterwards is still unroutable).
fn stranger(s: &mut Session, from: SocketAddr, datagram: &[u8]) {
    let now = s.h.now;
    s.fed += 2;
    s.h.core
        .handle_datagram(now, from, Some(SERVER.ip()), datagram);
    s.pump();
    let before = s.h.counters().dropped_unroutable;
    // An SRTP-looking datagram from the same address.
    let mut probe = vec![0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
    probe.resize(64, 0);
    s.h.core
        .handle_datagram(now, from, Some(SERVER.ip()), &probe);
    assert_eq!(
        s.h.counters().dropped_unroutable,
        before + 1,
        "the worker learned {from} from a datagram that proved nothing"
    );
    s.pump();
}

/// What the publisher sent, by codec (its name), length and bytes after the first six (those
/// the VP8 munger may rewrite): the first six bytes of each.
type Sent = HashMap<(String, usize, Vec<u8>), Vec<Vec<u8>>>;

/// Keeps a payload the publisher sent, keyed so a forwarded copy can be found.
fn remember(sent: &mut Sent, codec: Codec, p: &[u8]) {
    let tail = p.get(6..).unwrap_or_default().to_vec();
    sent.entry((format!("{codec:?}"), p.len(), tail))
        .or_default()
        .push(p.iter().take(6).copied().collect());
}

fn check_received(s: &Session, sent: &Sent) {
    let codec_of = |pt: u8| {
        s.subscriber
            .rtc
            .codec_config()
            .find(|c| *c.pt() == pt)
            .map(|c| c.spec().codec)
    };
    let mut by_seq: HashMap<(u32, u64), &[u8]> = HashMap::new();
    for ReceivedRtp {
        pt,
        ssrc,
        seq,
        payload,
        ..
    } in &s.subscriber.received
    {
        let Some(codec) = codec_of(*pt) else {
            panic!("the subscriber received payload type {pt}, never negotiated");
        };
        let tail = payload.get(6..).unwrap_or_default().to_vec();
        let head: Vec<u8> = payload.iter().take(6).copied().collect();
        let Some(heads) = sent.get(&(format!("{codec:?}"), payload.len(), tail)) else {
            panic!("the subscriber received a {codec:?} payload nobody sent: {payload:?}");
        };
        let rewritten_only = |h: &Vec<u8>| {
            h.iter()
                .zip(&head)
                .enumerate()
                .all(|(i, (a, b))| a == b || codec == Codec::Vp8 && (2..6).contains(&i))
        };
        assert!(
            heads.iter().any(rewritten_only),
            "a {codec:?} payload changed beyond its VP8 descriptor: {payload:?}"
        );
        if let Some(other) = by_seq.insert((*ssrc, *seq), payload) {
            assert_eq!(
                other,
                &payload[..],
                "two payloads under sequence number {seq}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness really forwards: keyframes the publisher sends on every layer reach the
    /// subscriber (so the fuzz target's checks on received media are not vacuous).
    #[test]
    fn media_reaches_the_subscriber() {
        let mut s = Session::connect();
        let vp8 = s.publisher.pt(Codec::Vp8).unwrap();
        for frame in 0..30u16 {
            for (layer, rid) in RIDS.iter().enumerate() {
                let payload = vec![0x90, 0x80, 0x80, frame as u8, 0x10, 0x02, 0, 0x9d, 1, 0x2a];
                let seq = u64::from(frame) + 1000 * layer as u64;
                let now = s.h.now;
                let video = s.video;
                if let Some(tx) = s
                    .publisher
                    .rtc
                    .direct_api()
                    .stream_tx_by_mid(video, Some(Rid::from(*rid)))
                {
                    tx.write_rtp(
                        RtpWrite::new(
                            vp8.into(),
                            seq.into(),
                            u32::from(frame) * 3000,
                            now,
                            payload,
                        )
                        .marker(true),
                    );
                }
                s.publisher.drain();
                s.pump();
            }
            s.advance(Duration::from_millis(33));
        }
        assert!(
            !s.subscriber.received.is_empty(),
            "nothing forwarded: {:?}",
            s.h.counters()
        );
        assert!(s.h.counters().rtp_forwarded > 0);
    }

    /// The m-line that tags the subscribe connection's BUNDLE group (its first) is the data
    /// channel's, which is never stopped: when the tracks leave, the tag stays. A tag that
    /// moves makes Chromium start a new DTLS transport and abort the connection (seen as
    /// every other participant's connection dropping when the first one to join left).
    #[test]
    fn the_bundle_tag_stays_when_tracks_leave() {
        let mut s = Session::connect();
        let bundle_tag = |sdp: &str| {
            sdp.lines()
                .find_map(|l| l.trim().strip_prefix("a=group:BUNDLE "))
                .and_then(|mids| mids.split(' ').next())
                .map(str::to_string)
        };
        let first_mline = |sdp: &str| {
            sdp.lines()
                .find(|l| l.starts_with("m="))
                .map(|l| l.trim().to_string())
        };
        let first = s.offers.first().cloned().expect("a first offer");
        let tag = bundle_tag(&first).expect("a BUNDLE group");
        assert_eq!(
            first_mline(&first).as_deref(),
            Some("m=application 9 UDP/DTLS/SCTP webrtc-datachannel"),
            "the data channel's m-line comes first: {first}"
        );
        let peer = s.subscriber_peer;
        for track in s.tracks.clone() {
            s.h.request(|reply| Command::Unsubscribe { peer, track, reply })
                .expect("unsubscribed");
            s.negotiate_subscriber();
            s.advance(Duration::from_millis(50));
        }
        s.negotiate_subscriber();
        let last = s.offers.last().cloned().expect("an offer");
        assert!(s.offers.len() >= 2, "unsubscribing renegotiates");
        assert_eq!(bundle_tag(&last), Some(tag), "the BUNDLE tag moved: {last}");
        assert!(
            s.subscriber.connected && !s.subscriber.failed,
            "the subscriber stays connected"
        );
    }
}
