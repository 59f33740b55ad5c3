//! RFC 4571 framing: over ICE-TCP every STUN, DTLS and SRTP packet travels as a 16-bit
//! big-endian length followed by that many bytes. Sans-IO: bytes go in as they arrive, whole
//! packets come out; the buffer never holds more than one largest frame plus one read.

/// The largest frame RFC 4571 can describe.
#[cfg(test)]
const MAX_FRAME: usize = u16::MAX as usize;

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Appends bytes read from the connection.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived. Empty frames are skipped (they carry
    /// nothing and a stream of them must not keep a reader busy for free).
    pub(crate) fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            let len = usize::from(u16::from_be_bytes([*self.buf.first()?, *self.buf.get(1)?]));
            let frame = self.buf.get(2..2 + len)?.to_vec();
            self.buf.drain(..2 + len);
            if !frame.is_empty() {
                return Some(frame);
            }
        }
    }

    /// Bytes held that are not yet a whole frame.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buf.len()
    }

    /// What is held, for handing the connection to another reader.
    pub(crate) fn into_pending(self) -> Vec<u8> {
        self.buf
    }
}

/// A packet as a frame: its length, then itself. `None` if it is too long to frame.
pub(crate) fn frame(packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_several_per_read() {
        let mut stream = Vec::new();
        for packet in [&b"stun"[..], b"", b"dtls record", &[7u8; 1200]] {
            stream.extend(frame(packet).unwrap());
        }
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        // One byte at a time, then everything else at once.
        for b in stream.iter().take(5) {
            reader.push(&[*b]);
            out.extend(std::iter::from_fn(|| reader.next_frame()));
        }
        reader.push(&stream[5..]);
        out.extend(std::iter::from_fn(|| reader.next_frame()));
        assert_eq!(out.len(), 3, "the empty frame is skipped");
        assert_eq!(out[0], b"stun");
        assert_eq!(out[1], b"dtls record");
        assert_eq!(out[2], vec![7u8; 1200]);
        assert_eq!(reader.pending(), 0);
    }

    #[test]
    fn a_partial_frame_waits_and_too_long_packets_are_refused() {
        let mut reader = FrameReader::default();
        reader.push(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(reader.next_frame(), None);
        assert_eq!(reader.pending(), 5);
        assert!(frame(&vec![0; MAX_FRAME]).is_some());
        assert!(frame(&vec![0; MAX_FRAME + 1]).is_none());
    }
}
