//! The signalling WebSocket's driver: one task per session, feeding the client's frames to its
//! [`Session`], its peers' events too, and its outbox to the socket (`link.rs`).
//!
//! A session outlives its socket. When the socket drops (closed, failed, or silent past the
//! liveness limit) without a `leave`, the participant stays in its room for a grace period:
//! its peers keep forwarding media and its messages queue. A new socket whose first message is
//! `resume` with the session's token takes over: it gets `resumed`, then every message the
//! client missed (they are numbered, see `replay.rs`), and the others never saw it leave. Past
//! the grace period the participant leaves as if it had said so.
//!
//! Deadlines: a socket has [`SignallingTimeouts::join`] to send `join` or `resume`; a joined
//! socket is pinged and considered dead after [`SignallingTimeouts::silence`] without a frame.

mod link;
mod replay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span};

use self::link::{Link, LinkEvent, Outgoing, Sink, Stream, next_event};
use self::replay::Replay;
use crate::AppState;
use crate::http::recv_kick;
use crate::outbox::{Outbox, outbox};
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage, parse_numbered_client_message};
use crate::rate_limit::TokenBucket;
use crate::session::{Flow, Session};

/// Messages per second a client may send on its WebSocket, on average.
pub const WS_RATE: f64 = 50.0;
/// Messages a client may send at once.
pub const WS_BURST: f64 = 200.0;
/// Messages refused for rate before the socket is closed.
const WS_MAX_REFUSED: u32 = 100;

/// Timing of signalling connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignallingTimeouts {
    /// A socket that has sent neither `join` nor `resume` by then is closed. Default 10 s.
    pub join: Duration,
    /// How long a participant whose socket dropped may `resume` before it leaves its room
    /// (zero: it leaves at once). Default 20 s.
    pub resume_grace: Duration,
    /// The server pings each socket this often. Default 10 s.
    pub ping: Duration,
    /// A socket that sent nothing (not even a pong) for this long is dead. Default 30 s.
    pub silence: Duration,
}

impl Default for SignallingTimeouts {
    fn default() -> Self {
        Self {
            join: Duration::from_secs(10),
            resume_grace: Duration::from_secs(20),
            ping: Duration::from_secs(10),
            silence: Duration::from_secs(30),
        }
    }
}

/// A new socket asking to carry on a session.
struct Takeover {
    sink: Sink,
    stream: Stream,
    last_seq: u64,
}

/// The sessions that may be resumed, by resume token (one entry per joined WebSocket
/// session, removed when it ends).
#[derive(Default)]
pub struct Resumable {
    sessions: Mutex<HashMap<String, mpsc::Sender<Takeover>>>,
}

impl Resumable {
    fn register(&self, takeovers: mpsc::Sender<Takeover>) -> String {
        let token = new_resume_token();
        self.sessions.lock().insert(token.clone(), takeovers);
        token
    }

    fn unregister(&self, token: &str) {
        self.sessions.lock().remove(token);
    }

    fn find(&self, token: &str) -> Option<mpsc::Sender<Takeover>> {
        self.sessions.lock().get(token).cloned()
    }

    /// Sessions that may be resumed now.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 128 random bits, base64url.
fn new_resume_token() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How a session's driver stops.
enum Ending {
    /// The participant leaves its room for this reason.
    Leave(String),
    /// Nothing to leave (never joined, left already, or handed its socket to another session).
    Done,
}

/// Drives a new WebSocket until its session ends.
pub(crate) async fn run(socket: WebSocket, state: Arc<AppState>) {
    let (sink, stream) = socket.split();
    let (outbox, queue) = outbox();
    let outgoing = Outgoing {
        queue,
        replay: Replay::default(),
    };
    let timeouts = state.config.signalling;
    let link = Link::start(sink, stream, outgoing, Vec::new(), timeouts.ping);
    let driver = Driver::new(state, outbox, link);
    driver.run().instrument(info_span!("session")).await;
}

struct Driver {
    state: Arc<AppState>,
    timeouts: SignallingTimeouts,
    session: Session,
    outbox: Outbox,
    peer_events: mpsc::UnboundedReceiver<sfu::PeerEvent>,
    kicked: Option<mpsc::UnboundedReceiver<String>>,
    link: Option<Link>,
    /// The outgoing messages while no socket is attached.
    parked: Option<Outgoing>,
    /// When the socket dropped (while detached).
    detached_at: Option<Instant>,
    started: Instant,
    resume_token: Option<String>,
    takeovers: mpsc::Receiver<Takeover>,
    takeovers_tx: mpsc::Sender<Takeover>,
    bucket: TokenBucket,
    refused: u32,
    /// The highest `seq` of the client's messages handled.
    client_seq: u64,
}

impl Driver {
    fn new(state: Arc<AppState>, outbox: Outbox, link: Link) -> Self {
        let (events, peer_events) = mpsc::unbounded_channel();
        let mut session = Session::new(state.clone(), outbox.clone(), events);
        let kicked = session.take_kick_receiver();
        let (takeovers_tx, takeovers) = mpsc::channel(1);
        Self {
            timeouts: state.config.signalling,
            state,
            session,
            outbox,
            peer_events,
            kicked,
            link: Some(link),
            parked: None,
            detached_at: None,
            started: Instant::now(),
            resume_token: None,
            takeovers,
            takeovers_tx,
            bucket: TokenBucket::new(WS_RATE, WS_BURST),
            refused: 0,
            client_seq: 0,
        }
    }

