//! The scheme and host a client used to reach the server, for URLs the server hands out: the
//! listener's own (`https` with TLS), or, for a request that came through a configured
//! TLS-terminating proxy, what the proxy says the client used (`X-Forwarded-Proto` /
//! `X-Forwarded-Host`, or RFC 7239 `Forwarded`). Forwarding headers from anyone else are
//! ignored: a client cannot make the server hand out URLs of its choosing.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

/// `http` or `https`, and the host (with port) the client addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Whether the client reached us over TLS (directly or at its proxy).
    pub secure: bool,
    /// `Host` as the client sent it.
    pub host: String,
}

impl Origin {
    /// `https://HOST` or `http://HOST`.
    pub fn http_url(&self) -> String {
        format!(
            "{}://{}",
            if self.secure { "https" } else { "http" },
            self.host
        )
    }

    /// `wss://HOST` or `ws://HOST`.
    pub fn ws_url(&self) -> String {
        format!("{}://{}", if self.secure { "wss" } else { "ws" }, self.host)
    }
}

/// Parses `--trusted-proxy` values: addresses (`203.0.113.5`) or networks (`10.0.0.0/8`).
pub fn parse_proxy(value: &str) -> Result<IpNet, String> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is not an IP address or network (CIDR)"))
}

/// The origin of a request received on a listener that is `tls` or not, from `peer`.
pub fn of_request(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: bool,
    trusted: &[IpNet],
    fallback_host: &str,
) -> Origin {
    let mut origin = Origin {
        secure: tls,
        host: header_str(headers, header::HOST.as_str())
            .filter(|h| valid_host(h))
            .unwrap_or(fallback_host)
            .to_string(),
    };
    let from_proxy = peer.is_some_and(|p| {
        let ip = p.ip().to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    });
    if !from_proxy {
        return origin;
    }
    let (proto, host) = match header_str(headers, "forwarded") {
        Some(forwarded) => forwarded_pair(forwarded),
        None => (
            header_str(headers, "x-forwarded-proto").map(|p| last_item(p).to_string()),
            header_str(headers, "x-forwarded-host").map(|h| last_item(h).to_string()),
        ),
    };
    match proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("https" | "wss") => origin.secure = true,
        Some("http" | "ws") => origin.secure = false,
        _ => {}
    }
    if let Some(host) = host.filter(|h| valid_host(h)) {
        origin.host = host;
    }
    origin
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The last of a comma-separated list: the one our trusted proxy wrote (a proxy that appends
/// keeps whatever the client sent before it).
fn last_item(value: &str) -> &str {
    value.rsplit(',').next().unwrap_or_default().trim()
}

/// `proto` and `host` of the last element of an RFC 7239 `Forwarded` header.
fn forwarded_pair(value: &str) -> (Option<String>, Option<String>) {
    let mut proto = None;
    let mut host = None;
    for pair in last_item(value).split(';') {
        let Some((name, val)) = pair.split_once('=') else {
            continue;
        };
        let val = val.trim().trim_matches('"').to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = Some(val),
            "host" => host = Some(val),
            _ => {}
        }
    }
    (proto, host)
}

/// A host (and port) fit to put in a URL: letters, digits, `.-:[]` only.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        // What a client put first is ignored: the trusted proxy appends its own last.
        let appended = headers(&[("host", "h"), ("x-forwarded-proto", "http, https")]);
        let t = vec![parse_proxy("127.0.0.1").unwrap()];
        assert!(of_request(&appended, peer("127.0.0.1"), false, &t, "x").secure);
        let trusted = vec![
            parse_proxy("198.18.0.0/24").unwrap(),
            parse_proxy("::1").unwrap(),
        ];
        let h = headers(&[
            ("host", "sfu.example.org"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example.org"),
        ]);
        let o = of_request(&h, peer("198.18.0.7"), false, &trusted, "x");
        assert_eq!(o.ws_url(), "wss://public.example.org");
        let o = of_request(&h, peer("198.19.0.7"), false, &trusted, "x");
        assert_eq!(o.ws_url(), "ws://sfu.example.org", "not a trusted proxy");
        let o = of_request(&h, peer("::ffff:198.18.0.9"), false, &trusted, "x");
        assert!(o.secure, "an IPv4-mapped address is its IPv4 address");
        let o = of_request(&h, None, true, &trusted, "x");
        assert_eq!(o.http_url(), "https://sfu.example.org");
    }

    #[test]
    fn rfc_7239_forwarded_wins_and_bad_hosts_are_ignored() {
        let trusted = vec![parse_proxy("127.0.0.1").unwrap()];
        let h = headers(&[
            ("host", "inner:7880"),
            (
                "forwarded",
                "for=198.51.100.1;proto=http;host=evil, for=192.0.2.60;proto=https;host=\"a.example:443\"",
            ),
            ("x-forwarded-proto", "http"),
        ]);
        let o = of_request(&h, peer("127.0.0.1"), false, &trusted, "x");
        assert_eq!(o.http_url(), "https://a.example:443");
        let h = headers(&[("host", "evil/<script>"), ("x-forwarded-proto", "https")]);
        let o = of_request(&h, peer("127.0.0.1"), false, &trusted, "fallback:1");
        assert_eq!(o.http_url(), "https://fallback:1");
        assert!(parse_proxy("nonsense").is_err());
    }
}
