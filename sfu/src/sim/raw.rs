//! A hand-made WebRTC endpoint for hostile-input scenarios. It does ICE (one STUN binding
//! request), DTLS (str0m's own DTLS provider, as the active side), SRTP and SRTCP
//! (AEAD-AES-GCM, RFC 7714) and SCTP framing (RFC 9260) itself, so a scenario can put on
//! the wire, encrypted and authenticated, bytes no WebRTC stack would write: header
//! extensions that run past the packet, padding longer than the payload, a NACK naming
//! every sequence number, malformed SCTP chunks.
//!
//! Its SDP comes from a str0m `Rtc` holding the same DTLS certificate (so the fingerprint in
//! the offer is this endpoint's); that `Rtc` is dropped once the offer is written.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::crypto::dtls::{DtlsInstance, DtlsOutput, DtlsVersion, KeyingMaterial, SrtpProfile};
use str0m::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher};
use str0m::crypto::{CryptoProvider, from_feature_flags};
use str0m::ice::{StunMessage, TransId};

use super::client::Creds;
use super::worker::certificates;

/// SRTP key derivation labels (RFC 3711 section 4.3.2).
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_SALT: u8 = 5;

/// How often the endpoint repeats its binding request (as browsers check consent).
const KEEPALIVE: Duration = Duration::from_secs(1);

/// A STUN binding request from `username`, signed with `password`, as a controlling agent.
pub(crate) fn stun_request(username: &str, password: &[u8], use_candidate: bool) -> Vec<u8> {
    let message =
        StunMessage::binding_request(username, TransId::new(), true, 1 << 20, 7, use_candidate);
    let hmac = from_feature_flags().sha1_hmac_provider;
    let mut buf = vec![0; 1500];
    match message.to_bytes(Some(password), &mut buf, |key, parts| {
        hmac.sha1_hmac(key, parts)
    }) {
        Ok(n) => buf.truncate(n),
        Err(e) => panic!("cannot write a STUN request: {e:?}"),
    }
    buf
}

/// An AES-GCM cipher of either key size.
enum Gcm {
    Aes128(Box<dyn AeadAes128GcmCipher>),
    Aes256(Box<dyn AeadAes256GcmCipher>),
}

/// One direction's session key and salt (RTP or RTCP).
struct SessionKey {
    salt: [u8; 12],
    cipher: Gcm,
}

impl SessionKey {
    /// Derives the session key and salt for `key_label`/`salt_label` from the master key
    /// and salt (AES-CM key derivation, RFC 3711 section 4.3.3; RFC 7714 section 11).
    fn derive(
        crypto: &CryptoProvider,
        master: &[u8],
        master_salt: &[u8],
        key_label: u8,
        salt_label: u8,
    ) -> Self {
        let prf = |label: u8, out: &mut [u8]| {
            let mut input = [0u8; 16];
            input[..master_salt.len()].copy_from_slice(master_salt);
            input[7] ^= label;
            let mut block = [0u8; 32];
            for (round, chunk) in out.chunks_mut(16).enumerate() {
                input[14..].copy_from_slice(&(round as u16).to_be_bytes());
                match master.len() {
                    16 => crypto
                        .srtp_provider
                        .srtp_aes_128_ecb_round(master, &input, &mut block),
                    _ => crypto
                        .srtp_provider
                        .srtp_aes_256_ecb_round(master, &input, &mut block),
                }
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
        };
        let mut salt = [0u8; 12];
        prf(salt_label, &mut salt);
        let cipher = if master.len() == 16 {
            let mut key = [0u8; 16];
            prf(key_label, &mut key);
            Gcm::Aes128(
                crypto
                    .srtp_provider
                    .aead_aes_128_gcm()
                    .create_cipher(key, true),
            )
        } else {
            let mut key = [0u8; 32];
            prf(key_label, &mut key);
            Gcm::Aes256(
                crypto
                    .srtp_provider
                    .aead_aes_256_gcm()
                    .create_cipher(key, true),
            )
        };
        Self { salt, cipher }
    }

    /// `input` encrypted, with its 16-byte tag appended.
    fn seal(&mut self, iv: &[u8; 12], aad: &[u8], input: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; input.len() + AeadAes128Gcm::TAG_LEN];
        let sealed = match &mut self.cipher {
            Gcm::Aes128(c) => c.encrypt(iv, aad, input, &mut out),
            Gcm::Aes256(c) => c.encrypt(iv, aad, input, &mut out),
        };
        if let Err(e) = sealed {
            panic!("AES-GCM refuses to seal: {e:?}");
        }
        out
    }
}

