//! What a video RTP payload says about its frame: does it start a keyframe (one small parser
//! per codec), and for VP8 the frame size of a keyframe and the temporal layer.
//!
//! A subscriber can only start decoding (or switch layers) at a keyframe, so the forwarding
//! path asks this once per ingress packet. Every function reads the payload defensively: a
//! short or malformed payload is simply "not a keyframe".

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// Whether `payload` (RTP payload, no header) is the first packet of a keyframe for `codec`.
/// Audio and unknown codecs have no keyframes: every packet is a valid starting point, so they
/// return `true`.
pub(crate) fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::H264 => h264(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
        Codec::H265 | Codec::H266 => false,
        _ => true,
    }
}

/// Whether `codec` carries video frames that need a keyframe to start decoding.
pub(crate) fn needs_keyframe(codec: Codec) -> bool {
    matches!(
        codec,
        Codec::Vp8 | Codec::H264 | Codec::Vp9 | Codec::Av1 | Codec::H265 | Codec::H266
    )
}

/// The frame size a VP8 keyframe's first packet announces (RFC 6386 section 9.1), after the
/// RTP payload descriptor (RFC 7741). `None` if the payload does not start a keyframe or is
/// too short.
pub(crate) fn vp8_keyframe_size(payload: &[u8]) -> Option<(u32, u32)> {
    let first = *payload.first()?;
    let mut offset = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(1)?;
        offset = 2;
        if ext & 0x80 != 0 {
            // Picture ID: 15 bits when its first byte has M set, else 7.
            offset += if *payload.get(offset)? & 0x80 != 0 {
                2
            } else {
                1
            };
        }
        if ext & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            offset += 1; // TID / Y / KEYIDX
        }
    }
    let starts_partition = first & 0x10 != 0 && first & 0x07 == 0;
    let header = payload.get(offset..offset + 10)?;
    let key = header.first()? & 0x01 == 0;
    if !starts_partition || !key || header.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let dimension = |i: usize| -> Option<u32> {
        let raw = u16::from_le_bytes([*header.get(i)?, *header.get(i + 1)?]);
        Some(u32::from(raw & 0x3fff))
    };
    let (width, height) = (dimension(6)?, dimension(8)?);
    (width > 0 && height > 0).then_some((width, height))
}

/// The temporal layer of a VP8 packet (RFC 7741 `TID`, and `Y`, layer sync), if its
/// descriptor carries one, and whether the packet starts a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp8Temporal {
    /// Temporal layer index (0 = base).
    pub(crate) tid: u8,
    /// The frame depends only on the base layer.
    pub(crate) layer_sync: bool,
    /// First packet of a frame (`S` set, partition 0).
    pub(crate) frame_start: bool,
}

/// Reads the temporal layer fields of a VP8 payload descriptor.
pub(crate) fn vp8_temporal(payload: &[u8]) -> Option<Vp8Temporal> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let ext = *payload.get(1)?;
    if ext & 0x20 == 0 {
        return None; // No T: no temporal layers.
    }
    let mut offset = 2;
    if ext & 0x80 != 0 {
        offset += if *payload.get(offset)? & 0x80 != 0 {
            2
        } else {
            1
        };
    }
    if ext & 0x40 != 0 {
        offset += 1;
    }
    let byte = *payload.get(offset)?;
    Some(Vp8Temporal {
        tid: byte >> 6,
        layer_sync: byte & 0x20 != 0,
        frame_start: first & 0x10 != 0 && first & 0x07 == 0,
    })
}

fn vp8(payload: &[u8]) -> bool {
    Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_keyframe(payload))
}

