//! Access tokens the command-line tools mint for themselves from an API key and secret (the
//! development pair by default), when not given one.

use std::time::Duration;

use sfu_protocol::auth::{ApiKeys, Claims, Grants, TokenError};

/// What a tool's participant may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes, receives nothing.
    Publisher,
    /// Receives, publishes nothing.
    Viewer,
}

/// A token for `identity` in `room`, signed with `api_key`/`api_secret`, valid for `ttl`.
pub fn mint(
    (api_key, api_secret): (&str, &str),
    identity: &str,
    room: &str,
    role: Role,
    ttl: Duration,
) -> Result<String, TokenError> {
    let grants = Grants {
        room: Some(room.to_string()),
        room_join: true,
        can_publish: Some(role == Role::Publisher),
        can_subscribe: Some(role == Role::Viewer),
        ..Grants::default()
    };
    let claims = Claims::new(api_key, identity, ttl, grants);
    ApiKeys::new([(api_key.to_string(), api_secret.to_string())]).mint(&claims)
}
