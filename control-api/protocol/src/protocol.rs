//! The signalling protocol's messages (see `control-api/PROTOCOL.md`): JSON objects tagged by
//! `type`, one per WebSocket text frame. Shared with clients written in Rust (the bots).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcTarget {
    /// The connection the client publishes on (the client offers).
    Publish,
    /// The connection the client receives on (the server offers).
    Subscribe,
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join the room named in the token.
    Join {
        /// The access token.
        token: String,
    },
    /// Offer for the publish connection.
    PublishOffer {
        /// SDP.
        sdp: String,
        /// What each mid carries (`camera`, `microphone`, `screen`, `screen_audio`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sources: BTreeMap<String, String>,
    },
    /// Answer to the latest subscribe offer.
    SubscribeAnswer {
        /// SDP.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// Which connection.
        target: PcTarget,
        /// The `candidate:...` line; absent or empty at the end of candidates.
        #[serde(default)]
        candidate: Option<String>,
    },
    /// The client muted or unmuted one of its tracks.
    Mute {
        /// Track id.
        track: String,
        /// Muted or not.
        muted: bool,
    },
    /// What the client wants of a remote video track: a quality, and the size it shows the
    /// video at (the server sends no layer larger than needed to cover it).
    SetQuality {
        /// Track id.
        track: String,
        /// Wanted quality (`auto` if absent).
        #[serde(default)]
        quality: QualityName,
        /// Width of the largest view of the track, in device pixels (with `height`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        /// Height of that view, in device pixels (with `width`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
    },
    /// Keep-alive.
    Ping,
    /// Leave the room.
    Leave,
    /// First message of a new socket after the previous one dropped: carry on the session of
    /// `token` (from `joined`) instead of joining again.
    Resume {
        /// The `resume_token` of `joined`.
        token: String,
        /// The highest `seq` received from the server (0 if none).
        #[serde(default)]
        last_seq: u64,
    },
    /// Restart ICE on the subscribe connection (the client's network changed): the server
    /// sends a `subscribe_offer` with new ICE credentials. The publish connection restarts
    /// with a `publish_offer` carrying new credentials.
    RestartIce,
}

impl ClientMessage {
    /// The `type` values clients may send.
    pub const TYPES: [&'static str; 10] = [
        "join",
        "publish_offer",
        "subscribe_answer",
        "candidate",
        "mute",
        "set_quality",
        "ping",
        "leave",
        "resume",
        "restart_ice",
    ];
}

/// A quality a subscriber can ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityName {
    /// The server chooses.
    #[default]
    Auto,
    /// The top layer.
    High,
    /// The middle layer.
    Medium,
    /// The lowest layer.
    Low,
}

/// One entry of `active_speakers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speaker {
    /// Participant id.
    pub participant: String,
    /// Smoothed loudness, 0 to 1.
    pub level: f32,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Session id (`PA_...`).
    pub id: String,
    /// Identity from the access token.
    pub identity: String,
    /// Display name.
    pub name: String,
}

/// A published track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Track id (`TR_...`).
    pub id: String,
    /// Publisher's participant id.
    pub participant: String,
    /// `"audio"` or `"video"`.
    pub kind: String,
    /// The publisher's mid for this track.
    pub mid: String,
    /// What it carries: `camera`, `microphone`, `screen`, `screen_audio`.
    pub source: String,
    /// Simulcast RIDs, lowest quality first (empty without simulcast).
    pub simulcast: Vec<String>,
    /// Whether the publisher has muted it.
    pub muted: bool,
}

