//! The I/O of one media worker: a thread with a single-threaded tokio runtime that waits for
//! datagrams, commands, deliveries from other workers and the next timer, feeds them to the
//! [`WorkerCore`], then sends what it produced. The only place that reads the clock or
//! touches the socket. It also supervises the core: a panic closes the core's peers (their
//! rooms are told) and starts a fresh core on the same socket.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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

/// Panics a worker survives by closing its peers and starting again with a fresh core; one
/// more and it stops for good (the node then reports itself unhealthy).
const MAX_RESTARTS: u32 = 3;

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
                    slot.alive.store(false, Ordering::Relaxed);
                    return;
                }
            };
            supervise(&runtime, index, socket, local, shared, slot, inboxes);
        })
}

/// Runs the worker; when it panics, closes its peers (their rooms are told) and runs it again
/// with a fresh core, up to [`MAX_RESTARTS`] times. A worker that stops for any other reason
/// than shutdown is marked dead: no new peer is placed on it.
fn supervise(
    runtime: &tokio::runtime::Runtime,
    index: usize,
    socket: std::net::UdpSocket,
    local: LocalAddrs,
    shared: Arc<Shared>,
    slot: Arc<WorkerShared>,
    mut inboxes: Inboxes,
) {
    // The socket registers with the runtime's I/O driver: made inside it.
    let io = runtime.block_on(async { WorkerIo::new(socket) });
    let mut io = match io {
        Ok(io) => io,
        Err(e) => {
            error!(worker = index, error = %e, "media worker cannot use its socket");
            slot.alive.store(false, Ordering::Relaxed);
            return;
        }
    };
    let mut restarts = 0;
    loop {
        let mut core = WorkerCore::new(index, shared.clone(), slot.clone(), local.clone());
        // A panic unwinds out of `block_on`; the current-thread runtime stays usable.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run(index, &mut core, &mut io, &shared, &slot, &mut inboxes))
        }));
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("lost its socket: {e}"),
            Err(panic) => format!("panicked: {}", panic_message(&panic)),
        };
        restarts += 1;
        let (peers, _) = core.sizes();
        error!(
            worker = index,
            peers, restarts, "media worker {failure}; closing its peers"
        );
        core.fail_all(Instant::now(), &failure);
        // Goodbyes (DTLS close_notify) of the peers that could send them; the socket may be gone.
        runtime.block_on(async { io.send(&mut core, &slot) });
        // Their messages to other workers: the owners of the tracks they received forget them,
        // the subscribers of the tracks they published hear those ended.
        pass_deliveries(&mut core, &shared, &slot.counters);
        drop(core);
        if restarts > MAX_RESTARTS || !failure.starts_with("panicked") {
            error!(
                worker = index,
                "media worker stopped for good; new peers go to the others"
            );
            slot.alive.store(false, Ordering::Relaxed);
            return;
        }
        io.reset();
        WorkerCounters::add(&slot.counters.worker_restarts, 1);
        info!(worker = index, "media worker restarted");
    }
}

/// What a panic carried, as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A worker's sockets: its UDP socket and the ICE-TCP connections handed to it.
struct WorkerIo {
    socket: UdpSocket,
    udp: UdpSocketState,
    v6_socket: bool,
    receiver: Receiver,
    tcp: TcpConnections,
    tcp_events: mpsc::Receiver<TcpEvent>,
}

impl WorkerIo {
    fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        // quinn-udp: recvmmsg batches, GRO, and each datagram's destination address (a
        // socket bound to every address answers from the address it was reached at).
        let udp = UdpSocketState::new((&socket).into())?;
        let socket = UdpSocket::from_std(socket)?;
        let v6_socket = socket.local_addr()?.is_ipv6();
        let (tcp, tcp_events) = TcpConnections::new();
        let receiver = Receiver::new(udp.gro_segments());
        Ok(Self {
            socket,
            udp,
            v6_socket,
            receiver,
            tcp,
            tcp_events,
        })
    }

    /// After a panic: ICE-TCP connections and receive buffers start afresh (their peers are
    /// gone with the old core).
    fn reset(&mut self) {
        let (tcp, tcp_events) = TcpConnections::new();
        self.tcp = tcp;
        self.tcp_events = tcp_events;
        self.receiver = Receiver::new(self.udp.gro_segments());
    }

    fn send(&self, core: &mut WorkerCore, slot: &WorkerShared) {
        send_transmits(
            &self.socket,
            &self.udp,
            self.v6_socket,
            &self.tcp,
            core,
            &slot.counters,
        );
    }
}

async fn run(
    index: usize,
    core: &mut WorkerCore,
    io: &mut WorkerIo,
    shared: &Shared,
    slot: &WorkerShared,
    inboxes: &mut Inboxes,
) -> io::Result<()> {
    debug!(worker = index, addr = %io.socket.local_addr()?, "media worker running");
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
            readable = io.socket.readable() => {
                readable?;
                for _ in 0..RECEIVES_PER_TURN {
                    if !io.receiver.receive(&io.socket, &io.udp, core) {
                        break;
                    }
                }
            }
            Some(handoff) = inboxes.tcp.recv() => {
                for event in io.tcp.adopt(handoff) {
                    on_tcp_event(core, &mut io.tcp, event);
                }
            }
            Some(event) = io.tcp_events.recv() => {
                // As many as the socket gets per turn, then the rest waits its turn.
                on_tcp_event(core, &mut io.tcp, event);
                for _ in 1..TCP_EVENTS_PER_TURN {
                    let Ok(event) = io.tcp_events.try_recv() else { break };
                    on_tcp_event(core, &mut io.tcp, event);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        // Flush first: a subscriber written to this turn gets its one timeout here, which also
        // moves its timer past now, so the timer pass below does not run it a second time.
        let mut send = |core: &mut WorkerCore| io.send(core, slot);
        core.flush(now, &mut send);
        core.handle_timers(now, &mut send);
        core.flush(now, &mut send);
        send(core);
        pass_deliveries(core, shared, &slot.counters);
    }
    core.shutdown(Instant::now());
    io.send(core, slot);
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
