//! [`Sfu`]: the handle the control plane drives. It starts the media workers, places new peers
//! on the least-loaded one, sends each command to the worker that owns the peer and awaits the
//! reply. Nothing here is on the packet path.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use dashmap::DashMap;
use parking_lot::Mutex;
use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::command::Command;
use crate::config::SfuConfig;
use crate::counters::{CounterSnapshot, WorkerCounters};
use crate::error::SfuError;
use crate::event::{EventSink, PeerSpec, TrackCounters};
use crate::graph::{ForwardingGraph, TrackSnapshot};
use crate::ids::{IdAllocator, PeerId, RoomId, TrackId};
use crate::shared::{QueueSizes, RoomMembers, Shared, WorkerShared};
use crate::worker::driver::{self, Inboxes};
use crate::worker::local_addrs::LocalAddrs;

/// Capacity of each worker's command queue.
const COMMAND_QUEUE: usize = 1024;
/// ICE-TCP connections waiting for a worker to take them.
const TCP_HANDOFF_QUEUE: usize = 64;

/// The running media core. Cheap to clone; the workers stop when the last clone is dropped
/// (or at [`Sfu::shutdown`]).
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("media_addrs", &self.media_addrs())
            .finish()
    }
}

impl Sfu {
    /// Binds one UDP socket per worker and starts the workers.
    pub fn start(config: SfuConfig) -> Result<Sfu, SfuError> {
        if config.workers == 0 {
            return Err(SfuError::Config(
                "at least one media worker is needed".into(),
            ));
        }
        let advertised = advertised_ips(&config)?;
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| SfuError::Config("cannot generate a DTLS certificate".into()))?;

