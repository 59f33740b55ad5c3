//! What a load test reads about the server it targets: its forwarded-packet counters (from
//! `/metrics`) and, when it runs on this machine, its CPU time and memory (from `/proc`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ is 100 on every
/// architecture Linux supports in its user ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/statm`.
pub fn sample_process(pid: u32) -> std::io::Result<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis
    // start at field 3, so utime (14) and stime (15) are at positions 11 and 12.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_seconds = (tick(11) + tick(12)) / TICKS_PER_SECOND;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok(ProcessSample {
        cpu_seconds,
        rss_bytes: pages * 4096,
    })
}

/// The server's media counters, from its Prometheus endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerCounters {
    /// RTP packets written to subscribers.
    pub rtp_forwarded: u64,
    /// RTP payload bytes written to subscribers.
    pub rtp_bytes_forwarded: u64,
    /// Datagrams written to the media sockets.
    pub datagrams_sent: u64,
    /// Bytes written to the media sockets.
    pub bytes_sent: u64,
    /// RTP packets received from publishers.
    pub rtp_received: u64,
    /// NACKs received from subscribers.
    pub nacks_received: u64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_received: u64,
    /// The server's SFU-added latency histogram (`sfu_forward_latency_seconds`).
    pub forward_latency: Buckets,
    /// The server process's CPU seconds, if it reports them.
    pub cpu_seconds: Option<f64>,
    /// The server process's resident memory, if it reports it.
    pub rss_bytes: Option<u64>,
}

/// Most buckets of a histogram read from the server.
const MAX_BUCKETS: usize = 24;

/// A Prometheus histogram's cumulative bucket counts, by upper bound (`+Inf` included).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Buckets {
    bounds: [f64; MAX_BUCKETS],
    counts: [u64; MAX_BUCKETS],
    len: usize,
}

impl Buckets {
    /// The `{name}_bucket{le="..."} N` lines of a metrics page, in order of their bounds.
    pub fn parse(body: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut found: Vec<(f64, u64)> = body
            .lines()
            .filter_map(|line| {
                let (bound, rest) = line.strip_prefix(&prefix)?.split_once("\"}")?;
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                };
                Some((bound, rest.trim().parse::<f64>().ok()? as u64))
            })
            .collect();
        found.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets = Self::default();
        let slots = buckets.bounds.iter_mut().zip(buckets.counts.iter_mut());
        for ((bound_slot, count_slot), (bound, count)) in slots.zip(found) {
            *bound_slot = bound;
            *count_slot = count;
            buckets.len += 1;
        }
        buckets
    }

    /// What was recorded between `earlier` and `self` (same bounds).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut d = *self;
        if earlier.len == self.len {
            for (c, e) in d.counts.iter_mut().zip(&earlier.counts) {
                *c = c.saturating_sub(*e);
            }
        }
        d
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.len
            .checked_sub(1)
            .and_then(|last| self.counts.get(last))
            .copied()
            .unwrap_or(0)
    }

    /// The upper bound of the bucket holding quantile `q` (0-1): the quantile is at most
    /// this. `None` if nothing was recorded.
    pub fn quantile_at_most(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.bounds
            .iter()
            .zip(&self.counts)
            .take(self.len)
            .find(|(_, count)| **count >= rank)
            .map(|(bound, _)| *bound)
    }
}

/// The value of the unlabelled metric `name` on a metrics page.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Fetches `http://{host_port}/metrics` and reads the counters.
pub async fn scrape(host_port: &str) -> std::io::Result<ServerCounters> {
    let body = http_get(host_port, "/metrics").await?;
    let float = |name: &str| metric(&body, name);
    let value = |name: &str| float(name).map_or(0, |v| v as u64);
    Ok(ServerCounters {
        rtp_forwarded: value("sfu_rtp_forwarded_total"),
        rtp_bytes_forwarded: value("sfu_rtp_bytes_forwarded_total"),
        datagrams_sent: value("sfu_datagrams_sent_total"),
        bytes_sent: value("sfu_bytes_sent_total"),
        rtp_received: value("sfu_rtp_received_total"),
        nacks_received: value("sfu_nacks_received_total"),
        keyframe_requests_received: value("sfu_keyframe_requests_received_total"),
        forward_latency: Buckets::parse(&body, "sfu_forward_latency_seconds"),
        cpu_seconds: float("process_cpu_seconds_total"),
        rss_bytes: float("process_resident_memory_bytes").map(|v| v as u64),
    })
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header called `name` (lower case), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A minimal HTTP/1.1 request with `Connection: close` (the load tester needs nothing more;
/// no TLS).
pub async fn http_request(
    host_port: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpResponse> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(host_port))
        .await
        .map_err(|_| std::io::Error::other("timed out connecting"))??;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("timed out reading"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// GETs a path; an error unless the status is 200.
pub async fn http_get(host_port: &str, path: &str) -> std::io::Result<String> {
    let response = http_request(host_port, "GET", path, &[], "").await?;
    if response.status != 200 {
        return Err(std::io::Error::other(format!(
            "GET {path}: {}",
            response.status
        )));
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE x_seconds histogram\n\
        x_seconds_bucket{le=\"0.001\"} 50\n\
        x_seconds_bucket{le=\"+Inf\"} 100\n\
        x_seconds_bucket{le=\"0.01\"} 99\n\
        x_seconds_sum 0.5\nx_seconds_count 100\n";

    #[test]
    fn histogram_buckets_parse_and_give_quantile_bounds() {
        let now = Buckets::parse(PAGE, "x_seconds");
        assert_eq!(now.count(), 100);
        assert_eq!(now.quantile_at_most(0.5), Some(0.001));
        assert_eq!(now.quantile_at_most(0.99), Some(0.01));
        assert_eq!(now.quantile_at_most(1.0), Some(f64::INFINITY));
        let before = Buckets::parse(&PAGE.replace("} 50", "} 40"), "x_seconds");
        let window = now.since(&before);
        assert_eq!(window.count(), 0, "the +Inf bucket did not move");
        assert_eq!(Buckets::parse("", "x_seconds").quantile_at_most(0.5), None);
    }
}
