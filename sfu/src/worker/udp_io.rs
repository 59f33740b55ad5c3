//! The UDP side of a media worker: receiving datagrams with `recvmmsg` (and GRO where the
//! kernel coalesces them) with each one's destination address, and sending the peers' output,
//! over UDP from the address each candidate was reached at, or over ICE-TCP.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSocketState};
use str0m::net::Protocol;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::core::WorkerCore;
use crate::counters::WorkerCounters;
use crate::ice_tcp::connections::TcpConnections;

/// Buffers per receive call (`recvmmsg`).
pub(crate) const RECV_BATCH: usize = 8;
/// Largest datagram; WebRTC keeps datagrams under the path MTU.
const MAX_DATAGRAM: usize = 1500;

/// Reads datagrams with `recvmmsg` (and GRO where the kernel coalesces them) into buffers
/// kept from one turn to the next.
pub(crate) struct Receiver {
    buffers: [Vec<u8>; RECV_BATCH],
    meta: [RecvMeta; RECV_BATCH],
}

impl Receiver {
    pub(crate) fn new(gro_segments: usize) -> Self {
        // With GRO a buffer must hold every segment the kernel may coalesce into it.
        let size = MAX_DATAGRAM * gro_segments.max(1);
        Self {
            buffers: std::array::from_fn(|_| vec![0u8; size]),
            meta: [RecvMeta::default(); RECV_BATCH],
        }
    }

    /// One receive call; hands every datagram to the core. Returns `false` when nothing more
    /// is waiting (or the socket failed).
    pub(crate) fn receive(
        &mut self,
        socket: &UdpSocket,
        udp: &UdpSocketState,
        core: &mut WorkerCore,
    ) -> bool {
        let mut slices = self.buffers.each_mut().map(|b| IoSliceMut::new(b));
        let meta = &mut self.meta;
        let received = socket.try_io(Interest::READABLE, || {
            udp.recv((&*socket).into(), &mut slices, meta)
        });
        let count = match received {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                debug!(error = %e, "receive error");
                return false;
            }
        };
        let now = Instant::now();
        for (meta, buf) in self.meta.iter().zip(&self.buffers).take(count) {
            let source = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
            let data = buf.get(..meta.len).unwrap_or_default();
            for datagram in data.chunks(meta.stride.max(1)) {
                core.handle_datagram(now, source, meta.dst_ip, datagram);
            }
        }
        true
    }
}

pub(crate) fn send_transmits(
    socket: &UdpSocket,
    udp: &UdpSocketState,
    v6_socket: bool,
    tcp: &TcpConnections,
    core: &mut WorkerCore,
    counters: &WorkerCounters,
) {
    let mut transmits = std::mem::take(&mut core.out.transmits);
    for t in &transmits {
        if t.proto == Protocol::Tcp {
            if tcp.send(t.destination, &t.contents) {
                WorkerCounters::add(&counters.datagrams_sent, 1);
                WorkerCounters::add(&counters.bytes_sent, t.contents.len() as u64);
            } else {
                WorkerCounters::add(&counters.tcp_send_dropped, 1);
            }
            continue;
        }
        // A dual-stack socket sends to IPv4 destinations as IPv4-mapped IPv6 addresses.
        let destination = match t.destination {
            SocketAddr::V4(v4) if v6_socket => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        };
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents: &t.contents,
            segment_size: None,
            src_ip: core.source_ip(t.source),
        };
        let sent = socket.try_io(Interest::WRITABLE, || {
            udp.try_send(socket.into(), &transmit)
        });
        match sent {
            Ok(()) => {
                WorkerCounters::add(&counters.datagrams_sent, 1);
                WorkerCounters::add(&counters.bytes_sent, t.contents.len() as u64);
                if core.out.latency.is_waiting()
                    && let Some(arrival) = core.out.latency.on_send(&t.contents)
                {
                    let latency = Instant::now().saturating_duration_since(arrival);
                    core.timings().forward_latency.record(latency.as_secs_f64());
                }
            }
            Err(e) => {
                WorkerCounters::add(&counters.dropped_send, 1);
                debug!(error = %e, destination = %t.destination, "send failed");
            }
        }
    }
    // Keep the buffer's capacity for the next turn.
    transmits.clear();
    core.out.transmits = transmits;
}