/// What this endpoint sends with: SRTP (RFC 7714) for RTP and SRTCP for RTCP.
struct Srtp {
    rtp: SessionKey,
    rtcp: SessionKey,
    /// The next SRTCP index.
    rtcp_index: u32,
}

impl Srtp {
    /// The DTLS client's half of the keying material (`[client key, server key, client
    /// salt, server salt]`, RFC 5764 section 4.2).
    fn new(material: &KeyingMaterial, profile: SrtpProfile) -> Self {
        let key_len = match profile {
            SrtpProfile::AEAD_AES_128_GCM => 16,
            SrtpProfile::AEAD_AES_256_GCM => 32,
            other => panic!("the server chose {other:?}; this endpoint speaks only AES-GCM"),
        };
        let master = &material[..key_len];
        let salt = &material[2 * key_len..2 * key_len + 12];
        let crypto = from_feature_flags();
        Self {
            rtp: SessionKey::derive(&crypto, master, salt, LABEL_RTP_KEY, LABEL_RTP_SALT),
            rtcp: SessionKey::derive(&crypto, master, salt, LABEL_RTCP_KEY, LABEL_RTCP_SALT),
            rtcp_index: 0,
        }
    }

    /// Protects an RTP packet whose header (authenticated, not encrypted) is the first
    /// `header_len` bytes, whatever those bytes are. Sequence numbers must not have wrapped.
    fn protect_rtp(&mut self, packet: &[u8], header_len: usize) -> Vec<u8> {
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let iv = AeadAes128Gcm::rtp_iv(self.rtp.salt, ssrc, 0, seq);
        let (header, payload) = packet.split_at(header_len);
        let mut out = header.to_vec();
        out.extend(self.rtp.seal(&iv, header, payload));
        out
    }

    /// Protects an RTCP (compound or not) packet.
    fn protect_rtcp(&mut self, packet: &[u8]) -> Vec<u8> {
        let index = self.rtcp_index;
        self.rtcp_index = (index + 1) & 0x7fff_ffff;
        let e_and_index = (0x8000_0000 | index).to_be_bytes();
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let iv = AeadAes128Gcm::rtcp_iv(self.rtcp.salt, ssrc, index);
        let mut aad = packet[..8].to_vec();
        aad.extend_from_slice(&e_and_index);
        let mut out = packet[..8].to_vec();
        out.extend(self.rtcp.seal(&iv, &aad, &packet[8..]));
        out.extend_from_slice(&e_and_index);
        out
    }
}

/// The endpoint: one UDP address talking to the server's address.
pub(crate) struct RawPeer {
    pub(crate) addr: SocketAddr,
    /// The server's ICE credentials (from its SDP).
    server: Creds,
    /// This endpoint's ICE credentials (from its SDP).
    local: Creds,
    dtls: Box<dyn DtlsInstance>,
    srtp: Option<Srtp>,
    /// Datagrams to send, not yet taken by the world.
    pub(crate) outbox: Vec<Vec<u8>>,
    /// When the DTLS engine wants time to move (retransmissions).
    pub(crate) timeout: Instant,
    dtls_started: bool,
    /// When the next binding request (consent, keep-alive) is due.
    keepalive_at: Instant,
    pub(crate) ice_connected: bool,
    pub(crate) dtls_connected: bool,
    /// The server ended DTLS (close_notify) or the handshake failed.
    pub(crate) dtls_closed: bool,
    /// SCTP packets the server sent (DTLS application data), not yet taken.
    pub(crate) sctp_in: Vec<Vec<u8>>,
    /// SRTP and SRTCP datagrams the server sent, as they arrived (not decrypted).
    pub(crate) srtp_in: Vec<(Instant, Vec<u8>)>,
}

