//! One media worker in-process: a `WorkerCore` with its shared state but no socket, no thread
//! and no clock. Commands run through [`Harness::request`], datagrams through the core's own
//! entry points, and time is whatever the caller says it is.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::net::Transmit;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Reply};
use crate::config::SfuConfig;
use crate::counters::{CounterSnapshot, WorkerCounters};
use crate::error::SfuError;
use crate::event::{EventSink, PeerEvent, PeerSpec};
use crate::graph::ForwardingGraph;
use crate::ids::{IdAllocator, PeerId, RoomId, TrackId};
use crate::shared::{QueueSizes, RoomMembers, Shared, WorkerShared};
use crate::worker::core::WorkerCore;
use crate::worker::local_addrs::LocalAddrs;

/// The worker's UDP candidate.
pub(crate) const SERVER: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5000));
/// The ICE-TCP candidate every peer advertises.
pub(crate) const SERVER_TCP: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001));

/// Two DTLS certificates (the server's, the clients'), made once per process: a certificate
/// costs milliseconds.
pub(crate) fn certificates() -> &'static (DtlsCert, DtlsCert) {
    static CERTS: OnceLock<(DtlsCert, DtlsCert)> = OnceLock::new();
    CERTS.get_or_init(|| {
        let provider = str0m::crypto::from_feature_flags().dtls_provider;
        match (
            provider.generate_certificate(),
            provider.generate_certificate(),
        ) {
            (Some(a), Some(b)) => (a, b),
            _ => panic!("cannot generate a DTLS certificate"),
        }
    })
}

/// One media worker and its shared state, driven by hand.
pub(crate) struct Harness {
    pub(crate) core: WorkerCore,
    pub(crate) shared: Arc<Shared>,
    pub(crate) room: RoomId,
    pub(crate) now: Instant,
    events_tx: EventSink,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    /// The worker's inboxes (nothing reads them; kept so that sends succeed).
    _inboxes: Box<dyn std::any::Any>,
}

impl Harness {
    pub(crate) fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// A harness whose server configuration `adjust` changes.
    pub(crate) fn with_config(adjust: impl FnOnce(&mut SfuConfig)) -> Self {
        let mut config = SfuConfig {
            workers: 1,
            first_port: SERVER.port(),
            ice_tcp_port: Some(SERVER_TCP.port()),
            ..SfuConfig::default()
        };
        adjust(&mut config);
        let bound = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), SERVER.port());
        let sizes = QueueSizes {
            commands: 16,
            media_batches: 16,
            tcp_handoffs: 1,
        };
        let (slot, receivers) = WorkerShared::new(bound, vec![SERVER], &sizes);
        let slot = Arc::new(slot);
        let shared = Arc::new(Shared {
            config,
            graph: ForwardingGraph::default(),
            rooms: DashMap::new(),
            peers: DashMap::new(),
            workers: vec![slot.clone()],
            ids: IdAllocator::new(),
            cert: certificates().0.clone(),
            ufrags: Arc::new(DashMap::new()),
            tcp_limits: Arc::default(),
            tcp_candidates: vec![SERVER_TCP],
            tcp_counters: WorkerCounters::default(),
        });
        let room = RoomId(shared.ids.next());
        shared.rooms.insert(room, RoomMembers::default());
        let local = LocalAddrs::new(bound, &[SERVER]);
        let core = WorkerCore::new(0, shared.clone(), slot, local);
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            core,
            shared,
            room,
            now: Instant::now(),
            events_tx,
            events,
            _inboxes: Box::new(receivers),
        }
    }

    /// A new room; peers placed after `self.room = ...` go there.
    #[cfg(test)]
    pub(crate) fn add_room(&mut self) -> RoomId {
        let room = RoomId(self.shared.ids.next());
        self.shared.rooms.insert(room, RoomMembers::default());
        room
    }

    /// Reserves a peer id on this worker, as [`crate::Sfu`] does before its command.
    pub(crate) fn place(&self) -> (PeerId, PeerSpec) {
        let id = PeerId(self.shared.ids.next());
        self.shared.peers.insert(id, 0);
        if let Some(w) = self.shared.workers.first() {
            w.load.fetch_add(1, Ordering::Relaxed);
        }
        let name: Arc<str> = Arc::from(id.to_string());
        let spec = PeerSpec {
            room: self.room,
            participant: name.clone(),
            identity: name,
            can_publish_data: true,
        };
        (id, spec)
    }

    /// Runs a command and returns its reply (the worker replies before it returns).
    pub(crate) fn request<T>(
        &mut self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SfuError> {
        let (reply, mut rx) = oneshot::channel();
        self.core.handle_command(self.now, make(reply));
        rx.try_recv().unwrap_or(Err(SfuError::Shutdown))
    }

    pub(crate) fn add_publisher(
        &mut self,
        offer: SdpOffer,
        video_codecs: Vec<Codec>,
    ) -> Result<(PeerId, String), SfuError> {
        let (peer, spec) = self.place();
        let events = self.events_tx.clone();
        self.request(|reply| Command::AddPublisher {
            peer,
            spec,
            offer: Box::new(offer),
            video_codecs,
            events,
            reply,
        })
        .map(|answer| (peer, answer))
    }

    pub(crate) fn add_offering_subscriber(
        &mut self,
        offer: SdpOffer,
        tracks: Vec<TrackId>,
    ) -> Result<(PeerId, String), SfuError> {
        let (peer, spec) = self.place();
        let events = self.events_tx.clone();
        self.request(|reply| Command::AddOfferingSubscriber {
            peer,
            spec,
            offer: Box::new(offer),
            tracks,
            events,
            reply,
        })
        .map(|answer| (peer, answer))
    }

    pub(crate) fn add_subscriber(&mut self, tracks: Vec<TrackId>) -> Result<PeerId, SfuError> {
        let (peer, spec) = self.place();
        let events = self.events_tx.clone();
        self.request(|reply| Command::AddSubscriber {
            peer,
            spec,
            tracks,
            events,
            reply,
        })
        .map(|()| peer)
    }

    pub(crate) fn subscriber_answer(
        &mut self,
        peer: PeerId,
        answer: SdpAnswer,
    ) -> Result<(), SfuError> {
        self.request(|reply| Command::SubscriberAnswer {
            peer,
            answer: Box::new(answer),
            reply,
        })
    }

    /// The events the peers sent since the last call.
    pub(crate) fn events(&mut self) -> Vec<PeerEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Ends the worker's turn: what it sends (its deliveries to other workers are dropped:
    /// there are none).
    pub(crate) fn flush(&mut self) -> Vec<Transmit> {
        self.core.flush(self.now, &mut |_| {});
        self.core.out.remote.iter_mut().for_each(Vec::clear);
        self.core.out.control.clear();
        std::mem::take(&mut self.core.out.transmits)
    }

    pub(crate) fn counters(&self) -> CounterSnapshot {
        self.shared.counters()
    }

    pub(crate) fn peers(&self) -> usize {
        self.core.sizes().0
    }
}
