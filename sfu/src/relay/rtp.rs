//! A forwarded packet as it crosses to another node: an RTP packet in the clear whose header
//! extensions (RFC 8285, two-byte form, ids fixed by this format rather than negotiated) carry
//! what the origin learned about it, so the edge publishes it without parsing anything again:
//!
//! | id | bytes | what |
//! |----|-------|------|
//! | 1 | 2 | audio level in -dBov, and voice activity (0: not said, 1: no, 2: yes) |
//! | 2 | 1 | video orientation (CVO bits) |
//! | 3 | 8 | capture time, seconds since the Unix epoch (`f64`, big-endian) |
//! | 4 | 4 | layering: flags, VP8 temporal layer, SVC temporal layer, layer |
//!
//! The sequence number and timestamp are the publisher's (the edge extends the sequence
//! number and detects loss per layer); the SSRC is zero (the datagram says which track).

use super::RelayError;
use crate::packet::ForwardedPacket;

/// Two-byte header extension profile (RFC 8285).
const TWO_BYTE_PROFILE: u16 = 0x1000;
const EXT_AUDIO_LEVEL: u8 = 1;
const EXT_ORIENTATION: u8 = 2;
const EXT_CAPTURE: u8 = 3;
const EXT_LAYERING: u8 = 4;

const KEYFRAME: u8 = 0x01;
const RED: u8 = 0x02;
const TEMPORAL: u8 = 0x04;
const LAYER_SYNC: u8 = 0x08;
const FRAME_START: u8 = 0x10;
const SVC: u8 = 0x20;
const SVC_START: u8 = 0x40;
const SVC_END: u8 = 0x80;

/// One relayed packet, read back (borrowing its payload).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayedRtp<'a> {
    /// Payload type (the publisher's).
    pub pt: u8,
    /// The publisher's sequence number.
    pub seq: u16,
    /// The publisher's RTP timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Simulcast layer, or spatial layer of a scalable stream.
    pub layer: u8,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// The payload is RED (RFC 2198) around the track's codec.
    pub red: bool,
    /// VP8 temporal layer: index, layer sync, frame start.
    pub temporal: Option<(u8, bool, bool)>,
    /// Scalable stream frame boundaries: start, end, temporal layer.
    pub svc: Option<(bool, bool, u8)>,
    /// Audio level (-dBov, negative) and voice activity, if the sender said.
    pub audio_level: Option<(i8, Option<bool>)>,
    /// Video orientation (CVO bits).
    pub orientation: Option<u8>,
    /// Capture time, seconds since the Unix epoch.
    pub capture: Option<f64>,
    /// The codec payload.
    pub payload: &'a [u8],
}

