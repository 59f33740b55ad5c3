//! What crosses a relay link between two nodes, byte for byte: media datagrams (one RTP
//! packet of a relayed track each, with what the receiving node needs to route it) and the
//! control messages on the link's stream (length-prefixed JSON). This module owns the format,
//! its bounds and its validation; it does no I/O. Everything decoded here came from another
//! node and is treated as hostile input: a malformed datagram is refused with a reason (the
//! caller drops and counts it), a malformed control frame ends the link.
//!
//! A media datagram, big-endian:
//!
//! ```text
//! 0      1              5       6       7                      15
//! +------+--------------+-------+-------+----------------------+---------------------+
//! | 0x01 | relay id u32 | layer | flags | origin send time u64 | RTP packet (clear)  |
//! +------+--------------+-------+-------+----------------------+---------------------+
//! ```
//!
//! The relay id names one subscription on this link (the origin gives it in
//! [`RelayControl::TrackAdded`]); `layer` is the simulcast layer or SVC spatial layer the
//! packet belongs to; `flags` say whether it starts a keyframe and whether it repairs a
//! datagram lost earlier; the send time (microseconds since the Unix epoch, the origin's
//! clock) lets the edge measure what a hop adds. The RTP packet is the publisher's, as the
//! origin received it after SRTP: sequence numbers and timestamps untouched, so the edge can
//! detect loss per layer and rewrite for its own viewers as it does for a local publisher.

use serde::{Deserialize, Serialize};

/// First byte of a media datagram of this version of the format.
pub const MEDIA_V1: u8 = 0x01;
/// Bytes before the RTP packet in a media datagram.
pub const MEDIA_HEADER: usize = 15;
/// Shortest RTP packet (the fixed header).
const MIN_RTP: usize = 12;
/// Longest RTP packet relayed (what a 1500-byte Ethernet MTU carries after IP and UDP).
pub const MAX_RTP: usize = 1472;
/// Flag: the packet is the first of a keyframe.
const FLAG_KEYFRAME: u8 = 0x01;
/// Flag: the packet repairs one lost on the link (sent again on a NACK).
const FLAG_REPAIR: u8 = 0x02;
/// Layers a relayed track may have (simulcast streams or SVC spatial layers).
pub const MAX_LAYERS: usize = 8;
/// Longest control frame (its JSON), in bytes.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Longest data message relayed (its text, or its binary form in base64), in bytes.
pub const MAX_DATA: usize = 48 * 1024;
/// Sequence numbers one NACK may name.
pub const MAX_NACK: usize = 64;
/// Longest room name, track id, codec name, format parameters and refusal reason.
const MAX_ROOM: usize = 128;
const MAX_TRACK: usize = 64;
const MAX_RID: usize = 16;
/// Longest identity or display name.
pub const MAX_NAME: usize = 256;
/// Payload formats one relayed track may list.
pub const MAX_CODECS: usize = 16;
const MAX_CODEC: usize = 32;
const MAX_FMTP: usize = 512;
const MAX_REASON: usize = 256;

/// Why a datagram or a control frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its header, or than an RTP header after it.
    #[error("datagram too short ({0} bytes)")]
    TooShort(usize),
    /// Longer than any RTP packet relayed.
    #[error("datagram too long ({0} bytes)")]
    TooLong(usize),
    /// A first byte this node does not know (another version of the format).
    #[error("unknown datagram version {0:#04x}")]
    UnknownVersion(u8),
    /// The payload is not RTP version 2.
    #[error("the payload is not RTP")]
    NotRtp,
    /// A layer index past [`MAX_LAYERS`].
    #[error("layer {0} out of range")]
    Layer(u8),
    /// A control frame announcing more than [`MAX_CONTROL_FRAME`] bytes.
    #[error("control frame of {0} bytes (at most {MAX_CONTROL_FRAME})")]
    FrameTooLong(usize),
    /// A control frame that is not a valid message.
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// One media datagram, decoded (borrowing the RTP packet from the datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaDatagram<'a> {
    /// The subscription on this link.
    pub relay_id: u32,
    /// Simulcast layer or SVC spatial layer.
    pub layer: u8,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// The packet is sent again, repairing a loss on the link.
    pub repair: bool,
    /// When the origin sent it (microseconds since the Unix epoch, its clock).
    pub sent_at_us: u64,
    /// The RTP packet, in the clear.
    pub rtp: &'a [u8],
}

