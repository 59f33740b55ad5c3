//! VP8 in RTP (RFC 7741), both ways: cutting an encoded frame into payloads with a payload
//! descriptor, and reassembling received payloads into frames (for decoding and for telling
//! frames apart in quality statistics).

/// Bytes of the descriptor this module writes: X=1, I=1 with a 15-bit picture id.
pub const DESCRIPTOR_LEN: usize = 4;

/// Largest RTP payload written (descriptor included): leaves room for the RTP header, header
/// extensions and SRTP tag under a 1280-byte datagram.
pub const MAX_PAYLOAD: usize = 1160;

/// Cuts one encoded VP8 frame into RTP payloads, each starting with a descriptor carrying
/// `picture_id` (15 bits). The first payload has S=1; the caller sets the marker bit on the
/// last.
pub fn packetize(frame: &[u8], picture_id: u16) -> Vec<Vec<u8>> {
    let chunk = MAX_PAYLOAD - DESCRIPTOR_LEN;
    let mut out = Vec::with_capacity(frame.len() / chunk + 1);
    for (i, part) in frame.chunks(chunk).enumerate() {
        let mut payload = Vec::with_capacity(DESCRIPTOR_LEN + part.len());
        let start = if i == 0 { 0x10 } else { 0x00 };
        payload.extend_from_slice(&[
            0x80 | start,
            0x80,
            0x80 | ((picture_id >> 8) & 0x7f) as u8,
            picture_id as u8,
        ]);
        payload.extend_from_slice(part);
        out.push(payload);
    }
    out
}

/// Length of the payload descriptor at the start of `payload`, or `None` if it is truncated.
pub fn descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut len = 1;
    if first & 0x80 != 0 {
        let x = *payload.get(1)?;
        len += 1;
        if x & 0x80 != 0 {
            let pid = *payload.get(len)?;
            len += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            len += 1; // TID / KEYIDX
        }
    }
    (len < payload.len()).then_some(len)
}

/// Whether the payload starts a frame (S=1, partition 0).
pub fn starts_frame(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0)
}

/// Whether the payload starts a keyframe.
pub fn starts_keyframe(payload: &[u8]) -> bool {
    starts_frame(payload)
        && descriptor_len(payload)
            .and_then(|n| payload.get(n))
            .is_some_and(|tag| tag & 0x01 == 0)
}

/// Width and height written in a keyframe's header, if `payload` starts a keyframe.
pub fn keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    if !starts_keyframe(payload) {
        return None;
    }
    frame_size(payload.get(descriptor_len(payload)?..)?)
}

/// Width and height of a whole VP8 frame (without RTP descriptor), if it is a keyframe.
pub fn frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    // 3-byte frame tag (P=0 for a keyframe), start code 9d 01 2a, then 14-bit width and
    // height (2 scale bits each).
    if frame.first()? & 0x01 != 0 || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    Some((w, h))
}

/// Reassembles VP8 frames from payloads received in order (loopback, or after the jitter
/// buffer). A frame with a sequence gap is dropped, and so is everything until the next
/// keyframe.
#[derive(Debug, Default)]
pub struct FrameAssembler {
    current: Vec<u8>,
    in_frame: bool,
    last_seq: Option<u64>,
    need_keyframe: bool,
    started: bool,
}

impl FrameAssembler {
    /// Feeds one payload; returns a whole frame when `marker` ends one.
    pub fn push(&mut self, seq: u64, payload: &[u8], marker: bool) -> Option<Vec<u8>> {
        let gap = self.last_seq.is_some_and(|last| seq != last + 1);
        self.last_seq = Some(seq);
        if gap {
            self.in_frame = false;
            self.need_keyframe = true;
        }
        if starts_frame(payload) {
            let key = starts_keyframe(payload);
            if (self.need_keyframe || !self.started) && !key {
                self.in_frame = false;
                return None;
            }
            self.need_keyframe = false;
            self.started = true;
            self.in_frame = true;
            self.current.clear();
        }
        if !self.in_frame {
            return None;
        }
        let body = payload.get(descriptor_len(payload)?..)?;
        self.current.extend_from_slice(body);
        if marker {
            self.in_frame = false;
            return Some(std::mem::take(&mut self.current));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyframe(len: usize) -> Vec<u8> {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        f.extend((0..len).map(|i| i as u8));
        f
    }

    #[test]
    fn packetize_then_reassemble() {
        let frame = keyframe(3000);
        let payloads = packetize(&frame, 300);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(keyframe_size(&payloads[0]), Some((1280, 720)));
        assert!(!starts_frame(&payloads[1]));
        let d = str0m::rtp::Vp8Descriptor::parse(&payloads[0]).unwrap();
        assert_eq!(d.picture_id(), Some(300));
        assert!(d.starts_keyframe(&payloads[0]));
        let mut a = FrameAssembler::default();
        let n = payloads.len();
        let mut out = None;
        for (i, p) in payloads.iter().enumerate() {
            out = a.push(10 + i as u64, p, i + 1 == n);
        }
        assert_eq!(out, Some(frame));
    }

    #[test]
    fn a_gap_waits_for_the_next_keyframe() {
        let mut a = FrameAssembler::default();
        let key = packetize(&keyframe(2000), 1);
        assert!(a.push(1, &key[0], false).is_none());
        // Packet 2 lost.
        let mut inter = keyframe(10);
        inter[0] |= 1; // P=1: inter frame
        let p = packetize(&inter, 2);
        assert!(a.push(3, &p[0], true).is_none());
        let key = packetize(&keyframe(10), 3);
        assert!(a.push(4, &key[0], true).is_some());
    }
}
