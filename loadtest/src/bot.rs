//! A bot: one participant built from str0m peers, speaking the server's real signalling
//! protocol. It publishes audio and VP8 video if asked (synthetic payloads, the swarm's clip
//! or live frames: see [`crate::media_out`]), subscribes to everything the server offers, and
//! records what it receives so a test (or the swarm's report) can check it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState, RtcError};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::client_peer::{ClientPeer, is_rtp};
pub use crate::media_out::MediaSource;
use crate::media_out::{LiveFrame, MediaOut, Outgoing, SyntheticVideo};
use crate::receive_quality::StreamQuality;
use crate::server_probe::http_request;
use crate::signal::{ClientMessage, ServerMessage, SharedJournal, Signal, SignalError};
use crate::synthetic::{self, PayloadKind, Signature};
use crate::vp8_rtp::FrameAssembler;
use sfu_protocol::protocol::ErrorCode;

/// How a bot talks to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The server's signalling WebSocket (`ws_url`): publishes and subscribes like a browser.
    Signalling,
    /// WHIP: publishes with one HTTP request to `http://{server}/whip/{room}`.
    Whip {
        /// `host:port` of the server.
        server: String,
        /// Room name.
        room: String,
    },
    /// WHEP: watches with one HTTP request to `http://{server}/whep/{room}`.
    Whep {
        /// `host:port` of the server.
        server: String,
        /// Room name.
        room: String,
        /// Watch this participant (default: the server's choice).
        participant: Option<String>,
    },
}

/// What a bot does.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// How it reaches the server.
    pub transport: Transport,
    /// Signalling URL (`ws://host:port/rtc`), for [`Transport::Signalling`].
    pub ws_url: String,
    /// Access token.
    pub token: String,
    /// Publish audio and video (audio alone without [`BotConfig::publish_video`]).
    pub publish: bool,
    /// Publish video besides audio (default: yes; no for an audio-only room).
    pub publish_video: bool,
    /// Tag written into every payload this bot sends.
    pub tag: u32,
    /// Video frames per second.
    pub fps: u32,
    /// RTP packets per video frame.
    pub packets_per_frame: u32,
    /// Bytes per video packet payload.
    pub video_packet_bytes: usize,
    /// A keyframe every this many frames.
    pub keyframe_interval: u32,
    /// Publish video as three simulcast layers (`q`, `h`, `f`, lowest first).
    pub simulcast: bool,
    /// Percentage of incoming RTP datagrams the subscriber drops before its WebRTC stack sees
    /// them (simulated loss, seeded by `tag`).
    pub drop_rtp_percent: u8,
    /// What to publish (default: synthetic payloads).
    pub media: MediaSource,
    /// Check received payloads against their [`Signature`] (only synthetic media has one);
    /// otherwise count them as foreign media.
    pub verify_payloads: bool,
    /// Keep every received sequence number in [`ReceivedStream::seqs`] (tests); the swarm
    /// keeps only counters.
    pub record_seqs: bool,
    /// Keep up to this many reassembled VP8 frames per received stream, from the latest
    /// keyframe of a new size on (for decoding).
    pub keep_frames: usize,
    /// Ask str0m for receive statistics (NACKs and PLIs sent) every second.
    pub collect_stats: bool,
    /// WHIP/WHEP: the path to POST to, instead of `/whip/{room}` or `/whep/{room}`.
    pub http_path: Option<String>,
    /// Carry media over one ICE-TCP connection to this server address instead of UDP.
    pub ice_tcp: Option<std::net::SocketAddr>,
    /// Rewrites the publish offer's SDP before it is sent (tests of lying clients).
    pub mangle_offer: Option<fn(&str) -> String>,
    /// Keep the last RTP datagrams the publisher sent, for [`Bot::replay_sent`].
    pub keep_sent: bool,
}

impl BotConfig {
    /// A bot with moderate media: 30 fps, 2 packets of 1000 bytes per frame, a keyframe every
    /// 2 seconds, and Opus every 20 ms.
    pub fn new(ws_url: &str, token: String, publish: bool, tag: u32) -> Self {
        Self {
            transport: Transport::Signalling,
            ws_url: ws_url.to_string(),
            token,
            publish,
            publish_video: true,
            tag,
            fps: 30,
            packets_per_frame: 2,
            video_packet_bytes: 1000,
            keyframe_interval: 60,
            drop_rtp_percent: 0,
            simulcast: false,
            media: MediaSource::Synthetic,
            verify_payloads: true,
            record_seqs: true,
            keep_frames: 0,
            collect_stats: false,
            http_path: None,
            ice_tcp: None,
            mangle_offer: None,
            keep_sent: false,
        }
    }
}

/// What a bot has received on one incoming SSRC.
#[derive(Debug, Clone)]
pub struct ReceivedStream {
    /// Audio or video.
    pub kind: PayloadKind,
    /// The subscriber mid it arrived on.
    pub mid: String,
    /// Tags of the publishers whose payloads arrived.
    pub tags: BTreeSet<u32>,
    /// Extended sequence numbers, in arrival order.
    pub seqs: Vec<u64>,
    /// Video frames that started with a keyframe.
    pub keyframes: u64,
    /// Whether the first packet received started a keyframe.
    pub starts_with_keyframe: bool,
    /// Every change of simulcast layer: (sequence number, new layer, whether that packet
    /// started a keyframe).
    pub layer_changes: Vec<(u64, u8, bool)>,
    /// Layer of the last packet.
    pub layer: Option<u8>,
    /// The highest packet counter of the verified synthetic payloads received (what their
    /// publisher numbered them; see [`BotState::last_written`]).
    pub highest_packet: Option<u32>,
    /// VP8 picture ID of the last frame start.
    pub picture_id: Option<u16>,
    /// Frame starts whose picture ID did not follow the previous one's (VP8).
    pub picture_id_jumps: u32,
    /// What a viewer would experience: frames, freezes, first frame, bytes, losses.
    pub quality: StreamQuality,
    /// Reassembled VP8 frames from the latest keyframe of a new size on, at most
    /// [`BotConfig::keep_frames`].
    pub frames: Vec<Vec<u8>>,
}

