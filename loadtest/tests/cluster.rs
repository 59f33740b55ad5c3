//! Cluster mode's node registry with a real `redis-server` and real server processes: nodes
//! find each other, clients are told where else to go, a node that exits leaves at once and
//! one killed with SIGKILL within its time to live; a node that loses Redis keeps its calls
//! and comes back into a Redis restarted empty. Without `--redis-url` there is no cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{ServerProcess, WAIT, start_server_process, token};
use control_api::auth::{ApiKeys, Claims, DEV_API_KEY, Grants};
use control_api::protocol::ErrorCode;
use loadtest::bot::{Bot, BotConfig};
use loadtest::server_probe::{http_get, http_request};
use loadtest::signal::ServerMessage;
use loadtest::synthetic::PayloadKind;
use serde_json::Value;

/// A node of a cluster at `redis`, one media worker, with `extra` arguments; returns the
/// process and its HTTP address.
fn node(redis: &RedisServer, id: &str, ttl: u64, extra: &[&str]) -> (ServerProcess, String) {
    let ttl = ttl.to_string();
    let url = redis.url();
    let args = [
        &[
            "--workers",
            "1",
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--node-ttl",
            &ttl,
        ][..],
        extra,
    ]
    .concat();
    start_server_process(&args)
}

fn list_token() -> String {
    admin_token(Grants {
        room_list: true,
        ..Grants::default()
    })
}

/// A room-service token of `grants` (development keys).
fn admin_token(grants: Grants) -> String {
    let claims = Claims::new(DEV_API_KEY, "ops", Duration::from_secs(600), grants);
    ApiKeys::dev().mint(&claims).unwrap()
}

