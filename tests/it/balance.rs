//! Choosing among an upstream's addresses (issue 15, first slice): round robin by default,
//! `balance = "least_outstanding"` to send items where fewer are in flight, so a slow
//! address gets fewer of a batch's items while it is slow.

use crate::common;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::net::SocketAddr;

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
        stderr.contains(r#"upstreams.api.balance: "random" is not a balance ("round_robin", "least_outstanding" or "hash")"#),
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

/// The upstream with `addresses` (and `extra` keys after them); route `concurrency = 1`.
fn upstream_config(addresses: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    GateConfig::new(addresses[0])
        .route("concurrency = 1")
        .toml()
        .replace(
            &format!("addresses = [\"{}\"]\n", addresses[0]),
            &format!("addresses = [{}]\n", list.join(", ")),
        )
        .replace(
            "connect_timeout = \"1s\"\n",
            &format!("connect_timeout = \"1s\"\n{extra}"),
        )
}

/// `weights`: round robin in proportion, interleaved (nginx's smooth weighted round robin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_items_in_proportion() {
    let heavy = Upstream::echo().await;
    let light = Upstream::echo().await;
    let gate = gate::start(&upstream_config(
        &[heavy.addr, light.addr],
        "weights = [3, 1]\n",
    ))
    .await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(20))).await;
    assert!(responses(&reply).iter().all(|r| r["status"] == 200));
    assert_eq!((heavy.count(), light.count()), (15, 5));
}

/// `balance = "hash"` on a header: every item of one shard key reaches one address, keys
/// spread over the addresses, and when that address fails its checks the key moves, as a
/// whole, to the next address of the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_on_a_header_keeps_a_key_on_one_address() {
    use common::batch::item_with_headers;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(true))).collect();
    let mut upstreams = Vec::new();
    for up in &flags {
        let up = up.clone();
        upstreams.push(
            Upstream::with_handler(move |req| {
                if req.path == "/healthz" && !up.load(Ordering::Relaxed) {
                    Reply::json(503, "{}")
                } else {
                    Reply::json(200, "{}")
                }
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let gate = gate::start(&upstream_config(
        &addrs,
        "balance = \"hash\"\nhash_on = \"header:X-Shard\"\n[upstreams.api.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1\n",
    ))
    .await;
    let shard_items = |shard: &str| -> Vec<Value> {
        (0..6)
            .map(|i| {
                item_with_headers(
                    &format!("{i}"),
                    "GET",
                    "/file/get",
                    serde_json::json!({ "X-Shard": shard }),
                )
            })
            .collect()
    };
    let counts = |ups: &[Upstream]| -> Vec<usize> {
        ups.iter()
            .map(|u| u.requests().iter().filter(|r| r.path != "/healthz").count())
            .collect()
    };
    let mut homes = std::collections::BTreeSet::new();
    for shard in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"] {
        for u in &upstreams {
            u.reset();
        }
        let reply = client::post_json(gate.addr, BATCH_PATH, &batch(shard_items(shard))).await;
        assert!(responses(&reply).iter().all(|r| r["status"] == 200));
        let got = counts(&upstreams);
        let home = got.iter().position(|n| *n == 6);
        assert!(home.is_some(), "shard {shard} split: {got:?}");
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "six keys on one address: {homes:?}");

    // The home of "alpha" fails its checks: alpha moves, as a whole, to one other address.
    let (ups, gate_addr) = (&upstreams, gate.addr);
    let send = move |shard: &'static str| async move {
        for u in ups {
            u.reset();
        }
        let reply = client::post_json(gate_addr, BATCH_PATH, &batch(shard_items(shard))).await;
        assert!(responses(&reply).iter().all(|r| r["status"] == 200));
        counts(ups)
    };
    let before = send("alpha").await;
    let home = before.iter().position(|n| *n == 6).expect("alpha's home");
    flags[home].store(false, Ordering::Relaxed);
    let admin = gate.admin;
    let home_address = addrs[home].to_string();
    let within = std::time::Duration::from_secs(5);
    common::eventually_async(within, "the home out of the choice", || async {
        common::prom::scrape(admin).await.sum(
            "batchgate_upstream_address_up",
            &[("address", home_address.as_str())],
        ) == 0.0
    })
    .await;
    let after = send("alpha").await;
    assert_eq!(after[home], 0, "{after:?}");
    assert!(after.contains(&6), "alpha split after the move: {after:?}");
}

/// Hashing on the path: the same resource goes to the same address, for items and
/// pass-through alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_on_the_path_sends_a_resource_to_one_address() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let gate = gate::start(&upstream_config(&[a.addr, b.addr], "balance = \"hash\"\n")).await;
    let same: Vec<Value> = (0..8)
        .map(|i| item(&format!("{i}"), "GET", "/file/get?id=42"))
        .collect();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(same)).await;
    assert!(responses(&reply).iter().all(|r| r["status"] == 200));
    assert!(
        (a.count(), b.count()) == (8, 0) || (a.count(), b.count()) == (0, 8),
        "{} / {}",
        a.count(),
        b.count()
    );
    a.reset();
    b.reset();
    for _ in 0..4 {
        assert_eq!(
            client::get(gate.addr, "/v2/file/get?id=42").await.status,
            200
        );
    }
    assert!(
        a.count() == 4 || b.count() == 4,
        "{} / {}",
        a.count(),
        b.count()
    );
}