impl ReceivedStream {
    /// Sequence numbers missing between the lowest and highest received.
    pub fn missing(&self) -> Vec<u64> {
        let set: BTreeSet<u64> = self.seqs.iter().copied().collect();
        match (set.first(), set.last()) {
            (Some(&lo), Some(&hi)) => (lo..=hi).filter(|s| !set.contains(s)).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the sequence numbers received cover one gap-free range with no repeats.
    pub fn seqs_continuous(&self) -> bool {
        let set: BTreeSet<u64> = self.seqs.iter().copied().collect();
        match (set.first(), set.last()) {
            (Some(lo), Some(hi)) => set.len() as u64 == hi - lo + 1 && set.len() == self.seqs.len(),
            _ => true,
        }
    }
}

/// Everything a bot has seen so far.
#[derive(Debug, Clone, Default)]
pub struct BotState {
    /// Our participant id, once joined.
    pub participant: Option<String>,
    /// Every signalling message received, in order.
    pub messages: Vec<ServerMessage>,
    /// Received media by SSRC.
    pub streams: HashMap<u32, ReceivedStream>,
    /// Payloads that did not match their signature.
    pub bad_payloads: u64,
    /// Data channel messages received (text).
    pub data: Vec<String>,
    /// Keyframe requests received from the server (as a publisher).
    pub keyframe_requests: u64,
    /// Media packets sent.
    pub packets_sent: u64,
    /// Per kind: the packet counter of the newest synthetic payload written, updated before
    /// the packet goes out (so no packet with a higher counter has been sent yet).
    pub last_written: HashMap<PayloadKind, u32>,
    /// ICE + DTLS up on the publish connection.
    pub publish_connected: bool,
    /// Our data channel (on the publish connection) is open.
    pub data_open: bool,
    /// ICE + DTLS up on the subscribe connection.
    pub subscribe_connected: bool,
    /// Why the bot stopped, once it has.
    pub ended: Option<String>,
    /// The WHIP/WHEP resource URL path (`Location`), once created.
    pub resource: Option<String>,
    /// When the bot was started.
    pub started: Option<Instant>,
    /// When the server accepted the bot: `joined`, or the WHIP/WHEP answer.
    pub joined_at: Option<Instant>,
    /// Which remote track each subscriber mid carries: mid -> (participant id, track id).
    pub offered: HashMap<String, (String, String)>,
    /// Latest receive statistics per (mid, rid): (NACKs sent, PLIs sent, FIRs sent).
    pub feedback: HashMap<(String, Option<String>), (u64, u64, u64)>,
    /// Our published tracks: (kind, track id).
    pub own_tracks: Vec<(String, String)>,
    /// Whether our microphone is muted.
    pub audio_muted: bool,
    /// The token that resumes our session on a new socket (from `joined`).
    pub resume_token: Option<String>,
    /// The signalling URL a `room_elsewhere` error sent us to (cluster mode), if any.
    pub joined_via: Option<String>,
    /// Every ICE connection state the publish connection went through, in order.
    pub publish_ice: Vec<IceConnectionState>,
    /// Every ICE connection state the subscribe connection went through, in order.
    pub subscribe_ice: Vec<IceConnectionState>,
    /// Our ICE ufrag on the subscribe connection (from our latest answer).
    pub subscribe_ufrag: Option<String>,
    /// The `seq` of our last numbered signalling message when we last dropped the socket.
    pub sent_before_drop: u64,
    /// Media sending is paused ([`Bot::pause_media`]; set once the bot has stopped).
    pub media_paused: bool,
    /// RFC 4733 telephone events (DTMF) received, one per event (the latest packet of each),
    /// at most [`MAX_TONES`].
    pub tones: Vec<Tone>,
}

/// The most telephone events a bot keeps.
pub const MAX_TONES: usize = 256;

/// One RFC 4733 telephone event received (DTMF: events 0-9 are the digits, 10 `*`, 11 `#`,
/// 12-15 `A`-`D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tone {
    /// The event's RTP timestamp (every packet of one event has its start's).
    pub timestamp: u32,
    /// The event code.
    pub event: u8,
    /// Its duration so far, in ticks of `clock_rate`.
    pub duration: u16,
    /// The end bit was seen.
    pub ended: bool,
    /// The payload type's clock rate (8000 or 48000).
    pub clock_rate: u32,
}

impl Tone {
    /// The DTMF character of the event (`?` for events outside 0-15).
    pub fn digit(&self) -> char {
        match self.event {
            0..=9 => char::from(b'0' + self.event),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + self.event - 12),
            _ => '?',
        }
    }

    /// Its duration in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        u32::from(self.duration) * 1000 / self.clock_rate.max(1)
    }

    /// Records one telephone-event packet into `tones`: a new event, or the latest state of
    /// one already seen (its retransmitted end packets included).
    pub fn record(tones: &mut Vec<Tone>, timestamp: u32, payload: &[u8], clock_rate: u32) {
        let [event, flags, hi, lo, ..] = *payload else {
            return;
        };
        let tone = Tone {
            timestamp,
            event,
            duration: u16::from_be_bytes([hi, lo]),
            ended: flags & 0x80 != 0,
            clock_rate,
        };
        if let Some(t) = tones.iter_mut().rev().find(|t| t.timestamp == timestamp) {
            t.duration = t.duration.max(tone.duration);
            t.ended |= tone.ended;
        } else if tones.len() < MAX_TONES {
            tones.push(tone);
        }
    }
}

