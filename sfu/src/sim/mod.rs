//! In-process simulation of a media server and its clients: real `WorkerCore`s and real str0m
//! client state machines talking through function calls on a virtual clock, so that what
//! the server does over seconds of calls runs in milliseconds, the same way every time.
//!
//! - [`worker`]: one media worker without socket, thread or clock.
//! - [`client`]: a str0m client on an address of its own.
//! - [`net`]: a network path: delay, jitter, a bottleneck with its queue, loss, outages.
//! - [`vp8`]: a simulcast VP8 encoder and a receiver that decodes as a real decoder can.
//! - [`raw`]: a hand-made endpoint that encrypts bytes no WebRTC stack would write.
//! - [`world`]: all of them on one virtual clock.
//!
//! The scenarios (`scenarios.rs`) are the tests: independent of how loaded the machine is,
//! with seeded network randomness (which datagrams a path loses, delays, reorders). Not
//! bit-for-bit identical from run to run: str0m draws SSRCs, ICE credentials and DTLS
//! randoms itself and hash maps iterate in a per-process order, so which simulcast layer's
//! keyframe arrives first at a join, say, can differ. The scenarios therefore assert what must
//! hold whatever the order (frames decode, switches land on keyframes, nothing freezes), and
//! were run 50 times, on an idle and on a loaded machine, without a failure.

pub(crate) mod client;
pub(crate) mod worker;

// The scenarios' parts (the fuzz targets use only the worker and the client).
#[cfg(test)]
mod audio_formats;
#[cfg(test)]
mod audio_room;
#[cfg(test)]
mod hostile_wire;
#[cfg(test)]
pub(crate) mod net;
#[cfg(test)]
pub(crate) mod raw;
#[cfg(test)]
mod relay;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod svc;
#[cfg(test)]
pub(crate) mod vp8;
#[cfg(test)]
pub(crate) mod world;
