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
use crate::worker::local_addrs::LocalAddrs;

/// How long a new connection has to deliver its first (STUN) frame.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Open ICE-TCP connections at most, in all.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Open ICE-TCP connections at most from one client address (an IPv4 address or an IPv6
/// /64): an office behind one NAT address, two connections per participant.
pub(crate) const MAX_PER_ADDRESS: usize = 256;
/// Connections at most that have not yet delivered their STUN check, in all: what a flood of
/// silent connections can hold.
pub(crate) const MAX_PENDING: usize = 512;

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
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    /// Per address (IPv6: per /64); entries removed when their count is back to 0.
    per_address: HashMap<IpAddr, usize>,
    /// Accepted, first frame not read yet.
    pending: usize,
}

/// The key a client address counts under: itself for IPv4, its /64 for IPv6 (one host usually
/// has a whole /64 to pick addresses from).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            for b in octets.iter_mut().skip(8) {
                *b = 0;
            }
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

impl TcpLimits {
    /// Takes a place for a new connection from `ip` (counted as pending until
    /// [`ConnectionSlot::established`]), if the limits allow one.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = address_key(ip);
        let mut open = self.open.lock();
        let mine = open.per_address.get(&key).copied().unwrap_or(0);
        if open.total >= MAX_CONNECTIONS || open.pending >= MAX_PENDING || mine >= MAX_PER_ADDRESS {
            return None;
        }
        open.total += 1;
        open.pending += 1;
        open.per_address.insert(key, mine + 1);
        Some(ConnectionSlot {
            limits: self.clone(),
            key,
            pending: true,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().total
    }
}

/// One connection's place in [`TcpLimits`], given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limits: Arc<TcpLimits>,
    key: IpAddr,
    pending: bool,
}

impl ConnectionSlot {
    /// The connection delivered its STUN check: no longer pending.
    pub(crate) fn established(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut open = self.limits.open.lock();
            open.pending = open.pending.saturating_sub(1);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        open.total = open.total.saturating_sub(1);
        if self.pending {
            open.pending = open.pending.saturating_sub(1);
        }
        if let Some(mine) = open.per_address.get_mut(&self.key) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.per_address.remove(&self.key);
            }
        }
    }
}

/// Starts the accept thread on `listener`, whose candidates are `advertised`.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    advertised: LocalAddrs,
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
    advertised: LocalAddrs,
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
                    let local = advertised.candidate_for(local.map(|l| l.ip())).candidate;
                    hand_off(&shared, stream, remote, local, frame, rest, slot);
                }
                Ok(None) => debug!(%remote, "ICE-TCP connection closed without a STUN check"),
                Err(_) => {
                    WorkerCounters::add(&shared.tcp_counters.tcp_timed_out, 1);
                    debug!(%remote, "ICE-TCP connection sent no STUN check in time; dropped");
                }
            }
        });
    }
}

/// Reads until the first frame; it must be a STUN message (anything else closes the
/// connection at once). Returns the stream, the frame and what was read after it.
async fn first_frame(mut stream: TcpStream) -> Option<(TcpStream, Vec<u8>, FrameReader)> {
    let mut reader = FrameReader::default();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        reader.push(buf.get(..n)?);
        if let Some(frame) = reader.next_frame().ok()? {
            return stun::is_stun(&frame).then_some((stream, frame, reader));
        }
    }
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
    while let Ok(Some(frame)) = rest.next_frame() {
        frames.push(frame);
    }
    let mut slot = slot;
    slot.established();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_ipv6_by_64_refuse_past_the_caps_and_leave_nothing_behind() {
        let limits = Arc::new(TcpLimits::default());
        // One host picking addresses from its /64 counts as one address.
        let mut slots = Vec::new();
        for i in 0..MAX_PER_ADDRESS {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 1, 0, 0, 0, i as u16,
            ));
            let mut slot = limits.admit(ip).expect("within the cap");
            slot.established();
            slots.push(slot);
        }
        let same_64 = "2001:db8:0:1::ffff".parse().unwrap();
        assert!(limits.admit(same_64).is_none(), "the /64 is full");
        assert!(limits.admit("2001:db8:0:2::1".parse().unwrap()).is_some());
        // Pending (no STUN check yet) connections have their own, smaller cap in all.
        let pending: Vec<_> = (0..MAX_PENDING)
            .filter_map(|i| {
                limits.admit(IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i as u32)))
            })
            .collect();
        assert_eq!(pending.len(), MAX_PENDING);
        assert!(limits.admit("198.19.0.1".parse().unwrap()).is_none());
        drop(pending);
        drop(slots);
        let open = limits.open.lock();
        assert_eq!((open.total, open.pending), (0, 0));
        assert!(open.per_address.is_empty(), "no entry left behind");
    }
}
