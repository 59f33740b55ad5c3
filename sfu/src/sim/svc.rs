//! Scalable VP9 (SVC, one SSRC for every layer, as Chromium sends with
//! `scalabilityMode: 'L3T3_KEY'`) on the virtual clock: each viewer gets the spatial layers up
//! to the one it asked for, with consecutive sequence numbers, every picture, and the marker
//! bit on the last packet of its highest layer; it steps down at the next picture and up at a
//! keyframe.

use std::time::Duration;

use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::ExtensionValues;

use super::client::ReceivedRtp;
use super::world::{NodeId, World};
use crate::command::Command;
use crate::dependency_descriptor::{self, EXTENSION_ID, RawDescriptor, l3t3_key_descriptor};
use crate::event::PeerEvent;
use crate::ids::TrackId;
use crate::keyframe::vp9_layers;
use crate::layer_choice::{Quality, VideoPreference};

/// One picture every 33 ms (30 fps, 90 kHz clock).
const PICTURE: Duration = Duration::from_millis(33);
const PICTURE_TICKS: u32 = 2970;
/// Spatial layers, and the keyframe period in pictures.
const LAYERS: u8 = 3;
const KEYFRAME_EVERY: u64 = 30;
/// Packets per spatial layer's frame.
const PACKETS_PER_FRAME: usize = 2;

/// A synthetic L3T3_KEY encoder: the scenario writes its packets through a str0m sender.
struct Vp9Svc {
    picture: u64,
    seq: u64,
    ts: u32,
}

impl Vp9Svc {
    fn new() -> Self {
        Self {
            picture: 0,
            seq: 1000,
            ts: 0,
        }
    }

    /// Sends one picture (every spatial layer) from `id`, then lets a picture's time pass.
    fn send_picture(&mut self, w: &mut World, id: NodeId, pt: u8) {
        let key = self.picture.is_multiple_of(KEYFRAME_EVERY);
        let tid = [0u8, 2, 1, 2][(self.picture % 4) as usize];
        for spatial in 0..LAYERS {
            for part in 0..PACKETS_PER_FRAME {
                let start = part == 0;
                let end = part + 1 == PACKETS_PER_FRAME;
                let structure = key && spatial == 0 && start;
                let mut payload = vec![
                    0xa0 | u8::from(!key) << 6
                        | u8::from(start) << 3
                        | u8::from(end) << 2
                        | u8::from(structure) << 1,
                    0x80 | ((self.picture >> 8) as u8 & 0x7f),
                    self.picture as u8,
                    tid << 5 | spatial << 1 | u8::from(key && spatial > 0),
                    (self.picture / 4) as u8,
                ];
                if structure {
                    // N_S = 2, Y: 320x180, 640x360, 1280x720.
                    payload.push(0x50);
                    for (width, height) in [(320u16, 180u16), (640, 360), (1280, 720)] {
                        payload.extend(width.to_be_bytes());
                        payload.extend(height.to_be_bytes());
                    }
                }
                // Recognisable media: the picture and the layer.
                payload.extend([spatial; 40]);
                let marker = end && spatial + 1 == LAYERS;
                w.send_rtp(id, (pt, self.seq, self.ts), marker, payload);
                self.seq += 1;
            }
        }
        self.picture += 1;
        self.ts = self.ts.wrapping_add(PICTURE_TICKS);
        w.run_for(PICTURE);
    }
}

/// What one received packet is: its picture number, spatial layer and frame end, and whether
/// its picture is a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    picture: u16,
    spatial: u8,
    frame_end: bool,
    key: bool,
    marker: bool,
    seq: u64,
}

fn seen(p: &ReceivedRtp) -> Option<Seen> {
    let layers = vp9_layers(&p.payload)?;
    Some(Seen {
        picture: u16::from_be_bytes([p.payload[1] & 0x7f, p.payload[2]]),
        spatial: layers.spatial,
        frame_end: layers.frame_end,
        key: p.payload[0] & 0x40 == 0,
        marker: p.marker,
        seq: p.seq,
    })
}

/// The VP9 packets viewer `id` received.
fn received(w: &World, id: NodeId) -> Vec<Seen> {
    w.other_received(id)
        .iter()
        .filter_map(|(_, p)| seen(p))
        .collect()
}

fn prefer(w: &mut World, viewer: NodeId, track: TrackId, quality: Quality) {
    let peer = w.nodes[viewer].peer;
    w.h.request(|reply| Command::SetVideoPreference {
        peer,
        track,
        preference: VideoPreference {
            quality,
            max_size: None,
        },
        reply,
    })
    .expect("preference set");
}

