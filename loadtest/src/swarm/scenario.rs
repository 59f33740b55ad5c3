//! A swarm scenario: how many rooms, who publishes and who watches, with which media and over
//! which protocol; and from it, one plan (room, identity, role) and one bot configuration per
//! bot.

use std::time::Duration;

use serde::Serialize;
use sfu_protocol::auth::{ApiKeys, Claims, Grants};

use crate::bot::{BotConfig, MediaSource, Transport};

/// What a bot does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes and does not subscribe (a broadcaster).
    Publisher,
    /// Subscribes and does not publish (a viewer).
    Subscriber,
    /// Publishes and subscribes (a meeting participant).
    Both,
}

impl Role {
    /// Whether the bot publishes.
    pub fn publishes(self) -> bool {
        self != Role::Subscriber
    }

    /// Whether the bot receives.
    pub fn subscribes(self) -> bool {
        self != Role::Publisher
    }
}

/// How bots reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The server's signalling WebSocket (`/rtc`).
    Signalling,
    /// Publishers use WHIP, viewers WHEP: any WHIP/WHEP server will do.
    WhipWhep,
}

/// What publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    /// The clip encoded at start (real VP8 and Opus).
    Clip,
    /// Synthetic payloads that receivers verify byte for byte.
    Synthetic,
}

/// A whole scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Preset name, if one was used.
    pub preset: Option<String>,
    /// The server's `host:port`.
    pub server: String,
    /// More nodes of the same cluster (`host:port`): signalling bots join at `server` and these
    /// in turn (a room's bots alike: the node hosting a room sends the others there), and each
    /// node's cost is reported. WHIP/WHEP bots use `server` only.
    pub other_servers: Vec<String>,
    /// Rooms.
    pub rooms: usize,
    /// Publishing bots per room.
    pub publishers: usize,
    /// Role of the publishing bots ([`Role::Both`] in meetings).
    pub publisher_role: Role,
    /// Viewing-only bots per room.
    pub subscribers: usize,
    /// The measured window, after everyone has joined.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Bots started per second (0: all at once).
    pub join_rate: f64,
    /// How long to wait for every viewer's first frame before measuring anyway.
    #[serde(serialize_with = "seconds")]
    pub join_timeout: Duration,
    /// Three simulcast layers per publisher.
    pub simulcast: bool,
    /// What publishers send.
    pub media: Media,
    /// Publishers send audio alone (an audio room): no video anywhere in the run.
    pub audio_only: bool,
    /// Top video size of the clip.
    pub video_size: (u32, u32),
    /// Frames per second.
    pub fps: u32,
    /// Synthetic media: packets per frame and bytes per packet.
    pub packets_per_frame: u32,
    /// Synthetic media: bytes per video packet.
    pub packet_bytes: usize,
    /// Signalling or WHIP/WHEP.
    pub protocol: Protocol,
    /// WHIP path, `{room}` replaced by the room name.
    pub whip_path: String,
    /// WHEP path, `{room}` replaced by the room name.
    pub whep_path: String,
    /// Publishers talk and fall silent (audio level changes).
    pub speech: bool,
    /// Publishers mute their microphone for a third of every period of this length.
    #[serde(serialize_with = "optional_seconds")]
    pub mute_every: Option<Duration>,
    /// Room names are this prefix and a number.
    pub room_prefix: String,
    /// API key for minting tokens.
    pub api_key: String,
    /// API secret for minting tokens.
    #[serde(skip)]
    pub api_secret: String,
    /// A fixed bearer token for every bot instead of minted ones (other servers).
    #[serde(skip)]
    pub bearer: Option<String>,
    /// Carry every bot's media over ICE-TCP to this server address instead of UDP.
    pub ice_tcp: Option<std::net::SocketAddr>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn optional_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// One bot to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotPlan {
    /// Room name.
    pub room: String,
    /// Identity in the token.
    pub identity: String,
    /// What it does.
    pub role: Role,
    /// Unique tag (also written into synthetic payloads).
    pub tag: u32,
}

/// Why a bot could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Signing a token failed.
    #[error("cannot sign tokens with the API secret: {0}")]
    Token(String),
}

