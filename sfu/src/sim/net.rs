//! A simulated network path, one direction: propagation delay, jitter (which reorders),
//! a bottleneck rate with a drop-tail queue, random and bursty loss, outages, and a receiver
//! starved of CPU (it reads its socket in bursts). Seeded, so a scenario loses the same
//! packets every run.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::net::Transmit;

/// Bursty loss (Gilbert-Elliott): the path is good or bad; in the bad state every datagram
/// is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bursts {
    /// Chance per datagram that a good path turns bad.
    pub(crate) start: f64,
    /// Chance per datagram that a bad path turns good again (1 / mean burst length).
    pub(crate) end: f64,
}

/// A receiving host starved of CPU: now and then it does not run for a while, and what
/// arrives meanwhile waits in its socket buffer, read all at once when it runs again (so
/// its arrival times bunch up as if a queue had built and drained; nothing is lost).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stalls {
    /// Time between the end of one stall and the start of the next, uniform in this range.
    pub(crate) gap: (Duration, Duration),
    /// How long a stall lasts, uniform in this range.
    pub(crate) length: (Duration, Duration),
}

/// How a path behaves. The default is a clean 1 ms path with no rate limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathConfig {
    /// One-way propagation delay.
    pub(crate) delay: Duration,
    /// Extra delay, uniform in `0..=jitter`, per datagram: datagrams overtake each other.
    pub(crate) jitter: Duration,
    /// Bottleneck rate in bits per second (`None`: unlimited).
    pub(crate) rate_bps: Option<u64>,
    /// Bytes the bottleneck queues before it drops (drop tail).
    pub(crate) queue_bytes: usize,
    /// Chance that a datagram is lost, independent of the others.
    pub(crate) loss: f64,
    /// Bursts of loss on top of `loss`.
    pub(crate) bursts: Option<Bursts>,
    /// The path is cut: everything is lost.
    pub(crate) down: bool,
    /// The receiver at the end of the path stalls.
    pub(crate) stalls: Option<Stalls>,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_bytes: 64 * 1024,
            loss: 0.0,
            bursts: None,
            down: false,
            stalls: None,
        }
    }
}

impl PathConfig {
    /// A path limited to `bps`, with a queue of 100 ms at that rate.
    pub(crate) fn limited(bps: u64) -> Self {
        Self {
            rate_bps: Some(bps),
            queue_bytes: usize::try_from(bps / 80).unwrap_or(usize::MAX).max(3000),
            ..Self::default()
        }
    }
}

/// What happened to the datagrams given to a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PathStats {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) queue_drops: u64,
    pub(crate) cut: u64,
}

/// A datagram on its way.
#[derive(Debug)]
struct InFlight {
    at: Instant,
    /// Order of sending, to break ties the same way every run.
    order: u64,
    transmit: Transmit,
}

/// One direction of a path.
#[derive(Debug)]
pub(crate) struct Path {
    pub(crate) config: PathConfig,
    rng: StdRng,
    /// When the bottleneck has sent everything queued so far.
    busy_until: Option<Instant>,
    bad: bool,
    /// The receiver's current or next stall (start, end), while `config.stalls` is set.
    stall: Option<(Instant, Instant)>,
    /// Sorted by arrival time, then by order of sending.
    in_flight: Vec<InFlight>,
    sent_order: u64,
    pub(crate) stats: PathStats,
}

