//! WHIP (RFC 9725) and WHEP: publish into a room, or watch one of its publishers, with one HTTP
//! request; `PATCH` the resource for trickle ICE and ICE restarts; `DELETE` it to end.
//!
//! Each resource is a [`Session`] like a WebSocket participant's (it joins the room, its tracks
//! are announced to everyone), driven by HTTP instead of signalling messages. A task per
//! resource owns the session and serves its `PATCH` and `DELETE` requests in order; the
//! resource ends when it is deleted or its peer connection closes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{Any, CorsLayer};
use tracing::{debug, info};

use crate::AppState;
use crate::http::json_error;
use crate::protocol::{ErrorCode, PcTarget, Refusal};
use crate::session::{JoinMode, Session};

const SDP: &str = "application/sdp";
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";

/// Publishing (WHIP) or watching (WHEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WHIP: the client publishes.
    Whip,
    /// WHEP: the client watches.
    Whep,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }

    /// The client's connection, as a signalling session sees it.
    fn target(self) -> PcTarget {
        match self {
            Kind::Whip => PcTarget::Publish,
            Kind::Whep => PcTarget::Subscribe,
        }
    }
}

/// The live WHIP and WHEP resources.
#[derive(Default)]
pub struct Resources {
    map: Mutex<HashMap<String, Resource>>,
}

struct Resource {
    kind: Kind,
    room: String,
    commands: mpsc::Sender<Command>,
}

enum Command {
    Patch {
        fragment: String,
        if_match: Option<String>,
        reply: oneshot::Sender<Response>,
    },
    Delete {
        reply: oneshot::Sender<()>,
    },
}

impl Resources {
    /// Number of live resources.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    fn commands(&self, kind: Kind, room: &str, id: &str) -> Option<mpsc::Sender<Command>> {
        let map = self.map.lock();
        let r = map.get(id).filter(|r| r.kind == kind && r.room == room)?;
        Some(r.commands.clone())
    }
}

/// The WHIP and WHEP routes, with CORS for browser clients.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::HeaderName::from_static("accept-patch"),
        ]);
    Router::new()
        .route(
            "/whip/{room}",
            post(|s, p, q, h, b| create(Kind::Whip, s, p, q, h, b)),
        )
        .route(
            "/whep/{room}",
            post(|s, p, q, h, b| create(Kind::Whep, s, p, q, h, b)),
        )
        .route(
            "/whip/{room}/{id}",
            axum::routing::patch(|s, p, h, b| patch(Kind::Whip, s, p, h, b))
                .delete(|s, p| delete(Kind::Whip, s, p)),
        )
        .route(
            "/whep/{room}/{id}",
            axum::routing::patch(|s, p, h, b| patch(Kind::Whep, s, p, h, b))
                .delete(|s, p| delete(Kind::Whep, s, p)),
        )
        .layer(cors)
        .layer(middleware::from_fn_with_state(state, options_headers))
}

/// `OPTIONS` (answered by the CORS layer) also says what the endpoint or resource accepts,
/// as RFC 9725 asks: `Accept-Post` on an endpoint, `Accept-Patch` on a resource.
async fn options_headers(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::OPTIONS {
        return next.run(request).await;
    }
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let resource = segments.len() == 3;
    // RFC 9725 lets OPTIONS carry the ICE servers, so a client can gather relay candidates
    // before it offers. Only with a token that may join this room: TURN credentials are relay
    // bandwidth, not for anyone who asks (a browser's CORS preflight carries none and gets
    // none), and they end when the token does.
    let room = segments.get(1).copied().unwrap_or_default();
    let ice_servers = bearer(request.headers())
        .and_then(|token| state.keys.verify(token).ok())
        .filter(|claims| claims.video.room_join && claims.video.room.as_deref() == Some(room))
        .map(|claims| state.ice_servers(&claims.sub, claims.exp))
        .unwrap_or_default();
    let mut response = next.run(request).await;
    *response.status_mut() = StatusCode::NO_CONTENT;
    let (allow, accept, accepted) = if resource {
        ("PATCH, DELETE, OPTIONS", "accept-patch", SDP_FRAGMENT)
    } else {
        ("POST, OPTIONS", "accept-post", SDP)
    };
    let h = response.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(allow));
    h.insert(
        header::HeaderName::from_static(accept),
        HeaderValue::from_static(accepted),
    );
    for link in crate::turn::link_headers(&ice_servers) {
        h.append(header::LINK, link);
    }
    response
}

