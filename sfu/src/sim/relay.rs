//! A relay between nodes, on the virtual clock. The origin's half: a relay egress in a call's
//! forwarding graph carries exactly the layers asked for, as the publisher sent them
//! (decodable frame by frame, with no gap in any layer's sequence numbers), passes keyframe
//! requests on to the publisher, and hears when the track ends. Both halves, with two rooms
//! of one worker standing for two nodes: a viewer of the relayed track at the edge decodes
//! the origin's publisher, and the edge's dynacast narrows what crosses to what its viewers
//! want; loss on the link is repaired from the origin's recent packets without a keyframe;
//! malformed relayed packets are refused and counted.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::vp8::Vp8Receiver;
use super::world::{World, call};
use crate::command::Command;
use crate::ids::PeerId;
use crate::relay::{RelayEvent, RelayPacket, rtp};

const SECOND: Duration = Duration::from_secs(1);

/// Adds a relay egress to the world's room; returns its id and receivers.
fn relay(
    w: &mut World,
) -> (
    PeerId,
    mpsc::Receiver<RelayPacket>,
    mpsc::Receiver<RelayEvent>,
) {
    let (packets_tx, packets) = mpsc::channel(100_000);
    let (events_tx, events) = mpsc::channel(crate::relay::RELAY_EVENT_QUEUE);
    let (id, _) = w.h.place();
    let room = w.h.room;
    w.h.request(|reply| Command::AddRelayEgress {
        id,
        room,
        packets: packets_tx,
        events: events_tx,
        carries_data: true,
        reply,
    })
    .expect("relay added");
    (id, packets, events)
}

/// What a remote node would have received since the last call: per layer, the packets'
/// sequence numbers, and the frames a decoder gets from their payloads.
struct Received {
    seqs: HashMap<u8, Vec<u16>>,
    decoder: Vp8Receiver,
    keyframe_flags_right: bool,
}

fn drain(w: &World, packets: &mut mpsc::Receiver<RelayPacket>) -> Received {
    let mut r = Received {
        seqs: HashMap::new(),
        decoder: Vp8Receiver::default(),
        keyframe_flags_right: true,
    };
    while let Ok(p) = packets.try_recv() {
        let read = rtp::decode(&p.rtp).expect("a relayed packet reads back");
        assert_eq!((read.layer, read.keyframe), (p.layer, p.keyframe));
        r.seqs.entry(read.layer).or_default().push(read.seq);
        // The simulated encoder's keyframes are its frames without a reference.
        let before = r.decoder.decoded.len();
        r.decoder.on_packet(w.now(), read.payload);
        if read.keyframe
            && r.decoder.decoded[before..]
                .iter()
                .any(|d| !d.key && d.layer == read.layer)
        {
            r.keyframe_flags_right = false;
        }
    }
    r
}

fn without_gaps(seqs: &[u16]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1))
}