impl<'a> MediaDatagram<'a> {
    /// Reads a datagram, checking every bound.
    pub fn decode(data: &'a [u8]) -> Result<Self, WireError> {
        let (&version, _) = data.split_first().ok_or(WireError::TooShort(0))?;
        if version != MEDIA_V1 {
            return Err(WireError::UnknownVersion(version));
        }
        if data.len() < MEDIA_HEADER + MIN_RTP {
            return Err(WireError::TooShort(data.len()));
        }
        let (header, rtp) = data.split_at(MEDIA_HEADER);
        if rtp.len() > MAX_RTP {
            return Err(WireError::TooLong(data.len()));
        }
        if rtp.first().is_none_or(|b| b >> 6 != 2) {
            return Err(WireError::NotRtp);
        }
        let u32_at = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok());
        let u64_at = |i: usize| header.get(i..i + 8).and_then(|b| b.try_into().ok());
        let (Some(id), Some(&layer), Some(&flags), Some(sent)) =
            (u32_at(1), header.get(5), header.get(6), u64_at(7))
        else {
            return Err(WireError::TooShort(data.len()));
        };
        if usize::from(layer) >= MAX_LAYERS {
            return Err(WireError::Layer(layer));
        }
        Ok(Self {
            relay_id: u32::from_be_bytes(id),
            layer,
            keyframe: flags & FLAG_KEYFRAME != 0,
            repair: flags & FLAG_REPAIR != 0,
            sent_at_us: u64::from_be_bytes(sent),
            rtp,
        })
    }

    /// Writes the datagram into `out` (cleared first), so a sender can reuse one buffer.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(MEDIA_HEADER + self.rtp.len());
        out.push(MEDIA_V1);
        out.extend_from_slice(&self.relay_id.to_be_bytes());
        out.push(self.layer);
        let flags = if self.keyframe { FLAG_KEYFRAME } else { 0 }
            | if self.repair { FLAG_REPAIR } else { 0 };
        out.push(flags);
        out.extend_from_slice(&self.sent_at_us.to_be_bytes());
        out.extend_from_slice(self.rtp);
    }
}

/// A payload format of a relayed track (as its publisher negotiated it at the origin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCodec {
    /// Payload type in the relayed packets.
    pub pt: u8,
    /// Codec name as in SDP (`opus`, `VP8`, ...).
    pub name: String,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels, where the codec has them.
    pub channels: Option<u8>,
    /// Format parameters (`a=fmtp`).
    pub fmtp: String,
}

/// A track of a room at the origin, as the edge needs it to publish it to its viewers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedTrack {
    /// Its publisher's participant id.
    pub participant: String,
    /// Its publisher's identity.
    pub identity: String,
    /// Its publisher's display name.
    pub name: String,
    /// `audio` or `video`.
    pub kind: TrackKind,
    /// What it shows (`camera`, `microphone`, `screen`, ...).
    pub source: String,
    /// Simulcast RIDs in layer order (empty without simulcast).
    pub simulcast: Vec<String>,
    /// Simulcast streams, or spatial layers of one scalable stream.
    pub layers: u8,
    /// Muted at the origin.
    pub muted: bool,
    /// Its payload formats.
    pub codecs: Vec<WireCodec>,
}

/// A member of a room at one node, as the other node is told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireParticipant {
    /// Its participant id (unique in the room, cluster-wide).
    pub id: String,
    /// Its identity (from its access token).
    pub identity: String,
    /// Its display name.
    pub name: String,
}

/// How a member is connected to the node that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireVia {
    /// The signalling WebSocket.
    Websocket,
    /// A WHIP publisher.
    Whip,
    /// A WHEP viewer.
    Whep,
}

