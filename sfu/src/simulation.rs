//! Deterministic simulations of simulcast forwarding on a fake clock, with no sockets: a
//! three-layer VP8 publisher, and subscribers whose bandwidth estimates follow a script. They
//! drive the same pieces the workers use (the allocator, layer choice, the keyframe throttle,
//! the layer switcher with its sequence/timestamp/picture-ID rewriting) through the same
//! steps as a subscriber peer, and check what a receiver would see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, Pt};

use crate::allocator::{Allocator, LayerReason, MAX_LAYERS, TrackNeeds};
use crate::ids::TrackId;
use crate::keyframe::{starts_keyframe, vp8_temporal};
use crate::keyframe_throttle::KeyframeThrottle;
use crate::layer_choice::{Quality, choose_layer};
use crate::layer_switch::LayerSwitcher;
use crate::packet::ForwardedPacket;

const FRAME: Duration = Duration::from_millis(33);
const ALLOCATION: Duration = Duration::from_millis(500);
const THROTTLE: Duration = Duration::from_millis(500);
/// Packets per frame and bitrate of each layer (lowest first).
const LAYERS: [(u32, u64); 3] = [(1, 150_000), (2, 500_000), (5, 1_500_000)];

fn vp8_params() -> PayloadParams {
    let spec = CodecSpec {
        codec: Codec::Vp8,
        clock_rate: Frequency::NINETY_KHZ,
        channels: None,
        format: FormatParams::default(),
    };
    PayloadParams::new(Pt::from(96), None, spec)
}

/// A VP8 payload: 15-bit picture ID, S bit on the first packet, P=0 on a keyframe's first,
/// and the temporal layer index if there are temporal layers.
fn vp8_payload(picture_id: u16, first: bool, key: bool, tid: Option<u8>) -> Arc<[u8]> {
    let mut p = vec![
        if first { 0x90 } else { 0x80 },
        if tid.is_some() { 0xa0 } else { 0x80 },
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
    ];
    if let Some(tid) = tid {
        p.push(tid << 6);
    }
    p.push(if first && !key { 0x01 } else { 0x00 });
    p.extend_from_slice(&[0; 20]);
    p.into()
}

/// A simulcast publisher: per layer its own sequence numbers, timestamps and picture IDs.
struct Publisher {
    params: PayloadParams,
    seq: [u64; 3],
    ts: [u32; 3],
    picture: [u16; 3],
    frames: u64,
    keyframe_every: u64,
    /// Send three temporal layers (pattern 0, 2, 1, 2), as Chromium does.
    temporal: bool,
    /// Per layer: the frame number at which a requested keyframe is sent.
    force: [Option<u64>; 3],
    /// Frames between a keyframe request reaching the publisher and the keyframe (the
    /// request's trip and the encoder's reaction).
    keyframe_delay: u64,
    active: u32,
    throttles: Vec<KeyframeThrottle>,
    /// Keyframe requests that reached the encoder, per layer, with their time.
    requests: Vec<(u8, Instant)>,
    /// Epoch of the capture clock (the "sender report" mapping).
    epoch: Instant,
}

impl Publisher {
    fn new(keyframe_every: u64, epoch: Instant) -> Self {
        Self {
            params: vp8_params(),
            seq: [1000, 30_000, 60_000],
            ts: [5, 1_000_000, 2_000_000_000],
            picture: [10, 2000, 32_760],
            frames: 0,
            keyframe_every,
            temporal: false,
            force: [None; 3],
            keyframe_delay: 0,
            active: 0b111,
            throttles: (0..3).map(|_| KeyframeThrottle::new(THROTTLE)).collect(),
            requests: Vec::new(),
            epoch,
        }
    }

    /// A subscriber asks for a keyframe on `layer`: coalesced by the throttle.
    fn request_keyframe(&mut self, layer: u8, urgent: bool, now: Instant) {
        if let Some(t) = self.throttles.get_mut(usize::from(layer))
            && t.request(now, urgent)
        {
            self.requests.push((layer, now));
            self.force_keyframe(layer);
        }
    }

