//! One peer: a str0m `Rtc` (ICE-lite, RTP mode) and what it does with its events, as a
//! publisher (media comes in and is fanned out) or a subscriber (media goes out).
//!
//! Sans-IO: every method takes the time and a [`Ctx`] to put its output in (datagrams to send,
//! deliveries for other peers); only the worker driver touches sockets and clocks. Everything a
//! peer produces goes through [`Peer::drain`], which honours str0m's rule that each mutation is
//! followed by polling the state machine until it returns a timeout.

pub(crate) mod publisher;
pub(crate) mod subscriber;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::net::{TcpType, Transmit};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcError};
use tracing::{Span, debug, info, warn};

use crate::counters::WorkerCounters;
use crate::demux::Demux;
use crate::event::{CloseReason, EventSink, PeerEvent, PeerSpec, PeerStats, TrackCounters};
use crate::graph::PeerLocation;
use crate::ids::{PeerId, TrackId};
use crate::packet::Delivery;
use crate::shared::Shared;
use crate::worker::latency::LatencySampler;

use self::publisher::Publisher;
use self::subscriber::Subscriber;

/// At most this many remote addresses are remembered per peer (ICE may try several).
const MAX_REMOTE_ADDRS: usize = 8;
/// How long str0m's ICE-lite agent goes without a connectivity check before it reports the
/// connection disconnected.
const ICE_LITE_SILENCE: Duration = Duration::from_secs(15);
/// Trickled remote candidates a peer accepts per ICE generation (a browser trickles a handful
/// per network interface); more are dropped.
const MAX_REMOTE_CANDIDATES: usize = 32;
/// How often a subscriber's state machine reports its raw egress bandwidth estimate (in its
/// statistics). str0m's `EgressBitrateEstimate` event carries a three-second average, which
/// trails a congested link by seconds; the layer allocator reacts to the raw estimate, the
/// one str0m's own pacer follows.
pub(crate) const ESTIMATE_INTERVAL: Duration = Duration::from_millis(250);

/// str0m's egress pacer releases one packet per timeout and asks to be woken again this long
/// after the time it was last given (so that time moves between packets). A drain runs such
/// a timeout at once instead of leaving it to the worker's next turn, which would let a
/// subscriber with many streams (an audio room: one per speaker) send fewer packets per second
/// than it is written when the worker is busy, its queue growing without end (measured).
const PACER_STEP: Duration = Duration::from_micros(1);

/// At most this many pacer steps per drain, so one subscriber's backlog cannot hold the worker
/// from the others; the rest goes out at its next timeout. (Its str0m clock runs ahead of the
/// worker's by at most this many [`PACER_STEP`]s.)
const PACER_STEPS_PER_DRAIN: u32 = 256;

/// Output of a worker's peers, collected during one turn of the worker loop.
#[derive(Debug)]
pub(crate) struct WorkerOutput {
    /// Datagrams to send.
    pub(crate) transmits: Vec<Transmit>,
    /// Deliveries for peers on this worker.
    pub(crate) local: VecDeque<Delivery>,
    /// Droppable deliveries for peers on other workers, by worker index.
    pub(crate) remote: Vec<Vec<Delivery>>,
    /// Deliveries that must reach peers on other workers.
    pub(crate) control: Vec<(usize, Delivery)>,
    /// Forwarded packets sampled for their latency, awaited at the socket.
    pub(crate) latency: LatencySampler,
}

impl WorkerOutput {
    /// Queues a delivery from worker `here` for the peer at `to`: handled this turn if it is
    /// a peer of this worker, else on the reliable control lane or in the media batch.
    pub(crate) fn route(&mut self, here: usize, to: PeerLocation, delivery: Delivery) {
        if to.worker == here {
            self.local.push_back(delivery);
        } else if delivery.is_control() {
            self.control.push((to.worker, delivery));
        } else if let Some(batch) = self.remote.get_mut(to.worker) {
            batch.push(delivery);
        }
    }

    pub(crate) fn new(workers: usize) -> Self {
        Self {
            transmits: Vec::new(),
            local: VecDeque::new(),
            remote: (0..workers).map(|_| Vec::new()).collect(),
            control: Vec::new(),
            latency: LatencySampler::default(),
        }
    }
}

