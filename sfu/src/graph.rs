//! The forwarding graph: which subscribers receive each published track, and where they are.
//!
//! Written on publish, subscribe, unsubscribe and leave; read for every ingress packet. Each
//! track's subscriber list is an immutable `Arc<[SubscriberLink]>` replaced as a whole on
//! change (copy-on-write) behind that track's own lock, and the publisher's worker keeps the
//! track's `Arc<TrackRoute>`, so a packet costs one uncontended read lock and one reference
//! count, never a map lookup or a wait for a writer. The track map itself is a sharded
//! `DashMap`, used on the control path only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;

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

/// One subscriber of a track.
#[derive(Debug)]
pub(crate) struct SubscriberLink {
    pub(crate) at: PeerLocation,
    /// Bit `i` set: the subscriber wants packets of simulcast layer `i`. The subscriber's
    /// worker sets it; the publisher's worker reads it per packet.
    pub(crate) layers: AtomicU32,
    /// Bit `i` set: the subscriber asks for up to layer `i` (its quality request, whatever
    /// its bandwidth allows now). Dynacast keeps such layers sent, so a subscriber whose
    /// bandwidth grows can switch up without waiting for the publisher.
    pub(crate) demand: AtomicU32,
}

/// Everything the packet path needs to know about one published track.
#[derive(Debug)]
pub(crate) struct TrackRoute {
    pub(crate) id: TrackId,
    pub(crate) room: RoomId,
    pub(crate) publisher: PeerLocation,
    /// The publisher's participant id (the subscriber's `msid` stream id).
    pub(crate) participant: Arc<str>,
    pub(crate) kind: TrackKind,
    /// Number of simulcast layers (1 without simulcast).
    pub(crate) layer_count: u8,
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
    subscribers: RwLock<Arc<[Arc<SubscriberLink>]>>,
}

impl TrackRoute {
    /// The current subscribers (a cheap snapshot: one reference count).
    pub(crate) fn subscribers(&self) -> Arc<[Arc<SubscriberLink>]> {
        self.subscribers.read().clone()
    }

    /// Marks layer `index` as being sent by the publisher. Returns `true` if it was not before.
    pub(crate) fn mark_layer_active(&self, index: u8) -> bool {
        let bit = 1u32 << u32::from(index.min(31));
        self.active_layers.fetch_or(bit, Ordering::Relaxed) & bit == 0
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
        self.active_layers.load(Ordering::Relaxed) | self.paused_layers.load(Ordering::Relaxed)
    }

    /// The best available layer at or below `cap`.
    pub(crate) fn choose_layer_capped(&self, cap: Option<u8>) -> Option<u8> {
        choose_layer(self.available_layers(), cap)
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<SubscriberLink>>)) {
        let mut guard = self.subscribers.write();
        let mut list: Vec<_> = guard.iter().cloned().collect();
        f(&mut list);
        *guard = list.into();
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

/// All published tracks and their subscribers.
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
            layer_count,
            active_layers: AtomicU32::new(0),
            layer_bps: Default::default(),
            layer_size: Default::default(),
            paused_layers: AtomicU32::new(0),
            has_temporal: AtomicBool::new(false),
            subscribers: RwLock::new(Arc::from(Vec::new())),
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

    /// Adds (or replaces) a subscriber of a track wanting `layers`. Returns its link, whose
    /// `layers` the subscriber may change later, or `None` if the track is gone.
    pub(crate) fn subscribe(
        &self,
        id: TrackId,
        at: PeerLocation,
        layers: u32,
    ) -> Option<Arc<SubscriberLink>> {
        let route = self.get(id)?;
        let link = Arc::new(SubscriberLink {
            at,
            layers: AtomicU32::new(layers),
            demand: AtomicU32::new(0),
        });
        let added = link.clone();
        route.update(|list| {
            list.retain(|l| l.at != at);
            list.push(added);
        });
        Some(link)
    }

    /// Removes a subscriber from a track (no-op if either is gone).
    pub(crate) fn unsubscribe(&self, id: TrackId, at: PeerLocation) {
        if let Some(route) = self.get(id) {
            route.update(|list| list.retain(|l| l.at != at));
        }
    }

    /// A view of every track, sorted by track id.
    pub(crate) fn snapshot(&self) -> Vec<TrackSnapshot> {
        let mut out: Vec<TrackSnapshot> = self
            .tracks
            .iter()
            .map(|r| TrackSnapshot {
                track: r.id,
                room: r.room,
                publisher: r.publisher.peer,
                subscribers: r.subscribers().iter().map(|l| l.at.peer).collect(),
            })
            .collect();
        out.sort_by_key(|t| t.track);
        out
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
    fn subscribe_snapshot_unsubscribe() {
        let g = ForwardingGraph::default();
        let route = g.publish(
            TrackId(1),
            RoomId(9),
            loc(0, 1),
            TrackKind::Video,
            Arc::from("PA_1"),
            3,
        );
        let before = route.subscribers();
        assert!(g.subscribe(TrackId(1), loc(1, 2), 1).is_some());
        assert!(g.subscribe(TrackId(1), loc(0, 3), 1).is_some());
        assert!(
            g.subscribe(TrackId(2), loc(0, 3), 1).is_none(),
            "unknown track"
        );
        assert_eq!(before.len(), 0, "old snapshots are immutable");
        assert_eq!(route.subscribers().len(), 2);
        g.unsubscribe(TrackId(1), loc(1, 2));
        let snap = g.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].subscribers, vec![PeerId(3)]);
        assert!(g.unpublish(TrackId(1)).is_some());
        assert!(g.snapshot().is_empty());
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
