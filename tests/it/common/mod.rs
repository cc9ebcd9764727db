//! Shared integration-test harness for `batchgate`.
//!
//! This module owns everything the integration tests need besides the
//! binary under test itself:
//!
//! * [`upstream`] — an instrumented HTTP/1.1 test upstream (request log,
//!   concurrency peak, connection count, scripted replies with delays,
//!   hangs and connection closes);
//! * [`client`] — a tiny raw HTTP/1.1 client giving tests exact control over
//!   the bytes sent to the gate, including keep-alive connections;
//! * [`gate`] — starting the real `batchgate` binary from a config text in a
//!   fresh temp dir, and running `batchgate check`;
//! * [`config`] — a small builder for the config texts the tests start the gate with;
//! * [`batch`] — building envelope batch bodies and reading envelope replies;
//! * [`scripted`] — an upstream that plays scripted bytes and pauses (fault injection);
//! * [`tls`] — a test CA and certificates (rcgen) and a TLS front for test upstreams;
//! * [`prom`] — parsing `/metrics` (Prometheus text format), finding the Prometheus tools,
//!   reading the Grafana dashboard.
//!
//! * [`redis`] — a real `redis-server` on a free port, killed and restarted at will;
//! * [`eventually`] — waiting on real state (an upstream counter, a scraped gauge, a port
//!   that accepts) instead of sleeping for a guessed time.
//!
//! Not every test module uses all of it, hence `dead_code` is allowed.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// Whether every external tool a test needs must be there (a CI run: `CI=true`, or
/// `.ci/run`'s `BATCHGATE_CI_TOOLS`): a missing one then fails its test instead of skipping it.
pub fn tools_required() -> bool {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    set("CI") || set("BATCHGATE_CI_TOOLS")
}

/// The one rule for something a test needs from outside (a tool, a venv, installed packages)
/// that is not there: under CI a panic saying how to install it; elsewhere a `SKIP` line on
/// stderr, and `None` for the test to return on.
pub fn missing<T>(what: &str, install: &str) -> Option<T> {
    if tools_required() {
        panic!("{what} is missing: {install} (.ci/run does)");
    }
    eprintln!("SKIP: {what} is missing; {install} to run this test");
    None
}

/// How often `eventually` looks again.
const EVENTUALLY_EVERY: Duration = Duration::from_millis(20);

/// Waits until `ready()` holds, looking every 20 ms; panics with `what` (and the time it
/// waited) if it does not within `within`. For state that changes in another process or task.
pub async fn eventually(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(EVENTUALLY_EVERY).await;
    }
}

/// `eventually` for a check that is itself asynchronous (a connect, a scrape).
pub async fn eventually_async<F: Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut ready: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(EVENTUALLY_EVERY).await;
    }
}

pub mod batch;
pub mod client;
pub mod config;
pub mod gate;
pub mod h2c;
pub mod prom;
pub mod redis;
pub mod scripted;
pub mod tls;
pub mod upstream;