/// What a peer needs from its worker while it handles something.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) worker: usize,
    pub(crate) shared: &'a Shared,
    /// This worker's counters.
    pub(crate) counters: &'a WorkerCounters,
    pub(crate) out: &'a mut WorkerOutput,
    pub(crate) demux: &'a mut Demux,
}

impl Ctx<'_> {
    pub(crate) fn counters(&self) -> &WorkerCounters {
        self.counters
    }

    /// Queues a delivery for the peer at `to`.
    pub(crate) fn deliver(&mut self, to: PeerLocation, delivery: Delivery) {
        self.out.route(self.worker, to, delivery);
    }

    /// The location of a peer on this worker.
    pub(crate) fn here(&self, peer: PeerId) -> PeerLocation {
        PeerLocation {
            worker: self.worker,
            peer,
        }
    }
}

/// Who a peer is, kept apart from its state machine so both can be borrowed at once.
pub(crate) struct PeerInfo {
    pub(crate) id: PeerId,
    pub(crate) spec: PeerSpec,
    pub(crate) events: EventSink,
    pub(crate) span: Span,
}

impl PeerInfo {
    /// Sends an event to the control plane (ignored if it stopped listening).
    pub(crate) fn emit(&self, event: PeerEvent) {
        let _ = self.events.send(event);
    }
}

/// A publisher or a subscriber.
pub(crate) enum Role {
    Publisher(Publisher),
    Subscriber(Box<Subscriber>),
}

/// One peer connection.
pub(crate) struct Peer {
    pub(crate) info: PeerInfo,
    pub(crate) rtc: Rtc,
    pub(crate) role: Role,
    /// Local ICE ufrag (the demux key before ICE succeeds).
    pub(crate) ufrag: String,
    /// Remote addresses this peer has sent to (the demux keys after ICE).
    pub(crate) addrs: Vec<SocketAddr>,
    last_destination: Option<SocketAddr>,
    rtc_deadline: Instant,
    /// Set once the peer must be removed.
    pub(crate) closed: Option<CloseReason>,
    /// When the peer was created.
    created: Instant,
    /// A new peer's ICE and DTLS must complete by then.
    connect_by: Option<Instant>,
    /// DTLS has completed once (str0m reports `Connected` only once).
    dtls_done: bool,
    /// The peer was connected and its ICE is not now (an ICE restart in progress, or no
    /// connectivity check for [`ICE_LITE_SILENCE`]): it is closed once nothing has been heard
    /// from it for [`ICE_LITE_SILENCE`] plus the connect timeout.
    reconnecting: bool,
    /// When the peer last sent us a datagram.
    last_heard: Instant,
    /// [`crate::SfuConfig::connect_timeout`].
    connect_timeout: Duration,
    /// Remote candidates added since the last ICE restart.
    remote_candidates: usize,
    /// Written to during this worker turn; the worker flushes it at the end of the turn.
    pub(crate) dirty: bool,
    /// Latest egress bandwidth estimate (bits per second), as counted in the worker's gauge.
    egress_estimate: u64,
    /// How often [`PeerEvent::Stats`] goes to the control plane, and when it is next due
    /// (the state machine may report more often, for the allocator).
    stats_report: Option<(Duration, Instant)>,
}

