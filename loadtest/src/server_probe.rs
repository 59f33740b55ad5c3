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
    /// The server process's CPU seconds, if it reports them.
    pub cpu_seconds: Option<f64>,
    /// The server process's resident memory, if it reports it.
    pub rss_bytes: Option<u64>,
}

/// Fetches `http://{host_port}/metrics` and reads the counters.
pub async fn scrape(host_port: &str) -> std::io::Result<ServerCounters> {
    let body = http_get(host_port, "/metrics").await?;
    let float = |name: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let value = |name: &str| float(name).map_or(0, |v| v as u64);
    Ok(ServerCounters {
        rtp_forwarded: value("sfu_rtp_forwarded_total"),
        rtp_bytes_forwarded: value("sfu_rtp_bytes_forwarded_total"),
        datagrams_sent: value("sfu_datagrams_sent_total"),
        bytes_sent: value("sfu_bytes_sent_total"),
        cpu_seconds: float("process_cpu_seconds_total"),
        rss_bytes: float("process_resident_memory_bytes").map(|v| v as u64),
    })
}

/// A minimal HTTP/1.0 GET (the load tester needs nothing more).
pub async fn http_get(host_port: &str, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(host_port))
        .await
        .map_err(|_| std::io::Error::other("timed out connecting"))??;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("timed out reading"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!("GET {path}: {status}")));
    }
    Ok(body.to_string())
}
