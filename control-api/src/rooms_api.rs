//! The room service: a JSON REST API under `/api` for the application behind the SFU to create,
//! list and delete rooms, and to list, remove, mute and re-subscribe participants. Every call
//! needs an access token with an admin grant (`roomCreate`, `roomList`, or `roomAdmin` for the
//! room concerned). The OpenAPI document is served at `/api/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sfu::TrackId;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::auth::{Claims, Grants};
use crate::cluster::{NodeInfo, NodeLoad};
use crate::http::json_error;
use crate::protocol::TrackInfo;
use crate::room::{MutedBy, Room, RoomError, RoomSettings, RoomSnapshot};

/// The OpenAPI description of the room service.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sfu room service",
        description = "Create, list and delete rooms; list, remove, mute and re-subscribe participants. \
                       Authenticate with an access token carrying an admin grant: \
                       'Authorization: Bearer <token>'."
    ),
    paths(
        create_room, list_rooms, get_room, delete_room, list_participants, get_participant,
        remove_participant, mute_track, update_subscriptions, list_tracks, list_nodes
    ),
    components(schemas(
        CreateRoom, RoomBody, RoomList, ParticipantBody, ParticipantList, TrackBody, TrackList,
        MuteBody, SubscriptionBody, ErrorBody, NodeList, NodeInfo, NodeLoad,
        crate::cluster::relay_rooms::RelayedRoom, crate::cluster::relay_rooms::RelayedTrackState
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The room service routes.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    // Calls about one room: those about an edge room go to its host.
    let rooms = Router::new()
        .route("/api/rooms/{room}", get(get_room).delete(delete_room))
        .route("/api/rooms/{room}/participants", get(list_participants))
        .route(
            "/api/rooms/{room}/participants/{participant}",
            get(get_participant).delete(remove_participant),
        )
        .route(
            "/api/rooms/{room}/participants/{participant}/tracks/{track}/mute",
            post(mute_track),
        )
        .route(
            "/api/rooms/{room}/participants/{participant}/subscriptions",
            post(update_subscriptions),
        )
        .route("/api/rooms/{room}/tracks", get(list_tracks))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            calls_go_to_the_host,
        ));
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/rooms", post(create_room).get(list_rooms))
        .route("/api/nodes", get(list_nodes))
        .merge(rooms)
}

/// Cluster mode: a call about a room this node serves for its host (an edge room: this node
/// holds only its own members' part of it) goes to the host, which holds the whole room: a
/// 307 to the same path and query there.
async fn calls_go_to_the_host(
    State(state): State<Arc<AppState>>,
    // Only a caller with a valid token learns where a room is.
    _admin: Admin,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match host_location(&state, request.uri()) {
        Some(location) => {
            let mut response = json_error(
                StatusCode::TEMPORARY_REDIRECT,
                "room_elsewhere",
                &format!("the room is hosted by another node: {location}"),
            );
            if let Ok(value) = header::HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        None => next.run(request).await,
    }
}

/// Where a room-service call about an edge room goes: the same path at the room's host.
fn host_location(state: &AppState, uri: &axum::http::Uri) -> Option<String> {
    let cluster = state.cluster.as_ref()?;
    // Room names are letters, digits, '-', '_' and '.': nothing to decode.
    let name = uri.path().strip_prefix("/api/rooms/")?.split('/').next()?;
    let room = state.rooms.get(name).filter(|r| r.is_edge())?;
    let host = cluster.relayed().host_of(&room)?;
    let url = cluster.nodes().into_iter().find(|n| n.id == host)?.url;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    Some(format!("{}{path}", url.trim_end_matches('/')))
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// A stable error code and a sentence that says what to do.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code.
    code: String,
    /// What went wrong and what to do.
    message: String,
}

/// A refused room-service call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    fn no_room(room: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_room",
            format!("there is no room {room:?}"),
        )
    }

    fn no_participant(participant: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_participant",
            format!("there is no participant {participant:?} in this room"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status, self.code, &self.message);
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(value) = header::HeaderValue::from_str("Bearer")
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The verified claims of the caller's token.
pub struct Admin(Claims);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "send an access token with an admin grant as 'Authorization: Bearer <token>'",
                )
            })?;
        let claims = state.keys.verify(token).map_err(|e| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                format!("{e}; mint a new token"),
            )
        })?;
        Ok(Admin(claims))
    }
}

