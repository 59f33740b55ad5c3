//! Scenarios on the virtual clock: a real worker, real str0m clients, a simulated network.
//! Each asserts what a viewer would see (frames decoded, layers, freezes) or what the
//! server must do (requests, closes), and runs in well under a second of real time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::media::KeyframeRequestKind;

use super::net::{Bursts, PathConfig, Stalls};
use super::raw::stun_request;
use super::vp8::CHROMIUM_720P;
use super::worker::SERVER;
use super::world::{NodeId, PublisherOptions, World, call};
use str0m::channel::ChannelConfig;

use crate::command::Command;
use crate::event::{CloseReason, PeerEvent};
use crate::ids::{PeerId, TrackId};
use crate::layer_choice::{Quality, VideoPreference};

const SECOND: Duration = Duration::from_secs(1);

/// The picture IDs the viewer decoded follow each other (mod 2^15) across layer switches:
/// the server rewrites them into one sequence, as a decoder expects. At a switch one picture
/// may be missing: the old layer's frame under way when the new layer's keyframe arrived
/// (same capture time) is cut, and the keyframe replaces it.
fn assert_continuous_picture_ids(w: &World, viewer: NodeId) {
    for pair in w.video(viewer).decoded.windows(2) {
        let step = pair[1].picture_id.wrapping_sub(pair[0].picture_id) & 0x7fff;
        let switch = pair[0].layer != pair[1].layer;
        assert!(
            step == 1 || (switch && step == 2),
            "picture ID {} then {} at {:.2}s (layers {} -> {})",
            pair[0].picture_id,
            pair[1].picture_id,
            w.t(pair[1].at),
            pair[0].layer,
            pair[1].layer
        );
    }
}

/// The viewer decoded a frame at least every `max_ms` between `from` and `to`.
fn assert_smooth(w: &World, viewer: NodeId, from: Instant, to: Instant, max_ms: u64) {
    let freeze = w.video(viewer).longest_freeze(from, to);
    assert!(
        freeze < Duration::from_millis(max_ms),
        "viewer {viewer} froze for {freeze:?} between {:.2}s and {:.2}s",
        w.t(from),
        w.t(to)
    );
}

/// Every layer switch the viewer saw landed on a keyframe of the new layer.
fn assert_switches_on_keyframes(w: &World, viewer: NodeId) {
    for (at, from, to, key) in w.video(viewer).switches() {
        assert!(
            key,
            "switch {from} -> {to} at {:.2}s started on a delta frame",
            w.t(at)
        );
    }
}

#[test]
fn a_viewer_on_a_clean_path_gets_the_top_layer_and_decodes_every_frame() {
    let (mut w, _, bob) = call(1);
    let joined = w.now();
    w.run_for(10 * SECOND);
    let video = w.video(bob);
    let first = video.decoded.first().expect("nothing decoded");
    assert!(first.key, "the first decoded frame is a keyframe");
    assert!(
        first.at - joined < Duration::from_millis(300),
        "first frame after {:?}",
        first.at - joined
    );
    assert_eq!(video.undecodable, 0);
    assert_switches_on_keyframes(&w, bob);
    assert_continuous_picture_ids(&w, bob);
    let end = w.now();
    assert_eq!(
        video.layer(),
        Some(2),
        "on the top layer: {:?}",
        video.switches()
    );
    // Started on what the initial estimate allows, up as soon as the first probes answer
    // (issue 14: a start-up hold kept new viewers on the middle layer for 2-3 s).
    let top_at = video
        .decoded
        .iter()
        .find(|f| f.layer == 2)
        .map(|f| f.at - joined);
    assert!(
        top_at.is_some_and(|t| t < Duration::from_millis(1500)),
        "top layer after {top_at:?}: {:?}",
        video.switches()
    );
    // ... and stays there: the starting guess of its estimate (1 Mbit/s, below the top
    // layer) does not take it down before the estimator has measured the link.
    assert!(
        video.switches().iter().all(|s| s.1 != 2),
        "left the top layer: {:?}",
        video.switches()
    );
    assert_smooth(&w, bob, end - 5 * SECOND, end, 100);
    let frames = video.frames_per_layer(end - 5 * SECOND, end);
    assert!(
        frames[2] >= 145,
        "30 frames a second on the top layer: {frames:?}"
    );
}

/// The allocator under real TWCC feedback: a viewer's downlink capped at 400 kbit/s gets
/// the lowest layer (150 kbit/s; the middle one needs 500), every switch on a keyframe; when
/// the cap lifts it climbs back to the top.
#[test]
fn a_capped_viewer_steps_down_to_the_layer_that_fits_and_climbs_back() {
    let (mut w, _, bob) = call(2);
    w.run_for(5 * SECOND);
    assert_eq!(w.video(bob).layer(), Some(2));
    let on_layers = |w: &World| {
        let c = w.h.counters();
        [c.on_layer_0, c.on_layer_1, c.on_layer_2, c.on_layer_3]
    };
    assert_eq!(on_layers(&w), [0, 0, 1, 0], "the layer gauges follow");
    w.nodes[bob].down.config = PathConfig::limited(400_000);
    let capped = w.now();
    w.run_for(20 * SECOND);
    let end = w.now();
    let video = w.video(bob);
    assert_eq!(video.layer(), Some(0), "switches: {:?}", video.switches());
    assert_eq!(on_layers(&w), [1, 0, 0, 0]);
    // Straight to the layer that fits, not through the middle one (whose keyframe would
    // queue behind the top layer's packets in the saturated link).
    let after_cap: Vec<(u8, u8)> = video
        .switches()
        .iter()
        .filter(|s| s.0 > capped)
        .map(|s| (s.1, s.2))
        .collect();
    assert_eq!(after_cap, [(2, 0)]);
    let frames = video.frames_per_layer(end - 5 * SECOND, end);
    assert!(frames[0] >= 100, "the lowest layer plays: {frames:?}");
    assert_smooth(&w, bob, end - 5 * SECOND, end, 500);
    w.nodes[bob].down.config = PathConfig::default();
    let lifted = w.now();
    w.run_until(30 * SECOND, |w| w.video(bob).layer() == Some(2));
    assert_eq!(w.video(bob).layer(), Some(2), "back on the top layer");
    // Issue 14's bound is 15 s; here, with no other load, 4.1 s (10.8 s before the estimator
    // restart probed for the whole demand and the probed estimate was climbed without a hold).
    let took = w.now() - lifted;
    assert!(
        took <= 7 * SECOND,
        "back on the top layer after {took:?}: {:?}",
        w.video(bob).switches()
    );
    assert_switches_on_keyframes(&w, bob);
}

