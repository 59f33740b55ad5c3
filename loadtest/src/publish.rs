//! The device publisher: a camera and a microphone (or virtual `lavfi` sources) captured
//! through ffmpeg on their own threads, encoded as simulcast VP8 and Opus, and published into a
//! room by a bot fed live, over the signalling protocol or WHIP. Every failure is one sentence
//! that says what to do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::bot::{Bot, BotConfig, BotError, BotState, MediaSource, Transport};
use crate::media_encode::{EncodeError, LayerSpec, OpusEncoder, SimulcastEncoder};
use crate::media_input::{AudioInput, InputError, InputSpec, VideoInput};
use crate::media_out::{KeyframeRequests, LiveFeed, LiveFrame};
use crate::signal::SignalError;
use sfu_protocol::protocol::ErrorCode;

/// How long the media connection may take to come up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the publisher reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishProtocol {
    /// The server's signalling WebSocket.
    Signalling,
    /// WHIP (`POST /whip/{room}`).
    Whip,
}

/// What to capture and where to publish it.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The server's `host:port`.
    pub server: String,
    /// The room.
    pub room: String,
    /// An access token for the room.
    pub token: String,
    /// Signalling or WHIP.
    pub protocol: PublishProtocol,
    /// The camera (`None`: no video).
    pub video: Option<InputSpec>,
    /// The microphone (`None`: no audio).
    pub audio: Option<InputSpec>,
    /// Top layer size (default: the camera's).
    pub size: Option<(u32, u32)>,
    /// Frames per second asked of the camera.
    pub fps: u32,
    /// Three simulcast layers rather than one.
    pub simulcast: bool,
}

/// Why publishing failed. Each message is one sentence that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A device could not be opened or read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// An encoder could not start.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// `--url` is not something this client speaks.
    #[error(
        "cannot use the URL `{0}`: give host:port, http://host:port or ws://host:port (TLS is not supported; put a plain-HTTP address or a local proxy in front)"
    )]
    BadUrl(String),
    /// The server could not be reached.
    #[error(
        "cannot reach the server at {url} ({reason}): check --url and that the server is running"
    )]
    Unreachable {
        /// Where.
        url: String,
        /// What the network said.
        reason: String,
    },
    /// The token was refused.
    #[error(
        "the server refused the token ({0}): pass a valid --token, or mint one with the server's --api-key and --api-secret"
    )]
    TokenRefused(String),
    /// The token does not allow publishing in this room.
    #[error(
        "the token does not allow publishing here ({0}): mint one with canPublish for this room"
    )]
    NotAllowed(String),
    /// The server said no for another reason.
    #[error("the server refused: {0}")]
    Refused(String),
    /// Signalling worked but media did not flow.
    #[error(
        "no media connection within {0:?}: check that UDP to the server's media ports is open and that the server advertises an address this machine can reach (--advertise-ip)"
    )]
    NoMedia(Duration),
    /// A capture thread stopped.
    #[error("the {what} stopped: {reason}")]
    Stopped {
        /// "camera" or "microphone".
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// `host:port` from `host:port`, `http://host:port[/...]` or `ws://host:port[/...]`.
pub fn host_port(url: &str) -> Result<String, PublishError> {
    let rest = match url.split_once("://") {
        Some(("http" | "ws", rest)) => rest,
        Some(_) => return Err(PublishError::BadUrl(url.to_string())),
        None => url,
    };
    let host = rest.split('/').next().unwrap_or_default();
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => Ok(host.to_string()),
        _ => Err(PublishError::BadUrl(url.to_string())),
    }
}

/// Capture and encoding threads, running.
pub struct Capture {
    feed: LiveFeed,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    failures: std::sync::mpsc::Receiver<PublishError>,
    /// The layers being encoded, lowest first.
    pub layers: Vec<LayerSpec>,
    /// What is captured, for people.
    pub description: String,
}

