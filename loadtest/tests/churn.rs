//! The short soak: the real server process under half a minute of churn (bots joining,
//! leaving, vanishing without a word, dropping their socket and resuming, muting, restarting
//! ICE, changing quality). Nothing panics, no bot meets an error it did not cause, and once
//! the bots are gone the server holds no peer, no participant and no extra descriptor. (The
//! resume grace is 5 s: longer than a churning bot stays away, short enough to settle fast.)
//! (The hour-long soak, with its memory plot, is in BENCHMARKS.md.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::start_server_process;
use control_api::auth::{DEV_API_KEY, DEV_API_SECRET};
use loadtest::swarm::churn::{ChurnPlan, churn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_minute_of_churn_leaves_nothing_behind() {
    let (mut child, server) = start_server_process(&["--workers", "2", "--resume-grace", "5"]);

    let plan = ChurnPlan {
        server,
        rooms: 2,
        bots: 10,
        duration: Duration::from_secs(30),
        actions_per_second: 4.0,
        sample_every: Duration::from_secs(3),
        seed: 7,
        keys: (DEV_API_KEY.into(), DEV_API_SECRET.into()),
        settle: Duration::from_secs(20),
    };
    let report = churn(&plan, |_| {}).await;
    let _ = child.kill();
    let _ = child.wait();
    println!("{}", report.render());
    for action in ["join", "leave", "vanish", "drop and resume", "restart ICE"] {
        assert!(
            report.actions.get(action).is_some_and(|n| *n > 0),
            "the churn took every kind of action: {:?}",
            report.actions
        );
    }
    // Half a minute is mostly warm-up: memory is the hour-long soak's job.
    let failures = report.failures(1000.0);
    assert!(failures.is_empty(), "{failures:?}\n{}", report.render());
}
