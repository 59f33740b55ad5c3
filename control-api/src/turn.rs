//! TURN relays for clients whose network blocks or mangles direct media: the server is the
//! credential service of the operator's relay (coturn with `use-auth-secret`), minting
//! time-limited TURN REST credentials per participant: username `EXPIRY:IDENTITY`, password
//! `base64(HMAC-SHA1(secret, username))`. Clients get them as `iceServers` in `joined` and
//! as RFC 9725 `Link` headers from WHIP/WHEP.

use std::time::Duration;

use aws_lc_rs::hmac;
use axum::http::HeaderValue;
use base64::Engine;

/// Where the relays are and how to sign their credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    /// Relay URLs (`turn:HOST:3478?transport=udp`, `turns:HOST:5349?transport=tcp`, ...).
    pub servers: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// How long minted credentials stay valid.
    pub ttl: Duration,
}

pub use crate::protocol::IceServer;

impl TurnConfig {
    /// Checks the configuration: at least one relay, each a `turn:` or `turns:` URL, and a
    /// secret.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("--turn-secret needs at least one --turn-server".into());
        }
        for url in &self.servers {
            let scheme_ok = url.starts_with("turn:") || url.starts_with("turns:");
            let host = url
                .split_once(':')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let clean = !url.contains(['<', '>', '"', ',', ';', ' ']);
            if !scheme_ok || host.is_empty() || !clean {
                return Err(format!(
                    "--turn-server {url:?}: expected turn:HOST[:PORT][?transport=udp|tcp] or \
                     turns:HOST[:PORT][?transport=tcp]"
                ));
            }
        }
        if self.secret.is_empty() {
            return Err("--turn-server needs --turn-secret (coturn's static-auth-secret)".into());
        }
        if self.ttl.is_zero() {
            return Err("--turn-ttl must be at least one second".into());
        }
        Ok(())
    }

    /// Credentials for `identity`, valid from `now_unix` (seconds) for the configured time,
    /// but not past `until` (the access token's own expiry: relay access ends with it).
    pub fn credentials(&self, identity: &str, now_unix: u64, until: u64) -> IceServer {
        let expiry = now_unix.saturating_add(self.ttl.as_secs()).min(until);
        // coturn reads the expiry up to the first ':'; keep the identity from adding any.
        let user: String = identity
            .chars()
            .map(|c| if c == ':' || c.is_control() { '_' } else { c })
            .take(128)
            .collect();
        let username = format!("{expiry}:{user}");
        IceServer {
            urls: self.servers.clone(),
            credential: password(&self.secret, &username),
            username,
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`, as coturn's TURN REST mode checks it.
pub fn password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// RFC 9725 `Link` header values for these servers (one per URL).
pub fn link_headers(servers: &[IceServer]) -> Vec<HeaderValue> {
    servers
        .iter()
        .flat_map(|s| {
            s.urls.iter().filter_map(|url| {
                let value = format!(
                    "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; \
                     credential-type=\"password\"",
                    quoted(&s.username),
                    quoted(&s.credential),
                );
                HeaderValue::from_str(&value).ok()
            })
        })
        .collect()
}

/// Escapes a value for a quoted-string.
fn quoted(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TurnConfig {
        TurnConfig {
            servers: vec![
                "turn:198.18.0.1:3478?transport=udp".into(),
                "turns:relay.example:5349?transport=tcp".into(),
            ],
            secret: "north".into(),
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let c = config().credentials("ali:ce", 1_700_000_000, u64::MAX);
        assert_eq!(c.username, "1700003600:ali_ce");
        // Reference value: printf '1700003600:ali_ce' | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(c.credential, password("north", "1700003600:ali_ce"));
        assert_eq!(c.credential.len(), 28, "20 bytes in base64");
        assert_eq!(c.urls.len(), 2);
        let short = config().credentials("eve", 1_700_000_000, 1_700_000_600);
        assert!(
            short.username.starts_with("1700000600:"),
            "capped by the token"
        );
    }

    #[test]
    fn a_known_hmac_sha1() {
        // RFC 2202 test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn link_headers_per_url_and_bad_urls_are_refused() {
        let links = link_headers(&[config().credentials("bob", 0, u64::MAX)]);
        assert_eq!(links.len(), 2);
        let first = links[0].to_str().unwrap();
        assert!(first.starts_with("<turn:198.18.0.1:3478?transport=udp>; rel=\"ice-server\""));
        assert!(first.contains("username=\"3600:bob\""));
        assert!(first.ends_with("credential-type=\"password\""));
        assert!(config().validate().is_ok());
        for bad in ["stun:x", "turn:", "http://x", "turn:a>b"] {
            let mut c = config();
            c.servers = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        let mut c = config();
        c.secret.clear();
        assert!(c.validate().is_err());
    }
}