impl Capture {
    /// Opens the devices and starts capturing and encoding (frames are dropped until a bot
    /// takes the feed).
    pub fn start(options: &PublishOptions) -> Result<Capture, PublishError> {
        let device_options = |spec: &InputSpec| -> Vec<(&'static str, String)> {
            if spec.is_virtual() {
                return Vec::new();
            }
            let mut o = vec![("framerate", options.fps.to_string())];
            if let Some((w, h)) = options.size {
                o.push(("video_size", format!("{w}x{h}")));
            }
            o
        };
        let video = match &options.video {
            Some(spec) => Some(VideoInput::open(spec, &device_options(spec))?),
            None => None,
        };
        let audio = match &options.audio {
            Some(spec) => Some(open_audio(spec)?),
            None => None,
        };
        let (feed, sender) = LiveFeed::new(256);
        let stop = Arc::new(AtomicBool::new(false));
        let (fail_tx, failures) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        let mut parts = Vec::new();
        let mut layers = Vec::new();
        if let Some(input) = video {
            let (w, h) = options.size.unwrap_or((input.width(), input.height()));
            layers = LayerSpec::simulcast(w, h);
            if !options.simulcast {
                layers = layers.split_off(layers.len().saturating_sub(1));
            }
            let sizes: Vec<String> = layers.iter().map(LayerSpec::size).collect();
            parts.push(format!(
                "{} ({}x{}) as VP8 {}",
                input.spec().describe(),
                input.width(),
                input.height(),
                sizes.join(" + ")
            ));
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let job = VideoJob {
                input,
                layers: layers.clone(),
                fps: options.fps,
                frames: sender.clone(),
                keyframes: feed.keyframes.clone(),
                stop: stop.clone(),
            };
            let failed = fail_tx.clone();
            threads.push(std::thread::spawn(move || {
                if let Err(e) = job.run(&ready_tx) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    let _ = failed.send(e);
                }
            }));
            wait_ready(&ready, &failures)?;
        }
        if let Some(input) = audio {
            parts.push(format!("{} as Opus", input.spec().describe()));
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let job = AudioJob {
                input,
                frames: sender,
                stop: stop.clone(),
            };
            let failed = fail_tx;
            threads.push(std::thread::spawn(move || {
                if let Err(e) = job.run(&ready_tx) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    let _ = failed.send(e);
                }
            }));
            wait_ready(&ready, &failures)?;
        }
        Ok(Capture {
            feed,
            stop,
            threads,
            failures,
            layers,
            description: parts.join(" and "),
        })
    }

    /// The media source for the publishing bot.
    pub fn media(&self) -> MediaSource {
        MediaSource::Live(self.feed.clone())
    }

    /// A capture thread's failure, if one has failed.
    pub fn failure(&self) -> Option<PublishError> {
        self.failures.try_recv().ok()
    }

    /// Stops capturing and waits for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Opens the microphone; the Linux default is PulseAudio, else ALSA's default.