impl Peer {
    /// Builds a peer's state machine: ICE-lite, RTP mode, the shared certificate, every codec
    /// we forward (video in `video_codecs` order, which becomes the order of its SDP answers),
    /// and this worker's host candidates.
    pub(crate) fn new(
        info: PeerInfo,
        role: Role,
        shared: &Shared,
        worker: usize,
        video_codecs: &[Codec],
        now: Instant,
    ) -> Result<Self, RtcError> {
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let estimates = matches!(role, Role::Subscriber(_)) && shared.config.congestion_control;
        let stats_interval = match shared.config.stats_interval {
            Some(report) if estimates => Some(report.min(ESTIMATE_INTERVAL)),
            None if estimates => Some(ESTIMATE_INTERVAL),
            report => report,
        };
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(shared.cert.clone())
            .set_local_ice_credentials(creds)
            .clear_codecs()
            .set_stats_interval(stats_interval);
        config = crate::audio_codecs::enable_audio(config, shared.config.red_audio).set_extension(
            crate::dependency_descriptor::EXTENSION_ID,
            crate::dependency_descriptor::extension(),
        );
        for codec in video_codecs {
            config = match codec {
                Codec::Vp8 => config.enable_vp8(true),
                Codec::H264 => config.enable_h264(true),
                Codec::Vp9 => config.enable_vp9(true),
                Codec::Av1 => config.enable_av1(true),
                _ => config,
            };
        }
        if estimates {
            // Transport-wide congestion control: the estimate the layer allocator works from.
            let initial = shared.config.initial_egress_bitrate;
            config = config.enable_bwe(Some(str0m::bwe::Bitrate::bps(initial)));
        }
        let mut rtc = config.build(now);
        for addr in shared
            .workers
            .get(worker)
            .map(|w| &w.candidates[..])
            .unwrap_or_default()
        {
            let candidate = Candidate::host(*addr, "udp")?;
            rtc.add_local_candidate(candidate);
        }
        for addr in &shared.tcp_candidates {
            let candidate = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build()?;
            rtc.add_local_candidate(candidate);
        }
        Ok(Self {
            info,
            rtc,
            role,
            ufrag,
            addrs: Vec::new(),
            last_destination: None,
            rtc_deadline: now,
            closed: None,
            created: now,
            connect_by: Some(now + shared.config.connect_timeout),
            dtls_done: false,
            reconnecting: false,
            last_heard: now,
            connect_timeout: shared.config.connect_timeout,
            remote_candidates: 0,
            dirty: false,
            egress_estimate: 0,
            stats_report: shared
                .config
                .stats_interval
                .map(|every| (every, now + every)),
        })
    }

    /// After an SDP exchange: an ICE restart gives the peer new local credentials, so its
    /// new ufrag must route its connectivity checks.
    /// It has [`crate::SfuConfig::connect_timeout`] to connect again.
    pub(crate) fn sync_ufrag(&mut self, ctx: &mut Ctx<'_>) {
        let ufrag = self.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != self.ufrag {
            ctx.demux.remove_peer(self.info.id, &self.ufrag, &[]);
            ctx.demux.add_peer(ufrag.clone(), self.info.id);
            info!("ICE restarted");
            self.ufrag = ufrag;
            self.remote_candidates = 0;
            if self.dtls_done {
                self.reconnecting = true;
            } else {
                self.connect_by = Some(ctx.now + self.connect_timeout);
            }
        }
    }