/// Which remote track a subscriber mid carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedTrack {
    /// The mid in the subscriber's session.
    pub mid: String,
    /// Track id.
    pub track: String,
    /// Publisher's participant id.
    pub participant: String,
    /// `"audio"` or `"video"`.
    pub kind: String,
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or a field is missing or has the wrong type.
    BadMessage,
    /// The `type` is not one the server knows.
    UnknownType,
    /// The message needs a joined session.
    NotJoined,
    /// `join` was sent twice.
    AlreadyJoined,
    /// The token is invalid, expired or for another server.
    BadToken,
    /// The token does not grant this.
    PermissionDenied,
    /// The room is full.
    RoomFull,
    /// The room does not exist (and is not created on join).
    UnknownRoom,
    /// The SDP or ICE candidate was refused.
    BadSdp,
    /// No such track (or not yours).
    UnknownTrack,
    /// A media connection closed.
    MediaClosed,
    /// A track this connection subscribes to is sent in a codec the connection did not accept
    /// (the server does not transcode): it is not forwarded. The message names the track.
    UnsupportedCodec,
    /// The server is shutting down and takes no new participants.
    Draining,
    /// The server has as many participants as it may (`--max-node-participants`): try
    /// another server, or later.
    ServerFull,
    /// A room of that name already exists.
    RoomExists,
    /// The server has as many rooms as it may.
    TooManyRooms,
    /// The client sends messages too fast.
    RateLimited,
    /// A `resume` could not be honoured (unknown or expired token, or messages it missed are
    /// gone): join again.
    ResumeFailed,
    /// The room is hosted by another node of the cluster: join there (the error's `url`, a
    /// signalling URL) with the same token.
    RoomElsewhere,
    /// The cluster's directory (Redis) cannot be reached, so this node cannot start a room or
    /// find the node hosting it: try again shortly, or another node.
    ClusterUnavailable,
    /// Something failed on the server.
    Internal,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `join`.
    Joined {
        /// Room name.
        room: String,
        /// You.
        participant: ParticipantInfo,
        /// The others already in the room.
        participants: Vec<ParticipantInfo>,
        /// Tracks already published.
        tracks: Vec<TrackInfo>,
        /// TURN relays and credentials for both peer connections (`RTCConfiguration`'s
        /// `iceServers`); empty when the server has none configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// Secret that lets a new socket carry on this session (`resume`) if this one drops;
        /// absent when the server does not resume sessions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// Signalling URLs of the cluster's other live nodes, least busy first: where to
        /// join again (with the same token) if this server becomes unreachable. Empty
        /// outside cluster mode.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alternates: Vec<String>,
    },
    /// Reply to `resume`: the session carries on; the messages the client missed follow.
    Resumed {
        /// The highest `seq` of the client's messages the server has handled (0 if none or
        /// unnumbered): the client sends again those after it.
        last_seq: u64,
    },
    /// Answer for the publish connection.
    PublishAnswer {
        /// SDP.
        sdp: String,
    },
    /// Offer for the subscribe connection.
    SubscribeOffer {
        /// SDP.
        sdp: String,
        /// What each mid carries.
        tracks: Vec<OfferedTrack>,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Their id.
        participant: String,
    },
    /// A track was published.
    TrackPublished {
        /// The track.
        track: TrackInfo,
    },
    /// A track is gone.
    TrackUnpublished {
        /// Track id.
        track: String,
        /// Publisher's id.
        participant: String,
    },
    /// A publisher muted or unmuted a track.
    TrackMuted {
        /// Track id.
        track: String,
        /// Publisher's id.
        participant: String,
        /// Muted or not.
        muted: bool,
    },
    /// Which layer of a subscribed video track is forwarded, which is wanted, and why.
    LayerState {
        /// Track id.
        track: String,
        /// Layer forwarded (index into the track's `simulcast` list; 0 = lowest).
        #[serde(skip_serializing_if = "Option::is_none")]
        current: Option<u8>,
        /// Layer wanted; differs from `current` while its keyframe is awaited.
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<u8>,
        /// `best`, `requested`, `bandwidth` or `unavailable`.
        reason: String,
        /// How many layers the track offers: its simulcast streams, or the spatial layers of
        /// one scalable (SVC) stream.
        #[serde(default)]
        layers: u8,
        /// Whether the switch to `target` waits for that layer's next keyframe.
        waiting_keyframe: bool,
        /// Highest temporal layer forwarded when upper ones are dropped for bandwidth (lower
        /// frame rate); absent when all are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_temporal: Option<u8>,
    },
    /// Dynacast, to a publisher: which simulcast layers of one of its video tracks to send
    /// (nobody receives the others). Set the other encodings inactive; resumed the same way.
    LayersWanted {
        /// Track id.
        track: String,
        /// Per layer, in the track's `simulcast` order (lowest first): send it or not.
        active: Vec<bool>,
    },
    /// Who is speaking, loudest first (sent when the list changes).
    ActiveSpeakers {
        /// The speakers.
        speakers: Vec<Speaker>,
    },
    /// A refused request.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// What to do, for humans.
        message: String,
        /// Where to go instead (`room_elsewhere`: the signalling URL of the node hosting the
        /// room).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Reply to `ping`.
    Pong,
    /// The session is over.
    Left {
        /// Why.
        reason: String,
    },
}

