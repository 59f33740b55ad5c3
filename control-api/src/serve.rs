//! The HTTP listener: accepts connections, plain or TLS, and hands each request to the router
//! with the client's address ([`ConnectInfo`]), which the router needs to trust forwarding
//! headers only from configured proxies.
//!
//! Plain HTTP is axum's own server. For HTTPS the accept loop is here (axum's server has no
//! TLS): each connection gets [`HANDSHAKE_TIMEOUT`] to complete its handshake, so a client
//! that connects and sends nothing holds a task, not the listener; WebSocket upgrades work
//! over it as over plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (a connection that sends nothing
/// after the handshake is closed then).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` over plain HTTP.
pub async fn plain(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Serves `router` on `listener` over TLS with `config` (whose certificate may change between
/// connections). Runs until the task is aborted.
pub async fn tls(listener: TcpListener, router: Router, config: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                warn!(error = %e, "cannot accept an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}
