//! Keeps VP8 picture IDs, TL0PICIDX and KEYIDX continuous for one subscriber across layer
//! switches (RFC 7741 payload descriptor).
//!
//! Each simulcast layer numbers its pictures independently; a receiver that sees the picture
//! ID jump at a switch may treat frames as lost or out of order. At a switch the offsets are
//! re-based so the new layer's first picture follows the last one sent; within a layer every
//! value is shifted by the same offset. A picture dropped on purpose (an upper temporal layer)
//! moves the pictures after it down by one: libwebrtc's VP8 reference finder would wait for a
//! missing picture ID before decoding the frames after it. The rewrite is a patch applied when the packet is
//! serialized: the shared payload is never copied.

use std::collections::VecDeque;

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// Modulo of the 15-bit picture ID.
const PICTURE_ID_SPACE: u16 = 1 << 15;
/// Modulo of KEYIDX (5 bits).
const KEY_IDX_SPACE: u8 = 1 << 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fields {
    picture_id: Option<u16>,
    tl0: Option<u8>,
    key_idx: Option<u8>,
}

/// The descriptor rewriting of one forwarded VP8 track.
#[derive(Debug, Default)]
pub(crate) struct Vp8Munger {
    /// Added (modulo) to the incoming values; zero until the first switch.
    picture_offset: u16,
    tl0_offset: u8,
    key_offset: u8,
    /// The values last sent (of the newest packet).
    last_out: Fields,
    /// Since the source started, per picture dropped: (first incoming picture ID after it,
    /// the offset that applied before it), oldest first. Late packets of earlier pictures
    /// keep the offset of their time.
    drops: VecDeque<(u16, u16)>,
    /// The incoming picture ID last dropped.
    last_dropped: Option<u16>,
}

/// Picture drops remembered for late packets.
const DROPS_KEPT: usize = 64;

/// Whether picture ID `a` comes before `b` (15-bit serial arithmetic).
fn picture_before(a: u16, b: u16) -> bool {
    let diff = b.wrapping_sub(a) % PICTURE_ID_SPACE;
    diff != 0 && diff < PICTURE_ID_SPACE / 2
}

