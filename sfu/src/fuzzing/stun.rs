//! The first bytes the server reads from anyone: the STUN ufrag demux of every UDP datagram
//! and the RFC 4571 framing of ICE-TCP streams.

use std::net::SocketAddr;

use super::Reader;
use crate::demux::Demux;
use crate::ice_tcp::framing::{FrameReader, frame};
use crate::ids::PeerId;
use crate::stun::{is_stun, local_ufrag};

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// `stun_demux`: `crate::stun` and `Demux` on a datagram, raw (first byte even) or a
/// binding request built around fuzzed attributes (first byte odd).
///
/// Checks: a ufrag is only found in a STUN message, is non-empty and has no `:`; bytes after
/// the declared message length change nothing; a built message yields exactly the ufrag its
/// first USERNAME holds; STUN is routed by ufrag only (never to the peer that owns the source
/// address), everything else by address only; forgetting a peer keeps the addresses another
/// peer owns.
pub fn stun_demux(data: &[u8]) {
    let mut r = Reader::new(data);
    let (datagram, expected) = if r.u8() & 1 == 0 {
        (r.rest().to_vec(), None)
    } else {
        let (datagram, expected) = binding_request(&mut r);
        (datagram, Some(expected))
    };
    let ufrag = local_ufrag(&datagram);
    if let Some(expected) = &expected {
        assert_eq!(
            ufrag,
            expected.as_deref(),
            "ufrag of a built binding request"
        );
    }
    if let Some(u) = ufrag {
        assert!(is_stun(&datagram));
        assert!(!u.is_empty() && !u.contains(':'), "ufrag {u:?}");
    }
    if is_stun(&datagram) {
        let declared = usize::from(u16::from_be_bytes([
            datagram.get(2).copied().unwrap_or_default(),
            datagram.get(3).copied().unwrap_or_default(),
        ]));
        match datagram.get(..20 + declared) {
            Some(message) => assert_eq!(
                local_ufrag(message),
                ufrag,
                "bytes after the declared length must not matter"
            ),
            None => assert_eq!(ufrag, None, "a truncated message names nobody"),
        }
    }

    // Routing: peer 1 owns the ufrag (if any), peer 2 the source address.
    let source = SocketAddr::from(([198, 51, 100, 7], 5000));
    let (by_ufrag, by_addr) = (PeerId(1), PeerId(2));
    let mut demux = Demux::default();
    if let Some(u) = ufrag {
        demux.add_peer(u.to_string(), by_ufrag);
    }
    demux.add_peer("someone-else".to_string(), PeerId(3));
    demux.learn_addr(source, by_addr);
    let stun_route = ufrag.filter(|u| *u != "someone-else").map(|_| by_ufrag);
    let route = demux.route(source, &datagram);
    if is_stun(&datagram) {
        assert_eq!(
            route.filter(|p| *p != PeerId(3)),
            stun_route,
            "STUN goes by ufrag"
        );
        assert_ne!(route, Some(by_addr), "STUN never goes by address");
    } else {
        assert_eq!(route, Some(by_addr), "non-STUN goes by address");
    }
    assert_eq!(
        demux.route_stun(&datagram).filter(|p| *p != PeerId(3)),
        stun_route
    );
    if let Some(u) = ufrag {
        demux.remove_peer(by_ufrag, u, &[source]);
        if u != "someone-else" {
            assert_eq!(demux.route_stun(&datagram), None, "forgotten");
        }
        if !is_stun(&datagram) {
            assert_eq!(
                demux.route(source, &datagram),
                Some(by_addr),
                "not its address"
            );
        }
    }
}

/// A binding request with fuzzed attributes, the last a USERNAME; and the ufrag its first
/// USERNAME attribute names.
fn binding_request(r: &mut Reader<'_>) -> (Vec<u8>, Option<String>) {
    let mut attrs: Vec<(u16, Vec<u8>)> = Vec::new();
    for _ in 0..r.u8() % 4 {
        let kind = r.u16();
        let len = usize::from(r.u8() % 48);
        attrs.push((kind, r.bytes(len).to_vec()));
    }
    let padding = r.u8();
    let trailing = r.u8() % 8;
    let transaction = r.bytes(12).to_vec();
    attrs.push((ATTR_USERNAME, r.rest().iter().take(512).copied().collect()));

    let expected = attrs
        .iter()
        .find(|(kind, _)| *kind == ATTR_USERNAME)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .and_then(|u| u.split(':').next())
        .filter(|u| !u.is_empty())
        .map(str::to_string);

    let mut body = Vec::new();
    for (kind, value) in &attrs {
        body.extend_from_slice(&kind.to_be_bytes());
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
        // Padding to four bytes, of any value (RFC 8489 section 14).
        body.resize(body.len().div_ceil(4) * 4, padding);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&transaction);
    m.resize(20, 0);
    m.extend_from_slice(&body);
    m.resize(m.len() + usize::from(trailing), 0xee);
    (m, expected)
}

/// `ice_tcp_framing`: an ICE-TCP byte stream (after a first byte that picks how it is cut into
/// reads) through `FrameReader`.
///
/// Checks: the frames and the verdict do not depend on how the stream is cut into reads; the
/// frames, framed again, are exactly the bytes consumed; each frame is non-empty and starts
/// like STUN, DTLS or RTP/RTCP; what is left over is the rest of the stream.
pub fn ice_tcp_framing(data: &[u8]) {
    let mut r = Reader::new(data);
    let seed = r.u8();
    let stream = r.rest();

    let whole = read(stream, &mut std::iter::once(stream.len().max(1)));
    let mut state = u32::from(seed) | 1;
    let mut sizes = std::iter::from_fn(|| {
        // A small xorshift: read sizes from 1 to 64 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some(state as usize % 64 + 1)
    });
    let cut = read(stream, &mut sizes);
    assert_eq!(whole.frames, cut.frames, "frames depend on read sizes");
    assert_eq!(whole.closed, cut.closed, "verdict depends on read sizes");

    let mut consumed = Vec::new();
    for f in &whole.frames {
        assert!(!f.is_empty(), "an empty frame");
        assert!(
            matches!(f.first(), Some(0..=3 | 20..=63 | 128..=191)),
            "not STUN, DTLS or RTP: {:?}",
            f.first()
        );
        consumed.extend(frame(f).unwrap_or_default());
    }
    assert!(stream.starts_with(&consumed), "frames are not the stream");
    if !whole.closed {
        assert_eq!(
            whole.pending,
            stream.get(consumed.len()..).unwrap_or_default(),
            "left over"
        );
        assert_eq!(cut.pending, whole.pending);
    }
}

struct Read {
    frames: Vec<Vec<u8>>,
    closed: bool,
    pending: Vec<u8>,
}

/// Feeds `stream` in reads of the given sizes, taking every frame after each read, until the
/// stream ends or is refused.
fn read(stream: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Read {
    let mut reader = FrameReader::default();
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (now, later) = rest.split_at(n);
        rest = later;
        reader.push(now);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    return Read {
                        frames,
                        closed: true,
                        pending: Vec::new(),
                    };
                }
            }
        }
        if rest.is_empty() {
            return Read {
                frames,
                closed: false,
                pending: reader.into_pending(),
            };
        }
    }
}
