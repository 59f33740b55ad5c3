//! Which of a socket's advertised candidates a packet reached, and which local address a
//! reply from a candidate must leave from.
//!
//! A worker's socket (or the ICE-TCP listener) may be bound to one address, or to all of them
//! (`0.0.0.0`, or `::` for IPv4 and IPv6) with several advertised. Bound to all, each packet
//! carries the address it was sent to (IP_PKTINFO / IPV6_RECVPKTINFO): the candidate with that
//! address is the one its sender checked, and replies must leave from that same address, or
//! the client's ICE agent would not recognise them. A candidate that is not an address of this
//! host (a public address NATed to it) is reached through a local one of the same family, and
//! replies leave from that one.
//!
//! Choosing is pure; what a reply leaves from is learned only from packets the peer's state
//! machine accepted ([`LocalAddrs::confirm`]), so a stranger's datagram to some other address
//! of the host cannot move anyone's replies.

use std::net::{IpAddr, SocketAddr};

/// One advertised candidate.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddr,
    /// An address of this host (else: NATed to it).
    local: bool,
    /// The local address its packets arrive at, once confirmed.
    reply_from: Option<IpAddr>,
}

/// Where a packet arrived: the candidate, and the local address that showed it (when the
/// socket is bound to every address and the destination fits the candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reached {
    pub(crate) candidate: SocketAddr,
    via: Option<IpAddr>,
}

/// The candidates of one socket.
#[derive(Debug, Clone)]
pub(crate) struct LocalAddrs {
    /// The advertised candidates (first: the default); a handful, scanned linearly.
    candidates: Vec<Candidate>,
    /// The socket is bound to every address: choose candidates and sources per packet.
    unspecified: bool,
}

impl LocalAddrs {
    /// The candidates of a socket bound to `bound`.
    pub(crate) fn new(bound: SocketAddr, candidates: &[SocketAddr]) -> Self {
        let addrs = if candidates.is_empty() {
            vec![bound]
        } else {
            candidates.to_vec()
        };
        Self {
            candidates: addrs
                .into_iter()
                .map(|addr| Candidate {
                    addr,
                    local: is_local(addr.ip()),
                    reply_from: None,
                })
                .collect(),
            unspecified: bound.ip().is_unspecified(),
        }
    }

    /// The candidate a packet sent to `dst_ip` reached.
    pub(crate) fn candidate_for(&self, dst_ip: Option<IpAddr>) -> Reached {
        let first = Reached {
            candidate: self
                .candidates
                .first()
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.addr),
            via: None,
        };
        let Some(dst) = dst_ip
            .map(|ip| ip.to_canonical())
            .filter(|ip| self.unspecified && is_unicast(*ip))
        else {
            return first;
        };
        let exact = self.candidates.iter().find(|c| c.addr.ip() == dst);
        // Otherwise a public address NATed to this host, of the same family (never through
        // loopback: that is no way in from outside).
        let natted = || {
            self.candidates
                .iter()
                .find(|c| !c.local && c.addr.is_ipv4() == dst.is_ipv4() && !dst.is_loopback())
        };
        match exact.or_else(natted) {
            Some(c) => Reached {
                candidate: c.addr,
                via: Some(dst),
            },
            None => first,
        }
    }

    /// The peer's state machine accepted a packet that reached `reached`: replies from that
    /// candidate leave from the address it came in at.
    pub(crate) fn confirm(&mut self, reached: Reached) {
        let Some(via) = reached.via else {
            return;
        };
        if let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.addr == reached.candidate)
        {
            c.reply_from = Some(via);
        }
    }

    /// The local address a reply from `candidate` must leave from (`None`: the socket's own).
    pub(crate) fn source_ip(&self, candidate: SocketAddr) -> Option<IpAddr> {
        if !self.unspecified {
            return None;
        }
        self.candidates
            .iter()
            .find(|c| c.addr.ip() == candidate.ip())
            .and_then(|c| c.reply_from)
    }
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// An address a reply can leave from: not unspecified, broadcast or multicast.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn bound_to_one_address_everything_is_its_candidate() {
        let l = LocalAddrs::new(addr("198.18.0.1:5000"), &[addr("203.0.113.7:5000")]);
        let reached = l.candidate_for(ip("198.18.0.1"));
        assert_eq!(reached.candidate, addr("203.0.113.7:5000"));
        assert_eq!(l.source_ip(addr("203.0.113.7:5000")), None);
    }

    #[test]
    fn bound_to_all_each_packet_finds_its_candidate_and_replies_leave_from_it() {
        // Not addresses of this host, but each packet names its own exactly.
        let candidates = [
            addr("198.18.0.1:5000"),
            addr("198.18.1.1:5000"),
            addr("[2001:db8::1]:5000"),
        ];
        let mut l = LocalAddrs::new(addr("[::]:5000"), &candidates);
        let v6 = l.candidate_for(ip("2001:db8::1"));
        assert_eq!(v6.candidate, addr("[2001:db8::1]:5000"));
        // An IPv4 packet on a dual-stack socket arrives at a mapped address.
        let v4 = l.candidate_for(ip("::ffff:198.18.1.1"));
        assert_eq!(v4.candidate, addr("198.18.1.1:5000"));
        assert_eq!(
            l.source_ip(addr("198.18.1.1:5000")),
            None,
            "not confirmed yet"
        );
        l.confirm(v4);
        l.confirm(v6);
        assert_eq!(l.source_ip(addr("198.18.1.1:5000")), ip("198.18.1.1"));
        assert_eq!(l.source_ip(addr("[2001:db8::1]:5000")), ip("2001:db8::1"));
        assert_eq!(l.source_ip(addr("198.18.0.1:5000")), None);
    }

    #[test]
    fn a_natted_public_candidate_replies_from_the_private_address() {
        let mut l = LocalAddrs::new(
            addr("0.0.0.0:5000"),
            &[addr("127.0.0.1:5000"), addr("203.0.113.7:5000")],
        );
        let reached = l.candidate_for(ip("198.18.0.9"));
        assert_eq!(reached.candidate, addr("203.0.113.7:5000"));
        l.confirm(reached);
        assert_eq!(l.source_ip(addr("203.0.113.7:5000")), ip("198.18.0.9"));
    }

    #[test]
    fn strangers_cannot_move_replies() {
        let mut l = LocalAddrs::new(
            addr("[::]:5000"),
            &[addr("127.0.0.1:5000"), addr("203.0.113.7:5000")],
        );
        // Broadcast, multicast and the other family fall back to the default candidate and
        // teach nothing, even if confirmed.
        for dst in ["255.255.255.255", "224.0.0.1", "2001:db8::99", "::"] {
            let reached = l.candidate_for(ip(dst));
            assert_eq!(reached.candidate, addr("127.0.0.1:5000"), "{dst}");
            l.confirm(reached);
        }
        assert_eq!(l.source_ip(addr("127.0.0.1:5000")), None);
        assert_eq!(l.source_ip(addr("203.0.113.7:5000")), None);
        // Loopback is no way to a NATed public address.
        assert_eq!(
            l.candidate_for(ip("127.0.0.2")).candidate,
            addr("127.0.0.1:5000")
        );
    }
}
