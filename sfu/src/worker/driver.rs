//! The I/O of one media worker: a thread with a single-threaded tokio runtime that waits for
//! datagrams, commands, deliveries from other workers and the next timer, feeds them to the
//! [`WorkerCore`], then sends what it produced. The only place that reads the clock or
//! touches the socket.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_udp::UdpSocketState;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info};

use super::core::WorkerCore;
use super::local_addrs::LocalAddrs;
use super::udp_io::{Receiver, send_transmits};
use crate::command::Command;
use crate::counters::WorkerCounters;
use crate::ice_tcp::connections::{TcpConnections, TcpEvent};
use crate::ice_tcp::listener::TcpHandoff;
use crate::packet::Delivery;
use crate::shared::{Shared, WorkerShared};

/// Receive calls per wake-up before other work gets a turn (each reads up to
/// [`super::udp_io::RECV_BATCH`] datagrams, or more with GRO).
const RECEIVES_PER_TURN: usize = 32;
/// ICE-TCP frames handled per turn at most.
const TCP_EVENTS_PER_TURN: usize = 256;

/// The receiving ends of a worker's inboxes.
pub(crate) struct Inboxes {
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) media: mpsc::Receiver<Vec<Delivery>>,
    pub(crate) control: mpsc::UnboundedReceiver<Delivery>,
    pub(crate) tcp: mpsc::Receiver<TcpHandoff>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Starts worker `index` on its own thread.
pub(crate) fn spawn(
    index: usize,
    socket: std::net::UdpSocket,
    local: LocalAddrs,
    shared: Arc<Shared>,
    slot: Arc<WorkerShared>,
    inboxes: Inboxes,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sfu-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(worker = index, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(e) = run(index, socket, local, shared, slot, inboxes).await {
                    error!(worker = index, error = %e, "media worker stopped");
                }
            });
        })
}

async fn run(
    index: usize,
    socket: std::net::UdpSocket,
    local: LocalAddrs,
    shared: Arc<Shared>,
    slot: Arc<WorkerShared>,
    mut inboxes: Inboxes,
) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    // quinn-udp: recvmmsg batches, GRO, and each datagram's destination address (a socket
    // bound to every address answers from the address it was reached at).
    let udp = UdpSocketState::new((&socket).into())?;
    let socket = UdpSocket::from_std(socket)?;
    let v6_socket = socket.local_addr()?.is_ipv6();
    let mut core = WorkerCore::new(index, shared.clone(), slot.clone(), local);
    let (mut tcp, mut tcp_events) = TcpConnections::new();
    let mut receiver = Receiver::new(udp.gro_segments());
    debug!(worker = index, addr = %socket.local_addr()?, "media worker running");
    loop {
        let deadline = core
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = inboxes.shutdown.changed() => break,
            command = inboxes.commands.recv() => match command {
                Some(command) => core.handle_command(Instant::now(), command),
                None => break,
            },
            Some(delivery) = inboxes.control.recv() => {
                core.handle_deliveries(Instant::now(), vec![delivery]);
            }
            Some(batch) = inboxes.media.recv() => core.handle_deliveries(Instant::now(), batch),
            // The socket before ICE-TCP: a busy (or hostile) TCP client must not starve it.
            readable = socket.readable() => {
                readable?;
                for _ in 0..RECEIVES_PER_TURN {
                    if !receiver.receive(&socket, &udp, &mut core) {
                        break;
                    }
                }
            }
            Some(handoff) = inboxes.tcp.recv() => {
                for event in tcp.adopt(handoff) {
                    on_tcp_event(&mut core, &mut tcp, event);
                }
            }
            Some(event) = tcp_events.recv() => {
                // As many as the socket gets per turn, then the rest waits its turn.
                on_tcp_event(&mut core, &mut tcp, event);
                for _ in 1..TCP_EVENTS_PER_TURN {
                    let Ok(event) = tcp_events.try_recv() else { break };
                    on_tcp_event(&mut core, &mut tcp, event);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        // Flush first: a subscriber written to this turn gets its one timeout here, which also
        // moves its timer past now, so the timer pass below does not run it a second time.
        core.flush(now);
        core.handle_timers(now);
        core.flush(now);
        send_transmits(&socket, &udp, v6_socket, &tcp, &mut core, &slot.counters);
        pass_deliveries(&mut core, &shared, &slot.counters);
    }
    core.shutdown(Instant::now());
    send_transmits(&socket, &udp, v6_socket, &tcp, &mut core, &slot.counters);
    let (peers, _) = core.sizes();
    info!(worker = index, peers, "media worker stopped");
    Ok(())
}

/// A frame read from, or the end of, an ICE-TCP connection.
fn on_tcp_event(core: &mut WorkerCore, tcp: &mut TcpConnections, event: TcpEvent) {
    match event {
        TcpEvent::Frame {
            remote,
            local,
            data,
        } => core.handle_tcp_frame(Instant::now(), remote, local, &data),
        TcpEvent::Closed { remote, id } => {
            if tcp.closed(remote, id) {
                core.forget_tcp(remote);
            }
        }
    }
}

/// Hands this turn's deliveries for other workers to their inboxes: media batches are dropped
/// (and counted) if the receiving worker is behind; control deliveries always go through.
fn pass_deliveries(core: &mut WorkerCore, shared: &Shared, counters: &WorkerCounters) {
    for (worker, batch) in core.out.remote.iter_mut().enumerate() {
        if batch.is_empty() {
            continue;
        }
        let batch = std::mem::take(batch);
        if let Some(target) = shared.workers.get(worker)
            && target.media_tx.try_send(batch).is_err()
        {
            WorkerCounters::add(&counters.queue_drops, 1);
        }
    }
    for (worker, delivery) in core.out.control.drain(..) {
        if let Some(target) = shared.workers.get(worker) {
            let _ = target.control_tx.send(delivery);
        }
    }
}
