//! Synthetic media whose every payload can be checked byte for byte by whoever receives it.
//!
//! Each payload is a codec prefix (a real VP8 payload descriptor and frame header, or an Opus
//! TOC byte), a [`Signature`] (who sent it, which packet, which frame, keyframe or not) and a
//! filler derived from the signature. A receiver parses the signature, rebuilds the payload
//! from it and compares: equal means the bytes arrived exactly as the publisher wrote them.

/// Bytes before the signature in a VP8 payload: a 4-byte descriptor (X, S, PID=0, 15-bit
/// picture id) and a 10-byte VP8 frame header (frame tag, start code, dimensions).
const VP8_PREFIX: usize = 14;
/// Bytes before the signature in an Opus payload (the TOC byte).
const OPUS_PREFIX: usize = 1;
const MAGIC: [u8; 4] = *b"SFUt";
const SIGNATURE_LEN: usize = 20;

/// Audio or video payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// Opus.
    Opus,
    /// VP8.
    Vp8,
    /// Media from an encoder other than this module (e.g. H264 from ffmpeg): not verifiable.
    Foreign,
}

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    /// The sender's tag (unique per publisher in a test).
    pub tag: u32,
    /// Audio or video.
    pub kind: PayloadKind,
    /// Packet counter of this stream.
    pub packet: u32,
    /// Video frame number (0 for audio).
    pub frame: u32,
    /// First packet of its frame.
    pub frame_start: bool,
    /// Part of a keyframe.
    pub keyframe: bool,
    /// Simulcast layer (0 = lowest; 0 without simulcast).
    pub layer: u8,
}

impl Signature {
    /// Builds the payload of `len` bytes (at least the prefix and signature).
    pub fn payload(&self, len: usize) -> Vec<u8> {
        let prefix = match self.kind {
            PayloadKind::Opus => vec![0x78], // SILK-only, 20 ms, mono: any valid TOC would do.
            PayloadKind::Vp8 => self.vp8_prefix(),
            PayloadKind::Foreign => Vec::new(),
        };
        let mut out = Vec::with_capacity(len.max(prefix.len() + SIGNATURE_LEN));
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.tag.to_be_bytes());
        out.push(match self.kind {
            PayloadKind::Opus => 1,
            PayloadKind::Vp8 => 2,
            PayloadKind::Foreign => 0,
        });
        out.extend_from_slice(&self.packet.to_be_bytes());
        out.extend_from_slice(&self.frame.to_be_bytes());
        out.push(
            u8::from(self.frame_start) | u8::from(self.keyframe) << 1 | (self.layer & 0x0f) << 2,
        );
        // The total length, so a truncated payload does not verify.
        let total = len.max(prefix.len() + SIGNATURE_LEN);
        out.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
        let mut x = self.tag ^ self.packet.rotate_left(13) ^ 0x9e37_79b9;
        while out.len() < len {
            // xorshift: cheap, deterministic filler.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(x as u8);
        }
        out
    }

    fn vp8_prefix(&self) -> Vec<u8> {
        let picture_id = (self.frame & 0x7fff) as u16;
        let start = if self.frame_start { 0x10 } else { 0x00 };
        let mut p = vec![
            0x80 | start,
            0x80,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
        ];
        if self.frame_start && self.keyframe {
            // Frame tag with P=0 (key frame), show_frame=1; start code; 640x360.
            p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else if self.frame_start {
            // P=1 (inter frame).
            p.extend_from_slice(&[0x11, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0]);
        } else {
            p.extend_from_slice(&[0; 10]);
        }
        debug_assert_eq!(p.len(), VP8_PREFIX);
        p
    }

    /// Reads the signature of a payload and checks that every byte is what the signature says
    /// was sent. `None` if anything differs.
    pub fn verify(kind: PayloadKind, payload: &[u8]) -> Option<Signature> {
        let offset = match kind {
            PayloadKind::Opus => OPUS_PREFIX,
            PayloadKind::Vp8 => VP8_PREFIX,
            PayloadKind::Foreign => return None,
        };
        let sig = payload.get(offset..offset + SIGNATURE_LEN)?;
        if sig.get(..4)? != MAGIC {
            return None;
        }
        let u32_at = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(sig.get(i..i + 4)?.try_into().ok()?))
        };
        let parsed_kind = match sig.get(8)? {
            1 => PayloadKind::Opus,
            2 => PayloadKind::Vp8,
            _ => return None,
        };
        let flags = *sig.get(17)?;
        let len = usize::from(u16::from_be_bytes([*sig.get(18)?, *sig.get(19)?]));
        if len != payload.len() {
            return None;
        }
        let signature = Signature {
            tag: u32_at(4)?,
            kind: parsed_kind,
            packet: u32_at(9)?,
            frame: u32_at(13)?,
            frame_start: flags & 1 != 0,
            keyframe: flags & 2 != 0,
            layer: (flags >> 2) & 0x0f,
        };
        let expected = signature.payload(payload.len());
        let same = match kind {
            // The picture ID is the SFU's to rewrite (kept continuous across layer switches).
            PayloadKind::Vp8 => {
                expected.get(..VP8_PICTURE_ID.start) == payload.get(..VP8_PICTURE_ID.start)
                    && expected.get(VP8_PICTURE_ID.end..) == payload.get(VP8_PICTURE_ID.end..)
            }
            _ => expected == payload,
        };
        (parsed_kind == kind && same).then_some(signature)
    }
}

