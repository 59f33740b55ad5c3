//! Which of a worker's advertised candidates a datagram reached, and which local address a
//! reply from a candidate must leave from.
//!
//! A worker's socket may be bound to one address, or to all of them (`0.0.0.0`, or `::` for
//! both IPv4 and IPv6) with several advertised. Bound to all, each datagram carries the
//! address it was sent to (IP_PKTINFO / IPV6_RECVPKTINFO): the candidate with that address is
//! the one its sender checked, and replies must leave from that same address, or the client's
//! ICE agent would not recognise them. A candidate that is not a local address (a public
//! address NATed to this host) is reached through a local one; replies leave from it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// The candidates of one worker socket.
#[derive(Debug, Clone)]
pub(crate) struct LocalAddrs {
    /// The advertised candidates (first: the default), and whether each is an address of
    /// this host.
    candidates: Vec<(SocketAddr, bool)>,
    /// The socket is bound to every address: choose candidates and sources per datagram.
    unspecified: bool,
    /// Candidate IP -> the local IP its datagrams arrived at (learned; at most one entry
    /// per candidate).
    send_from: HashMap<IpAddr, IpAddr>,
}

impl LocalAddrs {
    /// The candidates of a socket bound to `bound`.
    pub(crate) fn new(bound: SocketAddr, candidates: Vec<SocketAddr>) -> Self {
        let candidates = if candidates.is_empty() {
            vec![bound]
        } else {
            candidates
        };
        Self {
            candidates: candidates
                .into_iter()
                .map(|c| (c, is_local(c.ip())))
                .collect(),
            unspecified: bound.ip().is_unspecified(),
            send_from: HashMap::new(),
        }
    }

    /// The candidate a datagram sent to `dst_ip` reached.
    pub(crate) fn receive(&mut self, dst_ip: Option<IpAddr>) -> SocketAddr {
        let first = self
            .candidates
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(c, _)| *c);
        let Some(dst) = dst_ip
            .map(|ip| ip.to_canonical())
            .filter(|_| self.unspecified)
        else {
            return first;
        };
        let exact = self.candidates.iter().find(|(c, _)| c.ip() == dst);
        // Otherwise a public address NATed to this host, of the same family.
        let natted = || {
            self.candidates
                .iter()
                .find(|(c, local)| !local && c.is_ipv4() == dst.is_ipv4())
        };
        let candidate = exact.or_else(natted).map_or(first, |(c, _)| *c);
        if self.send_from.get(&candidate.ip()) != Some(&dst) {
            self.send_from.insert(candidate.ip(), dst);
        }
        candidate
    }

    /// The local address a reply from `candidate` must leave from (`None`: the socket's own).
    pub(crate) fn source_ip(&self, candidate: SocketAddr) -> Option<IpAddr> {
        if !self.unspecified {
            return None;
        }
        self.send_from.get(&candidate.ip()).copied()
    }
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bound_to_one_address_everything_is_its_candidate() {
        let mut l = LocalAddrs::new(addr("198.18.0.1:5000"), vec![addr("203.0.113.7:5000")]);
        assert_eq!(
            l.receive(Some("198.18.0.1".parse().unwrap())),
            addr("203.0.113.7:5000")
        );
        assert_eq!(l.source_ip(addr("203.0.113.7:5000")), None);
    }

    #[test]
    fn bound_to_all_each_datagram_finds_its_candidate_and_replies_leave_from_it() {
        // Not addresses of this host, but each datagram names its own exactly.
        let candidates = vec![
            addr("198.18.0.1:5000"),
            addr("198.18.1.1:5000"),
            addr("[2001:db8::1]:5000"),
        ];
        let mut l = LocalAddrs::new(addr("[::]:5000"), candidates);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(l.receive(Some(v6)), addr("[2001:db8::1]:5000"));
        // An IPv4 datagram on a dual-stack socket arrives at a mapped address.
        let mapped: IpAddr = "::ffff:198.18.1.1".parse().unwrap();
        assert_eq!(l.receive(Some(mapped)), addr("198.18.1.1:5000"));
        assert_eq!(
            l.source_ip(addr("198.18.1.1:5000")),
            Some("198.18.1.1".parse().unwrap())
        );
        assert_eq!(l.source_ip(addr("[2001:db8::1]:5000")), Some(v6));
        assert_eq!(l.source_ip(addr("198.18.0.1:5000")), None, "not seen yet");
    }

    #[test]
    fn a_natted_public_candidate_replies_from_the_private_address() {
        let mut l = LocalAddrs::new(
            addr("0.0.0.0:5000"),
            vec![addr("127.0.0.1:5000"), addr("203.0.113.7:5000")],
        );
        let private: IpAddr = "198.18.0.9".parse().unwrap();
        assert_eq!(l.receive(Some(private)), addr("203.0.113.7:5000"));
        assert_eq!(l.source_ip(addr("203.0.113.7:5000")), Some(private));
    }
}