        // ICE-TCP: one listener for the whole server, advertised on every address.
        let tcp_listener = match config.ice_tcp_port {
            Some(port) => Some(bind_tcp(SocketAddr::new(config.bind_ip, port))?),
            None => None,
        };
        let tcp_candidates: Vec<SocketAddr> = match &tcp_listener {
            Some(listener) => {
                let port = listener
                    .local_addr()
                    .map_err(|source| SfuError::Bind {
                        addr: SocketAddr::new(config.bind_ip, 0),
                        source,
                    })?
                    .port();
                advertised
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut sockets = Vec::new();
        let mut slots = Vec::new();
        let mut inboxes = Vec::new();
        let mut locals = Vec::new();
        for i in 0..config.workers {
            let port = if config.first_port == 0 {
                0
            } else {
                u16::try_from(usize::from(config.first_port) + i)
                    .map_err(|_| SfuError::Config("media ports run past 65535".into()))?
            };
            let socket = bind_udp(
                SocketAddr::new(config.bind_ip, port),
                config.socket_buffer_bytes,
            )?;
            let local = socket.local_addr().map_err(|source| SfuError::Bind {
                addr: SocketAddr::new(config.bind_ip, port),
                source,
            })?;
            let candidates: Vec<SocketAddr> = advertised
                .iter()
                .map(|ip| SocketAddr::new(*ip, local.port()))
                .collect();
            locals.push(LocalAddrs::new(local, &candidates));
            let sizes = QueueSizes {
                commands: COMMAND_QUEUE,
                media_batches: config.worker_queue_batches,
                tcp_handoffs: TCP_HANDOFF_QUEUE,
            };
            let (slot, receivers) = WorkerShared::new(local, candidates, &sizes);
            slots.push(Arc::new(slot));
            inboxes.push(receivers);
            sockets.push(socket);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            graph: ForwardingGraph::default(),
            rooms: DashMap::new(),
            peers: DashMap::new(),
            workers: slots,
            ids: IdAllocator::new(),
            cert,
            ufrags: Arc::new(DashMap::new()),
            tcp_limits: Arc::default(),
            tcp_candidates: tcp_candidates.clone(),
            tcp_counters: WorkerCounters::default(),
        });
        let mut threads = Vec::new();
        let workers = sockets.into_iter().zip(inboxes).zip(locals);
        for (index, ((socket, (commands, media, control, tcp)), local)) in workers.enumerate() {
            let Some(slot) = shared.workers.get(index).cloned() else {
                break;
            };
            let inboxes = Inboxes {
                commands,
                media,
                control,
                tcp,
                shutdown: shutdown_rx.clone(),
            };
            let thread = driver::spawn(index, socket, local, shared.clone(), slot, inboxes)
                .map_err(|e| {
                    SfuError::Config(format!("cannot start a media worker thread: {e}"))
                })?;
            threads.push(thread);
        }
        if let Some(listener) = tcp_listener {
            let bound = listener.local_addr().map_err(|source| SfuError::Bind {
                addr: SocketAddr::new(shared.config.bind_ip, 0),
                source,
            })?;
            let thread = crate::ice_tcp::listener::spawn(
                listener,
                LocalAddrs::new(bound, &tcp_candidates),
                shared.clone(),
                shutdown_rx.clone(),
            )
            .map_err(|e| SfuError::Config(format!("cannot start the ICE-TCP thread: {e}")))?;
            threads.push(thread);
        }
        info!(
            workers = shared.workers.len(),
            addrs = ?shared.workers.iter().map(|w| w.local_addr).collect::<Vec<_>>(),
            ice_tcp = ?shared.tcp_candidates,
            "media workers started"
        );
        Ok(Sfu {
            inner: Arc::new(Inner {
                shared,
                shutdown,
                threads: Mutex::new(threads),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address each worker's socket is bound to.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.shared().workers.iter().map(|w| w.local_addr).collect()
    }

    /// ICE-TCP connections open now (accepted, not yet closed).
    pub fn tcp_connections(&self) -> usize {
        self.shared().tcp_limits.open()
    }

    /// The ICE-TCP passive candidates advertised (empty when ICE-TCP is off).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.shared().tcp_candidates.clone()
    }

    /// The ICE candidates advertised for each worker.
    pub fn advertised_addrs(&self) -> Vec<SocketAddr> {
        self.shared()
            .workers
            .iter()
            .flat_map(|w| w.candidates.iter().copied())
            .collect()
    }

    /// Creates an empty room.
    pub fn create_room(&self) -> RoomId {
        let id = RoomId(self.shared().ids.next());
        self.shared().rooms.insert(id, RoomMembers::default());
        id
    }

    /// Forgets a room. Its peers should have been removed first; peers still in it stay
    /// connected but no longer receive data messages.
    pub fn close_room(&self, room: RoomId) {
        self.shared().rooms.remove(&room);
    }

    /// Creates a publisher peer from a client's SDP offer; returns the peer and the answer.
    pub async fn add_publisher(
        &self,
        spec: PeerSpec,
        offer: &str,
        events: EventSink,
    ) -> Result<(PeerId, String), SfuError> {
        let video_codecs = crate::codec_order::video_codec_order(offer);
        let offer = parse_offer(offer)?;
        let (peer, worker) = self.place(&spec)?;
        let answer = self
            .request(worker, |reply| Command::AddPublisher {
                peer,
                spec,
                offer: Box::new(offer),
                video_codecs,
                events,
                reply,
            })
            .await
            .inspect_err(|_| self.forget(peer, worker))?;
        Ok((peer, answer))
    }

    /// Creates a subscriber peer, subscribed to those of `tracks` that still exist. Its first
    /// SDP offer arrives as [`crate::PeerEvent::SubscriberOffer`].
    pub async fn add_subscriber(
        &self,
        spec: PeerSpec,
        tracks: Vec<TrackId>,
        events: EventSink,
    ) -> Result<PeerId, SfuError> {
        let (peer, worker) = self.place(&spec)?;
        self.request(worker, |reply| Command::AddSubscriber {
            peer,
            spec,
            tracks,
            events,
            reply,
        })
        .await
        .inspect_err(|_| self.forget(peer, worker))?;
        Ok(peer)
    }

    /// Creates a subscriber from a client's SDP offer (WHEP): each of `tracks` that exists is
    /// bound to a free m-line of its kind in the offer. Later [`Sfu::subscribe`] calls bind to
    /// m-lines freed by ended tracks; there is never a renegotiation. Returns the answer.
    pub async fn add_offering_subscriber(
        &self,
        spec: PeerSpec,
        offer: &str,
        tracks: Vec<TrackId>,
        events: EventSink,
    ) -> Result<(PeerId, String), SfuError> {
        let offer = parse_offer(offer)?;
        let (peer, worker) = self.place(&spec)?;
        let answer = self
            .request(worker, |reply| Command::AddOfferingSubscriber {
                peer,
                spec,
                offer: Box::new(offer),
                tracks,
                events,
                reply,
            })
            .await
            .inspect_err(|_| self.forget(peer, worker))?;
        Ok((peer, answer))
    }

    /// A client offers again (a publisher adding or removing tracks, or any client-offering
    /// peer restarting ICE); returns the answer.
    pub async fn publisher_offer(&self, peer: PeerId, offer: &str) -> Result<String, SfuError> {
        let offer = parse_offer(offer)?;
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::PublisherOffer {
            peer,
            offer: Box::new(offer),
            reply,
        })
        .await
    }

    /// A subscriber's client answers the latest offer.
    pub async fn subscriber_answer(&self, peer: PeerId, answer: &str) -> Result<(), SfuError> {
        let answer = parse_answer(answer)?;
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::SubscriberAnswer {
            peer,
            answer: Box::new(answer),
            reply,
        })
        .await
    }

    /// Starts sending a track to a subscriber (after the next negotiation).
    pub async fn subscribe(&self, peer: PeerId, track: TrackId) -> Result<(), SfuError> {
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::Subscribe { peer, track, reply })
            .await
    }

