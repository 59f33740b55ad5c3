//! Just enough STUN parsing to route a connectivity check to its peer: is this datagram a STUN
//! message, and what is the local ufrag in its USERNAME attribute (RFC 8489, RFC 8445 §7.2.2)?
//!
//! Full validation (message integrity, fingerprint) is str0m's job once the datagram has
//! reached the peer it claims to be for.

/// The magic cookie every RFC 5389+ STUN message carries at bytes 4..8.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// Whether the datagram looks like a STUN message (RFC 7983 demultiplexing plus the cookie).
pub(crate) fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram.first().is_some_and(|b| *b < 2)
        && datagram.get(4..8) == Some(&MAGIC_COOKIE[..])
}

/// The local (first) ufrag of the USERNAME attribute `local:remote`, if the datagram is a
/// STUN message with one.
pub(crate) fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([*datagram.get(2)?, *datagram.get(3)?]));
    let body = datagram.get(HEADER_LEN..HEADER_LEN + declared)?;
    let mut rest = body;
    while let [t0, t1, l0, l1, tail @ ..] = rest {
        let kind = u16::from_be_bytes([*t0, *t1]);
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let value = tail.get(..len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to a multiple of four bytes.
        let padded = len.div_ceil(4) * 4;
        rest = tail.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let padded = username.len().div_ceil(4) * 4;
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        m.extend_from_slice(&(username.len() as u16).to_be_bytes());
        m.extend_from_slice(username);
        m.resize(m.len() + padded - username.len(), 0);
        m
    }

    #[test]
    fn finds_local_ufrag() {
        let m = binding_request(b"srvUfrag:cli");
        assert!(is_stun(&m));
        assert_eq!(local_ufrag(&m), Some("srvUfrag"));
    }

    #[test]
    fn malformed_messages_give_none() {
        let m = binding_request(b"abc:def");
        for cut in 0..m.len() {
            // Every truncation either parses consistently or yields None; never panics.
            let _ = local_ufrag(&m[..cut]);
        }
        assert_eq!(local_ufrag(&m[..m.len() - 1]), None);
        assert_eq!(local_ufrag(&binding_request(b":def")), None);
        assert_eq!(local_ufrag(&binding_request(&[0xff, 0xfe])), None);
        let mut bad_len = m.clone();
        bad_len[22] = 0xff; // attribute length past the end
        assert_eq!(local_ufrag(&bad_len), None);
        assert!(!is_stun(&[0x80; 40]), "RTP is not STUN");
        assert!(!is_stun(&[0x16; 40]), "DTLS is not STUN");
    }
}
