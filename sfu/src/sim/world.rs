//! A media worker and its clients on one virtual clock, each client behind a simulated path
//! both ways. [`World::run_for`] moves time from one due thing to the next (a datagram
//! arriving, a state machine's timeout, an encoder's frame, the worker's timers) and answers
//! what the control plane would: subscribe offers are answered, dynacast reaches the
//! encoders, keyframe requests reach them too. Everything the worker reports is kept in
//! [`World::events`] for the scenario to check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpApi, SdpOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::{Input, RtcConfig};

use super::client::{Client, Creds, ReceivedRtp, accept_answer, creds_of};
use super::net::{Path, PathConfig};
use super::raw::RawPeer;
use super::vp8::{CHROMIUM_720P, FRAME, LayerSpec, Vp8Receiver, Vp8Simulcast};
use super::worker::{Harness, SERVER};
use crate::codec_order::video_codec_order;
use crate::event::{CloseReason, PeerEvent, TrackKind};
use crate::ids::{PeerId, TrackId};

/// The simulcast RIDs a publisher sends, lowest layer first.
pub(crate) const RIDS: [&str; 3] = ["q", "h", "f"];

/// How often a subscriber whose video does not decode asks for a keyframe.
pub(crate) const PLI_EVERY: Duration = Duration::from_millis(300);

/// A client's index in [`World::nodes`].
pub(crate) type NodeId = usize;

/// What a client does.
#[derive(Debug)]
pub(crate) enum Role {
    /// Sends VP8 simulcast video.
    Publisher {
        video: Mid,
        encoder: Vp8Simulcast,
        next_frame: Instant,
        /// SSRCs chosen by the scenario, one per layer (else str0m's own).
        ssrcs: Option<Vec<Ssrc>>,
        /// Every packet carries an abs-send-time far from the truth (a broken sender clock).
        wild_send_times: bool,
        /// Packets written so far.
        written: u64,
    },
    /// Publishes one m-line whose packets the scenario writes itself.
    Sender { mid: Mid },
    /// Receives; its video is decoded by `video`. Like Chromium, it asks for a keyframe
    /// (PLI) when a frame does not decode, at most every [`PLI_EVERY`].
    Subscriber {
        video: Vp8Receiver,
        /// Every other packet received (audio, telephone events), with its arrival.
        other: Vec<(Instant, ReceivedRtp)>,
        /// The video m-line (from the server's latest offer).
        video_mid: Option<Mid>,
        last_pli: Option<Instant>,
    },
}

/// How a publisher behaves.
#[derive(Debug, Clone)]
pub(crate) struct PublisherOptions {
    pub(crate) layers: Vec<LayerSpec>,
    /// Three temporal layers per simulcast layer.
    pub(crate) temporal: bool,
    /// Written into every packet, to tell publishers apart at the receivers.
    pub(crate) source: u8,
    /// Send with these SSRCs (one per layer) instead of random ones.
    pub(crate) ssrcs: Option<Vec<u32>>,
    /// Offer a data channel.
    pub(crate) data_channel: bool,
    /// Send abs-send-time values far from the truth.
    pub(crate) wild_send_times: bool,
    /// Estimate bandwidth and pad up to this rate (bits per second) with padding packets.
    pub(crate) pad_to: Option<u64>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            layers: CHROMIUM_720P.to_vec(),
            temporal: true,
            source: 0,
            ssrcs: None,
            data_channel: false,
            wild_send_times: false,
            pad_to: None,
        }
    }
}

/// One client: its state machine, its paths and its role.
pub(crate) struct Node {
    pub(crate) client: Client,
    pub(crate) peer: PeerId,
    /// Client to server.
    pub(crate) up: Path,
    /// Server to client.
    pub(crate) down: Path,
    pub(crate) role: Role,
    /// Tracks this client published.
    pub(crate) tracks: Vec<TrackId>,
    /// Offers answered (subscribers).
    pub(crate) offers: u32,
    /// Why the server closed this client's peer, once it did.
    pub(crate) closed: Option<CloseReason>,
    /// The client answers offers and reacts to events (false: it has vanished).
    pub(crate) alive: bool,
    /// Rewrites what the client sends before it enters the path (a hostile client).
    pub(crate) mangle_up: Option<Mangler>,
    /// The server's ICE credentials for this peer (from its latest SDP).
    pub(crate) server_creds: Creds,
}