impl Vp8Munger {
    /// A new source starts with this payload (a keyframe): its values will follow the last
    /// ones sent.
    pub(crate) fn start_source(&mut self, payload: &[u8]) {
        let Ok(d) = Vp8Descriptor::parse(payload) else {
            return;
        };
        if let (Some(last), Some(now)) = (self.last_out.picture_id, d.picture_id()) {
            self.picture_offset = (last.wrapping_add(1)).wrapping_sub(now) % PICTURE_ID_SPACE;
        }
        if let (Some(last), Some(now)) = (self.last_out.tl0, d.tl0_pic_idx()) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(now);
        }
        if let (Some(last), Some(now)) = (self.last_out.key_idx, d.key_idx()) {
            self.key_offset = last.wrapping_add(1).wrapping_sub(now) % KEY_IDX_SPACE;
        }
        self.drops.clear();
        self.last_dropped = None;
    }

    /// A packet of this source is dropped on purpose (newer than every packet sent): its
    /// picture is removed from the numbering.
    pub(crate) fn drop_packet(&mut self, payload: &[u8]) {
        let Some(picture) = Vp8Descriptor::parse(payload)
            .ok()
            .and_then(|d| d.picture_id())
        else {
            return;
        };
        if self.last_dropped == Some(picture) {
            return; // Another packet of a picture already dropped.
        }
        self.last_dropped = Some(picture);
        let next = picture.wrapping_add(1) % PICTURE_ID_SPACE;
        self.drops.push_back((next, self.picture_offset));
        if self.drops.len() > DROPS_KEPT {
            self.drops.pop_front();
        }
        self.picture_offset = self.picture_offset.wrapping_sub(1) % PICTURE_ID_SPACE;
    }

    /// The picture offset that applies to incoming picture `picture`.
    fn picture_offset_for(&self, picture: u16) -> u16 {
        let mut offset = self.picture_offset;
        for &(from, before) in self.drops.iter().rev() {
            if !picture_before(picture, from) {
                break;
            }
            offset = before;
        }
        offset
    }

    /// The patch for one forwarded packet (`None` when nothing needs rewriting). `newest`
    /// says whether it is the newest packet sent so far (its values are remembered).
    pub(crate) fn rewrite(&mut self, payload: &[u8], newest: bool) -> Option<Vp8Patch> {
        let d = Vp8Descriptor::parse(payload).ok()?;
        let picture_offset = d
            .picture_id()
            .map_or(self.picture_offset, |p| self.picture_offset_for(p));
        let out = Fields {
            picture_id: d
                .picture_id()
                .map(|p| p.wrapping_add(picture_offset) % PICTURE_ID_SPACE),
            tl0: d.tl0_pic_idx().map(|t| t.wrapping_add(self.tl0_offset)),
            key_idx: d
                .key_idx()
                .map(|k| k.wrapping_add(self.key_offset) % KEY_IDX_SPACE),
        };
        if newest {
            self.last_out = out;
        }
        if picture_offset == 0 && self.tl0_offset == 0 && self.key_offset == 0 {
            return None;
        }
        let mut builder = d.patch();
        if let Some(p) = out.picture_id {
            builder = builder.picture_id(p);
        }
        if let Some(t) = out.tl0 {
            builder = builder.tl0_pic_idx(t);
        }
        if let Some(k) = out.key_idx {
            builder = builder.key_idx(k);
        }
        builder.build().ok().or_else(|| {
            // A 7-bit picture ID cannot hold a 15-bit value: wrap it to 7 bits.
            let mut builder = d.patch();
            if let Some(p) = out.picture_id {
                builder = builder.picture_id(p & 0x7f);
            }
            if let Some(t) = out.tl0 {
                builder = builder.tl0_pic_idx(t);
            }
            if let Some(k) = out.key_idx {
                builder = builder.key_idx(k);
            }
            builder.build().ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload with a 15-bit picture id, TL0PICIDX and KEYIDX (T and K set).
    fn payload(picture_id: u16, tl0: u8, key_idx: u8, key: bool) -> Vec<u8> {
        let mut p = vec![0x90, 0x80 | 0x40 | 0x20 | 0x10];
        p.push(0x80 | (picture_id >> 8) as u8);
        p.push(picture_id as u8);
        p.push(tl0);
        p.push(key_idx & 0x1f);
        p.push(if key { 0x10 } else { 0x11 });
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn continuous_across_a_switch_and_wraps() {
        let mut m = Vp8Munger::default();
        // Layer A: pictures 32760.. (wrapping past 32767), tl0 250.., keyidx 30..
        let mut sent = Vec::new();
        for i in 0..10u16 {
            let p = payload(
                (32_760 + i) % PICTURE_ID_SPACE,
                250u8.wrapping_add(i as u8),
                (30 + i as u8) % 32,
                i == 0,
            );
            let patch = m.rewrite(&p, true);
            assert!(patch.is_none(), "nothing to rewrite before a switch");
            sent.push(m.last_out);
        }
        // Switch to layer B, numbered from 100.
        let first_b = payload(100, 7, 3, true);
        m.start_source(&first_b);
        for i in 0..5u16 {
            let p = payload(100 + i, 7 + i as u8, 3 + i as u8, i == 0);
            let patch = m.rewrite(&p, true);
            assert!(patch.is_some(), "rewritten after the switch");
            sent.push(m.last_out);
        }
        for w in sent.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert_eq!(
                b.picture_id,
                a.picture_id.map(|p| (p + 1) % PICTURE_ID_SPACE),
                "picture id continuous: {sent:?}"
            );
            assert_eq!(b.tl0, a.tl0.map(|t| t.wrapping_add(1)), "tl0 continuous");
            assert_eq!(
                b.key_idx,
                a.key_idx.map(|k| (k + 1) % 32),
                "keyidx continuous"
            );
        }
    }

    #[test]
    fn dropped_pictures_leave_no_gap_and_late_packets_keep_their_ids() {
        let mut m = Vp8Munger::default();
        let out = |m: &mut Vp8Munger, pid: u16, newest: bool| {
            m.rewrite(&payload(pid, 0, 0, false), newest);
            m.last_out.picture_id
        };
        assert_eq!(out(&mut m, 32_766, true), Some(32_766));
        // 32767 is dropped (two packets of it): 0 becomes 32767, and so on across the wrap.
        m.drop_packet(&payload(32_767, 0, 0, false));
        m.drop_packet(&payload(32_767, 0, 0, false));
        assert_eq!(out(&mut m, 0, true), Some(32_767));
        m.drop_packet(&payload(1, 0, 0, false));
        assert_eq!(out(&mut m, 2, true), Some(0));
        // A late packet of picture 0 keeps the number its picture got (read back through
        // `last_out`, as if it were the newest).
        assert!(m.rewrite(&payload(0, 0, 0, false), false).is_some());
        assert_eq!(out(&mut m, 0, true), Some(32_767));
        assert_eq!(out(&mut m, 2, true), Some(0));
        // A switch starts afresh.
        m.start_source(&payload(500, 0, 0, true));
        assert_eq!(out(&mut m, 500, true), Some(1));
        assert_eq!(out(&mut m, 501, true), Some(2));
    }

    #[test]
    fn no_patch_before_any_switch_and_garbage_is_ignored() {
        let mut m = Vp8Munger::default();
        assert!(m.rewrite(&payload(5, 1, 1, true), true).is_none());
        assert!(m.rewrite(&[], true).is_none());
        m.start_source(&[0x90]);
        assert!(m.rewrite(&payload(6, 2, 2, false), true).is_none());
    }
}