#[derive(Deserialize)]
struct CreateQuery {
    /// WHEP: watch this participant (default: the first one publishing video).
    participant: Option<String>,
}

async fn create(
    kind: Kind,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return unauthorized("send the access token as 'Authorization: Bearer <token>'");
    };
    if !content_type_is(&headers, SDP) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "send the SDP offer with 'Content-Type: application/sdp'",
        );
    }
    let Ok(offer) = std::str::from_utf8(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the SDP offer is not UTF-8",
        );
    };
    let (outbox, outgoing) = crate::outbox::outbox();
    let (events, peer_events) = mpsc::unbounded_channel();
    let mut session = Session::new(state.clone(), outbox, events);
    let mode = match kind {
        Kind::Whip => JoinMode::Publisher,
        Kind::Whep => JoinMode::Viewer,
    };
    if let Err(refusal) = session.join(token, mode, Some(&room)).await {
        if let (ErrorCode::RoomElsewhere, Some(url)) = (refusal.code, &refusal.url) {
            return redirect_to_host(url, query.participant.as_deref());
        }
        return refusal_response(refusal);
    }
    let answer = match kind {
        Kind::Whip => session.publish(offer, BTreeMap::new()).await,
        Kind::Whep => session.whep(offer, query.participant.as_deref()).await,
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(refusal) => {
            session.leave("offer refused").await;
            return refusal_response(refusal);
        }
    };
    let id = new_resource_id();
    let (commands, command_rx) = mpsc::channel(16);
    state.resources.map.lock().insert(
        id.clone(),
        Resource {
            kind,
            room: room.clone(),
            commands,
        },
    );
    let ice_servers = session.ice_servers();
    let etag = etag_of(&answer);
    let location = format!("/{}/{}/{}", kind.path(), room, id);
    info!(%location, "{} resource created", kind.path());
    let task = ResourceTask {
        kind,
        id,
        state,
        session,
        offer: offer.to_string(),
        etag: etag.clone(),
    };
    tokio::spawn(task.run(peer_events, outgoing, command_rx));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(
        header::HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(SDP_FRAGMENT),
    );
    for (name, value) in [(header::LOCATION, location), (header::ETAG, etag)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(name, value);
        }
    }
    for link in crate::turn::link_headers(&ice_servers) {
        h.append(header::LINK, link);
    }
    response
}

async fn patch(
    kind: Kind,
    State(state): State<Arc<AppState>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !content_type_is(&headers, SDP_FRAGMENT) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "send candidates with 'Content-Type: application/trickle-ice-sdpfrag'",
        );
    }
    let Some(commands) = state.resources.commands(kind, &room, &id) else {
        return no_such_resource();
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let fragment = String::from_utf8_lossy(&body).into_owned();
    let (reply, response) = oneshot::channel();
    let command = Command::Patch {
        fragment,
        if_match,
        reply,
    };
    if commands.send(command).await.is_err() {
        return no_such_resource();
    }
    response.await.unwrap_or_else(|_| no_such_resource())
}

async fn delete(
    kind: Kind,
    State(state): State<Arc<AppState>>,
    Path((room, id)): Path<(String, String)>,
) -> Response {
    let Some(commands) = state.resources.commands(kind, &room, &id) else {
        return no_such_resource();
    };
    let (reply, done) = oneshot::channel();
    if commands.send(Command::Delete { reply }).await.is_err() || done.await.is_err() {
        return no_such_resource();
    }
    StatusCode::OK.into_response()
}