#[test]
fn a_relay_egress_carries_the_layers_asked_for_as_the_publisher_sent_them() {
    let (mut w, alice, _bob) = call(71);
    let track = w.video_track(alice);
    let (id, mut packets, mut events) = relay(&mut w);
    w.run_for(2 * SECOND);
    assert!(packets.try_recv().is_err(), "nothing before it asks");

    // The lowest layer alone, from a keyframe (as the edge asks when its first viewer comes).
    w.h.request(|reply| Command::RelayLayers {
        id,
        track,
        layers: 0b001,
        reply,
    })
    .expect("layers set");
    w.h.core.handle_command(
        w.now(),
        Command::RelayKeyframe {
            id,
            track,
            layer: 0,
        },
    );
    w.run_for(3 * SECOND);
    let low = drain(&w, &mut packets);
    assert_eq!(low.seqs.keys().copied().collect::<Vec<_>>(), vec![0]);
    assert!(without_gaps(&low.seqs[&0]), "no gap in layer 0");
    assert!(
        low.decoder.decoded.len() >= 60,
        "{} frames",
        low.decoder.decoded.len()
    );
    assert_eq!(low.decoder.untagged, 0);
    assert!(low.keyframe_flags_right);

    // The top layer too: it comes as sent, from a keyframe the edge asks for.
    let requests = w.encoder(alice).keyframe_requests.clone();
    w.h.request(|reply| Command::RelayLayers {
        id,
        track,
        layers: 0b101,
        reply,
    })
    .expect("layers set");
    w.h.core.handle_command(
        w.now(),
        Command::RelayKeyframe {
            id,
            track,
            layer: 2,
        },
    );
    w.run_for(3 * SECOND);
    assert!(
        w.encoder(alice).keyframe_requests[2] > requests[2],
        "the edge's keyframe request reached the encoder: {:?}",
        w.encoder(alice).keyframe_requests
    );
    let both = drain(&w, &mut packets);
    let mut layers: Vec<u8> = both.seqs.keys().copied().collect();
    layers.sort_unstable();
    assert_eq!(layers, vec![0, 2], "layer 1 is not relayed");
    assert!(both.seqs.values().all(|s| without_gaps(s)));
    let top_keyframes = both
        .decoder
        .decoded
        .iter()
        .filter(|d| d.layer == 2 && d.key)
        .count();
    assert!(
        top_keyframes >= 1,
        "a keyframe of the top layer was relayed"
    );
    assert!(both.keyframe_flags_right);

    // Nothing more once it stops asking.
    w.h.request(|reply| Command::RelayLayers {
        id,
        track,
        layers: 0,
        reply,
    })
    .expect("layers set");
    w.run_for(SECOND);
    drain(&w, &mut packets);
    w.run_for(SECOND);
    assert!(packets.try_recv().is_err(), "nothing after it stopped");

    // Asked again, then the publisher leaves: the relay hears that the track ended.
    w.h.request(|reply| Command::RelayLayers {
        id,
        track,
        layers: 0b001,
        reply,
    })
    .expect("layers set");
    w.run_for(SECOND);
    let peer = w.nodes[alice].peer;
    w.h.request(|reply| Command::RemovePeer { peer, reply })
        .expect("publisher removed");
    w.run_for(SECOND);
    assert_eq!(events.try_recv(), Ok(RelayEvent::TrackEnded(track)));
    w.h.request(|reply| Command::RemoveRelayEgress { id, reply })
        .expect("relay removed");
}

#[test]
fn a_relay_egress_asks_only_for_tracks_of_its_room() {
    let (mut w, alice, _bob) = call(72);
    let track = w.video_track(alice);
    w.h.room = w.h.add_room();
    let (id, _packets, _events) = relay(&mut w);
    let refused = w.h.request(|reply| Command::RelayLayers {
        id,
        track,
        layers: 1,
        reply,
    });
    assert!(refused.is_err(), "a track of another room is refused");
}

/// Two rooms of one worker stand for two nodes: alice publishes in the first (the origin), a
/// relay egress there carries her video to a relay ingress in the second (the edge), whose
/// viewer subscribes to the relayed track. The test is the control plane between them: it
/// moves packets, keyframe requests and the edge's dynacast verdicts across.
struct Hop {
    egress: PeerId,
    packets: mpsc::Receiver<RelayPacket>,
    ingress: PeerId,
    requests: mpsc::Receiver<crate::relay::RelayRequest>,
    events: mpsc::UnboundedReceiver<crate::event::PeerEvent>,
    origin_track: crate::ids::TrackId,
    edge_track: crate::ids::TrackId,
    /// Layers of the packets that crossed, with when.
    crossed: Vec<(std::time::Instant, u8)>,
    /// The link loses one packet in this many (first sendings only, not repairs).
    lose_one_in: Option<usize>,
    /// Packets sent on the link, and those it lost.
    keyframes: usize,
    sent: usize,
    lost: usize,
}