/// Every packet has the number after the one before, and the marker bit exactly on the last
/// packet of each picture's highest layer received.
fn assert_well_formed(packets: &[Seen], what: &str) {
    for pair in packets.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "{what}: a gap at {pair:?}");
        let picture_ends = pair[1].picture != pair[0].picture;
        assert_eq!(
            pair[0].marker, picture_ends,
            "{what}: marker bit at {:?} (next {:?})",
            pair[0], pair[1]
        );
    }
}

/// The highest spatial layer of each picture received.
fn top_layers(packets: &[Seen]) -> Vec<(u16, u8)> {
    let mut tops: Vec<(u16, u8)> = Vec::new();
    for p in packets {
        match tops.last_mut() {
            Some((picture, top)) if *picture == p.picture => *top = (*top).max(p.spatial),
            _ => tops.push((p.picture, p.spatial)),
        }
    }
    tops
}

/// A VP9 publisher with its first picture sent (which publishes its track): the node, its
/// payload type, its encoder and the track.
fn vp9_publisher(w: &mut World) -> (NodeId, u8, Vp9Svc, TrackId) {
    let alice = w.sender(MediaKind::Video, |c| c.clear_codecs().enable_vp9(true));
    let pt = w.nodes[alice]
        .client
        .pt(Codec::Vp9)
        .expect("the server answers VP9");
    let mut encoder = Vp9Svc::new();
    encoder.send_picture(w, alice, pt);
    let track = *w.nodes[alice]
        .tracks
        .first()
        .expect("the track is published");
    (alice, pt, encoder, track)
}

/// A subscriber to `track` that receives VP9, not yet connected.
fn vp9_viewer(w: &mut World, track: TrackId) -> NodeId {
    w.add_subscriber_with(vec![track], |c| c.clear_codecs().enable_vp9(true))
}

#[test]
fn each_viewer_gets_the_spatial_layers_it_asked_for_and_switches_at_the_right_pictures() {
    let mut w = World::new(91);
    let (alice, pt, mut encoder, track) = vp9_publisher(&mut w);
    let bob = vp9_viewer(&mut w, track);
    let carol = vp9_viewer(&mut w, track);
    prefer(&mut w, bob, track, Quality::Low);
    for _ in 0..90 {
        encoder.send_picture(&mut w, alice, pt);
    }
    let low = received(&w, bob);
    let all = received(&w, carol);
    assert!(low.len() > 60, "bob got {} packets", low.len());
    assert!(
        low.iter().all(|p| p.spatial == 0),
        "bob asked for the lowest layer"
    );
    assert!(
        all.iter().filter(|p| p.spatial == 2).count() > 60,
        "carol gets the top layer"
    );
    assert_well_formed(&low, "bob on the lowest layer");
    assert_well_formed(&all, "carol on every layer");
    let pictures = |packets: &[Seen]| top_layers(packets).len();
    assert_eq!(
        pictures(&low),
        pictures(
            &all.iter()
                .filter(|p| p.picture >= low[0].picture)
                .copied()
                .collect::<Vec<_>>()
        ),
        "bob gets every picture carol gets from his first on"
    );
    let bob_peer = w.nodes[bob].peer;
    assert!(
        w.events.iter().any(|(_, e)| matches!(e,
            PeerEvent::LayerState { peer, layers: 3, current: Some(0), .. } if *peer == bob_peer)),
        "bob is told he receives layer 0 of three"
    );
    let route = w.h.shared.graph.get(track).expect("published");
    assert_eq!(
        route.layer_count(),
        3,
        "layers from the scalability structure"
    );
    assert_eq!(
        route.layer_sizes()[..3],
        [(320, 180), (640, 360), (1280, 720)]
    );

    // Up: from the next keyframe on, every layer.
    let before = low.len();
    prefer(&mut w, bob, track, Quality::High);
    for _ in 0..(KEYFRAME_EVERY + 10) {
        encoder.send_picture(&mut w, alice, pt);
    }
    let up = received(&w, bob);
    let after: Vec<Seen> = up[before..].to_vec();
    let first_top = after
        .iter()
        .position(|p| p.spatial == 2)
        .expect("bob goes up");
    assert!(
        after[first_top].key,
        "the first top-layer packet is a keyframe's"
    );
    assert_well_formed(&up, "bob going up");

    // Down: at the next picture, and nobody asks the publisher for a keyframe (which every
    // viewer of the stream would pay for). Not even after the keyframe-retry period.
    let before = up.len();
    let asked = w.nodes[alice].client.keyframe_requests.len();
    prefer(&mut w, bob, track, Quality::Medium);
    for _ in 0..5 {
        encoder.send_picture(&mut w, alice, pt);
    }
    w.run_for(2 * Duration::from_secs(1));
    assert_eq!(
        w.nodes[alice].client.keyframe_requests.len(),
        asked,
        "a step down asks for no keyframe"
    );
    let down = received(&w, bob);
    let tops = top_layers(&down[before..]);
    assert!(
        tops.iter().skip(1).all(|(_, top)| *top == 1),
        "bob steps down to the middle layer at once: {tops:?}"
    );
    assert!(tops.iter().all(|(_, top)| *top != 0));
    assert_well_formed(&down, "bob going down");
}

