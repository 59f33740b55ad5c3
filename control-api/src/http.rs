//! The HTTP surface: the signalling WebSocket, the development token endpoint, metrics,
//! health, and the web demo's files. `app` builds the router from state, so tests can drive
//! it without a socket.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::{Claims, Grants};

/// Largest HTTP request body (an SDP offer with many m-lines is well under it).
pub const MAX_BODY: usize = 1 << 20;

/// The router of the server.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rtc", get(signalling))
        .route("/dev/token", get(dev_token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
        .merge(crate::whip::routes(state.clone()))
        .merge(crate::rooms_api::routes(state.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .fallback(get(static_file))
        .with_state(state)
}

/// Read buffer of a signalling WebSocket, in bytes.
const SIGNALLING_READ_BUFFER: usize = 8 * 1024;

async fn signalling(ws: WebSocketUpgrade, State(state): State<Arc<AppState>>) -> Response {
    let limit = state.config.ws_max_message;
    // Signalling messages are small: an 8 KiB read buffer instead of tungstenite's 128 KiB
    // saves ~120 KiB per participant (heaptrack); larger messages still assemble.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(SIGNALLING_READ_BUFFER)
        .on_upgrade(move |socket| crate::signalling::run(socket, state))
}

/// The next disconnection request, or never.
pub async fn recv_kick(kicked: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match kicked {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: Option<String>,
    name: Option<String>,
    /// `viewer`: the token may not publish.
    role: Option<String>,
}

/// Mints a token for the demo. Exists only while the server runs with the built-in
/// development credentials.
async fn dev_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<DevTokenQuery>, QueryRejection>,
) -> Response {
    if !state.keys.is_dev() {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "development tokens are disabled because the server has real API keys",
        );
    }
    let Some(Query(q)) = query
        .ok()
        .filter(|q| !q.room.is_empty() && q.room.len() <= 128)
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give ?room=NAME (1 to 128 characters), and optionally &identity=ID&name=NAME&role=viewer",
        );
    };
    let identity = q
        .identity
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("guest-{:06x}", rand::random::<u32>() & 0xff_ffff));
    let grants = Grants {
        room: Some(q.room),
        room_join: true,
        can_publish: (q.role.as_deref() == Some("viewer")).then_some(false),
        ..Grants::default()
    };
    let key = state.keys.first_key().unwrap_or_default().to_string();
    let mut claims = Claims::new(&key, &identity, Duration::from_secs(6 * 3600), grants);
    claims.name = q.name.filter(|n| !n.is_empty());
    let Ok(token) = state.keys.mint(&claims) else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot sign a token",
        );
    };
    let origin = state.origin(&headers, Some(peer));
    let ws_url = format!("{}/rtc", origin.ws_url());
    Json(json!({ "token": token, "ws_url": ws_url, "identity": identity })).into_response()
}

/// Ready unless draining (a load balancer then sends new participants elsewhere).
/// Alive unless a media worker stopped for good (it kept panicking, or lost its socket):
/// then the node serves at reduced capacity and should be restarted.
async fn liveness(State(state): State<Arc<AppState>>) -> Response {
    let dead = state.sfu.dead_workers();
    if dead.is_empty() {
        "ok\n".into_response()
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            &format!("media workers {dead:?} stopped (see the log); restart this server"),
        )
    }
}

/// In cluster mode, ready once the node has announced itself in the registry (it stays ready
/// while Redis is away: its calls carry on, and it still takes participants of its own rooms).
async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this server is shutting down and takes no new participants",
        )
    } else if state.cluster.as_ref().is_some_and(|c| !c.announced()) {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_in_cluster",
            "this node has not reached Redis yet (see the log); check --redis-url",
        )
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (rooms, participants) = state.rooms.counts();
    let gauges = crate::metrics::Gauges {
        rooms,
        participants,
        peers: state.sfu.peer_count(),
        tracks: state.sfu.track_count(),
        worker_queues: state.sfu.worker_queues(),
        webhooks_dropped: state.webhooks.dropped(),
        tcp_connections: state.sfu.tcp_connections(),
        cluster: state
            .cluster
            .as_ref()
            .map(|c| crate::metrics::ClusterGauges {
                redis_up: c.redis_up(),
                nodes: c.nodes().len(),
                ignored_entries: c.ignored_entries(),
                relay_links: c.relay().map(|r| r.links().len()),
                relay_refused: c.relay().map_or(0, |r| r.refused()),
                relayed: c.relayed().counts(),
            }),
    };
    let body = state.metrics.render(&state.sfu.counters(), &gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn static_file(State(state): State<Arc<AppState>>, uri: Uri) -> Response {
    match crate::assets::lookup(state.config.web_root.as_deref(), uri.path()).await {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such page"),
    }
}

/// A JSON error body with a stable code and a sentence.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}