impl Hop {
    /// Runs the world for `d`, carrying what crosses the hop every 5 ms.
    fn run_for(&mut self, w: &mut World, d: Duration) {
        let end = w.now() + d;
        while w.now() < end {
            w.run_for(Duration::from_millis(5));
            let now = w.now();
            let mut batch = Vec::new();
            while let Ok(p) = self.packets.try_recv() {
                self.sent += 1;
                if !p.repair
                    && self
                        .lose_one_in
                        .is_some_and(|n| self.sent.is_multiple_of(n))
                {
                    self.lost += 1;
                    continue;
                }
                self.crossed.push((now, p.layer));
                batch.push((self.edge_track, p.rtp));
            }
            if !batch.is_empty() {
                w.h.core.handle_command(
                    now,
                    Command::RelayPackets {
                        id: self.ingress,
                        packets: batch,
                    },
                );
            }
            while let Ok(r) = self.requests.try_recv() {
                let (id, track) = (self.egress, self.origin_track);
                let command = match r {
                    crate::relay::RelayRequest::Keyframe { track: t, layer } => {
                        assert_eq!(t, self.edge_track);
                        self.keyframes += 1;
                        Command::RelayKeyframe { id, track, layer }
                    }
                    crate::relay::RelayRequest::Nack {
                        track: t,
                        layer,
                        seqs,
                    } => {
                        assert_eq!(t, self.edge_track);
                        Command::RelayNack {
                            id,
                            track,
                            layer,
                            seqs,
                        }
                    }
                    crate::relay::RelayRequest::Data { .. } => continue,
                };
                w.h.core.handle_command(now, command);
            }
            while let Ok(event) = self.events.try_recv() {
                if let crate::event::PeerEvent::LayersWanted { track, active, .. } = event {
                    assert_eq!(track, self.edge_track);
                    let layers = active
                        .iter()
                        .enumerate()
                        .filter(|(_, on)| **on)
                        .fold(0u32, |bits, (i, _)| bits | 1 << i);
                    let (id, track) = (self.egress, self.origin_track);
                    w.h.request(|reply| Command::RelayLayers {
                        id,
                        track,
                        layers,
                        reply,
                    })
                    .expect("relay layers set");
                }
            }
        }
    }

    /// The layers that crossed since `from`.
    fn layers_since(&self, from: std::time::Instant) -> Vec<u8> {
        let mut layers: Vec<u8> = self
            .crossed
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, l)| *l)
            .collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }
}

/// Sets up the hop: the egress carries every layer at first (the edge's dynacast then says
/// which it keeps), and the relayed track is published at the edge.
fn hop(w: &mut World, alice: usize) -> Hop {
    let origin_track = w.video_track(alice);
    let (egress, packets, _egress_events) = relay(w);
    w.h.request(|reply| Command::RelayLayers {
        id: egress,
        track: origin_track,
        layers: 0b111,
        reply,
    })
    .expect("layers set");
    // What the origin tells the edge about the track: its payload formats.
    let codecs =
        w.h.request(|reply| Command::TrackCodecs {
            track: origin_track,
            reply,
        })
        .expect("the track's codecs");
    assert!(
        codecs
            .iter()
            .any(|c| c.name == "VP8" && c.clock_rate == 90_000),
        "{codecs:?}"
    );
    w.h.room = w.h.add_room();
    let (ingress, spec) = w.h.place();
    let (events_tx, events) = mpsc::unbounded_channel();
    let (requests_tx, requests) = mpsc::channel(crate::relay::RELAY_EVENT_QUEUE);
    w.h.request(|reply| Command::AddRelayIngress {
        id: ingress,
        spec,
        events: events_tx,
        requests: requests_tx,
        carries_data: true,
        reply,
    })
    .expect("ingress added");
    let edge_track =
        w.h.request(|reply| Command::RelayPublish {
            id: ingress,
            participant: std::sync::Arc::from("alice"),
            kind: crate::event::TrackKind::Video,
            layers: 3,
            codecs,
            reply,
        })
        .expect("relayed track published");
    Hop {
        egress,
        packets,
        ingress,
        requests,
        events,
        origin_track,
        edge_track,
        crossed: Vec::new(),
        lose_one_in: None,
        keyframes: 0,
        sent: 0,
        lost: 0,
    }
}

