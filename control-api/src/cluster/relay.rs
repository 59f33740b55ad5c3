//! The QUIC endpoint of the media relay between cluster nodes: one connection per node pair,
//! mutually authenticated by the cluster secret. This module owns the endpoint, the handshake
//! that proves both ends know the secret, and the set of live links; what crosses a link
//! (tracks, layers, keyframe requests, RTP in datagrams) is built on [`RelayLink`].
//!
//! TLS here only encrypts: each node presents a certificate generated at start, and neither end
//! checks the other's. Authentication is the handshake on the connection's first stream: each
//! end sends its node id and an HMAC-SHA256, keyed with the cluster secret, over its role and
//! keying material exported from this very TLS session (RFC 5705). A peer without the secret
//! cannot compute it, and one in the middle cannot pass on another session's proof. A peer that
//! fails, stalls or sends garbage is closed and counted; nothing it sent is used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::hmac;
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// ALPN of the relay protocol.
const ALPN: &[u8] = b"sfu-relay/1";
/// Label of the keying material the handshake signs.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-sfu-relay-auth";
/// Longest node id in a handshake.
const MAX_NODE_ID: usize = 128;
/// How long a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest cluster secret accepted.
pub const MIN_SECRET: usize = 16;
/// Close code of a connection whose peer did not prove the secret.
const NOT_AUTHENTICATED: u32 = 1;

/// Why a relay link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The endpoint could not be set up (address, certificate).
    #[error("relay endpoint: {0}")]
    Setup(String),
    /// The QUIC connection failed.
    #[error("relay connection: {0}")]
    Connection(String),
    /// The peer did not prove it knows the cluster secret (or sent garbage, or stalled).
    #[error("the relay peer is not a node of this cluster ({0})")]
    NotAuthenticated(String),
}

/// One authenticated connection to another node.
#[derive(Clone)]
pub struct RelayLink {
    connection: quinn::Connection,
    peer: Arc<str>,
}

impl RelayLink {
    /// The other node's id, as it proved it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The other node's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Sends one datagram (unreliable, unordered); dropped if the link is congested.
    pub fn send_datagram(&self, data: bytes::Bytes) -> Result<(), RelayError> {
        self.connection
            .send_datagram(data)
            .map_err(|e| RelayError::Connection(e.to_string()))
    }

    /// The next datagram from the other node; an error once the link is closed.
    pub async fn read_datagram(&self) -> Result<bytes::Bytes, RelayError> {
        self.connection
            .read_datagram()
            .await
            .map_err(|e| RelayError::Connection(e.to_string()))
    }

    /// Opens a stream to the other node (it reads it with [`RelayLink::accept_uni`]).
    pub async fn open_uni(&self) -> Result<quinn::SendStream, RelayError> {
        self.connection
            .open_uni()
            .await
            .map_err(|e| RelayError::Connection(e.to_string()))
    }

    /// The next stream the other node opened.
    pub async fn accept_uni(&self) -> Result<quinn::RecvStream, RelayError> {
        self.connection
            .accept_uni()
            .await
            .map_err(|e| RelayError::Connection(e.to_string()))
    }

    /// Closes the link, telling the other node why.
    pub fn close(&self, why: &str) {
        self.connection.close(0u32.into(), why.as_bytes());
    }

    /// Whether the link has closed.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Resolves when the link closes, with why.
    pub async fn closed(&self) -> String {
        self.connection.closed().await.to_string()
    }
}

/// This node's relay endpoint and its links to the others.
pub struct RelayEndpoint {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    node_id: Arc<str>,
    key: hmac::Key,
    links: Mutex<HashMap<Arc<str>, RelayLink>>,
    refused: AtomicU64,
}