/// A keyframe request lost on the way to the publisher is sent again: a viewer who joins
/// while the publisher's downlink is cut sees video soon after it is back.
#[test]
fn a_lost_keyframe_request_is_retried() {
    let mut w = World::new(3);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    w.run_for(SECOND);
    w.nodes[alice].down.config.down = true;
    let bob = w.subscriber(vec![track]);
    w.run_for(2 * SECOND);
    assert!(
        w.video(bob).decoded.is_empty(),
        "no keyframe can have been asked for"
    );
    w.nodes[alice].down.config.down = false;
    let back = w.now();
    w.run_until(5 * SECOND, |w| !w.video(bob).decoded.is_empty());
    let first = w
        .video(bob)
        .decoded
        .first()
        .expect("no video after the path came back");
    assert!(
        first.at - back < 1500 * Duration::from_millis(1),
        "first frame {:?} after the path came back",
        first.at - back
    );
}

/// A viewer joining soon after a keyframe starts from it: the track's owner sends it that
/// keyframe and every packet since (its start cache), so it decodes at once, every frame, up
/// to the live edge, and the publisher is not asked for another keyframe. A viewer joining
/// later, when that keyframe is old, gets one asked for as before.
#[test]
fn a_viewer_joining_soon_after_a_keyframe_starts_from_it_without_a_request() {
    let mut w = World::new(31);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    w.run_for(2 * SECOND);
    let first = w.subscriber(vec![track]);
    w.run_until(2 * SECOND, |w| !w.video(first).decoded.is_empty());
    let asked = |w: &mut World| w.encoder(alice).keyframe_requests.iter().sum::<u32>();
    let requests = asked(&mut w);

    let joined = w.now();
    let second = w.subscriber(vec![track]);
    w.run_for(3 * SECOND);
    assert_eq!(
        asked(&mut w),
        requests,
        "the second viewer's join asked the publisher for a keyframe"
    );
    let video = w.video(second);
    let start = video
        .decoded
        .first()
        .expect("the second viewer sees nothing");
    assert!(start.key, "it starts on a keyframe");
    let key = w.video(first).decoded.first().map(|f| (f.layer, f.frame));
    assert_eq!(
        Some((start.layer, start.frame)),
        key,
        "the first viewer's keyframe, replayed"
    );
    assert!(
        start.at - joined < Duration::from_millis(150),
        "first frame {:?} after the join",
        start.at - joined
    );
    assert_eq!(video.undecodable, 0, "every replayed frame decodes");
    assert_continuous_picture_ids(&w, second);
    let end = w.now();
    assert_smooth(&w, second, start.at, end, 100);

    // Long after that keyframe: the owner asks for one at the join (not the viewer's retry
    // a second later).
    let joined = w.now();
    let third = w.subscriber(vec![track]);
    w.run_for(2 * SECOND);
    assert!(
        asked(&mut w) > requests,
        "the third viewer's join asked for no keyframe"
    );
    let start = w
        .video(third)
        .decoded
        .first()
        .expect("the third viewer sees nothing");
    assert!(
        start.key && start.at - joined < Duration::from_millis(300),
        "the third viewer's first frame {:?} after its join",
        start.at - joined
    );
    assert_eq!(w.video(third).undecodable, 0);
}

/// Dynacast: layers nobody receives are paused at the publisher, and come back (starting
/// with a keyframe) when a viewer wants them.
#[test]
fn dynacast_pauses_unwanted_layers_and_restarts_them_on_demand() {
    let (mut w, alice, bob) = call(4);
    let track = w.video_track(alice);
    let peer = w.nodes[bob].peer;
    let low = VideoPreference {
        quality: Quality::Low,
        max_size: None,
    };
    w.h.request(|reply| Command::SetVideoPreference {
        peer,
        track,
        preference: low,
        reply,
    })
    .expect("preference set");
    w.run_until(10 * SECOND, |w| {
        let active = w.encoder_active(alice);
        active == [true, false, false]
    });
    assert_eq!(
        w.encoder_active(alice),
        [true, false, false],
        "upper layers paused"
    );
    assert_eq!(w.video(bob).layer(), Some(0));
    let high = VideoPreference {
        quality: Quality::High,
        max_size: None,
    };
    w.h.request(|reply| Command::SetVideoPreference {
        peer,
        track,
        preference: high,
        reply,
    })
    .expect("preference set");
    w.run_until(10 * SECOND, |w| w.video(bob).layer() == Some(2));
    assert_eq!(w.encoder_active(alice), [true, true, true]);
    assert_eq!(w.video(bob).layer(), Some(2), "the top layer is back");
    assert_switches_on_keyframes(&w, bob);
    assert_continuous_picture_ids(&w, bob);
    assert_eq!(w.video(bob).undecodable, 0);
}

