//! The ICE-TCP listener: one TCP port for the whole server (advertised as a passive host
//! candidate next to the UDP ones), for clients whose network blocks UDP.
//!
//! A thread of its own accepts connections and reads each one's first frame, which must be a
//! STUN connectivity check: its USERNAME names the peer, and so the worker that owns it, to
//! which the connection is then handed. Until then a connection costs one small buffer, and a
//! client that connects and sends nothing, or trickles bytes, is dropped after
//! [`FIRST_FRAME_TIMEOUT`] without holding up anyone. Connections are bounded in total and
//! per client address ([`TcpLimits`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, error, info};

use super::framing::FrameReader;
use crate::counters::WorkerCounters;
use crate::shared::Shared;
use crate::stun;

/// How long a new connection has to deliver its first (STUN) frame.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Open ICE-TCP connections at most, in all.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Open ICE-TCP connections at most from one client address.
pub(crate) const MAX_PER_ADDRESS: usize = 32;

/// A connection whose first frame named a peer, on its way to that peer's worker.
#[derive(Debug)]
pub(crate) struct TcpHandoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) remote: SocketAddr,
    /// Our address as the client's ICE agent knows it (the advertised candidate).
    pub(crate) local: SocketAddr,
    /// The frames read so far (the STUN check first).
    pub(crate) frames: Vec<Vec<u8>>,
    /// Bytes read after them that are not a whole frame yet.
    pub(crate) pending: Vec<u8>,
    /// Holds the connection's place in the limits until the connection is gone.
    pub(crate) slot: ConnectionSlot,
}

/// Counts open connections, in total and per client address.
#[derive(Debug, Default)]
pub(crate) struct TcpLimits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl TcpLimits {
    /// Takes a place for a connection from `ip`, if the limits allow one.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock();
        let (total, per_ip) = &mut *open;
        let mine = per_ip.entry(ip).or_insert(0);
        if *total >= MAX_CONNECTIONS || *mine >= MAX_PER_ADDRESS {
            return None;
        }
        *total += 1;
        *mine += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().0
    }
}

/// One connection's place in [`TcpLimits`], given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limits: Arc<TcpLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_ip.get_mut(&self.ip) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Starts the accept thread on `listener`. `advertised` are our TCP candidate addresses.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    advertised: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sfu-ice-tcp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the ICE-TCP runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(e) = accept_loop(listener, advertised, shared, shutdown).await {
                    error!(error = %e, "ICE-TCP listener stopped");
                }
            });
        })
}

async fn accept_loop(
    listener: std::net::TcpListener,
    advertised: Vec<SocketAddr>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let advertised = Arc::new(advertised);
    info!(addr = %listener.local_addr()?, "ICE-TCP listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = shared.tcp_limits.admit(remote.ip().to_canonical()) else {
            WorkerCounters::add(&shared.tcp_counters.tcp_refused, 1);
            debug!(%remote, "ICE-TCP connection refused: too many open");
            continue;
        };
        let shared = shared.clone();
        let advertised = advertised.clone();
        tokio::spawn(async move {
            let local = stream.local_addr().ok();
            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, first_frame(stream)).await {
                Ok(Some((stream, frame, rest))) => {
                    let local = candidate_for(local, &advertised);
                    hand_off(&shared, stream, remote, local, frame, rest, slot);
                }
                Ok(None) => debug!(%remote, "ICE-TCP connection closed before a STUN check"),
                Err(_) => {
                    WorkerCounters::add(&shared.tcp_counters.tcp_timed_out, 1);
                    debug!(%remote, "ICE-TCP connection sent no STUN check in time; dropped");
                }
            }
        });
    }
}

/// Reads until the first frame; it must be a STUN message. Returns the stream, the frame and
/// what was read after it.
async fn first_frame(mut stream: TcpStream) -> Option<(TcpStream, Vec<u8>, FrameReader)> {
    let mut reader = FrameReader::default();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        reader.push(buf.get(..n)?);
        if let Some(frame) = reader.next_frame() {
            return stun::is_stun(&frame).then_some((stream, frame, reader));
        }
    }
}

/// The advertised candidate a connection to our `local` address belongs to.
fn candidate_for(local: Option<SocketAddr>, advertised: &[SocketAddr]) -> SocketAddr {
    let exact = local.and_then(|l| {
        advertised
            .iter()
            .find(|a| a.ip() == l.ip().to_canonical())
            .copied()
    });
    exact
        .or_else(|| advertised.first().copied())
        .or(local)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Gives the connection to the worker of the peer its STUN check names (dropped if none).
fn hand_off(
    shared: &Shared,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    first: Vec<u8>,
    mut rest: FrameReader,
    slot: ConnectionSlot,
) {
    let Some(worker) = stun::local_ufrag(&first).and_then(|u| shared.ufrags.get(u).map(|w| *w))
    else {
        debug!(%remote, "ICE-TCP STUN check for no peer of ours");
        return;
    };
    let Some(target) = shared.workers.get(worker) else {
        return;
    };
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let mut frames = vec![first];
    frames.extend(std::iter::from_fn(|| rest.next_frame()));
    let handoff = TcpHandoff {
        stream,
        remote,
        local,
        frames,
        pending: rest.into_pending(),
        slot,
    };
    match target.tcp_tx.try_send(handoff) {
        Ok(()) => WorkerCounters::add(&shared.tcp_counters.tcp_accepted, 1),
        Err(_) => debug!(%remote, worker, "worker cannot take the ICE-TCP connection now"),
    }
}
