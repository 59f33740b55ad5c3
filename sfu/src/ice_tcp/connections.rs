//! One worker's ICE-TCP connections. Each runs as a reader task and a writer task on the
//! worker's own runtime: frames read go to the worker loop through one bounded channel (a
//! slow worker slows its readers, it does not buffer without end); frames to send go to the
//! connection's bounded queue, and a full queue drops the frame, as a full UDP socket buffer
//! would. A connection that reads nothing for [`IDLE_TIMEOUT`] is closed (ICE consent checks
//! arrive every few seconds on a live one), as is one whose client stops reading
//! ([`WRITE_TIMEOUT`]) or sends something that is not ICE-TCP; either task ending ends the
//! other, and the connection's place in the limits is given back when both are gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::framing::{FrameReader, frame};
use super::listener::TcpHandoff;

/// A connection that has read nothing for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection whose client takes longer than this to accept one frame (it stopped reading)
/// is closed.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting to be written on one connection.
const WRITE_QUEUE: usize = 512;
/// Frames read and not yet handled by the worker, over all its connections.
const READ_QUEUE: usize = 1024;

/// Something that happened on a connection, for the worker loop.
#[derive(Debug)]
pub(crate) enum TcpEvent {
    /// A whole frame arrived.
    Frame {
        remote: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    /// The connection is gone (closed, failed or idle).
    Closed { remote: SocketAddr, id: u64 },
}

/// The connections of one worker.
#[derive(Debug)]
pub(crate) struct TcpConnections {
    /// Per remote address: the connection's number, its write queue and its writer task.
    writers: HashMap<SocketAddr, Writer>,
    events: mpsc::Sender<TcpEvent>,
    next_id: u64,
}

#[derive(Debug)]
struct Writer {
    id: u64,
    queue: mpsc::Sender<Vec<u8>>,
    task: tokio::task::AbortHandle,
}

impl TcpConnections {
    /// No connections yet, and the receiving end of their events.
    pub(crate) fn new() -> (Self, mpsc::Receiver<TcpEvent>) {
        let (events, rx) = mpsc::channel(READ_QUEUE);
        (
            Self {
                writers: HashMap::new(),
                events,
                next_id: 0,
            },
            rx,
        )
    }

    /// Takes over a connection from the listener; returns the frames it already read, for
    /// the worker to handle now. Must run on the worker's runtime.
    pub(crate) fn adopt(&mut self, handoff: TcpHandoff) -> Vec<TcpEvent> {
        let TcpHandoff {
            stream,
            remote,
            local,
            frames,
            pending,
            slot,
        } = handoff;
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                debug!(%remote, error = %e, "cannot adopt an ICE-TCP connection");
                return Vec::new();
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let id = self.next_id;
        self.next_id += 1;
        // Both tasks hold the connection's place in the limits.
        let slot = std::sync::Arc::new(slot);
        let writer_slot = slot.clone();
        let writer = tokio::spawn(async move {
            let _slot = writer_slot;
            while let Some(bytes) = rx.recv().await {
                match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        debug!(%remote, "ICE-TCP client stopped reading; closed");
                        break;
                    }
                }
            }
            let _ = write.shutdown().await;
        });
        // A connection from the same address that is still open is replaced.
        let replaced = self.writers.insert(
            remote,
            Writer {
                id,
                queue: tx,
                task: writer.abort_handle(),
            },
        );
        if let Some(old) = replaced {
            old.task.abort();
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut reader = FrameReader::default();
            reader.push(&pending);
            let mut buf = vec![0u8; 4096];
            'read: loop {
                loop {
                    let data = match reader.next_frame() {
                        Ok(Some(data)) => data,
                        Ok(None) => break,
                        Err(_) => {
                            debug!(%remote, "not ICE-TCP; closed");
                            break 'read;
                        }
                    };
                    let frame = TcpEvent::Frame {
                        remote,
                        local,
                        data,
                    };
                    if events.send(frame).await.is_err() {
                        return;
                    }
                }
                match tokio::time::timeout(IDLE_TIMEOUT, read.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => reader.push(buf.get(..n).unwrap_or_default()),
                    Ok(_) => break,
                    Err(_) => {
                        debug!(%remote, "ICE-TCP connection idle; closed");
                        break;
                    }
                }
            }
            let _ = events.send(TcpEvent::Closed { remote, id }).await;
        });
        frames
            .into_iter()
            .map(|data| TcpEvent::Frame {
                remote,
                local,
                data,
            })
            .collect()
    }

    /// Queues a packet for `remote`. Returns `false` if it was dropped (no such connection,
    /// its queue is full, or the packet is too long to frame).
    pub(crate) fn send(&self, remote: SocketAddr, packet: &[u8]) -> bool {
        let (Some(writer), Some(bytes)) = (self.writers.get(&remote), frame(packet)) else {
            return false;
        };
        writer.queue.try_send(bytes).is_ok()
    }

    /// Forgets a connection whose reader ended, and ends its writer. Returns whether it was
    /// the current connection from that address.
    pub(crate) fn closed(&mut self, remote: SocketAddr, id: u64) -> bool {
        if self.writers.get(&remote).is_some_and(|w| w.id == id) {
            if let Some(writer) = self.writers.remove(&remote) {
                writer.task.abort();
            }
            return true;
        }
        false
    }
}
