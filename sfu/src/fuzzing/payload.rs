//! What the publisher path reads from every RTP payload a client sends: keyframe detection per
//! codec, the VP8 payload descriptor (temporal layer, keyframe size) and its rewriting at a
//! layer switch.

use str0m::format::Codec;
use str0m::rtp::{Vp8Descriptor, Vp8Patch};

use super::Reader;
use crate::keyframe::{starts_keyframe, vp8_keyframe_size, vp8_temporal};
use crate::vp8_munger::Vp8Munger;

/// Splits the input into a cut point (first byte) and a payload; returns the payload and its
/// prefix up to the cut.
fn payload_and_prefix(data: &[u8]) -> (&[u8], &[u8]) {
    let mut r = Reader::new(data);
    let cut = usize::from(r.u8());
    let payload = r.rest();
    (payload, payload.get(..cut).unwrap_or(payload))
}

/// `vp8_descriptor`: a VP8 RTP payload (after a first byte that picks a prefix of it).
///
/// Checks: whatever `vp8_temporal`, `vp8_keyframe_size` and `starts_keyframe` conclude
/// from a prefix of a packet they conclude from the whole packet; they agree with str0m's
/// descriptor parser (a keyframe size only for a keyframe, a temporal layer whenever `T` is
/// set); and a switch onto this packet's stream continues picture ID, TL0PICIDX and KEYIDX
/// right after the previous stream's, whichever of them the descriptor carries and in
/// whichever picture ID width.
pub fn vp8_descriptor(data: &[u8]) {
    let (payload, prefix) = payload_and_prefix(data);

    if let Some(size) = vp8_keyframe_size(prefix) {
        assert_eq!(vp8_keyframe_size(payload), Some(size), "size from a prefix");
    }
    if let Some(t) = vp8_temporal(prefix) {
        assert_eq!(
            vp8_temporal(payload),
            Some(t),
            "temporal layer from a prefix"
        );
        assert!(t.tid <= 3);
    }
    if starts_keyframe(Codec::Vp8, prefix) {
        assert!(
            starts_keyframe(Codec::Vp8, payload),
            "keyframe from a prefix"
        );
    }

    let Ok(d) = Vp8Descriptor::parse(payload) else {
        assert!(!starts_keyframe(Codec::Vp8, payload));
        return;
    };
    if vp8_keyframe_size(payload).is_some() {
        assert!(
            d.starts_keyframe(payload),
            "a keyframe size in a packet str0m says is no keyframe"
        );
    }
    let extended = payload.first().is_some_and(|b| b & 0x80 != 0);
    let has_t = extended && payload.get(1).is_some_and(|b| b & 0x20 != 0);
    assert_eq!(
        vp8_temporal(payload).is_some(),
        has_t,
        "T bit and temporal layer"
    );

    // Forward a stream with picture ID 100, TL0PICIDX 5 and KEYIDX 3, then switch to this one.
    let mut munger = Vp8Munger::default();
    let previous = [0x90, 0xf0, 0x80, 100, 5, 3, 0x10, 0, 0, 0];
    munger.start_source(&previous);
    assert_eq!(
        munger.rewrite(&previous, true),
        None,
        "nothing to rewrite yet"
    );
    munger.start_source(payload);
    let patch = munger.rewrite(payload, true);
    let expected = (
        d.picture_id().map(|_| 101u16),
        d.tl0_pic_idx().map(|_| 6u8),
        d.key_idx().map(|_| 4u8),
    );
    let input = (d.picture_id(), d.tl0_pic_idx(), d.key_idx());
    match patch {
        None => assert_eq!(input, expected, "not rewritten"),
        Some(p) => assert_eq!(Some(p), patch_for(&d, expected), "rewritten wrongly"),
    }
}

/// The patch that writes these values into the descriptor's fields.
pub(crate) fn patch_for(
    d: &Vp8Descriptor,
    (picture_id, tl0, key_idx): (Option<u16>, Option<u8>, Option<u8>),
) -> Option<Vp8Patch> {
    let mut builder = d.patch();
    if let Some(p) = picture_id {
        // A 7-bit picture ID carries the low seven bits of the 15-bit numbering.
        builder = builder.picture_id(if p > 0x7f && d.picture_id().is_some_and(|_| !long(d)) {
            p & 0x7f
        } else {
            p
        });
    }
    if let Some(t) = tl0 {
        builder = builder.tl0_pic_idx(t);
    }
    if let Some(k) = key_idx {
        builder = builder.key_idx(k);
    }
    builder.build().ok()
}

/// Whether the descriptor's picture ID is the 15-bit form (a 15-bit value fits it).
fn long(d: &Vp8Descriptor) -> bool {
    d.patch().picture_id(0x7fff).build().is_ok()
}

/// `video_keyframe`: an H264, VP9, AV1, H265 or Opus payload (the codec picked by the first
/// byte, a prefix by the second).
///
/// Checks: a keyframe found in a prefix is found in the whole packet; audio always starts
/// anywhere; an inter-predicted VP9 frame never starts a keyframe; an H264 packet whose first
/// NAL unit is an IDR slice or an SPS always does.
pub fn video_keyframe(data: &[u8]) {
    let mut r = Reader::new(data);
    let codec = match r.u8() % 5 {
        0 => Codec::H264,
        1 => Codec::Vp9,
        2 => Codec::Av1,
        3 => Codec::H265,
        _ => Codec::Opus,
    };
    let (payload, prefix) = payload_and_prefix(r.rest());
    let key = starts_keyframe(codec, payload);
    if starts_keyframe(codec, prefix) {
        assert!(key, "{codec:?} keyframe from a prefix only");
    }
    match codec {
        Codec::Opus => assert!(key),
        Codec::H265 => assert!(!key),
        Codec::Vp9 if payload.first().is_some_and(|b| b & 0x40 != 0) => assert!(!key),
        Codec::H264 if payload.first().is_some_and(|b| matches!(b & 0x1f, 5 | 7)) => {
            assert!(key);
        }
        _ => {}
    }
}