fn open_audio(spec: &InputSpec) -> Result<AudioInput, PublishError> {
    match AudioInput::open(spec, &[]) {
        Ok(input) => Ok(input),
        Err(e) if *spec == InputSpec::platform_default(spec.kind) && spec.format == "pulse" => {
            let alsa = InputSpec::parse("alsa:default", spec.kind);
            AudioInput::open(&alsa, &[]).map_err(|_| PublishError::Input(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until a capture thread has its encoder running (or reports why not).
fn wait_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), String>>,
    failures: &std::sync::mpsc::Receiver<PublishError>,
) -> Result<(), PublishError> {
    match ready.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(failures.try_recv().unwrap_or(PublishError::Stopped {
            what: "capture",
            reason,
        })),
        Err(_) => Err(PublishError::Stopped {
            what: "capture",
            reason: "it did not start within 10 s".into(),
        }),
    }
}

/// Sleeps until `at` after `start` (virtual sources run as fast as they are read).
fn pace(start: Instant, at: Duration) {
    let due = start + at;
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

struct VideoJob {
    input: VideoInput,
    layers: Vec<LayerSpec>,
    fps: u32,
    frames: Sender<LiveFrame>,
    keyframes: Arc<KeyframeRequests>,
    stop: Arc<AtomicBool>,
}

impl VideoJob {
    fn run(
        mut self,
        ready: &std::sync::mpsc::Sender<Result<(), String>>,
    ) -> Result<(), PublishError> {
        // The scaler is not Send: the encoder is built on this thread.
        let mut encoder = SimulcastEncoder::new(&self.layers, self.fps, self.fps.max(1) * 10)?;
        let _ = ready.send(Ok(()));
        let virtual_source = self.input.spec().is_virtual();
        let start = Instant::now();
        let mut index: u32 = 0;
        let mut first = true;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(frame) = self.input.next_frame()? else {
                return Err(PublishError::Stopped {
                    what: "camera",
                    reason: "the input ended".into(),
                });
            };
            if virtual_source {
                let at = frame
                    .at
                    .unwrap_or(Duration::from_secs(1) / self.fps.max(1) * index);
                pace(start, at);
            }
            index = index.wrapping_add(1);
            let keyframes = &self.keyframes;
            let force = |layer: usize| keyframes.take(layer) || first;
            let encoded = encoder.encode(&frame.frame, force)?;
            first = false;
            for e in encoded {
                let layer = e.layer;
                match self.frames.try_send(LiveFrame::Video(e)) {
                    Ok(()) => {}
                    // The bot is behind: drop the frame, and restart that layer's chain.
                    Err(TrySendError::Full(_)) => self.keyframes.request(layer),
                    Err(TrySendError::Closed(_)) => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

struct AudioJob {
    input: AudioInput,
    frames: Sender<LiveFrame>,
    stop: Arc<AtomicBool>,
}

impl AudioJob {
    fn run(
        mut self,
        ready: &std::sync::mpsc::Sender<Result<(), String>>,
    ) -> Result<(), PublishError> {
        let mut encoder = OpusEncoder::new(32_000)?;
        let _ = ready.send(Ok(()));
        let virtual_source = self.input.spec().is_virtual();
        let start = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let Some(frame) = self.input.next_frame()? else {
                return Err(PublishError::Stopped {
                    what: "microphone",
                    reason: "the input ended".into(),
                });
            };
            if virtual_source && let Some(at) = frame.at {
                pace(start, at);
            }
            for packet in encoder.push(&frame.frame)? {
                match self.frames.try_send(LiveFrame::Audio(packet)) {
                    Ok(()) | Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Closed(_)) => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

/// Joins the room and starts publishing `media`; returns once media flows (or says why not).
pub async fn connect(options: &PublishOptions, media: MediaSource) -> Result<Bot, PublishError> {
    let ws_url = format!("ws://{}/rtc", options.server);
    let mut config = BotConfig::new(&ws_url, options.token.clone(), true, 1);
    config.simulcast = options.simulcast;
    config.media = media;
    config.verify_payloads = false;
    config.record_seqs = false;
    if options.protocol == PublishProtocol::Whip {
        config.transport = Transport::Whip {
            server: options.server.clone(),
            room: options.room.clone(),
        };
    }
    let bot = Bot::spawn(config);
    let up = bot
        .wait_for(CONNECT_TIMEOUT, |s| {
            s.publish_connected || s.ended.is_some() || s.error().is_some()
        })
        .await;
    let state = bot.state();
    if state.publish_connected {
        return Ok(bot);
    }
    let url = match options.protocol {
        PublishProtocol::Signalling => ws_url,
        PublishProtocol::Whip => format!("http://{}/whip/{}", options.server, options.room),
    };
    bot.abort();
    let outcome = if state.ended.is_some() {
        bot.join().await.err()
    } else {
        None
    };
    Err(classify(&state, outcome, url, up))
}

/// Turns what the bot saw into the sentence for people.
fn classify(state: &BotState, error: Option<BotError>, url: String, ended: bool) -> PublishError {
    if let Some((code, message)) = state.error() {
        let reason = format!(
            "{}: {message}",
            serde_json::to_string(&code)
                .unwrap_or_default()
                .trim_matches('"')
        );
        return match code {
            ErrorCode::BadToken => PublishError::TokenRefused(reason),
            ErrorCode::PermissionDenied => PublishError::NotAllowed(reason),
            _ => PublishError::Refused(reason),
        };
    }
    match error {
        Some(BotError::Signal(SignalError::WebSocket(e))) => PublishError::Unreachable {
            url,
            reason: e.to_string(),
        },
        Some(BotError::Io(e)) => PublishError::Unreachable {
            url,
            reason: e.to_string(),
        },
        Some(BotError::Http(401, body)) => {
            PublishError::TokenRefused(format!("HTTP 401 {}", body.trim()))
        }
        Some(BotError::Http(403, body)) => {
            PublishError::NotAllowed(format!("HTTP 403 {}", body.trim()))
        }
        Some(BotError::Http(404, _)) => PublishError::Unreachable {
            url,
            reason: "HTTP 404: no WHIP endpoint there".into(),
        },
        Some(e) => PublishError::Refused(e.to_string()),
        None if ended => PublishError::Refused(
            state
                .ended
                .clone()
                .unwrap_or_else(|| "the server closed the connection".into()),
        ),
        None => PublishError::NoMedia(CONNECT_TIMEOUT),
    }
}

/// Leaves the room (bounded) so the others see us go at once.
pub async fn leave(bot: Bot) -> bool {
    bot.leave();
    let handle = bot.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), bot.join()).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            handle.abort();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(host_port("127.0.0.1:7880").unwrap(), "127.0.0.1:7880");
        assert_eq!(
            host_port("http://example.org:80/").unwrap(),
            "example.org:80"
        );
        assert_eq!(host_port("ws://h:7880/rtc").unwrap(), "h:7880");
        assert!(host_port("https://h:443").is_err());
        assert!(host_port("nonsense").is_err());
    }
}