#[test]
fn weights_and_hash_keys_are_checked() {
    let addrs: Vec<SocketAddr> = ["127.0.0.1:9", "127.0.0.1:10"]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
    let text = upstream_config(&addrs, "weights = [1, 0, 2]\nhash_on = \"cookie\"\n");
    let out = gate::check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        "upstreams.api.weights: 3 weights for 2 addresses: give one per address",
        "upstreams.api.weights[1]: 0 is not allowed (1..=100)",
        "upstreams.api.hash_on: only with balance = \"hash\"",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    let text = upstream_config(&addrs, "balance = \"hash\"\nhash_on = \"cookie\"\n");
    let stderr = String::from_utf8_lossy(&gate::check(&text).stderr).to_string();
    assert!(
        stderr.contains(
            r#"upstreams.api.hash_on: "cookie" is not a hash key ("path" or "header:NAME")"#
        ),
        "{stderr}"
    );
}

/// Three addresses, one of which accepts every request and then closes the connection
/// without an answer (or, second run, never answers): with `eject_after = 2` it fails two
/// items, is ejected like an address nobody listens on, and the rest go to the others. Before,
/// only connect and TLS failures counted: a resetting or silent address kept its share of
/// items for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_or_silent_address_is_ejected() {
    for (bad_reply, failure) in [(Reply::abort(), 502), (Reply::hang(), 504)] {
        let good_a = Upstream::echo().await;
        let good_b = Upstream::echo().await;
        let bad = Upstream::with_handler(move |_| bad_reply.clone()).await;
        let text = upstream_config(
            &[good_a.addr, good_b.addr, bad.addr],
            "eject_after = 2\neject_for = \"30s\"\n",
        )
        .replace(
            "concurrency = 1",
            "concurrency = 1\nitem_timeout = \"300ms\"",
        );
        let gate = gate::start(&text).await;
        let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(30))).await;
        assert_eq!(reply.status, 200, "{}", reply.body_str());
        let failed: Vec<_> = responses(&reply)
            .iter()
            .filter(|r| r["status"] != 200)
            .map(|r| r["status"].clone())
            .collect();
        assert_eq!(
            failed,
            vec![Value::from(failure); 2],
            "{}",
            reply.body_str()
        );
        assert_eq!(bad.count(), 2, "the bad address saw two items");
        let again = client::post_json(gate.addr, BATCH_PATH, &batch(items(30))).await;
        assert!(responses(&again).iter().all(|r| r["status"] == 200));
        let metrics = common::prom::scrape(gate.admin).await;
        let ejected = metrics.sum(
            "batchgate_upstream_ejections_total",
            &[("address", bad.addr.to_string().as_str())],
        );
        assert_eq!(ejected, 1.0, "{}", metrics.text);
    }
}

/// Pass-through counts the same failures against an address as items do: a default-upstream
/// address that accepts and then closes without answering fails two requests and is ejected;
/// the rest go to the good address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_address_is_ejected_from_pass_through() {
    let good = Upstream::echo().await;
    let bad = Upstream::with_handler(|_| Reply::abort()).await;
    let gate = gate::start(&upstream_config(
        &[good.addr, bad.addr],
        "eject_after = 2\neject_for = \"30s\"\n",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(client::get(gate.addr, "/v2/things").await.status);
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 2, "{statuses:?}");
    assert_eq!(bad.count(), 2);
    let metrics = common::prom::scrape(gate.admin).await;
    let ejected = metrics.sum(
        "batchgate_upstream_ejections_total",
        &[("address", bad.addr.to_string().as_str())],
    );
    assert_eq!(ejected, 1.0, "{}", metrics.text);
}
