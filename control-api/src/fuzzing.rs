//! Entry points for the fuzz targets in `sfu/fuzz` that parse what reaches the control plane:
//! signalling messages, WHIP/WHEP trickle fragments and headers, access tokens, forwarding
//! headers. One function per target, taking the raw fuzz input; each checks a property beyond
//! "does not panic".
//!
//! Compiled only with the `fuzzing` feature (the fuzz crate) or in this crate's tests, which
//! replay the committed corpus (`sfu/fuzz/corpus/<target>/`) through the same functions on
//! the stable toolchain. Not an API: nothing here is stable.

use std::net::SocketAddr;
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::{self, ApiKeys, DEV_API_KEY, DEV_API_SECRET, TokenError};
use crate::origin;
use crate::protocol::{self, ClientMessage, ErrorCode};
use crate::whip::{self, Fragment};

/// A fuzz target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this crate, by name (the names of `sfu/fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: [Target; 5] = [
    ("signalling_json", signalling_json),
    ("whip_fragment", whip_fragment),
    ("access_token", access_token),
    ("http_origin", http_origin),
    ("relay_wire", relay_wire),
];

/// `signalling_json`: a WebSocket text frame from a client.
///
/// Checks: a refusal is `bad_message` or `unknown_type` with a reason; an accepted message,
/// serialized again, parses back equal, and with a `seq` parses back with that `seq`; a track
/// id it names that parses as one prints back as the same id.
pub fn signalling_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // The WebSocket layer refuses text frames that are not UTF-8.
    };
    let (message, _) = match protocol::parse_numbered_client_message(text) {
        Ok(parsed) => parsed,
        Err(refusal) => {
            assert!(
                matches!(refusal.code, ErrorCode::BadMessage | ErrorCode::UnknownType),
                "{refusal:?}"
            );
            assert!(!refusal.message.is_empty());
            return;
        }
    };
    let json = match serde_json::to_value(&message) {
        Ok(v) => v,
        Err(e) => panic!("{message:?} does not serialize: {e}"),
    };
    assert_eq!(
        protocol::parse_numbered_client_message(&json.to_string()),
        Ok((message.clone(), None)),
        "round trip of {json}"
    );
    let seq = data.len() as u64 + 1;
    let mut numbered = json.clone();
    if let Some(object) = numbered.as_object_mut() {
        object.insert("seq".into(), seq.into());
    }
    assert_eq!(
        protocol::parse_numbered_client_message(&numbered.to_string()),
        Ok((message.clone(), Some(seq))),
        "round trip of {numbered}"
    );
    if let ClientMessage::Mute { track, .. } | ClientMessage::SetQuality { track, .. } = &message
        && let Ok(id) = sfu::TrackId::from_str(track)
    {
        assert_eq!(sfu::TrackId::from_str(&id.to_string()), Ok(id), "{track:?}");
    }
}