/// A muted track is not forwarded; after unmute the viewer decodes again from a keyframe,
/// never from a delta frame whose references it missed.
#[test]
fn a_muted_track_stops_and_resumes_on_a_keyframe() {
    let (mut w, alice, bob) = call(5);
    let track = w.video_track(alice);
    w.run_for(3 * SECOND);
    w.h.request(|reply| Command::SetTrackMuted {
        track,
        muted: true,
        reply,
    })
    .expect("muted");
    w.run_for(200 * Duration::from_millis(1));
    let packets = w.video(bob).packets;
    w.run_for(3 * SECOND);
    assert_eq!(
        w.video(bob).packets,
        packets,
        "a muted track is not forwarded"
    );
    let decoded = w.video(bob).decoded.len();
    w.h.request(|reply| Command::SetTrackMuted {
        track,
        muted: false,
        reply,
    })
    .expect("unmuted");
    let unmuted = w.now();
    w.run_for(2 * SECOND);
    let video = w.video(bob);
    let first = video
        .decoded
        .get(decoded)
        .expect("nothing decoded after unmute");
    assert!(first.key, "the first frame after unmute is a keyframe");
    assert!(
        first.at - unmuted < SECOND,
        "video back after {:?}",
        first.at - unmuted
    );
    assert_eq!(video.undecodable, 0, "no delta frame without its reference");
}

/// A viewer's network down for 8 s: the server keeps the peer, and video comes back soon
/// after the network does.
#[test]
fn an_eight_second_outage_keeps_the_peer_and_video_comes_back() {
    let (mut w, _, bob) = call(6);
    w.run_for(3 * SECOND);
    w.nodes[bob].up.config.down = true;
    w.nodes[bob].down.config.down = true;
    w.run_for(8 * SECOND);
    w.nodes[bob].up.config.down = false;
    w.nodes[bob].down.config.down = false;
    let back = w.now();
    w.run_for(5 * SECOND);
    assert_eq!(w.nodes[bob].closed, None, "the peer was closed");
    let video = w.video(bob);
    let next = video
        .decoded
        .iter()
        .find(|d| d.at > back)
        .expect("no video after the outage");
    assert!(
        next.at - back < 2 * SECOND,
        "video back after {:?}",
        next.at - back
    );
    let end = w.now();
    assert_smooth(&w, bob, end - 2 * SECOND, end, 200);
}

/// A client that vanishes without a word is closed once nothing has been heard from it for
/// 15 s (ICE-lite consent) plus the connect timeout, and not before.
#[test]
fn a_vanished_client_is_closed_after_the_silence_limit() {
    let (mut w, alice, bob) = call(7);
    w.run_for(2 * SECOND);
    w.nodes[bob].alive = false;
    w.nodes[bob].up.config.down = true;
    let gone = w.now();
    w.run_for(25 * SECOND);
    assert_eq!(w.nodes[bob].closed, None, "closed too early");
    w.run_until(10 * SECOND, |w| w.nodes[bob].closed.is_some());
    assert_eq!(w.nodes[bob].closed, Some(CloseReason::ConnectTimeout));
    let closed_at = w
        .events
        .iter()
        .find_map(|(at, e)| {
            matches!(e, PeerEvent::Closed { peer, .. } if *peer == w.nodes[bob].peer).then_some(*at)
        })
        .expect("a Closed event");
    assert!(
        closed_at - gone <= 31 * SECOND,
        "closed {:?} after the client vanished",
        closed_at - gone
    );
    assert_eq!(w.nodes[alice].closed, None, "the publisher is not affected");
}

/// A subscriber whose client never answers the offer is closed at the connect deadline.
#[test]
fn a_peer_that_never_connects_is_closed_at_the_connect_deadline() {
    let mut w = World::new(8);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    let start = w.now();
    let bob = w.silent_subscriber(vec![track]);
    w.run_until(20 * SECOND, |w| w.nodes[bob].closed.is_some());
    assert_eq!(w.nodes[bob].closed, Some(CloseReason::ConnectTimeout));
    let closed_at = w
        .events
        .iter()
        .find_map(|(at, e)| {
            matches!(e, PeerEvent::Closed { peer, .. } if *peer == w.nodes[bob].peer).then_some(*at)
        })
        .expect("a Closed event");
    let after = closed_at - start;
    assert!(
        (14 * SECOND..=16 * SECOND).contains(&after),
        "closed after {after:?}"
    );
}

/// 3% random loss on the publisher's uplink and the viewer's downlink: NACK and
/// retransmission repair it; the viewer decodes nearly every frame.
#[test]
fn random_loss_is_repaired_by_retransmission() {
    let (mut w, alice, bob) = call(9);
    w.run_for(3 * SECOND);
    w.nodes[alice].up.config.loss = 0.03;
    w.nodes[bob].down.config.loss = 0.03;
    w.nodes[alice].up.config.delay = 20 * Duration::from_millis(1);
    w.nodes[bob].down.config.delay = 20 * Duration::from_millis(1);
    let from = w.now();
    w.run_for(20 * SECOND);
    let end = w.now();
    let video = w.video(bob);
    let frames: u32 = video.frames_per_layer(from, end).iter().sum();
    assert!(
        frames >= 20 * 30 * 9 / 10,
        "{frames} frames decoded in 20 s"
    );
    assert_smooth(&w, bob, from, end, 1000);
}

/// An ICE restart while connected (the server's offer with new credentials): the viewer
/// barely notices.
#[test]
fn an_ice_restart_keeps_the_video() {
    let (mut w, _, bob) = call(10);
    w.run_for(3 * SECOND);
    let peer = w.nodes[bob].peer;
    let offers = w.nodes[bob].offers;
    w.h.request(|reply| Command::RestartIce { peer, reply })
        .expect("restart");
    let restarted = w.now();
    w.run_for(5 * SECOND);
    assert!(w.nodes[bob].offers > offers, "the restart is negotiated");
    assert_eq!(w.nodes[bob].closed, None);
    let end = w.now();
    assert_smooth(&w, bob, restarted, end, 300);
}

