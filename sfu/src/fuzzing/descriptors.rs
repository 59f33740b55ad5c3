//! The headers a hostile publisher could send around its media: `svc_descriptors` (the layer
//! descriptors of scalable streams: VP9 payload descriptors and AV1 Dependency Descriptors)
//! and `red_payload` (RFC 2198 redundant audio).

use std::sync::Arc;

use super::Reader;
use crate::dependency_descriptor::{DescriptorReader, DescriptorRewriter, RawDescriptor, read};
use crate::keyframe::vp9_layers;

/// The first byte picks VP9 (even) or the Dependency Descriptor (odd); for the latter the
/// second byte splits the rest into a first descriptor (which may carry a structure) and a
/// second one read with what the first left known.
///
/// Checks: a VP9 structure never claims more than 8 spatial layers; a descriptor the track's
/// reader accepts is rewritten for a receiver of every spatial layer into one that reads back
/// with the same frame, layers and boundaries, and with no more decode targets active than
/// the sender's; a receiver of every layer gets the sender's bytes unchanged.
pub fn svc_descriptors(data: &[u8]) {
    let mut r = Reader::new(data);
    if r.u8().is_multiple_of(2) {
        if let Some(layers) = vp9_layers(r.rest()) {
            assert!(layers.spatial < 8 && layers.temporal < 8);
            if let Some(s) = layers.structure {
                assert!((1..=8).contains(&s.spatial_layers));
            }
        }
        return;
    }
    let split = usize::from(r.u8());
    let rest = r.rest();
    let (first, second) = rest.split_at(split.min(rest.len()));
    let mut reader = DescriptorReader::default();
    let mut known = None;
    for bytes in [first, second] {
        if bytes.len() < 3 || bytes.len() > 255 {
            continue;
        }
        let raw = Arc::new(RawDescriptor(bytes.into()));
        let Some((layers, forwarded)) = reader.read(raw.clone()) else {
            continue;
        };
        let original = match read(bytes, known.as_ref()) {
            Ok(d) => d,
            Err(e) => panic!("the reader took what read refuses: {e:?}"),
        };
        if let Some(structure) = &original.attached {
            known = Some(structure.clone());
            assert!(
                layers
                    .structure
                    .is_some_and(|s| (1..=8).contains(&s.spatial_layers))
            );
        }
        for spatial in 0..8 {
            let mut rewriter = DescriptorRewriter::default();
            let temporal = (spatial < 4).then_some(spatial);
            let sent = rewriter.for_receiver(&forwarded, spatial, temporal);
            let again = match read(&sent.0, known.as_ref()) {
                Ok(d) => d,
                Err(e) => panic!("a rewrite for layer {spatial} does not read back: {e:?}"),
            };
            assert_eq!(
                (again.start_of_frame, again.end_of_frame, again.template_id),
                (
                    original.start_of_frame,
                    original.end_of_frame,
                    original.template_id
                )
            );
            assert_eq!(again.frame_number, original.frame_number);
            assert_eq!(
                (again.spatial, again.temporal),
                (layers.spatial, layers.temporal)
            );
            assert_eq!(again.attached, original.attached);
            if let (Some(now), Some(before)) = (again.active, original.active) {
                assert_eq!(
                    now & !before,
                    0,
                    "a rewrite activates a target the sender did not"
                );
            }
        }
        let sent = DescriptorRewriter::default().for_receiver(&forwarded, 7, None);
        assert!(
            Arc::ptr_eq(&sent, &raw),
            "a receiver of every layer gets the sender's bytes"
        );
    }
}

/// `red_payload`: an RFC 2198 RED payload (the first byte is the primary's payload type).
///
/// Checks: a primary block found is the end of the payload, after at least its one-byte
/// header; a payload whose first header is the final one is its primary with that byte off.
pub fn red_payload(data: &[u8]) {
    let mut r = Reader::new(data);
    let pt = r.u8() & 0x7f;
    let payload = r.rest();
    if let Some(primary) = crate::red::primary_block(payload, pt) {
        assert!(primary.len() < payload.len());
        assert!(payload.ends_with(primary));
    }
    if payload.first().is_some_and(|h| *h == pt) {
        assert_eq!(crate::red::primary_block(payload, pt), payload.get(1..));
    }
    // Renumbering the blocks keeps the layout: the same primary under the new type.
    if let Some(renumbered) = crate::red::with_block_type(payload, pt, 0x7f - pt) {
        assert_eq!(renumbered.len(), payload.len());
        if let Some(primary) = crate::red::primary_block(payload, pt) {
            assert_eq!(
                crate::red::primary_block(&renumbered, 0x7f - pt),
                Some(primary)
            );
        }
    }
}