#[test]
fn a_viewer_at_the_edge_decodes_the_origin_publisher_and_only_its_layer_crosses() {
    let (mut w, alice, _bob) = call(73);
    let mut hop = hop(&mut w, alice);
    let carol = w.subscriber(vec![hop.edge_track]);
    let start = w.now();
    hop.run_for(&mut w, 6 * SECOND);
    let now = w.now();
    let source = w.encoder(alice).source;
    let video = w.video(carol);
    let from_alice = video.frames_of(source, start, now);
    assert!(
        from_alice >= 100,
        "carol decodes alice's video across the hop: {from_alice} frames in 6 s"
    );
    assert_eq!(video.undecodable, 0, "every frame decodes");
    assert_eq!(video.layer(), Some(2), "carol gets the top layer");
    let freeze = video.longest_freeze(start + 2 * SECOND, now);
    assert!(freeze < Duration::from_millis(200), "froze for {freeze:?}");

    // Carol asks for the lowest layer: the edge's dynacast stops asking the origin for the
    // others, and only that layer crosses.
    let peer = w.nodes[carol].peer;
    let track = hop.edge_track;
    w.h.request(|reply| Command::SetVideoPreference {
        peer,
        track,
        preference: crate::VideoPreference {
            quality: crate::Quality::Low,
            max_size: None,
        },
        reply,
    })
    .expect("preference set");
    hop.run_for(&mut w, 8 * SECOND);
    let last = w.now() - 2 * SECOND;
    assert_eq!(
        hop.layers_since(last),
        vec![0],
        "only the layer carol wants crosses"
    );
    assert_eq!(w.video(carol).layer(), Some(0));
    assert_eq!(w.video(carol).undecodable, 0);
    let frames = w.video(carol).frames_of(source, last, w.now());
    assert!(frames >= 40, "{frames} frames in 2 s on the lowest layer");

    // Alice leaves: the origin's relay hears the track end; the edge unpublishes it.
    let (ingress, track) = (hop.ingress, hop.edge_track);
    w.h.core
        .handle_command(w.now(), Command::RelayUnpublish { id: ingress, track });
    w.run_for(SECOND);
    assert!(
        w.h.shared.graph.get(track).is_none(),
        "the relayed track is gone from the edge's graph"
    );
}

/// Where the layering extension's data starts in a relayed packet (walking its two-byte
/// header extensions; searching for its bytes could match a timestamp).
fn layering_extension(rtp: &[u8]) -> Option<usize> {
    let csrcs = usize::from(rtp.first()? & 0x0f);
    let start = 12 + 4 * csrcs;
    let words = u16::from_be_bytes([*rtp.get(start + 2)?, *rtp.get(start + 3)?]);
    let end = start + 4 + 4 * usize::from(words);
    let mut at = start + 4;
    while at + 2 <= end {
        let (id, len) = (*rtp.get(at)?, usize::from(*rtp.get(at + 1)?));
        if id == 0 {
            at += 1;
            continue;
        }
        if id == 4 {
            return Some(at + 2);
        }
        at += 2 + len;
    }
    None
}

/// Relay input is hostile input: packets that do not read, of a payload type or layer the
/// track does not have, or for a track the relay did not publish, are refused and counted,
/// and the viewers of the relayed track see nothing of them.
#[test]
fn malformed_relayed_packets_are_refused_and_counted() {
    let (mut w, alice, _bob) = call(74);
    let mut hop = hop(&mut w, alice);
    let carol = w.subscriber(vec![hop.edge_track]);
    hop.run_for(&mut w, 3 * SECOND);
    // A good packet to spoil, from the origin.
    let (egress, track) = (hop.egress, hop.origin_track);
    w.h.core.handle_command(
        w.now(),
        Command::RelayKeyframe {
            id: egress,
            track,
            layer: 0,
        },
    );
    w.run_for(Duration::from_millis(100));
    let good = hop.packets.try_recv().expect("a packet").rtp;
    let mut wrong_pt = good.clone();
    wrong_pt[1] = (wrong_pt[1] & 0x80) | 20; // unassigned: no payload type of the track
    let mut wrong_layer = good.clone();
    let at = layering_extension(&good).expect("the layering extension");
    wrong_layer[at + 3] = 7;
    let edge = hop.edge_track;
    let unknown = crate::ids::TrackId(u64::MAX);
    let frames_before = w.video(carol).decoded.len();
    let bad = [
        ("empty", edge, Vec::new()),
        ("not RTP", edge, vec![0xff; 40]),
        ("cut in its extensions", edge, good[..20].to_vec()),
        ("a payload type the track lacks", edge, wrong_pt),
        ("a layer the track lacks", edge, wrong_layer),
        ("an unknown track", unknown, good.clone()),
    ];
    for (what, track, packet) in bad {
        let refused_before = w.h.counters().relay_packets_refused;
        w.h.core.handle_command(
            w.now(),
            Command::RelayPackets {
                id: hop.ingress,
                packets: vec![(track, packet)],
            },
        );
        assert_eq!(
            w.h.counters().relay_packets_refused - refused_before,
            1,
            "refused: {what}"
        );
    }
    hop.run_for(&mut w, 2 * SECOND);
    assert!(
        w.video(carol).decoded.len() > frames_before + 30,
        "carol's video goes on"
    );
    assert_eq!(w.video(carol).undecodable, 0);
    assert_eq!(
        w.video(carol).untagged,
        0,
        "nothing of the garbage reached carol"
    );
}

