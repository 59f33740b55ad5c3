//! Tokens of participants the room service removed. Each is refused until it expires, so a
//! removed participant cannot come straight back with the token it had: its application has
//! to mint a new one, which is how it says "let them back in".

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::auth::unix_now;

/// Revoked tokens remembered at most; past it, the one expiring soonest is forgotten first.
const MAX_REVOKED: usize = 10_000;

/// The revoked tokens, by [`token_id`], with their expiry (Unix seconds).
#[derive(Default)]
pub struct RevokedTokens {
    tokens: Mutex<HashMap<String, u64>>,
}

impl RevokedTokens {
    /// Refuses the token with `id` until `expires`.
    pub fn revoke(&self, id: &str, expires: u64) {
        let now = unix_now();
        if expires <= now {
            return;
        }
        let mut tokens = self.tokens.lock();
        tokens.retain(|_, until| *until > now);
        if tokens.len() >= MAX_REVOKED
            && let Some(soonest) = tokens
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| id.clone())
        {
            tokens.remove(&soonest);
        }
        tokens.insert(id.to_string(), expires);
    }

    /// Whether the token with `id` is refused now.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.tokens
            .lock()
            .get(id)
            .is_some_and(|until| *until > unix_now())
    }
}

/// What identifies one token: its signature (unique per signed content).
pub fn token_id(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expiry_and_bounded() {
        let revoked = RevokedTokens::default();
        let now = unix_now();
        revoked.revoke("a", now + 60);
        revoked.revoke("expired", now - 1);
        assert!(revoked.is_revoked("a"));
        assert!(!revoked.is_revoked("expired"));
        assert!(!revoked.is_revoked("b"));
        for i in 0..MAX_REVOKED + 10 {
            revoked.revoke(&format!("t{i}"), now + 120 + i as u64);
        }
        assert_eq!(revoked.tokens.lock().len(), MAX_REVOKED);
        assert!(!revoked.is_revoked("a"), "the soonest to expire went first");
        assert!(revoked.is_revoked(&format!("t{}", MAX_REVOKED + 9)));
    }

    #[test]
    fn a_token_is_identified_by_its_signature() {
        assert_eq!(token_id("h.p.sig"), "sig");
        assert_eq!(token_id("opaque"), "opaque");
    }
}
