//! A WebRTC client for in-process tests: a str0m `Rtc` (full ICE, RTP mode) on an address of
//! its own, with what it sent and what it received kept for the caller.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Mid, Rid};
use str0m::net::Transmit;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::worker::certificates;

/// A client's ICE credentials, or the server's, as an SDP says them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Creds {
    pub(crate) ufrag: String,
    pub(crate) pwd: String,
}

pub(crate) fn creds_of(sdp: &str) -> Creds {
    let value = |name: &str| sdp_value(sdp, "", name).unwrap_or_default().to_string();
    Creds {
        ufrag: value("a=ice-ufrag:"),
        pwd: value("a=ice-pwd:"),
    }
}

/// An SDP attribute's value in the section of the first `m=<kind>` line (or anywhere, for
/// an empty `kind`): the first line starting with `prefix`, without it.
pub(crate) fn sdp_value<'a>(sdp: &'a str, kind: &str, prefix: &str) -> Option<&'a str> {
    let mut in_section = kind.is_empty();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            in_section = kind.is_empty() || m.starts_with(kind);
        }
        if in_section && let Some(rest) = line.strip_prefix(prefix) {
            return Some(rest);
        }
    }
    None
}

/// An RTP packet a client received.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedRtp {
    pub(crate) pt: u8,
    pub(crate) ssrc: u32,
    /// Extended sequence number.
    pub(crate) seq: u64,
    /// Read by the scenarios (the fuzz targets use the client without them).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) timestamp: u32,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) marker: bool,
    pub(crate) payload: Vec<u8>,
    /// Its Dependency Descriptor, when the client registered the extension.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) descriptor: Option<Vec<u8>>,
}

/// A WebRTC client (str0m, full ICE, RTP mode) on its own address.
pub(crate) struct Client {
    pub(crate) rtc: Rtc,
    pub(crate) addr: SocketAddr,
    /// What it sent, not yet handed to the worker.
    pub(crate) outbox: Vec<Transmit>,
    pub(crate) timeout: Instant,
    pub(crate) connected: bool,
    /// ICE found a working pair (DTLS may not have completed).
    pub(crate) ice_connected: bool,
    pub(crate) failed: bool,
    /// RTP received, not yet taken by the caller.
    pub(crate) received: Vec<ReceivedRtp>,
    /// Keyframe requests received, not yet taken by the caller: the m-line and layer.
    pub(crate) keyframe_requests: Vec<(Mid, Option<Rid>)>,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, now: Instant) -> Self {
        Self::with_config(addr, now, |c| c)
    }

    /// A client whose configuration `configure` adjusts (for example to estimate bandwidth
    /// and pad).
    pub(crate) fn with_config(
        addr: SocketAddr,
        now: Instant,
        configure: impl FnOnce(RtcConfig) -> RtcConfig,
    ) -> Self {
        let config = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(true)
            .enable_opus(true, false)
            .set_dtls_cert(certificates().1.clone());
        let mut rtc = configure(config).build(now);
        if let Ok(c) = Candidate::host(addr, "udp") {
            rtc.add_local_candidate(c);
        }
        Self {
            rtc,
            addr,
            outbox: Vec::new(),
            timeout: now,
            connected: false,
            ice_connected: false,
            failed: false,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
        }
    }

    /// Polls until the state machine waits for time.
    pub(crate) fn drain(&mut self) {
        if self.failed {
            return;
        }
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => self.outbox.push(t),
                Ok(Output::Timeout(at)) => {
                    self.timeout = at;
                    return;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::IceConnectionStateChange(
                        IceConnectionState::Connected | IceConnectionState::Completed,
                    ) => self.ice_connected = true,
                    Event::RtpPacket(p) => self.received.push(ReceivedRtp {
                        pt: *p.header.payload_type,
                        ssrc: *p.header.ssrc,
                        seq: *p.seq_no,
                        timestamp: p.header.timestamp,
                        marker: p.header.marker,
                        payload: p.payload.to_vec(),
                        descriptor: p
                            .header
                            .ext_vals
                            .user_values
                            .get::<crate::dependency_descriptor::RawDescriptor>()
                            .map(|d| d.0.to_vec()),
                    }),
                    Event::KeyframeRequest(r) => self.keyframe_requests.push((r.mid, r.rid)),
                    _ => {}
                },
                Err(_) => {
                    self.failed = true;
                    return;
                }
            }
        }
    }

    pub(crate) fn input(&mut self, input: Input<'_>) {
        if !self.failed && self.rtc.handle_input(input).is_err() {
            self.failed = true;
        }
        self.drain();
    }

    pub(crate) fn pt(&self, codec: Codec) -> Option<u8> {
        self.rtc
            .codec_config()
            .find(|c| c.spec().codec == codec)
            .map(|c| *c.pt())
    }
}

pub(crate) fn accept_answer(client: &mut Client, pending: SdpPendingOffer, answer: &str) {
    let Ok(answer) = SdpAnswer::from_sdp_string(answer) else {
        panic!("the server's answer does not parse: {answer}");
    };
    if let Err(e) = client.rtc.sdp_api().accept_answer(pending, answer) {
        panic!("a client refuses the server's answer: {e}");
    }
    client.drain();
}
