//! State shared by all media workers and the handle: the forwarding graph, room membership for
//! data relay, the peer directory, and each worker's inboxes and counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use dashmap::DashMap;
use str0m::config::DtlsCert;
use tokio::sync::mpsc;

use crate::command::Command;
use crate::config::SfuConfig;
use crate::counters::{CounterSnapshot, WorkerCounters};
use crate::demux::UfragRegistry;
use crate::graph::{ForwardingGraph, PeerLocation};
use crate::ice_tcp::listener::{TcpHandoff, TcpLimits};
use crate::ids::{IdAllocator, PeerId, RoomId};
use crate::packet::Delivery;

/// Everything the workers share. Created once, before the workers start.
pub(crate) struct Shared {
    pub(crate) config: SfuConfig,
    pub(crate) graph: ForwardingGraph,
    pub(crate) rooms: DashMap<RoomId, RoomMembers>,
    /// Which worker each live peer is on.
    pub(crate) peers: DashMap<PeerId, usize>,
    pub(crate) workers: Vec<Arc<WorkerShared>>,
    pub(crate) ids: IdAllocator,
    /// One DTLS certificate for every peer: building one costs milliseconds of CPU.
    pub(crate) cert: DtlsCert,
    /// Which worker owns each local ICE ufrag (for ICE-TCP connections).
    pub(crate) ufrags: UfragRegistry,
    /// Open ICE-TCP connections, bounded.
    pub(crate) tcp_limits: Arc<TcpLimits>,
    /// The ICE-TCP passive candidates every peer advertises (empty: ICE-TCP is off).
    pub(crate) tcp_candidates: Vec<SocketAddr>,
    /// Counters of the ICE-TCP listener thread.
    pub(crate) tcp_counters: WorkerCounters,
}

/// The receiving ends of a worker's queues: commands, media batches, control deliveries,
/// ICE-TCP connections.
pub(crate) type WorkerReceivers = (
    mpsc::Receiver<Command>,
    mpsc::Receiver<Vec<Delivery>>,
    mpsc::UnboundedReceiver<Delivery>,
    mpsc::Receiver<TcpHandoff>,
);

/// Capacities of a worker's bounded queues.
pub(crate) struct QueueSizes {
    pub(crate) commands: usize,
    pub(crate) media_batches: usize,
    pub(crate) tcp_handoffs: usize,
}

/// What other threads need to reach one worker.
pub(crate) struct WorkerShared {
    pub(crate) counters: WorkerCounters,
    /// Peers placed on this worker (placement reads it; the worker decrements it).
    pub(crate) load: AtomicUsize,
    /// False once the worker stopped for good (it failed more than it may restart, or lost
    /// its socket): no new peer goes there.
    pub(crate) alive: AtomicBool,
    /// Droppable lane: batches of packets from other workers.
    pub(crate) media_tx: mpsc::Sender<Vec<Delivery>>,
    /// Reliable lane: rare deliveries that must not be lost.
    pub(crate) control_tx: mpsc::UnboundedSender<Delivery>,
    /// Commands from the control plane.
    pub(crate) commands: mpsc::Sender<Command>,
    /// ICE-TCP connections from the listener.
    pub(crate) tcp_tx: mpsc::Sender<TcpHandoff>,
    /// The worker socket's address.
    pub(crate) local_addr: SocketAddr,
    /// The ICE host candidates advertised for this worker.
    pub(crate) candidates: Vec<SocketAddr>,
}

impl WorkerShared {
    /// A live, idle worker's shared half, and the receiving ends of its queues.
    pub(crate) fn new(
        local_addr: SocketAddr,
        candidates: Vec<SocketAddr>,
        sizes: &QueueSizes,
    ) -> (Self, WorkerReceivers) {
        let (commands, commands_rx) = mpsc::channel(sizes.commands.max(1));
        let (media_tx, media_rx) = mpsc::channel(sizes.media_batches.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (tcp_tx, tcp_rx) = mpsc::channel(sizes.tcp_handoffs.max(1));
        let shared = Self {
            counters: WorkerCounters::default(),
            load: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            media_tx,
            control_tx,
            commands,
            tcp_tx,
            local_addr,
            candidates,
        };
        (shared, (commands_rx, media_rx, control_rx, tcp_rx))
    }
}

/// Peers of one room that receive data channel messages.
#[derive(Debug, Default)]
pub(crate) struct RoomMembers {
    pub(crate) data_receivers: Vec<DataReceiver>,
}

/// A subscriber peer that receives the room's data messages.
#[derive(Debug, Clone)]
pub(crate) struct DataReceiver {
    pub(crate) at: PeerLocation,
    pub(crate) participant: Arc<str>,
}

impl Shared {
    /// Totals of every worker's counters.
    pub(crate) fn counters(&self) -> CounterSnapshot {
        let mut snapshot = CounterSnapshot::default();
        for w in &self.workers {
            snapshot.add(&w.counters);
        }
        snapshot.add(&self.tcp_counters);
        snapshot
    }
}