impl RawPeer {
    /// An endpoint whose offer (or answer) said `local`'s credentials and the client
    /// certificate, talking to a server that said `server`'s.
    pub(crate) fn new(addr: SocketAddr, local: Creds, server: Creds, now: Instant) -> Self {
        let provider = from_feature_flags().dtls_provider;
        let mut dtls = match provider.new_dtls(&certificates().1, now, DtlsVersion::Dtls12, None) {
            Ok(d) => d,
            Err(e) => panic!("no DTLS engine: {e:?}"),
        };
        dtls.set_active(true);
        Self {
            addr,
            server,
            local,
            dtls,
            srtp: None,
            outbox: Vec::new(),
            timeout: now + KEEPALIVE,
            dtls_started: false,
            keepalive_at: now + KEEPALIVE,
            ice_connected: false,
            dtls_connected: false,
            dtls_closed: false,
            sctp_in: Vec::new(),
            srtp_in: Vec::new(),
        }
    }

    /// Sends the binding request that nominates this endpoint's address (the server is
    /// ICE-lite: it only answers).
    pub(crate) fn start_ice(&mut self) {
        let username = format!("{}:{}", self.server.ufrag, self.local.ufrag);
        let request = stun_request(&username, self.server.pwd.as_bytes(), true);
        self.outbox.push(request);
    }

    /// A datagram from the server.
    pub(crate) fn receive(&mut self, now: Instant, datagram: &[u8]) {
        match datagram.first() {
            // A binding success response: the path works; DTLS may start.
            Some(1) if datagram.get(1) == Some(&0x01) => {
                self.ice_connected = true;
                if !self.dtls_started {
                    self.dtls_started = true;
                    self.handle_timeout(now);
                }
            }
            Some(20..=63) => {
                let _ = self.dtls.handle_timeout(now);
                if self.dtls.handle_packet(datagram).is_err() {
                    self.dtls_closed = true;
                }
                self.poll();
            }
            Some(128..=191) => self.srtp_in.push((now, datagram.to_vec())),
            _ => {}
        }
    }

    /// Time moved to `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now >= self.keepalive_at {
            self.keepalive_at = now + KEEPALIVE;
            self.start_ice();
        }
        if !self.dtls_started {
            self.timeout = self.keepalive_at;
            return;
        }
        if self.dtls.handle_timeout(now).is_err() {
            self.dtls_closed = true;
        }
        self.poll();
    }

    fn poll(&mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            match self.dtls.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => self.outbox.push(p.to_vec()),
                DtlsOutput::Timeout(at) => {
                    self.timeout = at.min(self.keepalive_at);
                    return;
                }
                DtlsOutput::Connected => self.dtls_connected = true,
                DtlsOutput::KeyingMaterial(material, profile) => {
                    self.srtp = Some(Srtp::new(&material, profile));
                }
                DtlsOutput::ApplicationData(data) => self.sctp_in.push(data.to_vec()),
                DtlsOutput::CloseNotify => self.dtls_closed = true,
                DtlsOutput::BufferTooSmall { needed } => buf.resize(needed, 0),
                _ => {}
            }
        }
    }

    /// Connected and able to send media.
    pub(crate) fn ready(&self) -> bool {
        self.dtls_connected && self.srtp.is_some()
    }

    /// Sends `packet` as SRTP, its first `header_len` bytes being the header.
    pub(crate) fn send_rtp(&mut self, packet: &[u8], header_len: usize) {
        let Some(srtp) = &mut self.srtp else {
            panic!("SRTP before DTLS completed");
        };
        let protected = srtp.protect_rtp(packet, header_len);
        self.outbox.push(protected);
    }

    /// Sends `packet` as SRTCP.
    pub(crate) fn send_rtcp(&mut self, packet: &[u8]) {
        let Some(srtp) = &mut self.srtp else {
            panic!("SRTCP before DTLS completed");
        };
        let protected = srtp.protect_rtcp(packet);
        self.outbox.push(protected);
    }

    /// Sends one SCTP packet (its checksum filled in) as DTLS application data.
    pub(crate) fn send_sctp(&mut self, packet: &[u8]) {
        if self.dtls.send_application_data(packet).is_err() {
            self.dtls_closed = true;
        }
        self.poll();
    }
}