impl Path {
    pub(crate) fn new(config: PathConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            busy_until: None,
            bad: false,
            stall: None,
            in_flight: Vec::new(),
            sent_order: 0,
            stats: PathStats::default(),
        }
    }

    /// A datagram enters the path at `now`.
    pub(crate) fn send(&mut self, now: Instant, transmit: Transmit) {
        self.stats.sent += 1;
        if self.config.down {
            self.stats.cut += 1;
            return;
        }
        if let Some(b) = self.config.bursts {
            let flip = if self.bad { b.end } else { b.start };
            if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                self.bad = !self.bad;
            }
        }
        let random_loss = self.config.loss > 0.0 && self.rng.random_bool(self.config.loss.min(1.0));
        if self.bad || random_loss {
            self.stats.lost += 1;
            return;
        }
        let mut leaves = now;
        if let Some(bps) = self.config.rate_bps.filter(|b| *b > 0) {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            let backlog = start.saturating_duration_since(now);
            let queued_bytes = backlog.as_secs_f64() * bps as f64 / 8.0;
            if queued_bytes > self.config.queue_bytes as f64 {
                self.stats.queue_drops += 1;
                return;
            }
            let bits = (transmit.contents.len() as u64 + 28) * 8;
            leaves = start + Duration::from_secs_f64(bits as f64 / bps as f64);
            self.busy_until = Some(leaves);
        }
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.random_range(0..=nanos))
        };
        let at = self.read_at(leaves + self.config.delay + jitter);
        self.sent_order += 1;
        let order = self.sent_order;
        let index = self
            .in_flight
            .partition_point(|f| (f.at, f.order) <= (at, order));
        self.in_flight.insert(
            index,
            InFlight {
                at,
                order,
                transmit,
            },
        );
    }

    /// When the receiver reads a datagram that reaches it at `at`: at once, or at the end of
    /// the stall `at` falls in. (Datagrams are sent in time order and jitter is small beside
    /// a stall, so the stall schedule only moves forward.)
    fn read_at(&mut self, at: Instant) -> Instant {
        let Some(stalls) = self.config.stalls else {
            self.stall = None;
            return at;
        };
        let pick = |rng: &mut StdRng, (lo, hi): (Duration, Duration)| {
            let span = u64::try_from(hi.saturating_sub(lo).as_nanos()).unwrap_or(u64::MAX);
            lo + Duration::from_nanos(rng.random_range(0..=span))
        };
        let (mut start, mut end) = match self.stall {
            Some(s) => s,
            None => {
                let start = at + pick(&mut self.rng, stalls.gap);
                (start, start + pick(&mut self.rng, stalls.length))
            }
        };
        while end <= at {
            start = end + pick(&mut self.rng, stalls.gap);
            end = start + pick(&mut self.rng, stalls.length);
        }
        self.stall = Some((start, end));
        if at >= start { end } else { at }
    }

    /// When the next datagram arrives.
    pub(crate) fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.first().map(|f| f.at)
    }

    /// The datagrams that have arrived by `now`, in order of arrival.
    pub(crate) fn arrived(&mut self, now: Instant) -> Vec<Transmit> {
        let n = self.in_flight.partition_point(|f| f.at <= now);
        self.stats.delivered += n as u64;
        self.in_flight.drain(..n).map(|f| f.transmit).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use str0m::net::{DatagramSend, Protocol};

    use super::*;

    fn datagram(len: usize) -> Transmit {
        let a: SocketAddr = ([198, 18, 0, 1], 1).into();
        Transmit {
            proto: Protocol::Udp,
            source: a,
            destination: a,
            contents: DatagramSend::from(vec![0u8; len]),
        }
    }

    #[test]
    fn a_rate_limited_path_spaces_datagrams_and_drops_past_its_queue() {
        let t0 = Instant::now();
        // 1 Mbit/s, 1000 + 28 bytes each: one every 8.224 ms; a queue of 10 kB.
        let mut p = Path::new(
            PathConfig {
                rate_bps: Some(1_000_000),
                queue_bytes: 10_000,
                ..PathConfig::default()
            },
            1,
        );
        for _ in 0..20 {
            p.send(t0, datagram(1000));
        }
        // The k-th waits behind k * 1028 bytes: from the 10th on, more than the queue holds.
        assert_eq!(p.stats.queue_drops, 10);
        let arrived = p.arrived(t0 + Duration::from_millis(1) + Duration::from_micros(8224 * 3));
        assert_eq!(arrived.len(), 3);
        assert_eq!(p.arrived(t0 + Duration::from_secs(1)).len(), 7);
    }

    #[test]
    fn losses_are_the_same_for_the_same_seed() {
        let run = |seed| {
            let t0 = Instant::now();
            let mut p = Path::new(
                PathConfig {
                    loss: 0.1,
                    bursts: Some(Bursts {
                        start: 0.02,
                        end: 0.3,
                    }),
                    ..PathConfig::default()
                },
                seed,
            );
            for _ in 0..1000 {
                p.send(t0, datagram(100));
            }
            p.stats.lost
        };
        assert_eq!(run(7), run(7));
        let lost = run(7);
        assert!((100..250).contains(&lost), "about 10% plus bursts: {lost}");
    }

    #[test]
    fn jitter_reorders_and_an_outage_drops_everything() {
        let t0 = Instant::now();
        let mut p = Path::new(
            PathConfig {
                jitter: Duration::from_millis(20),
                ..PathConfig::default()
            },
            3,
        );
        for i in 0..50u8 {
            let mut d = datagram(1);
            d.contents = DatagramSend::from(vec![i]);
            p.send(t0 + Duration::from_millis(u64::from(i)), d);
        }
        let order: Vec<u8> = p
            .arrived(t0 + Duration::from_secs(1))
            .iter()
            .map(|t| t.contents[0])
            .collect();
        assert_eq!(order.len(), 50);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "nothing overtook");
        p.config.down = true;
        p.send(t0, datagram(1));
        assert_eq!(p.stats.cut, 1);
        assert_eq!(p.next_arrival(), None);
    }
}