/// A track's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// A control message on a relay link's stream. A node that serves members of a room hosted by
/// another (the edge) sends `room_subscribe`; the room's host answers with `room_subscribe`
/// in turn (it receives the edge's publishers' tracks), or `room_refused`. Then each side, as
/// the origin of the tracks published at its node, sends `track_added`, `track_removed` and
/// `muted`, and, as their receiver, `set_layers`, `keyframe_request` and `nack` per track.
/// Relay ids are the sender of the track's, one per relayed track and direction on the link.
/// Membership is the host's: an edge asks it to `admit` each member joining there and says
/// when it left (`member_left`); the host tells each edge of the members elsewhere
/// (`member_joined`, `member_left`) and may `kick` one of the edge's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayControl {
    /// Relay me room `room`'s tracks (some of its viewers are on my node).
    RoomSubscribe {
        /// The room's name.
        room: String,
    },
    /// I have no viewer of `room` any more.
    RoomUnsubscribe {
        /// The room's name.
        room: String,
    },
    /// The origin does not (or no longer does) host `room`.
    RoomRefused {
        /// The room's name.
        room: String,
        /// Why, for the log.
        reason: String,
    },
    /// A track of `room` is relayed as `relay_id` (no layer crosses until `set_layers`).
    TrackAdded {
        /// The room's name.
        room: String,
        /// Its id on this link.
        relay_id: u32,
        /// What it is.
        track: RelayedTrack,
    },
    /// The track ended at the origin.
    TrackRemoved {
        /// Its id on this link.
        relay_id: u32,
    },
    /// The track was muted or unmuted at the origin.
    Muted {
        /// Its id on this link.
        relay_id: u32,
        /// Muted or not.
        muted: bool,
    },
    /// The room's administrator (at the host) muted or unmuted a track the receiver sends:
    /// it stops (or resumes) forwarding it at its source too, where the publisher is.
    AdminMute {
        /// Its id on this link (the receiver's, as it announced the track).
        relay_id: u32,
        /// Muted or not.
        muted: bool,
    },
    /// Send these layers of the track (bit 0: the lowest; 0: none).
    SetLayers {
        /// Its id on this link.
        relay_id: u32,
        /// Layers wanted, a bit each.
        layers: u32,
    },
    /// A viewer at the edge needs a keyframe of `layer` (one per layer however many viewers
    /// asked; the origin coalesces edges and throttles).
    KeyframeRequest {
        /// Its id on this link.
        relay_id: u32,
        /// The layer.
        layer: u8,
    },
    /// These RTP sequence numbers of `layer` did not arrive: send them again if still held.
    Nack {
        /// Its id on this link.
        relay_id: u32,
        /// The layer.
        layer: u8,
        /// Missing sequence numbers (at most [`MAX_NACK`]).
        seqs: Vec<u16>,
    },
    /// Edge to host: may `participant`, joining `room` at the edge, be a member? The host
    /// applies the room's limit and its one-session-per-identity rule, answers `admitted`,
    /// and counts the participant as a member until `member_left`.
    Admit {
        /// The room's name.
        room: String,
        /// Names the answer.
        request: u32,
        /// Who joins.
        participant: WireParticipant,
        /// How it is connected (one session per identity and kind of session).
        via: WireVia,
        /// Invisible to the other members.
        hidden: bool,
    },
    /// Host to edge: the answer to `admit` `request`.
    Admitted {
        /// The request answered.
        request: u32,
        /// Why not (`None`: admitted).
        refused: Option<String>,
        /// Refused because the room is full.
        full: bool,
    },
    /// Host to edge: a member of `room` at another node (the host or a third node).
    MemberJoined {
        /// The room's name.
        room: String,
        /// Who.
        participant: WireParticipant,
    },
    /// A member left `room` (edge to host: one it admitted; host to edge: one it announced).
    MemberLeft {
        /// The room's name.
        room: String,
        /// Its participant id.
        participant: String,
    },
    /// Host to edge: disconnect a member of `room` admitted there (the room service removed
    /// it, or its identity joined again elsewhere).
    Kick {
        /// The room's name.
        room: String,
        /// Its participant id.
        participant: String,
        /// What the participant is told.
        reason: String,
    },
    /// A data message of `room`'s members at the sending node, already wrapped with its
    /// sender's identity, for the members at the other (either way).
    Data {
        /// The room's name.
        room: String,
        /// A binary message (`data` is then base64).
        binary: bool,
        /// The message (at most [`MAX_DATA`] bytes as sent).
        data: String,
    },
}

