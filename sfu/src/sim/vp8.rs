//! A VP8 simulcast encoder as Chromium's behaves on the wire, and a receiver that decodes the
//! way a real decoder can: a frame decodes only when all its packets arrived and the frame it
//! references decoded, so a layer switched before its keyframe, a lost packet or a broken
//! temporal-layer drop shows up as frames that do not decode and as freezes.
//!
//! Each packet carries, in its last [`TAG_LEN`] bytes, what frame of which layer it belongs to
//! and which frame that one references: the receiver's ground truth.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Frames per second.
pub(crate) const FPS: u64 = 30;
/// The interval between frames.
pub(crate) const FRAME: Duration = Duration::from_nanos(1_000_000_000 / FPS);
/// Largest payload per packet.
const MAX_PAYLOAD: usize = 1000;
/// The ground-truth tag at the end of every payload.
const TAG_LEN: usize = 13;
/// Chromium's three-layer temporal pattern: the temporal layer of each frame in a cycle.
const TEMPORAL_PATTERN: [u8; 4] = [0, 2, 1, 2];

/// One simulcast layer: its frame size and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerSpec {
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) bps: u64,
}

/// Chromium's three layers for a 1280x720 camera.
pub(crate) const CHROMIUM_720P: [LayerSpec; 3] = [
    LayerSpec {
        width: 320,
        height: 180,
        bps: 150_000,
    },
    LayerSpec {
        width: 640,
        height: 360,
        bps: 500_000,
    },
    LayerSpec {
        width: 1280,
        height: 720,
        bps: 1_500_000,
    },
];

/// A packet the encoder produced for one layer.
#[derive(Debug, Clone)]
pub(crate) struct EncodedPacket {
    pub(crate) layer: usize,
    pub(crate) seq: u64,
    pub(crate) timestamp: u32,
    pub(crate) marker: bool,
    pub(crate) payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct LayerState {
    spec: LayerSpec,
    active: bool,
    /// Frames encoded on this layer so far (the frame number of the next one).
    frames: u32,
    /// Position in the temporal pattern (restarts at a keyframe).
    position: usize,
    last_base: Option<u32>,
    picture_id: u16,
    tl0_index: u8,
    seq: u64,
    /// A keyframe is due at or after this encoder frame count.
    keyframe_at: Option<u64>,
}

/// A VP8 simulcast encoder: every [`FRAME`], one frame per active layer.
#[derive(Debug)]
pub(crate) struct Vp8Simulcast {
    /// Which encoder this is, written into every packet's tag.
    pub(crate) source: u8,
    layers: Vec<LayerState>,
    temporal: bool,
    /// Frames since the start, all layers together.
    ticks: u64,
    /// Frames between a keyframe request and the keyframe.
    keyframe_delay: u64,
    /// Keyframe requests that reached the encoder, per layer.
    pub(crate) keyframe_requests: Vec<u32>,
    /// Keyframes sent, per layer.
    pub(crate) keyframes_sent: Vec<u32>,
}

impl Vp8Simulcast {
    pub(crate) fn new(specs: &[LayerSpec], temporal: bool) -> Self {
        let layers = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| LayerState {
                spec: *spec,
                active: true,
                frames: 0,
                position: 0,
                last_base: None,
                picture_id: 100 * i as u16,
                tl0_index: 0,
                seq: 1000 + 10_000 * i as u64,
                keyframe_at: Some(0),
            })
            .collect();
        Self {
            source: 0,
            layers,
            temporal,
            ticks: 0,
            keyframe_delay: 1,
            keyframe_requests: vec![0; specs.len()],
            keyframes_sent: vec![0; specs.len()],
        }
    }

    /// Asks the encoder for a keyframe on `layer` (a PLI or FIR reached the publisher).
    pub(crate) fn request_keyframe(&mut self, layer: usize) {
        let at = self.ticks + self.keyframe_delay;
        if let Some(l) = self.layers.get_mut(layer) {
            l.keyframe_at = Some(l.keyframe_at.map_or(at, |k| k.min(at)));
        }
        if let Some(n) = self.keyframe_requests.get_mut(layer) {
            *n += 1;
        }
    }

    /// Turns layers on and off (dynacast). A layer turned on starts with a keyframe.
    pub(crate) fn set_active(&mut self, active: &[bool]) {
        let ticks = self.ticks;
        for (l, on) in self.layers.iter_mut().zip(active) {
            if *on && !l.active {
                l.keyframe_at = Some(ticks);
            }
            l.active = *on;
        }
    }

