//! Webhooks: room started/finished, participant joined/left and track published/unpublished,
//! POSTed as JSON to each configured URL, signed with the API secret.
//!
//! Events are queued (bounded; a full queue drops and counts, so neither signalling nor the
//! media path ever waits on a receiver). One task per URL delivers them one at a time, in the
//! order they happened, retrying each with exponential backoff before moving on.
//!
//! Signature: `X-Sfu-Signature: sha256=<hex HMAC-SHA256 of the body with the API secret>`, the
//! key in `X-Sfu-Key`. Receivers recompute the HMAC over the raw body and compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::protocol::{ParticipantInfo, TrackInfo};

/// Events waiting per URL before new ones are dropped.
const QUEUE: usize = 10_000;

/// Where and how webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receivers (`http://` or `https://`).
    pub urls: Vec<String>,
    /// The API key named in `X-Sfu-Key`, and its secret, which signs.
    pub key: String,
    /// The secret that signs.
    pub secret: String,
    /// First retry delay; doubles per attempt.
    pub initial_backoff: Duration,
    /// Attempts per event before it is given up.
    pub attempts: u32,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A room was created.
    RoomStarted,
    /// A room was closed.
    RoomFinished,
    /// A participant joined.
    ParticipantJoined,
    /// A participant left.
    ParticipantLeft,
    /// A track was published.
    TrackPublished,
    /// A track was unpublished.
    TrackUnpublished,
}

/// One webhook body.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique id (`EV_...`).
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// When, in milliseconds since the Unix epoch.
    pub created_at: u64,
    /// The room's name.
    pub room: String,
    /// Order of the event among this server's events (per room, events keep this order).
    pub seq: u64,
    /// The participant concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<ParticipantInfo>,
    /// The track concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackInfo>,
}

/// The sending side, cheap to clone. Without URLs it does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queues: Vec<mpsc::Sender<Arc<Event>>>,
    seq: AtomicU64,
    dropped: AtomicU64,
    /// Events queued and not yet delivered or given up, over all URLs.
    pending: Arc<AtomicUsize>,
}

impl Webhooks {
    /// Starts one delivery task per URL (needs a tokio runtime).
    pub fn start(config: WebhookConfig) -> Webhooks {
        if config.urls.is_empty() {
            return Webhooks::default();
        }
        let client = match reqwest::Client::builder().timeout(config.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
                return Webhooks::default();
            }
        };
        let config = Arc::new(config);
        let pending = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::new();
        for url in &config.urls {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            let delivery = Delivery {
                client: client.clone(),
                config: config.clone(),
                url: url.clone(),
                events: rx,
            };
            tokio::spawn(deliver(delivery, pending.clone()));
        }
        Webhooks {
            inner: Some(Arc::new(Inner {
                queues,
                seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                pending,
            })),
        }
    }

    /// Queues an event for every URL.
    pub fn emit(
        &self,
        event: EventKind,
        room: &str,
        participant: Option<&ParticipantInfo>,
        track: Option<&TrackInfo>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let seq = inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let event = Arc::new(Event {
            id: format!("EV_{seq:x}_{:08x}", rand::random::<u32>()),
            event,
            created_at,
            room: room.to_string(),
            seq,
            participant: participant.cloned(),
            track: track.cloned(),
        });
        for queue in &inner.queues {
            inner.pending.fetch_add(1, Ordering::Relaxed);
            if queue.try_send(event.clone()).is_err() {
                inner.pending.fetch_sub(1, Ordering::Relaxed);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(room, event = ?event.event, "webhook queue full; event dropped");
            }
        }
    }

    /// Waits until every queued event is delivered or given up, or `deadline` passes (the
    /// server is exiting). Returns whether nothing is left.
    pub async fn flushed(&self, deadline: tokio::time::Instant) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        loop {
            if inner.pending.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

/// One URL's receiver and its queue of events.
struct Delivery {
    client: reqwest::Client,
    config: Arc<WebhookConfig>,
    url: String,
    events: mpsc::Receiver<Arc<Event>>,
}

/// Delivers one URL's events in order, counting each one done (delivered or given up) in
/// `pending`.
async fn deliver(delivery: Delivery, pending: Arc<AtomicUsize>) {
    let Delivery {
        client,
        config,
        url,
        mut events,
    } = delivery;
    while let Some(event) = events.recv().await {
        deliver_one(&client, &config, &url, &event).await;
        pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Delivers one event to one URL, retrying with exponential backoff.
async fn deliver_one(client: &reqwest::Client, config: &WebhookConfig, url: &str, event: &Event) {
    let Ok(body) = serde_json::to_vec(event) else {
        return;
    };
    let signature = format!("sha256={}", sign(&config.secret, &body));
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.attempts.max(1) {
        let sent = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Sfu-Key", &config.key)
            .header("X-Sfu-Signature", &signature)
            .header("X-Sfu-Event-Id", &event.id)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                debug!(%url, id = %event.id, "webhook delivered");
                return;
            }
            Ok(r) => debug!(%url, status = %r.status(), attempt, "webhook refused"),
            Err(e) => debug!(%url, error = %e, attempt, "webhook failed"),
        }
        if attempt == config.attempts.max(1) {
            warn!(%url, id = %event.id, "webhook given up after {attempt} attempts");
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(Duration::from_secs(60));
    }
}

/// Hex HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use std::fmt::Write;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    tag.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