    /// Makes a keyframe of `layer` come after the publisher's reaction time.
    fn force_keyframe(&mut self, layer: u8) {
        let at = self.frames + self.keyframe_delay;
        if let Some(slot) = self.force.get_mut(usize::from(layer)) {
            *slot = Some(slot.map_or(at, |s| s.min(at)));
        }
    }

    /// One frame on every active layer.
    fn frame(&mut self, now: Instant) -> Vec<ForwardedPacket> {
        for layer in 0..3u8 {
            if self.throttles[usize::from(layer)].poll(now) {
                self.requests.push((layer, now));
                self.force_keyframe(layer);
            }
        }
        let periodic = self.frames.is_multiple_of(self.keyframe_every);
        self.frames += 1;
        let capture = (now - self.epoch).as_secs_f64();
        let mut out = Vec::new();
        for (layer, (packets, _)) in LAYERS.iter().enumerate() {
            let l = layer as u8;
            self.ts[layer] = self.ts[layer].wrapping_add(3000);
            self.picture[layer] = (self.picture[layer] + 1) % (1 << 15);
            if self.active & (1 << layer) == 0 {
                continue;
            }
            let forced = self.force[layer].is_some_and(|at| at <= self.frames);
            if forced {
                self.force[layer] = None;
            }
            let key = periodic || forced;
            if key {
                self.throttles[layer].on_keyframe();
            }
            for i in 0..*packets {
                self.seq[layer] += 1;
                let tid = self.temporal.then(|| {
                    if key {
                        0
                    } else {
                        [0, 2, 1, 2][(self.frames % 4) as usize]
                    }
                });
                let payload = vp8_payload(self.picture[layer], i == 0, key, tid);
                let keyframe = starts_keyframe(Codec::Vp8, &payload);
                let temporal = vp8_temporal(&payload);
                out.push(ForwardedPacket {
                    track: TrackId(1),
                    layer: l,
                    params: self.params,
                    seq: self.seq[layer],
                    ts: self.ts[layer],
                    marker: i + 1 == *packets,
                    keyframe,
                    temporal,
                    payload,
                    audio_level: None,
                    voice_activity: None,
                    video_orientation: None,
                    arrival: now,
                    capture: Some(capture),
                });
            }
        }
        out
    }

    fn rates(&self) -> [u64; MAX_LAYERS] {
        let mut r = [0; MAX_LAYERS];
        for (i, (_, bps)) in LAYERS.iter().enumerate() {
            r[i] = *bps;
        }
        r
    }
}

/// What a subscriber received, packet by packet.
#[derive(Debug, Clone, Copy)]
struct Received {
    seq: u64,
    ts: u32,
    picture_id: Option<u16>,
    layer: u8,
    keyframe: bool,
    /// Temporal layer, if any.
    tid: Option<u8>,
    at: Instant,
}

/// A subscriber: the allocator and switcher of one video track, and a scripted estimate.
struct Subscriber {
    allocator: Allocator,
    switcher: LayerSwitcher,
    quality: Quality,
    next_allocation: Instant,
    received: Vec<Received>,
    reasons: Vec<(Instant, LayerReason)>,
    targets: Vec<(Instant, Option<u8>)>,
}