    /// Starts sending a track to many subscribers at once: one command per worker, all
    /// workers at the same time (a track published into a room with thousands of viewers
    /// costs a few round trips, not one per viewer). Returns the subscribers it could not be
    /// sent to, and why.
    pub async fn subscribe_all(&self, peers: &[PeerId], track: TrackId) -> Vec<(PeerId, SfuError)> {
        let mut failed = Vec::new();
        let mut by_worker: Vec<Vec<PeerId>> = Vec::new();
        for &peer in peers {
            match self.worker_of(peer) {
                Ok(worker) => {
                    if by_worker.len() <= worker {
                        by_worker.resize_with(worker + 1, Vec::new);
                    }
                    if let Some(group) = by_worker.get_mut(worker) {
                        group.push(peer);
                    }
                }
                Err(e) => failed.push((peer, e)),
            }
        }
        // Every worker's command is sent before any answer is awaited: they work together.
        let mut pending = Vec::new();
        for (worker, peers) in by_worker.into_iter().enumerate() {
            if peers.is_empty() {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let sent = match self.commands(worker) {
                Ok(commands) => commands
                    .send(Command::SubscribeMany {
                        peers: peers.clone(),
                        track,
                        reply,
                    })
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if sent {
                pending.push((peers, answer));
            } else {
                failed.extend(peers.into_iter().map(|p| (p, SfuError::Shutdown)));
            }
        }
        for (peers, answer) in pending {
            match answer.await {
                Ok(refused) => failed.extend(refused),
                Err(_) => failed.extend(peers.into_iter().map(|p| (p, SfuError::Shutdown))),
            }
        }
        failed
    }

    /// Stops sending a track to a subscriber.
    pub async fn unsubscribe(&self, peer: PeerId, track: TrackId) -> Result<(), SfuError> {
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::Unsubscribe { peer, track, reply })
            .await
    }

    /// Restarts ICE on a subscriber whose offers come from the server (the client's network
    /// changed): the next offer carries new ICE credentials (after the one under way, if
    /// any), and checks on the new credentials are answered once the client's answer
    /// arrives. A client that made the offer itself (WHEP) restarts ICE with a new offer.
    pub async fn restart_ice(&self, peer: PeerId) -> Result<(), SfuError> {
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::RestartIce { peer, reply })
            .await
    }

