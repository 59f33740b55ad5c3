//! RFC 4571 framing: over ICE-TCP every STUN, DTLS and SRTP packet travels as a 16-bit
//! big-endian length followed by that many bytes. Sans-IO: bytes go in as they arrive, whole
//! packets come out; the buffer holds at most one largest frame plus one read, and each byte
//! is moved at most once.
//!
//! What may follow the length is checked by its first byte (RFC 7983): STUN, DTLS or
//! RTP/RTCP. Anything else, or an empty frame, is a protocol error: the connection is not
//! ICE-TCP, and is closed rather than parsed further.

/// The largest frame RFC 4571 can describe.
#[cfg(test)]
const MAX_FRAME: usize = u16::MAX as usize;

/// The stream is not RFC 4571 framed WebRTC traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotIceTcp;

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
}

impl FrameReader {
    /// Appends bytes read from the connection.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Drop what was handed out: one move of the leftover, once per read.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, NotIceTcp> {
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(NotIceTcp);
        }
        if let Some(&first) = rest.get(2)
            && !is_webrtc(first)
        {
            return Err(NotIceTcp);
        }
        let Some(frame) = rest.get(2..2 + len) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.start += 2 + len;
        Ok(Some(frame))
    }

    /// Bytes held that are not yet a whole frame.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// What is held, for handing the connection to another reader.
    pub(crate) fn into_pending(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// Whether a packet starting with `first` is STUN, DTLS or RTP/RTCP (RFC 7983).
fn is_webrtc(first: u8) -> bool {
    matches!(first, 0..=3 | 20..=63 | 128..=191)
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
        for packet in [&b"\x00\x01stun"[..], b"\x17dtls record", &[0x80u8; 1200]] {
            stream.extend(frame(packet).unwrap());
        }
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        // One byte at a time, then everything else at once.
        for b in stream.iter().take(5) {
            reader.push(&[*b]);
            while let Some(f) = reader.next_frame().unwrap() {
                out.push(f);
            }
        }
        reader.push(&stream[5..]);
        while let Some(f) = reader.next_frame().unwrap() {
            out.push(f);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], b"\x00\x01stun");
        assert_eq!(out[1], b"\x17dtls record");
        assert_eq!(out[2], vec![0x80u8; 1200]);
        assert_eq!(reader.pending(), 0);
    }

    #[test]
    fn a_partial_frame_waits_and_too_long_packets_are_refused() {
        let mut reader = FrameReader::default();
        reader.push(&[0xff, 0xff, 0x80, 2, 3]);
        assert_eq!(reader.next_frame(), Ok(None));
        assert_eq!(reader.pending(), 5);
        assert!(frame(&vec![0; MAX_FRAME]).is_some());
        assert!(frame(&vec![0; MAX_FRAME + 1]).is_none());
    }

    #[test]
    fn empty_frames_and_other_protocols_are_not_ice_tcp() {
        let mut empty = FrameReader::default();
        empty.push(&[0, 0, 0, 0]);
        assert_eq!(empty.next_frame(), Err(NotIceTcp));
        let mut http = FrameReader::default();
        http.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            http.next_frame(),
            Err(NotIceTcp),
            "'GET': length 0x4745, then 'T'"
        );
    }
}
