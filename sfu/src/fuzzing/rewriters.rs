//! What a subscriber sees of a publisher's numbering: the sequence number and timestamp
//! rewriter, the VP8 picture ID munger and the layer switcher that drives both, each run
//! against a model of what the receiver must see.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, Pt};
use str0m::rtp::Vp8Descriptor;

use super::Reader;
use super::payload::patch_for;
use crate::keyframe::{starts_keyframe, vp8_temporal};
use crate::layer_switch::LayerSwitcher;
use crate::packet::ForwardedPacket;
use crate::rewrite::SeqTsRewriter;
use crate::vp8_munger::Vp8Munger;

/// Operations read from one input, at most.
const MAX_OPS: usize = 4096;

/// `rewriters`: a program of packets, drops and layer switches (the first byte picks the
/// rewriter under test).
///
/// Checks, for `SeqTsRewriter`: every packet gets exactly the number a model predicts (one
/// after the newest sent for a new packet, the number it already had for a retransmission,
/// the number left for it for a late one, none for one dropped or older than its source), and
/// timestamps keep one offset per source that moves forward at each switch. For
/// `Vp8Munger`: picture IDs of forwarded pictures are consecutive across switches and drops,
/// TL0PICIDX and KEYIDX continue across switches, a late packet keeps the IDs of its picture.
/// For `LayerSwitcher` (three simulcast layers, temporal layers, layer requests): the
/// receiver sees sequence numbers without gaps, starts each layer on a keyframe, and sees
/// timestamps that stay with their frame and move forward between frames.
pub fn rewriters(data: &[u8]) {
    let mut r = Reader::new(data);
    match r.u8() % 3 {
        0 => seq_ts(&mut r),
        1 => vp8_pictures(&mut r),
        _ => layer_switcher(&mut r),
    }
}

/// The model of one source of a `SeqTsRewriter`.
struct Source {
    /// Older incoming numbers are refused (the source's first, raised as old drops are
    /// forgotten).
    min_in: u64,
    /// Highest incoming number seen, forwarded or dropped (`None`: none yet).
    highest_in: Option<u64>,
    first_in: u64,
    /// The outgoing number of the next new packet.
    next_out: u64,
    /// Outgoing numbers given or kept for incoming ones.
    outs: HashMap<u64, u64>,
    dropped: VecDeque<u64>,
    /// `out_ts - in_ts` for this source.
    ts_offset: u32,
}

impl Source {
    /// Gives numbers to the incoming ones up to `seq` not seen yet (losses upstream keep
    /// their place).
    fn reserve_to(&mut self, seq: u64) {
        let from = self.highest_in.map_or(self.first_in, |h| h + 1);
        for s in from..=seq {
            self.outs.insert(s, self.next_out);
            self.next_out = self.next_out.wrapping_add(1);
        }
    }
}

