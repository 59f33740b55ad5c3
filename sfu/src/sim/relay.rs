//! The origin's half of a relay between nodes, on the virtual clock: a relay egress in a
//! call's forwarding graph carries exactly the layers asked for, as the publisher sent them
//! (decodable frame by frame, with no gap in any layer's sequence numbers), passes keyframe
//! requests on to the publisher, and hears when the track ends.

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
    mpsc::UnboundedReceiver<RelayEvent>,
) {
    let (packets_tx, packets) = mpsc::channel(100_000);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (id, _) = w.h.place();
    let room = w.h.room;
    w.h.request(|reply| Command::AddRelayEgress {
        id,
        room,
        packets: packets_tx,
        events: events_tx,
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
