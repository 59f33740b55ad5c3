//! Media workers: each is a thread owning one UDP socket and the peers pinned to it.
//!
//! [`core::WorkerCore`] is the sans-IO part (demux, peers, timers, forwarding) and is driven by
//! [`driver`], the only code that touches the socket, the channels and the clock.

pub(crate) mod core;
pub(crate) mod driver;
pub(crate) mod latency;
pub(crate) mod local_addrs;
pub(crate) mod timers;
pub(crate) mod udp_io;