/// A requested quality caps the layer, and dynacast pauses what nobody needs above it.
#[test]
fn a_requested_quality_caps_the_layer() {
    let (mut w, alice, bob) = call(11);
    let track = w.video_track(alice);
    let peer = w.nodes[bob].peer;
    let medium = VideoPreference {
        quality: Quality::Medium,
        max_size: None,
    };
    w.h.request(|reply| Command::SetVideoPreference {
        peer,
        track,
        preference: medium,
        reply,
    })
    .expect("preference set");
    w.run_for(10 * SECOND);
    assert_eq!(w.video(bob).layer(), Some(1));
    assert_eq!(w.encoder_active(alice), [true, true, false]);
    assert_switches_on_keyframes(&w, bob);
    assert_continuous_picture_ids(&w, bob);
}

/// A downlink just wide enough for the top layer: the layer does not flap.
#[test]
fn a_link_at_a_layer_boundary_does_not_flap() {
    let (mut w, _, bob) = call(12);
    w.run_for(5 * SECOND);
    w.nodes[bob].down.config = PathConfig::limited(1_800_000);
    let from = w.now();
    w.run_for(40 * SECOND);
    let switches = w.video(bob).switches();
    let later: Vec<_> = switches.iter().filter(|s| s.0 > from).collect();
    assert!(
        later.len() <= 2,
        "{} switches in 40 s: {later:?}",
        later.len()
    );
}

/// Viewers joining at once: their keyframe requests reach the publisher as one or two.
#[test]
fn keyframe_requests_of_viewers_joining_together_are_coalesced() {
    let mut w = World::new(13);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    w.run_for(2 * SECOND);
    let before = w.encoder(alice).keyframe_requests.clone();
    let viewers = w.subscribers(8, vec![track]);
    w.run_for(2 * SECOND);
    let after = w.encoder(alice).keyframe_requests.clone();
    let requests: Vec<u32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    for v in viewers {
        assert!(!w.video(v).decoded.is_empty(), "viewer {v} sees nothing");
    }
    assert!(
        requests.iter().all(|n| *n <= 2),
        "keyframe requests per layer for 8 viewers: {requests:?}"
    );
}

/// A downlink narrower than the lowest layer: the viewer keeps the lowest layer at a lower
/// frame rate (upper temporal layers dropped, every forwarded frame decodable), and gets the
/// full rate back when the link widens.
///
/// Ignored: at 100-120 kbit/s the egress estimate freezes (at 195-690 kbit/s) and the viewer
/// decodes nothing. The cause is the harness's viewer, not the server: the viewer is a str0m
/// client, and str0m's transport-wide feedback (`TwccRecvRegister::build_report`) starts
/// each report at the first packet received since the last one, so packets lost between two
/// reports are never reported, neither received nor lost. At ~20 delivered packets a second
/// every report carries one packet: the server's estimator (measured with a patched str0m)
/// gets updates of one acknowledged packet and no loss, its delay and loss controllers hold,
/// and the estimate stays where it was. Chromium's feedback reports from the packet after
/// the last reported one, gaps included; whether the server then finds the link is for the
/// browser suite to show. From 160 kbit/s up, reports span several packets (gaps inside a
/// report are reported lost) and the estimate follows the link. Run with `--ignored` to
/// reproduce.
#[test]
#[ignore = "str0m's TWCC feedback (the harness viewer) never reports loss between reports"]
fn temporal_layers_are_dropped_when_the_lowest_layer_does_not_fit() {
    let (mut w, _, bob) = call(14);
    w.run_for(5 * SECOND);
    w.nodes[bob].down.config = PathConfig::limited(120_000);
    w.run_for(25 * SECOND);
    let end = w.now();
    let video = w.video(bob);
    assert_eq!(video.layer(), Some(0));
    let recent: Vec<_> = video
        .decoded
        .iter()
        .filter(|d| d.at > end - 5 * SECOND)
        .collect();
    assert!(
        (20..=110).contains(&recent.len()),
        "{} frames in 5 s: fewer than 30 a second, but moving",
        recent.len()
    );
    let undecodable = video.undecodable;
    w.run_for(5 * SECOND);
    assert!(
        w.video(bob).undecodable <= undecodable + 2,
        "thinned frames must stay decodable"
    );
    w.nodes[bob].down.config = PathConfig::default();
    w.run_until(30 * SECOND, |w| w.video(bob).layer() == Some(2));
    let end = w.now();
    w.run_for(3 * SECOND);
    let frames = w.video(bob).frames_per_layer(end, end + 3 * SECOND);
    assert!(frames[2] >= 85, "the full frame rate is back: {frames:?}");
}

/// Reliability 22: publishers that use the same SSRCs (and RIDs), in two rooms and inside
/// one room: every viewer gets its own publisher's frames and not one of another's.
#[test]
fn the_same_ssrcs_in_two_rooms_and_in_one_room_never_cross() {
    let mut w = World::new(22);
    let same = Some(vec![1111, 2222, 3333]);
    let publisher = |source| PublisherOptions {
        source,
        ssrcs: same.clone(),
        ..PublisherOptions::default()
    };
    let alice = w.publisher_with(&publisher(1));
    let alice_track = w.video_track(alice);
    let bob = w.subscriber(vec![alice_track]);
    w.h.room = w.h.add_room();
    let carol = w.publisher_with(&publisher(2));
    let carol_track = w.video_track(carol);
    let dave = w.subscriber(vec![carol_track]);
    // A third publisher with the same SSRCs in carol's room.
    let erin = w.publisher_with(&publisher(3));
    let erin_track = w.video_track(erin);
    let frank = w.subscriber(vec![erin_track]);
    w.run_for(5 * SECOND);
    for (viewer, source) in [(bob, 1), (dave, 2), (frank, 3)] {
        let video = w.video(viewer);
        assert!(video.decoded.len() > 100, "viewer {viewer} decodes");
        let foreign = video.decoded.iter().filter(|d| d.source != source).count();
        assert_eq!(
            foreign, 0,
            "viewer {viewer} got frames of another publisher"
        );
        assert_eq!(video.untagged, 0);
    }
}