impl Subscriber {
    fn new(start: Instant) -> Self {
        Self {
            allocator: Allocator::default(),
            switcher: LayerSwitcher::new(true),
            quality: Quality::Auto,
            next_allocation: start,
            received: Vec::new(),
            reasons: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// The allocator's turn (every 500 ms), as a subscriber peer runs it.
    fn allocate(&mut self, now: Instant, estimate: u64, publisher: &mut Publisher) {
        if now < self.next_allocation {
            return;
        }
        self.next_allocation = now + ALLOCATION;
        let needs = TrackNeeds {
            active: publisher.active,
            rates: publisher.rates(),
            cap: self.quality.cap(3),
            current: self.switcher.target(),
            temporal: publisher.temporal,
            max_temporal: self.switcher.wanted_max_temporal(),
        };
        let allocation = self
            .allocator
            .allocate(now, estimate, &[(TrackId(1), needs)]);
        let (_, choice) = allocation.choices[0];
        self.switcher.set_max_temporal(allocation.max_temporal[0]);
        self.reasons.push((now, choice.reason));
        let requested = self.quality.cap(3);
        let cap = match (requested, choice.layer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let best = choose_layer(publisher.active, cap);
        if self.switcher.target() != best {
            self.targets.push((now, best));
        }
        // As a subscriber peer does: a current layer above what the bandwidth allows stops.
        let bandwidth_cap = choice
            .layer
            .filter(|_| choice.reason == LayerReason::Bandwidth);
        let too_big =
            matches!((self.switcher.current(), bandwidth_cap), (Some(c), Some(b)) if c > b);
        self.switcher.set_stop_current(too_big);
        if self.switcher.set_target(best)
            && let Some(layer) = best
        {
            publisher.request_keyframe(layer, too_big, now);
        }
    }

    fn on_packet(&mut self, p: &ForwardedPacket, now: Instant) {
        if let Some(f) = self.switcher.on_packet(p, now) {
            self.received.push(Received {
                seq: f.seq,
                ts: f.ts,
                picture_id: self.switcher.last_picture_id(),
                layer: p.layer,
                keyframe: p.keyframe,
                tid: p.temporal.map(|t| t.tid),
                at: now,
            });
        }
    }

    fn layer_at(&self, t: Instant) -> Option<u8> {
        self.received
            .iter()
            .rev()
            .find(|r| r.at <= t)
            .map(|r| r.layer)
    }
}

/// Runs `seconds` of a call: `estimate(t)` scripts each subscriber's bandwidth.
fn run(
    seconds: u64,
    keyframe_every: u64,
    subscribers: usize,
    mut estimate: impl FnMut(usize, Duration) -> u64,
    mut each_frame: impl FnMut(Duration, &mut Publisher, &mut [Subscriber]),
) -> (Publisher, Vec<Subscriber>, Instant) {
    let start = Instant::now();
    let mut publisher = Publisher::new(keyframe_every, start);
    let mut subs: Vec<Subscriber> = (0..subscribers).map(|_| Subscriber::new(start)).collect();
    let frames = seconds * 1000 / FRAME.as_millis() as u64;
    for f in 0..frames {
        let now = start + FRAME * f as u32;
        let elapsed = now - start;
        each_frame(elapsed, &mut publisher, &mut subs);
        for (i, s) in subs.iter_mut().enumerate() {
            s.allocate(now, estimate(i, elapsed), &mut publisher);
        }
        for packet in publisher.frame(now) {
            for s in subs.iter_mut() {
                s.on_packet(&packet, now);
            }
        }
    }
    (publisher, subs, start)
}

/// Everything a receiver must be able to rely on, whatever the switches.
fn assert_receiver_invariants(sub: &Subscriber) {
    let r = &sub.received;
    assert!(!r.is_empty(), "something was received");
    assert!(r[0].keyframe, "starts on a keyframe");
    for w in r.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            b.seq,
            a.seq + 1,
            "sequence numbers: no gaps or repeats ({a:?} -> {b:?})"
        );
        assert!(
            b.ts.wrapping_sub(a.ts) < (1 << 31),
            "timestamps never go backwards ({a:?} -> {b:?})"
        );
        if b.layer != a.layer {
            assert!(
                b.keyframe,
                "a switch happens on a keyframe of the new layer ({a:?} -> {b:?})"
            );
            assert!(b.ts != a.ts, "the new layer's first frame is a new frame");
        }
        // Picture IDs: equal within a frame, +1 from one frame to the next.
        let (pa, pb) = (a.picture_id.unwrap_or(0), b.picture_id.unwrap_or(0));
        if b.ts == a.ts {
            assert_eq!(pa, pb, "one frame, one picture ID");
        } else {
            assert_eq!(
                pb,
                (pa + 1) % (1 << 15),
                "picture IDs continuous ({a:?} -> {b:?})"
            );
        }
    }
}

fn switches(sub: &Subscriber) -> Vec<(Duration, u8)> {
    let start = sub.received[0].at;
    sub.received
        .windows(2)
        .filter(|w| w[0].layer != w[1].layer)
        .map(|w| (w[1].at - start, w[1].layer))
        .collect()
}

#[test]
fn downgrade_at_once_upgrade_after_headroom_and_continuous_output() {
    // Plenty, then 700 kbit/s from 10 s, then plenty again from 20 s.
    let script = |_: usize, t: Duration| -> u64 {
        if t >= Duration::from_secs(10) && t < Duration::from_secs(20) {
            700_000
        } else {
            5_000_000
        }
    };
    let (publisher, subs, start) = run(40, 90, 1, script, |_, _, _| {});
    let sub = &subs[0];
    assert_receiver_invariants(sub);
    // Starts low (layers are known to be sent, the estimate allows the top after the hold).
    assert_eq!(
        sub.layer_at(start + Duration::from_secs(9)),
        Some(2),
        "top layer with plenty"
    );
    // The drop: on the middle layer within a second (next allocation + keyframe on request).
    let down = switches(sub)
        .into_iter()
        .find(|(t, l)| *t >= Duration::from_secs(10) && *l == 1);
    let (down_at, _) = down.unwrap_or_else(|| panic!("no downgrade: {:?}", switches(sub)));
    assert!(
        down_at <= Duration::from_millis(11_200),
        "downgraded at {down_at:?}"
    );
    assert_eq!(sub.layer_at(start + Duration::from_secs(19)), Some(1));
    assert!(
        sub.reasons
            .iter()
            .any(|(_, r)| *r == LayerReason::Bandwidth)
    );
    // The recovery: not before the headroom has held for the upgrade hold time.
    let up = switches(sub)
        .into_iter()
        .find(|(t, l)| *t >= Duration::from_secs(20) && *l == 2);
    let (up_at, _) = up.unwrap_or_else(|| panic!("no recovery: {:?}", switches(sub)));
    assert!(
        up_at >= Duration::from_secs(22),
        "upgrade waited for the hold: {up_at:?}"
    );
    assert!(up_at <= Duration::from_secs(24), "recovered at {up_at:?}");
    // Keyframe requests: at most one per layer per throttle interval.
    for layer in 0..3u8 {
        let times: Vec<Instant> = publisher
            .requests
            .iter()
            .filter(|(l, _)| *l == layer)
            .map(|(_, t)| *t)
            .collect();
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= THROTTLE,
                "layer {layer}: PLIs {:?} apart",
                w[1] - w[0]
            );
        }
    }
}