/// Writes `p` as a relayed RTP packet into `out` (cleared first).
pub(crate) fn encode(p: &ForwardedPacket, out: &mut Vec<u8>) {
    out.clear();
    out.push(0x90); // V=2, X=1
    out.push(u8::from(p.marker) << 7 | (*p.params.pt() & 0x7f));
    out.extend_from_slice(&(p.seq as u16).to_be_bytes());
    out.extend_from_slice(&p.ts.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&TWO_BYTE_PROFILE.to_be_bytes());
    let length_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let start = out.len();
    if let Some(level) = p.audio_level {
        let vad = match p.voice_activity {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        let level = level.unsigned_abs().min(127);
        out.extend_from_slice(&[EXT_AUDIO_LEVEL, 2, level, vad]);
    }
    if let Some(orientation) = p.video_orientation {
        out.extend_from_slice(&[EXT_ORIENTATION, 1, orientation as u8]);
    }
    if let Some(capture) = p.capture {
        out.extend_from_slice(&[EXT_CAPTURE, 8]);
        out.extend_from_slice(&capture.to_be_bytes());
    }
    let mut flags = 0;
    let (mut tid, mut svc_temporal) = (0, 0);
    if p.keyframe {
        flags |= KEYFRAME;
    }
    if p.red {
        flags |= RED;
    }
    if let Some(t) = p.temporal {
        flags |= TEMPORAL;
        tid = t.tid;
        if t.layer_sync {
            flags |= LAYER_SYNC;
        }
        if t.frame_start {
            flags |= FRAME_START;
        }
    }
    if let Some(s) = p.svc {
        flags |= SVC;
        svc_temporal = s.temporal;
        if s.start {
            flags |= SVC_START;
        }
        if s.end {
            flags |= SVC_END;
        }
    }
    out.extend_from_slice(&[EXT_LAYERING, 4, flags, tid, svc_temporal, p.layer]);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let words = u16::try_from((out.len() - start) / 4).unwrap_or(u16::MAX);
    if let Some(slot) = out.get_mut(length_at..length_at + 2) {
        slot.copy_from_slice(&words.to_be_bytes());
    }
    out.extend_from_slice(&p.payload);
}

/// Reads a relayed RTP packet, refusing anything this format does not write.
pub fn decode(data: &[u8]) -> Result<RelayedRtp<'_>, RelayError> {
    let malformed = |why: &'static str| RelayError::Malformed(why);
    let header = data
        .get(..16)
        .ok_or(malformed("shorter than its headers"))?;
    let byte = |i: usize| header.get(i).copied().unwrap_or(0);
    if byte(0) != 0x90 {
        return Err(malformed("not RTP version 2 with one header extension"));
    }
    if u16::from_be_bytes([byte(12), byte(13)]) != TWO_BYTE_PROFILE {
        return Err(malformed("not the two-byte extension profile"));
    }
    let words = usize::from(u16::from_be_bytes([byte(14), byte(15)]));
    let extensions = data
        .get(16..16 + 4 * words)
        .ok_or(malformed("extensions past the end"))?;
    let payload = data.get(16 + 4 * words..).unwrap_or_default();
    let mut p = RelayedRtp {
        pt: byte(1) & 0x7f,
        seq: u16::from_be_bytes([byte(2), byte(3)]),
        ts: u32::from_be_bytes([byte(4), byte(5), byte(6), byte(7)]),
        marker: byte(1) & 0x80 != 0,
        layer: 0,
        keyframe: false,
        red: false,
        temporal: None,
        svc: None,
        audio_level: None,
        orientation: None,
        capture: None,
        payload,
    };
    let mut layering = false;
    let mut rest = extensions;
    while let Some((&id, after)) = rest.split_first() {
        if id == 0 {
            rest = after; // padding
            continue;
        }
        let (&len, after) = after
            .split_first()
            .ok_or(malformed("extension without a length"))?;
        let value = after
            .get(..usize::from(len))
            .ok_or(malformed("extension past the end"))?;
        rest = after.get(usize::from(len)..).unwrap_or_default();
        match (id, value) {
            (EXT_AUDIO_LEVEL, &[level, vad]) if level <= 127 && vad <= 2 => {
                let vad = match vad {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                };
                p.audio_level = Some((-(level as i8), vad));
            }
            (EXT_ORIENTATION, &[v]) => p.orientation = Some(v & 0x03),
            (EXT_CAPTURE, v) if v.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(v);
                let capture = f64::from_be_bytes(bytes);
                if !capture.is_finite() {
                    return Err(malformed("capture time not finite"));
                }
                p.capture = Some(capture);
            }
            (EXT_LAYERING, &[flags, tid, svc_temporal, layer]) => {
                layering = true;
                p.layer = layer;
                p.keyframe = flags & KEYFRAME != 0;
                p.red = flags & RED != 0;
                p.temporal = (flags & TEMPORAL != 0).then_some((
                    tid,
                    flags & LAYER_SYNC != 0,
                    flags & FRAME_START != 0,
                ));
                p.svc = (flags & SVC != 0).then_some((
                    flags & SVC_START != 0,
                    flags & SVC_END != 0,
                    svc_temporal,
                ));
            }
            _ => return Err(malformed("unknown or malformed extension")),
        }
    }
    if !layering {
        return Err(malformed("no layering extension"));
    }
    if usize::from(p.layer) >= crate::allocator::MAX_LAYERS {
        return Err(malformed("layer out of range"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use str0m::rtp::VideoOrientation;

    use super::*;
    use crate::keyframe::Vp8Temporal;
    use crate::packet::SvcFrame;
    use crate::packet::tests::video_packet;

    fn packet() -> ForwardedPacket {
        ForwardedPacket {
            layer: 2,
            seq: 0x1_2345,
            ts: 0xdead_beef,
            temporal: Some(Vp8Temporal {
                tid: 2,
                layer_sync: true,
                frame_start: true,
            }),
            payload: Arc::from(vec![0x90, 0x80, 0x12, 0x34, 1, 2, 3]),
            audio_level: Some(-42),
            voice_activity: Some(true),
            video_orientation: Some(VideoOrientation::Deg90),
            capture: Some(1_764_540_000.25),
            ..video_packet(0, true, 0, Instant::now())
        }
    }

    #[test]
    fn a_relayed_packet_reads_back_with_everything_the_origin_knew() {
        let p = packet();
        let mut out = Vec::new();
        encode(&p, &mut out);
        let read = decode(&out).expect("reads back");
        assert_eq!(read.pt, 96);
        assert_eq!(read.seq, 0x2345, "the low 16 bits of the extended number");
        assert_eq!((read.ts, read.marker, read.layer), (0xdead_beef, true, 2));
        assert!(read.keyframe && !read.red);
        assert_eq!(read.temporal, Some((2, true, true)));
        assert_eq!(read.svc, None);
        assert_eq!(read.audio_level, Some((-42, Some(true))));
        assert_eq!(read.orientation, Some(VideoOrientation::Deg90 as u8));
        assert_eq!(read.capture, Some(1_764_540_000.25));
        assert_eq!(read.payload, &p.payload[..]);

        let svc = ForwardedPacket {
            temporal: None,
            svc: Some(SvcFrame {
                start: false,
                end: true,
                temporal: 1,
            }),
            audio_level: None,
            video_orientation: None,
            capture: None,
            red: true,
            keyframe: false,
            ..packet()
        };
        encode(&svc, &mut out);
        let read = decode(&out).expect("reads back");
        assert_eq!(read.svc, Some((false, true, 1)));
        assert!(read.red && !read.keyframe);
        assert_eq!((read.audio_level, read.capture), (None, None));
    }

    #[test]
    fn anything_this_format_does_not_write_is_refused() {
        let mut good = Vec::new();
        encode(&packet(), &mut good);
        let refused = |bytes: &[u8]| decode(bytes).is_err();
        assert!(refused(&[]));
        assert!(refused(&good[..15]));
        let mut plain = good.clone();
        plain[0] = 0x80; // no extension
        assert!(refused(&plain));
        let mut words = good.clone();
        words[15] = 0xff; // extensions past the end
        assert!(refused(&words));
        let mut unknown = good.clone();
        unknown[16] = 9; // an id this format does not use
        assert!(refused(&unknown));
        let mut layer = good.clone();
        let at = good
            .windows(2)
            .position(|w| w == [EXT_LAYERING, 4])
            .unwrap();
        layer[at + 5] = 200;
        assert!(refused(&layer));
        let mut capture = good.clone();
        let at = good.windows(2).position(|w| w == [EXT_CAPTURE, 8]).unwrap();
        capture[at + 2..at + 10].copy_from_slice(&f64::NAN.to_be_bytes());
        assert!(refused(&capture));
    }
}