/// The task that owns one resource's session.
struct ResourceTask {
    kind: Kind,
    id: String,
    state: Arc<AppState>,
    session: Session,
    /// The client's latest offer (ICE restarts re-apply it with new credentials).
    offer: String,
    etag: String,
}

impl ResourceTask {
    async fn run(
        mut self,
        mut peer_events: mpsc::UnboundedReceiver<sfu::PeerEvent>,
        mut outgoing: crate::outbox::OutboxReceiver,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut kicked = self.session.take_kick_receiver();
        let reason = loop {
            tokio::select! {
                Some(reason) = crate::http::recv_kick(&mut kicked) => {
                    self.end(&reason).await;
                    return;
                }
                Some(event) = peer_events.recv() => {
                    self.session.on_peer_event(event).await;
                    if self.session.media_gone() {
                        break "media connection closed";
                    }
                }
                // Room messages are for WebSocket clients; an HTTP client has no channel.
                Some(_) = outgoing.recv() => {}
                command = commands.recv() => match command {
                    Some(Command::Patch { fragment, if_match, reply }) => {
                        let response = self.patch(&fragment, if_match.as_deref()).await;
                        let _ = reply.send(response);
                    }
                    Some(Command::Delete { reply }) => {
                        self.end("ended by DELETE").await;
                        let _ = reply.send(());
                        return;
                    }
                    None => break "server shutting down",
                },
            }
        };
        self.end(reason).await;
    }

    async fn end(&mut self, reason: &str) {
        self.state.resources.map.lock().remove(&self.id);
        self.session.leave(reason).await;
        info!(id = %self.id, reason, "{} resource ended", self.kind.path());
    }

    async fn patch(&mut self, fragment: &str, if_match: Option<&str>) -> Response {
        if if_match.is_some_and(|tag| tag != "*" && tag != self.etag) {
            return json_error(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                "the ICE session changed (If-Match does not match the ETag); use the new ETag",
            );
        }
        let fragment = Fragment::parse(fragment);
        let current = ice_value(&self.offer, "ice-ufrag");
        let restart = fragment.ufrag.is_some() && fragment.ufrag.as_deref() != current;
        if restart {
            return self.ice_restart(&fragment).await;
        }
        for candidate in &fragment.candidates {
            let added = self
                .session
                .add_candidate(self.kind.target(), Some(candidate))
                .await;
            if let Err(refusal) = added {
                return refusal_response(refusal);
            }
        }
        StatusCode::NO_CONTENT.into_response()
    }

    /// The client sent new ICE credentials: re-apply its offer with them (str0m restarts ICE
    /// with new local credentials) and answer with ours.
    async fn ice_restart(&mut self, fragment: &Fragment) -> Response {
        let (Some(ufrag), Some(pwd)) = (&fragment.ufrag, &fragment.pwd) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_sdp",
                "an ICE restart needs both a=ice-ufrag and a=ice-pwd",
            );
        };
        let offer = with_ice_credentials(&self.offer, ufrag, pwd);
        let Some(peer) = self.session.peer(self.kind.target()) else {
            return no_such_resource();
        };
        let answer = match self.state.sfu.publisher_offer(peer, &offer).await {
            Ok(answer) => answer,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_sdp",
                    &format!("ICE restart refused: {e}"),
                );
            }
        };
        for candidate in &fragment.candidates {
            let _ = self
                .session
                .add_candidate(self.kind.target(), Some(candidate))
                .await;
        }
        self.offer = offer;
        self.etag = etag_of(&answer);
        debug!(id = %self.id, "ICE restarted");
        let mut body = String::new();
        for line in answer.lines() {
            if line.starts_with("a=ice-ufrag:")
                || line.starts_with("a=ice-pwd:")
                || line.starts_with("a=candidate:")
            {
                body.push_str(line);
                body.push_str("\r\n");
            }
        }
        body.push_str("a=end-of-candidates\r\n");
        let mut response = (StatusCode::OK, body).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP_FRAGMENT));
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, etag);
        }
        response
    }
}

/// What a trickle-ICE SDP fragment (RFC 8840) carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fragment {
    pub(crate) ufrag: Option<String>,
    pub(crate) pwd: Option<String>,
    pub(crate) candidates: Vec<String>,
}

