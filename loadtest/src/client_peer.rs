//! One client-side WebRTC peer: a str0m `Rtc` (full ICE, RTP mode) on its own UDP socket, or
//! with everything carried over one ICE-TCP connection to the server (RFC 4571 framing).
//!
//! Over TCP the client's state machine still believes it speaks UDP to the server's first
//! candidate: the connection carries those packets both ways, and the server sees a real
//! ICE-TCP client (STUN check first, then DTLS and SRTP over the framed stream). That is what
//! the load tests need to measure the server's TCP path.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// How a client peer's packets travel.
enum Link {
    Udp(UdpSocket),
    /// One ICE-TCP connection: frames to write, frames read.
    Tcp {
        out: mpsc::UnboundedSender<Vec<u8>>,
        frames: mpsc::Receiver<Vec<u8>>,
    },
}

/// A client peer and its socket.
pub(crate) struct ClientPeer {
    pub(crate) rtc: Rtc,
    link: Link,
    local: SocketAddr,
    /// When the state machine next wants a timeout.
    pub(crate) timeout: Instant,
    /// The server address this peer last sent to (over TCP: the one it believes it reaches).
    pub(crate) server: Option<SocketAddr>,
    /// The last RTP datagrams sent (encrypted, as on the wire), when kept (replay tests).
    pub(crate) sent_rtp: Option<std::collections::VecDeque<Vec<u8>>>,
}

/// RTP datagrams kept for a replay, at most.
const KEPT_RTP: usize = 64;

/// RTP, not RTCP (RFC 5761): version 2 and a payload type outside RTCP's 72-79 (masked).
pub(crate) fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [b0, b1, ..] => b0 >> 6 == 2 && !(72..=79).contains(&(b1 & 0x7f)),
        _ => false,
    }
}