fn seq_ts(r: &mut Reader<'_>) {
    let clock = u32::from(r.u16()).max(1);
    let (initial_seq, initial_ts) = (r.u16(), r.u32());
    let mut rewriter = SeqTsRewriter::new(clock, initial_seq, initial_ts);
    let t0 = Instant::now();
    let mut now = t0;
    let mut source: Option<Source> = None;
    // The rewriter's newest packet: (outgoing number, timestamp, arrival).
    let mut newest: Option<(u64, u32, Instant)> = None;
    let mut started = false;

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        now += Duration::from_millis(u64::from(op >> 3));
        match op % 5 {
            0 => {
                let (in_seq, in_ts) = (u64::from(r.u32()), r.u32());
                let elapsed = match r.u8() {
                    0 => None,
                    253 => Some(f64::NAN),
                    254 => Some(-1.0),
                    255 => Some(f64::INFINITY),
                    b => Some(f64::from(b) / 100.0),
                };
                rewriter.start_source_after(in_seq, in_ts, now, elapsed);
                let (first_out, first_ts) = match (started, newest) {
                    (false, _) => (u64::from(initial_seq), initial_ts),
                    (true, Some((seq, ts, arrival))) => {
                        let seconds = elapsed
                            .filter(|e| e.is_finite() && *e >= 0.0)
                            .unwrap_or_else(|| (now - arrival).as_secs_f64());
                        let ticks = ((seconds * f64::from(clock)).round() as u32).max(1);
                        (seq.wrapping_add(1), ts.wrapping_add(ticks))
                    }
                    (true, None) => unreachable!("a started rewriter has a newest packet"),
                };
                started = true;
                newest = Some((first_out.wrapping_sub(1), first_ts, now));
                source = Some(Source {
                    min_in: in_seq,
                    highest_in: None,
                    first_in: in_seq,
                    next_out: first_out,
                    outs: HashMap::new(),
                    dropped: VecDeque::new(),
                    ts_offset: first_ts.wrapping_sub(in_ts),
                });
            }
            1 | 2 => {
                let Some(s) = source.as_mut() else {
                    let seq = u64::from(r.u32());
                    assert_eq!(rewriter.rewrite(seq, 0, now), None, "no source yet");
                    continue;
                };
                let seq = if op % 5 == 1 {
                    next_seq(s, r)
                } else {
                    s.highest_in.map_or(s.first_in, |h| h + 1)
                };
                let in_ts = r.u32();
                let got = rewriter.rewrite(seq, in_ts, now);
                let expected = if seq < s.min_in || s.dropped.contains(&seq) {
                    None
                } else {
                    if s.highest_in.is_none_or(|h| seq > h) {
                        s.reserve_to(seq);
                        s.highest_in = Some(seq);
                    }
                    s.outs.get(&seq).copied()
                };
                assert_eq!(got.map(|g| g.seq), expected, "outgoing number of {seq}");
                if let Some(g) = got {
                    assert_eq!(g.ts, in_ts.wrapping_add(s.ts_offset), "timestamp of {seq}");
                    if newest.is_none_or(|(n, _, _)| g.seq > n || n == u64::MAX) {
                        newest = Some((g.seq, g.ts, now));
                    }
                }
            }
            3 => {
                let Some(s) = source.as_mut() else {
                    assert!(!rewriter.drop_packet(u64::from(r.u32())), "no source yet");
                    continue;
                };
                let seq = next_seq(s, r);
                let newer = s.highest_in.is_none_or(|h| seq > h);
                assert_eq!(rewriter.drop_packet(seq), newer, "drop {seq}");
                if newer {
                    if seq > s.first_in {
                        s.reserve_to(seq - 1);
                    }
                    s.highest_in = Some(seq);
                    s.dropped.push_back(seq);
                    if s.dropped.len() > 512
                        && let Some(oldest) = s.dropped.pop_front()
                    {
                        s.min_in = s.min_in.max(oldest + 1);
                    }
                }
            }
            _ => {
                // A retransmission of anything sent from this source.
                let Some(s) = source.as_ref() else { continue };
                let Some(h) = s.highest_in else { continue };
                let back = u64::from(r.u16()) % (h - s.first_in + 1);
                let seq = h - back;
                let expected = if seq < s.min_in || s.dropped.contains(&seq) {
                    None
                } else {
                    s.outs.get(&seq).copied()
                };
                let got = rewriter.rewrite(seq, 0, now);
                assert_eq!(got.map(|g| g.seq), expected, "retransmission of {seq}");
                // The first of a hole upstream may be the newest sent.
                if let Some(g) = got
                    && newest.is_none_or(|(n, _, _)| g.seq > n || n == u64::MAX)
                {
                    newest = Some((g.seq, g.ts, now));
                }
            }
        }
    }
}

/// An incoming number near the highest one: mostly newer, sometimes late or repeated.
fn next_seq(s: &Source, r: &mut Reader<'_>) -> u64 {
    let delta = i64::from(r.u8() as i8 / 8);
    match s.highest_in {
        None => s.first_in + delta.unsigned_abs(),
        Some(h) => h.saturating_add_signed(delta).max(s.first_in),
    }
}

/// One VP8 picture of the stream the munger is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    picture: u16,
    tl0: Option<u8>,
    key: Option<u8>,
}

struct Picture {
    payload: Vec<u8>,
    out: Fields,
    /// Pictures dropped before it was sent.
    drops_before: usize,
}

fn vp8_payload(f: Fields, tid: u8, first: bool) -> Vec<u8> {
    let mut ext = 0x80;
    if f.tl0.is_some() {
        ext |= 0x60;
    }
    if f.key.is_some() {
        ext |= 0x10;
    }
    let mut p = vec![
        if first { 0x90 } else { 0x80 },
        ext,
        0x80 | (f.picture >> 8) as u8,
        f.picture as u8,
    ];
    if let Some(t) = f.tl0 {
        p.push(t);
    }
    if f.tl0.is_some() || f.key.is_some() {
        p.push(tid << 6 | f.key.unwrap_or_default());
    }
    p.extend_from_slice(&[0x10, 0, 0, 0]);
    p
}