/// RFC 6184. A keyframe starts with an SPS (sent before the IDR slice by every encoder we
/// forward) or, failing that, with the first fragment of an IDR slice.
fn h264(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            // [size: u16][NAL unit]... after the STAP-A header.
            let mut rest = payload.get(1..).unwrap_or_default();
            while let [hi, lo, tail @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(nal) = tail.get(..size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| matches!(h & 0x1f, IDR | SPS)) {
                    return true;
                }
                rest = tail.get(size..).unwrap_or_default();
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

/// VP9 payload descriptor (RFC 9628): `P` clear (not inter-predicted) and `B` set (start of
/// frame), in the base spatial layer.
fn vp9(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let picture_id = first & 0x80 != 0;
    let inter_predicted = first & 0x40 != 0;
    let layer_indices = first & 0x20 != 0;
    let start_of_frame = first & 0x08 != 0;
    if inter_predicted || !start_of_frame {
        return false;
    }
    if !layer_indices {
        return true;
    }
    let mut offset = 1;
    if picture_id {
        let Some(&pid) = payload.get(offset) else {
            return false;
        };
        offset += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    // TID(3) U(1) SID(3) D(1): keyframes start in spatial layer 0.
    payload.get(offset).is_some_and(|l| (l >> 1) & 0x07 == 0)
}

/// Where one packet of a scalable stream (every layer on one SSRC, as Chromium sends with
/// `scalabilityMode`) sits: read from a VP9 payload descriptor (RFC 9628) that carries layer
/// indices (`L`), or from an AV1 Dependency Descriptor
/// ([`crate::dependency_descriptor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SvcLayers {
    /// Spatial layer index (VP9 `SID`, 0 = base).
    pub(crate) spatial: u8,
    /// Temporal layer index (VP9 `TID`).
    pub(crate) temporal: u8,
    /// First packet of this spatial layer's frame (VP9 `B`).
    pub(crate) frame_start: bool,
    /// Last packet of this spatial layer's frame (VP9 `E`).
    pub(crate) frame_end: bool,
    /// Spatial layer count and each layer's size, when the packet carries the stream's
    /// structure (VP9 `V`, or the descriptor's template structure: sent with keyframes).
    pub(crate) structure: Option<SvcStructure>,
}

/// A scalable stream's structure: how many spatial layers, and their sizes when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SvcStructure {
    pub(crate) spatial_layers: u8,
    /// `(width, height)` of each spatial layer, lowest first; `(0, 0)` past the count or when
    /// the structure gives no sizes.
    pub(crate) sizes: [(u32, u32); 8],
}

/// Reads the layer fields of a VP9 payload descriptor; `None` if it carries no layer indices
/// (one layer: nothing to select) or is truncated.
pub(crate) fn vp9_layers(payload: &[u8]) -> Option<SvcLayers> {
    let first = *payload.first()?;
    let picture_id = first & 0x80 != 0;
    let inter_predicted = first & 0x40 != 0;
    let layer_indices = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    let has_structure = first & 0x02 != 0;
    if !layer_indices {
        return None;
    }
    let mut offset = 1;
    if picture_id {
        offset += if *payload.get(offset)? & 0x80 != 0 {
            2
        } else {
            1
        };
    }
    // TID(3) U(1) SID(3) D(1), then TL0PICIDX in non-flexible mode.
    let indices = *payload.get(offset)?;
    offset += if flexible { 1 } else { 2 };
    if flexible && inter_predicted {
        // Up to three reference differences, each with N: another follows.
        for _ in 0..3 {
            let diff = *payload.get(offset)?;
            offset += 1;
            if diff & 0x01 == 0 {
                break;
            }
        }
    }
    let structure = if has_structure {
        Some(vp9_structure(payload.get(offset..)?)?)
    } else {
        None
    };
    Some(SvcLayers {
        spatial: (indices >> 1) & 0x07,
        temporal: indices >> 5,
        frame_start: first & 0x08 != 0,
        frame_end: first & 0x04 != 0,
        structure,
    })
}

/// N_S(3) Y(1) G(1) -(3), then with `Y` a 16-bit width and height per spatial layer.
fn vp9_structure(bytes: &[u8]) -> Option<SvcStructure> {
    let head = *bytes.first()?;
    let spatial_layers = (head >> 5) + 1;
    let mut sizes = [(0, 0); 8];
    if head & 0x10 != 0 {
        for (i, size) in sizes
            .iter_mut()
            .take(usize::from(spatial_layers))
            .enumerate()
        {
            let at = 1 + 4 * i;
            let field = |k: usize| -> Option<u32> {
                Some(u32::from(u16::from_be_bytes([
                    *bytes.get(at + k)?,
                    *bytes.get(at + k + 1)?,
                ])))
            };
            *size = (field(0)?, field(2)?);
        }
    }
    Some(SvcStructure {
        spatial_layers,
        sizes,
    })
}

/// AV1 RTP aggregation header: `N` set on the first packet of a coded video sequence.
fn av1(payload: &[u8]) -> bool {
    payload.first().is_some_and(|h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_and_delta() {
        // X=1 S=1 PID=0, I=1 with 15-bit picture id, then payload header with P=0 (key).
        let key = [0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00];
        let delta = [0x90, 0x80, 0x81, 0x24, 0x11, 0x02, 0x00];
        let not_start = [0x80, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00];
        assert!(starts_keyframe(Codec::Vp8, &key));
        assert!(!starts_keyframe(Codec::Vp8, &delta));
        assert!(!starts_keyframe(Codec::Vp8, &not_start));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0x80]));
    }

    #[test]
    fn vp8_keyframe_sizes() {
        // Descriptor with a 15-bit picture ID, TL0PICIDX and TID; then a keyframe header
        // (frame tag, start code) announcing 1280x720 with a scaling field set.
        let mut key = vec![0x90, 0xe0, 0x81, 0x23, 0x05, 0x40];
        key.extend_from_slice(&[0x50, 0x2c, 0x01, 0x9d, 0x01, 0x2a, 0x00, 0x45, 0xd0, 0x02]);
        assert_eq!(vp8_keyframe_size(&key), Some((1280, 720)));
        // The same without descriptor extensions, 320x180.
        let short = [
            0x10, 0x50, 0x2c, 0x01, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
        ];
        assert_eq!(vp8_keyframe_size(&short), Some((320, 180)));
        // A delta frame, a continuation packet, a bad start code, truncations: no size.
        let mut delta = short;
        delta[1] |= 0x01;
        assert_eq!(vp8_keyframe_size(&delta), None);
        let mut middle = short;
        middle[0] = 0x00;
        assert_eq!(vp8_keyframe_size(&middle), None);
        let mut bad = short;
        bad[4] = 0x9c;
        assert_eq!(vp8_keyframe_size(&bad), None);
        for len in 0..short.len() {
            assert_eq!(vp8_keyframe_size(&short[..len]), None, "{len} bytes");
        }
        for len in 0..key.len() {
            assert_eq!(vp8_keyframe_size(&key[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn vp8_temporal_layers() {
        // X, S; I (15-bit picture ID), L, T; TL0PICIDX; TID=2, Y=1.
        let p = [0x90, 0xe0, 0x81, 0x23, 0x05, 0xa0, 0x00];
        assert_eq!(
            vp8_temporal(&p),
            Some(Vp8Temporal {
                tid: 2,
                layer_sync: true,
                frame_start: true
            })
        );
        // A continuation packet with only T (no picture ID, no TL0PICIDX), TID=1.
        let p = [0x80, 0x20, 0x40, 0x00];
        assert_eq!(
            vp8_temporal(&p),
            Some(Vp8Temporal {
                tid: 1,
                layer_sync: false,
                frame_start: false
            })
        );
        // No T bit, no extension, truncations: none.
        assert_eq!(vp8_temporal(&[0x90, 0x80, 0x81, 0x23]), None);
        assert_eq!(vp8_temporal(&[0x10, 0x00]), None);
        let full = [0x90, 0xe0, 0x81, 0x23, 0x05, 0xa0];
        for len in 0..full.len() {
            assert_eq!(vp8_temporal(&full[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn h264_forms() {
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
        // STAP-A with SPS and PPS.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68]
        ));
        // STAP-A with a size running past the end.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0, 9, 0x41]));
        // FU-A start of IDR, and a middle fragment.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c]));
        assert!(!starts_keyframe(Codec::H264, &[]));
    }

    /// A keyframe's first packet as Chromium sends it for L3T3_KEY: I, L, B, V set; 15-bit
    /// picture ID; TID 0, SID 0; TL0PICIDX; a structure of three layers with their sizes.
    const VP9_SVC_KEY: [u8; 18] = [
        0xaa, 0x80, 0x05, 0x00, 0x07, 0x50, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, 0x05,
        0x00, 0x02, 0xd0,
    ];

    #[test]
    fn vp9_layers_and_structure() {
        let key = vp9_layers(&VP9_SVC_KEY).expect("layer indices");
        assert_eq!((key.spatial, key.temporal), (0, 0));
        assert!(key.frame_start && !key.frame_end);
        let structure = key.structure.expect("scalability structure");
        assert_eq!(structure.spatial_layers, 3);
        assert_eq!(
            structure.sizes[..4],
            [(320, 180), (640, 360), (1280, 720), (0, 0)]
        );
        assert!(starts_keyframe(Codec::Vp9, &VP9_SVC_KEY));
        // S2 of an inter-predicted picture, TID 2, last packet of its frame: P, L, E set.
        let delta = [0xe4, 0x80, 0x06, 0x45, 0x07, 0x00];
        let layers = vp9_layers(&delta).expect("layer indices");
        assert_eq!((layers.spatial, layers.temporal), (2, 2));
        assert!(!layers.frame_start && layers.frame_end && layers.structure.is_none());
        // Flexible mode: no TL0PICIDX, reference differences chained with N.
        let flexible = [0xf8, 0x12, 0x22, 0x03, 0x04, 0x00];
        let layers = vp9_layers(&flexible).expect("layer indices");
        assert_eq!((layers.spatial, layers.temporal), (1, 1));
        // No layer indices, or cut short: nothing to select.
        assert_eq!(vp9_layers(&[0x88, 0x01, 0x00]), None);
        assert_eq!(vp9_layers(&[0xaa, 0x80]), None);
        assert_eq!(vp9_layers(&VP9_SVC_KEY[..12]), None, "sizes cut short");
        assert_eq!(vp9_layers(&[]), None);
    }

    #[test]
    fn vp9_and_av1() {
        assert!(starts_keyframe(Codec::Vp9, &[0x88, 0x01, 0]));
        assert!(!starts_keyframe(Codec::Vp9, &[0xc8, 0x01, 0]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x80, 0x01, 0]));
        // With layer indices: spatial layer 1 does not start a keyframe.
        assert!(!starts_keyframe(Codec::Vp9, &[0xa8, 0x01, 0x02]));
        assert!(starts_keyframe(Codec::Vp9, &[0xa8, 0x01, 0x00]));
        assert!(!starts_keyframe(Codec::Vp9, &[0xa8]));
        assert!(starts_keyframe(Codec::Av1, &[0x18]));
        assert!(!starts_keyframe(Codec::Av1, &[0x10]));
    }

    #[test]
    fn audio_always_starts() {
        assert!(starts_keyframe(Codec::Opus, &[]));
        assert!(!needs_keyframe(Codec::Opus));
        assert!(needs_keyframe(Codec::Vp8));
    }
}