impl ClientPeer {
    /// A peer on a fresh loopback socket (or, with `ice_tcp`, a TCP connection to the server's
    /// ICE-TCP address), with the codecs the bots use; with `stats`, str0m reports receive
    /// statistics every second.
    pub(crate) async fn new(
        now: Instant,
        stats: bool,
        ice_tcp: Option<SocketAddr>,
    ) -> io::Result<Self> {
        let (link, local) = match ice_tcp {
            None => {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                // Sends are `try_send_to` (the state machine's output is drained without
                // waiting), which fails with WouldBlock until the runtime has seen the new
                // socket writable once: a subscribe connection's first connectivity check,
                // written the moment the offer is accepted, was lost that way and the check
                // went again only after STUN's 250 ms retransmission timeout.
                socket.writable().await?;
                let local = socket.local_addr()?;
                (Link::Udp(socket), local)
            }
            Some(server) => {
                // Connected at the first packet, as an active ICE-TCP client does: a
                // connection that sent no STUN check for a while would be dropped.
                let (out, frames) = tcp_link(server);
                // The local address is only this agent's own idea (Chromium says port 9).
                (
                    Link::Tcp { out, frames },
                    SocketAddr::from(([127, 0, 0, 1], 9)),
                )
            }
        };
        let mut config = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(true)
            .enable_opus(true, false)
            .enable_pcmu(true, false)
            .enable_pcma(true, false)
            .set_stats_interval(stats.then_some(Duration::from_secs(1)));
        // RFC 4733 telephone events (DTMF) beside Opus and G.711, at the payload types
        // Chromium uses: a bot hears the digits a browser sends.
        for (pt, rate) in [
            (110, Frequency::FORTY_EIGHT_KHZ),
            (126, Frequency::EIGHT_KHZ),
        ] {
            config.codec_config().add_config(
                Pt::from(pt),
                None,
                Codec::Tele,
                rate,
                None,
                FormatParams::default(),
            );
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(local, "udp").map_err(io::Error::other)?;
        rtc.add_local_candidate(candidate);
        // Start the state machine's clock now: str0m's ICE agent has no time until its first
        // timeout, and a connection with nothing else to time (a subscribe offer carrying only
        // the data channel) would then wait forever to start its checks.
        rtc.handle_input(Input::Timeout(now))
            .map_err(io::Error::other)?;
        Ok(Self {
            rtc,
            link,
            local,
            timeout: now,
            server: None,
            sent_rtp: None,
        })
    }

    /// The next datagram (or frame) from the server: its length in `buf`, and where it came
    /// from.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &mut self.link {
            Link::Udp(socket) => socket.recv_from(buf).await,
            Link::Tcp { frames, .. } => {
                let frame = frames.recv().await.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::ConnectionReset, "ICE-TCP closed")
                })?;
                let len = frame.len().min(buf.len());
                buf.get_mut(..len)
                    .unwrap_or_default()
                    .copy_from_slice(frame.get(..len).unwrap_or_default());
                let from = self.server.unwrap_or(self.local);
                Ok((len, from))
            }
        }
    }

    /// Sends raw bytes to the server (for malformed-input tests).
    pub(crate) async fn send_raw(&self, datagram: &[u8], to: SocketAddr) {
        match &self.link {
            Link::Udp(socket) => {
                let _ = socket.send_to(datagram, to).await;
            }
            Link::Tcp { out, .. } => {
                let _ = out.send(frame(datagram));
            }
        }
    }

    /// Polls until only a timeout is left: sends datagrams, collects events.
    pub(crate) fn drain(&mut self, events: &mut Vec<Event>) -> Result<(), RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => match &self.link {
                    Link::Udp(socket) => {
                        self.server = Some(t.destination);
                        // A full socket buffer loses the datagram, as the network would.
                        let _ = socket.try_send_to(&t.contents, t.destination);
                        if let Some(kept) = &mut self.sent_rtp
                            && is_rtp(&t.contents)
                        {
                            if kept.len() >= KEPT_RTP {
                                kept.pop_front();
                            }
                            kept.push_back(t.contents.to_vec());
                        }
                    }
                    Link::Tcp { out, .. } => {
                        // The connection stands for the first server address tried.
                        let server = *self.server.get_or_insert(t.destination);
                        if t.destination == server {
                            let _ = out.send(frame(&t.contents));
                        }
                    }
                },
                Output::Event(e) => events.push(e),
            }
        }
    }

    /// Feeds a received datagram.
    pub(crate) fn receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), RtcError> {
        if let Ok(r) = Receive::new(Protocol::Udp, source, self.local, data) {
            self.rtc.handle_input(Input::Receive(now, r))?;
        }
        self.drain(events)
    }

    /// Moves time forward.
    pub(crate) fn tick(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<(), RtcError> {
        self.rtc.handle_input(Input::Timeout(now))?;
        self.drain(events)
    }
}

/// A packet as an RFC 4571 frame.
fn frame(packet: &[u8]) -> Vec<u8> {
    let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet.get(..usize::from(len)).unwrap_or_default());
    out
}

/// An ICE-TCP connection to `server`, opened when the first frame is to be sent: frames to
/// send, frames read.
fn tcp_link(server: SocketAddr) -> (mpsc::UnboundedSender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (out, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();
    let (frames_tx, frames) = mpsc::channel(1024);
    tokio::spawn(async move {
        let Some(first) = to_write.recv().await else {
            return;
        };
        let Ok(stream) = TcpStream::connect(server).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        tokio::spawn(read_frames(read, frames_tx));
        let mut next = Some(first);
        while let Some(bytes) = next {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
            next = to_write.recv().await;
        }
    });
    (out, frames)
}

/// Reads RFC 4571 frames until the connection closes.
async fn read_frames(mut read: tokio::net::tcp::OwnedReadHalf, frames_tx: mpsc::Sender<Vec<u8>>) {
    {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(buf.get(..n).unwrap_or_default());
            while let (Some(&a), Some(&b)) = (pending.first(), pending.get(1)) {
                let len = usize::from(u16::from_be_bytes([a, b]));
                let Some(body) = pending.get(2..2 + len) else {
                    break;
                };
                let body = body.to_vec();
                pending.drain(..2 + len);
                if frames_tx.send(body).await.is_err() {
                    return;
                }
            }
        }
    }
}