/// `GET /api/nodes` on `addr`.
async fn nodes(addr: &str) -> Value {
    let auth = format!("Bearer {}", list_token());
    let response = http_request(addr, "GET", "/api/nodes", &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

/// The ids `addr` lists.
async fn node_ids(addr: &str) -> Vec<String> {
    nodes(addr).await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `addr`'s node list every 100 ms until it is `want`, for at most `within`; returns how
/// long that took.
async fn lists_within(addr: &str, want: &[&str], within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if node_ids(addr).await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The value of an unlabelled gauge on `addr`'s metrics page.
async fn gauge(addr: &str, name: &str) -> Option<f64> {
    let page = http_get(addr, "/metrics").await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn gauge_becomes(addr: &str, name: &str, value: f64) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if gauge(addr, name).await == Some(value) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn kill(child: &mut Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_and_leave_by_exit_or_by_expiry() {
    let redis = RedisServer::start().await;
    let (mut a, a_addr) = node(&redis, "a", 3, &[]);
    let (mut b, b_addr) = node(&redis, "b", 3, &[]);
    // c's entry would outlive it by a minute: it must withdraw it when it exits.
    let relay = [
        "--relay-addr",
        "127.0.0.1:0",
        "--cluster-secret",
        "0123456789abcdef",
    ];
    let (mut c, _) = node(&redis, "c", 60, &relay);

    assert!(
        lists_within(&a_addr, &["a", "b", "c"], WAIT)
            .await
            .is_some(),
        "a lists every node: {:?}",
        nodes(&a_addr).await
    );
    assert!(
        lists_within(&b_addr, &["a", "b", "c"], WAIT)
            .await
            .is_some()
    );
    let listed = nodes(&a_addr).await;
    assert_eq!(listed["cluster"], true);
    assert_eq!(listed["redis_up"], true);
    assert_eq!(listed["this_node"], "a");
    let b_entry = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(b_entry["url"], format!("http://{b_addr}"));
    let c_relay = listed["nodes"][2]["relay_addr"]
        .as_str()
        .unwrap_or_default();
    assert!(
        c_relay.starts_with("127.0.0.1:") && !c_relay.ends_with(":0"),
        "c's relay, as bound: {c_relay}"
    );
    assert!(listed["nodes"][0].get("relay_addr").is_none(), "a has none");
    assert!(
        http_get(&a_addr, "/readyz").await.is_ok(),
        "in the cluster: ready"
    );

    // A participant on a is told where else to go: the other live nodes.
    let bot = Bot::spawn(BotConfig::new(
        &format!("ws://{a_addr}/rtc"),
        token("r", "p"),
        false,
        1,
    ));
    let b_rtc = format!("ws://{b_addr}/rtc");
    assert!(
        bot.wait_for(WAIT, |s| s.saw(|m| matches!(
            m,
            ServerMessage::Joined { alternates, .. }
                if alternates.len() == 2 && alternates.contains(&b_rtc)
        )))
        .await,
        "joined names b and c as alternates"
    );
    bot.leave();

    // c exits (SIGTERM, no participants): it leaves the registry at once, not in 60 s.
    kill(&mut c, "-TERM");
    assert!(c.wait().unwrap().success());
    assert!(
        lists_within(&a_addr, &["a", "b"], Duration::from_secs(5))
            .await
            .is_some(),
        "c withdrew its entry when it exited"
    );

    // b dies without a word: it is gone once its 3 s entry expires (plus a heartbeat).
    kill(&mut b, "-KILL");
    let _ = b.wait();
    let gone = lists_within(&a_addr, &["a"], Duration::from_secs(8)).await;
    assert!(
        gone.is_some(),
        "b left the registry within its time to live"
    );
    let _ = a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_redis_keeps_its_calls_and_returns_to_an_emptied_redis() {
    let mut redis = RedisServer::start().await;
    let (mut a, a_addr) = node(&redis, "a", 3, &[]);
    assert!(lists_within(&a_addr, &["a"], WAIT).await.is_some());
    let url = format!("ws://{a_addr}/rtc");
    let publisher = Bot::spawn(BotConfig::new(&url, token("call", "pub"), true, 1));
    let viewer = Bot::spawn(BotConfig::new(&url, token("call", "viewer"), false, 2));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await
    );

    redis.kill();
    assert!(
        gauge_becomes(&a_addr, "sfu_cluster_redis_up", 0.0).await,
        "the node notices Redis is gone"
    );
    let before = viewer.state().packets_from(1, PayloadKind::Vp8);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= before + 60)
            .await,
        "the call carries on without Redis"
    );
    assert!(
        http_get(&a_addr, "/readyz").await.is_ok(),
        "still ready: it serves its own rooms"
    );
    let listed = nodes(&a_addr).await;
    assert_eq!(listed["redis_up"], false);
    assert_eq!(listed["nodes"][0]["id"], "a", "the last list it read");
    let late = Bot::spawn(BotConfig::new(&url, token("call", "late"), false, 3));
    assert!(
        late.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "a new participant joins the node's room while Redis is away"
    );

    // A room the node does not host cannot be started without the directory: refused, clearly.
    let stranger = Bot::spawn(BotConfig::new(&url, token("new-room", "x"), false, 4));
    assert!(stranger.wait_for(WAIT, |s| s.error().is_some()).await);
    let (code, message) = stranger.state().error().unwrap();
    assert_eq!(code, ErrorCode::ClusterUnavailable, "{message}");
    assert!(message.contains("Redis"), "{message}");

    // Redis comes back empty: the node announces itself again.
    redis.restart().await;
    assert_eq!(redis.command(&["DBSIZE"]).await.as_deref(), Some(":0\r\n"));
    assert!(gauge_becomes(&a_addr, "sfu_cluster_redis_up", 1.0).await);
    let deadline = Instant::now() + WAIT;
    let mut entry = None;
    while Instant::now() < deadline && entry.is_none() {
        entry = redis
            .command(&["GET", "sfu:node:a"])
            .await
            .filter(|r| r.starts_with('$') && r.contains("\"id\":\"a\""));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = entry.expect("the node is in the emptied Redis again");
    assert!(
        entry.contains("\"participants\":3"),
        "with its load: {entry}"
    );
    for bot in [&publisher, &viewer, &late] {
        bot.leave();
    }
    let _ = a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_lives_on_one_node_joins_elsewhere_are_sent_there_and_it_moves_when_its_node_dies() {
    let redis = RedisServer::start().await;
    let (mut a, a_addr) = node(&redis, "a", 2, &[]);
    let (mut b, b_addr) = node(&redis, "b", 2, &[]);
    assert!(lists_within(&b_addr, &["a", "b"], WAIT).await.is_some());
    let a_rtc = format!("ws://{a_addr}/rtc");
    let b_rtc = format!("ws://{b_addr}/rtc");

    let publisher = Bot::spawn(BotConfig::new(&a_rtc, token("r", "pub"), true, 1));
    assert!(publisher.wait_for(WAIT, |s| s.participant.is_some()).await);
    // A viewer that asks b is sent to a, where the room is, and sees the publisher there.
    let viewer = Bot::spawn(BotConfig::new(&b_rtc, token("r", "viewer"), false, 2));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "the viewer sent to a gets the publisher's video: {:?}",
        viewer.state().error()
    );
    assert_eq!(viewer.state().joined_via.as_deref(), Some(a_rtc.as_str()));
    assert!(viewer.state().saw(|m| matches!(
        m,
        ServerMessage::Error { code: ErrorCode::RoomElsewhere, url: Some(url), .. } if *url == a_rtc
    )));
    let auth = format!("Bearer {}", list_token());
    let rooms_on = |addr: String| {
        let auth = auth.clone();
        async move {
            let r = http_request(&addr, "GET", "/api/rooms", &[("Authorization", &auth)], "")
                .await
                .unwrap();
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap().to_string(),
                        r["num_participants"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rooms_on(b_addr.clone()).await, vec![], "b hosts nothing");
    assert_eq!(rooms_on(a_addr.clone()).await.len(), 1);

    // WHEP at b: 307 to the same endpoint on a.
    let whep_auth = format!("Bearer {}", token("r", "whep"));
    let redirected = http_request(
        &b_addr,
        "POST",
        "/whep/r",
        &[
            ("Authorization", &whep_auth),
            ("Content-Type", "application/sdp"),
        ],
        "v=0\r\n",
    )
    .await
    .unwrap();
    assert_eq!(redirected.status, 307, "{}", redirected.body);
    assert!(
        redirected
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("location")
                && *v == format!("http://{a_addr}/whep/r")),
        "{:?}",
        redirected.headers
    );
    // The room service at b will not create it either.
    let admin = {
        let grants = Grants {
            room_create: true,
            ..Grants::default()
        };
        let claims = Claims::new(DEV_API_KEY, "ops", Duration::from_secs(60), grants);
        format!("Bearer {}", ApiKeys::dev().mint(&claims).unwrap())
    };
    let created = http_request(
        &b_addr,
        "POST",
        "/api/rooms",
        &[
            ("Authorization", &admin),
            ("Content-Type", "application/json"),
        ],
        r#"{"name":"r"}"#,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 409, "{}", created.body);

    // a dies: its claim on the room lapses with its 2 s time to live, and a join at b then
    // starts the room on b.
    kill(&mut a, "-KILL");
    let _ = a.wait();
    let killed = Instant::now();
    let mut attempt = 10;
    let moved = loop {
        attempt += 1;
        let bot = Bot::spawn(BotConfig::new(&b_rtc, token("r", "again"), false, attempt));
        let joined = bot
            .wait_for(Duration::from_secs(3), |s| {
                s.participant.is_some() || s.ended.is_some()
            })
            .await
            && bot.state().participant.is_some();
        if joined {
            assert_eq!(bot.state().joined_via, None, "joined on b itself");
            break killed.elapsed();
        }
        assert!(killed.elapsed() < WAIT, "the room never moved to b");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        moved < Duration::from_secs(6),
        "the room moved after {moved:?}"
    );
    assert_eq!(rooms_on(b_addr.clone()).await.len(), 1);
    for bot in [&publisher, &viewer] {
        bot.leave();
    }
    let _ = b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_relays_link_only_nodes_that_know_the_cluster_secret() {
    let redis = RedisServer::start().await;
    let secret = [
        "--relay-addr",
        "127.0.0.1:0",
        "--cluster-secret",
        "the secret of this cluster",
    ];
    let (mut a, a_addr) = node(&redis, "a", 3, &secret);
    let (mut b, b_addr) = node(&redis, "b", 3, &secret);
    let stranger = [
        "--relay-addr",
        "127.0.0.1:0",
        "--cluster-secret",
        "a secret from elsewhere",
    ];
    let (mut c, c_addr) = node(&redis, "c", 3, &stranger);
    let linked = |addr: String| async move {
        nodes(&addr).await["linked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // a and b link (one connection: the smaller id dials); both refuse c, which knows another
    // secret, and c links with nobody.
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline
        && !(linked(a_addr.clone()).await == ["b"]
            && linked(b_addr.clone()).await == ["a"]
            && gauge(&c_addr, "sfu_relay_refused_total").await >= Some(2.0))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(linked(a_addr.clone()).await, ["b"]);
    assert_eq!(linked(b_addr.clone()).await, ["a"]);
    assert_eq!(linked(c_addr.clone()).await, Vec::<String>::new());
    assert_eq!(gauge(&a_addr, "sfu_relay_links").await, Some(1.0));
    assert!(
        gauge(&c_addr, "sfu_relay_refused_total").await >= Some(2.0),
        "c refused a and b"
    );
    assert!(
        gauge(&a_addr, "sfu_relay_refused_total").await >= Some(1.0),
        "a refused c"
    );
    // The registry holds the addresses the relays are bound to.
    for n in nodes(&a_addr).await["nodes"].as_array().unwrap() {
        let addr: std::net::SocketAddr = n["relay_addr"].as_str().unwrap().parse().unwrap();
        assert!(addr.port() != 0 && addr.ip().is_loopback(), "{n}");
    }

    // b dies: a's link to it closes (keep-alives stop; 5 s idle timeout).
    kill(&mut b, "-KILL");
    let _ = b.wait();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !linked(a_addr.clone()).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(linked(a_addr.clone()).await, Vec::<String>::new());
    let _ = a.kill();
    let _ = c.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_spread_over_two_nodes_meets_in_one_room_and_reports_each_node() {
    let redis = RedisServer::start().await;
    let (mut a, a_addr) = node(&redis, "a", 3, &[]);
    let (mut b, b_addr) = node(&redis, "b", 3, &[]);
    assert!(lists_within(&a_addr, &["a", "b"], WAIT).await.is_some());
    let args: Vec<String> = format!(
        "--server {a_addr} --server {b_addr} --json --quiet --join-rate 0 --media synthetic \
         --rooms 1 --publishers 1 --subscribers 4 --publishers-subscribe false --duration 3 \
         --join-timeout 15 --max-loss 0"
    )
    .split_whitespace()
    .map(str::to_string)
    .collect();
    let output = common::run_binary(
        env!("CARGO_BIN_EXE_sfu-swarm"),
        &args,
        Duration::from_secs(60),
    )
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(report["join"]["success_rate"], 1.0, "{report}");
    assert_eq!(report["viewers"]["receiving_everything"], 4, "{report}");
    assert_eq!(report["bad_payloads"], 0);
    // Bots joined at both nodes; the room lives on one, which forwarded everything.
    let nodes = report["nodes"].as_array().unwrap();
    let forwarded: Vec<u64> = nodes
        .iter()
        .map(|n| n["rtp_forwarded"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "{report}");
    assert_eq!(
        forwarded.iter().filter(|f| **f == 0).count(),
        1,
        "one node idle: {forwarded:?}"
    );
    assert!(forwarded.iter().sum::<u64>() > 100, "{forwarded:?}");
    assert!(
        output.stderr.contains(&format!("node       {a_addr}")),
        "{}",
        output.stderr
    );
    let _ = a.kill();
    let _ = b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_registry_entries_are_ignored_and_counted() {
    let redis = RedisServer::start().await;
    let entry = |id: &str, url: &str| {
        serde_json::json!({
            "id": id, "url": url, "version": "1", "started_at": 0, "draining": false,
            "load": {"participants": 0, "rooms": 0, "peers": 0, "cpu_cores": 0.0, "egress_bps": 0}
        })
        .to_string()
    };
    for (key, value) in [
        ("sfu:node:junk", "{not-json".to_string()),
        ("sfu:node:liar", entry("someone-else", "http://x")),
        ("sfu:node:ftp", entry("ftp", "ftp://x")),
    ] {
        let reply = redis.command(&["SET", key, &value]).await;
        assert_eq!(reply.as_deref(), Some("+OK\r\n"), "{key}");
    }
    let (mut a, a_addr) = node(&redis, "a", 3, &[]);
    assert!(lists_within(&a_addr, &["a"], WAIT).await.is_some());
    assert!(gauge_becomes(&a_addr, "sfu_cluster_ignored_entries", 3.0).await);
    let _ = a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_there_is_no_cluster() {
    let (mut single, addr) = start_server_process(&["--workers", "1"]);
    let listed = nodes(&addr).await;
    assert_eq!(listed["cluster"], false);
    assert_eq!(listed["nodes"].as_array().map(Vec::len), Some(0));
    assert!(gauge(&addr, "sfu_cluster_redis_up").await.is_none());
    let _ = single.kill();
}

/// A token for `room` that may subscribe but not publish (a live stream's audience).
/// Nodes `ids` (sorted) of a cluster at `redis` with the media relay on and `extra`
/// arguments, once each has a relay link to every other.
async fn relay_nodes<const N: usize>(
    redis: &RedisServer,
    ids: [&str; N],
    extra: &[&str],
) -> [(ServerProcess, String); N] {
    let relay = [
        "--relay-addr",
        "127.0.0.1:0",
        "--cluster-secret",
        "the secret of this cluster",
    ];
    let args = [&relay[..], extra].concat();
    let started: Vec<(ServerProcess, String)> =
        ids.iter().map(|id| node(redis, id, 3, &args)).collect();
    let deadline = Instant::now() + WAIT;
    for (i, (_, addr)) in started.iter().enumerate() {
        let others: Vec<&str> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| *id)
            .collect();
        let want = serde_json::json!(others);
        while Instant::now() < deadline && nodes(addr).await["linked"] != want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            nodes(addr).await["linked"],
            want,
            "{} links to the others",
            ids[i]
        );
    }
    started
        .try_into()
        .unwrap_or_else(|_| unreachable!("one process per id"))
}

/// A bot that joins `room` at signalling URL `url` as `identity`, with a token that may not
/// publish; its payloads' tag is `tag`.
fn viewer_bot(url: &str, room: &str, identity: &str, tag: u32) -> Bot {
    Bot::spawn(BotConfig::new(
        url,
        viewer_token(room, identity),
        false,
        tag,
    ))
}

fn viewer_token(room: &str, identity: &str) -> String {
    let grants = Grants {
        room: Some(room.to_string()),
        room_join: true,
        can_publish: Some(false),
        ..Grants::default()
    };
    let claims = Claims::new(DEV_API_KEY, identity, Duration::from_secs(600), grants);
    ApiKeys::dev().mint(&claims).unwrap()
}

/// A counter on `addr`'s metrics page (0 when absent).
async fn counter(addr: &str, name: &str) -> f64 {
    gauge(addr, name).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_at_another_node_is_served_there_with_the_hosts_media_relayed_intact() {
    let redis = RedisServer::start().await;
    let [(mut a, a_addr), (mut b, b_addr)] = relay_nodes(&redis, ["a", "b"], &[]).await;
    let a_rtc = format!("ws://{a_addr}/rtc");
    let b_rtc = format!("ws://{b_addr}/rtc");

    let publisher = Bot::spawn(BotConfig::new(&a_rtc, token("show", "pub"), true, 1));
    publisher.set_audio_level(-20);
    assert!(publisher.wait_for(WAIT, |s| s.participant.is_some()).await);
    let publisher_id = publisher.state().participant.unwrap();
    // A viewer that may not publish, at b: served there (no redirect), with a's media.
    let viewer = viewer_bot(&b_rtc, "show", "viewer", 2);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 100
                && s.packets_from(1, PayloadKind::Opus) >= 50)
            .await,
        "the viewer at b gets the publisher's video and audio: {:?}",
        viewer.state().error()
    );
    let state = viewer.state();
    assert_eq!(state.joined_via, None, "served where it connected");
    assert_eq!(state.bad_payloads, 0, "every payload arrived byte for byte");
    assert!(counter(&a_addr, "sfu_relay_packets_sent_total").await >= 150.0);
    assert!(counter(&b_addr, "sfu_relay_packets_received_total").await >= 150.0);
    assert_eq!(
        counter(&b_addr, "sfu_relay_packets_refused_total").await,
        0.0
    );
    assert!(
        counter(&b_addr, "sfu_relay_hop_seconds_count").await >= 100.0,
        "b measures the hop"
    );
    // The host's participants are shown at b, its active speakers and data messages cross.
    assert!(
        viewer
            .wait_for(WAIT, |s| s.saw(|m| match m {
                ServerMessage::Joined { participants, .. } => {
                    participants.iter().any(|p| p.id == publisher_id)
                }
                ServerMessage::ParticipantJoined { participant } => participant.id == publisher_id,
                _ => false,
            }))
            .await,
        "the viewer at b is shown the publisher at a"
    );
    let speaking = |s: &loadtest::bot::BotState| {
        s.messages.iter().rev().find_map(|m| match m {
            ServerMessage::ActiveSpeakers { speakers } => Some(
                speakers
                    .iter()
                    .map(|s| s.participant.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
    };
    assert!(
        viewer
            .wait_for(WAIT, |s| speaking(s) == Some(vec![publisher_id.clone()]))
            .await,
        "the publisher at a is an active speaker at b: {:?}",
        speaking(&viewer.state())
    );
    assert!(publisher.wait_for(WAIT, |s| s.data_open).await);
    publisher.send_data("hello across nodes");
    assert!(
        viewer
            .wait_for(WAIT, |s| s
                .data
                .iter()
                .any(|d| d.contains("hello across nodes")))
            .await,
        "a data message crosses to b"
    );
    let message = viewer.with_state(|s| s.data.iter().find(|d| d.contains("across")).cloned());
    let envelope: Value = serde_json::from_str(&message.unwrap_or_default()).unwrap();
    assert_eq!(envelope["from"], publisher_id.as_str(), "with its sender");
    // A publisher joining at b is served there too: its media reaches a's member over the
    // link (and b's viewer directly), byte for byte.
    let publisher_at_b = Bot::spawn(BotConfig::new(&b_rtc, token("show", "pub2"), true, 3));
    assert!(
        publisher
            .wait_for(WAIT, |s| s.packets_from(3, PayloadKind::Vp8) >= 100
                && s.packets_from(3, PayloadKind::Opus) >= 50)
            .await,
        "the member at a gets the publisher at b: {:?}",
        publisher_at_b.state().error()
    );
    assert_eq!(publisher_at_b.state().joined_via, None, "served at b");
    assert_eq!(publisher.state().bad_payloads, 0, "byte for byte");
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(3, PayloadKind::Vp8) >= 100)
            .await
    );
    let pub2_id = publisher_at_b.state().participant.unwrap();
    let viewer_id = viewer.state().participant.unwrap();
    // The room service at b sends calls about the room to its host.
    let path = "/api/rooms/show/participants";
    let auth = format!("Bearer {}", list_token());
    let at_b = http_request(&b_addr, "GET", path, &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(at_b.status, 307, "{}", at_b.body);
    assert!(
        at_b.body.contains(&format!("{a_addr}{path}")),
        "to the same path at a: {}",
        at_b.body
    );
    // Membership is the host's: a lists b's members (connected via relay), its members were
    // told they joined, and a mute at b is seen at a.
    let listed = participants(&a_addr, "show").await;
    assert!(
        listed.contains(&(viewer_id.clone(), "relay".into()))
            && listed.contains(&(pub2_id.clone(), "relay".into()))
            && listed.contains(&(publisher_id.clone(), "websocket".into())),
        "a lists everyone: {listed:?}"
    );
    assert!(publisher.state().saw(
        |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id == pub2_id)
    ));
    publisher_at_b.set_audio_muted(true);
    assert!(
        publisher
            .wait_for(WAIT, |s| s.saw(|m| matches!(
                m,
                ServerMessage::TrackMuted { participant, muted: true, .. } if *participant == pub2_id
            )))
            .await,
        "a mute at b is seen at a"
    );
    // The room service at a mutes b's publisher's video: it stops at b, where its publisher
    // is, for b's viewer too (which receives it without crossing the link).
    let pub2_video = publisher.with_state(|s| {
        s.messages.iter().find_map(|m| match m {
            ServerMessage::TrackPublished { track }
                if track.participant == pub2_id && track.kind == "video" =>
            {
                Some(track.id.clone())
            }
            _ => None,
        })
    });
    let pub2_video = pub2_video.expect("a's member was told of b's publisher's video");
    let grants = Grants {
        room: Some("show".into()),
        room_admin: true,
        ..Grants::default()
    };
    let auth = format!("Bearer {}", admin_token(grants));
    let muted = http_request(
        &a_addr,
        "POST",
        &format!("/api/rooms/show/participants/{pub2_id}/tracks/{pub2_video}/mute"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"muted": true}"#,
    )
    .await
    .unwrap();
    assert_eq!(muted.status, 200, "{}", muted.body);
    let deadline = Instant::now() + WAIT;
    let mut stopped = false;
    let video_from_b = || {
        (
            viewer.state().packets_from(3, PayloadKind::Vp8),
            publisher.state().packets_from(3, PayloadKind::Vp8),
        )
    };
    while Instant::now() < deadline && !stopped {
        let before = video_from_b();
        tokio::time::sleep(Duration::from_millis(700)).await;
        stopped = video_from_b() == before;
    }
    assert!(
        stopped,
        "neither b's viewer nor a's member gets the video muted at a"
    );
    assert!(
        viewer.state().packets_from(3, PayloadKind::Opus) > 0,
        "only the video was muted"
    );
    // b's members leave a's list when they leave b.
    publisher_at_b.leave();
    assert!(
        publisher
            .wait_for(WAIT, |s| s.saw(|m| matches!(
                m,
                ServerMessage::ParticipantLeft { participant } if *participant == pub2_id
            )))
            .await,
        "a's member sees the publisher at b leave"
    );
    assert!(
        !participants(&a_addr, "show")
            .await
            .iter()
            .any(|(id, _)| *id == pub2_id)
    );

    // The viewer leaves: b's edge room ends, and a stops relaying the room.
    viewer.leave();
    let deadline = Instant::now() + WAIT;
    let sent = || counter(&a_addr, "sfu_relay_packets_sent_total");
    let mut stopped = false;
    while Instant::now() < deadline && !stopped {
        let before = sent().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        stopped = sent().await == before;
    }
    assert!(stopped, "a stops relaying once b has no viewer");

    // WHEP and WHIP at b are served there too: a WHEP viewer at b gets a's publisher over the
    // link, and a WHIP publisher at b reaches a's member.
    let received = counter(&b_addr, "sfu_relay_packets_received_total").await;
    // Two of them, sharing one token, as a page embedding a stream does: both stay.
    let wheps: Vec<Bot> = [5, 7]
        .into_iter()
        .map(|tag| {
            let mut whep = BotConfig::new("", viewer_token("show", "whep"), false, tag);
            whep.transport = loadtest::bot::Transport::Whep {
                server: b_addr.clone(),
                room: "show".into(),
                participant: None,
            };
            Bot::spawn(whep)
        })
        .collect();
    for whep in &wheps {
        assert!(
            whep.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 60
                && s.packets_from(1, PayloadKind::Opus) >= 30)
                .await,
            "a WHEP viewer at b gets a's publisher: {:?}",
            whep.state().error()
        );
        assert_eq!(whep.state().bad_payloads, 0);
    }
    assert!(
        counter(&b_addr, "sfu_relay_packets_received_total").await >= received + 60.0,
        "over the link, served at b"
    );
    let mut whip = BotConfig::new("", token("show", "encoder"), true, 6);
    whip.transport = loadtest::bot::Transport::Whip {
        server: b_addr.clone(),
        room: "show".into(),
    };
    let whip = Bot::spawn(whip);
    assert!(
        publisher
            .wait_for(WAIT, |s| s.packets_from(6, PayloadKind::Vp8) >= 60)
            .await,
        "a WHIP publisher at b reaches a's member: {:?}",
        whip.state().error()
    );
    assert!(
        participants(&a_addr, "show")
            .await
            .iter()
            .filter(|(_, via)| via == "relay")
            .count()
            == 3,
        "a lists b's WHEP viewers and WHIP publisher"
    );
    for bot in wheps.iter().chain([&whip]) {
        assert_eq!(bot.state().ended, None, "still in the room");
        bot.leave();
    }
    publisher.leave();
    let _ = a.kill();
    let _ = b.kill();
}

/// A webhook receiver on a free loopback port: its URL, and the events it got.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = events.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let got = got.clone();
            async move {
                let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().unwrap().push(event);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, events)
}

/// A room's participants as its node's room service lists them: id and how connected.
async fn participants(addr: &str, room: &str) -> Vec<(String, String)> {
    let grants = Grants {
        room: Some(room.to_string()),
        room_admin: true,
        ..Grants::default()
    };
    let auth = format!("Bearer {}", admin_token(grants));
    let path = format!("/api/rooms/{room}/participants");
    let response = http_request(addr, "GET", &path, &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body: Value = serde_json::from_str(&response.body).unwrap();
    body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["via"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_limit_holds_across_nodes_and_the_host_removes_a_member_served_elsewhere() {
    let redis = RedisServer::start().await;
    let (hook, events) = webhook_receiver().await;
    let hooks = ["--webhook-url", &hook];
    let [(mut a, a_addr), (mut b, b_addr)] = relay_nodes(&redis, ["a", "b"], &hooks).await;
    let grants = Grants {
        room_create: true,
        ..Grants::default()
    };
    let auth = format!("Bearer {}", admin_token(grants));
    let created = http_request(
        &a_addr,
        "POST",
        "/api/rooms",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"name": "small", "max_participants": 2}"#,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let rtc = |addr: &str| format!("ws://{addr}/rtc");
    let first = Bot::spawn(BotConfig::new(
        &rtc(&a_addr),
        token("small", "one"),
        true,
        1,
    ));
    assert!(first.wait_for(WAIT, |s| s.publish_connected).await);
    let second = Bot::spawn(BotConfig::new(
        &rtc(&b_addr),
        token("small", "two"),
        false,
        2,
    ));
    assert!(
        second.wait_for(WAIT, |s| s.participant.is_some()).await,
        "{:?}",
        second.state().error()
    );
    // The third, at b where the room has one member, is refused: the room has two.
    let third = Bot::spawn(BotConfig::new(
        &rtc(&b_addr),
        token("small", "three"),
        false,
        3,
    ));
    assert!(
        third
            .wait_for(WAIT, |s| s
                .error()
                .is_some_and(|(code, _)| code == ErrorCode::RoomFull))
            .await,
        "the room's limit holds across nodes: {:?}",
        third.state().error()
    );
    // The same identity joining at b replaces its session at a (one session per identity).
    let again = Bot::spawn(BotConfig::new(
        &rtc(&b_addr),
        token("small", "one"),
        false,
        4,
    ));
    assert!(
        again.wait_for(WAIT, |s| s.participant.is_some()).await,
        "{:?}",
        again.state().error()
    );
    assert!(
        first
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await,
        "the older session of the identity is replaced: {:?}",
        first.state().ended
    );
    // The room service at a removes the member served at b.
    let second_id = second.state().participant.unwrap();
    let admin = Grants {
        room: Some("small".into()),
        room_admin: true,
        ..Grants::default()
    };
    let auth = format!("Bearer {}", admin_token(admin));
    let removed = http_request(
        &a_addr,
        "DELETE",
        &format!("/api/rooms/small/participants/{second_id}"),
        &[("Authorization", &auth)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert!(
        second
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await,
        "the member at b is disconnected"
    );
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline
        && participants(&a_addr, "small")
            .await
            .iter()
            .any(|(id, _)| *id == second_id)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !participants(&a_addr, "small")
            .await
            .iter()
            .any(|(id, _)| *id == second_id)
    );
    // Webhooks are sent once per event, by the host, whichever node serves the participant.
    let count = |event: &str, participant: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e["event"] == event
                    && e["room"] == "small"
                    && (participant.is_empty() || e["participant"]["id"] == participant)
            })
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && count("participant_left", &second_id) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count("participant_joined", &second_id),
        1,
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(count("participant_left", &second_id), 1);
    assert_eq!(count("room_started", ""), 1);
    // The room service at a deletes the room: the member served at b is disconnected and the
    // room ends at a (its members at other nodes leave it at once).
    let grants = Grants {
        room_create: true,
        ..Grants::default()
    };
    let auth = format!("Bearer {}", admin_token(grants));
    let deleted = http_request(
        &a_addr,
        "DELETE",
        "/api/rooms/small",
        &[("Authorization", &auth)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(
        again
            .wait_for(WAIT, |s| s.saw(|m| matches!(m, ServerMessage::Left { .. })))
            .await,
        "the member at b is told the room ended"
    );
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && count("room_finished", "") == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count("room_finished", ""),
        1,
        "the deleted room ends at its host"
    );
    for bot in [&first, &second, &third, &again] {
        bot.leave();
    }
    let _ = a.kill();
    let _ = b.kill();
}

/// The video track a viewer was told of (in `joined` or `track_published`).
fn video_track_seen(state: &loadtest::bot::BotState) -> Option<String> {
    state.messages.iter().find_map(|m| match m {
        ServerMessage::Joined { tracks, .. } => tracks
            .iter()
            .find(|t| t.kind == "video")
            .map(|t| t.id.clone()),
        ServerMessage::TrackPublished { track } if track.kind == "video" => Some(track.id.clone()),
        _ => None,
    })
}

/// What `addr` relays to `node` now: per track kind, the layers crossing.
async fn relayed_to(addr: &str, node: &str) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<(String, Vec<u64>)> = nodes(addr).await["relayed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == node && r["direction"] == "out")
        .flat_map(|r| r["tracks"].as_array().unwrap().clone())
        .map(|t| {
            let layers = t["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap())
                .collect();
            (t["kind"].as_str().unwrap().to_string(), layers)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_a_track_crosses_once_per_node_and_layer_and_viewers_move_when_a_node_dies() {
    let redis = RedisServer::start().await;
    // Layers follow the viewers' requests only (bots on loopback read jitter as congestion).
    let args = ["--congestion-control", "false"];
    let [(mut a, a_addr), (mut b, b_addr), (mut c, c_addr)] =
        relay_nodes(&redis, ["a", "b", "c"], &args).await;
    let rtc = |addr: &str| format!("ws://{addr}/rtc");

    let mut publisher = BotConfig::new(&rtc(&a_addr), token("show", "pub"), true, 1);
    publisher.simulcast = true;
    publisher.packets_per_frame = 4;
    let publisher = Bot::spawn(publisher);
    assert!(publisher.wait_for(WAIT, |s| s.participant.is_some()).await);
    let viewers: Vec<Bot> = [(&b_addr, 2), (&b_addr, 3), (&c_addr, 4)]
        .into_iter()
        .map(|(addr, tag)| {
            Bot::spawn(BotConfig::new(
                &rtc(addr),
                viewer_token("show", &format!("viewer-{tag}")),
                false,
                tag,
            ))
        })
        .collect();
    for v in &viewers {
        assert!(
            v.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 100
                && s.packets_from(1, PayloadKind::Opus) >= 50)
                .await,
            "every viewer gets the publisher's media: {:?}",
            v.state().error()
        );
        assert_eq!(v.state().bad_payloads, 0, "byte for byte");
        assert_eq!(v.state().joined_via, None, "served where it connected");
    }
    // The viewer at c asks for the lowest layer: only that layer crosses to c. b's two viewers
    // (auto: the top layer) take one stream of it, not one each, and the lowest layer, which
    // dynacast never pauses (cheap, and what a new viewer starts on, as at a publisher).
    let track = video_track_seen(&viewers[2].state()).expect("the viewer at c knows the video");
    let low = serde_json::json!({"type": "set_quality", "track": track, "quality": "low"});
    viewers[2].signal(serde_json::from_value(low).unwrap());
    let want_c = vec![
        ("audio".to_string(), vec![0]),
        ("video".to_string(), vec![0]),
    ];
    let want_b = vec![
        ("audio".to_string(), vec![0]),
        ("video".to_string(), vec![0, 2]),
    ];
    let deadline = Instant::now() + 2 * WAIT;
    while Instant::now() < deadline
        && !(relayed_to(&a_addr, "c").await == want_c && relayed_to(&a_addr, "b").await == want_b)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        relayed_to(&a_addr, "c").await,
        want_c,
        "only the low layer crosses to c"
    );
    assert_eq!(
        relayed_to(&a_addr, "b").await,
        want_b,
        "one stream to b for its two viewers"
    );
    let before = viewers[2].state().packets_from(1, PayloadKind::Vp8);
    assert!(
        viewers[2]
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= before + 50)
            .await,
        "the viewer at c keeps playing on the low layer"
    );

    // A publisher at c reaches b's viewers through the host, and the host's member.
    let mut far = BotConfig::new(&rtc(&c_addr), token("show", "far"), true, 6);
    far.packets_per_frame = 4;
    let far = Bot::spawn(far);
    for bot in [&viewers[0], &publisher] {
        assert!(
            bot.wait_for(WAIT, |s| s.packets_from(6, PayloadKind::Vp8) >= 50
                && s.packets_from(6, PayloadKind::Opus) >= 25)
                .await,
            "the publisher at c is seen at b and a: {:?}",
            far.state().error()
        );
        assert_eq!(bot.state().bad_payloads, 0, "byte for byte");
    }
    assert_eq!(far.state().joined_via, None, "served at c");
    far.leave();

    // b dies: a viewer that was there, joining again at c (as clients do from the
    // alternates they were given), plays within 5 s.
    kill(&mut b, "-KILL");
    let _ = b.wait();
    let killed = Instant::now();
    let moved = viewer_bot(&rtc(&c_addr), "show", "viewer-2", 5);
    assert!(
        moved
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "the viewer moved to c plays: {:?}",
        moved.state().error()
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "back within 5 s: {took:?}");
    assert_eq!(moved.state().bad_payloads, 0);
    for v in viewers.iter().chain([&moved, &publisher]) {
        v.leave();
    }
    let _ = a.kill();
    let _ = c.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_rooms_host_dies_its_members_at_other_nodes_carry_on_with_a_new_host() {
    let redis = RedisServer::start().await;
    let [(mut a, a_addr), (mut b, b_addr), (mut c, c_addr)] =
        relay_nodes(&redis, ["a", "b", "c"], &[]).await;
    let rtc = |addr: &str| format!("ws://{addr}/rtc");
    // Hosted by a (its first member); a viewer at b, a publisher at c.
    let first = Bot::spawn(BotConfig::new(
        &rtc(&a_addr),
        token("show", "first"),
        true,
        1,
    ));
    assert!(first.wait_for(WAIT, |s| s.participant.is_some()).await);
    let viewer = viewer_bot(&rtc(&b_addr), "show", "viewer", 2);
    let far = Bot::spawn(BotConfig::new(&rtc(&c_addr), token("show", "far"), true, 3));
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(3, PayloadKind::Vp8) >= 50
                && s.packets_from(1, PayloadKind::Vp8) >= 50)
            .await,
        "the viewer at b gets both publishers: {:?}",
        viewer.state().error()
    );

    // a dies: b and c agree on a new host through the directory, and the publisher at c
    // reaches the viewer at b again, neither of them joining again.
    kill(&mut a, "-KILL");
    let _ = a.wait();
    let killed = Instant::now();
    // Counted once b knows a is gone: packets still on their way through a do not count.
    let deadline = Instant::now() + 2 * WAIT;
    while Instant::now() < deadline
        && nodes(&b_addr).await["linked"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == "a"))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = viewer.state().packets_from(3, PayloadKind::Vp8);
    assert!(
        viewer
            .wait_for(2 * WAIT, |s| s.packets_from(3, PayloadKind::Vp8)
                >= before + 10)
            .await,
        "the viewer at b gets the publisher at c again: {:?}",
        viewer.state().error()
    );
    let took = killed.elapsed();
    eprintln!("media from c reached b again {took:?} after the host died (node TTL 3 s)");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(viewer.state().bad_payloads, 0);
    assert!(
        !viewer
            .state()
            .saw(|m| matches!(m, ServerMessage::Left { .. })),
        "the viewer stayed in the call"
    );
    // The first publisher, joining again at b (as its client would from its alternates), is
    // seen at c.
    let back = Bot::spawn(BotConfig::new(
        &rtc(&b_addr),
        token("show", "first"),
        true,
        4,
    ));
    assert!(
        far.wait_for(WAIT, |s| s.packets_from(4, PayloadKind::Vp8) >= 30)
            .await,
        "the returning publisher at b reaches c: {:?}",
        back.state().error()
    );
    for bot in [&first, &viewer, &far, &back] {
        bot.leave();
    }
    let _ = b.kill();
    let _ = c.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_nodes_carry_on_while_redis_is_away_and_new_ones_start_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let [(mut a, a_addr), (mut b, b_addr)] = relay_nodes(&redis, ["a", "b"], &[]).await;
    let rtc = |addr: &str| format!("ws://{addr}/rtc");
    let publisher = Bot::spawn(BotConfig::new(&rtc(&a_addr), token("call", "pub"), true, 1));
    assert!(publisher.wait_for(WAIT, |s| s.participant.is_some()).await);
    let viewer = viewer_bot(&rtc(&b_addr), "call", "viewer", 2);
    assert!(
        viewer
            .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "{:?}",
        viewer.state().error()
    );

    // Redis away for 10 s: the call across the nodes carries on, and the room open at b
    // takes a new member (its host admits it over the link); a room nobody hosts cannot start.
    redis.kill();
    let stopped = Instant::now();
    for addr in [&a_addr, &b_addr] {
        assert!(gauge_becomes(addr, "sfu_cluster_redis_up", 0.0).await);
    }
    let late = viewer_bot(&rtc(&b_addr), "call", "late", 3);
    assert!(
        late.wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= 30)
            .await,
        "a new member at b while Redis is away: {:?}",
        late.state().error()
    );
    let stranger = viewer_bot(&rtc(&b_addr), "elsewhere", "x", 4);
    assert!(stranger.wait_for(WAIT, |s| s.error().is_some()).await);
    assert_eq!(
        stranger.state().error().unwrap().0,
        ErrorCode::ClusterUnavailable
    );
    while stopped.elapsed() < Duration::from_secs(10) {
        let before = viewer.state().packets_from(1, PayloadKind::Vp8);
        assert!(
            viewer
                .wait_for(WAIT, |s| s.packets_from(1, PayloadKind::Vp8) >= before + 15)
                .await,
            "the call across the nodes carries on without Redis ({:?} in)",
            stopped.elapsed()
        );
    }

    // Redis back (empty): the nodes announce themselves again and a new room's viewer at b is
    // served there with its host's media.
    redis.restart().await;
    for addr in [&a_addr, &b_addr] {
        assert!(gauge_becomes(addr, "sfu_cluster_redis_up", 1.0).await);
    }
    assert!(lists_within(&b_addr, &["a", "b"], WAIT).await.is_some());
    let second = Bot::spawn(BotConfig::new(
        &rtc(&a_addr),
        token("after", "pub2"),
        true,
        5,
    ));
    assert!(second.wait_for(WAIT, |s| s.participant.is_some()).await);
    let new_viewer = viewer_bot(&rtc(&b_addr), "after", "viewer2", 6);
    assert!(
        new_viewer
            .wait_for(WAIT, |s| s.packets_from(5, PayloadKind::Vp8) >= 30)
            .await,
        "a cross-node join once Redis is back: {:?}",
        new_viewer.state().error()
    );
    assert_eq!(new_viewer.state().joined_via, None, "served at b");
    assert_eq!(new_viewer.state().bad_payloads, 0);
    // Its only viewer at b leaves and another comes at once (a page reloaded): the room b
    // opens again is relayed afresh.
    new_viewer.leave();
    let reloaded = viewer_bot(&rtc(&b_addr), "after", "viewer2", 7);
    assert!(
        reloaded
            .wait_for(WAIT, |s| s.packets_from(5, PayloadKind::Vp8) >= 30)
            .await,
        "a viewer rejoining at once gets the media again: {:?}",
        reloaded.state().error()
    );
    reloaded.leave();
    for bot in [&publisher, &viewer, &late, &stranger, &second, &new_viewer] {
        bot.leave();
    }
    let _ = a.kill();
    let _ = b.kill();
}