impl Admin {
    fn grants(&self) -> &Grants {
        &self.0.video
    }

    fn may_create(&self) -> Result<(), ApiError> {
        if self.grants().room_create {
            Ok(())
        } else {
            Err(ApiError::forbidden("the token lacks the roomCreate grant"))
        }
    }

    fn may_list(&self) -> Result<(), ApiError> {
        if self.grants().room_list {
            Ok(())
        } else {
            Err(ApiError::forbidden("the token lacks the roomList grant"))
        }
    }

    /// `roomAdmin` for this very room.
    fn may_admin(&self, room: &str) -> Result<(), ApiError> {
        let g = self.grants();
        if g.room_admin && g.room.as_deref() == Some(room) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the token lacks the roomAdmin grant for room {room:?}"
            )))
        }
    }

    /// `roomList`, or `roomAdmin` for this room.
    fn may_view(&self, room: &str) -> Result<(), ApiError> {
        self.may_list().or_else(|_| self.may_admin(room))
    }
}

/// A JSON body, with malformed input reported as a 400 with a stable code.
pub struct Body<T>(T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::new(
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                "bad_request",
                format!("{}; see /api/openapi.json", rejection.body_text()),
            )),
        }
    }
}

/// A room to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// Room name: 1 to 128 letters, digits, '-', '_' or '.'.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")]
    name: String,
    /// Participants at most; 0 or absent: the server's limit.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000)]
    max_participants: Option<u32>,
    /// Seconds the room may stay empty before it is closed; absent: the server's default.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    empty_timeout: Option<u32>,
    /// Application data (up to 64 KiB), returned with the room.
    #[serde(default)]
    #[schema(max_length = 65536)]
    metadata: Option<String>,
}

/// A room.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomBody {
    /// Name.
    name: String,
    /// Creation time, seconds since the Unix epoch.
    created_at: u64,
    /// Participants at most (0: unlimited).
    max_participants: u32,
    /// Seconds it may stay empty (0 for rooms created by a join: they close when empty).
    empty_timeout: u32,
    /// Application data.
    metadata: String,
    /// Created through the room service.
    explicit: bool,
    /// Participants now.
    num_participants: u32,
    /// Published tracks now.
    num_tracks: u32,
}

/// Rooms.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomList {
    /// The rooms, by name.
    rooms: Vec<RoomBody>,
}

/// A participant.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantBody {
    /// Session id.
    id: String,
    /// Identity from its token.
    identity: String,
    /// Display name.
    name: String,
    /// Join time, seconds since the Unix epoch.
    joined_at: u64,
    /// How it is connected: `websocket`, `whip` or `whep`; in cluster mode `relay` for a
    /// participant connected to another node (listed by the room's host).
    via: String,
    /// Hidden from the other participants.
    hidden: bool,
    /// Tracks it publishes.
    tracks: Vec<TrackBody>,
}

/// Participants.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantList {
    /// By join time.
    participants: Vec<ParticipantBody>,
}

/// A published track.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackBody {
    /// Track id.
    id: String,
    /// Publisher's participant id.
    participant: String,
    /// `audio` or `video`.
    kind: String,
    /// `camera`, `microphone`, `screen` or `screen_audio`.
    source: String,
    /// Simulcast RIDs, lowest first.
    simulcast: Vec<String>,
    /// Muted.
    muted: bool,
}

/// Tracks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackList {
    /// The tracks.
    tracks: Vec<TrackBody>,
}

/// Mute or unmute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    /// Muted: the server stops forwarding the track.
    muted: bool,
}

/// Subscribe a participant to tracks, or unsubscribe it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    /// Track ids.
    #[schema(max_items = 1000)]
    tracks: Vec<String>,
    /// Subscribe (true) or unsubscribe (false).
    subscribe: bool,
}

fn track_body(t: &TrackInfo) -> TrackBody {
    TrackBody {
        id: t.id.clone(),
        participant: t.participant.clone(),
        kind: t.kind.clone(),
        source: t.source.clone(),
        simulcast: t.simulcast.clone(),
        muted: t.muted,
    }
}