    /// Which layers are on.
    pub(crate) fn active(&self) -> Vec<bool> {
        self.layers.iter().map(|l| l.active).collect()
    }

    /// The next frame of every active layer.
    pub(crate) fn frame(&mut self) -> Vec<EncodedPacket> {
        let ticks = self.ticks;
        self.ticks += 1;
        let timestamp = u32::try_from(ticks * 90_000 / FPS).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        for (index, l) in self.layers.iter_mut().enumerate() {
            if !l.active {
                continue;
            }
            let key = l.keyframe_at.is_some_and(|at| at <= ticks);
            if key {
                l.keyframe_at = None;
                l.position = 0;
                if let Some(n) = self.keyframes_sent.get_mut(index) {
                    *n += 1;
                }
            }
            let frame = l.frames;
            l.frames += 1;
            let tid = if self.temporal {
                TEMPORAL_PATTERN[l.position % TEMPORAL_PATTERN.len()]
            } else {
                0
            };
            l.position += 1;
            // tid 0 and 1 reference the last base frame; tid 2 the frame before it.
            let reference = match (key, tid) {
                (true, _) => None,
                (false, 2) => frame.checked_sub(1),
                (false, _) if self.temporal => l.last_base,
                (false, _) => frame.checked_sub(1),
            };
            let layer_sync = tid > 0 && reference == l.last_base;
            if tid == 0 {
                l.last_base = Some(frame);
                l.tl0_index = l.tl0_index.wrapping_add(1);
            }
            l.picture_id = (l.picture_id + 1) & 0x7fff;
            let bytes = (l.spec.bps / 8 / FPS) as usize * if key { 4 } else { 1 };
            let count = bytes.div_ceil(MAX_PAYLOAD).clamp(1, 255);
            for i in 0..count {
                let mut payload = Vec::with_capacity(MAX_PAYLOAD + TAG_LEN);
                // RFC 7741 descriptor: X, S on the first packet, partition 0.
                payload.push(if i == 0 { 0x90 } else { 0x80 });
                payload.push(if self.temporal { 0xe0 } else { 0x80 });
                payload.push(0x80 | (l.picture_id >> 8) as u8);
                payload.push(l.picture_id as u8);
                if self.temporal {
                    payload.push(l.tl0_index);
                    payload.push(tid << 6 | if layer_sync { 0x20 } else { 0 });
                }
                if i == 0 {
                    // RFC 6386 frame header: P = 0 on a keyframe, with the start code and size.
                    if key {
                        payload.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
                        payload.extend_from_slice(&l.spec.width.to_le_bytes());
                        payload.extend_from_slice(&l.spec.height.to_le_bytes());
                    } else {
                        payload.extend_from_slice(&[0x01, 0x00, 0x00]);
                    }
                }
                let fill = (bytes / count).clamp(16, MAX_PAYLOAD);
                payload.resize(payload.len().max(fill), 0x55);
                payload.extend_from_slice(
                    &Tag {
                        source: self.source,
                        layer: index as u8,
                        frame,
                        reference,
                        index: i as u8,
                        count: count as u8,
                        tid,
                    }
                    .to_bytes(),
                );
                l.seq += 1;
                out.push(EncodedPacket {
                    layer: index,
                    seq: l.seq,
                    timestamp,
                    marker: i + 1 == count,
                    payload,
                });
            }
        }
        out
    }
}

/// The ground truth a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    source: u8,
    layer: u8,
    frame: u32,
    reference: Option<u32>,
    index: u8,
    count: u8,
    tid: u8,
}

impl Tag {
    fn to_bytes(self) -> [u8; TAG_LEN] {
        let mut b = [0u8; TAG_LEN];
        b[0] = self.layer;
        b[1..5].copy_from_slice(&self.frame.to_be_bytes());
        b[5..9].copy_from_slice(&self.reference.unwrap_or(u32::MAX).to_be_bytes());
        b[9] = self.index;
        b[10] = self.count;
        b[11] = self.tid;
        b[12] = self.source;
        b
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        let b = payload.get(payload.len().checked_sub(TAG_LEN)?..)?;
        let u32_at = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let reference = u32_at(5)?;
        Some(Self {
            layer: *b.first()?,
            frame: u32_at(1)?,
            reference: (reference != u32::MAX).then_some(reference),
            index: *b.get(9)?,
            count: *b.get(10)?,
            tid: *b.get(11)?,
            source: *b.get(12)?,
        })
    }
}