/// A viewer that joins a scalable stream soon after its keyframe starts from it (the track
/// owner's start cache, which holds the stream's one group of pictures): it gets that keyframe
/// picture and every picture since, well formed, and the publisher is asked for nothing.
#[test]
fn a_viewer_joining_a_scalable_stream_soon_after_its_keyframe_starts_from_it() {
    let mut w = World::new(93);
    let (alice, pt, mut encoder, track) = vp9_publisher(&mut w);
    let carol = vp9_viewer(&mut w, track);
    // Carol watches through the next keyframe (picture 30) and a few pictures more.
    while encoder.picture < KEYFRAME_EVERY + 3 {
        encoder.send_picture(&mut w, alice, pt);
    }
    assert!(
        received(&w, carol).iter().any(|p| p.key),
        "carol got a keyframe"
    );
    let asked = w.nodes[alice].client.keyframe_requests.len();
    let bob = vp9_viewer(&mut w, track);
    for _ in 0..20 {
        encoder.send_picture(&mut w, alice, pt);
    }
    let got = received(&w, bob);
    let first = got.first().expect("bob gets the stream");
    assert_eq!(
        (first.picture, first.spatial, first.key),
        (KEYFRAME_EVERY as u16, 0, true),
        "bob starts on the latest keyframe, replayed"
    );
    assert_well_formed(&got, "bob from the replayed keyframe on");
    let pictures = top_layers(&got);
    assert_eq!(
        pictures.len(),
        usize::from(pictures.last().map_or(0, |p| p.0) - first.picture) + 1,
        "every picture from the keyframe on: {pictures:?}"
    );
    assert_eq!(
        w.nodes[alice].client.keyframe_requests.len(),
        asked,
        "bob's join asked the publisher for a keyframe"
    );
}

/// A synthetic AV1 L3T3 encoder whose payloads say nothing (as if encrypted end to end): its
/// layers, frame boundaries and keyframes are only in its Dependency Descriptors.
struct Av1Svc {
    picture: u64,
    seq: u64,
    ts: u32,
}

impl Av1Svc {
    fn new() -> Self {
        Self {
            picture: 0,
            seq: 5000,
            ts: 0,
        }
    }

    fn send_picture(&mut self, w: &mut World, id: NodeId, pt: u8) {
        let key = self.picture.is_multiple_of(KEYFRAME_EVERY);
        let tid = if key {
            0
        } else {
            [0u8, 2, 1, 2][(self.picture % 4) as usize]
        };
        for spatial in 0..LAYERS {
            for part in 0..PACKETS_PER_FRAME {
                let start = part == 0;
                let end = part + 1 == PACKETS_PER_FRAME;
                let frame_number = (self.picture * u64::from(LAYERS) + u64::from(spatial)) as u16;
                let structure = key && spatial == 0 && start;
                let descriptor =
                    l3t3_key_descriptor(start, end, spatial, tid, frame_number, structure);
                // An aggregation header that starts no coded video sequence, then what the
                // scenario reads back: picture, layer, keyframe, frame end.
                let mut payload = vec![
                    0x00,
                    (self.picture >> 8) as u8,
                    self.picture as u8,
                    spatial,
                    u8::from(key),
                    u8::from(end),
                ];
                payload.extend([0xe5; 40]);
                let mut ext = ExtensionValues::default();
                ext.user_values
                    .set(RawDescriptor(descriptor.into_boxed_slice()));
                let marker = end && spatial + 1 == LAYERS;
                w.send_rtp_with(id, (pt, self.seq, self.ts), marker, payload, ext);
                self.seq += 1;
            }
        }
        self.picture += 1;
        self.ts = self.ts.wrapping_add(PICTURE_TICKS);
        w.run_for(PICTURE);
    }
}