fn room_body(room: &Room, snapshot: &RoomSnapshot) -> RoomBody {
    RoomBody {
        name: room.name.clone(),
        created_at: room.created_at,
        max_participants: u32::try_from(room.settings.max_participants).unwrap_or(u32::MAX),
        empty_timeout: u32::try_from(room.settings.empty_timeout.as_secs()).unwrap_or(u32::MAX),
        metadata: room.settings.metadata.clone(),
        explicit: room.settings.explicit,
        num_participants: u32::try_from(snapshot.members.len()).unwrap_or(u32::MAX),
        num_tracks: u32::try_from(snapshot.tracks.len()).unwrap_or(u32::MAX),
    }
}

fn room_of(state: &AppState, name: &str) -> Result<Arc<Room>, ApiError> {
    state.rooms.get(name).ok_or_else(|| ApiError::no_room(name))
}

fn valid_room_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Create a room.
#[utoipa::path(post, path = "/api/rooms", request_body = CreateRoom,
    responses(
        (status = 201, description = "Created", body = RoomBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomCreate grant", body = ErrorBody),
        (status = 409, description = "The room exists, or too many rooms", body = ErrorBody),
        (status = 503, description = "Cluster mode: the cluster's directory (Redis) is unreachable", body = ErrorBody),
    ))]
async fn create_room(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Body(request): Body<CreateRoom>,
) -> Result<Response, ApiError> {
    admin.may_create()?;
    if !valid_room_name(&request.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a room name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    let metadata = request.metadata.unwrap_or_default();
    if metadata.len() > 65536 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "metadata is limited to 64 KiB",
        ));
    }
    let limits = state.rooms.limits();
    let max_participants = match request.max_participants.unwrap_or(0) {
        0 => limits.max_participants,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let settings = RoomSettings {
        max_participants,
        empty_timeout: request
            .empty_timeout
            .map_or(limits.empty_timeout, |s| Duration::from_secs(u64::from(s))),
        metadata,
        explicit: true,
    };
    if let Some(cluster) = state
        .cluster
        .as_ref()
        .filter(|_| state.rooms.get(&request.name).is_none())
    {
        match cluster.place(&request.name).await {
            crate::cluster::Placement::Here => {}
            crate::cluster::Placement::Elsewhere(node, entry) => {
                let url = entry.map(|e| e.url).unwrap_or_default();
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "room_exists",
                    format!(
                        "room {:?} already exists on node {node} {url}",
                        request.name
                    ),
                ));
            }
            crate::cluster::Placement::Unavailable(why) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster_unavailable",
                    format!(
                        "the cluster's directory (Redis) is unreachable ({why}); try again shortly"
                    ),
                ));
            }
        }
    }
    let room = state
        .rooms
        .create(&request.name, settings)
        .map_err(|r| ApiError::new(StatusCode::CONFLICT, code_of(&r), r.message))?;
    let body = room_body(&room, &RoomSnapshot::default());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn code_of(refusal: &crate::protocol::Refusal) -> &'static str {
    use crate::protocol::ErrorCode;
    match refusal.code {
        ErrorCode::RoomExists => "room_exists",
        ErrorCode::TooManyRooms => "too_many_rooms",
        _ => "conflict",
    }
}

/// List rooms.
#[utoipa::path(get, path = "/api/rooms",
    responses(
        (status = 200, description = "The rooms", body = RoomList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomList grant", body = ErrorBody),
    ))]
async fn list_rooms(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<RoomList>, ApiError> {
    admin.may_list()?;
    let mut rooms = Vec::new();
    for room in state.rooms.list() {
        rooms.push(room_body(&room, &room.snapshot().await));
    }
    Ok(Json(RoomList { rooms }))
}

/// The cluster's nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Whether this node runs in cluster mode (`--redis-url`).
    cluster: bool,
    /// Whether the node answering reached Redis at its last heartbeat (true outside cluster
    /// mode); when false, `nodes` is the last list it read.
    redis_up: bool,
    /// The id of the node answering (`local` outside cluster mode).
    this_node: String,
    /// The live nodes, this one included, by id (empty outside cluster mode).
    nodes: Vec<NodeInfo>,
    /// Nodes this one has an authenticated media relay link with, by id.
    linked: Vec<String>,
    /// Rooms relayed over those links, both ways.
    relayed: Vec<crate::cluster::relay_rooms::RelayedRoom>,
}