    /// Sets what a subscriber wants of one of its video tracks (quality, view size). The
    /// layer is re-chosen at once; the switch happens on the next keyframe of the new layer.
    pub async fn set_video_preference(
        &self,
        peer: PeerId,
        track: TrackId,
        preference: crate::VideoPreference,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::SetVideoPreference {
            peer,
            track,
            preference,
            reply,
        })
        .await
    }

    /// Adds a trickled remote ICE candidate (`candidate:...`, with or without `a=`). An mDNS
    /// host candidate (`<uuid>.local`, which browsers trickle from pages without camera
    /// permission) is ignored: an ICE-lite server learns the client's addresses from its
    /// connectivity checks and has no use for a name it cannot resolve.
    pub async fn add_remote_candidate(
        &self,
        peer: PeerId,
        candidate: &str,
    ) -> Result<(), SfuError> {
        let line = candidate.trim().trim_start_matches("a=");
        if is_mdns_candidate(line) {
            tracing::debug!(%peer, "mDNS candidate ignored");
            return Ok(());
        }
        let candidate = Candidate::from_sdp_string(line)
            .map_err(|e| SfuError::BadSdp(format!("bad ICE candidate: {e}")))?;
        let worker = self.worker_of(peer)?;
        self.commands(worker)?
            .send(Command::RemoteCandidate {
                peer,
                candidate: Box::new(candidate),
            })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Closes a peer and removes everything it published or subscribed. When this returns,
    /// its tracks are unpublished; the owners of the tracks it received forget it in their
    /// next turn.
    pub async fn remove_peer(&self, peer: PeerId) -> Result<(), SfuError> {
        let worker = self.worker_of(peer)?;
        self.request(worker, |reply| Command::RemovePeer { peer, reply })
            .await
    }

    /// Mutes (or unmutes) a published track: while muted, none of its packets is forwarded.
    /// The publisher's worker applies it before replying, so every packet it handles after
    /// this returns is held back; the counters returned are those at that moment.
    pub async fn set_track_muted(
        &self,
        track: TrackId,
        muted: bool,
    ) -> Result<TrackCounters, SfuError> {
        let worker = self.worker_of_track(track)?;
        self.request(worker, |reply| Command::SetTrackMuted {
            track,
            muted,
            reply,
        })
        .await
    }

    /// A published track's counters, read from the worker that owns it.
    pub async fn track_counters(&self, track: TrackId) -> Result<TrackCounters, SfuError> {
        let worker = self.worker_of_track(track)?;
        self.request(worker, |reply| Command::TrackCounters { track, reply })
            .await
    }

    /// The payload formats a published track's packets may carry (what another node needs to
    /// publish it when relayed there: [`Sfu::relay_publish`]).
    pub async fn track_codecs(
        &self,
        track: TrackId,
    ) -> Result<Vec<crate::relay::RelayCodec>, SfuError> {
        let worker = self.worker_of_track(track)?;
        self.request(worker, |reply| Command::TrackCodecs { track, reply })
            .await
    }

    /// Totals of the workers' counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared().counters()
    }

    /// For each worker: batches waiting in its queue from other workers, the queue's capacity,
    /// and batches this worker dropped because another's queue was full.
    pub fn worker_queues(&self) -> Vec<(usize, usize, u64)> {
        self.shared()
            .workers
            .iter()
            .map(|w| {
                let capacity = w.media_tx.max_capacity();
                let drops = w.counters.queue_drops.load(Ordering::Relaxed);
                (capacity - w.media_tx.capacity(), capacity, drops)
            })
            .collect()
    }

    /// Every published track and its subscribers, sorted by track id, as each track's owner
    /// (its publisher's worker) knows them. A subscriber's join or leave reaches the owner
    /// within the owner's next turn, so a snapshot taken at once may not show it yet.
    pub async fn tracks(&self) -> Vec<TrackSnapshot> {
        let mut tracks = Vec::new();
        for worker in 0..self.shared().workers.len() {
            // A worker that stopped for good has no tracks.
            if let Ok(mine) = self
                .request(worker, |reply| Command::Tracks { reply })
                .await
            {
                tracks.extend(mine);
            }
        }
        tracks.sort_by_key(|t| t.track);
        tracks
    }

    /// Number of published tracks.
    pub fn track_count(&self) -> usize {
        self.shared().graph.len()
    }

    /// Number of live peers.
    pub fn peer_count(&self) -> usize {
        self.shared().peers.len()
    }

    /// Whether a peer is live.
    pub fn has_peer(&self, peer: PeerId) -> bool {
        self.shared().peers.contains_key(&peer)
    }

    /// Stops the workers (closing every peer) and waits for their threads.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }

    /// Media workers that stopped for good (each failed more often than it may restart, or
    /// lost its socket). Any means the node is unhealthy.
    pub fn dead_workers(&self) -> Vec<usize> {
        self.shared()
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.alive.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }

    /// Makes media worker `worker` panic, for tests of what follows (its peers are closed,
    /// it restarts). Not reachable from the network.
    #[doc(hidden)]
    pub async fn crash_worker_for_tests(&self, worker: usize) -> Result<(), SfuError> {
        self.commands(worker)?
            .send(Command::Crash)
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// The media worker a peer lives on, for tests that crash one worker and watch the other.
    #[doc(hidden)]
    pub fn worker_of_peer_for_tests(&self, peer: PeerId) -> Option<usize> {
        self.worker_of(peer).ok()
    }

    /// Creates a relay egress in `room`: the stand-in, in this node's forwarding graph, for
    /// another node whose viewers watch tracks published here. [`Sfu::relay_layers`] says
    /// which tracks and layers it carries; their packets arrive on the returned receiver
    /// (at most `capacity` waiting: more are dropped and counted), and the tracks that end on
    /// the event receiver. Remove it with [`Sfu::remove_relay_egress`].
    ///
    /// With `carries_data`, the room's data messages also go to the event receiver (and
    /// [`Sfu::relay_data`] through it reaches the room's members): one endpoint per link and
    /// room carries them, or a message would cross twice, or back.
    pub async fn add_relay_egress(
        &self,
        room: RoomId,
        capacity: usize,
        carries_data: bool,
    ) -> Result<RelayEgressHandle, SfuError> {
        let (id, worker) = self.place_in(room)?;
        let (packets, packet_rx) = mpsc::channel(capacity.max(1));
        let (events, event_rx) = mpsc::channel(crate::relay::RELAY_EVENT_QUEUE);
        self.request(worker, |reply| Command::AddRelayEgress {
            id,
            room,
            packets,
            events,
            carries_data,
            reply,
        })
        .await
        .inspect_err(|_| self.forget(id, worker))?;
        Ok(RelayEgressHandle {
            id,
            packets: packet_rx,
            events: event_rx,
        })
    }

    /// Sets which layers of `track` relay egress `id` carries, a bit per layer (0: stop
    /// relaying the track). The track must be published in the relay's room.
    pub async fn relay_layers(
        &self,
        id: PeerId,
        track: TrackId,
        layers: u32,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.request(worker, |reply| Command::RelayLayers {
            id,
            track,
            layers,
            reply,
        })
        .await
    }

    /// Asks the publisher of a relayed track for a keyframe of `layer` (for the remote
    /// node's viewers; coalesced and throttled with local viewers' requests).
    pub async fn relay_keyframe(
        &self,
        id: PeerId,
        track: TrackId,
        layer: u8,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.commands(worker)?
            .send(Command::RelayKeyframe { id, track, layer })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Sends again, on relay egress `id`, the packets of `track`'s `layer` with these sequence
    /// numbers (the other node lost them on the link), if still held (the last second or
    /// so); at most [`crate::relay::MAX_NACK`] are looked at.
    pub async fn relay_nack(
        &self,
        id: PeerId,
        track: TrackId,
        layer: u8,
        seqs: Vec<u16>,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.commands(worker)?
            .send(Command::RelayNack {
                id,
                track,
                layer,
                seqs,
            })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Removes a relay egress; the tracks it carried stop being relayed.
    pub async fn remove_relay_egress(&self, id: PeerId) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.request(worker, |reply| Command::RemoveRelayEgress { id, reply })
            .await
    }

    /// Creates a relay ingress in `room`: the stand-in, in this node's forwarding graph, for
    /// another node's publishers. Tracks published through it ([`Sfu::relay_publish`]) are
    /// subscribed to like local ones; their packets come in with [`Sfu::relay_packets`].
    /// Its events (tracks published and unpublished, `LayersWanted` from dynacast: the layers
    /// to keep asking the origin for) arrive on `events`, and what to ask the origin for
    /// (keyframes, packets lost on the link) on the handle's receiver; with `carries_data`
    /// also the room's data messages (as for [`Sfu::add_relay_egress`]).
    pub async fn add_relay_ingress(
        &self,
        room: RoomId,
        events: EventSink,
        carries_data: bool,
    ) -> Result<RelayIngressHandle, SfuError> {
        let (id, worker) = self.place_in(room)?;
        let (requests, requests_rx) = mpsc::channel(crate::relay::RELAY_EVENT_QUEUE);
        let name: std::sync::Arc<str> = std::sync::Arc::from(format!("relay-{id}"));
        let spec = PeerSpec {
            room,
            participant: name.clone(),
            identity: name,
            can_publish_data: false,
        };
        self.request(worker, |reply| Command::AddRelayIngress {
            id,
            spec,
            events,
            requests,
            carries_data,
            reply,
        })
        .await
        .inspect_err(|_| self.forget(id, worker))?;
        Ok(RelayIngressHandle {
            id,
            requests: requests_rx,
        })
    }

    /// Publishes a track relayed from another node through relay ingress `id`: `participant`
    /// is its publisher (as the room knows it), `layers` its simulcast streams or spatial
    /// layers, `codecs` the payload types its packets use. Returns its id on this node.
    pub async fn relay_publish(
        &self,
        id: PeerId,
        participant: std::sync::Arc<str>,
        kind: crate::event::TrackKind,
        layers: u8,
        codecs: Vec<crate::relay::RelayCodec>,
    ) -> Result<TrackId, SfuError> {
        let worker = self.worker_of(id)?;
        self.request(worker, |reply| Command::RelayPublish {
            id,
            participant,
            kind,
            layers,
            codecs,
            reply,
        })
        .await
    }

    /// Unpublishes a relayed track (it ended at the origin).
    pub async fn relay_unpublish(&self, id: PeerId, track: TrackId) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.commands(worker)?
            .send(Command::RelayUnpublish { id, track })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Packets from the origin for relay ingress `id` (as [`crate::relay::rtp`] writes them),
    /// each with its track's id on this node. Malformed ones are dropped and counted.
    pub async fn relay_packets(
        &self,
        id: PeerId,
        packets: Vec<(TrackId, Vec<u8>)>,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.commands(worker)?
            .send(Command::RelayPackets { id, packets })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Delivers a data message that came from another node (wrapped with its sender's
    /// identity) to the members of relay endpoint `id`'s room (egress or ingress).
    pub async fn relay_data(
        &self,
        id: PeerId,
        binary: bool,
        bytes: Vec<u8>,
    ) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.commands(worker)?
            .send(Command::RelayData { id, binary, bytes })
            .await
            .map_err(|_| SfuError::Shutdown)
    }

    /// Removes a relay ingress: its tracks are unpublished.
    pub async fn remove_relay_ingress(&self, id: PeerId) -> Result<(), SfuError> {
        let worker = self.worker_of(id)?;
        self.request(worker, |reply| Command::RemoveRelayIngress { id, reply })
            .await
    }

    /// Picks the worker for a new peer: the least loaded live one.
    fn place(&self, spec: &PeerSpec) -> Result<(PeerId, usize), SfuError> {
        self.place_in(spec.room)
    }

    /// Picks the worker for a new peer (or relay) of `room`: the least loaded live one.
    fn place_in(&self, room: RoomId) -> Result<(PeerId, usize), SfuError> {
        let shared = self.shared();
        if !shared.rooms.contains_key(&room) {
            return Err(SfuError::UnknownRoom(room));
        }
        let (worker, slot) = shared
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.alive.load(Ordering::Relaxed))
            .min_by_key(|(_, w)| w.load.load(Ordering::Relaxed))
            .ok_or(SfuError::NoWorker)?;
        slot.load.fetch_add(1, Ordering::Relaxed);
        let peer = PeerId(shared.ids.next());
        shared.peers.insert(peer, worker);
        Ok((peer, worker))
    }

    /// Undoes [`Sfu::place`] when the worker never got the peer. (A worker that did get it
    /// removes it and its load itself.)
    fn forget(&self, peer: PeerId, worker: usize) {
        let shared = self.shared();
        if shared.peers.remove(&peer).is_some()
            && let Some(slot) = shared.workers.get(worker)
        {
            slot.load.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn worker_of(&self, peer: PeerId) -> Result<usize, SfuError> {
        self.shared()
            .peers
            .get(&peer)
            .map(|w| *w)
            .ok_or(SfuError::UnknownPeer(peer))
    }

    /// The worker of a track's publisher.
    fn worker_of_track(&self, track: TrackId) -> Result<usize, SfuError> {
        self.shared()
            .graph
            .get(track)
            .map(|route| route.publisher.worker)
            .ok_or(SfuError::UnknownTrack(track))
    }

    fn commands(&self, worker: usize) -> Result<&mpsc::Sender<Command>, SfuError> {
        let slot = self.shared().workers.get(worker);
        slot.map(|w| &w.commands).ok_or(SfuError::Shutdown)
    }

    async fn request<T>(
        &self,
        worker: usize,
        command: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let (reply, result) = oneshot::channel();
        self.commands(worker)?
            .send(command(reply))
            .await
            .map_err(|_| SfuError::Shutdown)?;
        result.await.map_err(|_| SfuError::Shutdown)?
    }
}

/// A relay egress: its id, the packets it relays and the news of its tracks.
#[derive(Debug)]
pub struct RelayEgressHandle {
    /// The id the forwarding graph knows it by.
    pub id: PeerId,
    /// Packets for the relay link, in the order forwarded.
    pub packets: mpsc::Receiver<crate::relay::RelayPacket>,
    /// Tracks that ended, and the room's data messages for the other node (at most
    /// [`crate::relay::RELAY_EVENT_QUEUE`] waiting: more are dropped and counted).
    pub events: mpsc::Receiver<crate::relay::RelayEvent>,
}

/// A relay ingress: its id and its viewers' keyframe requests for the origin.
#[derive(Debug)]
pub struct RelayIngressHandle {
    /// The id the forwarding graph knows it by (its tracks' publisher).
    pub id: PeerId,
    /// What to ask the origin for: keyframes (coalesced and throttled per layer) and
    /// packets lost on the link.
    pub requests: mpsc::Receiver<crate::relay::RelayRequest>,
}

/// Whether a candidate line names its address with an mDNS `.local` host name.
fn is_mdns_candidate(line: &str) -> bool {
    line.split_whitespace()
        .nth(4)
        .is_some_and(|address| address.to_ascii_lowercase().ends_with(".local"))
}

/// The addresses to advertise as ICE candidates.
fn advertised_ips(config: &SfuConfig) -> Result<Vec<IpAddr>, SfuError> {
    if !config.advertise_ips.is_empty() {
        let v6 = config.bind_ip.is_ipv6();
        if let Some(ip) = config.advertise_ips.iter().find(|ip| ip.is_ipv6() && !v6) {
            return Err(SfuError::Config(format!(
                "{ip} is an IPv6 address but the media sockets bind to IPv4 {}: bind to :: \
                 (IPv4 and IPv6) or to an IPv6 address",
                config.bind_ip
            )));
        }
        if !config.bind_ip.is_unspecified()
            && let Some(ip) = config.advertise_ips.iter().find(|ip| ip.is_ipv4() && v6)
        {
            return Err(SfuError::Config(format!(
                "{ip} is an IPv4 address but the media sockets bind to IPv6 {}: bind to :: \
                 for both",
                config.bind_ip
            )));
        }
        return Ok(config.advertise_ips.clone());
    }
    if config.bind_ip.is_unspecified() {
        return Err(SfuError::Config(
            "the media socket is bound to all interfaces: give the address clients should \
             reach (--advertise-ip)"
                .into(),
        ));
    }
    Ok(vec![config.bind_ip])
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, SfuError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let map = |source| SfuError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(map)?;
    if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false).map_err(map)?;
    }
    // A restarted server takes its port back while old connections linger in TIME_WAIT.
    let _ = socket.set_reuse_address(true);
    socket.bind(&addr.into()).map_err(map)?;
    socket.listen(1024).map_err(map)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<UdpSocket, SfuError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let map = |source| SfuError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(map)?;
    if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        // `::` serves IPv4 (as mapped addresses) and IPv6 alike.
        socket.set_only_v6(false).map_err(map)?;
    }
    // Larger buffers absorb bursts (a keyframe to many subscribers); the OS may cap them.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into()).map_err(map)?;
    Ok(socket.into())
}