/// The AV1 packets viewer `id` received, with their descriptors.
fn received_av1(w: &World, id: NodeId) -> Vec<(Seen, Vec<u8>)> {
    w.other_received(id)
        .iter()
        .filter_map(|(_, p)| {
            let seen = Seen {
                picture: u16::from_be_bytes([*p.payload.get(1)?, *p.payload.get(2)?]),
                spatial: *p.payload.get(3)?,
                key: *p.payload.get(4)? == 1,
                frame_end: *p.payload.get(5)? == 1,
                marker: p.marker,
                seq: p.seq,
            };
            Some((seen, p.descriptor.clone()?))
        })
        .collect()
}

#[test]
fn av1_layers_come_from_the_dependency_descriptor_and_each_viewer_is_told_its_own() {
    let mut w = World::new(92);
    let av1 = |c: str0m::RtcConfig| {
        c.clear_codecs()
            .enable_av1(true)
            .set_extension(EXTENSION_ID, dependency_descriptor::extension())
    };
    let alice = w.sender(MediaKind::Video, av1);
    let pt = w.nodes[alice]
        .client
        .pt(Codec::Av1)
        .expect("the server answers AV1");
    let mut encoder = Av1Svc::new();
    encoder.send_picture(&mut w, alice, pt);
    let track = *w.nodes[alice]
        .tracks
        .first()
        .expect("the track is published");
    let bob = w.add_subscriber_with(vec![track], av1);
    let carol = w.add_subscriber_with(vec![track], av1);
    prefer(&mut w, bob, track, Quality::Low);
    for _ in 0..90 {
        encoder.send_picture(&mut w, alice, pt);
    }
    let route = w.h.shared.graph.get(track).expect("published");
    assert_eq!(route.layer_count(), 3, "layers from the structure");
    assert_eq!(
        route.layer_sizes()[..3],
        [(320, 180), (640, 360), (1280, 720)]
    );
    let low = received_av1(&w, bob);
    let all = received_av1(&w, carol);
    assert!(low.len() > 60, "bob got {} packets", low.len());
    assert!(low.iter().all(|(p, _)| p.spatial == 0), "bob asked for low");
    assert!(
        all.iter().filter(|(p, _)| p.spatial == 2).count() > 60,
        "carol gets the top layer"
    );
    let seen = |packets: &[(Seen, Vec<u8>)]| packets.iter().map(|(p, _)| *p).collect::<Vec<_>>();
    assert_well_formed(&seen(&low), "bob on the lowest layer");
    assert_well_formed(&seen(&all), "carol on every layer");

    // Carol's descriptors are the sender's; bob's say he can decode the S0 targets only.
    let (first, structure) = low
        .first()
        .map(|(p, d)| (*p, dependency_descriptor::read(d, None)))
        .expect("bob got packets");
    assert!(first.key, "bob starts at a keyframe");
    let structure = structure
        .ok()
        .and_then(|d| d.attached)
        .expect("bob's first packet carries the structure");
    for (p, d) in &low {
        let read = dependency_descriptor::read(d, Some(&structure)).expect("bob's descriptor");
        assert_eq!(read.active, Some(0b111), "bob is told S0 only at {p:?}");
        assert_eq!(read.spatial, 0);
    }
    for (p, d) in &all {
        let read = dependency_descriptor::read(d, Some(&structure)).expect("carol's descriptor");
        assert_eq!(
            read.spatial, p.spatial,
            "carol's descriptors are the sender's"
        );
        assert!(read.active.is_none() || read.active == Some(0x1ff));
    }

    // Up at a keyframe, found from the descriptor alone (once the estimate carries the top
    // layer: bob's grew on the lowest layer alone).
    let before = low.len();
    prefer(&mut w, bob, track, Quality::High);
    for _ in 0..(3 * KEYFRAME_EVERY + 10) {
        encoder.send_picture(&mut w, alice, pt);
    }
    let up = received_av1(&w, bob);
    let (first_top, _) = up[before..]
        .iter()
        .find(|(p, _)| p.spatial == 2)
        .expect("bob goes up");
    assert!(first_top.key, "the first top-layer packet is a keyframe's");
    assert_well_formed(&seen(&up), "bob going up");
    let told = up[before..]
        .iter()
        .find(|(p, _)| p.picture == first_top.picture)
        .and_then(|(_, d)| dependency_descriptor::read(d, Some(&structure)).ok())
        .and_then(|d| d.active);
    assert_eq!(
        told,
        Some(0x1ff),
        "the keyframe that takes bob up tells him every target"
    );
}
