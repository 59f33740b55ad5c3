//! One relay egress: the subscriber, in the origin's forwarding graph, that stands for a
//! remote node. It owns which tracks that node receives and which of their layers, and turns
//! each forwarded packet into a [`RelayPacket`]. Packets go to a bounded channel, dropped
//! and counted when the link cannot keep up (the remote node repairs loss with NACKs, or
//! asks for a keyframe); the events that must not be lost (a track ended) go to their own.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::{RelayEvent, RelayPacket, rtp};
use crate::counters::WorkerCounters;
use crate::ids::{RoomId, TrackId};
use crate::packet::Delivery;

/// Tracks one relay egress may carry (a remote node's viewers of one room).
pub(crate) const MAX_RELAYED_TRACKS: usize = 1024;

/// The stand-in for a remote node in this worker.
#[derive(Debug)]
pub(crate) struct RelayEgress {
    pub(crate) room: RoomId,
    /// Relayed tracks and the layers the remote node wants of each (bit per layer).
    pub(crate) tracks: HashMap<TrackId, u32>,
    packets: mpsc::Sender<RelayPacket>,
    events: mpsc::UnboundedSender<RelayEvent>,
}

impl RelayEgress {
    pub(crate) fn new(
        room: RoomId,
        packets: mpsc::Sender<RelayPacket>,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) -> Self {
        Self {
            room,
            tracks: HashMap::new(),
            packets,
            events,
        }
    }

    /// Media or news from a track's owner.
    pub(crate) fn handle_delivery(&mut self, delivery: Delivery, counters: &WorkerCounters) {
        match delivery {
            Delivery::Rtp { packet, .. } => {
                let wanted = self
                    .tracks
                    .get(&packet.track)
                    .is_some_and(|layers| layers & 1 << u32::from(packet.layer.min(31)) != 0);
                if !wanted {
                    return;
                }
                let mut bytes = Vec::with_capacity(packet.payload.len() + 40);
                rtp::encode(&packet, &mut bytes);
                let relayed = RelayPacket {
                    track: packet.track,
                    layer: packet.layer,
                    keyframe: packet.keyframe,
                    rtp: bytes,
                };
                match self.packets.try_send(relayed) {
                    Ok(()) => WorkerCounters::add(&counters.relay_packets_sent, 1),
                    Err(_) => WorkerCounters::add(&counters.relay_packets_dropped, 1),
                }
            }
            Delivery::TrackEnded { track, .. } => {
                if self.tracks.remove(&track).is_some() {
                    let _ = self.events.send(RelayEvent::TrackEnded(track));
                }
            }
            Delivery::Data { .. }
            | Delivery::Want { .. }
            | Delivery::Leave { .. }
            | Delivery::KeyframeRequest { .. } => {}
        }
    }
}
