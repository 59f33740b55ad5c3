//! One WebSocket a session talks through: its reading half, read by the session's driver, and
//! a writer task that drains the session's outbox into it (numbering each message, see
//! [`Replay`]) and pings the client. A session outlives its links: when one drops, the writer
//! hands the outbox and the numbered copies back, for the next socket to carry on.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::replay::Replay;
use crate::outbox::OutboxReceiver;
use crate::protocol::ServerMessage;

/// The writing half of a socket.
pub(crate) type Sink = SplitSink<WebSocket, Message>;
/// The reading half of a socket.
pub(crate) type Stream = SplitStream<WebSocket>;

/// A write that takes longer than this means the client is gone (its TCP window stays shut).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session's messages need between sockets.
pub(crate) struct Outgoing {
    /// Messages not yet written.
    pub(crate) queue: OutboxReceiver,
    /// Numbering and copies of those written.
    pub(crate) replay: Replay,
}

/// What a writer leaves when it ends: the outgoing messages, and the socket's writing half
/// if it still works (stopped rather than failed).
pub(crate) struct WriterEnd {
    pub(crate) outgoing: Outgoing,
    pub(crate) sink: Option<Sink>,
}

/// A socket in use by a session.
pub(crate) struct Link {
    pub(crate) stream: Stream,
    /// Last time anything arrived from the client.
    pub(crate) last_heard: Instant,
    writer: JoinHandle<WriterEnd>,
    stop: Option<oneshot::Sender<()>>,
    /// Resolves (with an error) when the writer task has ended.
    ended: Option<oneshot::Receiver<()>>,
}

impl Link {
    /// Starts writing `outgoing` to `sink`, first the (already numbered or unnumbered)
    /// `preamble` frames, with a WebSocket ping every `ping`.
    pub(crate) fn start(
        sink: Sink,
        stream: Stream,
        outgoing: Outgoing,
        preamble: Vec<String>,
        ping: Duration,
    ) -> Link {
        let (stop, stopped) = oneshot::channel();
        let (ending, ended) = oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            let end = write(sink, outgoing, preamble, ping, stopped).await;
            drop(ending);
            end
        });
        Link {
            stream,
            last_heard: Instant::now(),
            writer,
            stop: Some(stop),
            ended: Some(ended),
        }
    }

    /// Resolves when the writer has ended on its own (the socket failed, or `left` was
    /// written); then call [`Link::stop`].
    pub(crate) async fn writer_ended(&mut self) {
        link_writer_ended(&mut self.ended).await;
    }

    /// Stops the writer and takes back what it holds (the socket's reading half is dropped
    /// with the link unless taken first).
    pub(crate) async fn stop(mut self) -> (Option<WriterEnd>, Stream) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let end = (&mut self.writer).await.ok();
        (end, self.stream)
    }
}

/// The writer task.
async fn write(
    mut sink: Sink,
    mut outgoing: Outgoing,
    preamble: Vec<String>,
    ping: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> WriterEnd {
    let failed = |outgoing| WriterEnd {
        outgoing,
        sink: None,
    };
    // Stopped by the session: the socket goes back to it, for a `resumed` refusal or reuse.
    let handed_back = |outgoing, sink| WriterEnd {
        outgoing,
        sink: Some(sink),
    };
    for text in preamble {
        match send(&mut sink, Message::Text(text.into()), &mut stopped).await {
            Sent::Ok => {}
            Sent::Stopped => return handed_back(outgoing, sink),
            Sent::Failed => return failed(outgoing),
        }
    }
    let mut pings = tokio::time::interval_at(Instant::now() + ping, ping);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut stopped => return handed_back(outgoing, sink),
            message = outgoing.queue.recv() => match message {
                Some(message) => {
                    let left = matches!(message, ServerMessage::Left { .. });
                    let Some(text) = outgoing.replay.record(&message) else { continue };
                    (Message::Text(text.into()), left)
                }
                // Every sender is gone: the session is over.
                None => return failed(outgoing),
            },
            _ = pings.tick() => (Message::Ping(Default::default()), false),
        };
        let (frame, last) = frame;
        match send(&mut sink, frame, &mut stopped).await {
            Sent::Ok if last => {
                let _ = sink.close().await;
                return failed(outgoing);
            }
            Sent::Ok => {}
            Sent::Stopped => return handed_back(outgoing, sink),
            Sent::Failed => return failed(outgoing),
        }
    }
}

enum Sent {
    Ok,
    Stopped,
    Failed,
}

/// Writes one frame, unless told to stop first; a write stuck for [`WRITE_TIMEOUT`] fails.
async fn send(sink: &mut Sink, frame: Message, stopped: &mut oneshot::Receiver<()>) -> Sent {
    tokio::select! {
        biased;
        _ = stopped => Sent::Stopped,
        result = tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)) => match result {
            Ok(Ok(())) => Sent::Ok,
            _ => Sent::Failed,
        },
    }
}

/// What happened on a link.
pub(crate) enum LinkEvent {
    /// A frame arrived (or the reading half ended: `None`).
    Frame(Option<Result<Message, axum::Error>>),
    /// The writer ended on its own (the socket failed, or `left` was written).
    WriterEnded,
}

/// The next event of `link`; never without a link.
pub(crate) async fn next_event(link: &mut Option<Link>) -> LinkEvent {
    let Some(link) = link else {
        return std::future::pending().await;
    };
    tokio::select! {
        frame = link.stream.next() => LinkEvent::Frame(frame),
        () = link_writer_ended(&mut link.ended) => LinkEvent::WriterEnded,
    }
}

async fn link_writer_ended(ended: &mut Option<oneshot::Receiver<()>>) {
    match ended {
        Some(rx) => {
            let _ = rx.await;
            *ended = None;
        }
        None => std::future::pending().await,
    }
}