/// Loss on the link (one packet in 40) is repaired from the origin's recent packets: the
/// viewer at the edge decodes every frame, and the publisher is not asked for a keyframe.
#[test]
fn loss_on_the_link_is_repaired_without_asking_the_publisher_for_a_keyframe() {
    let (mut w, alice, _bob) = call(75);
    let mut hop = hop(&mut w, alice);
    let carol = w.subscriber(vec![hop.edge_track]);
    // Until carol's estimate has taken her to the top layer (each step up is a keyframe).
    hop.run_for(&mut w, 6 * SECOND);
    assert_eq!(w.video(carol).layer(), Some(2));
    let requests: u32 = w.encoder(alice).keyframe_requests.iter().sum();
    let repaired = w.h.counters().relay_packets_repaired;
    let undecodable = w.video(carol).undecodable;
    let from = w.now();
    hop.lose_one_in = Some(40);
    hop.run_for(&mut w, 6 * SECOND);
    let now = w.now();
    // A packet lost in the last milliseconds is noticed (by the next one of its layer) and
    // repaired after them.
    hop.lose_one_in = None;
    hop.run_for(&mut w, SECOND / 2);
    assert!(hop.lost >= 20, "the link lost {} packets", hop.lost);
    let repaired = w.h.counters().relay_packets_repaired - repaired;
    assert_eq!(
        repaired as usize, hop.lost,
        "every lost packet was sent again"
    );
    assert_eq!(
        w.video(carol).undecodable,
        undecodable,
        "every frame decodes"
    );
    let freeze = w.video(carol).longest_freeze(from, now);
    assert!(freeze < Duration::from_millis(150), "froze for {freeze:?}");
    let after: u32 = w.encoder(alice).keyframe_requests.iter().sum();
    assert_eq!(after, requests, "no keyframe was asked of the publisher");
    assert_eq!(
        w.video(carol).layer(),
        Some(2),
        "carol stays on the top layer"
    );
}

/// The room's administrator mutes a relayed track at the node that receives it: its viewers
/// there get nothing more of it; unmuted, they resume on a keyframe asked of the origin.
#[test]
fn a_relayed_track_muted_at_the_edge_stops_there_and_resumes_on_a_keyframe() {
    let (mut w, alice, _bob) = call(79);
    let mut hop = hop(&mut w, alice);
    let carol = w.subscriber(vec![hop.edge_track]);
    hop.run_for(&mut w, 3 * SECOND);
    let source = w.encoder(alice).source;
    let track = hop.edge_track;
    w.h.request(|reply| Command::SetTrackMuted {
        track,
        muted: true,
        reply,
    })
    .expect("the relayed track is muted at the edge");
    hop.run_for(&mut w, SECOND);
    let muted_at = w.now();
    hop.run_for(&mut w, 2 * SECOND);
    let frames = w.video(carol).frames_of(source, muted_at, w.now());
    assert_eq!(frames, 0, "nothing reaches carol while muted");

    let keyframes = hop.keyframes;
    w.h.request(|reply| Command::SetTrackMuted {
        track,
        muted: false,
        reply,
    })
    .expect("unmuted");
    let unmuted_at = w.now();
    hop.run_for(&mut w, 3 * SECOND);
    assert!(
        hop.keyframes > keyframes,
        "a keyframe is asked of the origin at once"
    );
    let frames = w.video(carol).frames_of(source, unmuted_at, w.now());
    assert!(frames >= 40, "carol plays again: {frames} frames in 3 s");
    assert_eq!(w.video(carol).undecodable, 0);
}