impl Fragment {
    pub(crate) fn parse(text: &str) -> Fragment {
        let mut f = Fragment::default();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                f.ufrag = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                f.pwd = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("a=")
                && v.starts_with("candidate:")
            {
                f.candidates.push(v.to_string());
            }
        }
        f
    }
}

/// The first `a=NAME:value` of an SDP.
pub(crate) fn ice_value<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| {
        l.trim()
            .strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
    })
}

/// The SDP with every ICE ufrag and password replaced.
pub(crate) fn with_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=ice-ufrag:") {
            out.push_str(&format!("a=ice-ufrag:{ufrag}"));
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str(&format!("a=ice-pwd:{pwd}"));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The resource's ETag: the server's ICE ufrag, which changes with each ICE restart.
pub(crate) fn etag_of(answer: &str) -> String {
    format!("\"{}\"", ice_value(answer, "ice-ufrag").unwrap_or("none"))
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(crate) fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn new_resource_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .filter_map(|_| ALPHABET.get(rng.random_range(0..ALPHABET.len())))
        .map(|b| char::from(*b))
        .collect()
}

fn unauthorized(message: &str) -> Response {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "bad_token", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn no_such_resource() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "unknown_resource",
        "no such WHIP/WHEP resource (it ended, or the URL is wrong)",
    )
}

/// The path of the `kind` endpoint of `room` (`/whip/ROOM`), the room name percent-encoded.
pub(crate) fn endpoint_path(kind: Kind, room: &str) -> String {
    let path = match kind {
        Kind::Whip => "whip",
        Kind::Whep => "whep",
    };
    format!("/{path}/{}", encode_path_segment(room))
}

/// 307 to `url`, the same endpoint on the node hosting the room (cluster mode): WHIP and WHEP
/// clients follow it with the same offer (RFC 9725, 4.5).
fn redirect_to_host(url: &str, participant: Option<&str>) -> Response {
    let mut location = url.to_string();
    if let Some(p) = participant {
        location.push_str(&format!("?participant={}", encode_path_segment(p)));
    }
    let mut response = json_error(
        StatusCode::TEMPORARY_REDIRECT,
        "room_elsewhere",
        &format!("the room is hosted by another node: {location}"),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `s` with every byte outside unreserved URL characters percent-encoded.
fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A refused request as an HTTP response with a fitting status.
pub fn refusal_response(refusal: Refusal) -> Response {
    let status = match refusal.code {
        ErrorCode::BadToken => return unauthorized(&refusal.message),
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::UnknownRoom | ErrorCode::UnknownTrack => StatusCode::NOT_FOUND,
        ErrorCode::RoomFull => StatusCode::CONFLICT,
        ErrorCode::Draining | ErrorCode::ServerFull | ErrorCode::ClusterUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let code = serde_json::to_value(refusal.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    json_error(status, &code, &refusal.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_and_credentials() {
        let f = Fragment::parse(
            "a=ice-ufrag:abc\r\na=ice-pwd:secret\r\nm=audio 9 UDP 0\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 198.18.0.2 5000 typ host\r\na=end-of-candidates\r\n",
        );
        assert_eq!(f.ufrag.as_deref(), Some("abc"));
        assert_eq!(f.pwd.as_deref(), Some("secret"));
        assert_eq!(
            f.candidates,
            vec!["candidate:1 1 udp 2130706431 198.18.0.2 5000 typ host"]
        );
        assert_eq!(Fragment::parse("garbage\n\n"), Fragment::default());
        let sdp = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpw\r\nm=video 9\r\na=ice-ufrag:old\r\n";
        let new = with_ice_credentials(sdp, "new", "newpw");
        assert_eq!(ice_value(&new, "ice-ufrag"), Some("new"));
        assert_eq!(ice_value(&new, "ice-pwd"), Some("newpw"));
        assert!(!new.contains("old"));
        assert_eq!(etag_of(sdp), "\"old\"");
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&h), None);
    }
}