impl BotState {
    /// Packets received from the publisher with `tag`, of `kind`.
    pub fn packets_from(&self, tag: u32, kind: PayloadKind) -> usize {
        self.streams
            .values()
            .filter(|s| s.kind == kind && s.tags.contains(&tag))
            .map(|s| s.seqs.len())
            .sum()
    }

    /// The highest packet counter received from the publisher with `tag`, of `kind` (for a
    /// publisher without simulcast, whose counter runs over one stream).
    pub fn highest_packet_from(&self, tag: u32, kind: PayloadKind) -> Option<u32> {
        self.streams
            .values()
            .filter(|s| s.kind == kind && s.tags.contains(&tag))
            .filter_map(|s| s.highest_packet)
            .max()
    }

    /// Whether a server message matching `f` has arrived.
    pub fn saw(&self, f: impl Fn(&ServerMessage) -> bool) -> bool {
        self.messages.iter().any(f)
    }

    /// NACKs and PLIs (FIRs counted as PLIs) this bot sent as a subscriber.
    pub fn feedback_sent(&self) -> (u64, u64) {
        self.feedback
            .values()
            .fold((0, 0), |(n, p), (nacks, plis, firs)| {
                (n + nacks, p + plis + firs)
            })
    }

    /// The server error that stopped or refused the bot, if any.
    pub fn error(&self) -> Option<(sfu_protocol::protocol::ErrorCode, String)> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::Error { code, message, .. } => Some((*code, message.clone())),
            _ => None,
        })
    }
}

/// Errors that stop a bot.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Signalling failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// A socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The WebRTC state machine failed.
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
    /// The server sent SDP that could not be used.
    #[error("sdp: {0}")]
    Sdp(String),
    /// A WHIP/WHEP request was refused.
    #[error("HTTP {0}: {1}")]
    Http(u16, String),
}

enum Command {
    Signal(ClientMessage),
    SetAudioLevel(i8),
    SetAudioMuted(bool),
    SendData(String),
    RequestKeyframes,
    Inject(Vec<u8>),
    Leave,
    DropSignalling,
    Resume,
    RestartIce,
    PauseMedia(bool),
    ReplaySent,
}

struct Shared {
    state: Mutex<BotState>,
    changed: Notify,
}

/// A running bot.
pub struct Bot {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    task: JoinHandle<Result<(), BotError>>,
}

impl Bot {
    /// Connects, joins and starts publishing/subscribing in the background.
    pub fn spawn(config: BotConfig) -> Bot {
        let shared = Arc::new(Shared {
            state: Mutex::new(BotState {
                started: Some(Instant::now()),
                ..BotState::default()
            }),
            changed: Notify::new(),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(config, shared.clone(), rx));
        Bot {
            commands,
            shared,
            task,
        }
    }

    /// A copy of what the bot has seen.
    pub fn state(&self) -> BotState {
        self.shared.state.lock().clone()
    }

    /// Reads the state without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&BotState) -> R) -> R {
        f(&self.shared.state.lock())
    }

    /// Waits until `condition` holds, at most `timeout`. Returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, condition: impl Fn(&BotState) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if condition(&self.shared.state.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.shared.state.lock());
            }
        }
    }

    /// Sends a signalling message as is.
    pub fn signal(&self, message: ClientMessage) {
        let _ = self.commands.send(Command::Signal(message));
    }

    /// Sets the audio level (-dBov, 0 loudest, -127 silence) written into outgoing audio
    /// packets: the bot "speaks" or falls silent.
    pub fn set_audio_level(&self, level: i8) {
        let _ = self.commands.send(Command::SetAudioLevel(level));
    }

    /// Mutes or unmutes the microphone: audio stops (or resumes) and the room is told.
    pub fn set_audio_muted(&self, muted: bool) {
        let _ = self.commands.send(Command::SetAudioMuted(muted));
    }

    /// Sends a text message on the data channel.
    pub fn send_data(&self, text: &str) {
        let _ = self.commands.send(Command::SendData(text.to_string()));
    }

    /// Sends a PLI for every video stream received.
    pub fn request_keyframes(&self) {
        let _ = self.commands.send(Command::RequestKeyframes);
    }

    /// Sends a raw datagram from the publish connection's socket to the server.
    pub fn inject(&self, datagram: Vec<u8>) {
        let _ = self.commands.send(Command::Inject(datagram));
    }

    /// Closes the signalling socket without a word (a network drop); media goes on.
    pub fn drop_signalling(&self) {
        let _ = self.commands.send(Command::DropSignalling);
    }

    /// Opens a new signalling socket and resumes the session on it (after
    /// [`Bot::drop_signalling`], or to replace a live socket).
    pub fn resume(&self) {
        let _ = self.commands.send(Command::Resume);
    }

    /// Restarts ICE on both connections, as a client whose network changed: a new publish
    /// offer with new credentials, and `restart_ice` for the server's subscribe offer.
    pub fn restart_ice(&self) {
        let _ = self.commands.send(Command::RestartIce);
    }

    /// Stops (or resumes) sending media; the connection stays up.
    pub fn pause_media(&self, paused: bool) {
        let _ = self.commands.send(Command::PauseMedia(paused));
    }

    /// Sends again, byte for byte, the RTP datagrams the publisher sent last (up to 64; needs
    /// [`BotConfig::keep_sent`]): a replay attack.
    pub fn replay_sent(&self) {
        let _ = self.commands.send(Command::ReplaySent);
    }

    /// Leaves the room; the bot stops when the server confirms.
    pub fn leave(&self) {
        let _ = self.commands.send(Command::Leave);
    }

    /// Stops the bot at once (its connections simply vanish).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// A handle that stops the bot at once, usable after [`Bot::join`] took the bot.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Waits for the bot to stop.
    pub async fn join(self) -> Result<(), BotError> {
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Publisher side: the peer, its negotiation and the media clock.
struct Publisher {
    peer: ClientPeer,
    pending: Option<SdpPendingOffer>,
    /// The video mid (`None` when publishing audio alone).
    video: Option<Mid>,
    audio: Mid,
    data: Option<ChannelId>,
    ready: bool,
    pts: Option<(Pt, Pt)>,
    /// RIDs of the video layers, lowest first (one `None` without simulcast, none without
    /// video).
    rids: Vec<Option<Rid>>,
    media: MediaOut,
}

/// RIDs of the bots' simulcast layers, lowest first.
const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

struct Bots<'a> {
    config: &'a BotConfig,
    shared: &'a Shared,
    signal: Option<Signal>,
    /// `host:port` and resource path of a WHIP/WHEP session.
    http: Option<(String, Option<String>)>,
    /// Set when the session is over.
    done: bool,
    publisher: Option<Publisher>,
    subscriber: Option<ClientPeer>,
    events: Vec<Event>,
    leaving: bool,
    /// Audio level written into outgoing audio (-dBov).
    audio_level: i8,
    /// Frames from a live encoder.
    live: Option<mpsc::Receiver<LiveFrame>>,
    /// Reassembly of received video, per SSRC (when frames are kept).
    assemblers: HashMap<u32, FrameAssembler>,
    outgoing: Vec<Outgoing>,
    /// The highest `seq` received on earlier signalling sockets.
    last_seq: u64,
    /// Media sending is paused ([`Bot::pause_media`]).
    media_paused: bool,
    /// The numbering of our messages, across signalling sockets.
    journal: SharedJournal,
    /// `room_elsewhere` redirects followed so far.
    redirects: usize,
}