impl RelayEndpoint {
    /// Binds the endpoint at `addr` (port 0: any free one) for node `node_id` of the cluster
    /// whose secret is `secret`.
    pub fn bind(addr: SocketAddr, node_id: &str, secret: &[u8]) -> Result<Arc<Self>, RelayError> {
        if secret.len() < MIN_SECRET {
            return Err(RelayError::Setup(format!(
                "the cluster secret must be at least {MIN_SECRET} bytes"
            )));
        }
        if node_id.is_empty() || node_id.len() > MAX_NODE_ID {
            return Err(RelayError::Setup(format!(
                "a node id is 1 to {MAX_NODE_ID} bytes"
            )));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let generated = rcgen::generate_simple_self_signed(vec!["sfu-relay".to_string()])
            .map_err(|e| RelayError::Setup(format!("cannot generate a certificate: {e}")))?;
        let cert = CertificateDer::from(generated.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let setup = |e: rustls::Error| RelayError::Setup(e.to_string());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(setup)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(Arc::new(server))
            .map_err(|e| RelayError::Setup(e.to_string()))?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN.to_vec()];
        let client =
            QuicClientConfig::try_from(client).map_err(|e| RelayError::Setup(e.to_string()))?;
        let transport = Arc::new(transport());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|e| RelayError::Setup(format!("cannot bind {addr}: {e}")))?;
        Ok(Arc::new(Self {
            endpoint,
            client,
            node_id: Arc::from(node_id),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            links: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, RelayError> {
        self.endpoint
            .local_addr()
            .map_err(|e| RelayError::Setup(e.to_string()))
    }

    /// Peers refused so far (no proof of the secret, garbage, or a stalled handshake).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The live links, by peer node id.
    pub fn links(&self) -> Vec<RelayLink> {
        self.links.lock().values().cloned().collect()
    }

    /// The link to `peer`, if there is one.
    pub fn link(&self, peer: &str) -> Option<RelayLink> {
        self.links.lock().get(peer).cloned()
    }

    /// Connects to the node at `addr` and authenticates both ways; keeps the link.
    pub async fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<RelayLink, RelayError> {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, "sfu-relay")
            .map_err(|e| RelayError::Connection(e.to_string()))?;
        let link = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let connection = connecting
                .await
                .map_err(|e| RelayError::Connection(e.to_string()))?;
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| RelayError::Connection(e.to_string()))?;
            let mine = self.hello(&connection, Role::Dialer)?;
            send.write_all(&mine)
                .await
                .map_err(|e| RelayError::Connection(e.to_string()))?;
            let _ = send.finish();
            let theirs = read_hello(&mut recv).await;
            let peer = theirs.and_then(|(peer, proof)| {
                self.check(&connection, Role::Listener, &peer, &proof)
                    .map(|()| peer)
            });
            match peer {
                Ok(peer) => Ok(RelayLink {
                    connection,
                    peer: Arc::from(peer.as_str()),
                }),
                Err(e) => {
                    connection.close(NOT_AUTHENTICATED.into(), b"not authenticated");
                    Err(e)
                }
            }
        })
        .await
        .map_err(|_| RelayError::NotAuthenticated("no handshake within 5 s".into()))?;
        let link = link.inspect_err(|e| {
            if matches!(e, RelayError::NotAuthenticated(_)) {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        self.keep(link.clone());
        Ok(link)
    }

    /// Accepts incoming links until the endpoint closes, each authenticated before it is kept
    /// (on its own task, so one stalled peer holds nobody up); calls `on_link` for each.
    pub async fn serve(self: Arc<Self>, on_link: impl Fn(RelayLink) + Send + Sync + 'static) {
        let on_link = Arc::new(on_link);
        while let Some(incoming) = self.endpoint.accept().await {
            let this = self.clone();
            let on_link = on_link.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, this.answer(incoming)).await {
                    Ok(Ok(link)) => {
                        this.keep(link.clone());
                        on_link(link);
                    }
                    Ok(Err(e)) => {
                        this.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "relay: refused a peer");
                    }
                    Err(_) => {
                        this.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "relay: refused a peer that did not complete the handshake in 5 s"
                        );
                    }
                }
            });
        }
    }

    /// The listening side of the handshake.
    async fn answer(&self, incoming: quinn::Incoming) -> Result<RelayLink, RelayError> {
        let connection = incoming
            .await
            .map_err(|e| RelayError::Connection(e.to_string()))?;
        let result = async {
            let (mut send, mut recv) = connection
                .accept_bi()
                .await
                .map_err(|e| RelayError::Connection(e.to_string()))?;
            let (peer, proof) = read_hello(&mut recv).await?;
            self.check(&connection, Role::Dialer, &peer, &proof)?;
            let mine = self.hello(&connection, Role::Listener)?;
            send.write_all(&mine)
                .await
                .map_err(|e| RelayError::Connection(e.to_string()))?;
            let _ = send.finish();
            Ok(peer)
        }
        .await;
        match result {
            Ok(peer) => Ok(RelayLink {
                connection,
                peer: Arc::from(peer.as_str()),
            }),
            Err(e) => {
                connection.close(NOT_AUTHENTICATED.into(), b"not authenticated");
                Err(e)
            }
        }
    }

    /// Keeps `link` (replacing an older one to the same node) until it closes.
    fn keep(self: &Arc<Self>, link: RelayLink) {
        let previous = self.links.lock().insert(link.peer.clone(), link.clone());
        if let Some(previous) =
            previous.filter(|p| p.connection.stable_id() != link.connection.stable_id())
        {
            previous.connection.close(0u32.into(), b"replaced");
        }
        tracing::info!(peer = %link.peer, addr = %link.remote_addr(), "relay: linked to node");
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let why = link.closed().await;
            if let Some(this) = this.upgrade() {
                let mut links = this.links.lock();
                if links
                    .get(&link.peer)
                    .is_some_and(|l| l.connection.stable_id() == link.connection.stable_id())
                {
                    links.remove(&link.peer);
                    tracing::info!(peer = %link.peer, reason = %why, "relay: link to node closed");
                }
            }
        });
    }

    /// This node's handshake message for `role` on `connection`: its id and its proof.
    fn hello(&self, connection: &quinn::Connection, role: Role) -> Result<Vec<u8>, RelayError> {
        let proof = self.proof(connection, role, &self.node_id)?;
        let mut out = Vec::with_capacity(1 + self.node_id.len() + proof.as_ref().len());
        out.push(u8::try_from(self.node_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.node_id.as_bytes());
        out.extend_from_slice(proof.as_ref());
        Ok(out)
    }

    /// HMAC(secret, role | node id | exported keying material of this TLS session).
    fn proof(
        &self,
        connection: &quinn::Connection,
        role: Role,
        node_id: &str,
    ) -> Result<hmac::Tag, RelayError> {
        let mut exported = [0u8; 32];
        connection
            .export_keying_material(&mut exported, EXPORTER_LABEL, b"")
            .map_err(|_| RelayError::Connection("cannot export keying material".into()))?;
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&[role as u8]);
        context.update(&[u8::try_from(node_id.len()).unwrap_or(u8::MAX)]);
        context.update(node_id.as_bytes());
        context.update(&exported);
        Ok(context.sign())
    }

    /// Checks the peer's proof for `role` (constant time).
    fn check(
        &self,
        connection: &quinn::Connection,
        role: Role,
        peer: &str,
        proof: &[u8],
    ) -> Result<(), RelayError> {
        let expected = self.proof(connection, role, peer)?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), proof).is_err() {
            return Err(RelayError::NotAuthenticated(format!(
                "node {peer:?} did not prove the cluster secret"
            )));
        }
        if peer == &*self.node_id {
            return Err(RelayError::NotAuthenticated(format!(
                "a peer claims this node's own id {peer:?}"
            )));
        }
        Ok(())
    }
}

