//! The sans-IO heart of a media worker: routes datagrams to peers, runs their timers, passes
//! deliveries between them, and executes the control plane's commands.
//!
//! The driver calls, per turn: any number of `handle_*` calls, then [`WorkerCore::flush`],
//! then sends `out.transmits` and hands `out.remote`/`out.control` to the other workers.
//! RTP written to a subscriber is queued inside its state machine; `flush` gives each such
//! subscriber one timeout so everything written in the turn leaves in one pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use str0m::Input;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::net::{Protocol, Receive};
use tracing::info_span;

use super::local_addrs::LocalAddrs;
use super::timers::TimerQueue;
use str0m::format::Codec;

use crate::codec_order::DEFAULT_VIDEO_ORDER;
use crate::command::Command;
use crate::counters::WorkerCounters;
use crate::demux::Demux;
use crate::error::SfuError;
use crate::event::{CloseReason, EventSink, PeerEvent, PeerSpec};
use crate::ids::{PeerId, TrackId};
use crate::packet::Delivery;
use crate::peer::publisher::Publisher;
use crate::peer::subscriber::Subscriber;
use crate::peer::{Ctx, Peer, PeerInfo, Role, WorkerOutput};
use crate::relay::egress::{MAX_RELAYED_TRACKS, RelayEgress};
use crate::relay::ingress::RelayIngress;
use crate::shared::{DataReceiver, Shared, WorkerShared};

/// Upper bound on delivery passes per flush, so a delivery loop cannot spin a worker.
const MAX_FLUSH_ROUNDS: usize = 8;

/// While a flush or a timer pass goes through the peers, their datagrams are handed to the
/// socket whenever at least this many have gathered, not all at the end: the first
/// subscribers of a fan-out do not wait for the last ones' pacer bursts.
const SEND_EVERY: usize = 32;

/// What a flush or a timer pass hands the gathered datagrams (`core.out.transmits`) to.
pub(crate) type Sender<'a> = dyn FnMut(&mut WorkerCore) + 'a;

/// One worker's peers and routing state.
pub(crate) struct WorkerCore {
    index: usize,
    shared: Arc<Shared>,
    /// This worker's slot in the shared state (counters, load).
    slot: Arc<WorkerShared>,
    /// This worker's candidates: which one a datagram reached, where replies leave from.
    local: LocalAddrs,
    peers: HashMap<PeerId, Peer>,
    demux: Demux,
    timers: TimerQueue,
    /// What this turn produced, for the driver.
    pub(crate) out: WorkerOutput,
    /// Peers that were written to this turn and need a timeout to send it.
    dirty: Vec<PeerId>,
    /// The peers whose timers are due this turn (kept to reuse its allocation).
    due: Vec<PeerId>,
    /// ICE-TCP connections (by remote address) and the peer each one's STUN check named.
    tcp_routes: HashMap<SocketAddr, PeerId>,
    /// Relay egresses (stand-ins for remote nodes), by the id the graph knows them by.
    relays: HashMap<PeerId, RelayEgress>,
    /// Relay ingresses (stand-ins for remote nodes' publishers), by id.
    ingresses: HashMap<PeerId, RelayIngress>,
}