/// Redirects to another node a join follows at most (cluster mode: one is the rule).
const MAX_REDIRECTS: usize = 3;

async fn run(
    config: BotConfig,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Result<(), BotError> {
    let result = run_inner(&config, &shared, &mut commands).await;
    let reason = match &result {
        Ok(()) => "left".to_string(),
        Err(e) => e.to_string(),
    };
    shared.state.lock().ended = Some(reason);
    shared.changed.notify_waiters();
    result
}

async fn run_inner(
    config: &BotConfig,
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<(), BotError> {
    let journal = SharedJournal::default();
    let signal = match config.transport {
        Transport::Signalling => {
            let mut signal = Signal::connect(&config.ws_url)
                .await?
                .with_journal(journal.clone());
            signal
                .send(&ClientMessage::Join {
                    token: config.token.clone(),
                })
                .await?;
            Some(signal)
        }
        _ => None,
    };
    let mut bot = Bots {
        config,
        shared,
        signal,
        http: None,
        done: false,
        publisher: None,
        subscriber: None,
        events: Vec::new(),
        leaving: false,
        audio_level: -30,
        live: match &config.media {
            MediaSource::Live(feed) => feed.take_receiver(),
            _ => None,
        },
        assemblers: HashMap::new(),
        outgoing: Vec::new(),
        last_seq: 0,
        media_paused: false,
        journal,
        redirects: 0,
    };
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    let mut loss = rand::rngs::StdRng::seed_from_u64(u64::from(config.tag));
    match &config.transport {
        Transport::Signalling => {}
        Transport::Whip { server, .. } => {
            bot.http = Some((server.clone(), None));
            bot.start_publishing().await?;
        }
        Transport::Whep { server, .. } => {
            bot.http = Some((server.clone(), None));
            bot.start_viewing().await?;
        }
    }
    loop {
        if bot.done {
            return Ok(());
        }
        let deadline = bot.deadline();
        tokio::select! {
            message = recv_signal(bot.signal.as_mut()) => match message {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(message)) => {
                    if bot.on_message(message).await? {
                        return Ok(());
                    }
                }
            },
            Some(command) = commands.recv() => bot.on_command(command).await?,
            received = recv_on(bot.publisher.as_mut().map(|p| &mut p.peer), &mut pub_buf) => {
                let (len, source) = received?;
                if let Some(p) = &mut bot.publisher {
                    let data = pub_buf.get(..len).unwrap_or_default();
                    p.peer.receive(Instant::now(), source, data, &mut bot.events)?;
                    bot.on_publisher_events()?;
                }
            }
            Some(frame) = recv_live(bot.live.as_mut()) => bot.on_live_frame(frame)?,
            received = recv_on(bot.subscriber.as_mut(), &mut sub_buf) => {
                let (len, source) = received?;
                let data = sub_buf.get(..len).unwrap_or_default();
                let dropped = is_rtp(data) && loss.random_range(0..100) < config.drop_rtp_percent;
                if let Some(s) = bot.subscriber.as_mut().filter(|_| !dropped) {
                    s.receive(Instant::now(), source, data, &mut bot.events)?;
                    bot.on_subscriber_events()?;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        bot.tick(Instant::now())?;
    }
}

/// Keeps up to `limit` frames from the latest keyframe of a new size on (a layer switch
/// starts the list again), so the list always decodes from its start.
fn keep_frame(frames: &mut Vec<Vec<u8>>, frame: Option<Vec<u8>>, limit: usize) {
    let Some(frame) = frame else {
        return;
    };
    let size = crate::vp8_rtp::frame_size(&frame);
    let current = frames.first().and_then(|f| crate::vp8_rtp::frame_size(f));
    if size.is_some() && size != current {
        frames.clear();
    }
    if frames.len() < limit && (!frames.is_empty() || size.is_some()) {
        frames.push(frame);
    }
}

async fn recv_signal(signal: Option<&mut Signal>) -> Option<Result<ServerMessage, SignalError>> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_live(live: Option<&mut mpsc::Receiver<LiveFrame>>) -> Option<LiveFrame> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_on(
    peer: Option<&mut ClientPeer>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match peer {
        Some(p) => p.recv(buf).await,
        None => std::future::pending().await,
    }
}

impl Bots<'_> {
    fn update(&self, f: impl FnOnce(&mut BotState)) {
        f(&mut self.shared.state.lock());
        self.shared.changed.notify_waiters();
    }

    fn deadline(&self) -> Instant {
        let mut deadline = Instant::now() + Duration::from_millis(100);
        if let Some(p) = &self.publisher {
            deadline = deadline.min(p.peer.timeout);
            if p.ready
                && let Some(due) = p.media.next_due()
            {
                deadline = deadline.min(due);
            }
        }
        if let Some(s) = &self.subscriber {
            deadline = deadline.min(s.timeout);
        }
        deadline
    }

    /// Handles a signalling message; returns `true` when the session is over.
    async fn on_message(&mut self, message: ServerMessage) -> Result<bool, BotError> {
        let mut done = false;
        match &message {
            ServerMessage::Joined {
                participant,
                resume_token,
                ..
            } => {
                let id = participant.id.clone();
                let token = resume_token.clone();
                self.update(|s| {
                    s.participant = Some(id);
                    s.joined_at = Some(Instant::now());
                    s.resume_token = token;
                });
                if self.config.publish {
                    self.start_publishing().await?;
                }
            }
            ServerMessage::PublishAnswer { sdp } => self.apply_publish_answer(sdp)?,
            ServerMessage::Resumed { last_seq } => {
                if let Some(signal) = &mut self.signal {
                    signal.resend_after(*last_seq).await?;
                }
            }
            ServerMessage::SubscribeOffer { sdp, tracks } => {
                let offer =
                    SdpOffer::from_sdp_string(sdp).map_err(|e| BotError::Sdp(e.to_string()))?;
                self.update(|s| {
                    for t in tracks {
                        s.offered
                            .insert(t.mid.clone(), (t.participant.clone(), t.track.clone()));
                    }
                });
                if self.subscriber.is_none() {
                    self.subscriber = Some(
                        ClientPeer::new(
                            Instant::now(),
                            self.config.collect_stats,
                            self.config.ice_tcp,
                        )
                        .await?,
                    );
                }
                if let Some(s) = &mut self.subscriber {
                    let answer = s.rtc.sdp_api().accept_offer(offer)?;
                    s.drain(&mut self.events)?;
                    let ufrag = s.rtc.direct_api().local_ice_credentials().ufrag;
                    self.update(|st| st.subscribe_ufrag = Some(ufrag));
                    if let Some(signal) = &mut self.signal {
                        signal
                            .send(&ClientMessage::SubscribeAnswer {
                                sdp: answer.to_sdp_string(),
                            })
                            .await?;
                    }
                    self.on_subscriber_events()?;
                }
            }
            ServerMessage::Left { .. } => done = true,
            ServerMessage::Error {
                code: ErrorCode::RoomElsewhere,
                url: Some(url),
                ..
            } if self.shared.state.lock().participant.is_none()
                && self.redirects < MAX_REDIRECTS =>
            {
                // Cluster mode: the room is on another node; join there with the same token.
                self.redirects += 1;
                let mut signal = Signal::connect(url)
                    .await?
                    .with_journal(self.journal.clone());
                signal
                    .send(&ClientMessage::Join {
                        token: self.config.token.clone(),
                    })
                    .await?;
                self.signal = Some(signal);
                self.update(|s| s.joined_via = Some(url.clone()));
            }
            ServerMessage::TrackPublished { track } => {
                let own = self.shared.state.lock().participant.as_ref() == Some(&track.participant);
                if own {
                    let entry = (track.kind.clone(), track.id.clone());
                    self.update(|s| s.own_tracks.push(entry));
                }
            }
            _ => {}
        }
        self.update(|s| s.messages.push(message));
        Ok(done
            || self.leaving
                && matches!(
                    self.shared.state.lock().messages.last(),
                    Some(ServerMessage::Left { .. })
                ))
    }

    async fn start_publishing(&mut self) -> Result<(), BotError> {
        let now = Instant::now();
        let mut peer = ClientPeer::new(now, self.config.collect_stats, self.config.ice_tcp).await?;
        if self.config.keep_sent {
            peer.sent_rtp = Some(Default::default());
        }
        let tag = self.config.tag.to_string();
        let mut api = peer.rtc.sdp_api();
        let simulcast = self.config.simulcast.then(|| {
            let mut s = Simulcast::new();
            for rid in SIMULCAST_RIDS {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = self.config.publish_video.then(|| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(tag.clone()),
                None,
                simulcast,
            )
        });
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, Some(tag), None, None);
        api.add_channel("data".to_string());
        let Some((offer, pending)) = api.apply() else {
            return Err(BotError::Sdp("nothing to offer".into()));
        };
        peer.drain(&mut self.events)?;
        let rids: Vec<Option<Rid>> = if !self.config.publish_video {
            Vec::new()
        } else if self.config.simulcast {
            SIMULCAST_RIDS.iter().map(|r| Some(Rid::from(*r))).collect()
        } else {
            vec![None]
        };
        let synthetic = SyntheticVideo {
            tag: self.config.tag,
            fps: self.config.fps,
            packets_per_frame: self.config.packets_per_frame,
            packet_bytes: self.config.video_packet_bytes,
            keyframe_interval: self.config.keyframe_interval,
        };
        let media = MediaOut::new(&self.config.media, synthetic, rids.len(), now);
        self.publisher = Some(Publisher {
            peer,
            pending: Some(pending),
            video,
            audio,
            data: None,
            ready: false,
            pts: None,
            rids,
            media,
        });
        let mut sdp = offer.to_sdp_string();
        if let Some(mangle) = self.config.mangle_offer {
            sdp = mangle(&sdp);
        }
        match &mut self.signal {
            Some(signal) => {
                let sources = Default::default();
                signal
                    .send(&ClientMessage::PublishOffer { sdp, sources })
                    .await?;
            }
            None => {
                let answer = self.post_offer(&sdp).await?;
                self.apply_publish_answer(&answer)?;
            }
        }
        Ok(())
    }

    /// A new publish offer with new ICE credentials, and `restart_ice` for the subscribe
    /// connection (whose offers come from the server), if there is one.
    async fn restart_ice(&mut self) -> Result<(), BotError> {
        let Some(signal) = &mut self.signal else {
            return Ok(());
        };
        if let Some(p) = &mut self.publisher {
            let mut api = p.peer.rtc.sdp_api();
            api.ice_restart(true);
            if let Some((offer, pending)) = api.apply() {
                p.peer.drain(&mut self.events)?;
                p.pending = Some(pending);
                let sdp = offer.to_sdp_string();
                let sources = Default::default();
                signal
                    .send(&ClientMessage::PublishOffer { sdp, sources })
                    .await?;
            }
        }
        // Only a subscribe connection that exists can be restarted (the server makes it with
        // its first offer; a bot alone in a room has none yet).
        if self.subscriber.is_some() {
            signal.send(&ClientMessage::RestartIce).await?;
        }
        self.on_publisher_events()
    }

    fn apply_publish_answer(&mut self, sdp: &str) -> Result<(), BotError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| BotError::Sdp(e.to_string()))?;
        if let Some(p) = &mut self.publisher
            && let Some(pending) = p.pending.take()
        {
            p.peer.rtc.sdp_api().accept_answer(pending, answer)?;
            p.peer.drain(&mut self.events)?;
            if !p.ready {
                p.ready = true;
                p.media.start(Instant::now());
            }
            self.on_publisher_events()?;
        }
        Ok(())
    }

    /// WHEP: offers to receive one audio and one video track.
    async fn start_viewing(&mut self) -> Result<(), BotError> {
        let mut peer = ClientPeer::new(
            Instant::now(),
            self.config.collect_stats,
            self.config.ice_tcp,
        )
        .await?;
        let mut api = peer.rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let Some((offer, pending)) = api.apply() else {
            return Err(BotError::Sdp("nothing to offer".into()));
        };
        peer.drain(&mut self.events)?;
        self.subscriber = Some(peer);
        let answer = self.post_offer(&offer.to_sdp_string()).await?;
        let answer =
            SdpAnswer::from_sdp_string(&answer).map_err(|e| BotError::Sdp(e.to_string()))?;
        if let Some(s) = &mut self.subscriber {
            s.rtc.sdp_api().accept_answer(pending, answer)?;
            s.drain(&mut self.events)?;
        }
        self.on_subscriber_events()
    }

    /// POSTs an offer to the WHIP/WHEP endpoint; returns the answer.
    async fn post_offer(&mut self, sdp: &str) -> Result<String, BotError> {
        let path = match &self.config.transport {
            _ if self.config.http_path.is_some() => {
                self.config.http_path.clone().unwrap_or_default()
            }
            Transport::Whip { room, .. } => format!("/whip/{room}"),
            Transport::Whep {
                room, participant, ..
            } => match participant {
                Some(p) => format!("/whep/{room}?participant={p}"),
                None => format!("/whep/{room}"),
            },
            Transport::Signalling => return Err(BotError::Sdp("no HTTP endpoint".into())),
        };
        let Some((server, location)) = &mut self.http else {
            return Err(BotError::Sdp("no HTTP endpoint".into()));
        };
        let auth = format!("Bearer {}", self.config.token);
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/sdp"),
        ];
        let response = http_request(server, "POST", &path, &headers, sdp).await?;
        if response.status != 201 {
            return Err(BotError::Http(response.status, response.body));
        }
        *location = response.header("location").map(str::to_string);
        let resource = location.clone();
        self.update(|s| {
            s.resource = resource;
            s.joined_at = Some(Instant::now());
        });
        Ok(response.body)
    }

    async fn on_command(&mut self, command: Command) -> Result<(), BotError> {
        match command {
            Command::Signal(message) => {
                if let Some(signal) = &mut self.signal {
                    signal.send(&message).await?;
                }
            }
            Command::DropSignalling => {
                if let Some(signal) = self.signal.take() {
                    self.last_seq = self.last_seq.max(signal.last_seq());
                }
                let sent = self.journal.lock().last_seq();
                self.update(|s| s.sent_before_drop = sent);
            }
            Command::Resume => {
                if let Some(signal) = self.signal.take() {
                    self.last_seq = self.last_seq.max(signal.last_seq());
                }
                let token = self
                    .shared
                    .state
                    .lock()
                    .resume_token
                    .clone()
                    .unwrap_or_default();
                let mut signal = Signal::connect(&self.config.ws_url)
                    .await?
                    .with_journal(self.journal.clone());
                signal
                    .send(&ClientMessage::Resume {
                        token,
                        last_seq: self.last_seq,
                    })
                    .await?;
                self.signal = Some(signal);
            }
            Command::RestartIce => self.restart_ice().await?,
            Command::PauseMedia(paused) => {
                self.media_paused = paused;
                self.update(|s| s.media_paused = paused);
            }
            Command::ReplaySent => {
                if let Some(p) = &self.publisher
                    && let (Some(server), Some(kept)) = (p.peer.server, &p.peer.sent_rtp)
                {
                    for datagram in kept {
                        p.peer.send_raw(datagram, server).await;
                    }
                }
            }
            Command::SetAudioLevel(level) => self.audio_level = level,
            Command::SetAudioMuted(muted) => {
                if let Some(p) = &mut self.publisher {
                    p.media.audio_muted = muted;
                }
                let track = self
                    .shared
                    .state
                    .lock()
                    .own_tracks
                    .iter()
                    .find_map(|(kind, id)| (kind == "audio").then(|| id.clone()));
                if let (Some(signal), Some(track)) = (&mut self.signal, track) {
                    signal.send(&ClientMessage::Mute { track, muted }).await?;
                }
                self.update(|s| s.audio_muted = muted);
            }
            Command::SendData(text) => {
                if let Some(p) = &mut self.publisher
                    && let Some(id) = p.data
                    && let Some(mut channel) = p.peer.rtc.channel(id)
                {
                    let _ = channel.write(false, text.as_bytes())?;
                    p.peer.drain(&mut self.events)?;
                }
            }
            Command::RequestKeyframes => {
                if let Some(s) = &mut self.subscriber {
                    let video: Vec<u32> = self
                        .shared
                        .state
                        .lock()
                        .streams
                        .iter()
                        .filter(|(_, r)| r.kind == PayloadKind::Vp8)
                        .map(|(ssrc, _)| *ssrc)
                        .collect();
                    for ssrc in video {
                        let mut api = s.rtc.direct_api();
                        if let Some(rx) = api.stream_rx(&Ssrc::from(ssrc)) {
                            rx.request_keyframe(KeyframeRequestKind::Pli);
                        }
                        s.drain(&mut self.events)?;
                    }
                }
            }
            Command::Inject(datagram) => {
                if let Some(p) = &self.publisher
                    && let Some(server) = p.peer.server
                {
                    p.peer.send_raw(&datagram, server).await;
                }
            }
            Command::Leave => {
                self.leaving = true;
                if let Some(signal) = &mut self.signal {
                    signal.send(&ClientMessage::Leave).await?;
                } else if let Some((server, Some(location))) = &self.http {
                    let response = http_request(server, "DELETE", location, &[], "").await?;
                    if response.status != 200 {
                        return Err(BotError::Http(response.status, response.body));
                    }
                    self.done = true;
                }
            }
        }
        Ok(())
    }

    fn on_publisher_events(&mut self) -> Result<(), BotError> {
        for event in std::mem::take(&mut self.events) {
            match event {
                Event::Connected => self.update(|s| s.publish_connected = true),
                Event::IceConnectionStateChange(ice) => self.update(|s| s.publish_ice.push(ice)),
                Event::KeyframeRequest(request) => {
                    if let Some(p) = &mut self.publisher {
                        let layer = request
                            .rid
                            .and_then(|rid| p.rids.iter().position(|r| *r == Some(rid)));
                        p.media.request_keyframe(layer);
                    }
                    self.update(|s| s.keyframe_requests += 1);
                }
                Event::ChannelOpen(id, _) => {
                    if let Some(p) = &mut self.publisher {
                        p.data = Some(id);
                    }
                    self.update(|s| s.data_open = true);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn on_subscriber_events(&mut self) -> Result<(), BotError> {
        let Some(sub) = &mut self.subscriber else {
            self.events.clear();
            return Ok(());
        };
        let events = std::mem::take(&mut self.events);
        let mut state = self.shared.state.lock();
        for event in events {
            match event {
                Event::Connected => state.subscribe_connected = true,
                Event::IceConnectionStateChange(ice) => state.subscribe_ice.push(ice),
                Event::RtpPacket(packet) => {
                    let (codec, clock_rate) = sub
                        .rtc
                        .codec_config()
                        .find(|p| p.pt() == packet.header.payload_type)
                        .map(|p| (Some(p.spec().codec), p.spec().clock_rate.get()))
                        .unwrap_or((None, 90_000));
                    if codec == Some(Codec::Tele) {
                        let rate = clock_rate;
                        Tone::record(
                            &mut state.tones,
                            packet.header.timestamp,
                            &packet.payload,
                            rate,
                        );
                    }
                    let kind = match codec {
                        Some(Codec::Vp8) if self.config.verify_payloads => PayloadKind::Vp8,
                        Some(Codec::Opus) if self.config.verify_payloads => PayloadKind::Opus,
                        _ => PayloadKind::Foreign,
                    };
                    let ssrc = *packet.header.ssrc;
                    let stream = match state.streams.entry(ssrc) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let mid = sub
                                .rtc
                                .direct_api()
                                .stream_rx(&packet.header.ssrc)
                                .map(|rx| rx.mid().to_string())
                                .unwrap_or_default();
                            e.insert(ReceivedStream {
                                kind,
                                mid,
                                tags: BTreeSet::new(),
                                seqs: Vec::new(),
                                keyframes: 0,
                                starts_with_keyframe: false,
                                layer_changes: Vec::new(),
                                layer: None,
                                highest_packet: None,
                                picture_id: None,
                                picture_id_jumps: 0,
                                quality: StreamQuality::default(),
                                frames: Vec::new(),
                            })
                        }
                    };
                    let seq = *packet.seq_no;
                    let video = codec == Some(Codec::Vp8);
                    let first = stream.quality.packets == 0;
                    stream.quality.on_packet(
                        packet.timestamp,
                        seq,
                        &packet.payload,
                        packet.header.marker,
                        video,
                    );
                    if codec == Some(Codec::Opus) {
                        stream.quality.on_timing(
                            packet.timestamp,
                            packet.header.timestamp,
                            clock_rate,
                        );
                    }
                    if self.config.record_seqs {
                        stream.seqs.push(seq);
                    }
                    if video && self.config.keep_frames > 0 {
                        let frame = self.assemblers.entry(ssrc).or_default().push(
                            seq,
                            &packet.payload,
                            packet.header.marker,
                        );
                        keep_frame(&mut stream.frames, frame, self.config.keep_frames);
                    }
                    if kind == PayloadKind::Foreign {
                        continue; // Real media from an encoder: counted, not verified.
                    }
                    match Signature::verify(kind, &packet.payload) {
                        Some(sig) => {
                            if first {
                                stream.starts_with_keyframe = sig.keyframe && sig.frame_start;
                            }
                            stream.tags.insert(sig.tag);
                            stream.highest_packet = stream.highest_packet.max(Some(sig.packet));
                            if sig.keyframe && sig.frame_start {
                                stream.keyframes += 1;
                            }
                            if let Some(id) = synthetic::vp8_picture_id(&packet.payload)
                                .filter(|_| sig.frame_start)
                            {
                                let follows = stream
                                    .picture_id
                                    .is_none_or(|last| (last + 1) & 0x7fff == id);
                                stream.picture_id_jumps += u32::from(!follows);
                                stream.picture_id = Some(id);
                            }
                            if stream.layer != Some(sig.layer) {
                                stream.layer = Some(sig.layer);
                                let started = sig.keyframe && sig.frame_start;
                                stream.layer_changes.push((seq, sig.layer, started));
                            }
                        }
                        None => state.bad_payloads += 1,
                    }
                }
                Event::MediaIngressStats(stats) => {
                    let key = (stats.mid.to_string(), stats.rid.map(|r| r.to_string()));
                    state
                        .feedback
                        .insert(key, (stats.nacks, stats.plis, stats.firs));
                }
                Event::ChannelData(data) if !data.binary => {
                    state
                        .data
                        .push(String::from_utf8_lossy(&data.data).into_owned());
                }
                _ => {}
            }
        }
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Timeouts of both peers, and media that is due.
    fn tick(&mut self, now: Instant) -> Result<(), BotError> {
        if let Some(s) = &mut self.subscriber
            && s.timeout <= now
        {
            s.tick(now, &mut self.events)?;
            self.on_subscriber_events()?;
        }
        if self.publisher.is_some() {
            self.send_media(now)?;
            if let Some(p) = &mut self.publisher
                && p.peer.timeout <= now
            {
                p.peer.tick(now, &mut self.events)?;
            }
            self.on_publisher_events()?;
        }
        Ok(())
    }

    fn send_media(&mut self, now: Instant) -> Result<(), BotError> {
        let Some(p) = &mut self.publisher else {
            return Ok(());
        };
        if !p.ready || self.media_paused {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.outgoing);
        p.media.due(now, &mut out);
        let result = self.write_outgoing(now, &mut out);
        self.outgoing = out;
        result
    }

    /// A frame from the live encoder: sent at once.
    fn on_live_frame(&mut self, frame: LiveFrame) -> Result<(), BotError> {
        let now = Instant::now();
        let Some(p) = self.publisher.as_mut().filter(|p| p.ready) else {
            return Ok(()); // Not connected yet: the frame is dropped, as a camera's would be.
        };
        let mut out = std::mem::take(&mut self.outgoing);
        p.media.live(frame, now, &mut out);
        let result = self.write_outgoing(now, &mut out);
        self.outgoing = out;
        result?;
        self.on_publisher_events()
    }

    /// Writes RTP packets through the publish connection (and empties `out`).
    fn write_outgoing(&mut self, now: Instant, out: &mut Vec<Outgoing>) -> Result<(), BotError> {
        // Before anything goes out: no packet with a higher counter has been sent.
        let written: Vec<(PayloadKind, u32)> = out
            .iter()
            .filter_map(|p| {
                let kind = if p.layer.is_some() {
                    PayloadKind::Vp8
                } else {
                    PayloadKind::Opus
                };
                Some((kind, Signature::packet_counter(kind, &p.payload)?))
            })
            .collect();
        if self.publisher.is_some() && !written.is_empty() {
            self.update(|s| {
                for (kind, counter) in written {
                    s.last_written.insert(kind, counter);
                }
            });
        }
        let audio_level = self.audio_level;
        let Some(p) = &mut self.publisher else {
            out.clear();
            return Ok(());
        };
        if p.pts.is_none() {
            let find = |codec: Codec| {
                p.peer
                    .rtc
                    .codec_config()
                    .find(|c| c.spec().codec == codec)
                    .map(|c| c.pt())
            };
            p.pts = find(Codec::Vp8).zip(find(Codec::Opus));
        }
        let Some((vp8, opus)) = p.pts else {
            out.clear();
            return Ok(());
        };
        let sent = out.len() as u64;
        for packet in out.drain(..) {
            let mut api = p.peer.rtc.direct_api();
            match packet.layer {
                Some(layer) => {
                    let rid = p.rids.get(layer).copied().flatten();
                    let write =
                        RtpWrite::new(vp8, packet.seq.into(), packet.ts, now, packet.payload)
                            .marker(packet.marker)
                            .nackable(true);
                    if let Some(mid) = p.video
                        && let Some(tx) = api.stream_tx_by_mid(mid, rid)
                    {
                        tx.write_rtp(write);
                    }
                }
                None => {
                    let level = packet.level.unwrap_or(audio_level);
                    let ext = ExtensionValues {
                        audio_level: Some(level),
                        voice_activity: Some(level > -100),
                        ..ExtensionValues::default()
                    };
                    let write =
                        RtpWrite::new(opus, packet.seq.into(), packet.ts, now, packet.payload)
                            .ext_vals(ext);
                    if let Some(tx) = api.stream_tx_by_mid(p.audio, None) {
                        tx.write_rtp(write);
                    }
                }
            }
            p.peer.drain(&mut self.events)?;
        }
        if sent > 0 {
            p.peer.tick(now, &mut self.events)?;
            self.update(|s| s.packets_sent += sent);
        }
        Ok(())
    }
}
