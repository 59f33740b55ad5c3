//! One relay egress: the subscriber, in the origin's forwarding graph, that stands for a
//! remote node. It owns which tracks that node receives and which of their layers, the
//! packets it sent lately (to send again what the link lost), and turns each forwarded
//! packet into a [`RelayPacket`]. Packets go to a bounded channel, dropped and counted when
//! the link cannot keep up (the remote node reports the gap, or asks for a keyframe); the
//! events that must not be lost (a track ended) go to their own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{MAX_NACK, RelayEvent, RelayPacket, rtp};
use crate::counters::WorkerCounters;
use crate::ids::{RoomId, TrackId};
use crate::packet::{Delivery, ForwardedPacket};

/// Tracks one relay egress may carry (a remote node's viewers of one room).
pub(crate) const MAX_RELAYED_TRACKS: usize = 1024;
/// Packets kept per relayed layer to send again (about a second of a 1.5 Mbit/s layer).
const REPAIR_PACKETS: usize = 256;
/// Packets older than this are not sent again: a repair that late does not help a viewer.
const REPAIR_AGE: Duration = Duration::from_millis(1000);

/// The stand-in for a remote node in this worker.
#[derive(Debug)]
pub(crate) struct RelayEgress {
    pub(crate) room: RoomId,
    /// Relayed tracks and the layers the remote node wants of each (bit per layer).
    pub(crate) tracks: HashMap<TrackId, u32>,
    /// The packets sent lately, per track and layer, oldest first (shared with the other
    /// subscribers: no copy).
    sent: HashMap<(TrackId, u8), VecDeque<Arc<ForwardedPacket>>>,
    packets: mpsc::Sender<RelayPacket>,
    events: mpsc::Sender<RelayEvent>,
}

impl RelayEgress {
    pub(crate) fn new(
        room: RoomId,
        packets: mpsc::Sender<RelayPacket>,
        events: mpsc::Sender<RelayEvent>,
    ) -> Self {
        Self {
            room,
            tracks: HashMap::new(),
            sent: HashMap::new(),
            packets,
            events,
        }
    }

    /// Media or news from a track's owner.
    pub(crate) fn handle_delivery(&mut self, delivery: Delivery, counters: &WorkerCounters) {
        match delivery {
            Delivery::Rtp { packet, .. } => self.send(packet, counters),
            Delivery::Replay { packets, .. } => {
                for packet in packets {
                    self.send(packet, counters);
                }
            }
            Delivery::TrackEnded { track, .. } => {
                if self.tracks.remove(&track).is_some() {
                    self.sent.retain(|(t, _), _| *t != track);
                    let _ = self.events.try_send(RelayEvent::TrackEnded(track));
                }
            }
            Delivery::Data { message, .. } => {
                let data = RelayEvent::Data {
                    binary: message.binary,
                    bytes: message.bytes.clone(),
                };
                if self.events.try_send(data).is_err() {
                    WorkerCounters::add(&counters.data_dropped, 1);
                }
            }
            Delivery::Want { .. } | Delivery::Leave { .. } | Delivery::KeyframeRequest { .. } => {}
        }
    }

    /// Passes a packet of a relayed track to the link, and keeps it to repair losses.
    fn send(&mut self, packet: Arc<ForwardedPacket>, counters: &WorkerCounters) {
        let wanted = self
            .tracks
            .get(&packet.track)
            .is_some_and(|layers| layers & 1 << u32::from(packet.layer.min(31)) != 0);
        if !wanted {
            return;
        }
        match self.packets.try_send(relayed(&packet, false)) {
            Ok(()) => WorkerCounters::add(&counters.relay_packets_sent, 1),
            Err(_) => WorkerCounters::add(&counters.relay_packets_dropped, 1),
        }
        let sent = self.sent.entry((packet.track, packet.layer)).or_default();
        while sent.len() >= REPAIR_PACKETS
            || sent
                .front()
                .is_some_and(|p| packet.arrival.saturating_duration_since(p.arrival) > REPAIR_AGE)
        {
            sent.pop_front();
        }
        sent.push_back(packet);
    }

    /// The remote node stops receiving `track` (it asked for no layer of it).
    pub(crate) fn forget(&mut self, track: TrackId) {
        self.tracks.remove(&track);
        self.sent.retain(|(t, _), _| *t != track);
    }

    /// Sends again the packets of `track`'s `layer` with these (publisher's) sequence
    /// numbers, those still held; at most [`MAX_NACK`] are looked at.
    pub(crate) fn repair(
        &mut self,
        track: TrackId,
        layer: u8,
        seqs: &[u16],
        counters: &WorkerCounters,
    ) {
        let Some(sent) = self.sent.get(&(track, layer)) else {
            return;
        };
        for seq in seqs.iter().take(MAX_NACK) {
            // Newest first: the missing packets are usually recent.
            let Some(packet) = sent.iter().rev().find(|p| p.seq as u16 == *seq) else {
                continue;
            };
            if self.packets.try_send(relayed(packet, true)).is_ok() {
                WorkerCounters::add(&counters.relay_packets_repaired, 1);
            } else {
                WorkerCounters::add(&counters.relay_packets_dropped, 1);
            }
        }
    }
}

/// The packet for the link.
fn relayed(packet: &ForwardedPacket, repair: bool) -> RelayPacket {
    let mut bytes = Vec::with_capacity(packet.payload.len() + 40);
    rtp::encode(packet, &mut bytes);
    RelayPacket {
        track: packet.track,
        layer: packet.layer,
        keyframe: packet.keyframe,
        repair,
        rtp: bytes,
    }
}