/// A frame the receiver decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) at: Instant,
    /// The encoder it came from.
    pub(crate) source: u8,
    pub(crate) layer: u8,
    pub(crate) frame: u32,
    pub(crate) key: bool,
    pub(crate) tid: u8,
    /// The VP8 picture ID the receiver saw (the server rewrites it).
    pub(crate) picture_id: u16,
}

#[derive(Debug, Default)]
struct Assembly {
    tag: Option<Tag>,
    got: HashSet<u8>,
    picture_id: u16,
}

/// A complete frame waiting for its reference to decode (a jitter buffer's job: the
/// reference may still be repaired by a retransmission).
#[derive(Debug, Clone, Copy)]
struct Waiting {
    tag: Tag,
    picture_id: u16,
    since: Instant,
}

/// How long a complete frame waits for its reference before the decoder gives up on it.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(500);

/// A frame: its encoder, its layer, its number.
type FrameKey = (u8, u8, u32);

/// Decodes what a subscriber receives (frames of several encoders are told apart by the
/// source in their tags).
#[derive(Debug, Default)]
pub(crate) struct Vp8Receiver {
    /// Frames being assembled, by (layer, frame).
    pending: BTreeMap<FrameKey, Assembly>,
    /// Complete frames whose reference has not decoded (yet).
    waiting: BTreeMap<FrameKey, Waiting>,
    decoded_set: HashSet<FrameKey>,
    pub(crate) decoded: Vec<Decoded>,
    /// Complete frames whose reference never decoded within [`MAX_WAIT`]: a decoder would
    /// show garbage or stop.
    pub(crate) undecodable: u32,
    pub(crate) packets: u64,
    /// Packets that are not an encoder's (no tag): padding or garbage forwarded.
    pub(crate) untagged: u64,
}

impl Vp8Receiver {
    pub(crate) fn on_packet(&mut self, at: Instant, payload: &[u8]) {
        self.packets += 1;
        let Some(tag) = Tag::parse(payload).filter(|t| t.count > 0 && t.index < t.count) else {
            self.untagged += 1;
            return;
        };
        let picture_id = match (payload.get(2), payload.get(3)) {
            (Some(hi), Some(lo)) => u16::from(hi & 0x7f) << 8 | u16::from(*lo),
            _ => 0,
        };
        let key = (tag.source, tag.layer, tag.frame);
        if self.decoded_set.contains(&key) || self.waiting.contains_key(&key) {
            return; // a duplicate
        }
        let entry = self.pending.entry(key).or_default();
        entry.tag = Some(tag);
        entry.got.insert(tag.index);
        if tag.index == 0 {
            entry.picture_id = picture_id;
        }
        if entry.got.len() >= usize::from(tag.count) {
            let picture_id = entry.picture_id;
            self.pending.remove(&key);
            self.waiting.insert(
                key,
                Waiting {
                    tag,
                    picture_id,
                    since: at,
                },
            );
        }
        self.decode(at);
    }

    /// Decodes every waiting frame whose reference decoded; gives up on those that waited
    /// too long.
    fn decode(&mut self, at: Instant) {
        loop {
            let ready = self.waiting.iter().find_map(|(k, w)| {
                let ok = w
                    .tag
                    .reference
                    .is_none_or(|r| self.decoded_set.contains(&(w.tag.source, w.tag.layer, r)));
                ok.then_some(*k)
            });
            let Some(k) = ready else {
                break;
            };
            let Some(w) = self.waiting.remove(&k) else {
                break;
            };
            self.decoded_set.insert(k);
            self.decoded.push(Decoded {
                at,
                source: w.tag.source,
                layer: w.tag.layer,
                frame: w.tag.frame,
                key: w.tag.reference.is_none(),
                tid: w.tag.tid,
                picture_id: w.picture_id,
            });
            // A keyframe makes everything older on its layer useless.
            if w.tag.reference.is_none() {
                let before = self.waiting.len();
                self.waiting.retain(|(s, l, f), _| {
                    (*s, *l) != (w.tag.source, w.tag.layer) || *f > w.tag.frame
                });
                self.undecodable += (before - self.waiting.len()) as u32;
            }
            let (source, layer, frame) = k;
            self.pending
                .retain(|(s, l, f), _| (*s, *l) != (source, layer) || *f + 64 > frame);
        }
        let before = self.waiting.len();
        self.waiting.retain(|_, w| at < w.since + MAX_WAIT);
        self.undecodable += (before - self.waiting.len()) as u32;
    }