impl WorkerCore {
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared>,
        slot: Arc<WorkerShared>,
        local: LocalAddrs,
    ) -> Self {
        let workers = shared.workers.len();
        Self {
            index,
            slot,
            local,
            peers: HashMap::new(),
            demux: Demux::new(index, shared.ufrags.clone()),
            timers: TimerQueue::default(),
            out: WorkerOutput::new(workers),
            dirty: Vec::new(),
            due: Vec::new(),
            tcp_routes: HashMap::new(),
            relays: HashMap::new(),
            ingresses: HashMap::new(),
            shared,
        }
    }

    fn counters(&self) -> &WorkerCounters {
        &self.slot.counters
    }

    /// Where the worker records its timings.
    pub(crate) fn timings(&self) -> &crate::Timings {
        &self.shared.config.timings
    }

    /// When the worker next has timer work (it may also be woken earlier by input).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Number of peers and learned remote addresses.
    pub(crate) fn sizes(&self) -> (usize, (usize, usize)) {
        (self.peers.len(), self.demux.len())
    }

    /// Runs `f` on a peer with a context, then reschedules (or removes) the peer.
    fn with_peer<R>(
        &mut self,
        id: PeerId,
        now: Instant,
        f: impl FnOnce(&mut Peer, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let peer = self.peers.get_mut(&id)?;
        let mut ctx = Ctx {
            now,
            worker: self.index,
            shared: &self.shared,
            counters: &self.slot.counters,
            out: &mut self.out,
            demux: &mut self.demux,
        };
        let result = f(peer, &mut ctx);
        self.settle(id, now);
        Some(result)
    }

    /// After a peer handled something: remove it if it closed, else schedule its next timeout.
    fn settle(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        match peer.closed.clone() {
            Some(reason) => self.remove_peer(id, reason, now),
            None => self.timers.schedule(id, peer.deadline()),
        }
    }

    /// Runs `f` on a relay ingress with a context, then schedules its next timeout.
    fn with_ingress<R>(
        &mut self,
        id: PeerId,
        now: Instant,
        f: impl FnOnce(&mut RelayIngress, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let ingress = self.ingresses.get_mut(&id)?;
        let mut ctx = Ctx {
            now,
            worker: self.index,
            shared: &self.shared,
            counters: &self.slot.counters,
            out: &mut self.out,
            demux: &mut self.demux,
        };
        let result = f(ingress, &mut ctx);
        match ingress.deadline() {
            Some(at) => self.timers.schedule(id, at),
            None => self.timers.remove(id),
        }
        Some(result)
    }

    /// The local address replies from `candidate` must leave from (for a socket bound to
    /// every address).
    pub(crate) fn source_ip(&self, candidate: SocketAddr) -> Option<std::net::IpAddr> {
        self.local.source_ip(candidate)
    }

    /// One datagram from the socket, sent to `dst_ip` (when the socket reports it).
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        dst_ip: Option<std::net::IpAddr>,
        data: &[u8],
    ) {
        let counters = self.counters();
        WorkerCounters::add(&counters.datagrams_received, 1);
        WorkerCounters::add(&counters.bytes_received, data.len() as u64);
        let Some(id) = self.demux.route(source, data) else {
            WorkerCounters::add(&counters.dropped_unroutable, 1);
            tracing::trace!(
                %source,
                stun = crate::stun::is_stun(data),
                ufrag = crate::stun::local_ufrag(data).unwrap_or("-"),
                len = data.len(),
                "unroutable datagram"
            );
            return;
        };
        let reached = self.local.candidate_for(dst_ip);
        if self.feed(now, id, Protocol::Udp, source, reached.candidate, data) {
            // Only what the peer accepted says where its replies must leave from.
            self.local.confirm(reached);
        }
    }

    /// One frame from an ICE-TCP connection (`local`: our candidate it reached). A STUN
    /// check binds the connection to the peer it names; everything else on that connection
    /// goes to that peer, still gated by its state machine's `accepts`.
    pub(crate) fn handle_tcp_frame(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) {
        let counters = &self.slot.counters;
        WorkerCounters::add(&counters.datagrams_received, 1);
        WorkerCounters::add(&counters.bytes_received, data.len() as u64);
        let stun = crate::stun::is_stun(data);
        let id = if stun {
            self.demux.route_stun(data)
        } else {
            self.tcp_routes.get(&remote).copied()
        };
        let Some(id) = id else {
            WorkerCounters::add(&counters.dropped_unroutable, 1);
            return;
        };
        if self.feed(now, id, Protocol::Tcp, remote, local, data) && stun {
            self.tcp_routes.insert(remote, id);
        }
    }

    /// Gives a packet to peer `id` if its state machine accepts it. Returns whether it did.
    fn feed(
        &mut self,
        now: Instant,
        id: PeerId,
        proto: Protocol,
        remote: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) -> bool {
        let counters = &self.slot.counters;
        let Ok(input) = Receive::new(proto, remote, local, data).map(|r| Input::Receive(now, r))
        else {
            WorkerCounters::add(&counters.dropped_malformed, 1);
            return false;
        };
        if !self.peers.get(&id).is_some_and(|p| p.rtc.accepts(&input)) {
            WorkerCounters::add(&counters.dropped_rejected, 1);
            return false;
        }
        self.with_peer(id, now, |peer, ctx| peer.handle_input(input, ctx));
        self.run_local(now);
        true
    }

    /// An ICE-TCP connection closed.
    pub(crate) fn forget_tcp(&mut self, remote: SocketAddr) {
        self.tcp_routes.remove(&remote);
    }

    /// Deliveries from other workers.
    pub(crate) fn handle_deliveries(&mut self, now: Instant, batch: Vec<Delivery>) {
        for delivery in batch {
            self.deliver(now, delivery);
        }
        self.run_local(now);
    }

    fn deliver(&mut self, now: Instant, delivery: Delivery) {
        let to = delivery.to();
        let writes_media = matches!(
            delivery,
            Delivery::Rtp { .. } | Delivery::Replay { .. } | Delivery::Data { .. }
        );
        let bounce = delivery.bounce();
        if !self.peers.contains_key(&to) {
            if let Some(relay) = self.relays.get_mut(&to) {
                relay.handle_delivery(delivery, &self.slot.counters);
                return;
            }
            if self.ingresses.contains_key(&to) {
                self.with_ingress(to, now, |ingress, ctx| {
                    ingress.handle_delivery(delivery, ctx);
                });
                return;
            }
        }
        if self
            .with_peer(to, now, |peer, ctx| peer.handle_delivery(delivery, ctx))
            .is_none()
        {
            // The peer is gone: a subscriber that wanted one of its tracks hears it ended.
            if let Some((at, answer)) = bounce {
                self.out.route(self.index, at, answer);
            }
            return;
        }
        if writes_media
            && let Some(peer) = self.peers.get_mut(&to)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(to);
        }
    }

    /// Deliveries between peers of this worker (fan-out to local subscribers, keyframe
    /// requests to local publishers).
    fn run_local(&mut self, now: Instant) {
        while let Some(delivery) = self.out.local.pop_front() {
            self.deliver(now, delivery);
        }
    }

    /// Timeouts that are due.
    /// Each due peer runs once per call: one whose next deadline is `now` again (str0m's
    /// estimator can ask for that when it measures a zero round-trip time) waits for the next
    /// turn instead of keeping the worker in this loop.
    pub(crate) fn handle_timers(&mut self, now: Instant, send: &mut Sender<'_>) {
        let mut due = std::mem::take(&mut self.due);
        while let Some(id) = self.timers.pop_due(now) {
            due.push(id);
        }
        for id in due.drain(..) {
            if self.ingresses.contains_key(&id) {
                self.with_ingress(id, now, |ingress, ctx| ingress.on_timeout(ctx));
                continue;
            }
            self.with_peer(id, now, |peer, ctx| peer.handle_timeout(ctx));
            self.send_gathered(send);
        }
        self.due = due;
        self.run_local(now);
    }

    /// Sends what was written to subscribers this turn.
    pub(crate) fn flush(&mut self, now: Instant, send: &mut Sender<'_>) {
        for _ in 0..MAX_FLUSH_ROUNDS {
            if self.dirty.is_empty() {
                break;
            }
            for id in std::mem::take(&mut self.dirty) {
                self.with_peer(id, now, |peer, ctx| {
                    peer.dirty = false;
                    peer.handle_timeout(ctx);
                });
                self.send_gathered(send);
            }
            self.run_local(now);
        }
    }

    /// Hands the datagrams gathered so far to `send` once there are [`SEND_EVERY`].
    fn send_gathered(&mut self, send: &mut Sender<'_>) {
        if self.out.transmits.len() >= SEND_EVERY {
            send(self);
        }
    }

    /// Closes every peer (the media core is shutting down).
    pub(crate) fn shutdown(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove_peer(id, CloseReason::Shutdown, now);
        }
        let relays: Vec<PeerId> = self.relays.keys().copied().collect();
        for id in relays {
            self.remove_relay(id, now);
        }
        let ingresses: Vec<PeerId> = self.ingresses.keys().copied().collect();
        for id in ingresses {
            self.remove_ingress(id, now);
        }
    }

    /// The worker failed (`why`): closes every peer, as cleanly as the state allows, so that
    /// their rooms are told and the shared state (graph, directory, ufrags) forgets them.
    pub(crate) fn fail_all(&mut self, now: Instant, why: &str) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        let reason = CloseReason::Failed(format!("its media worker {why}"));
        for id in ids {
            let events = self.peers.get(&id).map(|p| p.info.events.clone());
            let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.remove_peer(id, reason.clone(), now);
            }));
            if closed.is_err() {
                // The peer's own state is broken: tell its room, forget it in the directory.
                self.peers.remove(&id);
                if let Some(events) = events {
                    let _ = events.send(PeerEvent::Closed {
                        peer: id,
                        reason: reason.clone(),
                    });
                }
                if self.shared.peers.remove(&id).is_some() {
                    self.slot.load.fetch_sub(1, Ordering::Relaxed);
                    WorkerCounters::sub(&self.slot.counters.peers, 1);
                }
            }
        }
    }

    fn remove_peer(&mut self, id: PeerId, reason: CloseReason, now: Instant) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        let mut ctx = Ctx {
            now,
            worker: self.index,
            shared: &self.shared,
            counters: &self.slot.counters,
            out: &mut self.out,
            demux: &mut self.demux,
        };
        peer.teardown(reason, &mut ctx);
        self.tcp_routes.retain(|_, p| *p != id);
        self.timers.remove(id);
        self.shared.peers.remove(&id);
        self.slot.load.fetch_sub(1, Ordering::Relaxed);
        WorkerCounters::sub(&self.slot.counters.peers, 1);
        self.run_local(now);
    }

    fn insert_peer(
        &mut self,
        id: PeerId,
        spec: PeerSpec,
        events: EventSink,
        role: Role,
        video_codecs: &[Codec],
        now: Instant,
    ) -> Result<(), SfuError> {
        let role_name = match role {
            Role::Publisher(_) => "publish",
            Role::Subscriber(_) => "subscribe",
        };
        let span = info_span!("peer", id = %id, participant = %spec.participant, role = role_name);
        let info = PeerInfo {
            id,
            spec,
            events,
            span,
        };
        let peer = Peer::new(info, role, &self.shared, self.index, video_codecs, now)?;
        self.demux.add_peer(peer.ufrag.clone(), id);
        self.peers.insert(id, peer);
        WorkerCounters::add(&self.counters().peers, 1);
        Ok(())
    }

    /// Forgets a peer that failed to start, without telling anyone.
    fn abandon(&mut self, id: PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.info.events = tokio::sync::mpsc::unbounded_channel().0;
        }
        self.remove_peer(id, CloseReason::Removed, now);
    }

    /// A command from the control plane.
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::AddPublisher {
                peer,
                spec,
                offer,
                video_codecs,
                events,
                reply,
            } => {
                let role = Role::Publisher(Publisher::new());
                let result = self
                    .insert_peer(peer, spec, events, role, &video_codecs, now)
                    .and_then(|()| self.accept_offer(peer, *offer, now));
                if result.is_err() {
                    self.abandon(peer, now);
                }
                let _ = reply.send(result);
            }
            Command::AddSubscriber {
                peer,
                spec,
                tracks,
                events,
                reply,
            } => {
                let room = spec.room;
                let member = DataReceiver {
                    at: crate::graph::PeerLocation {
                        worker: self.index,
                        peer,
                    },
                    participant: spec.participant.clone(),
                };
                let result = self
                    .insert_peer(
                        peer,
                        spec,
                        events,
                        Role::Subscriber(Box::new(Subscriber::new())),
                        &DEFAULT_VIDEO_ORDER,
                        now,
                    )
                    .and_then(|()| match self.shared.rooms.get_mut(&room) {
                        Some(mut members) => {
                            members.data_receivers.push(member);
                            Ok(())
                        }
                        None => Err(SfuError::UnknownRoom(room)),
                    })
                    .map(|()| {
                        self.with_peer(peer, now, |p, ctx| {
                            if let Role::Subscriber(s) = &mut p.role {
                                for track in tracks {
                                    // A track unpublished meanwhile is simply skipped.
                                    let _ = s.subscribe(track, &p.info, ctx);
                                }
                                s.maybe_offer(&mut p.rtc, &p.info);
                            }
                            p.drain(ctx);
                        });
                    });
                if result.is_err() {
                    self.abandon(peer, now);
                }
                let _ = reply.send(result);
            }
            Command::AddOfferingSubscriber {
                peer,
                spec,
                offer,
                tracks,
                events,
                reply,
            } => {
                let role = Role::Subscriber(Box::new(Subscriber::client_offered()));
                let result = self
                    .insert_peer(peer, spec, events, role, &DEFAULT_VIDEO_ORDER, now)
                    .and_then(|()| {
                        self.with_peer(peer, now, |p, ctx| {
                            let answer = p.rtc.sdp_api().accept_offer(*offer);
                            // Drained before binding: its m-lines arrive as events.
                            p.drain(ctx);
                            let answer = answer.map_err(|e| SfuError::BadSdp(e.to_string()))?;
                            let answer = answer.to_sdp_string();
                            if let Role::Subscriber(s) = &mut p.role {
                                s.set_slots(&answer);
                                for track in tracks {
                                    let _ = s.subscribe(track, &p.info, ctx);
                                }
                            }
                            p.drain(ctx);
                            Ok(answer)
                        })
                        .unwrap_or(Err(SfuError::UnknownPeer(peer)))
                    });
                self.run_local(now);
                if result.is_err() {
                    self.abandon(peer, now);
                }
                let _ = reply.send(result);
            }
            Command::PublisherOffer { peer, offer, reply } => {
                let _ = reply.send(self.accept_offer(peer, *offer, now));
            }
            Command::SubscriberAnswer {
                peer,
                answer,
                reply,
            } => {
                let _ = reply.send(self.accept_answer(peer, *answer, now));
            }
            Command::Subscribe { peer, track, reply } => {
                let result = self.on_subscriber(peer, now, |s, rtc, info, ctx| {
                    s.subscribe(track, info, ctx)?;
                    s.maybe_offer(rtc, info);
                    Ok(())
                });
                let _ = reply.send(result);
            }
            Command::SubscribeMany {
                peers,
                track,
                reply,
            } => {
                let failed = peers
                    .into_iter()
                    .filter_map(|peer| {
                        self.on_subscriber(peer, now, |s, rtc, info, ctx| {
                            s.subscribe(track, info, ctx)?;
                            s.maybe_offer(rtc, info);
                            Ok(())
                        })
                        .err()
                        .map(|e| (peer, e))
                    })
                    .collect();
                let _ = reply.send(failed);
            }
            Command::Unsubscribe { peer, track, reply } => {
                let result = self.on_subscriber(peer, now, |s, rtc, info, ctx| {
                    s.unsubscribe(track, ctx);
                    s.maybe_offer(rtc, info);
                    Ok(())
                });
                let _ = reply.send(result);
            }
            Command::RestartIce { peer, reply } => {
                let result = self.on_subscriber(peer, now, |s, rtc, info, _| {
                    s.restart_ice(info)?;
                    s.maybe_offer(rtc, info);
                    Ok(())
                });
                let _ = reply.send(result);
            }
            Command::SetVideoPreference {
                peer,
                track,
                preference,
                reply,
            } => {
                let result = self.on_subscriber(peer, now, |s, _, _, ctx| {
                    s.set_preference(track, preference, ctx)
                });
                let _ = reply.send(result);
            }
            Command::SetTrackMuted {
                track,
                muted,
                reply,
            } => {
                let result = match self.ingress_of(track) {
                    // A relayed track: muted at this node's ingress.
                    Some(id) => self
                        .with_ingress(id, now, |ingress, ctx| ingress.set_muted(track, muted, ctx))
                        .flatten()
                        .ok_or(SfuError::UnknownTrack(track)),
                    None => self.on_publisher_of(track, now, |peer, ctx| {
                        peer.set_track_muted(track, muted, ctx)
                    }),
                };
                let _ = reply.send(result);
            }
            Command::TrackCodecs { track, reply } => {
                let relayed = self
                    .ingress_of(track)
                    .and_then(|id| self.ingresses.get(&id))
                    .and_then(|ingress| ingress.codecs(track));
                let result = match relayed {
                    Some(codecs) => Ok(codecs),
                    None => self.on_publisher_of(track, now, |peer, _| match &peer.role {
                        Role::Publisher(p) => p.codecs(&peer.rtc, track),
                        Role::Subscriber(_) => None,
                    }),
                };
                let _ = reply.send(result);
            }
            Command::TrackCounters { track, reply } => {
                let result = self.on_publisher_of(track, now, |peer, _| match &peer.role {
                    Role::Publisher(p) => p.counters(track),
                    Role::Subscriber(_) => None,
                });
                let _ = reply.send(result);
            }
            Command::Tracks { reply } => {
                let tracks = self
                    .peers
                    .values()
                    .filter_map(|peer| match &peer.role {
                        Role::Publisher(p) => Some(p.snapshot()),
                        Role::Subscriber(_) => None,
                    })
                    .flatten()
                    .collect();
                let _ = reply.send(Ok(tracks));
            }
            Command::Crash => panic!("a crash asked for by a test"),
            Command::RemoteCandidate { peer, candidate } => {
                self.with_peer(peer, now, |p, ctx| p.add_remote_candidate(*candidate, ctx));
            }
            Command::RemovePeer { peer, reply } => {
                let result = if self.peers.contains_key(&peer) {
                    self.remove_peer(peer, CloseReason::Removed, now);
                    Ok(())
                } else {
                    Err(SfuError::UnknownPeer(peer))
                };
                let _ = reply.send(result);
            }
            Command::AddRelayEgress {
                id,
                room,
                packets,
                events,
                carries_data,
                reply,
            } => {
                self.relays
                    .insert(id, RelayEgress::new(room, packets, events));
                if carries_data {
                    self.add_data_receiver(room, id);
                }
                let _ = reply.send(Ok(()));
            }
            Command::RelayLayers {
                id,
                track,
                layers,
                reply,
            } => {
                let _ = reply.send(self.relay_layers(id, track, layers, now));
            }
            Command::RelayKeyframe { id, track, layer } => {
                let relayed = self
                    .relays
                    .get(&id)
                    .is_some_and(|r| r.tracks.contains_key(&track));
                if let (true, Some(route)) = (relayed, self.shared.graph.get(track)) {
                    let request = Delivery::KeyframeRequest {
                        to: route.publisher.peer,
                        track,
                        layer,
                        urgent: false,
                    };
                    self.out.route(self.index, route.publisher, request);
                    self.run_local(now);
                }
            }
            Command::RelayNack {
                id,
                track,
                layer,
                seqs,
            } => {
                if let Some(relay) = self.relays.get_mut(&id) {
                    relay.repair(track, layer, &seqs, &self.slot.counters);
                }
            }
            Command::RemoveRelayEgress { id, reply } => {
                let result = if self.relays.contains_key(&id) {
                    self.remove_relay(id, now);
                    Ok(())
                } else {
                    Err(SfuError::UnknownPeer(id))
                };
                let _ = reply.send(result);
            }
            Command::AddRelayIngress {
                id,
                spec,
                events,
                requests,
                carries_data,
                reply,
            } => {
                let span = info_span!("relay", id = %id, room = %spec.room);
                let info = PeerInfo {
                    id,
                    spec,
                    events,
                    span,
                };
                let room = info.spec.room;
                self.ingresses.insert(id, RelayIngress::new(info, requests));
                if carries_data {
                    self.add_data_receiver(room, id);
                }
                let _ = reply.send(Ok(()));
            }
            Command::RelayPublish {
                id,
                participant,
                kind,
                layers,
                codecs,
                reply,
            } => {
                let result = self
                    .with_ingress(id, now, |ingress, ctx| {
                        ingress.publish(participant, kind, layers, &codecs, ctx)
                    })
                    .unwrap_or(Err(SfuError::UnknownPeer(id)));
                let _ = reply.send(result);
            }
            Command::RelayUnpublish { id, track } => {
                self.with_ingress(id, now, |ingress, ctx| ingress.unpublish(track, ctx));
                self.run_local(now);
            }
            Command::RelayPackets { id, packets } => {
                let found = self.with_ingress(id, now, |ingress, ctx| {
                    for (track, bytes) in &packets {
                        ingress.on_packet(*track, bytes, ctx);
                    }
                });
                if found.is_none() {
                    let refused = packets.len() as u64;
                    WorkerCounters::add(&self.counters().relay_packets_refused, refused);
                }
                self.run_local(now);
            }
            Command::RelayData { id, binary, bytes } => {
                let room = match (self.relays.get(&id), self.ingresses.get(&id)) {
                    (Some(egress), _) => Some(egress.room),
                    (None, Some(ingress)) => Some(ingress.info.spec.room),
                    (None, None) => None,
                };
                let receivers = room
                    .and_then(|room| self.shared.rooms.get(&room))
                    .map(|members| members.data_receivers.clone())
                    .unwrap_or_default();
                let message = Arc::new(crate::packet::DataMessage { binary, bytes });
                for r in receivers.iter().filter(|r| r.at.peer != id) {
                    let delivery = Delivery::Data {
                        to: r.at.peer,
                        message: message.clone(),
                    };
                    self.out.route(self.index, r.at, delivery);
                }
                WorkerCounters::add(&self.counters().data_relayed, 1);
                self.run_local(now);
            }
            Command::RemoveRelayIngress { id, reply } => {
                let result = if self.ingresses.contains_key(&id) {
                    self.remove_ingress(id, now);
                    Ok(())
                } else {
                    Err(SfuError::UnknownPeer(id))
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Removes a relay ingress: its tracks are unpublished and their subscribers told.
    fn remove_ingress(&mut self, id: PeerId, now: Instant) {
        if let Some(room) = self.ingresses.get(&id).map(|i| i.info.spec.room) {
            self.remove_data_receiver(room, id);
        }
        self.with_ingress(id, now, |ingress, ctx| ingress.teardown(ctx));
        self.ingresses.remove(&id);
        self.timers.remove(id);
        self.shared.peers.remove(&id);
        self.slot.load.fetch_sub(1, Ordering::Relaxed);
        self.run_local(now);
    }

    /// Sets the layers of `track` that relay egress `id` carries (0: none, it stops).
    fn relay_layers(
        &mut self,
        id: PeerId,
        track: TrackId,
        layers: u32,
        now: Instant,
    ) -> Result<(), SfuError> {
        let relay = self.relays.get_mut(&id).ok_or(SfuError::UnknownPeer(id))?;
        let route = self
            .shared
            .graph
            .get(track)
            .filter(|r| r.room == relay.room)
            .ok_or(SfuError::UnknownTrack(track))?;
        let from = crate::graph::PeerLocation {
            worker: self.index,
            peer: id,
        };
        let delivery = if layers == 0 {
            if !relay.tracks.contains_key(&track) {
                return Ok(());
            }
            relay.forget(track);
            Delivery::Leave {
                to: route.publisher.peer,
                track,
                from,
            }
        } else {
            if !relay.tracks.contains_key(&track) && relay.tracks.len() >= MAX_RELAYED_TRACKS {
                return Err(SfuError::Config(format!(
                    "a relay carries at most {MAX_RELAYED_TRACKS} tracks"
                )));
            }
            relay.tracks.insert(track, layers);
            Delivery::Want {
                to: route.publisher.peer,
                track,
                from,
                layers: route.needed_layers(layers),
                demand: layers,
            }
        };
        self.out.route(self.index, route.publisher, delivery);
        self.run_local(now);
        Ok(())
    }

    /// Adds relay endpoint `id` to `room`'s receivers of data messages (it passes them to
    /// the other node).
    fn add_data_receiver(&mut self, room: crate::ids::RoomId, id: PeerId) {
        if let Some(mut members) = self.shared.rooms.get_mut(&room) {
            members.data_receivers.push(crate::shared::DataReceiver {
                at: crate::graph::PeerLocation {
                    worker: self.index,
                    peer: id,
                },
                participant: Arc::from(""),
            });
        }
    }

    /// Takes relay endpoint `id` out of `room`'s receivers of data messages.
    fn remove_data_receiver(&mut self, room: crate::ids::RoomId, id: PeerId) {
        if let Some(mut members) = self.shared.rooms.get_mut(&room) {
            members.data_receivers.retain(|r| r.at.peer != id);
        }
    }

    /// Removes a relay egress: each track it carried hears it leave.
    fn remove_relay(&mut self, id: PeerId, now: Instant) {
        let Some(relay) = self.relays.remove(&id) else {
            return;
        };
        self.remove_data_receiver(relay.room, id);
        let from = crate::graph::PeerLocation {
            worker: self.index,
            peer: id,
        };
        for track in relay.tracks.keys() {
            if let Some(route) = self.shared.graph.get(*track) {
                let leave = Delivery::Leave {
                    to: route.publisher.peer,
                    track: *track,
                    from,
                };
                self.out.route(self.index, route.publisher, leave);
            }
        }
        self.shared.peers.remove(&id);
        self.slot.load.fetch_sub(1, Ordering::Relaxed);
        self.run_local(now);
    }

    fn accept_offer(
        &mut self,
        id: PeerId,
        offer: SdpOffer,
        now: Instant,
    ) -> Result<String, SfuError> {
        self.with_peer(id, now, |peer, ctx| {
            let offers = match &peer.role {
                Role::Publisher(_) => true,
                Role::Subscriber(s) => s.is_client_offered(),
            };
            if !offers {
                return Err(SfuError::WrongPeerKind(
                    id,
                    "this peer's offers come from the server",
                ));
            }
            let answer = peer.rtc.sdp_api().accept_offer(offer);
            // Drained first: a new m-line's track exists before it is marked.
            peer.drain(ctx);
            peer.sync_ufrag(ctx);
            let sdp = answer
                .map(|a| a.to_sdp_string())
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            let Role::Publisher(publisher) = &mut peer.role else {
                return Ok(sdp);
            };
            let (sdp, kept) =
                crate::dependency_descriptor::offer_only_where(&sdp, |s| s.reads_descriptor());
            publisher.mark_descriptor_mids(kept);
            Ok(sdp)
        })
        .unwrap_or(Err(SfuError::UnknownPeer(id)))
    }

    fn accept_answer(
        &mut self,
        id: PeerId,
        answer: SdpAnswer,
        now: Instant,
    ) -> Result<(), SfuError> {
        let result = self.on_subscriber(id, now, |s, rtc, info, ctx| {
            let result = s.accept_answer(rtc, info, answer, ctx);
            s.maybe_offer(rtc, info);
            result
        });
        // An answer to an ICE restart gives the peer new local credentials.
        self.with_peer(id, now, |peer, ctx| peer.sync_ufrag(ctx));
        result
    }

    /// Runs `f` on the publisher of `track` (a peer of this worker).
    /// The relay ingress that publishes `track` here, if it is a relayed track.
    fn ingress_of(&self, track: TrackId) -> Option<PeerId> {
        let peer = self.shared.graph.get(track)?.publisher.peer;
        self.ingresses.contains_key(&peer).then_some(peer)
    }

    fn on_publisher_of<R>(
        &mut self,
        track: TrackId,
        now: Instant,
        f: impl FnOnce(&mut Peer, &mut Ctx<'_>) -> Option<R>,
    ) -> Result<R, SfuError> {
        let route = self
            .shared
            .graph
            .get(track)
            .ok_or(SfuError::UnknownTrack(track))?;
        self.with_peer(route.publisher.peer, now, f)
            .flatten()
            .ok_or(SfuError::UnknownTrack(track))
    }

    /// Runs `f` on a subscriber peer's state, then drains its state machine.
    fn on_subscriber(
        &mut self,
        id: PeerId,
        now: Instant,
        f: impl FnOnce(
            &mut Subscriber,
            &mut str0m::Rtc,
            &PeerInfo,
            &mut Ctx<'_>,
        ) -> Result<(), SfuError>,
    ) -> Result<(), SfuError> {
        let result = self
            .with_peer(id, now, |peer, ctx| {
                let Role::Subscriber(s) = &mut peer.role else {
                    return Err(SfuError::WrongPeerKind(id, "not a subscriber"));
                };
                let result = f(s, &mut peer.rtc, &peer.info, ctx);
                peer.drain(ctx);
                result
            })
            .unwrap_or(Err(SfuError::UnknownPeer(id)));
        self.run_local(now);
        result
    }
}