/// List the cluster's live nodes, with their URLs and load.
#[utoipa::path(get, path = "/api/nodes",
    responses(
        (status = 200, description = "The nodes", body = NodeList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomList grant", body = ErrorBody),
    ))]
async fn list_nodes(
    State(state): State<Arc<AppState>>,
    admin: Admin,
) -> Result<Json<NodeList>, ApiError> {
    admin.may_list()?;
    Ok(Json(match &state.cluster {
        Some(cluster) => NodeList {
            cluster: true,
            redis_up: cluster.redis_up(),
            this_node: cluster.id(),
            nodes: cluster.nodes(),
            linked: cluster.linked(),
            relayed: cluster.relayed().summary(),
        },
        None => NodeList {
            cluster: false,
            redis_up: true,
            this_node: "local".to_string(),
            nodes: Vec::new(),
            linked: Vec::new(),
            relayed: Vec::new(),
        },
    }))
}

/// Get a room.
#[utoipa::path(get, path = "/api/rooms/{room}",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The room", body = RoomBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomList grant, nor roomAdmin for this room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
async fn get_room(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<RoomBody>, ApiError> {
    admin.may_view(&room)?;
    let room = room_of(&state, &room)?;
    Ok(Json(room_body(&room, &room.snapshot().await)))
}

/// Delete a room, disconnecting everyone in it.
#[utoipa::path(delete, path = "/api/rooms/{room}",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 204, description = "Deleted; its participants are being disconnected"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomCreate grant", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
async fn delete_room(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.may_create()?;
    if state.rooms.delete(&room).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::no_room(&room))
    }
}

async fn participant_bodies(room: &Room) -> Vec<ParticipantBody> {
    let RoomSnapshot { members, tracks } = room.snapshot().await;
    members
        .into_iter()
        .map(|m| ParticipantBody {
            tracks: tracks
                .iter()
                .filter(|t| t.info.participant == m.info.id)
                .map(|t| track_body(&t.info))
                .collect(),
            id: m.info.id,
            identity: m.info.identity,
            name: m.info.name,
            joined_at: m.joined_at,
            via: if m.relayed { "relay" } else { m.via.as_str() }.to_string(),
            hidden: m.hidden,
        })
        .collect()
}

/// List a room's participants.
#[utoipa::path(get, path = "/api/rooms/{room}/participants",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The participants", body = ParticipantList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomAdmin grant for this room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
async fn list_participants(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<ParticipantList>, ApiError> {
    admin.may_admin(&room)?;
    let room = room_of(&state, &room)?;
    Ok(Json(ParticipantList {
        participants: participant_bodies(&room).await,
    }))
}

/// Get a participant (by id or identity).
#[utoipa::path(get, path = "/api/rooms/{room}/participants/{participant}",
    params(
        ("room" = String, Path, description = "Room name"),
        ("participant" = String, Path, description = "Participant id or identity"),
    ),
    responses(
        (status = 200, description = "The participant", body = ParticipantBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomAdmin grant for this room", body = ErrorBody),
        (status = 404, description = "No such room or participant", body = ErrorBody),
    ))]
async fn get_participant(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((room, participant)): Path<(String, String)>,
) -> Result<Json<ParticipantBody>, ApiError> {
    admin.may_admin(&room)?;
    let room = room_of(&state, &room)?;
    participant_bodies(&room)
        .await
        .into_iter()
        .find(|p| p.id == participant || p.identity == participant)
        .map(Json)
        .ok_or_else(|| ApiError::no_participant(&participant))
}

/// Remove a participant from the room. The token it joined with is refused from then on
/// (until it expires): to let the participant back, give it a new token.
#[utoipa::path(delete, path = "/api/rooms/{room}/participants/{participant}",
    params(
        ("room" = String, Path, description = "Room name"),
        ("participant" = String, Path, description = "Participant id or identity"),
    ),
    responses(
        (status = 204, description = "Being disconnected"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomAdmin grant for this room", body = ErrorBody),
        (status = 404, description = "No such room or participant", body = ErrorBody),
    ))]
