//! The shared half of the forwarding graph: the directory of published tracks.
//!
//! Each track has one owner, its publisher's worker, which alone holds the track's subscribers
//! (plain fields, no lock: see `peer::publisher`); subscribers join, change layers and leave
//! by sending it [`crate::packet::Delivery`] messages. What is shared here is what others must
//! read without asking: where a track's publisher is, and the layer facts its owner measures
//! and publishes (which layers are sent or paused, their rates and sizes) for the subscribers'
//! allocators. Each such fact has one writer, the owner; readers on other workers load it
//! with a relaxed atomic. The map itself is a sharded `DashMap`, used on the control path only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::allocator::MAX_LAYERS;
use crate::event::TrackKind;
use crate::ids::{PeerId, RoomId, TrackId};
#[cfg(test)]
use crate::layer_choice::Quality;
use crate::layer_choice::choose_layer;

/// Where a peer lives: its worker thread and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerLocation {
    pub(crate) worker: usize,
    pub(crate) peer: PeerId,
}

/// One published track: where it comes from and what its owner says about its layers.
#[derive(Debug)]
pub(crate) struct TrackRoute {
    pub(crate) id: TrackId,
    pub(crate) room: RoomId,
    pub(crate) publisher: PeerLocation,
    /// The publisher's participant id (the subscriber's `msid` stream id).
    pub(crate) participant: Arc<str>,
    pub(crate) kind: TrackKind,
    /// Number of layers: simulcast streams, or a scalable stream's spatial layers (learned
    /// from its packets); 1 otherwise.
    layer_count: AtomicU8,
    /// Bit `i` set: the publisher is sending simulcast layer `i` (non-simulcast: bit 0).
    pub(crate) active_layers: AtomicU32,
    /// Measured bitrate of each layer, bits per second (0: not measured).
    layer_bps: [AtomicU64; MAX_LAYERS],
    /// Frame size of each layer from its last keyframe, `width << 16 | height` (0: unknown).
    layer_size: [AtomicU32; MAX_LAYERS],
    /// Bit `i` set: layer `i` is paused by dynacast (the publisher was asked to stop it; it
    /// resumes when a subscriber wants it, so it still counts as available).
    pub(crate) paused_layers: AtomicU32,
    /// The publisher sends VP8 temporal layers (seen on its packets).
    pub(crate) has_temporal: AtomicBool,
    /// The track is one scalable (SVC) stream whose layers are its spatial layers (seen on
    /// its packets): a subscriber of any layer is sent every packet.
    scalable: AtomicBool,
    /// Its publisher negotiated the Dependency Descriptor for it (its codec's layers are read
    /// from it): subscribers are offered it too.
    descriptor: AtomicBool,
}

impl TrackRoute {
    /// Number of layers a subscriber can choose from.
    pub(crate) fn layer_count(&self) -> u8 {
        self.layer_count.load(Ordering::Relaxed)
    }

    /// Whether the track is one scalable stream.
    pub(crate) fn is_scalable(&self) -> bool {
        self.scalable.load(Ordering::Relaxed)
    }

    /// Marks the track as one scalable stream.
    pub(crate) fn set_scalable(&self) {
        self.scalable.store(true, Ordering::Relaxed);
    }

    /// Whether its publisher negotiated the Dependency Descriptor for it.
    pub(crate) fn carries_descriptor(&self) -> bool {
        self.descriptor.load(Ordering::Relaxed)
    }

    /// Marks the track as carrying the Dependency Descriptor (before any subscriber's offer
    /// can include it: set when the publisher's answer is made).
    pub(crate) fn set_carries_descriptor(&self) {
        self.descriptor.store(true, Ordering::Relaxed);
    }

    /// The layers whose packets a subscriber of `wanted` needs: with a scalable stream, every
    /// layer, since its one sequence-number space is renumbered by the subscriber, which must
    /// see the packets it drops (dropping one costs it no more than a lookup).
    pub(crate) fn needed_layers(&self, wanted: u32) -> u32 {
        if wanted == 0 || !self.is_scalable() {
            return wanted;
        }
        u32::MAX
    }

    /// Sets the number of layers (a scalable stream's spatial layers, once known).
    pub(crate) fn set_layer_count(&self, layers: u8) {
        self.layer_count.store(layers, Ordering::Relaxed);
    }

    /// Marks layer `index` as being sent by the publisher. Returns `true` if it was not before.
    pub(crate) fn mark_layer_active(&self, index: u8) -> bool {
        let bit = 1u32 << u32::from(index.min(31));
        // Release: whoever sees the layer (with Acquire, `available_layers`) also sees what
        // the owner wrote before, such as `scalable`.
        self.active_layers.fetch_or(bit, Ordering::Release) & bit == 0
    }