#[test]
fn an_estimate_hovering_at_a_boundary_does_not_flap() {
    // Around the top layer's 1.5 Mbit/s (+ the others' keep), never with lasting headroom.
    let script = |_: usize, t: Duration| -> u64 {
        let wobble = (t.as_millis() / 300 % 5) as u64;
        1_450_000 + wobble * 60_000
    };
    let (_, subs, _) = run(60, 90, 1, script, |_, _, _| {});
    let sub = &subs[0];
    assert_receiver_invariants(sub);
    assert!(switches(sub).len() <= 2, "flapping: {:?}", switches(sub));
}

#[test]
fn a_paused_layer_is_never_selected_and_requests_are_coalesced() {
    // The top layer stops being sent from 5 s to 15 s; three subscribers with plenty.
    let script = |_: usize, _: Duration| -> u64 { 5_000_000 };
    let (publisher, subs, start) = run(25, 300, 3, script, |t, p, _| {
        p.active = if t >= Duration::from_secs(5) && t < Duration::from_secs(15) {
            0b011
        } else {
            0b111
        };
    });
    for sub in &subs {
        assert_receiver_invariants(sub);
        let during: Vec<&Received> = sub
            .received
            .iter()
            .filter(|r| {
                r.at >= start + Duration::from_secs(5) && r.at < start + Duration::from_secs(15)
            })
            .collect();
        assert!(
            during.iter().all(|r| r.layer != 2),
            "the paused layer is not forwarded"
        );
        assert!(
            sub.targets
                .iter()
                .all(|(t, l)| !(*t >= start + Duration::from_secs(5)
                    && *t < start + Duration::from_secs(15)
                    && *l == Some(2))),
            "the paused layer is never a target"
        );
        assert_eq!(sub.layer_at(start + Duration::from_secs(14)), Some(1));
    }
    // Three subscribers switching together: their requests coalesce per layer.
    let mut per_layer: BTreeMap<u8, Vec<Instant>> = BTreeMap::new();
    for (l, t) in &publisher.requests {
        per_layer.entry(*l).or_default().push(*t);
    }
    for (layer, times) in per_layer {
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= THROTTLE,
                "layer {layer}: requests {:?} apart",
                w[1] - w[0]
            );
        }
    }
}