/// `whip_fragment`: a WHIP/WHEP PATCH body (trickle ICE, RFC 8840) applied to an offer, the
/// offer being the same text; and the request's `Authorization` and `Content-Type` headers,
/// from the same bytes.
///
/// Checks: a fragment keeps only `candidate:` lines, and writing it out and parsing it again
/// gives it back; the ICE restart rewrite keeps every line (as many lines, the others
/// unchanged) and puts the new credentials in every credential line, where `whip::ice_value`
/// then finds them; a bearer token comes only from a `Bearer` scheme and is trimmed.
pub fn whip_fragment(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fragment = Fragment::parse(&text);
    for c in &fragment.candidates {
        assert!(c.starts_with("candidate:"), "{c:?}");
    }
    let mut written = String::new();
    if let Some(u) = &fragment.ufrag {
        written.push_str(&format!("a=ice-ufrag:{u}\r\n"));
    }
    if let Some(p) = &fragment.pwd {
        written.push_str(&format!("a=ice-pwd:{p}\r\n"));
    }
    for c in &fragment.candidates {
        written.push_str(&format!("a={c}\r\n"));
    }
    assert_eq!(
        Fragment::parse(&written),
        fragment,
        "written as {written:?}"
    );

    let (ufrag, pwd) = (
        fragment.ufrag.clone().unwrap_or_else(|| "u".into()),
        fragment.pwd.clone().unwrap_or_else(|| "p".into()),
    );
    let rewritten = whip::with_ice_credentials(&text, &ufrag, &pwd);
    assert_eq!(rewritten.lines().count(), text.lines().count(), "lines");
    for (before, after) in text.lines().zip(rewritten.lines()) {
        let before = before.trim_end_matches('\r');
        let after = after.strip_suffix('\r').unwrap_or(after);
        if before.starts_with("a=ice-ufrag:") {
            assert_eq!(after, format!("a=ice-ufrag:{ufrag}"));
        } else if before.starts_with("a=ice-pwd:") {
            assert_eq!(after, format!("a=ice-pwd:{pwd}"));
        } else {
            assert_eq!(after, before, "an unrelated line changed");
        }
    }
    let first_ufrag_line = text.lines().find(|l| l.trim().starts_with("a=ice-ufrag:"));
    if first_ufrag_line.is_some_and(|l| l.starts_with("a=ice-ufrag:")) {
        assert_eq!(
            whip::ice_value(&rewritten, "ice-ufrag"),
            Some(ufrag.as_str()),
            "{rewritten:?}"
        );
        assert_eq!(whip::etag_of(&rewritten), format!("\"{ufrag}\""));
    }

    let mut headers = HeaderMap::new();
    let line = text.lines().next().unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(line) {
        headers.insert(header::AUTHORIZATION, value.clone());
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(token) = whip::bearer(&headers) {
        assert_eq!(token, token.trim());
        assert!(
            line.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
        );
    }
    if whip::content_type_is(&headers, "application/sdp") {
        assert!(line.to_ascii_lowercase().contains("application/sdp"));
    }
}

/// `access_token`: a token as a client sends it (first byte even), or claims as JSON signed
/// with the right key (first byte odd: the claim checks past the signature).
///
/// Checks: an accepted token is HS256, names a configured key, and is refused with another
/// secret for that key; accepted claims are the token's, unexpired and already valid, and
/// sign again into a token that verifies to the same claims.
pub fn access_token(data: &[u8]) {
    let keys = ApiKeys::dev();
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        let key = EncodingKey::from_secret(DEV_API_SECRET.as_bytes());
        match jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let claims = match keys.verify(&token) {
        Ok(claims) => claims,
        Err(TokenError::MissingClaim(name)) => {
            assert!(!name.is_empty());
            return;
        }
        Err(_) => return,
    };
    assert_eq!(claims.iss, DEV_API_KEY, "accepted for an unknown key");
    let header = jsonwebtoken::decode_header(&token).map(|h| h.alg).ok();
    assert_eq!(header, Some(Algorithm::HS256), "accepted without HS256");
    let other = ApiKeys::new([(DEV_API_KEY.to_string(), "another secret".to_string())]);
    assert_eq!(
        other.verify(&token),
        Err(TokenError::BadSignature),
        "accepted without the secret"
    );
    let now = auth::unix_now();
    assert!(
        claims.exp.saturating_add(5) >= now,
        "expired at {}",
        claims.exp
    );
    assert!(claims.nbf.is_none_or(|nbf| nbf <= now + 5), "not valid yet");
    match keys.mint(&claims) {
        Ok(again) => assert_eq!(keys.verify(&again), Ok(claims.clone()), "signed again"),
        Err(e) => panic!("accepted claims do not sign again: {e}"),
    }
}

/// `http_origin`: the request line's headers that say where the client connected to: `Host`,
/// RFC 7239 `Forwarded`, `X-Forwarded-Proto` and `X-Forwarded-Host` (one per input line, the
/// first line saying whether the peer is a trusted proxy and the listener TLS), and a
/// `--trusted-proxy` value (the first line).
///
/// Checks: the host handed out in URLs is never empty and has only host characters; a client
/// that is not a trusted proxy cannot change the origin with forwarding headers; a proxy
/// setting parses to a network that prints and parses back the same.
pub fn http_origin(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let flags = first.bytes().next().unwrap_or_default();
    let (trusted_peer, tls) = (flags & 1 == 1, flags & 2 == 2);

    if let Ok(net) = origin::parse_proxy(first) {
        assert_eq!(origin::parse_proxy(&net.to_string()), Ok(net), "{first:?}");
    }

    let names = [
        header::HOST,
        HeaderName::from_static("forwarded"),
        HeaderName::from_static("x-forwarded-proto"),
        HeaderName::from_static("x-forwarded-host"),
    ];
    let mut all = HeaderMap::new();
    let mut host_only = HeaderMap::new();
    for (i, line) in lines.enumerate() {
        let Some(name) = names.get(i % names.len()) else {
            continue;
        };
        let Ok(value) = HeaderValue::from_str(line) else {
            continue;
        };
        if *name == header::HOST {
            host_only.append(name.clone(), value.clone());
        }
        all.append(name.clone(), value);
    }
    let proxy: SocketAddr = SocketAddr::from(([10, 0, 0, 1], 40000));
    let Ok(proxies) = origin::parse_proxy("10.0.0.0/8") else {
        panic!("the trusted network does not parse");
    };
    let trusted = [proxies];
    let peer = if trusted_peer {
        proxy
    } else {
        SocketAddr::from(([192, 0, 2, 1], 40000))
    };
    let fallback = "127.0.0.1:7880";
    let o = origin::of_request(&all, Some(peer), tls, &trusted, fallback);
    assert!(
        !o.host.is_empty()
            && o.host.len() <= 255
            && o.host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)),
        "{:?}",
        o.host
    );
    if !trusted_peer {
        let without = origin::of_request(&host_only, Some(peer), tls, &trusted, fallback);
        assert_eq!(o, without, "an untrusted client moved the origin");
        assert_eq!(o.secure, tls);
        let unknown = origin::of_request(&all, None, tls, &trusted, fallback);
        assert_eq!(o, unknown, "no peer address, no forwarding");
    }
}