async fn remove_participant(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((room, participant)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin.may_admin(&room)?;
    let room = room_of(&state, &room)?;
    if let Some((token, expires)) = room
        .kick(&participant, crate::room::REMOVED_BY_ROOM_SERVICE)
        .await
    {
        // It cannot come straight back with the same token.
        state.revoked.revoke(&token, expires);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::no_participant(&participant))
    }
}

/// A room's refusal as an HTTP error.
fn room_error(e: RoomError) -> ApiError {
    let (status, code) = match &e {
        RoomError::NoSuchParticipant(_) => (StatusCode::NOT_FOUND, "unknown_participant"),
        RoomError::NoSuchTrack { .. } | RoomError::UnknownTrack(_) => {
            (StatusCode::NOT_FOUND, "unknown_track")
        }
        RoomError::NotSubscribing => (StatusCode::BAD_REQUEST, "not_subscribing"),
        RoomError::Closing => (StatusCode::NOT_FOUND, "unknown_room"),
        RoomError::Full { .. } => (StatusCode::CONFLICT, "room_full"),
        RoomError::MutedByAdmin => (StatusCode::FORBIDDEN, "permission_denied"),
        // The track ended while the media core applied the change.
        RoomError::Media(_) => (StatusCode::NOT_FOUND, "unknown_track"),
    };
    ApiError::new(status, code, e.to_string())
}

fn parse_track(id: &str) -> Result<TrackId, ApiError> {
    id.parse::<TrackId>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_track",
            format!("{id:?} is not a track id"),
        )
    })
}

/// Mute or unmute one of a participant's tracks: a muted track is not forwarded.
#[utoipa::path(post, path = "/api/rooms/{room}/participants/{participant}/tracks/{track}/mute",
    request_body = MuteBody,
    params(
        ("room" = String, Path, description = "Room name"),
        ("participant" = String, Path, description = "Participant id or identity"),
        ("track" = String, Path, description = "Track id"),
    ),
    responses(
        (status = 200, description = "The track", body = TrackBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomAdmin grant for this room", body = ErrorBody),
        (status = 404, description = "No such room, participant or track", body = ErrorBody),
    ))]
async fn mute_track(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((room, participant, track)): Path<(String, String, String)>,
    Body(request): Body<MuteBody>,
) -> Result<Json<TrackBody>, ApiError> {
    admin.may_admin(&room)?;
    let room = room_of(&state, &room)?;
    let id = parse_track(&track)?;
    let info = room
        .set_muted(&participant, &track, request.muted, MutedBy::Admin)
        .await
        .map_err(room_error)?;
    if let Some(cluster) = &state.cluster
        && !room.is_edge()
    {
        // A track published at another node is muted there too.
        cluster.relayed().admin_muted(&room.name, id, request.muted);
    }
    Ok(Json(track_body(&info)))
}

/// Subscribe a participant to tracks, or unsubscribe it from them.
#[utoipa::path(post, path = "/api/rooms/{room}/participants/{participant}/subscriptions",
    request_body = SubscriptionBody,
    params(
        ("room" = String, Path, description = "Room name"),
        ("participant" = String, Path, description = "Participant id or identity"),
    ),
    responses(
        (status = 204, description = "Updated"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomAdmin grant for this room", body = ErrorBody),
        (status = 404, description = "No such room, participant or track", body = ErrorBody),
    ))]
async fn update_subscriptions(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path((room, participant)): Path<(String, String)>,
    Body(request): Body<SubscriptionBody>,
) -> Result<StatusCode, ApiError> {
    admin.may_admin(&room)?;
    let room = room_of(&state, &room)?;
    room.update_subscriptions(&participant, request.tracks, request.subscribe)
        .await
        .map_err(room_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a room's published tracks.
#[utoipa::path(get, path = "/api/rooms/{room}/tracks",
    params(("room" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The tracks", body = TrackList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No roomList grant, nor roomAdmin for this room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
    ))]
async fn list_tracks(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<TrackList>, ApiError> {
    admin.may_view(&room)?;
    let room = room_of(&state, &room)?;
    let tracks = room
        .tracks()
        .await
        .iter()
        .map(|t| track_body(&t.info))
        .collect();
    Ok(Json(TrackList { tracks }))
}
