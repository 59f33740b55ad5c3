//! Counters of what the media workers did and dropped.
//!
//! Each worker owns one `WorkerCounters` and is its only writer (relaxed atomics, no
//! contention between cores); readers sum them into a [`CounterSnapshot`]. The media core does
//! not depend on a metrics registry: the control plane exports snapshots as it likes.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub(crate) struct WorkerCounters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// Totals over all workers at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl CounterSnapshot {
            pub(crate) fn add(&mut self, c: &WorkerCounters) {
                $(self.$name += c.$name.load(Ordering::Relaxed);)*
            }

            /// Every counter with its name, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Datagrams read from the media sockets.
    datagrams_received,
    /// Bytes read from the media sockets.
    bytes_received,
    /// Datagrams written to the media sockets.
    datagrams_sent,
    /// Bytes written to the media sockets.
    bytes_sent,
    /// Datagrams from an address (or for a ufrag) that belongs to no peer.
    dropped_unroutable,
    /// Datagrams a peer's state machine said were not its own.
    dropped_rejected,
    /// Datagrams that could not be parsed or that the peer's state machine refused.
    dropped_malformed,
    /// Datagrams that could not be sent (socket buffer full or error).
    dropped_send,
    /// RTP packets received from publishers.
    rtp_received,
    /// RTP packets written to subscribers.
    rtp_forwarded,
    /// RTP payload bytes written to subscribers.
    rtp_bytes_forwarded,
    /// RTP packets not forwarded to a subscriber (no matching codec, not yet started, stale).
    rtp_not_forwarded,
    /// RTP packets dropped for a subscriber whose send queue was stuck (its oldest packet
    /// waited longer than a stream may: the worker or its link could not keep up).
    rtp_dropped_backlog,
    /// Batches of packets dropped because another worker's queue was full.
    queue_drops,
    /// Packets handed to relay links (for other cluster nodes).
    relay_packets_sent,
    /// Packets for relay links dropped because the link's queue was full.
    relay_packets_dropped,
    /// Packets received from relay links (from other cluster nodes).
    relay_packets_received,
    /// Packets from relay links refused: malformed, or of no track or layer relayed here.
    relay_packets_refused,
    /// Loss reports sent to another node about packets missing on a relay link.
    relay_nacks_sent,
    /// Packets sent again on a relay link, asked for by the other node.
    relay_packets_repaired,
    /// Keyframe requests received from subscribers (PLI/FIR).
    keyframe_requests_received,
    /// Keyframe requests sent to publishers, after coalescing.
    keyframe_requests_sent,
    /// Video subscriptions started from their track's latest keyframe and the frames since,
    /// kept by its owner (no keyframe request needed).
    subscriptions_started_from_cache,
    /// NACKs received from subscribers (answered from the egress RTX cache).
    nacks_received,
    /// Subscriptions whose track's codec the subscriber did not accept (not forwarded).
    codec_refusals,
    /// RTP packets received from publishers as RED (RFC 2198 redundant audio).
    rtp_red_received,
    /// RED packets sent to a subscriber that did not negotiate RED as their primary block.
    rtp_red_stripped,
    /// Times a subscriber was switched to another simulcast layer.
    layer_switches,
    /// Sum of the latest egress bandwidth estimates of the peers (bits per second; a gauge).
    egress_estimate_bps,
    /// Data channel messages relayed to a subscriber.
    data_relayed,
    /// Data channel messages dropped (no permission, not text, channel not open, congested).
    data_dropped,
    /// Peers currently on the workers.
    peers,
    /// Video subscriptions on the best layer being sent (a gauge).
    video_best,
    /// Video subscriptions held lower by the subscriber's request (a gauge).
    video_requested,
    /// Video subscriptions held lower by the subscriber's bandwidth (a gauge).
    video_bandwidth,
    /// Video subscriptions whose layer is not being sent (a gauge).
    video_unavailable,
    /// Video subscriptions waiting for a keyframe of the layer they switch to (a gauge).
    video_waiting_keyframe,
    /// Video subscriptions forwarding their lowest layer (a gauge; simulcast stream or
    /// spatial layer 0).
    on_layer_0,
    /// Video subscriptions forwarding layer 1 (a gauge).
    on_layer_1,
    /// Video subscriptions forwarding layer 2 (a gauge).
    on_layer_2,
    /// Video subscriptions forwarding layer 3 or above (a gauge).
    on_layer_3,
    /// Simulcast layers paused at their publisher because nobody receives them (dynacast).
    layers_paused,
    /// Dynacast-paused layers resumed because a subscriber wanted them.
    layers_resumed,
    /// Subscriber bandwidth estimators restarted, on a link without loss, because they were
    /// stuck below what the subscriber's tracks want or fell and lowered a layer (either way
    /// to probe the link afresh).
    estimator_restarts,
    /// Keyframe requests sent at once for a subscriber that stopped a layer its bandwidth
    /// no longer carries (not held back by the throttle).
    urgent_keyframe_requests,
    /// ICE-TCP connections handed to a worker.
    tcp_accepted,
    /// ICE-TCP connections refused at accept: too many open in all or from one address.
    tcp_refused,
    /// ICE-TCP connections closed because their first STUN check did not come in time.
    tcp_timed_out,
    /// Packets not sent over ICE-TCP: the connection's queue was full or it was gone.
    tcp_send_dropped,
    /// Media workers restarted after a panic (their peers were closed).
    worker_restarts,
}

impl WorkerCounters {
    /// Adds `n` to a counter.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
