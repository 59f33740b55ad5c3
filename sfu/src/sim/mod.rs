//! In-process simulation of a media server and its clients: real `WorkerCore`s and real str0m
//! client state machines talking through function calls on a virtual clock, so that what
//! the server does over seconds of calls runs in milliseconds, the same way every time.
//!
//! - [`worker`]: one media worker without socket, thread or clock.
//! - [`client`]: a str0m client on an address of its own.

pub(crate) mod client;
pub(crate) mod worker;
