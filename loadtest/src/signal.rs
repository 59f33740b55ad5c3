//! A signalling client: the server's JSON protocol over a WebSocket, typed.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub use control_api::protocol::{ClientMessage, ServerMessage};

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

/// An open signalling connection.
pub struct Signal {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    last_seq: u64,
}

impl Signal {
    /// Connects to `ws://host:port/rtc`.
    pub async fn connect(url: &str) -> Result<Self, SignalError> {
        let (ws, _) = connect_async(url).await?;
        Ok(Self { ws, last_seq: 0 })
    }

    /// The highest `seq` received (what a `resume` on a new socket starts after).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sends a message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), SignalError> {
        let text =
            serde_json::to_string(message).map_err(|e| SignalError::Protocol(e.to_string()))?;
        self.send_raw(Message::Text(text.into())).await
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