#[test]
fn requested_quality_caps_the_layer() {
    let script = |_: usize, _: Duration| -> u64 { 10_000_000 };
    let (_, subs, start) = run(20, 60, 2, script, |t, _, subs| {
        if t == Duration::from_millis(33 * 150) {
            subs[1].quality = Quality::Low;
        }
    });
    assert_receiver_invariants(&subs[0]);
    assert_receiver_invariants(&subs[1]);
    assert_eq!(subs[0].layer_at(start + Duration::from_secs(19)), Some(2));
    assert_eq!(
        subs[1].layer_at(start + Duration::from_secs(19)),
        Some(0),
        "low means the lowest layer"
    );
    assert!(
        subs[1]
            .reasons
            .iter()
            .any(|(_, r)| *r == LayerReason::Requested)
    );
}

#[test]
fn temporal_layers_are_dropped_when_the_lowest_layer_does_not_fit_and_come_back() {
    // Plenty; 100 kbit/s (the lowest layer needs 150) from 10 s; 50 kbit/s from 20 s;
    // plenty again from 25 s.
    let script = |_: usize, t: Duration| -> u64 {
        match t.as_secs() {
            10..=19 => 100_000,
            20..=24 => 50_000,
            _ => 5_000_000,
        }
    };
    let (_, subs, start) = run(35, 90, 1, script, |elapsed, publisher, _| {
        if elapsed.is_zero() {
            publisher.temporal = true;
        }
    });
    let sub = &subs[0];
    // Seqs and picture IDs close up behind dropped frames; switches on keyframes.
    assert_receiver_invariants(sub);
    let frames_between = |from: u64, to: u64| -> BTreeMap<u8, usize> {
        let mut by_tid = BTreeMap::new();
        for r in &sub.received {
            let t = r.at - start;
            if t >= Duration::from_secs(from) && t < Duration::from_secs(to) {
                *by_tid.entry(r.tid.unwrap_or(9)).or_default() += 1;
            }
        }
        by_tid
    };
    // Settled on the lowest layer with everything, then without TL2, then base layer only.
    let limited = frames_between(11, 20);
    assert!(
        !limited.contains_key(&2) && limited.get(&1).is_some_and(|n| *n > 0),
        "{limited:?}"
    );
    let scarce = frames_between(21, 25);
    assert_eq!(
        scarce.keys().copied().collect::<Vec<_>>(),
        vec![0],
        "{scarce:?}"
    );
    // Back to every temporal layer (and up the layers) once the bandwidth is back.
    let restored = frames_between(30, 35);
    assert!(restored.contains_key(&2), "{restored:?}");
    assert_eq!(sub.layer_at(start + Duration::from_secs(34)), Some(2));
    // The frame rate halves and halves again: 30, 15, 7.5 frames per second (one packet per
    // frame on the lowest layer).
    let per_second = |n: usize, secs: u64| n as f64 / secs as f64;
    let limited_rate = per_second(limited.values().sum(), 9);
    let scarce_rate = per_second(scarce.values().sum(), 4);
    assert!((13.0..=17.0).contains(&limited_rate), "{limited_rate} fps");
    assert!((6.0..=9.0).contains(&scarce_rate), "{scarce_rate} fps");
}