/// Links stay up while both nodes do (a keep-alive every half second) and close within
/// [`IDLE_TIMEOUT`] of the other node going silent: the rooms it hosted find a new host then.
fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport
}

/// How long a link lasts without hearing from the other node.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Which end of a connection a proof is for (so a proof cannot be reflected back).
#[derive(Clone, Copy)]
#[repr(u8)]
enum Role {
    Dialer = 1,
    Listener = 2,
}

/// Reads a peer's handshake: `len u8 | node id | 32-byte proof`, at most 1 + 128 + 32 bytes.
async fn read_hello(recv: &mut quinn::RecvStream) -> Result<(String, Vec<u8>), RelayError> {
    let bytes = recv
        .read_to_end(1 + MAX_NODE_ID + 32)
        .await
        .map_err(|e| RelayError::NotAuthenticated(format!("bad handshake: {e}")))?;
    parse_hello(&bytes)
}

/// A handshake's node id and proof, or why it is malformed.
pub fn parse_hello(bytes: &[u8]) -> Result<(String, Vec<u8>), RelayError> {
    let bad = |why: &str| RelayError::NotAuthenticated(format!("bad handshake: {why}"));
    let (&len, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    let len = usize::from(len);
    if len == 0 || len > MAX_NODE_ID {
        return Err(bad("node id length"));
    }
    let id = rest.get(..len).ok_or_else(|| bad("truncated node id"))?;
    let proof = rest.get(len..).ok_or_else(|| bad("truncated"))?;
    if proof.len() != 32 {
        return Err(bad("proof length"));
    }
    let id = std::str::from_utf8(id).map_err(|_| bad("node id is not UTF-8"))?;
    Ok((id.to_string(), proof.to_vec()))
}

/// Accepts any server certificate (authentication is the secret's handshake), but still checks
/// the TLS handshake's signatures with the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a cluster secret of some length";

    fn endpoint(id: &str, secret: &[u8]) -> Arc<RelayEndpoint> {
        RelayEndpoint::bind("127.0.0.1:0".parse().unwrap(), id, secret).unwrap()
    }

    #[tokio::test]
    async fn two_nodes_with_the_secret_link_and_exchange_datagrams() {
        let a = endpoint("a", SECRET);
        let b = endpoint("b", SECRET);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(b.clone().serve(move |link| {
            let _ = tx.send(link);
        }));
        let at_a = a.connect(b.local_addr().unwrap()).await.unwrap();
        let at_b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at_a.peer(), "b");
        assert_eq!(at_b.peer(), "a");
        at_a.send_datagram(bytes::Bytes::from_static(b"rtp one"))
            .unwrap();
        assert_eq!(&at_b.read_datagram().await.unwrap()[..], b"rtp one");
        at_b.send_datagram(bytes::Bytes::from_static(b"rtp two"))
            .unwrap();
        assert_eq!(&at_a.read_datagram().await.unwrap()[..], b"rtp two");
        assert_eq!(a.links().len(), 1);
        assert!(b.link("a").is_some());
        assert_eq!(a.refused() + b.refused(), 0);
    }

    #[tokio::test]
    async fn a_node_without_the_secret_is_refused_both_ways() {
        let a = endpoint("a", SECRET);
        let stranger = endpoint("stranger", b"another secret, just as long");
        tokio::spawn(a.clone().serve(|_| panic!("no link for a stranger")));
        tokio::spawn(stranger.clone().serve(|_| panic!("no link for a")));
        let dialed = stranger.connect(a.local_addr().unwrap()).await;
        assert!(dialed.is_err(), "the stranger is refused");
        let dialed = a.connect(stranger.local_addr().unwrap()).await;
        assert!(
            matches!(dialed, Err(RelayError::NotAuthenticated(_))),
            "a refuses it too"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.refused() >= 2, "counted: {}", a.refused());
        assert!(a.links().is_empty() && stranger.links().is_empty());
    }

    #[test]
    fn malformed_handshakes_are_refused() {
        let proof = [7u8; 32];
        let mut good = vec![1, b'x'];
        good.extend_from_slice(&proof);
        assert_eq!(
            parse_hello(&good).unwrap(),
            ("x".to_string(), proof.to_vec())
        );
        for bad in [
            vec![],
            vec![0],
            vec![200, b'x'],
            vec![5, b'x'],
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            [vec![1, 0xff], proof.to_vec()].concat(),
        ] {
            assert!(parse_hello(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(RelayEndpoint::bind("127.0.0.1:0".parse().unwrap(), "a", b"short").is_err());
    }
}