impl RelayControl {
    /// Checks the bounds serde cannot: string lengths, list lengths, layer indices.
    fn validate(&self) -> Result<(), WireError> {
        let text = |what: &str, s: &str, max: usize| {
            if s.len() > max {
                Err(WireError::Malformed(format!(
                    "{what} of {} bytes (at most {max})",
                    s.len()
                )))
            } else {
                Ok(())
            }
        };
        let layer = |l: u8| {
            if usize::from(l) < MAX_LAYERS {
                Ok(())
            } else {
                Err(WireError::Layer(l))
            }
        };
        match self {
            Self::RoomSubscribe { room } | Self::RoomUnsubscribe { room } => {
                text("room", room, MAX_ROOM)
            }
            Self::RoomRefused { room, reason } => {
                text("room", room, MAX_ROOM)?;
                text("reason", reason, MAX_REASON)
            }
            Self::TrackAdded { room, track, .. } => {
                text("room", room, MAX_ROOM)?;
                text("participant", &track.participant, MAX_TRACK)?;
                text("identity", &track.identity, MAX_NAME)?;
                text("name", &track.name, MAX_NAME)?;
                text("source", &track.source, MAX_TRACK)?;
                if usize::from(track.layers) > MAX_LAYERS || track.simulcast.len() > MAX_LAYERS {
                    return Err(WireError::Malformed(format!(
                        "{} layers (at most {MAX_LAYERS})",
                        track.layers.max(track.simulcast.len() as u8)
                    )));
                }
                for rid in &track.simulcast {
                    text("rid", rid, MAX_RID)?;
                }
                if track.codecs.len() > MAX_CODECS {
                    return Err(WireError::Malformed(format!(
                        "{} codecs (at most {MAX_CODECS})",
                        track.codecs.len()
                    )));
                }
                for codec in &track.codecs {
                    text("codec", &codec.name, MAX_CODEC)?;
                    text("fmtp", &codec.fmtp, MAX_FMTP)?;
                }
                Ok(())
            }
            Self::KeyframeRequest { layer: l, .. } => layer(*l),
            Self::Nack { layer: l, seqs, .. } => {
                layer(*l)?;
                if seqs.len() > MAX_NACK {
                    return Err(WireError::Malformed(format!(
                        "NACK of {} packets (at most {MAX_NACK})",
                        seqs.len()
                    )));
                }
                Ok(())
            }
            Self::Data { room, data, .. } => {
                text("room", room, MAX_ROOM)?;
                text("data", data, MAX_DATA)
            }
            Self::Admit {
                room, participant, ..
            }
            | Self::MemberJoined { room, participant } => {
                text("room", room, MAX_ROOM)?;
                text("participant", &participant.id, MAX_TRACK)?;
                text("identity", &participant.identity, MAX_NAME)?;
                text("name", &participant.name, MAX_NAME)
            }
            Self::Admitted { refused, .. } => {
                text("reason", refused.as_deref().unwrap_or(""), MAX_REASON)
            }
            Self::MemberLeft { room, participant } => {
                text("room", room, MAX_ROOM)?;
                text("participant", participant, MAX_TRACK)
            }
            Self::Kick {
                room,
                participant,
                reason,
            } => {
                text("room", room, MAX_ROOM)?;
                text("participant", participant, MAX_TRACK)?;
                text("reason", reason, MAX_REASON)
            }
            Self::TrackRemoved { .. }
            | Self::Muted { .. }
            | Self::AdminMute { .. }
            | Self::SetLayers { .. } => Ok(()),
        }
    }

    /// The message as one frame: its length (u32, big-endian), then its JSON. Fails only for
    /// a message that breaks the bounds the other end enforces (a bug on this side).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.validate()?;
        let json = serde_json::to_vec(self).map_err(|e| WireError::Malformed(e.to_string()))?;
        if json.len() > MAX_CONTROL_FRAME {
            return Err(WireError::FrameTooLong(json.len()));
        }
        let len = u32::try_from(json.len()).map_err(|_| WireError::FrameTooLong(json.len()))?;
        let mut frame = Vec::with_capacity(4 + json.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&json);
        Ok(frame)
    }
}

/// Reads control frames out of a byte stream however it is split: bytes go in with
/// [`push`](Self::push), messages come out of [`next_message`](Self::next_message). Holds at most one frame
/// (plus the read that completed it); an error leaves the stream unusable, and the caller
/// ends the link.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    buf: Vec<u8>,
}