/// Reliability 13: a publisher whose abs-send-time values are anything but the truth (up to
/// 100 days off, wrapping): forwarding and the viewer's video carry on.
#[test]
fn wild_abs_send_times_change_nothing_for_viewers() {
    let mut w = World::new(13);
    let alice = w.publisher_with(&PublisherOptions {
        wild_send_times: true,
        ..PublisherOptions::default()
    });
    let track = w.video_track(alice);
    let bob = w.subscriber(vec![track]);
    w.run_for(10 * SECOND);
    let end = w.now();
    assert_eq!(w.nodes[alice].closed, None);
    let video = w.video(bob);
    assert!(
        video
            .frames_per_layer(end - 5 * SECOND, end)
            .iter()
            .sum::<u32>()
            >= 140
    );
    assert_smooth(&w, bob, end - 5 * SECOND, end, 200);
}

/// Reliability 14: a publisher that pads (padding-only packets, as a bandwidth probe does):
/// the padding is not forwarded; the viewer gets every frame and nothing else.
#[test]
fn a_publishers_padding_is_not_forwarded() {
    let mut w = World::new(14);
    let alice = w.publisher_with(&PublisherOptions {
        pad_to: Some(5_000_000),
        ..PublisherOptions::default()
    });
    let track = w.video_track(alice);
    let bob = w.subscriber(vec![track]);
    let before = w.nodes[alice].up.stats;
    w.run_for(10 * SECOND);
    let sent = w.nodes[alice].up.stats.sent - before.sent;
    let video = w.video(bob);
    assert_eq!(video.untagged, 0, "padding reached the viewer");
    assert_eq!(video.undecodable, 0);
    // The publisher sent well beyond its media (about 2.2 Mbit/s of it): it did pad.
    assert!(
        sent > 10 * 300,
        "the publisher padded: {sent} datagrams in 10 s"
    );
}

/// Reliability 17: a publisher that opens a thousand data channels, one of them
/// pre-negotiated on stream 65534, and writes on all of them: its viewer's video is not
/// affected, and the server stays up (the publisher is served or closed cleanly).
#[test]
fn a_data_channel_flood_does_not_touch_the_media() {
    let mut w = World::new(17);
    let alice = w.publisher_with(&PublisherOptions {
        data_channel: true,
        ..PublisherOptions::default()
    });
    let track = w.video_track(alice);
    let bob = w.subscriber(vec![track]);
    w.run_for(2 * SECOND);
    let datagrams_before = w.nodes[alice].up.stats.sent;
    let mut channels = Vec::new();
    {
        let mut api = w.nodes[alice].client.rtc.direct_api();
        for i in 0..1000u16 {
            channels.push(api.create_data_channel(ChannelConfig {
                label: format!("flood-{i}"),
                negotiated: (i == 0).then_some(65534),
                ..ChannelConfig::default()
            }));
        }
    }
    w.run_for(SECOND);
    let client = &mut w.nodes[alice].client;
    for id in &channels {
        if let Some(mut channel) = client.rtc.channel(*id) {
            let _ = channel.write(false, &[0u8; 1024]);
        }
    }
    client.drain();
    let from = w.now();
    w.run_for(5 * SECOND);
    let end = w.now();
    // Media alone is about 230 datagrams a second: the flood went out.
    let sent = w.nodes[alice].up.stats.sent - datagrams_before;
    assert!(sent > 6 * 230 + 1000, "{sent} datagrams from the publisher");
    assert_smooth(&w, bob, from, end, 200);
    assert!(matches!(
        w.nodes[alice].closed,
        None | Some(CloseReason::Failed(_)) | Some(CloseReason::Disconnected)
    ));
    assert_eq!(w.nodes[bob].closed, None);
}

