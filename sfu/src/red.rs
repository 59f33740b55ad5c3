//! RFC 2198 redundant audio (RED), as Chromium sends Opus when RED is negotiated: each packet
//! carries the previous frame(s) again beside its own, so a lost packet's audio comes with the
//! next one. The server forwards RED as it came to subscribers that negotiated it and strips
//! it to its primary block (plain Opus) for the others; nothing else in a RED payload is read.

/// The primary block of a RED payload whose primary encoding is payload type `primary_pt`:
/// `None` if the payload is malformed (headers or block lengths past its end) or its primary
/// is another format.
///
/// Layout: one 4-byte header per redundant block (`F=1`, block PT, 14-bit timestamp offset,
/// 10-bit length), a 1-byte final header (`F=0`, the primary's PT), the redundant blocks in
/// order, then the primary block.
pub(crate) fn primary_block(payload: &[u8], primary_pt: u8) -> Option<&[u8]> {
    let mut offset = 0;
    let mut redundant = 0;
    loop {
        let header = *payload.get(offset)?;
        if header & 0x80 == 0 {
            if header & 0x7f != primary_pt {
                return None;
            }
            offset += 1;
            break;
        }
        let length = payload.get(offset + 2..offset + 4)?;
        redundant += usize::from(u16::from_be_bytes([
            length.first()? & 0x03,
            *length.get(1)?,
        ]));
        offset += 4;
    }
    payload.get(offset + redundant..)
}

/// A RED payload whose blocks of payload type `from` say `to` instead (the publisher and a
/// subscriber numbered the primary codec differently); `None` if malformed.
pub(crate) fn with_block_type(payload: &[u8], from: u8, to: u8) -> Option<Vec<u8>> {
    let mut out = payload.to_vec();
    let mut offset = 0;
    loop {
        let header = out.get_mut(offset)?;
        let more = *header & 0x80 != 0;
        if *header & 0x7f == from {
            *header = (*header & 0x80) | (to & 0x7f);
        }
        if !more {
            return Some(out);
        }
        offset += 4;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A RED payload of `redundant` blocks (PT, timestamp offset, bytes) and a primary.
    pub(crate) fn red_payload(pt: u8, redundant: &[(u16, &[u8])], primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, block) in redundant {
            let len = block.len() as u16;
            out.push(0x80 | pt);
            out.push((offset >> 6) as u8);
            out.push(((offset & 0x3f) << 2) as u8 | (len >> 8) as u8);
            out.push(len as u8);
        }
        out.push(pt);
        for (_, block) in redundant {
            out.extend_from_slice(block);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn the_primary_block_follows_the_redundant_ones() {
        let red = red_payload(111, &[(960, &[1, 2, 3]), (1920, &[4; 300])], &[9, 8, 7]);
        assert_eq!(primary_block(&red, 111), Some(&[9, 8, 7][..]));
        // Only a primary: the one-byte header, then the frame.
        assert_eq!(primary_block(&[111, 5, 6], 111), Some(&[5, 6][..]));
        // An empty primary (a sender in DTX may send only redundancy) is empty, not an error.
        assert_eq!(
            primary_block(&red_payload(111, &[(960, &[1])], &[]), 111),
            Some(&[][..])
        );
    }

    #[test]
    fn block_types_follow_the_subscriber_numbering() {
        let red = red_payload(109, &[(960, &[1, 2])], &[9]);
        let ours = with_block_type(&red, 109, 111).expect("well formed");
        assert_eq!(primary_block(&ours, 111), Some(&[9][..]));
        assert_eq!(ours.len(), red.len());
        assert_eq!(
            with_block_type(&[0x80 | 109, 0], 109, 111),
            None,
            "truncated"
        );
    }

    #[test]
    fn malformed_red_is_refused() {
        let red = red_payload(111, &[(960, &[1, 2, 3])], &[9]);
        assert_eq!(primary_block(&red, 0), None, "another primary format");
        for len in 0..5 {
            assert_eq!(primary_block(red.get(..len).unwrap_or_default(), 111), None);
        }
        // A block length past the end.
        let mut long = red.clone();
        if let Some(b) = long.get_mut(3) {
            *b = 200;
        }
        assert_eq!(primary_block(&long, 111), None);
        assert_eq!(primary_block(&[], 111), None);
    }
}
