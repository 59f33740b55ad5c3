//! Entry points for the fuzz targets in `sfu/fuzz`: one function per target, taking the raw
//! fuzz input. Each one feeds the input to the code that parses what arrives from the network
//! (or from a client's SDP) and checks a property beyond "does not panic": a decision made on
//! a prefix holds for the whole packet, a rewritten sequence has no gaps, a well-formed
//! message round-trips, a stranger's datagram closes no peer.
//!
//! Compiled only with the `fuzzing` feature (the fuzz crate) or in this crate's tests, which
//! replay the committed corpus (`sfu/fuzz/corpus/<target>/`) through the same functions on
//! the stable toolchain. Not an API: nothing here is stable.

mod descriptors;
mod payload;
mod rewriters;
mod sdp;
mod stun;
mod worker;

pub use descriptors::{red_payload, svc_descriptors};
pub use payload::{video_keyframe, vp8_descriptor};
pub use rewriters::rewriters;
pub use sdp::sdp;
pub use stun::{ice_tcp_framing, stun_demux};
pub use worker::worker_datagrams;

/// A fuzz target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this crate, by name (the names of `sfu/fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: [Target; 9] = [
    ("stun_demux", stun_demux),
    ("ice_tcp_framing", ice_tcp_framing),
    ("vp8_descriptor", vp8_descriptor),
    ("video_keyframe", video_keyframe),
    ("svc_descriptors", svc_descriptors),
    ("red_payload", red_payload),
    ("rewriters", rewriters),
    ("sdp", sdp),
    ("worker_datagrams", worker_datagrams),
];

/// Reads structured values off the front of a fuzz input. Past its end every value reads as
/// zero and every slice as empty, so a harness never has to handle running out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A length-prefixed slice of at most `max` bytes.
    pub(crate) fn chunk(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()) % (max + 1);
        self.bytes(len)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Replays the committed corpus of every target (`sfu/fuzz/corpus/<target>/*`): what the
/// fuzzers found interesting, and what once crashed, stays covered by `cargo test` on stable.
#[cfg(test)]
mod replay {
    use std::path::PathBuf;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let data = std::fs::read(&p).unwrap();
                (p, data)
            })
            .collect()
    }

    #[test]
    fn every_target_has_a_seed_corpus_and_replays_it() {
        for (name, target) in super::TARGETS {
            let inputs = corpus(name);
            assert!(!inputs.is_empty(), "no corpus for {name}");
            for (path, data) in inputs {
                let result = std::panic::catch_unwind(|| target(&data));
                assert!(
                    result.is_ok(),
                    "{name} fails on {} (reproduce: cargo +nightly fuzz run {name} {})",
                    path.display(),
                    path.display()
                );
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for (_, target) in super::TARGETS {
            for data in [&[][..], &[0], &[0xff], &[1, 2, 3]] {
                target(data);
            }
        }
    }
}