impl Signature {
    /// The packet counter of a synthetic payload of `kind`, read without checking the rest
    /// (cheap enough for every packet a bot sends).
    pub fn packet_counter(kind: PayloadKind, payload: &[u8]) -> Option<u32> {
        let offset = match kind {
            PayloadKind::Opus => OPUS_PREFIX,
            PayloadKind::Vp8 => VP8_PREFIX,
            PayloadKind::Foreign => return None,
        };
        let sig = payload.get(offset..offset + SIGNATURE_LEN)?;
        if sig.get(..4)? != MAGIC {
            return None;
        }
        Some(u32::from_be_bytes(sig.get(9..13)?.try_into().ok()?))
    }
}

/// Where the (15-bit) picture ID sits in a synthetic VP8 payload.
const VP8_PICTURE_ID: std::ops::Range<usize> = 2..4;

/// The picture ID of a VP8 payload (RFC 7741), if its descriptor carries one.
pub fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    let (&first, &ext) = (payload.first()?, payload.get(1)?);
    if first & 0x80 == 0 || ext & 0x80 == 0 {
        return None;
    }
    let high = *payload.get(2)?;
    if high & 0x80 == 0 {
        return Some(u16::from(high));
    }
    Some(u16::from(high & 0x7f) << 8 | u16::from(*payload.get(3)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let sig = Signature {
            tag: 7,
            kind: PayloadKind::Vp8,
            packet: 1234,
            frame: 99,
            frame_start: true,
            keyframe: true,
            layer: 2,
        };
        let p = sig.payload(1000);
        assert_eq!(p.len(), 1000);
        assert_eq!(Signature::verify(PayloadKind::Vp8, &p), Some(sig));
        assert_eq!(Signature::packet_counter(PayloadKind::Vp8, &p), Some(1234));
        assert_eq!(Signature::packet_counter(PayloadKind::Opus, &p), None);
        assert_eq!(Signature::verify(PayloadKind::Opus, &p), None);
        let mut bad = p.clone();
        bad[500] ^= 1;
        assert_eq!(Signature::verify(PayloadKind::Vp8, &bad), None);
        assert_eq!(Signature::verify(PayloadKind::Vp8, &p[..999]), None);
        // The SFU's keyframe detection must see a keyframe here (S=1, PID=0, P=0).
        let d = str0m::rtp::Vp8Descriptor::parse(&p).ok();
        assert!(d.is_some_and(|d| d.starts_keyframe(&p)));
        let audio = Signature {
            kind: PayloadKind::Opus,
            frame: 0,
            ..sig
        }
        .payload(80);
        assert!(Signature::verify(PayloadKind::Opus, &audio).is_some());
    }
}