    /// The layer of the last decoded frame.
    pub(crate) fn layer(&self) -> Option<u8> {
        self.decoded.last().map(|d| d.layer)
    }

    /// The longest time without a decoded frame between `from` and `to` (what a viewer sees
    /// frozen), counting from `from` if nothing decoded before.
    pub(crate) fn longest_freeze(&self, from: Instant, to: Instant) -> Duration {
        self.freeze_where(from, to, |_| true)
    }

    /// [`Self::longest_freeze`] of one encoder's frames.
    pub(crate) fn longest_freeze_of(&self, source: u8, from: Instant, to: Instant) -> Duration {
        self.freeze_where(from, to, |d| d.source == source)
    }

    /// The longest time between `from` and `to` without a decoded frame of `layer` (what a
    /// viewer spends off that layer).
    pub(crate) fn longest_off_layer(&self, layer: u8, from: Instant, to: Instant) -> Duration {
        self.freeze_where(from, to, |d| d.layer == layer)
    }

    fn freeze_where(
        &self,
        from: Instant,
        to: Instant,
        keep: impl Fn(&Decoded) -> bool,
    ) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for d in self
            .decoded
            .iter()
            .filter(|d| d.at > from && d.at <= to && keep(d))
        {
            longest = longest.max(d.at - last);
            last = d.at;
        }
        longest.max(to.saturating_duration_since(last))
    }

    /// Frames of one encoder decoded in `[from, to]`.
    pub(crate) fn frames_of(&self, source: u8, from: Instant, to: Instant) -> usize {
        self.decoded
            .iter()
            .filter(|d| d.source == source && d.at >= from && d.at <= to)
            .count()
    }

    /// Layer changes: when, from which layer to which, and whether the new layer's first
    /// frame was a keyframe.
    pub(crate) fn switches(&self) -> Vec<(Instant, u8, u8, bool)> {
        self.decoded
            .windows(2)
            .filter(|w| w[0].layer != w[1].layer)
            .map(|w| (w[1].at, w[0].layer, w[1].layer, w[1].key))
            .collect()
    }

    /// Decoded frames per layer in `[from, to]`.
    pub(crate) fn frames_per_layer(&self, from: Instant, to: Instant) -> [u32; 3] {
        let mut n = [0; 3];
        for d in self.decoded.iter().filter(|d| d.at >= from && d.at <= to) {
            if let Some(c) = n.get_mut(usize::from(d.layer)) {
                *c += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyframe::{starts_keyframe, vp8_keyframe_size, vp8_temporal};
    use str0m::format::Codec;

    #[test]
    fn the_encoder_speaks_vp8_the_server_understands() {
        let mut enc = Vp8Simulcast::new(&CHROMIUM_720P, true);
        let first = enc.frame();
        let keys: Vec<_> = first
            .iter()
            .filter(|p| starts_keyframe(Codec::Vp8, &p.payload))
            .map(|p| (p.layer, vp8_keyframe_size(&p.payload)))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0, Some((320, 180))),
                (1, Some((640, 360))),
                (2, Some((1280, 720)))
            ]
        );
        let tids: Vec<u8> = (0..4)
            .map(|_| {
                let f = enc.frame();
                vp8_temporal(&f[0].payload).map_or(9, |t| t.tid)
            })
            .collect();
        assert_eq!(tids, [2, 1, 2, 0]);
    }

    #[test]
    fn the_receiver_decodes_a_clean_stream_and_refuses_a_broken_chain() {
        let t = Instant::now();
        let mut enc = Vp8Simulcast::new(&CHROMIUM_720P[..1], true);
        let mut rx = Vp8Receiver::default();
        for n in 0..40u32 {
            for p in enc.frame() {
                // Lose frame 6 (temporal layer 1).
                if n == 6 {
                    continue;
                }
                rx.on_packet(t + FRAME * n, &p.payload);
            }
        }
        // Frame 7 (temporal layer 2) references 6: it waits, then is given up; frame 8
        // (temporal layer 0) references 4 and decodes.
        assert_eq!(rx.undecodable, 1);
        assert_eq!(rx.decoded.len(), 38);
        assert!(rx.decoded[0].key);
    }
}