fn vp8_pictures(r: &mut Reader<'_>) {
    let format = r.u8();
    let (has_tl0, has_key) = (format & 1 == 1, format & 2 == 2);
    let mut munger = Vp8Munger::default();
    // Incoming values of the current source; its pictures; the offsets of TL0PICIDX and
    // KEYIDX of the current source.
    let mut input = Fields {
        picture: 0,
        tl0: None,
        key: None,
    };
    let mut pictures: Vec<Picture> = Vec::new();
    let mut offsets = (0u8, 0u8);
    let mut last_out: Option<Fields> = None;
    let mut started = false;
    let mut drops = 0usize;

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 4 {
            0 | 1 if !started || op.is_multiple_of(4) => {
                // A new source, starting with a keyframe.
                input = Fields {
                    picture: r.u16() & 0x7fff,
                    tl0: has_tl0.then(|| r.u8()),
                    key: has_key.then(|| r.u8() & 0x1f),
                };
                let out = match last_out {
                    None => input,
                    Some(last) => Fields {
                        picture: (last.picture + 1) & 0x7fff,
                        tl0: last.tl0.map(|t| t.wrapping_add(1)),
                        key: last.key.map(|k| (k + 1) & 0x1f),
                    },
                };
                offsets = (
                    out.tl0.zip(input.tl0).map_or(0, |(o, i)| o.wrapping_sub(i)),
                    out.key.zip(input.key).map_or(0, |(o, i)| o.wrapping_sub(i)),
                );
                let payload = vp8_payload(input, 0, true);
                munger.start_source(&payload);
                pictures.clear();
                started = true;
                send_picture(&mut munger, &payload, out, op >> 6);
                pictures.push(Picture {
                    payload,
                    out,
                    drops_before: drops,
                });
                last_out = Some(out);
            }
            0 | 1 => {
                // The next picture: temporal layer 0 (a new TL0PICIDX) or an upper one, which
                // may be dropped.
                let tid = r.u8() % 3;
                input.picture = (input.picture + 1) & 0x7fff;
                if tid == 0 {
                    input.tl0 = input.tl0.map(|t| t.wrapping_add(1));
                }
                if r.u8() == 0 {
                    input.key = input.key.map(|k| (k + 1) & 0x1f);
                }
                let payload = vp8_payload(input, tid, true);
                if tid > 0 && op & 0x80 != 0 {
                    for _ in 0..=(op >> 5) & 3 {
                        munger.drop_packet(&payload);
                    }
                    drops += 1;
                    continue;
                }
                let last = last_out.map_or(input.picture, |l| l.picture);
                let out = Fields {
                    picture: (last + 1) & 0x7fff,
                    tl0: input.tl0.map(|t| t.wrapping_add(offsets.0)),
                    key: input.key.map(|k| k.wrapping_add(offsets.1) & 0x1f),
                };
                send_picture(&mut munger, &payload, out, op >> 5);
                pictures.push(Picture {
                    payload,
                    out,
                    drops_before: drops,
                });
                last_out = Some(out);
            }
            _ => {
                // A late packet of one of the last pictures sent (numbered as it was).
                let back = usize::from(r.u8() % 8);
                let Some(p) = pictures.iter().rev().nth(back) else {
                    continue;
                };
                if drops - p.drops_before >= 60 {
                    continue; // Older than the drops the munger remembers.
                }
                let mut late = p.payload.clone();
                if let Some(first) = late.first_mut() {
                    *first &= !0x10; // Not the first packet of its picture.
                }
                check_vp8(&mut munger, &late, p.out, false);
            }
        }
    }
}

/// Sends the packets of one picture (the first with S set), checking each one's rewrite.
fn send_picture(munger: &mut Vp8Munger, first: &[u8], out: Fields, packets: u8) {
    check_vp8(munger, first, out, true);
    let mut next = first.to_vec();
    if let Some(b) = next.first_mut() {
        *b &= !0x10;
    }
    for _ in 0..packets % 3 {
        check_vp8(munger, &next, out, true);
    }
}

fn check_vp8(munger: &mut Vp8Munger, payload: &[u8], out: Fields, newest: bool) {
    let Ok(d) = Vp8Descriptor::parse(payload) else {
        panic!("the harness built a bad descriptor: {payload:?}");
    };
    let expected = (Some(out.picture), out.tl0, out.key);
    match munger.rewrite(payload, newest) {
        None => assert_eq!(
            (d.picture_id(), d.tl0_pic_idx(), d.key_idx()),
            expected,
            "not rewritten"
        ),
        Some(p) => assert_eq!(Some(p), patch_for(&d, expected), "rewritten wrongly"),
    }
}