/// A DTLS 1.2 handshake record carrying one ClientHello fragment: the message is `length`
/// bytes long, the fragment covers `len` bytes from `offset` and `body` bytes follow.
fn client_hello_fragment(
    sequence: u64,
    length: u32,
    offset: u32,
    len: u32,
    body: usize,
) -> Vec<u8> {
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&length.to_be_bytes()[1..]);
    handshake.extend_from_slice(&[0, 0]); // message_seq
    handshake.extend_from_slice(&offset.to_be_bytes()[1..]);
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.resize(handshake.len() + body, 0x42);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0];
    record.extend_from_slice(&sequence.to_be_bytes()[2..]);
    record.extend_from_slice(
        &u16::try_from(handshake.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    record.extend_from_slice(&handshake);
    record
}

/// Reliability 2 and 7: 10,000 datagrams a second for 2 s from random addresses (STUN with
/// an unknown ufrag, STUN with a live peer's ufrag and a wrong password, DTLS ClientHellos,
/// random bytes): no state is kept for any of them and the call on the same worker goes on.
#[test]
fn floods_from_strangers_leave_no_state_and_the_call_goes_on() {
    let (mut w, alice, bob) = call(2);
    w.run_for(2 * SECOND);
    let sizes = w.h.core.sizes();
    let counters = w.h.counters();
    let victim = w.nodes[bob].server_creds.ufrag.clone();
    let mut rng = StdRng::seed_from_u64(2);
    let from = w.now();
    let mut sent = 0u64;
    for _ in 0..2000 {
        for kind in 0..10u32 {
            let addr =
                SocketAddr::from(([203, 0, 113, rng.random()], rng.random_range(1024..65535)));
            let datagram = match kind % 4 {
                0 => stun_request(&format!("{:08x}:x", rng.random::<u32>()), b"pw", false),
                1 => stun_request(&format!("{victim}:x"), b"not the password", false),
                2 => client_hello_fragment(u64::from(kind), 100, 0, 100, 100),
                _ => (0..rng.random_range(1..1200))
                    .map(|_| rng.random())
                    .collect(),
            };
            let now = w.now();
            w.h.core
                .handle_datagram(now, addr, Some(SERVER.ip()), &datagram);
            sent += 1;
        }
        w.run_for(Duration::from_millis(1));
    }
    let end = w.now();
    assert_eq!(w.h.core.sizes(), sizes, "the flood left state behind");
    let after = w.h.counters();
    let dropped = (after.dropped_unroutable + after.dropped_rejected + after.dropped_malformed)
        - (counters.dropped_unroutable + counters.dropped_rejected + counters.dropped_malformed);
    assert!(
        dropped >= sent * 3 / 4,
        "{dropped} of {sent} counted as dropped"
    );
    assert_eq!(w.nodes[alice].closed, None);
    assert_eq!(w.nodes[bob].closed, None);
    assert_smooth(&w, bob, from, end, 150);
}

/// Reliability 6: a client that passes ICE, then sends hostile DTLS handshake fragments
/// instead of its ClientHello (zero-length, overlapping, past the message, and pieces of a
/// 16 MiB message): the worker does not loop or hoard memory, the peer never connects and is
/// closed by the connect deadline, and a call on the same worker goes on.
#[test]
fn hostile_dtls_fragments_do_not_loop_or_hoard_and_the_peer_is_closed() {
    let (mut w, alice, bob) = call(6);
    let track = w.video_track(alice);
    w.run_for(3 * SECOND);
    let rss_before = resident_bytes();
    let mallory = w.add_subscriber(vec![track]);
    let mut sequence = 0u64;
    w.nodes[mallory].mangle_up = Some(Box::new(move |datagram: &[u8]| {
        // STUN (first byte 0-3) goes out as it is; DTLS (20-63) is replaced.
        if !(20..64).contains(&datagram.first().copied().unwrap_or(0)) {
            return vec![datagram.to_vec()];
        }
        let mut out = Vec::new();
        let mut next = || {
            sequence += 1;
            sequence
        };
        for i in 0..20 {
            out.push(client_hello_fragment(next(), 100, i, 0, 0)); // zero-length
        }
        for offset in [0, 25, 10, 60, 0] {
            out.push(client_hello_fragment(next(), 100, offset, 50, 50)); // overlapping
        }
        out.push(client_hello_fragment(next(), 100, 90, 50, 50)); // past the message
        out.push(client_hello_fragment(next(), 100, 0, 50, 10)); // claims more than it has
        for k in 0..40 {
            out.push(client_hello_fragment(
                next(),
                0xff_ffff,
                k * 1000,
                1000,
                1000,
            )); // 16 MiB
        }
        out
    }));
    let from = w.now();
    w.run_until(20 * SECOND, |w| w.nodes[mallory].closed.is_some());
    let end = w.now();
    assert!(
        w.nodes[mallory].client.ice_connected,
        "the hostile client passed ICE"
    );
    assert!(
        !w.nodes[mallory].client.connected,
        "hostile fragments completed a handshake"
    );
    assert!(
        matches!(
            w.nodes[mallory].closed,
            Some(CloseReason::ConnectTimeout | CloseReason::Failed(_))
        ),
        "closed: {:?}",
        w.nodes[mallory].closed
    );
    assert!(end - from <= 16 * SECOND, "closed after {:?}", end - from);
    let grown = resident_bytes().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    assert_eq!(w.nodes[bob].closed, None);
    assert_smooth(&w, bob, from, end, 150);
}

/// This process's resident memory in bytes (Linux; 0 elsewhere).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Reliability 9: from a connected publisher's own address, RTP-looking datagrams of 0-40
/// bytes (shorter than header plus SRTP tag) and RTCP-looking ones of 0-40 bytes (SRTCP needs
/// 20 plus the index and the tag): none is read as media, nothing reaches the viewer but the
/// publisher's frames, and neither peer notices.
#[test]
fn short_srtp_and_srtcp_from_a_peers_own_address_are_dropped() {
    let (mut w, alice, bob) = call(9);
    w.run_for(2 * SECOND);
    let addr = w.nodes[alice].client.addr;
    let before = w.h.counters();
    let from = w.now();
    let mut sent = 0;
    for round in 0..20u8 {
        for len in 0..=40usize {
            for second in [96u8, 200, 201, 205, 206] {
                let mut datagram = vec![0x80, second, 0, round, 0, 0, 0, 1, 0, 0, 0, 7];
                datagram.resize(len.max(2), round);
                datagram.truncate(len);
                let now = w.now();
                w.h.core
                    .handle_datagram(now, addr, Some(SERVER.ip()), &datagram);
                sent += 1;
            }
        }
        w.run_for(Duration::from_millis(50));
    }
    let end = w.now();
    let after = w.h.counters();
    assert!(
        after.datagrams_received - before.datagrams_received >= sent,
        "they reached the worker"
    );
    let video = w.video(bob);
    assert_eq!(
        video.untagged, 0,
        "something not the publisher's reached the viewer"
    );
    assert_eq!(video.undecodable, 0);
    assert_eq!(w.nodes[alice].closed, None);
    assert_eq!(w.nodes[bob].closed, None);
    assert_smooth(&w, bob, from, end, 150);
}

/// Reliability 16 (PLI storm): a viewer asking for a keyframe every millisecond for 5 s
/// reaches the publisher as about one request per half second per layer, and keeps its
/// video.
#[test]
fn a_pli_storm_reaches_the_publisher_throttled() {
    let (mut w, alice, bob) = call(16);
    w.run_for(2 * SECOND);
    let before = w.encoder(alice).keyframe_requests.clone();
    let from = w.now();
    for _ in 0..5000 {
        let mid = w.subscriber_video_mid(bob);
        let now = w.now();
        let client = &mut w.nodes[bob].client;
        if let Some(rx) = client.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
        client.input(str0m::Input::Timeout(now));
        w.run_for(Duration::from_millis(1));
    }
    let end = w.now();
    let after = w.encoder(alice).keyframe_requests.clone();
    let requests: Vec<u32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // 5 s at one request per 0.5 s: 10, plus the first at once.
    assert!(
        requests.iter().all(|n| *n <= 12),
        "keyframe requests per layer at the publisher: {requests:?}"
    );
    assert!(
        requests.iter().sum::<u32>() >= 5,
        "the storm was heard: {requests:?}"
    );
    assert_smooth(&w, bob, from, end, 200);
}

/// Alice and carol publish (sources 1 and 2), bob receives alice's video.
fn two_publishers_and_a_viewer_of_the_first(seed: u64) -> (World, [NodeId; 3]) {
    let mut w = World::new(seed);
    let publisher = |source| PublisherOptions {
        source,
        ..PublisherOptions::default()
    };
    let alice = w.publisher_with(&publisher(1));
    let carol = w.publisher_with(&publisher(2));
    let first = w.video_track(alice);
    let bob = w.subscriber(vec![first]);
    (w, [alice, carol, bob])
}

/// Renegotiation: a track added to a viewer mid-call arrives through a new offer while the
/// one it had keeps playing; a track removed stops while the other keeps playing.
#[test]
fn tracks_added_and_removed_mid_call_renegotiate_without_a_freeze() {
    let (mut w, [alice, carol, bob]) = two_publishers_and_a_viewer_of_the_first(20);
    let (a, c) = (w.video_track(alice), w.video_track(carol));
    w.run_for(3 * SECOND);
    let peer = w.nodes[bob].peer;
    let offers = w.nodes[bob].offers;
    let added = w.now();
    w.h.request(|reply| Command::Subscribe {
        peer,
        track: c,
        reply,
    })
    .expect("subscribed");
    w.run_for(3 * SECOND);
    let now = w.now();
    assert!(w.nodes[bob].offers > offers, "the new track is offered");
    let video = w.video(bob);
    assert!(
        video.frames_of(2, now - SECOND, now) >= 25,
        "the added track plays"
    );
    let freeze = video.longest_freeze_of(1, added, now);
    assert!(
        freeze < 150 * Duration::from_millis(1),
        "the first track froze for {freeze:?}"
    );
    assert_eq!(
        receivers(&mut w, a),
        vec![peer],
        "alice's track's owner knows bob"
    );
    assert_eq!(
        receivers(&mut w, c),
        vec![peer],
        "carol's track's owner knows bob"
    );
    let offers = w.nodes[bob].offers;
    let removed = w.now();
    w.h.request(|reply| Command::Unsubscribe {
        peer,
        track: a,
        reply,
    })
    .expect("unsubscribed");
    // One worker: the owner has handled bob's leave before the command's turn ended.
    assert!(receivers(&mut w, a).is_empty(), "bob left alice's track");
    assert_eq!(receivers(&mut w, c), vec![peer]);
    w.run_for(3 * SECOND);
    let now = w.now();
    assert!(w.nodes[bob].offers > offers, "the removal is negotiated");
    let video = w.video(bob);
    assert_eq!(
        video.frames_of(1, removed + SECOND, now),
        0,
        "the removed track stopped"
    );
    let freeze = video.longest_freeze_of(2, removed, now);
    assert!(
        freeze < 150 * Duration::from_millis(1),
        "the other track froze for {freeze:?}"
    );
    assert_eq!(video.undecodable, 0);
    assert!(w.nodes[bob].client.connected && !w.nodes[bob].client.failed);
}

/// Who receives `track`, as its owner (the publisher's worker) knows it.
fn receivers(w: &mut World, track: TrackId) -> Vec<PeerId> {
    let tracks =
        w.h.request(|reply| Command::Tracks { reply })
            .expect("tracks");
    tracks
        .into_iter()
        .find(|t| t.track == track)
        .map(|t| t.subscribers)
        .unwrap_or_default()
}

/// A viewer that accepts a track after its publisher left is not left waiting on it: its join
/// reaches no owner and is answered with the track's end, the track is dropped from its next
/// offer, and the other track it receives keeps playing.
#[test]
fn a_track_whose_publisher_leaves_during_negotiation_is_dropped_cleanly() {
    let (mut w, [alice, carol, bob]) = two_publishers_and_a_viewer_of_the_first(21);
    let (a, c) = (w.video_track(alice), w.video_track(carol));
    w.run_for(2 * SECOND);
    let peer = w.nodes[bob].peer;
    w.h.request(|reply| Command::Subscribe {
        peer,
        track: c,
        reply,
    })
    .expect("subscribed");
    // Carol leaves before bob's client has answered the offer that adds her track.
    let carol_peer = w.nodes[carol].peer;
    w.h.request(|reply| Command::RemovePeer {
        peer: carol_peer,
        reply,
    })
    .expect("carol removed");
    let offers = w.nodes[bob].offers;
    let from = w.now();
    w.run_for(3 * SECOND);
    let now = w.now();
    assert!(
        w.nodes[bob].offers >= offers + 2,
        "the offer that adds carol's track, then one that removes it: {} offers",
        w.nodes[bob].offers - offers
    );
    assert!(receivers(&mut w, c).is_empty());
    assert_eq!(receivers(&mut w, a), vec![peer]);
    assert_smooth(&w, bob, from, now, 150);
    assert!(w.nodes[bob].client.connected && !w.nodes[bob].client.failed);
}

/// Reliability 23: one viewer on a 400 kbit/s link and one whose link loses everything,
/// among four healthy ones: the healthy ones stay on the top layer without a freeze, the
/// narrow one drops to the lowest layer. (At 100 kbit/s the narrow viewer's estimate can
/// stick above its link: the ignored scenario below, issue 14.)
#[test]
fn one_bad_viewer_among_healthy_ones_changes_nothing_for_them() {
    let mut w = World::new(23);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    let viewers = w.subscribers(6, vec![track]);
    w.run_for(5 * SECOND);
    let (narrow, dead, healthy) = (viewers[0], viewers[1], &viewers[2..]);
    w.nodes[narrow].down.config = PathConfig::limited(400_000);
    w.nodes[dead].down.config.loss = 1.0;
    let from = w.now();
    w.run_for(15 * SECOND);
    let end = w.now();
    for v in healthy {
        assert_eq!(
            w.video(*v).layer(),
            Some(2),
            "healthy viewer {v} left the top layer"
        );
        assert_smooth(&w, *v, from, end, 100);
        assert_eq!(w.video(*v).undecodable, 0);
    }
    assert_eq!(
        w.video(narrow).layer(),
        Some(0),
        "the narrow viewer drops to the lowest layer"
    );
    assert_eq!(w.nodes[alice].closed, None);
}

/// Reliability 24: bursty loss (Gilbert-Elliott, about 5% in bursts of ~3) on the viewer's
/// downlink for 20 s: NACK/RTX repair nearly everything, and what a burst breaks is fixed
/// by a keyframe soon after.
#[test]
fn bursty_loss_is_repaired_and_a_broken_frame_brings_a_keyframe() {
    let (mut w, alice, bob) = call(24);
    w.run_for(3 * SECOND);
    w.nodes[bob].down.config.delay = 20 * Duration::from_millis(1);
    w.nodes[bob].down.config.bursts = Some(Bursts {
        start: 0.017,
        end: 0.33,
    });
    let keyframes = w.encoder(alice).keyframes_sent.clone();
    let from = w.now();
    w.run_for(20 * SECOND);
    let end = w.now();
    let stats = w.nodes[bob].down.stats;
    let frames: u32 = w.video(bob).frames_per_layer(from, end).iter().sum();
    let undecodable = w.video(bob).undecodable;
    assert!(stats.lost > 100, "the path lost {} datagrams", stats.lost);
    assert!(
        frames >= 20 * 30 * 95 / 100,
        "{frames} frames decoded in 20 s"
    );
    assert_smooth(&w, bob, from, end, 1000);
    let asked: u32 = w
        .encoder(alice)
        .keyframes_sent
        .iter()
        .zip(&keyframes)
        .map(|(a, b)| a - b)
        .sum();
    if undecodable > 0 {
        assert!(asked > 0, "frames broke but no keyframe followed");
    }
}

/// Issue 14's pinned joins on a loaded machine, without the browser: a viewer whose host is
/// starved of CPU (it reads its socket in bursts, 10-120 ms stalls every 50-300 ms, nothing
/// lost) makes the delay-based estimator see a queue that is not there. Its estimate falls
/// within the first second; the server checks the fall by probing a second later and the
/// viewer is soon back on the top layer (before: 3 of these 12 joins spent 3-6 s on a lower
/// layer, the estimate climbing back a few per cent a second).
#[test]
fn a_viewer_starved_of_cpu_is_not_held_below_the_top_layer() {
    let ms = Duration::from_millis;
    let profiles = [
        Stalls {
            gap: (ms(50), ms(300)),
            length: (ms(10), ms(60)),
        },
        Stalls {
            gap: (ms(50), ms(200)),
            length: (ms(20), ms(120)),
        },
    ];
    let mut slow = Vec::new();
    for stalls in profiles {
        for seed in 20..26 {
            let (mut w, _, bob) = call(seed);
            w.nodes[bob].down.config.stalls = Some(stalls);
            let joined = w.now();
            w.run_for(7 * SECOND);
            let until = w.now();
            let video = w.video(bob);
            let switches: Vec<(f64, u8, u8)> = video
                .switches()
                .iter()
                .map(|s| (w.t(s.0) - w.t(joined), s.1, s.2))
                .collect();
            let top_at = video.decoded.iter().find(|f| f.layer == 2).map(|f| f.at);
            // The join: on the top layer within a second, and never off it for more than
            // 2.5 s (a fall is checked by probing a second later; before, 3-6 s).
            let off_top = top_at.map_or(Duration::MAX, |t| video.longest_off_layer(2, t, until));
            if top_at.is_none_or(|t| t - joined >= SECOND) || off_top > 2500 * ms(1) {
                slow.push(format!(
                    "seed {seed}, {stalls:?}: top layer at {:?}, off it for up to {off_top:?} \
                     in the first 7 s; switches {switches:?}",
                    top_at.map(|t| t - joined)
                ));
            }
            assert_switches_on_keyframes(&w, bob);
        }
    }
    assert!(slow.is_empty(), "{}", slow.join("\n"));
}
