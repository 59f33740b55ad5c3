//! One client-side WebRTC peer: a str0m `Rtc` (full ICE, RTP mode) on its own UDP socket.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};
use tokio::net::UdpSocket;

/// A client peer and its socket.
pub(crate) struct ClientPeer {
    pub(crate) rtc: Rtc,
    pub(crate) socket: UdpSocket,
    local: SocketAddr,
    /// When the state machine next wants a timeout.
    pub(crate) timeout: Instant,
    /// The server address this peer last sent to.
    pub(crate) server: Option<SocketAddr>,
}

impl ClientPeer {
    /// A peer on a fresh loopback socket, with the codecs the bots use; with `stats`, str0m
    /// reports receive statistics every second.
    pub(crate) async fn new(now: Instant, stats: bool) -> io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(true)
            .enable_opus(true, false)
            .set_stats_interval(stats.then_some(Duration::from_secs(1)))
            .build(now);
        let candidate = Candidate::host(local, "udp").map_err(io::Error::other)?;
        rtc.add_local_candidate(candidate);
        Ok(Self {
            rtc,
            socket,
            local,
            timeout: now,
            server: None,
        })
    }

    /// Polls until only a timeout is left: sends datagrams, collects events.
    pub(crate) fn drain(&mut self, events: &mut Vec<Event>) -> Result<(), RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    self.server = Some(t.destination);
                    // A full socket buffer loses the datagram, as the network would.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
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