fn vp8_params() -> PayloadParams {
    let spec = CodecSpec {
        codec: Codec::Vp8,
        clock_rate: Frequency::NINETY_KHZ,
        channels: None,
        format: FormatParams::default(),
    };
    PayloadParams::new(Pt::from(96), None, spec)
}

/// One simulcast layer of the publisher the switcher is fed.
struct Layer {
    seq: u64,
    ts: u32,
    picture: u16,
}

fn layer_switcher(r: &mut Reader<'_>) {
    let params = vp8_params();
    let t0 = Instant::now();
    let mut now = t0;
    let mut switcher = LayerSwitcher::new(true);
    let mut layers: Vec<Layer> = (0..3u16)
        .map(|i| Layer {
            seq: u64::from(r.u16()) + (1 << 16),
            ts: r.u32(),
            picture: r.u16().wrapping_add(i) & 0x7fff,
        })
        .collect();
    let mut frames = 0u64;
    // The receiver's view: last outgoing number, the layer and incoming and outgoing
    // timestamps of the last packet forwarded.
    let mut last: Option<(u64, u8, u32, u32)> = None;
    let mut seen = HashSet::new();

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 8 {
            0 => {
                let layer = r.u8() % 4;
                switcher.set_target((layer < 3).then_some(layer));
            }
            1 => {
                let max = r.u8() % 4;
                switcher.set_max_temporal((max < 3).then_some(max));
            }
            2 => switcher.set_stop_current(r.bool()),
            _ => {
                // One frame on every layer the publisher sends (a bit mask); keyframes and
                // temporal layers from the input.
                now += Duration::from_millis(u64::from(r.u8() % 100));
                frames += 1;
                let sending = r.u8();
                let keys = r.u8();
                // Temporal layers 0, 2, 1, 2, as Chromium sends them.
                let tid = match frames % 4 {
                    0 => 0,
                    2 => 1,
                    _ => 2,
                };
                let temporal = op & 0x80 != 0;
                for (i, l) in layers.iter_mut().enumerate() {
                    if sending & (1 << i) == 0 {
                        continue;
                    }
                    let key = keys & (1 << i) != 0;
                    l.ts = l.ts.wrapping_add(3000);
                    l.picture = (l.picture + 1) & 0x7fff;
                    let packets = 1 + (op >> 4) % 3;
                    for n in 0..packets {
                        l.seq += 1;
                        let mut payload = vec![
                            if n == 0 { 0x90 } else { 0x80 },
                            if temporal { 0xa0 } else { 0x80 },
                            0x80 | (l.picture >> 8) as u8,
                            l.picture as u8,
                        ];
                        if temporal {
                            payload.push(if key { 0 } else { tid << 6 });
                        }
                        payload.push(if n == 0 && !key { 0x01 } else { 0x00 });
                        payload.extend_from_slice(&[0; 8]);
                        let packet = ForwardedPacket {
                            track: crate::ids::TrackId(1),
                            layer: i as u8,
                            params,
                            seq: l.seq,
                            ts: l.ts,
                            marker: n + 1 == packets,
                            keyframe: starts_keyframe(Codec::Vp8, &payload),
                            temporal: vp8_temporal(&payload),
                            svc: None,
                            red: false,
                            descriptor: None,
                            payload: Arc::from(payload),
                            audio_level: None,
                            voice_activity: None,
                            video_orientation: None,
                            arrival: now,
                            // Capture times 33 ms apart, the layers' clocks a little apart.
                            capture: Some(frames as f64 * 0.033 + i as f64 * 0.001),
                        };
                        let Some(f) = switcher.on_packet(&packet, now) else {
                            continue;
                        };
                        assert_eq!(switcher.current(), Some(packet.layer), "another layer");
                        assert!(seen.insert(f.seq), "outgoing number {} twice", f.seq);
                        if let Some((seq, layer, in_ts, out_ts)) = last {
                            assert_eq!(f.seq, seq + 1, "a gap in the outgoing numbers");
                            if layer != packet.layer {
                                assert!(packet.keyframe, "switched on a delta frame");
                                assert!(f.switched);
                            }
                            if layer == packet.layer && in_ts == packet.ts {
                                assert_eq!(f.ts, out_ts, "one frame, one timestamp");
                            } else {
                                let step = f.ts.wrapping_sub(out_ts);
                                assert!(
                                    step != 0 && step < 1 << 31,
                                    "the timestamp moved by {step}"
                                );
                            }
                        } else {
                            assert!(packet.keyframe, "started on a delta frame");
                        }
                        last = Some((f.seq, packet.layer, packet.ts, f.ts));
                    }
                }
            }
        }
    }
}