    /// The next deadline: joining, liveness of the socket, or the grace period.
    fn deadline(&self) -> Instant {
        if !self.session.is_joined() {
            self.started + self.timeouts.join
        } else if let Some(link) = &self.link {
            link.last_heard + self.timeouts.silence
        } else {
            self.detached_at.unwrap_or(self.started) + self.timeouts.resume_grace
        }
    }

    async fn run(mut self) {
        let ending = loop {
            let deadline = self.deadline();
            tokio::select! {
                Some(reason) = recv_kick(&mut self.kicked) => break Ending::Leave(reason),
                () = self.outbox.overflowed() => {
                    debug!("the client does not read its messages; ending its session");
                    break Ending::Leave("the client did not read its messages".into());
                }
                event = next_event(&mut self.link) => {
                    let ending = match event {
                        LinkEvent::Frame(frame) => self.on_frame(frame).await,
                        LinkEvent::WriterEnded => self.link_lost("the socket failed").await,
                    };
                    if let Some(ending) = ending {
                        break ending;
                    }
                }
                Some(event) = self.peer_events.recv() => self.session.on_peer_event(event).await,
                Some(takeover) = self.takeovers.recv() => {
                    if let Some(ending) = self.take_over(takeover).await {
                        break ending;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(ending) = self.on_deadline().await {
                        break ending;
                    }
                }
            }
        };
        if let Some(token) = &self.resume_token {
            self.state.resumable.unregister(token);
        }
        if let Ending::Leave(reason) = ending {
            self.session.leave(&reason).await;
        }
        let Driver {
            session,
            outbox,
            link,
            ..
        } = self;
        drop(session);
        drop(outbox);
        // The writer ends once `left` is written (or every outbox sender is gone).
        if let Some(mut link) = link {
            let _ = tokio::time::timeout(Duration::from_secs(5), link.writer_ended()).await;
        }
    }

    /// A frame (or the end) of the attached socket.
    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Option<Ending> {
        if let Some(link) = &mut self.link {
            link.last_heard = Instant::now();
        }
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                self.session.reply(ServerMessage::error(
                    ErrorCode::BadMessage,
                    "send JSON in text frames",
                ));
                return None;
            }
            Some(Ok(Message::Close(_))) | None => {
                return self.link_lost("the client closed the socket").await;
            }
            Some(Ok(_)) => return None,
            Some(Err(e)) => {
                // Oversized frames and protocol violations end this socket only.
                debug!(error = %e, "websocket error");
                return self.link_lost("websocket error").await;
            }
        };
        if !self.bucket.allow(std::time::Instant::now()) {
            self.refused += 1;
            if self.refused > WS_MAX_REFUSED {
                debug!("message flood; closing this socket");
                return Some(Ending::Leave("message flood".into()));
            }
            self.session.reply(ServerMessage::error(
                ErrorCode::RateLimited,
                format!("more than {WS_RATE} messages per second; slow down"),
            ));
            return None;
        }
        let (message, seq) = match parse_numbered_client_message(&text) {
            Ok(parsed) => parsed,
            Err(refusal) => {
                self.session.reply(refusal.into());
                return None;
            }
        };
        if let Some(seq) = seq {
            self.client_seq = self.client_seq.max(seq);
        }
        match message {
            ClientMessage::Resume { token, last_seq } if !self.session.is_joined() => {
                return self.resume_elsewhere(&token, last_seq).await;
            }
            ClientMessage::Join { .. }
                if !self.session.is_joined()
                    && self.resume_token.is_none()
                    && !self.timeouts.resume_grace.is_zero() =>
            {
                let token = self.state.resumable.register(self.takeovers_tx.clone());
                self.session.offer_resume(token.clone());
                self.resume_token = Some(token);
            }
            _ => {}
        }
        match self.session.handle(message).await {
            Flow::Continue => None,
            Flow::Stop => Some(Ending::Done),
        }
    }

