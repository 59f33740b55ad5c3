//! Clients for the SFU: bots built from str0m peers that speak the server's signalling
//! protocol, publish synthetic media whose bytes can be verified on arrival, and record what
//! they receive. The integration tests use them as participants; the load-test swarm is built
//! from them.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bot;
mod client_peer;
pub mod clip;
pub mod devices;
pub mod media_encode;
pub mod media_input;
pub mod media_out;
pub mod publish;
pub mod receive_quality;
pub mod server_probe;
pub mod signal;
pub mod swarm;
pub mod synthetic;
pub mod token;
pub mod vp8_rtp;