impl ControlDecoder {
    /// Appends bytes read from the stream. Refuses them if they would make the buffer hold
    /// more than one whole frame and its length prefix.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.buf.len() + bytes.len() > 2 * (4 + MAX_CONTROL_FRAME) {
            return Err(WireError::FrameTooLong(self.buf.len() + bytes.len()));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<RelayControl>, WireError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_CONTROL_FRAME {
            return Err(WireError::FrameTooLong(len));
        }
        let Some(json) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let message: RelayControl =
            serde_json::from_slice(json).map_err(|e| WireError::Malformed(e.to_string()))?;
        self.buf.drain(..4 + len);
        message.validate()?;
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x80;
        p[1] = 96;
        p
    }

    fn datagram(rtp: &[u8]) -> MediaDatagram<'_> {
        MediaDatagram {
            relay_id: 0xdead_beef,
            layer: 2,
            keyframe: true,
            repair: false,
            sent_at_us: 1_764_540_000_123_456,
            rtp,
        }
    }

    #[test]
    fn a_datagram_reads_back_as_written() {
        let packet = rtp(1200);
        let mut out = Vec::new();
        datagram(&packet).encode_into(&mut out);
        assert_eq!(out.len(), MEDIA_HEADER + 1200);
        assert_eq!(MediaDatagram::decode(&out), Ok(datagram(&packet)));
        let repair = MediaDatagram {
            keyframe: false,
            repair: true,
            ..datagram(&packet)
        };
        repair.encode_into(&mut out);
        assert_eq!(MediaDatagram::decode(&out), Ok(repair));
    }

    #[test]
    fn malformed_datagrams_are_refused_with_a_reason() {
        let mut good = Vec::new();
        datagram(&rtp(100)).encode_into(&mut good);
        assert_eq!(MediaDatagram::decode(&[]), Err(WireError::TooShort(0)));
        assert_eq!(
            MediaDatagram::decode(&good[..MEDIA_HEADER + 11]),
            Err(WireError::TooShort(MEDIA_HEADER + 11))
        );
        let mut other = good.clone();
        other[0] = 0x02;
        assert_eq!(
            MediaDatagram::decode(&other),
            Err(WireError::UnknownVersion(2))
        );
        let mut not_rtp = good.clone();
        not_rtp[MEDIA_HEADER] = 0x40;
        assert_eq!(MediaDatagram::decode(&not_rtp), Err(WireError::NotRtp));
        let mut layer = good.clone();
        layer[5] = 8;
        assert_eq!(MediaDatagram::decode(&layer), Err(WireError::Layer(8)));
        let mut long = Vec::new();
        datagram(&rtp(MAX_RTP + 1)).encode_into(&mut long);
        assert_eq!(
            MediaDatagram::decode(&long),
            Err(WireError::TooLong(long.len()))
        );
    }

    fn every_message() -> Vec<RelayControl> {
        vec![
            RelayControl::RoomSubscribe {
                room: "all-hands".into(),
            },
            RelayControl::TrackAdded {
                room: "all-hands".into(),
                relay_id: 7,
                track: RelayedTrack {
                    participant: "PA_1".into(),
                    identity: "alice".into(),
                    name: "Alice".into(),
                    kind: TrackKind::Video,
                    source: "camera".into(),
                    simulcast: vec!["q".into(), "h".into(), "f".into()],
                    layers: 3,
                    muted: false,
                    codecs: vec![WireCodec {
                        pt: 96,
                        name: "VP8".into(),
                        clock_rate: 90_000,
                        channels: None,
                        fmtp: String::new(),
                    }],
                },
            },
            RelayControl::RoomRefused {
                room: "other".into(),
                reason: "not hosted here".into(),
            },
            RelayControl::SetLayers {
                relay_id: 7,
                layers: 1,
            },
            RelayControl::KeyframeRequest {
                relay_id: 7,
                layer: 0,
            },
            RelayControl::Nack {
                relay_id: 7,
                layer: 1,
                seqs: vec![65_535, 0, 1],
            },
            RelayControl::Muted {
                relay_id: 7,
                muted: true,
            },
            RelayControl::TrackRemoved { relay_id: 7 },
            RelayControl::AdminMute {
                relay_id: 7,
                muted: true,
            },
            RelayControl::Data {
                room: "all-hands".into(),
                binary: false,
                data: "{\"from\":\"PA_1\",\"identity\":\"alice\",\"data\":\"hi\"}".into(),
            },
            RelayControl::RoomUnsubscribe {
                room: "all-hands".into(),
            },
            RelayControl::Admit {
                room: "all-hands".into(),
                request: 3,
                participant: WireParticipant {
                    id: "PA_2".into(),
                    identity: "bob".into(),
                    name: "Bob".into(),
                },
                via: WireVia::Whep,
                hidden: false,
            },
            RelayControl::Admitted {
                request: 3,
                refused: Some("room \"all-hands\" is full (2 participants); try later".into()),
                full: true,
            },
            RelayControl::MemberJoined {
                room: "all-hands".into(),
                participant: WireParticipant {
                    id: "PA_1".into(),
                    identity: "alice".into(),
                    name: "Alice".into(),
                },
            },
            RelayControl::MemberLeft {
                room: "all-hands".into(),
                participant: "PA_1".into(),
            },
            RelayControl::Kick {
                room: "all-hands".into(),
                participant: "PA_2".into(),
                reason: "removed by the room service".into(),
            },
        ]
    }

    #[test]
    fn control_messages_read_back_however_the_stream_splits_them() {
        let messages = every_message();
        let stream: Vec<u8> = messages.iter().flat_map(|m| m.encode().unwrap()).collect();
        for chunk in [1, 3, 64, stream.len()] {
            let mut decoder = ControlDecoder::default();
            let mut read = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece).unwrap();
                while let Some(m) = decoder.next_message().unwrap() {
                    read.push(m);
                }
            }
            assert_eq!(read, messages, "read in chunks of {chunk}");
        }
    }

    #[test]
    fn malformed_control_frames_are_refused() {
        let frame = |json: &str| {
            let mut f = (json.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(json.as_bytes());
            f
        };
        let refused = |bytes: Vec<u8>| {
            let mut d = ControlDecoder::default();
            d.push(&bytes).and_then(|()| d.next_message())
        };
        assert!(matches!(
            refused(frame("{\"type\":\"launch\"}")),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            refused(frame("not json")),
            Err(WireError::Malformed(_))
        ));
        let nack = format!(
            "{{\"type\":\"nack\",\"relay_id\":1,\"layer\":0,\"seqs\":[{}]}}",
            vec!["1"; MAX_NACK + 1].join(",")
        );
        assert!(matches!(
            refused(frame(&nack)),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            refused(frame(
                "{\"type\":\"keyframe_request\",\"relay_id\":1,\"layer\":9}"
            )),
            Err(WireError::Layer(9))
        );
        let room = format!(
            "{{\"type\":\"room_subscribe\",\"room\":\"{}\"}}",
            "r".repeat(MAX_ROOM + 1)
        );
        assert!(matches!(
            refused(frame(&room)),
            Err(WireError::Malformed(_))
        ));
        let admit = format!(
            "{{\"type\":\"admit\",\"room\":\"r\",\"request\":1,\"via\":\"whep\",\"hidden\":false,\"participant\":{{\"id\":\"PA_1\",\"name\":\"\",\"identity\":\"{}\"}}}}",
            "i".repeat(MAX_NAME + 1)
        );
        assert!(matches!(
            refused(frame(&admit)),
            Err(WireError::Malformed(_))
        ));
        // A length past the bound is refused before its bytes arrive.
        assert_eq!(
            refused(((MAX_CONTROL_FRAME + 1) as u32).to_be_bytes().to_vec()),
            Err(WireError::FrameTooLong(MAX_CONTROL_FRAME + 1))
        );
        // A sender that never completes a frame cannot make the buffer grow without bound.
        let mut d = ControlDecoder::default();
        d.push(&(MAX_CONTROL_FRAME as u32).to_be_bytes()).unwrap();
        d.push(&vec![b' '; MAX_CONTROL_FRAME]).unwrap();
        assert!(d.push(&vec![b' '; MAX_CONTROL_FRAME + 8]).is_err());
    }

    #[test]
    fn a_message_past_the_bounds_is_not_sent() {
        let nack = RelayControl::Nack {
            relay_id: 1,
            layer: 0,
            seqs: vec![0; MAX_NACK + 1],
        };
        assert!(nack.encode().is_err());
    }
}
