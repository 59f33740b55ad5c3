//! A server that is safe to put on a network: the development key refuses a public address;
//! HTTPS with a self-signed certificate or with certificate files that are reloaded when they
//! change; URLs handed out follow the scheme the client used (and a trusted proxy's word
//! only); TURN credentials in `joined` and in WHIP `Link` headers; and ICE-TCP connections
//! that never send a STUN check are dropped at the deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{WAIT, bot, server_binary, spawn_binary, token};
use control_api::tls::{TlsSource, fingerprint, self_signed_pem};
use control_api::turn::{TurnConfig, password};
use control_api::{Server, ServerConfig};
use loadtest::server_probe::{HttpResponse, http_request};
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sfu::SfuConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(adjust: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        sfu: SfuConfig {
            workers: 1,
            first_port: 0,
            ice_tcp_port: Some(0),
            ..SfuConfig::default()
        },
        ..ServerConfig::default()
    };
    adjust(&mut config);
    Server::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_key_refuses_a_public_address() {
    let refused = spawn_binary(
        &server_binary().to_string_lossy(),
        &args(&["--http-addr", "0.0.0.0:0"]),
    )
    .finish(WAIT)
    .await;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--api-key") && refused.stderr.contains("--dev"),
        "says what to pass: {}",
        refused.stderr
    );
    // Loopback but meant for others (TLS, a proxy in front, a TURN relay): refused too.
    for exposed in [
        &["--tls-self-signed"][..],
        &["--trusted-proxy", "127.0.0.1"][..],
        &["--turn-server", "turn:127.0.0.1:3478", "--turn-secret", "s"][..],
    ] {
        let mut a = args(&["--http-addr", "127.0.0.1:0"]);
        a.extend(exposed.iter().map(|s| s.to_string()));
        let refused = spawn_binary(&server_binary().to_string_lossy(), &a)
            .finish(WAIT)
            .await;
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{exposed:?}: {}",
            refused.stderr
        );
    }
    // With a real key, or with --dev (and a warning), it starts.
    for extra in [
        &["--api-key", "prod:a-long-enough-secret"][..],
        &["--dev"][..],
    ] {
        let mut a = args(&["--http-addr", "0.0.0.0:0", "--advertise-ip", "127.0.0.1"]);
        a.extend(extra.iter().map(|s| s.to_string()));
        let running = spawn_binary(&server_binary().to_string_lossy(), &a);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        running.signal("-INT");
        let out = running.finish(WAIT).await;
        assert!(out.status.success(), "{extra:?}: {}", out.stderr);
        assert!(out.stdout.contains("ready"), "{extra:?}: {}", out.stdout);
    }
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["--media-port", "0", "--workers", "1", "--log", "warn"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Accepts any certificate and remembers it (the tests compare fingerprints instead).
#[derive(Debug)]
struct RecordingVerifier(parking_lot::Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTPS GET; returns the response text and the fingerprint of the certificate served.
async fn https_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let verifier = Arc::new(RecordingVerifier(parking_lot::Mutex::new(None)));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    let der = verifier.0.lock().clone().expect("a certificate was served");
    (response, fingerprint(&der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate_hands_out_wss_urls() {
    let server = server(|c| {
        c.tls = Some(TlsSource::SelfSigned {
            names: vec!["localhost".into(), "127.0.0.1".into()],
        });
    })
    .await;
    let tls = server.state.tls.clone().expect("TLS is on");
    let (health, served) = https_get(server.http_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert_eq!(
        served,
        tls.fingerprint(),
        "the certificate the server printed"
    );
    let (token, _) = https_get(server.http_addr, "/dev/token?room=r&identity=i").await;
    assert!(
        token.contains(&format!("\"ws_url\":\"wss://{}/rtc\"", server.http_addr)),
        "{token}"
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = http_request(&server.http_addr.to_string(), "GET", "/healthz", &[], "").await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status != 200));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_when_they_change() {
    let dir = std::env::temp_dir().join(format!("sfu-exposure-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write = |name: &str| {
        let (c, k) = self_signed_pem(&[name.to_string()]).unwrap();
        // Renewals replace the files (certbot writes new ones and moves them into place).
        std::fs::write(dir.join("new.pem"), c).unwrap();
        std::fs::write(dir.join("new.key"), k).unwrap();
        std::fs::rename(dir.join("new.key"), &key).unwrap();
        std::fs::rename(dir.join("new.pem"), &cert).unwrap();
    };
    write("first.test");
    let server = server(|c| {
        c.tls = Some(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        });
    })
    .await;
    let (_, first) = https_get(server.http_addr, "/healthz").await;
    // Modification times have a coarse granularity on some filesystems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write("second.test");
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut now_served = first.clone();
    while now_served == first && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now_served = https_get(server.http_addr, "/healthz").await.1;
    }
    assert_ne!(
        now_served, first,
        "the renewed certificate is served without a restart"
    );
    // A broken renewal keeps the working certificate.
    std::fs::write(&key, "garbage").unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (health, still) = https_get(server.http_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"));
    assert_eq!(still, now_served);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(&server.http_addr.to_string(), "GET", path, headers, "")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_counts_only_from_a_trusted_proxy() {
    let untrusted = server(|_| {}).await;
    let forwarded = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "sfu.example"),
    ];
    let r = get(&untrusted, "/dev/token?room=r", &forwarded).await;
    assert!(
        r.body
            .contains(&format!("\"ws_url\":\"ws://{}/rtc\"", untrusted.http_addr)),
        "{}",
        r.body
    );
    untrusted.shutdown();
    let behind_proxy = server(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let r = get(&behind_proxy, "/dev/token?room=r", &forwarded).await;
    assert!(
        r.body.contains("\"ws_url\":\"wss://sfu.example/rtc\""),
        "{}",
        r.body
    );
    behind_proxy.shutdown();
}

fn turn() -> TurnConfig {
    TurnConfig {
        servers: vec![
            "turn:127.0.0.1:3478?transport=udp".into(),
            "turn:127.0.0.1:3478?transport=tcp".into(),
        ],
        secret: "a-shared-secret".into(),
        ttl: Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_in_joined_and_in_whip_link_headers() {
    let server = server(|c| c.turn = Some(turn())).await;
    let viewer = bot(&server, "relayed", "carol", false, 1);
    assert!(viewer.wait_for(WAIT, |s| s.participant.is_some()).await);
    let servers = viewer
        .with_state(|s| {
            s.messages.iter().find_map(|m| match m {
                ServerMessage::Joined { ice_servers, .. } => Some(ice_servers.clone()),
                _ => None,
            })
        })
        .unwrap();
    assert_eq!(servers.len(), 1);
    let (expiry, identity) = servers[0].username.split_once(':').unwrap();
    assert_eq!(identity, "carol");
    let expiry: u64 = expiry.parse().unwrap();
    let now = control_api::auth::unix_now();
    // The relay's 1 h, capped by the token's own 10 minutes (common::token).
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(
        servers[0].credential,
        password("a-shared-secret", &servers[0].username)
    );
    assert_eq!(servers[0].urls, turn().servers);

    // WHIP: OPTIONS with a token lists the relays (RFC 9725 Link headers); without, nothing.
    let addr = server.http_addr.to_string();
    // A token for another room gets no relay.
    let other = format!("Bearer {}", token("elsewhere", "obs"));
    let refused = http_request(
        &addr,
        "OPTIONS",
        "/whip/relayed",
        &[("Authorization", &other)],
        "",
    )
    .await
    .unwrap();
    assert!(refused.headers_named("link").is_empty());
    let bearer = format!("Bearer {}", token("relayed", "obs"));
    let with = http_request(
        &addr,
        "OPTIONS",
        "/whip/relayed",
        &[("Authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    let links = with.headers_named("link");
    assert_eq!(links.len(), 2, "{:?}", with.headers);
    assert!(links[0].starts_with("<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\""));
    assert!(links[0].contains(":obs\"") && links[0].contains("credential-type=\"password\""));
    let without = http_request(&addr, "OPTIONS", "/whip/relayed", &[], "")
        .await
        .unwrap();
    assert!(without.headers_named("link").is_empty());
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_tcp_client_that_sends_no_stun_check_is_dropped_at_the_deadline() {
    let server = server(|_| {}).await;
    let addr = server.sfu().tcp_addrs()[0];
    // Silent, and trickling one byte a second: both dropped after the deadline, not before.
    let started = Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut trickler = TcpStream::connect(addr).await.unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    // Not STUN: closed as soon as the frame is whole.
    garbage.write_all(&[0, 4, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(read_until_closed(&mut garbage).await, 0);
    assert!(started.elapsed() < Duration::from_secs(4));
    let trickle = tokio::spawn(async move {
        for b in [0u8, 200, 1, 2, 3, 4, 5, 6] {
            if trickler.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        read_until_closed(&mut trickler).await
    });
    let mut silent = silent;
    assert_eq!(read_until_closed(&mut silent).await, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "not before the deadline: {waited:?}"
    );
    trickle.await.unwrap();
    let deadline = Instant::now() + WAIT;
    while server.sfu().counters().tcp_timed_out < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.sfu().counters().tcp_timed_out, 2);
    assert_eq!(server.sfu().tcp_connections(), 0, "every place given back");
    server.shutdown();
}

/// Reads until the peer closes; returns the bytes read.
async fn read_until_closed(stream: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the server kept the connection open past {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_call_over_ice_tcp_byte_for_byte() {
    let server = server(|c| c.sfu.workers = 2).await;
    let tcp = server.sfu().tcp_addrs()[0];
    let over_tcp = |identity: &str, publish: bool, tag: u32| {
        let mut config = loadtest::bot::BotConfig::new(
            &common::ws_url(&server),
            token("tcp-call", identity),
            publish,
            tag,
        );
        config.keyframe_interval = 30;
        config.ice_tcp = Some(tcp);
        loadtest::bot::Bot::spawn(config)
    };
    let publisher = over_tcp("pub", true, 7);
    let viewer = over_tcp("view", false, 8);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(7, PayloadKind::Vp8) >= 100
                && s.packets_from(7, PayloadKind::Opus) >= 50)
            .await,
        "media over ICE-TCP both ways through the server"
    );
    let state = viewer.state();
    assert_eq!(state.bad_payloads, 0, "payloads arrive byte for byte");
    assert!(publisher.state().publish_connected);
    let counters = server.sfu().counters();
    // At least the publisher's publish connection and the viewer's subscribe connection
    // (the publisher's own subscribe connection may still be waiting for its first check).
    assert!(counters.tcp_accepted >= 2, "{counters:?}");
    assert!(server.sfu().tcp_connections() >= 2);
    assert_eq!(counters.tcp_send_dropped, 0);
    drop((publisher, viewer));
    server.shutdown();
}