/// What another cluster node sends on a relay link: the input as one media datagram, and as
/// the bytes of a control stream.
///
/// Checks: a datagram that decodes re-encodes to one that decodes the same, and the relayed RTP
/// packet in it reads within its bounds (or is refused); a control stream
/// reads the same messages (and fails or not alike) whether it arrives whole or in pieces of
/// any size; every message read re-encodes within the bounds and reads back the same.
pub fn relay_wire(data: &[u8]) {
    use crate::cluster::wire::{ControlDecoder, MediaDatagram};
    if let Ok(datagram) = MediaDatagram::decode(data) {
        let mut out = Vec::new();
        datagram.encode_into(&mut out);
        assert_eq!(MediaDatagram::decode(&out), Ok(datagram));
        // The packet inside, as the edge reads it: refused or within its bounds.
        if let Ok(rtp) = sfu::relay::rtp::decode(datagram.rtp) {
            assert!(rtp.payload.len() <= datagram.rtp.len());
            assert!(rtp.capture.is_none_or(f64::is_finite));
        }
    }
    let read = |chunk: usize| {
        let mut decoder = ControlDecoder::default();
        let mut messages = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            if decoder.push(piece).is_err() {
                return (messages, true);
            }
            loop {
                match decoder.next_message() {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => break,
                    Err(_) => return (messages, true),
                }
            }
        }
        (messages, false)
    };
    // Pieces of at most one frame, so the decoder's buffer bound is never what differs.
    let whole = read(crate::cluster::wire::MAX_CONTROL_FRAME);
    let split = read(usize::from(data.first().copied().unwrap_or(1) % 16) + 1);
    assert_eq!(whole.0, split.0);
    for message in &whole.0 {
        let frame = message
            .encode()
            .expect("a message read is within the bounds");
        let mut decoder = ControlDecoder::default();
        decoder.push(&frame).expect("one frame fits");
        assert_eq!(
            decoder.next_message().ok().flatten().as_ref(),
            Some(message)
        );
    }
}

/// Replays the committed corpus of every target (`sfu/fuzz/corpus/<target>/*`) on stable.
#[cfg(test)]
mod replay {
    use std::path::PathBuf;

    fn replay(name: &str, target: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../sfu/fuzz/corpus")
            .join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {name}");
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| target(&data));
            assert!(
                result.is_ok(),
                "{name} fails on {} (reproduce: cd sfu/fuzz && cargo +nightly fuzz run {name} {})",
                path.display(),
                path.display()
            );
        }
    }

    #[test]
    fn signalling_json() {
        replay("signalling_json", super::signalling_json);
    }

    #[test]
    fn whip_fragment() {
        replay("whip_fragment", super::whip_fragment);
    }

    #[test]
    fn access_token() {
        replay("access_token", super::access_token);
    }

    #[test]
    fn http_origin() {
        replay("http_origin", super::http_origin);
    }

    #[test]
    fn relay_wire() {
        replay("relay_wire", super::relay_wire);
    }

    #[test]
    fn targets_are_listed() {
        assert_eq!(super::TARGETS.len(), 5);
    }
}