impl ServerMessage {
    /// An error message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            url: None,
        }
    }
}

/// A refused request: becomes an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// What to do, for humans.
    pub message: String,
    /// Where to go instead.
    pub url: Option<String>,
}

impl Refusal {
    /// A refusal with this code and sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            url: None,
        }
    }

    /// The same refusal, pointing the client at `url`.
    pub fn at(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
}

impl From<Refusal> for ServerMessage {
    fn from(r: Refusal) -> Self {
        ServerMessage::Error {
            code: r.code,
            message: r.message,
            url: r.url,
        }
    }
}

/// Parses a client frame, telling malformed JSON apart from an unknown `type`.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Refusal> {
    parse_numbered_client_message(text).map(|(message, _)| message)
}

/// Parses a client frame and its optional `seq` (a positive integer the client numbers its
/// messages with, so a resumed session knows which ones arrived).
pub fn parse_numbered_client_message(text: &str) -> Result<(ClientMessage, Option<u64>), Refusal> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            ErrorCode::BadMessage,
            format!("the message is not valid JSON: {e}"),
        )
    })?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            "every message must be a JSON object with a string field \"type\"",
        ));
    };
    if !ClientMessage::TYPES.contains(&kind.as_str()) {
        return Err(Refusal::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {kind:?}; known types: {}",
                ClientMessage::TYPES.join(", ")
            ),
        ));
    }
    let seq = value.get("seq").and_then(serde_json::Value::as_u64);
    let message = serde_json::from_value(value)
        .map_err(|e| Refusal::new(ErrorCode::BadMessage, format!("bad {kind:?} message: {e}")))?;
    Ok((message, seq))
}

/// One entry of `RTCConfiguration.iceServers`: a TURN relay and its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IceServer {
    /// The relay URLs these credentials are for.
    pub urls: Vec<String>,
    /// TURN username (`EXPIRY:IDENTITY`).
    pub username: String,
    /// TURN password.
    pub credential: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies() {
        assert_eq!(
            parse_client_message(r#"{"type":"join","token":"t"}"#),
            Ok(ClientMessage::Join { token: "t".into() })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"candidate","target":"publish"}"#),
            Ok(ClientMessage::Candidate {
                target: PcTarget::Publish,
                candidate: None
            })
        );
        let code = |t: &str| parse_client_message(t).err().map(|r| r.code);
        assert_eq!(code("{"), Some(ErrorCode::BadMessage));
        assert_eq!(code("[]"), Some(ErrorCode::BadMessage));
        assert_eq!(code(r#"{"type":7}"#), Some(ErrorCode::BadMessage));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(code(r#"{"type":"join"}"#), Some(ErrorCode::BadMessage));
        assert_eq!(
            parse_numbered_client_message(r#"{"type":"ping","seq":7}"#),
            Ok((ClientMessage::Ping, Some(7)))
        );
        assert_eq!(
            parse_numbered_client_message(r#"{"type":"ping","seq":"x"}"#),
            Ok((ClientMessage::Ping, None))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"resume","token":"r"}"#),
            Ok(ClientMessage::Resume {
                token: "r".into(),
                last_seq: 0
            })
        );
    }

    #[test]
    fn server_messages_are_tagged_snake_case() {
        let json = serde_json::to_string(&ServerMessage::ParticipantLeft {
            participant: "PA_1".into(),
        })
        .unwrap_or_default();
        assert_eq!(json, r#"{"type":"participant_left","participant":"PA_1"}"#);
        let json = serde_json::to_string(&ServerMessage::error(ErrorCode::RoomFull, "x"))
            .unwrap_or_default();
        assert_eq!(json, r#"{"type":"error","code":"room_full","message":"x"}"#);
    }
}