#[test]
fn a_drop_stops_the_old_layer_at_once_and_goes_straight_to_the_layer_that_fits() {
    // On the top layer with plenty; from 10 s the estimate falls to 350 kbit/s, which only
    // the lowest layer (150 kbit/s) fits.
    let script = |_: usize, t: Duration| -> u64 {
        if t >= Duration::from_secs(10) {
            350_000
        } else {
            5_000_000
        }
    };
    let (publisher, subs, start) = run(20, 300, 1, script, |t, p, _| {
        if t.is_zero() {
            p.keyframe_delay = 3; // ~100 ms from request to keyframe
        }
    });
    let sub = &subs[0];
    assert_receiver_invariants(sub);
    assert_eq!(sub.layer_at(start + Duration::from_millis(9_900)), Some(2));
    // One decision, straight to the lowest layer (no stop on the middle one).
    let after: Vec<(Instant, Option<u8>)> = sub
        .targets
        .iter()
        .copied()
        .filter(|(t, _)| *t >= start + Duration::from_secs(10))
        .collect();
    assert_eq!(
        after.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
        vec![Some(0)],
        "{after:?}"
    );
    let decided = after[0].0;
    // The top layer stops after the frame under way: nothing of it is sent while the
    // lowest layer's keyframe is awaited, so that keyframe does not queue behind it.
    let last_top = sub
        .received
        .iter()
        .filter(|r| r.layer == 2)
        .map(|r| r.at)
        .max()
        .unwrap();
    assert!(
        last_top < decided,
        "top layer sent at {last_top:?}, decided at {decided:?}"
    );
    let first_low = sub
        .received
        .iter()
        .find(|r| r.layer == 0 && r.at >= decided)
        .unwrap();
    assert!(first_low.keyframe, "switched on a keyframe");
    assert!(
        first_low.at - decided <= 4 * FRAME,
        "the keyframe was asked for at once: {:?}",
        first_low.at - decided
    );
    assert!(
        publisher
            .requests
            .iter()
            .any(|(l, t)| *l == 0 && *t == decided),
        "keyframe requested at the decision"
    );
    assert_eq!(sub.layer_at(start + Duration::from_secs(19)), Some(0));
}

#[test]
fn a_layer_stopped_for_bandwidth_restarts_only_on_a_keyframe() {
    let t0 = Instant::now();
    let mut publisher = Publisher::new(1000, t0);
    let mut switcher = LayerSwitcher::new(true);
    switcher.set_target(Some(2));
    let mut out = Vec::new();
    let feed = |publisher: &mut Publisher,
                switcher: &mut LayerSwitcher,
                out: &mut Vec<(u8, bool, u64)>,
                frames: u32| {
        for f in 0..frames {
            let now = t0 + FRAME * (publisher.frames as u32 + f);
            for p in publisher.frame(now) {
                if let Some(fwd) = switcher.on_packet(&p, now) {
                    out.push((p.layer, p.keyframe, fwd.seq));
                }
            }
        }
    };
    feed(&mut publisher, &mut switcher, &mut out, 5);
    assert!(out.iter().all(|(l, _, _)| *l == 2) && !out.is_empty());
    let before = out.len();
    // Target the lowest layer and stop the top one: nothing more until layer 0's keyframe,
    // which does not come (no request reaches this publisher).
    switcher.set_stop_current(true);
    assert!(switcher.set_target(Some(0)));
    feed(&mut publisher, &mut switcher, &mut out, 5);
    assert_eq!(
        out.len(),
        before,
        "nothing forwarded while stopped: {:?}",
        &out[before..]
    );
    assert!(switcher.stalled() && switcher.waiting());
    assert_eq!(
        switcher.wanted_layers(),
        0b001,
        "the stopped layer is no longer wanted"
    );
    // The bandwidth comes back before the switch: the top layer is wanted again, but it
    // restarts only on one of its keyframes (the frames in between were never sent).
    assert!(switcher.set_target(Some(2)), "a keyframe is needed");
    feed(&mut publisher, &mut switcher, &mut out, 3);
    assert_eq!(out.len(), before);
    publisher.force_keyframe(2);
    feed(&mut publisher, &mut switcher, &mut out, 2);
    let (layer, keyframe, seq) = out[before];
    assert_eq!((layer, keyframe), (2, true));
    assert_eq!(
        seq,
        out[before - 1].2 + 1,
        "sequence numbers continue without a hole"
    );
    assert!(!switcher.stalled() && !switcher.waiting());
}
