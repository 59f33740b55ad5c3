//! A participant's outgoing signalling messages: a bounded queue from its session and its room
//! to the writer of its connection.
//!
//! A client that stops reading (or reads slower than its room talks) fills the queue; the
//! message that finds it full is dropped and the queue is marked overflowed. Its connection is
//! then closed: the client missed a message, so it is out of step with the room, and must join
//! again. Nothing a client does makes the server hold more than [`OUTBOX_CAPACITY`] messages
//! for it.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use crate::protocol::ServerMessage;

/// Messages queued for one participant at most. A joined client reads them as they come; a
/// room of hundreds joining at once queues a few hundred.
pub const OUTBOX_CAPACITY: usize = 4096;

/// Where a participant's messages go (cheap to clone; the room holds one per member).
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<ServerMessage>,
    overflow: Arc<Notify>,
}

/// The reading end, owned by the connection's writer.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<ServerMessage>,
}

/// An empty outbox of [`OUTBOX_CAPACITY`] messages.
pub fn outbox() -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
    let overflow = Arc::new(Notify::new());
    (
        Outbox {
            tx,
            overflow: overflow.clone(),
        },
        OutboxReceiver { rx },
    )
}

impl Outbox {
    /// Queues a message without waiting; a full queue drops it and marks the overflow.
    pub fn send(&self, message: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(message) {
            self.overflow.notify_one();
        }
    }

    /// Resolves once a message was dropped because the queue was full (the connection's
    /// driver then closes it).
    pub async fn overflowed(&self) {
        self.overflow.notified().await;
    }
}

impl OutboxReceiver {
    /// The next message; `None` once every [`Outbox`] is gone.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_drops_and_says_so() {
        let (outbox, mut rx) = outbox();
        for _ in 0..OUTBOX_CAPACITY {
            outbox.send(ServerMessage::Pong);
        }
        // Nothing overflowed yet.
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(10), outbox.overflowed()).await;
        assert!(quiet.is_err());
        outbox.send(ServerMessage::Pong);
        outbox.overflowed().await;
        let mut n = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await
        {
            n += 1;
        }
        assert_eq!(n, OUTBOX_CAPACITY);
    }
}