    /// Adds a trickled remote candidate, up to [`MAX_REMOTE_CANDIDATES`] per ICE generation.
    pub(crate) fn add_remote_candidate(&mut self, candidate: Candidate, ctx: &mut Ctx<'_>) {
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            debug!("too many remote candidates; dropped");
            return;
        }
        self.remote_candidates += 1;
        self.rtc.add_remote_candidate(candidate);
        self.drain(ctx);
    }

    /// When this peer next needs [`Peer::handle_timeout`].
    pub(crate) fn deadline(&self) -> Instant {
        let role = match &self.role {
            Role::Publisher(p) => p.deadline(),
            Role::Subscriber(s) => s.deadline(),
        };
        let deadline = role.map_or(self.rtc_deadline, |r| r.min(self.rtc_deadline));
        self.give_up_at().map_or(deadline, |at| at.min(deadline))
    }

    /// When the peer is closed unless it connects (a new peer) or is heard from again (a
    /// reconnecting one).
    /// (Only one applies: `connect_by` is set before DTLS completes, `reconnecting` after.)
    fn give_up_at(&self) -> Option<Instant> {
        self.connect_by.or_else(|| {
            self.reconnecting
                .then(|| self.last_heard + ICE_LITE_SILENCE + self.connect_timeout)
        })
    }

    /// Feeds a datagram that belongs to this peer.
    pub(crate) fn handle_input(&mut self, input: Input<'_>, ctx: &mut Ctx<'_>) {
        let span = self.info.span.clone();
        let _guard = span.enter();
        self.last_heard = ctx.now;
        if let Err(e) = self.rtc.handle_input(input) {
            self.on_rtc_error(e, ctx);
        }
        self.drain(ctx);
    }

    /// Moves the peer's clock to `ctx.now`: sends what is due, runs timers.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let span = self.info.span.clone();
        let _guard = span.enter();
        if let Err(e) = self.rtc.handle_input(Input::Timeout(ctx.now)) {
            self.on_rtc_error(e, ctx);
        }
        self.drain(ctx);
        let expired = self.give_up_at().is_some_and(|at| at <= ctx.now);
        if expired && self.closed.is_none() {
            if self.dtls_done {
                info!("connectivity did not come back in time; closing");
            } else {
                info!("ICE and DTLS did not complete in time; closing");
            }
            self.closed = Some(CloseReason::ConnectTimeout);
            return;
        }
        let mutated = match &mut self.role {
            Role::Publisher(p) => p.handle_timeout(&mut self.rtc, &self.info, ctx),
            Role::Subscriber(s) => s.handle_timeout(&mut self.rtc, &self.info, ctx),
        };
        if mutated {
            self.drain(ctx);
        }
    }

    /// Handles a delivery from another peer.
    pub(crate) fn handle_delivery(&mut self, delivery: Delivery, ctx: &mut Ctx<'_>) {
        match &mut self.role {
            Role::Publisher(p) => p.handle_delivery(&mut self.rtc, &self.info, delivery, ctx),
            Role::Subscriber(s) => s.handle_delivery(&mut self.rtc, &self.info, delivery, ctx),
        }
        self.drain(ctx);
    }

    /// Mutes or unmutes one of this publisher's tracks (see [`Publisher::set_muted`]).
    /// `None` if this peer does not publish it.
    pub(crate) fn set_track_muted(
        &mut self,
        track: TrackId,
        muted: bool,
        ctx: &mut Ctx<'_>,
    ) -> Option<TrackCounters> {
        let Role::Publisher(p) = &mut self.role else {
            return None;
        };
        let counters = p.set_muted(&mut self.rtc, track, muted, ctx);
        self.drain(ctx);
        counters
    }

    /// Polls the state machine until it only has a timeout left, dispatching what comes out.
    pub(crate) fn drain(&mut self, ctx: &mut Ctx<'_>) {
        // The time last given to the state machine: a pacer step moves it on by PACER_STEP.
        let mut clock = ctx.now;
        let mut steps = 0;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t))
                    if t <= clock + PACER_STEP && steps < PACER_STEPS_PER_DRAIN =>
                {
                    steps += 1;
                    clock = clock.max(t);
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(clock)) {
                        self.on_rtc_error(e, ctx);
                        if self.closed.is_some() {
                            return;
                        }
                    }
                }
                Ok(Output::Timeout(t)) => {
                    self.rtc_deadline = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.note_destination(t.destination, ctx);
                    ctx.out.transmits.push(t);
                }
                Ok(Output::Event(e)) => self.on_event(e, ctx),
                Err(e) => {
                    self.on_rtc_error(e, ctx);
                    if self.closed.is_some() {
                        return;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, ctx: &mut Ctx<'_>) {
        match event {
            Event::Connected => {
                info!("connected");
                let took = ctx.now.saturating_duration_since(self.created);
                ctx.shared.config.timings.connect.record(took.as_secs_f64());
                self.dtls_done = true;
                self.connect_by = None;
                self.reconnecting = false;
                self.info.emit(PeerEvent::Connected { peer: self.info.id });
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if self.dtls_done => {
                if std::mem::take(&mut self.reconnecting) {
                    info!("connectivity is back");
                }
            }
            Event::PeerStats(s) => {
                let estimate = s.bwe_tx.map(|b| b.as_u64());
                self.set_egress_estimate(estimate.unwrap_or(0), ctx);
                if let (Role::Subscriber(sub), Some(estimate)) = (&mut self.role, estimate) {
                    sub.on_estimate(estimate, s.egress_loss_fraction, ctx);
                }
                let Some((every, due)) = self.stats_report else {
                    return;
                };
                if ctx.now < due {
                    return;
                }
                self.stats_report = Some((every, ctx.now + every));
                self.info.emit(PeerEvent::Stats {
                    peer: self.info.id,
                    stats: PeerStats {
                        bytes_received: s.peer_bytes_rx,
                        bytes_sent: s.peer_bytes_tx,
                        media_bytes_received: s.bytes_rx,
                        media_bytes_sent: s.bytes_tx,
                        egress_loss: s.egress_loss_fraction,
                        ingress_loss: s.ingress_loss_fraction,
                        rtt: s.rtt,
                        egress_estimate_bps: s.bwe_tx.map(|b| b.as_u64()),
                    },
                });
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // No connectivity check for 15 s: the network may be down for a while, or the
                // client may be about to restart ICE from another network. It has the connect
                // timeout to come back before the peer is closed.
                if self.dtls_done && !self.reconnecting {
                    info!("lost connectivity; waiting for it to come back or an ICE restart");
                    self.reconnecting = true;
                }
            }
            Event::Closed => {
                if self.closed.is_none() {
                    info!("remote side went away");
                    self.closed = Some(CloseReason::Disconnected);
                }
            }
            other => match &mut self.role {
                Role::Publisher(p) => p.on_event(&mut self.rtc, &self.info, other, ctx),
                Role::Subscriber(s) => s.on_event(&mut self.rtc, other, ctx),
            },
        }
    }

    /// Keeps the worker's gauge of egress estimates up to date.
    fn set_egress_estimate(&mut self, estimate: u64, ctx: &Ctx<'_>) {
        let gauge = &ctx.counters().egress_estimate_bps;
        WorkerCounters::sub(gauge, self.egress_estimate);
        WorkerCounters::add(gauge, estimate);
        self.egress_estimate = estimate;
    }

    /// An address the state machine sends to has passed ICE: route its datagrams here.
    fn note_destination(&mut self, destination: SocketAddr, ctx: &mut Ctx<'_>) {
        if self.last_destination == Some(destination) {
            return;
        }
        self.last_destination = Some(destination);
        if ctx.demux.learn_addr(destination, self.info.id) && !self.addrs.contains(&destination) {
            if self.addrs.len() >= MAX_REMOTE_ADDRS {
                // The oldest address no longer routes here: the routing map holds at most
                // MAX_REMOTE_ADDRS addresses per peer.
                let oldest = self.addrs.remove(0);
                ctx.demux.forget_addr(oldest, self.info.id);
            }
            self.addrs.push(destination);
        }
    }

    fn on_rtc_error(&mut self, e: RtcError, ctx: &mut Ctx<'_>) {
        WorkerCounters::add(&ctx.counters().dropped_malformed, 1);
        if self.rtc.is_alive() {
            debug!(error = %e, "input refused");
        } else if self.closed.is_none() {
            warn!(error = %e, "state machine failed; closing this peer only");
            self.closed = Some(CloseReason::Failed(e.to_string()));
        }
    }

    /// Removes everything this peer put into shared state, says goodbye to the remote side
    /// and tells the control plane. The worker drops the peer afterwards.
    pub(crate) fn teardown(&mut self, reason: CloseReason, ctx: &mut Ctx<'_>) {
        let span = self.info.span.clone();
        let _guard = span.enter();
        match &mut self.role {
            Role::Publisher(p) => p.teardown(&self.info, ctx),
            Role::Subscriber(s) => s.teardown(&self.info, ctx),
        }
        if self.rtc.is_alive() {
            // Best effort: queue RTCP BYE and DTLS close_notify.
            let _ = self.rtc.close();
            self.closed.get_or_insert(reason.clone());
            while let Ok(output) = self.rtc.poll_output() {
                match output {
                    Output::Transmit(t) => ctx.out.transmits.push(t),
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
            }
        }
        ctx.demux
            .remove_peer(self.info.id, &self.ufrag, &self.addrs);
        self.set_egress_estimate(0, ctx);
        info!(?reason, "peer closed");
        self.info.emit(PeerEvent::Closed {
            peer: self.info.id,
            reason,
        });
    }
}
