//! Choosing among an upstream's addresses (issue 15, first slice): round robin by default,
//! `balance = "least_outstanding"` to send items where fewer are in flight, so a slow
//! address gets fewer of a batch's items while it is slow.

mod common;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use serde_json::Value;

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| item(&format!("{i}"), "GET", &format!("/file/get?i={i}")))
        .collect()
}

/// A fast and a slow address behind one upstream; returns (fast count, slow count) after
/// one 20-item batch with 4 items in flight at once.
async fn split(balance: Option<&str>) -> (usize, usize) {
    let fast = Upstream::echo().await;
    let slow = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(300)).await;
    let mut text = GateConfig::new(fast.addr)
        .route("concurrency = 4")
        .toml()
        .replace(
            &format!("addresses = [\"{}\"]\n", fast.addr),
            &format!("addresses = [\"{}\", \"{}\"]\n", fast.addr, slow.addr),
        );
    if let Some(balance) = balance {
        text = text.replace(
            "connect_timeout = \"1s\"\n",
            &format!("connect_timeout = \"1s\"\nbalance = \"{balance}\"\n"),
        );
    }
    let gate = gate::start(&text).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(20))).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert!(responses(&reply).iter().all(|r| r["status"] == 200));
    (fast.count(), slow.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_items_evenly() {
    assert_eq!(split(None).await, (10, 10));
}

/// While the slow address holds an item, the others go to the fast one: the slow address
/// gets about one item per 300 ms of the batch, not every other item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_fewer_items_to_a_slow_address() {
    let (fast, slow) = split(Some("least_outstanding")).await;
    assert_eq!(fast + slow, 20);
    assert!(slow <= 3, "the slow address got {slow} of 20");
}

#[test]
fn an_unknown_balance_is_a_config_error() {
    let text = GateConfig::new("127.0.0.1:9".parse().expect("addr"))
        .toml()
        .replace(
            "connect_timeout = \"1s\"\n",
            "connect_timeout = \"1s\"\nbalance = \"random\"\n",
        );
    let out = gate::check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(r#"upstreams.api.balance: "random" is not a balance ("round_robin" or "least_outstanding")"#),
        "{stderr}"
    );
}

/// Passive ejection: with `eject_after = 2` an address nobody listens on fails two items in a
/// row, is left out, and the rest of the batch goes to the live address; counted by address.
/// Without it every other item fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_is_ejected_after_consecutive_connect_failures() {
    let live = Upstream::echo().await;
    let dead = format!("127.0.0.1:{}", common::upstream::free_port());
    let config = |eject: &str| {
        GateConfig::new(live.addr)
            .route("concurrency = 1")
            .toml()
            .replace(
                &format!("addresses = [\"{}\"]\n", live.addr),
                &format!("addresses = [\"{}\", \"{dead}\"]\n{eject}", live.addr),
            )
    };
    let failed = |reply: &client::Response| {
        responses(reply)
            .iter()
            .filter(|r| r["status"] != 200)
            .count()
    };
    let without = gate::start(&config("")).await;
    let reply = client::post_json(without.addr, BATCH_PATH, &batch(items(20))).await;
    assert_eq!(
        failed(&reply),
        10,
        "round robin without ejection: every other item fails"
    );
    drop(without);

    let gate = gate::start(&config("eject_after = 2\neject_for = \"30s\"\n")).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(20))).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert_eq!(
        failed(&reply),
        2,
        "two failures eject: {}",
        reply.body_str()
    );
    let again = client::post_json(gate.addr, BATCH_PATH, &batch(items(20))).await;
    assert_eq!(
        failed(&again),
        0,
        "the next batch avoids the ejected address"
    );
    let metrics = common::prom::scrape(gate.admin).await;
    let ejected = metrics.sum(
        "batchgate_upstream_ejections_total",
        &[("upstream", "api"), ("address", dead.as_str())],
    );
    assert_eq!(ejected, 1.0, "{}", metrics.text);
}