    /// Marks layer `index` as paused (or resumed) by the publisher.
    pub(crate) fn set_layer_active(&self, index: u8, active: bool) {
        let bit = 1u32 << u32::from(index.min(31));
        if active {
            self.active_layers.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.active_layers.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Records the measured bitrate of a layer.
    pub(crate) fn set_layer_rate(&self, layer: usize, bps: u64) {
        if let Some(slot) = self.layer_bps.get(layer) {
            slot.store(bps, Ordering::Relaxed);
        }
    }

    /// The measured bitrate of each layer.
    pub(crate) fn layer_rates(&self) -> [u64; MAX_LAYERS] {
        let mut rates = [0; MAX_LAYERS];
        for (rate, slot) in rates.iter_mut().zip(&self.layer_bps) {
            *rate = slot.load(Ordering::Relaxed);
        }
        rates
    }

    /// Records the frame size of a layer (from one of its keyframes).
    pub(crate) fn set_layer_size(&self, layer: u8, (width, height): (u32, u32)) {
        if let Some(slot) = self.layer_size.get(usize::from(layer)) {
            slot.store(
                width.min(0xffff) << 16 | height.min(0xffff),
                Ordering::Relaxed,
            );
        }
    }

    /// The frame size of each layer (`(0, 0)`: unknown).
    pub(crate) fn layer_sizes(&self) -> [(u32, u32); MAX_LAYERS] {
        let mut sizes = [(0, 0); MAX_LAYERS];
        for (size, slot) in sizes.iter_mut().zip(&self.layer_size) {
            let packed = slot.load(Ordering::Relaxed);
            *size = (packed >> 16, packed & 0xffff);
        }
        sizes
    }

    /// Layers a subscriber may be given: those being sent and those paused by dynacast.
    pub(crate) fn available_layers(&self) -> u32 {
        self.active_layers.load(Ordering::Acquire) | self.paused_layers.load(Ordering::Relaxed)
    }

    /// The best available layer at or below `cap`.
    pub(crate) fn choose_layer_capped(&self, cap: Option<u8>) -> Option<u8> {
        choose_layer(self.available_layers(), cap)
    }
}

/// A read-only view of one track for tests and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSnapshot {
    /// The track.
    pub track: TrackId,
    /// Its room.
    pub room: RoomId,
    /// The publishing peer.
    pub publisher: PeerId,
    /// The subscribing peers.
    pub subscribers: Vec<PeerId>,
}

/// Every published track, by id.
#[derive(Debug, Default)]
pub(crate) struct ForwardingGraph {
    tracks: DashMap<TrackId, Arc<TrackRoute>>,
}

impl ForwardingGraph {
    /// Adds a newly published track and returns its route.
    pub(crate) fn publish(
        &self,
        id: TrackId,
        room: RoomId,
        publisher: PeerLocation,
        kind: TrackKind,
        participant: Arc<str>,
        layer_count: u8,
    ) -> Arc<TrackRoute> {
        let route = Arc::new(TrackRoute {
            id,
            room,
            publisher,
            participant,
            kind,
            layer_count: AtomicU8::new(layer_count),
            active_layers: AtomicU32::new(0),
            layer_bps: Default::default(),
            layer_size: Default::default(),
            paused_layers: AtomicU32::new(0),
            has_temporal: AtomicBool::new(false),
            scalable: AtomicBool::new(false),
            descriptor: AtomicBool::new(false),
        });
        self.tracks.insert(id, route.clone());
        route
    }

    /// Removes a track; its subscribers receive nothing more from it.
    pub(crate) fn unpublish(&self, id: TrackId) -> Option<Arc<TrackRoute>> {
        self.tracks.remove(&id).map(|(_, route)| route)
    }

    /// The route of a track.
    pub(crate) fn get(&self, id: TrackId) -> Option<Arc<TrackRoute>> {
        self.tracks.get(&id).map(|r| r.value().clone())
    }

    /// Number of published tracks.
    pub(crate) fn len(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(worker: usize, peer: u64) -> PeerLocation {
        PeerLocation {
            worker,
            peer: PeerId(peer),
        }
    }

    #[test]
    fn publish_get_unpublish() {
        let g = ForwardingGraph::default();
        g.publish(
            TrackId(1),
            RoomId(9),
            loc(0, 1),
            TrackKind::Video,
            Arc::from("PA_1"),
            3,
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g.get(TrackId(1)).map(|r| r.publisher), Some(loc(0, 1)));
        assert!(g.get(TrackId(2)).is_none(), "unknown track");
        assert!(g.unpublish(TrackId(1)).is_some());
        assert!(g.unpublish(TrackId(1)).is_none());
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn active_layers() {
        let g = ForwardingGraph::default();
        let route = g.publish(
            TrackId(1),
            RoomId(9),
            loc(0, 1),
            TrackKind::Video,
            Arc::from("PA_1"),
            3,
        );
        assert_eq!(route.choose_layer_capped(Quality::Auto.cap(3)), None);
        assert!(route.mark_layer_active(0));
        assert!(!route.mark_layer_active(0));
        assert!(route.mark_layer_active(2));
        assert_eq!(route.choose_layer_capped(Quality::Auto.cap(3)), Some(2));
        assert_eq!(route.choose_layer_capped(Quality::Medium.cap(3)), Some(0));
        route.set_layer_active(2, false);
        assert_eq!(route.choose_layer_capped(Quality::High.cap(3)), Some(0));
    }
}