/// A hand-made endpoint ([`RawPeer`]) and what the server knows of it. It talks to the
/// worker directly (no simulated path).
pub(crate) struct RawNode {
    pub(crate) peer: PeerId,
    pub(crate) raw: RawPeer,
    /// The SDP this endpoint offered, and the server's answer.
    pub(crate) offer: String,
    pub(crate) answer: String,
    /// Why the server closed this endpoint's peer, once it did.
    pub(crate) closed: Option<CloseReason>,
    /// Tracks the server published for it.
    pub(crate) tracks: Vec<TrackId>,
}

/// Turns one datagram a client sends into the datagrams that really leave it.
pub(crate) type Mangler = Box<dyn FnMut(&[u8]) -> Vec<Vec<u8>>>;

/// The worker, its clients, the network between them and the clock.
pub(crate) struct World {
    pub(crate) h: Harness,
    pub(crate) nodes: Vec<Node>,
    /// Hand-made endpoints, for bytes no WebRTC stack would send.
    pub(crate) raw: Vec<RawNode>,
    /// Everything the worker reported, with the time.
    pub(crate) events: Vec<(Instant, PeerEvent)>,
    seed: u64,
    /// The start of the world, for readable failure messages.
    pub(crate) start: Instant,
}

impl World {
    /// An empty world; `seed` decides every random loss and delay.
    pub(crate) fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// An empty world whose server configuration `adjust` changes.
    pub(crate) fn with_config(seed: u64, adjust: impl FnOnce(&mut crate::SfuConfig)) -> Self {
        let h = Harness::with_config(adjust);
        let start = h.now;
        Self {
            h,
            nodes: Vec::new(),
            raw: Vec::new(),
            events: Vec::new(),
            seed,
            start,
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.h.now
    }

    /// Seconds since the start, for messages.
    pub(crate) fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    fn new_node(&mut self, peer: PeerId, client: Client, role: Role) -> NodeId {
        let id = self.nodes.len();
        let seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (id as u64) << 1;
        self.nodes.push(Node {
            client,
            peer,
            up: Path::new(PathConfig::default(), seed),
            down: Path::new(PathConfig::default(), seed ^ 1),
            role,
            tracks: Vec::new(),
            offers: 0,
            closed: None,
            alive: true,
            mangle_up: None,
            server_creds: Creds::default(),
        });
        id
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 10 + self.nodes.len() as u8], 40000))
    }

    /// A publisher of one VP8 simulcast video track with these layers; returns once it is
    /// connected and its track published.
    pub(crate) fn publisher(&mut self, layers: &[LayerSpec], temporal: bool) -> NodeId {
        self.publisher_with(&PublisherOptions {
            layers: layers.to_vec(),
            temporal,
            ..PublisherOptions::default()
        })
    }

    /// A publisher as `options` say; returns once it is connected and its track published.
    pub(crate) fn publisher_with(&mut self, options: &PublisherOptions) -> NodeId {
        let layers = &options.layers;
        let now = self.h.now;
        let pad_to = options.pad_to;
        let mut client = Client::with_config(self.client_addr(), now, |c| match pad_to {
            Some(bps) => c.enable_bwe(Some(Bitrate::bps(bps))),
            None => c,
        });
        if let Some(bps) = pad_to {
            client
                .rtc
                .bwe()
                .set_bitrate(Bitrate::bps(bps), Bitrate::bps(bps));
        }
        let mut simulcast = Simulcast::new();
        for rid in RIDS.iter().take(layers.len()) {
            simulcast.add_send_layer(SimulcastLayer::new(rid));
        }
        let (video, peer, server_creds) = self.publish(&mut client, |api| {
            if options.data_channel {
                api.add_channel("data".into());
            }
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("camera".into()),
                None,
                Some(simulcast),
            )
        });
        let ssrcs = options.ssrcs.as_ref().map(|ssrcs| {
            // The streams str0m made for the RIDs give way to ours (two streams for one RID
            // would leave str0m's pacer waiting on the wrong one).
            let mut api = client.rtc.direct_api();
            ssrcs
                .iter()
                .zip(RIDS)
                .map(|(ssrc, rid)| {
                    let rid = Rid::from(rid);
                    let theirs = api.stream_tx_by_mid(video, Some(rid)).map(|tx| tx.ssrc());
                    if let Some(theirs) = theirs {
                        api.remove_stream_tx(theirs);
                    }
                    let (ssrc, rtx) = (Ssrc::from(*ssrc), Ssrc::from(ssrc.wrapping_add(1)));
                    api.declare_stream_tx(ssrc, Some(rtx), video, Some(rid));
                    ssrc
                })
                .collect()
        });
        let mut encoder = Vp8Simulcast::new(layers, options.temporal);
        encoder.source = options.source;
        let role = Role::Publisher {
            video,
            encoder,
            next_frame: now,
            ssrcs,
            wild_send_times: options.wild_send_times,
            written: 0,
        };
        let id = self.new_node(peer, client, role);
        self.nodes[id].server_creds = server_creds;
        self.run_until(Duration::from_secs(5), |w| {
            w.nodes[id].client.connected && !w.nodes[id].tracks.is_empty()
        });
        assert!(
            !self.nodes[id].tracks.is_empty(),
            "the publisher's track is not published"
        );
        id
    }

    /// Offers as a publisher what `build` adds to `client`'s SDP (returning the m-line it
    /// will send on) and applies the server's answer; returns that m-line, the server's peer
    /// and its ICE credentials.
    fn publish(
        &mut self,
        client: &mut Client,
        build: impl FnOnce(&mut SdpApi<'_>) -> Mid,
    ) -> (Mid, PeerId, Creds) {
        let mut api = client.rtc.sdp_api();
        let mid = build(&mut api);
        let Some((offer, pending)) = api.apply() else {
            panic!("nothing to offer");
        };
        client.drain();
        let sdp = offer.to_sdp_string();
        let (peer, answer) = match self.h.add_publisher(offer, video_codec_order(&sdp)) {
            Ok(a) => a,
            Err(e) => panic!("the publisher's offer is refused: {e}"),
        };
        accept_answer(client, pending, &answer);
        (mid, peer, creds_of(&answer))
    }

    /// A subscriber to `tracks`, not yet connected (the scenario may change its paths or
    /// its behaviour before time moves).
    pub(crate) fn add_subscriber(&mut self, tracks: Vec<TrackId>) -> NodeId {
        self.add_subscriber_with(tracks, |c| c)
    }

    /// A subscriber whose client `configure` adjusts (its codecs, say), not yet connected.
    pub(crate) fn add_subscriber_with(
        &mut self,
        tracks: Vec<TrackId>,
        configure: impl FnOnce(RtcConfig) -> RtcConfig,
    ) -> NodeId {
        let client = Client::with_config(self.client_addr(), self.h.now, configure);
        let peer = match self.h.add_subscriber(tracks) {
            Ok(p) => p,
            Err(e) => panic!("cannot subscribe: {e}"),
        };
        self.new_node(
            peer,
            client,
            Role::Subscriber {
                video: Vp8Receiver::default(),
                other: Vec::new(),
                video_mid: None,
                last_pli: None,
            },
        )
    }

    /// A subscriber to `tracks`; returns once it is connected.
    pub(crate) fn subscriber(&mut self, tracks: Vec<TrackId>) -> NodeId {
        let id = self.add_subscriber(tracks);
        self.run_until(Duration::from_secs(5), |w| w.nodes[id].client.connected);
        assert!(
            self.nodes[id].client.connected,
            "the subscriber does not connect"
        );
        id
    }

    /// `n` subscribers to `tracks`, added at the same instant; returns once all are connected.
    pub(crate) fn subscribers(&mut self, n: usize, tracks: Vec<TrackId>) -> Vec<NodeId> {
        let ids: Vec<NodeId> = (0..n)
            .map(|_| self.add_subscriber(tracks.clone()))
            .collect();
        let all = ids.clone();
        self.run_until(Duration::from_secs(5), |w| {
            all.iter().all(|i| w.nodes[*i].client.connected)
        });
        ids
    }

    /// A publisher of one `kind` m-line whose client `configure` adjusts (its codecs); returns
    /// once it is connected. Its track is published at its first packet, which the scenario
    /// writes (see [`World::sender_mid`]).
    pub(crate) fn sender(
        &mut self,
        kind: MediaKind,
        configure: impl FnOnce(RtcConfig) -> RtcConfig,
    ) -> NodeId {
        let mut client = Client::with_config(self.client_addr(), self.h.now, configure);
        let (mid, peer, server_creds) = self.publish(&mut client, |api| {
            api.add_media(kind, Direction::SendOnly, Some("sender".into()), None, None)
        });
        let id = self.new_node(peer, client, Role::Sender { mid });
        self.nodes[id].server_creds = server_creds;
        self.run_until(Duration::from_secs(5), |w| w.nodes[id].client.connected);
        assert!(
            self.nodes[id].client.connected,
            "the sender does not connect"
        );
        id
    }

    /// The m-line a [`World::sender`] writes on.
    pub(crate) fn sender_mid(&self, id: NodeId) -> Mid {
        match &self.nodes[id].role {
            Role::Sender { mid } => *mid,
            _ => panic!("node {id} is not a sender"),
        }
    }

    /// Writes one RTP packet from [`World::sender`] `id` (its payload type, numbers and payload
    /// as the scenario chose them) and hands it to the network; time does not move.
    pub(crate) fn send_rtp(
        &mut self,
        id: NodeId,
        (pt, seq, timestamp): (u8, u64, u32),
        marker: bool,
        payload: Vec<u8>,
    ) {
        self.send_rtp_with(
            id,
            (pt, seq, timestamp),
            marker,
            payload,
            ExtensionValues::default(),
        );
    }

    /// [`World::send_rtp`] with header extension values.
    pub(crate) fn send_rtp_with(
        &mut self,
        id: NodeId,
        (pt, seq, timestamp): (u8, u64, u32),
        marker: bool,
        payload: Vec<u8>,
        ext: ExtensionValues,
    ) {
        let now = self.now();
        let mid = self.sender_mid(id);
        let client = &mut self.nodes[id].client;
        let mut api = client.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            panic!("the sender has no stream on its m-line");
        };
        tx.write_rtp(
            RtpWrite::new(pt.into(), seq.into(), timestamp, now, payload)
                .marker(marker)
                .ext_vals(ext),
        );
        client.drain();
    }

    /// The packets subscriber `id` received that were not VP8, with their arrival.
    pub(crate) fn other_received(&self, id: NodeId) -> &[(Instant, ReceivedRtp)] {
        match &self.nodes[id].role {
            Role::Subscriber { other, .. } => other,
            _ => panic!("node {id} is not a subscriber"),
        }
    }

    /// A subscriber whose client never answers (nor sends anything).
    pub(crate) fn silent_subscriber(&mut self, tracks: Vec<TrackId>) -> NodeId {
        let id = self.add_subscriber(tracks);
        self.nodes[id].alive = false;
        id
    }

    /// A hand-made endpoint publishing one video m-line (and a data channel if asked);
    /// returns its index in [`World::raw`] once DTLS has completed. It sends nothing by itself.
    pub(crate) fn raw_publisher(&mut self, data_channel: bool) -> usize {
        let (addr, sdp) = self.raw_offer(Direction::SendOnly, data_channel);
        let offer = parse_offer(&sdp);
        let (peer, answer) = match self.h.add_publisher(offer, video_codec_order(&sdp)) {
            Ok(a) => a,
            Err(e) => panic!("the raw publisher's offer is refused: {e}"),
        };
        self.connect_raw(peer, addr, sdp, answer)
    }

    /// A hand-made endpoint receiving `tracks` (it offers one receive-only video m-line);
    /// returns its index in [`World::raw`] once DTLS has completed.
    pub(crate) fn raw_subscriber(&mut self, tracks: Vec<TrackId>) -> usize {
        let (addr, sdp) = self.raw_offer(Direction::RecvOnly, false);
        let offer = parse_offer(&sdp);
        let (peer, answer) = match self.h.add_offering_subscriber(offer, tracks) {
            Ok(a) => a,
            Err(e) => panic!("the raw subscriber's offer is refused: {e}"),
        };
        self.connect_raw(peer, addr, sdp, answer)
    }

    /// An offer written by a str0m client holding the raw endpoint's certificate, with the
    /// endpoint as the DTLS client and no out-of-band SCTP INIT (the endpoint sends its own).
    fn raw_offer(&self, direction: Direction, data_channel: bool) -> (SocketAddr, String) {
        let addr = SocketAddr::from(([192, 0, 2, 200 + self.raw.len() as u8], 41000));
        let mut client = Client::new(addr, self.h.now);
        let mut api = client.rtc.sdp_api();
        if data_channel {
            api.add_channel("data".into());
        }
        api.add_media(MediaKind::Video, direction, Some("raw".into()), None, None);
        let Some((offer, _)) = api.apply() else {
            panic!("nothing to offer");
        };
        let sdp = offer
            .to_sdp_string()
            .replace("a=setup:actpass", "a=setup:active")
            .lines()
            .filter(|l| !l.starts_with("a=sctp-init"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        (addr, sdp)
    }

    fn connect_raw(
        &mut self,
        peer: PeerId,
        addr: SocketAddr,
        offer: String,
        answer: String,
    ) -> usize {
        let mut raw = RawPeer::new(addr, creds_of(&offer), creds_of(&answer), self.h.now);
        raw.start_ice();
        self.raw.push(RawNode {
            peer,
            raw,
            offer,
            answer,
            closed: None,
            tracks: Vec::new(),
        });
        let id = self.raw.len() - 1;
        self.run_until(Duration::from_secs(5), |w| w.raw[id].raw.ready());
        assert!(
            self.raw[id].raw.ready(),
            "the raw endpoint does not connect (ICE {}, DTLS {}, DTLS failed or closed {}, \
             peer closed {:?})",
            self.raw[id].raw.ice_connected,
            self.raw[id].raw.dtls_connected,
            self.raw[id].raw.dtls_closed,
            self.raw[id].closed
        );
        id
    }

    /// The video m-line of subscriber `id` (from the server's latest offer).
    pub(crate) fn subscriber_video_mid(&self, id: NodeId) -> Mid {
        match &self.nodes[id].role {
            Role::Subscriber {
                video_mid: Some(mid),
                ..
            } => *mid,
            _ => panic!("node {id} is not a subscriber with video"),
        }
    }

    /// Which layers a publisher's encoder sends.
    pub(crate) fn encoder_active(&self, id: NodeId) -> Vec<bool> {
        match &self.nodes[id].role {
            Role::Publisher { encoder, .. } => encoder.active(),
            _ => panic!("node {id} is not a publisher"),
        }
    }

    /// The subscriber's decoder.
    pub(crate) fn video(&self, id: NodeId) -> &Vp8Receiver {
        match &self.nodes[id].role {
            Role::Subscriber { video, .. } => video,
            _ => panic!("node {id} is not a subscriber"),
        }
    }

    /// The publisher's encoder.
    pub(crate) fn encoder(&mut self, id: NodeId) -> &mut Vp8Simulcast {
        match &mut self.nodes[id].role {
            Role::Publisher { encoder, .. } => encoder,
            _ => panic!("node {id} is not a publisher"),
        }
    }

    /// Runs for `d`, or until `done` holds (checked after every step).
    pub(crate) fn run_until(&mut self, d: Duration, done: impl Fn(&World) -> bool) -> bool {
        let end = self.h.now + d;
        let mut steps_at_instant = 0u32;
        loop {
            if done(self) {
                return true;
            }
            let next = self.next_due().unwrap_or(end).min(end).max(self.h.now);
            if next == self.h.now {
                steps_at_instant += 1;
                assert!(
                    steps_at_instant < 10_000,
                    "time does not move at {:.3}s: something is due again at once, forever \
                     (worker deadline {:?}, client timeouts {:?})",
                    self.t(self.h.now),
                    self.h.core.next_deadline().map(|d| self.t(d)),
                    self.nodes
                        .iter()
                        .map(|n| (self.t(n.client.timeout), n.client.failed, n.alive))
                        .collect::<Vec<_>>()
                );
            } else {
                steps_at_instant = 0;
            }
            self.h.now = next;
            self.step();
            if next >= end {
                return done(self);
            }
        }
    }

    /// Runs for `d` as a worker too busy to wake at each deadline: one step every `turn`;
    /// whatever falls due in between waits for the next.
    pub(crate) fn run_in_turns(&mut self, d: Duration, turn: Duration) {
        let end = self.h.now + d;
        while self.h.now < end {
            self.h.now = (self.h.now + turn).min(end);
            self.step();
        }
    }

    /// Runs for `d`.
    pub(crate) fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    fn next_due(&self) -> Option<Instant> {
        let mut next = self.h.core.next_deadline();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for r in &self.raw {
            consider(Some(r.raw.timeout));
            if !r.raw.outbox.is_empty() {
                consider(Some(self.h.now));
            }
        }
        for n in &self.nodes {
            consider(n.up.next_arrival());
            consider(n.down.next_arrival());
            if n.alive && !n.client.failed {
                consider(Some(n.client.timeout));
            }
            if let Role::Publisher { next_frame, .. } = &n.role
                && n.alive
            {
                consider(Some(*next_frame));
            }
        }
        next
    }

    /// Everything due now.
    fn step(&mut self) {
        let now = self.h.now;
        for n in &mut self.nodes {
            for t in n.up.arrived(now) {
                self.h
                    .core
                    .handle_datagram(now, t.source, Some(t.destination.ip()), &t.contents);
            }
        }
        for r in &mut self.raw {
            if r.raw.timeout <= now {
                r.raw.handle_timeout(now);
            }
            for datagram in std::mem::take(&mut r.raw.outbox) {
                self.h
                    .core
                    .handle_datagram(now, r.raw.addr, Some(SERVER.ip()), &datagram);
            }
        }
        for n in &mut self.nodes {
            for t in n.down.arrived(now) {
                if n.alive
                    && let Ok(r) = Receive::new(t.proto, t.source, t.destination, &t.contents)
                {
                    n.client.input(Input::Receive(now, r));
                }
            }
            if n.alive && n.client.timeout <= now {
                n.client.input(Input::Timeout(now));
            }
            produce_media(n, now);
        }
        self.h.core.handle_timers(now, &mut |_| {});
        for t in self.h.flush() {
            if let Some(n) = self
                .nodes
                .iter_mut()
                .find(|n| n.client.addr == t.destination)
            {
                n.down.send(now, t);
            } else if let Some(r) = self.raw.iter_mut().find(|r| r.raw.addr == t.destination) {
                r.raw.receive(now, &t.contents);
            }
        }
        for n in &mut self.nodes {
            send_up(n, now);
            take_received(n, now);
        }
        for event in self.h.events() {
            self.on_event(now, &event);
            self.events.push((now, event));
        }
    }

    /// What the control plane and the clients do with the worker's events.
    fn on_event(&mut self, now: Instant, event: &PeerEvent) {
        let node = |w: &mut World, peer: PeerId| w.nodes.iter().position(|n| n.peer == peer);
        match event {
            PeerEvent::TrackPublished { peer, track } => {
                if let Some(i) = node(self, *peer) {
                    self.nodes[i].tracks.push(track.id);
                }
                if let Some(r) = self.raw.iter_mut().find(|r| r.peer == *peer) {
                    r.tracks.push(track.id);
                }
            }
            PeerEvent::SubscriberOffer { peer, sdp, tracks } => {
                let Some(i) = node(self, *peer) else {
                    return;
                };
                let n = &mut self.nodes[i];
                if !n.alive {
                    return;
                }
                if let Role::Subscriber { video_mid, .. } = &mut n.role {
                    *video_mid = tracks
                        .iter()
                        .find(|t| t.kind == TrackKind::Video)
                        .map(|t| Mid::from(t.mid.as_str()));
                }
                let Ok(offer) = SdpOffer::from_sdp_string(sdp) else {
                    panic!("the server's offer does not parse: {sdp}");
                };
                let answer = match n.client.rtc.sdp_api().accept_offer(offer) {
                    Ok(a) => a,
                    Err(e) => panic!("a client refuses the server's offer ({e}): {sdp}"),
                };
                n.client.drain();
                n.offers += 1;
                n.server_creds = creds_of(sdp);
                let peer = n.peer;
                // Refused when the peer closed meanwhile.
                let _ = self.h.subscriber_answer(peer, answer);
                send_up(&mut self.nodes[i], now);
            }
            PeerEvent::LayersWanted { peer, active, .. } => {
                if let Some(i) = node(self, *peer)
                    && self.nodes[i].alive
                    && let Role::Publisher { encoder, .. } = &mut self.nodes[i].role
                {
                    encoder.set_active(active);
                }
            }
            PeerEvent::Closed { peer, reason } => {
                if let Some(i) = node(self, *peer) {
                    self.nodes[i].closed = Some(reason.clone());
                }
                if let Some(r) = self.raw.iter_mut().find(|r| r.peer == *peer) {
                    r.closed = Some(reason.clone());
                }
            }
            _ => {}
        }
    }

    /// The video track of publisher `id`.
    pub(crate) fn video_track(&self, id: NodeId) -> TrackId {
        let published = self.events.iter().find_map(|(_, e)| match e {
            PeerEvent::TrackPublished { peer, track }
                if *peer == self.nodes[id].peer && track.kind == TrackKind::Video =>
            {
                Some(track.id)
            }
            _ => None,
        });
        published.unwrap_or_else(|| panic!("node {id} published no video"))
    }
}

fn parse_offer(sdp: &str) -> SdpOffer {
    match SdpOffer::from_sdp_string(sdp) {
        Ok(o) => o,
        Err(e) => panic!("the raw offer does not parse ({e}): {sdp}"),
    }
}

/// A publisher of three VP8 layers and one viewer of its video, connected.
pub(crate) fn call(seed: u64) -> (World, NodeId, NodeId) {
    let mut w = World::new(seed);
    let alice = w.publisher(&CHROMIUM_720P, true);
    let track = w.video_track(alice);
    let bob = w.subscriber(vec![track]);
    (w, alice, bob)
}

/// What the client sent goes onto its path (through its mangler, if it has one).
fn send_up(n: &mut Node, now: Instant) {
    for t in std::mem::take(&mut n.client.outbox) {
        match &mut n.mangle_up {
            None => n.up.send(now, t),
            Some(mangle) => {
                for contents in mangle(&t.contents) {
                    n.up.send(
                        now,
                        Transmit {
                            proto: t.proto,
                            source: t.source,
                            destination: t.destination,
                            contents: contents.into(),
                        },
                    );
                }
            }
        }
    }
}

/// A publisher's frames that are due: written to its state machine.
fn produce_media(n: &mut Node, now: Instant) {
    let Role::Publisher {
        video,
        encoder,
        next_frame,
        ssrcs,
        wild_send_times,
        written,
    } = &mut n.role
    else {
        return;
    };
    if !n.alive {
        return;
    }
    for (mid, rid) in n.client.keyframe_requests.drain(..) {
        if mid == *video
            && let Some(layer) = rid.and_then(|r| RIDS.iter().position(|x| Rid::from(*x) == r))
        {
            encoder.request_keyframe(layer);
        }
    }
    if *next_frame > now {
        return;
    }
    *next_frame += FRAME;
    let Some(pt) = n.client.pt(Codec::Vp8) else {
        return;
    };
    for p in encoder.frame() {
        let rid = RIDS.get(p.layer).map(|r| Rid::from(*r));
        let mut api = n.client.rtc.direct_api();
        let tx = match ssrcs.as_ref().and_then(|s| s.get(p.layer)) {
            Some(ssrc) => api.stream_tx(ssrc),
            None => api.stream_tx_by_mid(*video, rid),
        };
        let Some(tx) = tx else {
            continue;
        };
        let mut write = RtpWrite::new(pt.into(), p.seq.into(), p.timestamp, now, p.payload)
            .marker(p.marker)
            .nackable(true);
        if *wild_send_times {
            // Later than the truth by anything from 17 ms to 100 days: every 24-bit value.
            const OFFSETS: [u64; 5] = [17, 63_999, 64_001, 3_600_000, 8_640_000_000];
            let offset = OFFSETS[(*written % 5) as usize] + *written * 7;
            let ext = ExtensionValues {
                abs_send_time: now.checked_add(Duration::from_millis(offset)),
                ..ExtensionValues::default()
            };
            write = write.ext_vals(ext);
        }
        tx.write_rtp(write);
        *written += 1;
    }
    n.client.drain();
}

/// A subscriber's received packets go to its decoder; a frame that does not decode makes
/// it ask for a keyframe.
fn take_received(n: &mut Node, now: Instant) {
    let vp8 = n.client.pt(Codec::Vp8);
    let received = std::mem::take(&mut n.client.received);
    let Role::Subscriber {
        video,
        other,
        video_mid,
        last_pli,
    } = &mut n.role
    else {
        return;
    };
    let before = video.undecodable;
    for p in received {
        if Some(p.pt) == vp8 {
            video.on_packet(now, &p.payload);
        } else {
            other.push((now, p));
        }
    }
    let due = last_pli.is_none_or(|at| now >= at + PLI_EVERY);
    if video.undecodable > before
        && due
        && let Some(mid) = *video_mid
        && let Some(rx) = n.client.rtc.direct_api().stream_rx_by_mid(mid, None)
    {
        rx.request_keyframe(KeyframeRequestKind::Pli);
        *last_pli = Some(now);
        n.client.input(Input::Timeout(now));
        send_up(n, now);
    }
}