/// Media sections an offer or answer may have. A browser publishing a camera, a microphone
/// and a screen share with its audio has four; a subscriber's answer has one per track it
/// receives, which the room's limits bound.
pub(crate) const MAX_MEDIA_SECTIONS: usize = 256;

/// Checks the size of a client's SDP before parsing it: a thousand m-lines is an attack, not
/// a call.
fn check_media_sections(sdp: &str) -> Result<(), SfuError> {
    let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
    if sections > MAX_MEDIA_SECTIONS {
        return Err(SfuError::BadSdp(format!(
            "{sections} media sections; at most {MAX_MEDIA_SECTIONS} are accepted"
        )));
    }
    Ok(())
}

/// Header extension ids must be 1-14 (one-byte form, RFC 8285), or up to 255 when the SDP
/// allows the two-byte form (`a=extmap-allow-mixed`); 15 is reserved in the one-byte form.
fn check_extmap_ids(sdp: &str) -> Result<(), SfuError> {
    let two_byte = sdp.lines().any(|l| l.trim_end() == "a=extmap-allow-mixed");
    let max = if two_byte { 255 } else { 14 };
    for line in sdp.lines() {
        let Some(rest) = line.strip_prefix("a=extmap:") else {
            continue;
        };
        let id = rest
            .split(|c: char| c == '/' || c.is_whitespace())
            .next()
            .and_then(|id| id.parse::<u32>().ok());
        match id {
            Some(id) if (1..=max).contains(&id) => {}
            _ => {
                return Err(SfuError::BadSdp(format!(
                    "bad header extension id in \"{line}\": use 1 to {max}"
                )));
            }
        }
    }
    Ok(())
}

/// Parses a client's offer.
pub(crate) fn parse_offer(sdp: &str) -> Result<SdpOffer, SfuError> {
    check_media_sections(sdp)?;
    check_extmap_ids(sdp)?;
    SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))
}

/// Parses a client's answer.
fn parse_answer(sdp: &str) -> Result<SdpAnswer, SfuError> {
    check_media_sections(sdp)?;
    check_extmap_ids(sdp)?;
    SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdns_candidates_are_recognised() {
        assert!(is_mdns_candidate(
            "candidate:1 1 udp 2122260223 3f2a9c1e-7b1d-4c2e-9a55-0d7e6f1b2c3d.local 54321 typ host"
        ));
        assert!(!is_mdns_candidate(
            "candidate:1 1 udp 2122260223 198.18.0.2 54321 typ host"
        ));
        assert!(!is_mdns_candidate("candidate:nope"));
    }
}