/// SCTP (RFC 9260) packets written by hand.
pub(crate) mod sctp {
    /// The port both sides use (the SDP's `a=sctp-port`).
    pub(crate) const PORT: u16 = 5000;
    pub(crate) const DATA: u8 = 0;
    pub(crate) const INIT: u8 = 1;
    pub(crate) const INIT_ACK: u8 = 2;
    pub(crate) const HEARTBEAT: u8 = 4;
    pub(crate) const HEARTBEAT_ACK: u8 = 5;
    pub(crate) const ABORT: u8 = 6;
    pub(crate) const COOKIE_ECHO: u8 = 10;
    pub(crate) const COOKIE_ACK: u8 = 11;

    /// CRC-32C (Castagnoli), as SCTP's checksum.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in data {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A chunk: type, flags, the length field as given (`None`: the true length) and the
    /// value, padded to four bytes.
    pub(crate) fn chunk(kind: u8, flags: u8, length: Option<u16>, value: &[u8]) -> Vec<u8> {
        let true_length = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        let mut c = vec![kind, flags];
        c.extend_from_slice(&length.unwrap_or(true_length).to_be_bytes());
        c.extend_from_slice(value);
        while c.len() % 4 != 0 {
            c.push(0);
        }
        c
    }

    /// A packet with this verification tag and these chunks, its checksum right.
    pub(crate) fn packet(tag: u32, chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&PORT.to_be_bytes());
        p.extend_from_slice(&PORT.to_be_bytes());
        p.extend_from_slice(&tag.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        for c in chunks {
            p.extend_from_slice(c);
        }
        let sum = crc32c(&p);
        p[8..12].copy_from_slice(&sum.to_le_bytes());
        p
    }

    /// An INIT chunk announcing these stream counts.
    pub(crate) fn init(initiate_tag: u32, streams: u16, tsn: u32) -> Vec<u8> {
        let mut value = Vec::new();
        value.extend_from_slice(&initiate_tag.to_be_bytes());
        value.extend_from_slice(&(1u32 << 20).to_be_bytes()); // a_rwnd
        value.extend_from_slice(&streams.to_be_bytes()); // outbound streams
        value.extend_from_slice(&streams.to_be_bytes()); // inbound streams
        value.extend_from_slice(&tsn.to_be_bytes());
        chunk(INIT, 0, None, &value)
    }

    /// A DATA chunk (unordered, one fragment) on `stream`.
    pub(crate) fn data(tsn: u32, stream: u16, ppid: u32, user_data: &[u8]) -> Vec<u8> {
        let mut value = Vec::new();
        value.extend_from_slice(&tsn.to_be_bytes());
        value.extend_from_slice(&stream.to_be_bytes());
        value.extend_from_slice(&0u16.to_be_bytes());
        value.extend_from_slice(&ppid.to_be_bytes());
        value.extend_from_slice(user_data);
        chunk(DATA, 0x07, None, &value)
    }

    /// The chunks of a packet: (type, value). Stops at the first chunk that does not fit.
    pub(crate) fn chunks(packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 12;
        while at + 4 <= packet.len() {
            let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
            if len < 4 || at + len > packet.len() {
                break;
            }
            out.push((packet[at], packet[at + 4..at + len].to_vec()));
            at += len.div_ceil(4) * 4;
        }
        out
    }

    /// From an INIT ACK's value: the server's initiate tag and its state cookie.
    pub(crate) fn parse_init_ack(value: &[u8]) -> Option<(u32, Vec<u8>)> {
        let tag = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
        let mut at = 16;
        while at + 4 <= value.len() {
            let kind = u16::from_be_bytes([value[at], value[at + 1]]);
            let len = usize::from(u16::from_be_bytes([value[at + 2], value[at + 3]]));
            if len < 4 || at + len > value.len() {
                return None;
            }
            if kind == 7 {
                return Some((tag, value[at + 4..at + len].to_vec()));
            }
            at += len.div_ceil(4) * 4;
        }
        None
    }

    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        // RFC 3720 appendix B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }
}
