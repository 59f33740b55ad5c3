//! What the SFU's clients and server share: the signalling protocol's messages
//! ([`protocol`], the JSON spoken on `/rtc`, described in `control-api/PROTOCOL.md`) and the
//! access tokens that admit a participant ([`auth`]: LiveKit-compatible HS256 JWTs, minted
//! and verified with API keys).
//!
//! A crate of its own so that clients (the bot swarm, `sfu-publish`, `sfu-listen`) depend on
//! these types without linking the server; `control-api` re-exports both modules.

pub mod auth;
pub mod protocol;
