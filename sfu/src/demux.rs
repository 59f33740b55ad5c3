//! Routes each datagram arriving on a worker's socket to the peer it belongs to, in O(1).
//!
//! A STUN connectivity check names its peer by the local ufrag in its USERNAME, so STUN is
//! routed by ufrag (the only way before ICE has succeeded). Everything else (DTLS, SRTP,
//! SRTCP) is routed by its source address, learned only from addresses the peer itself has
//! answered: str0m replies to a connectivity check only after checking its message integrity,
//! so an address appears here only once its owner has proved it knows the ICE password.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::PeerId;
use crate::stun;

/// Which worker owns each local ufrag, for connections that arrive somewhere else first (the
/// ICE-TCP listener). Kept by the workers' demuxes.
pub(crate) type UfragRegistry = Arc<DashMap<String, usize>>;

/// The maps from ufrag and from remote address to peer, for one worker socket.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// The server-wide registry and this worker's index in it (none in unit tests).
    registry: Option<(UfragRegistry, usize)>,
}

impl Demux {
    /// A demux for worker `index` that keeps `registry` up to date.
    pub(crate) fn new(index: usize, registry: UfragRegistry) -> Self {
        Self {
            registry: Some((registry, index)),
            ..Self::default()
        }
    }

    /// Registers a new peer under its local ICE ufrag.
    pub(crate) fn add_peer(&mut self, ufrag: String, peer: PeerId) {
        if let Some((registry, index)) = &self.registry {
            registry.insert(ufrag.clone(), *index);
        }
        self.by_ufrag.insert(ufrag, peer);
    }

    /// Forgets a peer: its ufrag and the addresses it was reached at (unless another peer has
    /// taken them over since).
    pub(crate) fn remove_peer(&mut self, peer: PeerId, ufrag: &str, addrs: &[SocketAddr]) {
        if self.by_ufrag.get(ufrag) == Some(&peer) {
            self.by_ufrag.remove(ufrag);
            if let Some((registry, index)) = &self.registry {
                registry.remove_if(ufrag, |_, w| w == index);
            }
        }
        for addr in addrs {
            if self.by_addr.get(addr) == Some(&peer) {
                self.by_addr.remove(addr);
            }
        }
    }

    /// Records that `peer` has sent to `addr`, so datagrams from `addr` are its. Returns
    /// `true` if this is new for that peer.
    pub(crate) fn learn_addr(&mut self, addr: SocketAddr, peer: PeerId) -> bool {
        self.by_addr.insert(addr, peer) != Some(peer)
    }

    /// `addr` no longer routes to `peer` (if it still did).
    pub(crate) fn forget_addr(&mut self, addr: SocketAddr, peer: PeerId) {
        if self.by_addr.get(&addr) == Some(&peer) {
            self.by_addr.remove(&addr);
        }
    }

    /// The peer a STUN message names in its USERNAME, if it is ours.
    pub(crate) fn route_stun(&self, datagram: &[u8]) -> Option<PeerId> {
        let ufrag = stun::local_ufrag(datagram)?;
        self.by_ufrag.get(ufrag).copied()
    }

    /// The peer a datagram from `source` is for, if any.
    pub(crate) fn route(&self, source: SocketAddr, datagram: &[u8]) -> Option<PeerId> {
        if stun::is_stun(datagram) {
            let ufrag = stun::local_ufrag(datagram)?;
            return self.by_ufrag.get(ufrag).copied();
        }
        self.by_addr.get(&source).copied()
    }

    /// Number of peers and learned addresses (for tests and stats).
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }
}
