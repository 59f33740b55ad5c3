//! A signalling client: the server's JSON protocol over a WebSocket, typed.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub use sfu_protocol::protocol::{ClientMessage, ServerMessage};

/// Errors of the signalling connection.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Connecting or a WebSocket operation failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server sent something that is not a protocol message.
    #[error("unexpected frame from the server: {0}")]
    Protocol(String),
}

/// Client messages kept for sending again after a resume.
const JOURNAL_LIMIT: usize = 256;

/// One session's numbering of the messages it sends, shared by its sockets: each message but
/// `join`, `resume` and `ping` gets a `seq` and is kept until the server says (in `resumed`)
/// that it handled it.
#[derive(Debug, Default)]
pub struct Journal {
    last: u64,
    kept: VecDeque<(u64, String)>,
}

impl Journal {
    /// The `seq` of the last numbered message sent.
    pub fn last_seq(&self) -> u64 {
        self.last
    }
}

/// A [`Journal`] for the sockets of one session.
pub type SharedJournal = Arc<parking_lot::Mutex<Journal>>;

/// An open signalling connection.
pub struct Signal {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    last_seq: u64,
    journal: Option<SharedJournal>,
}

impl Signal {
    /// Connects to `ws://host:port/rtc`.
    pub async fn connect(url: &str) -> Result<Self, SignalError> {
        let (ws, _) = connect_async(url).await?;
        Ok(Self {
            ws,
            last_seq: 0,
            journal: None,
        })
    }

    /// Numbers the messages sent on this socket in `journal` (see [`Journal`]).
    pub fn with_journal(mut self, journal: SharedJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// After `resumed`: sends again, as they were, the numbered messages the server did not
    /// handle (those after `last_seq`).
    pub async fn resend_after(&mut self, last_seq: u64) -> Result<(), SignalError> {
        let unhandled: Vec<String> = match &self.journal {
            Some(journal) => {
                let mut journal = journal.lock();
                journal.kept.retain(|(seq, _)| *seq > last_seq);
                journal.kept.iter().map(|(_, text)| text.clone()).collect()
            }
            None => Vec::new(),
        };
        for text in unhandled {
            self.send_raw(Message::Text(text.into())).await?;
        }
        Ok(())
    }

    /// The highest `seq` received (what a `resume` on a new socket starts after).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sends a message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), SignalError> {
        let unnumbered = matches!(
            message,
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } | ClientMessage::Ping
        );
        let mut value =
            serde_json::to_value(message).map_err(|e| SignalError::Protocol(e.to_string()))?;
        if let (Some(journal), false) = (&self.journal, unnumbered) {
            let mut journal = journal.lock();
            journal.last += 1;
            let seq = journal.last;
            if let Some(object) = value.as_object_mut() {
                object.insert("seq".into(), seq.into());
            }
            if journal.kept.len() >= JOURNAL_LIMIT {
                journal.kept.pop_front();
            }
            journal.kept.push_back((seq, value.to_string()));
        }
        self.send_raw(Message::Text(value.to_string().into())).await
    }

    /// Sends any frame (tests use it for malformed input).
    pub async fn send_raw(&mut self, frame: Message) -> Result<(), SignalError> {
        self.ws.send(frame).await?;
        Ok(())
    }

    /// The next message; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Result<ServerMessage, SignalError>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    let value: serde_json::Value = match serde_json::from_str(&text) {
                        Ok(value) => value,
                        Err(e) => return Some(Err(SignalError::Protocol(format!("{e}: {text}")))),
                    };
                    if let Some(seq) = value.get("seq").and_then(serde_json::Value::as_u64) {
                        self.last_seq = self.last_seq.max(seq);
                    }
                    return Some(
                        serde_json::from_value(value)
                            .map_err(|e| SignalError::Protocol(format!("{e}: {text}"))),
                    );
                }
                Ok(Message::Close(_)) => return None,
                Ok(Message::Binary(_)) => {
                    return Some(Err(SignalError::Protocol("binary frame".into())));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