impl Scenario {
    /// Every bot, publishers of every room first (so viewers find tracks when they join),
    /// then viewers room by room in turn.
    pub fn plans(&self) -> Vec<BotPlan> {
        let mut plans = Vec::new();
        let mut tag = 0;
        let mut next = |room: usize, role: Role, i: usize| {
            tag += 1;
            let kind = if role.publishes() { "pub" } else { "sub" };
            BotPlan {
                room: self.room_name(room),
                identity: format!("bot-{room}-{kind}-{i}"),
                role,
                tag,
            }
        };
        for room in 0..self.rooms {
            for i in 0..self.publishers {
                plans.push(next(room, self.publisher_role, i));
            }
        }
        for i in 0..self.subscribers {
            for room in 0..self.rooms {
                plans.push(next(room, Role::Subscriber, i));
            }
        }
        plans
    }

    /// Room `n`'s name.
    pub fn room_name(&self, n: usize) -> String {
        format!("{}-{n}", self.room_prefix)
    }

    /// Publishers a viewer in a room should receive: the room's publishers, less itself; one
    /// for a WHEP viewer (it watches one participant).
    pub fn expected_publishers(&self, role: Role) -> usize {
        let publishers = if self.publisher_role.publishes() {
            self.publishers
        } else {
            0
        };
        match (self.protocol, role) {
            (_, Role::Publisher) => 0,
            (Protocol::WhipWhep, _) => publishers.min(1),
            (Protocol::Signalling, Role::Both) => publishers.saturating_sub(1),
            (Protocol::Signalling, Role::Subscriber) => publishers,
        }
    }

    /// Whether publishers send video (everything but an audio-only run).
    pub fn video(&self) -> bool {
        !self.audio_only
    }

    /// Viewing bots in the whole swarm.
    pub fn viewers(&self) -> usize {
        self.plans().iter().filter(|p| p.role.subscribes()).count()
    }

    fn token(&self, plan: &BotPlan) -> Result<String, ScenarioError> {
        if let Some(token) = &self.bearer {
            return Ok(token.clone());
        }
        let keys = ApiKeys::new([(self.api_key.clone(), self.api_secret.clone())]);
        let grants = Grants {
            room: Some(plan.room.clone()),
            room_join: true,
            can_publish: Some(plan.role.publishes()),
            can_subscribe: Some(plan.role.subscribes()),
            ..Grants::default()
        };
        let claims = Claims::new(
            &self.api_key,
            &plan.identity,
            Duration::from_secs(24 * 3600),
            grants,
        );
        keys.mint(&claims)
            .map_err(|e| ScenarioError::Token(e.to_string()))
    }

    /// Every server, `server` first.
    pub fn servers(&self) -> Vec<&str> {
        std::iter::once(self.server.as_str())
            .chain(self.other_servers.iter().map(String::as_str))
            .collect()
    }

    /// The server bot `plan` joins at: the servers in turn, by tag.
    pub fn server_of(&self, plan: &BotPlan) -> &str {
        let servers = self.servers();
        let turn = plan.tag as usize % servers.len().max(1);
        servers.get(turn).copied().unwrap_or(self.server.as_str())
    }

