//! Helpers shared by the integration tests: an in-process server on loopback with ephemeral
//! ports, tokens, and bounded waits.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::expect_used)]

pub mod redis;

use std::time::Duration;

use control_api::auth::{ApiKeys, Claims, Grants};
use control_api::{Server, ServerConfig};
use loadtest::bot::{Bot, BotConfig};
use sfu::SfuConfig;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// A server on 127.0.0.1 with ephemeral HTTP and media ports and `workers` media workers.
pub async fn start_server(workers: usize) -> Server {
    start_server_with(workers, |_| {}).await
}

/// [`start_server`] with the media core's configuration adjusted by `adjust`.
pub async fn start_server_with(workers: usize, adjust: impl FnOnce(&mut SfuConfig)) -> Server {
    start_server_configured(workers, |config| adjust(&mut config.sfu)).await
}

/// [`start_server`] with the whole server configuration adjusted by `adjust`.
pub async fn start_server_configured(
    workers: usize,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Server {
    init_logs();
    let sfu = SfuConfig {
        workers,
        first_port: 0,
        ice_tcp_port: Some(0),
        stats_interval: Some(Duration::from_secs(1)),
        ..SfuConfig::default()
    };
    let mut config = ServerConfig {
        http_addr: "127.0.0.1:0".parse().expect("literal address"),
        sfu,
        ..ServerConfig::default()
    };
    adjust(&mut config);
    Server::start(config).await.expect("server starts")
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// The signalling URL of a server.
pub fn ws_url(server: &Server) -> String {
    format!("ws://{}/rtc", server.http_addr)
}

/// A development token to join `room` as `identity`.
pub fn token(room: &str, identity: &str) -> String {
    let grants = Grants {
        room: Some(room.to_string()),
        room_join: true,
        ..Grants::default()
    };
    let claims = Claims::new(
        control_api::auth::DEV_API_KEY,
        identity,
        Duration::from_secs(600),
        grants,
    );
    ApiKeys::dev().mint(&claims).expect("dev key signs")
}

/// A bot joining `room` on `server`. Publishers send a keyframe when they start and then only
/// when asked, so a subscriber that gets video proves the server requested a keyframe for it.
pub fn bot(server: &Server, room: &str, identity: &str, publish: bool, tag: u32) -> Bot {
    let mut config = BotConfig::new(&ws_url(server), token(room, identity), publish, tag);
    config.keyframe_interval = u32::MAX;
    Bot::spawn(config)
}

/// What a finished child process printed.
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running child whose output is read on threads (so it never blocks on a full pipe).
pub struct Running {
    pub child: std::process::Child,
    name: String,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts one of this crate's binaries.
pub fn spawn_binary(binary: &str, args: &[String]) -> Running {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    Running {
        child,
        name: format!("{binary} {args:?}"),
        stdout: std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        stderr: std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    }
}

impl Running {
    /// Sends a signal (`"-INT"`, `"-TERM"`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the exit, at most `within` (then kills it and fails the test).
    pub async fn finish(mut self, within: Duration) -> Output {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still running after {within:?}; stderr: {}",
                    self.name,
                    self.stderr.join().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Output {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Runs one of this crate's binaries to completion, at most `within`.
pub async fn run_binary(binary: &str, args: &[String], within: Duration) -> Output {
    spawn_binary(binary, args).finish(within).await
}

/// The `sfu-server` binary next to this test's own executable (built by `cargo test
/// --workspace` or `cargo build -p control-api`).
pub fn server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("sfu-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p control-api` first",
        bin.display()
    );
    bin
}

/// Polls `condition` (server state the test can read directly) every 20 ms until it holds or
/// [`WAIT`] passes; returns whether it held.
pub async fn eventually(condition: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while !condition() {
        if started.elapsed() > WAIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Polls the media core's tracks (as their owners know them) every 20 ms until `condition`
/// holds or [`WAIT`] passes; returns the last snapshot, and whether it held.
#[allow(dead_code)]
pub async fn tracks_when(
    server: &Server,
    condition: impl Fn(&[sfu::TrackSnapshot]) -> bool,
) -> (Vec<sfu::TrackSnapshot>, bool) {
    let started = std::time::Instant::now();
    loop {
        let tracks = server.sfu().tracks().await;
        if condition(&tracks) {
            return (tracks, true);
        }
        if started.elapsed() > WAIT {
            return (tracks, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server process started by a test, killed (by PID) when dropped, so a test that fails
/// half-way leaves nothing running.
pub struct ServerProcess(std::process::Child);

impl std::ops::Deref for ServerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real server process ([`server_binary`]) on free loopback ports, logging warnings
/// only, with `extra` arguments; returns it and its HTTP `host:port`, read from its banner. Its
/// output is drained on a thread so it never blocks on a full pipe.
pub fn start_server_process(extra: &[&str]) -> (ServerProcess, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // SFU_TEST_LOG_DIR=DIR keeps each server's log there (at SFU_TEST_LOG, default warn).
    let level = std::env::var("SFU_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let stderr = match std::env::var_os("SFU_TEST_LOG_DIR") {
        Some(dir) => {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::path::Path::new(&dir).join(format!("server-{}-{n}.log", std::process::id()));
            Stdio::from(std::fs::File::create(path).expect("the log file"))
        }
        None => Stdio::null(),
    };
    let mut child = Command::new(server_binary())
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--media-port",
            "0",
            "--log",
            &level,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .expect("utf-8");
        if let Some(url) = line.trim().strip_prefix("web demo") {
            break url
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (ServerProcess(child), addr)
}