    /// The attached socket is gone: a joined participant waits for a resume (if allowed),
    /// anyone else ends.
    async fn link_lost(&mut self, why: &str) -> Option<Ending> {
        let link = self.link.take()?;
        let (end, _stream) = link.stop().await;
        if !self.session.is_joined() {
            return Some(Ending::Done);
        }
        let Some(end) = end else {
            return Some(Ending::Leave("connection lost".into()));
        };
        if self.timeouts.resume_grace.is_zero() {
            return Some(Ending::Leave("connection closed".into()));
        }
        info!(why, grace = ?self.timeouts.resume_grace, "signalling socket lost; waiting for a resume");
        self.parked = Some(end.outgoing);
        self.detached_at = Some(Instant::now());
        None
    }

    async fn on_deadline(&mut self) -> Option<Ending> {
        if !self.session.is_joined() {
            self.session.reply(ServerMessage::error(
                ErrorCode::NotJoined,
                format!(
                    "no join within {} s; closing the socket",
                    self.timeouts.join.as_secs_f32()
                ),
            ));
            // Written before the socket closes: the writer drains the outbox first.
            return Some(Ending::Done);
        }
        if self.link.is_some() {
            return self.link_lost("no frame from the client (liveness)").await;
        }
        info!("no resume within the grace period");
        Some(Ending::Leave("connection lost".into()))
    }

    /// This socket's first message was `resume`: hand the socket to that session.
    async fn resume_elsewhere(&mut self, token: &str, last_seq: u64) -> Option<Ending> {
        let target = self.state.resumable.find(token);
        let link = self.link.take()?;
        let (end, stream) = link.stop().await;
        let sink = end.and_then(|e| e.sink)?;
        let takeover = Takeover {
            sink,
            stream,
            last_seq,
        };
        match target {
            Some(target) => {
                if let Err(mpsc::error::SendError(takeover)) = target.send(takeover).await {
                    refuse_resume(takeover.sink, "the session has ended").await;
                }
            }
            None => refuse_resume(takeover.sink, "no session to resume with that token").await,
        }
        Some(Ending::Done)
    }

    /// A new socket takes over this session.
    async fn take_over(&mut self, takeover: Takeover) -> Option<Ending> {
        if !self.session.is_joined() {
            refuse_resume(takeover.sink, "the session has not joined").await;
            return None;
        }
        let outgoing = match self.link.take() {
            Some(link) => {
                debug!("a new socket replaces the current one");
                link.stop().await.0.map(|end| end.outgoing)
            }
            None => self.parked.take(),
        };
        let Some(outgoing) = outgoing else {
            refuse_resume(takeover.sink, "the session has ended").await;
            return Some(Ending::Leave("connection lost".into()));
        };
        let Some(missed) = outgoing.replay.since(takeover.last_seq) else {
            refuse_resume(
                takeover.sink,
                "messages you missed are no longer kept; join again",
            )
            .await;
            return Some(Ending::Leave("could not resume".into()));
        };
        let resumed = serde_json::to_string(&ServerMessage::Resumed {
            last_seq: self.client_seq,
        })
        .unwrap_or_default();
        info!(missed = missed.len(), "session resumed on a new socket");
        let preamble = std::iter::once(resumed).chain(missed).collect();
        self.link = Some(Link::start(
            takeover.sink,
            takeover.stream,
            outgoing,
            preamble,
            self.timeouts.ping,
        ));
        self.detached_at = None;
        None
    }
}

/// Tells a socket its `resume` was refused, and closes it.
async fn refuse_resume(mut sink: Sink, why: &str) {
    let refusal = ServerMessage::error(ErrorCode::ResumeFailed, format!("{why}; join again"));
    if let Ok(text) = serde_json::to_string(&refusal) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = sink.send(Message::Text(text.into())).await;
            let _ = sink.close().await;
        })
        .await;
    }
}