    /// The configuration of the bot for `plan`.
    pub fn bot_config(
        &self,
        plan: &BotPlan,
        media: &MediaSource,
    ) -> Result<BotConfig, ScenarioError> {
        let ws_url = format!("ws://{}/rtc", self.server_of(plan));
        let mut config =
            BotConfig::new(&ws_url, self.token(plan)?, plan.role.publishes(), plan.tag);
        config.fps = self.fps;
        config.packets_per_frame = self.packets_per_frame;
        config.video_packet_bytes = self.packet_bytes;
        config.simulcast = self.simulcast;
        config.publish_video = self.video();
        config.media = media.clone();
        config.verify_payloads = self.media == Media::Synthetic;
        config.record_seqs = false;
        config.collect_stats = true;
        config.ice_tcp = self.ice_tcp;
        if self.media == Media::Synthetic {
            config.keyframe_interval = self.fps.max(1) * 4;
        }
        if self.protocol == Protocol::WhipWhep {
            let (path, transport) = if plan.role.publishes() {
                (
                    &self.whip_path,
                    Transport::Whip {
                        server: self.server.clone(),
                        room: plan.room.clone(),
                    },
                )
            } else {
                (
                    &self.whep_path,
                    Transport::Whep {
                        server: self.server.clone(),
                        room: plan.room.clone(),
                        participant: None,
                    },
                )
            };
            config.transport = transport;
            config.http_path = Some(path.replace("{room}", &plan.room));
        }
        Ok(config)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn scenario() -> Scenario {
        Scenario {
            preset: None,
            server: "127.0.0.1:7880".into(),
            other_servers: Vec::new(),
            rooms: 2,
            publishers: 1,
            publisher_role: Role::Publisher,
            subscribers: 3,
            duration: Duration::from_secs(10),
            join_rate: 0.0,
            join_timeout: Duration::from_secs(10),
            simulcast: true,
            media: Media::Clip,
            audio_only: false,
            video_size: (1280, 720),
            fps: 30,
            packets_per_frame: 8,
            packet_bytes: 1100,
            protocol: Protocol::Signalling,
            whip_path: "/whip/{room}".into(),
            whep_path: "/whep/{room}".into(),
            speech: false,
            mute_every: None,
            room_prefix: "swarm".into(),
            api_key: sfu_protocol::auth::DEV_API_KEY.into(),
            api_secret: sfu_protocol::auth::DEV_API_SECRET.into(),
            bearer: None,
            ice_tcp: None,
        }
    }

    #[test]
    fn publishers_join_first_and_viewers_alternate_rooms() {
        let s = scenario();
        let plans = s.plans();
        let rooms: Vec<&str> = plans.iter().map(|p| p.room.as_str()).collect();
        assert_eq!(
            rooms,
            [
                "swarm-0", "swarm-1", "swarm-0", "swarm-1", "swarm-0", "swarm-1", "swarm-0",
                "swarm-1"
            ]
        );
        assert_eq!(plans[0].role, Role::Publisher);
        assert!(plans[2..].iter().all(|p| p.role == Role::Subscriber));
        assert_eq!(s.viewers(), 6);
        assert_eq!(s.expected_publishers(Role::Subscriber), 1);
    }

    #[test]
    fn meeting_participants_see_everyone_but_themselves() {
        let s = Scenario {
            publishers: 5,
            publisher_role: Role::Both,
            subscribers: 0,
            rooms: 1,
            ..scenario()
        };
        assert_eq!(s.expected_publishers(Role::Both), 4);
        assert_eq!(s.viewers(), 5);
    }

    #[test]
    fn bots_are_spread_over_the_nodes_of_a_cluster() {
        let s = Scenario {
            other_servers: vec!["127.0.0.1:7890".into(), "127.0.0.1:7900".into()],
            ..scenario()
        };
        let plans = s.plans();
        let servers: Vec<&str> = plans.iter().map(|p| s.server_of(p)).collect();
        for server in s.servers() {
            assert!(servers.contains(&server), "{server} gets bots: {servers:?}");
        }
        let url = s
            .bot_config(&plans[0], &MediaSource::Synthetic)
            .unwrap()
            .ws_url;
        assert_eq!(url, format!("ws://{}/rtc", s.server_of(&plans[0])));
    }

    #[test]
    fn whip_whep_bots_post_to_the_paths() {
        let s = Scenario {
            protocol: Protocol::WhipWhep,
            whep_path: "/watch/{room}/whep".into(),
            ..scenario()
        };
        let plans = s.plans();
        let viewer = s.bot_config(&plans[2], &MediaSource::Synthetic).unwrap();
        assert_eq!(viewer.http_path.as_deref(), Some("/watch/swarm-0/whep"));
        assert!(matches!(viewer.transport, Transport::Whep { .. }));
    }

    #[test]
    fn audio_only_publishers_send_no_video() {
        let s = Scenario {
            audio_only: true,
            ..scenario()
        };
        let plans = s.plans();
        let publisher = s.bot_config(&plans[0], &MediaSource::Synthetic).unwrap();
        assert!(publisher.publish && !publisher.publish_video);
        assert!(
            scenario()
                .bot_config(&plans[0], &MediaSource::Synthetic)
                .unwrap()
                .publish_video
        );
    }
}
