//! Access tokens: HS256 JWTs signed with an API secret, in LiveKit's claim layout (so its
//! token libraries work): API key in `iss`, identity in `sub`, `exp` required, `nbf` honoured,
//! grants in `video`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The API key of the built-in development credentials.
pub const DEV_API_KEY: &str = "devkey";
/// The API secret of the built-in development credentials. Public: never use it in production.
pub const DEV_API_SECRET: &str = "devsecret-not-for-production-use-0123456789";

/// What a token allows (LiveKit's `VideoGrant`). Absent `can*` fields mean "allowed".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Grants {
    /// The room the token is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// May join `room`.
    pub room_join: bool,
    /// May publish audio and video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// May subscribe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    /// May send data messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// Joins without being seen by the others.
    pub hidden: bool,
    /// May create rooms.
    pub room_create: bool,
    /// May list rooms.
    pub room_list: bool,
    /// May administer `room`.
    pub room_admin: bool,
}

impl Grants {
    /// Whether publishing media is allowed.
    pub fn may_publish(&self) -> bool {
        self.can_publish.unwrap_or(true)
    }
    /// Whether subscribing is allowed.
    pub fn may_subscribe(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }
    /// Whether sending data messages is allowed.
    pub fn may_publish_data(&self) -> bool {
        self.can_publish_data.unwrap_or(true)
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// The participant's identity.
    pub sub: String,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Not valid before (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the token allows.
    #[serde(default)]
    pub video: Grants,
}

impl Claims {
    /// Claims for `identity`, valid for `ttl` from now, with `grants`.
    pub fn new(api_key: &str, identity: &str, ttl: Duration, grants: Grants) -> Self {
        let now = unix_now();
        Claims {
            iss: api_key.to_string(),
            sub: identity.to_string(),
            exp: now + ttl.as_secs(),
            nbf: Some(now.saturating_sub(1)),
            name: None,
            video: grants,
        }
    }
}

/// Why a token was refused. The `Display` text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// Signed with something other than HS256 (including `none`).
    #[error("the token must be signed with HS256")]
    WrongAlgorithm,
    /// `iss` names no configured API key.
    #[error("the token's API key (iss) is not known to this server")]
    UnknownKey,
    /// The signature does not match.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// A required claim is absent or malformed.
    #[error("the token lacks a valid {0} claim")]
    MissingClaim(String),
}

/// The API key/secret pairs the server accepts (several allow rotation).
#[derive(Clone)]
pub struct ApiKeys {
    secrets: HashMap<String, String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("ApiKeys")
            .field("keys", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ApiKeys {
    /// Keys from `(key, secret)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            secrets: pairs.into_iter().collect(),
        }
    }

    /// The built-in development credentials.
    pub fn dev() -> Self {
        Self::new([(DEV_API_KEY.to_string(), DEV_API_SECRET.to_string())])
    }

    /// Whether these are exactly the development credentials.
    pub fn is_dev(&self) -> bool {
        self.secrets.len() == 1
            && self.secrets.get(DEV_API_KEY).map(String::as_str) == Some(DEV_API_SECRET)
    }

    /// The secret of a key.
    pub fn secret(&self, key: &str) -> Option<&str> {
        self.secrets.get(key).map(String::as_str)
    }

    /// One key name (for minting in dev mode).
    pub fn first_key(&self) -> Option<&str> {
        self.secrets.keys().min().map(String::as_str)
    }

    /// Signs claims with the secret of `claims.iss`.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let secret = self
            .secrets
            .get(&claims.iss)
            .ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|_| TokenError::Malformed)
    }

    /// Checks a token: algorithm pinned to HS256, known key, signature, `exp`, `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        // Pin the algorithm before anything else, reading `alg` ourselves: a header with an
        // algorithm the JWT library does not know (such as `none`) must still be reported as
        // the wrong algorithm, not as noise.
        if header_algorithm(token)?.as_deref() != Some("HS256") {
            return Err(TokenError::WrongAlgorithm);
        }
        #[derive(Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        let issuer: Issuer = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| TokenError::Malformed)?;
        let iss = issuer
            .iss
            .ok_or_else(|| TokenError::MissingClaim("iss".into()))?;
        let secret = self.secrets.get(&iss).ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                TokenError::MissingClaim(c.clone())
            }
            _ => TokenError::Malformed,
        })
    }
}

/// The `alg` of a JWT's header, if it has one.
fn header_algorithm(token: &str) -> Result<Option<String>, TokenError> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct JwtHeader {
        alg: Option<String>,
    }
    let encoded = token.split('.').next().ok_or(TokenError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let header: JwtHeader = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    Ok(header.alg)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_grants(room: &str) -> Grants {
        Grants {
            room: Some(room.into()),
            room_join: true,
            ..Grants::default()
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let keys = ApiKeys::dev();
        let claims = Claims::new(
            DEV_API_KEY,
            "alice",
            Duration::from_secs(60),
            join_grants("r"),
        );
        let token = keys.mint(&claims).unwrap_or_default();
        assert_eq!(keys.verify(&token), Ok(claims.clone()));

        let other = ApiKeys::new([(DEV_API_KEY.to_string(), "another secret".to_string())]);
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        let unknown = ApiKeys::new([("k2".to_string(), "s".to_string())]);
        assert_eq!(unknown.verify(&token), Err(TokenError::UnknownKey));

        let mut expired = claims.clone();
        expired.exp = unix_now() - 3600;
        assert_eq!(
            keys.verify(&keys.mint(&expired).unwrap_or_default()),
            Err(TokenError::Expired)
        );
        let mut early = claims.clone();
        early.nbf = Some(unix_now() + 3600);
        assert_eq!(
            keys.verify(&keys.mint(&early).unwrap_or_default()),
            Err(TokenError::NotYetValid)
        );

        // alg: none, with the same claims and no signature.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(keys.verify(&none), Err(TokenError::WrongAlgorithm));
        assert_eq!(keys.verify("garbage"), Err(TokenError::Malformed));
        assert_eq!(keys.verify(""), Err(TokenError::Malformed));
    }
}
