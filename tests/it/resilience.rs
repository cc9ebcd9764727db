//! Upstream resilience (issue 15) against several real upstream servers on loopback: retries
//! per item (which failures, which methods, `Retry-After`, the budget, the deadline), hedging,
//! and active health checks with `/readyz`.

use crate::common;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::prom::scrape;
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn items(n: usize, method: &str) -> Vec<Value> {
    (0..n)
        .map(|i| item(&format!("{i}"), method, &format!("/file/get?i={i}")))
        .collect()
}

/// The test config with `addresses` as the upstream's and `upstream_extra` after its keys
/// (use `[upstreams.api.retry]` tables there); `route` lines go in the route.
fn config(addresses: &[String], upstream_extra: &str, route: &[&str]) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let mut gate = GateConfig::new("127.0.0.1:9".parse().expect("addr"));
    for line in route {
        gate = gate.route(line);
    }
    // The route comes last in the file: the upstream's sub-tables go before it.
    gate.toml()
        .replace(
            "addresses = [\"127.0.0.1:9\"]\n",
            &format!("addresses = [{}]\n", list.join(", ")),
        )
        .replace(
            "\n[[routes]]\n",
            &format!("{upstream_extra}\n\n[[routes]]\n"),
        )
}

fn dead_address() -> String {
    format!("127.0.0.1:{}", common::upstream::free_port())
}

fn statuses(reply: &client::Response) -> Vec<i64> {
    responses(reply)
        .iter()
        .map(|r| r["status"].as_i64().unwrap_or(0))
        .collect()
}

/// One of three addresses dead: with retries on every item is answered (a connection that
/// could not be made is retried for any method, POST included: nothing was sent), the dead
/// address is ejected, and the retries are counted by reason and result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_costs_no_item_when_retries_are_on() {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let dead = dead_address();
    let text = config(
        &[a.addr.to_string(), dead.clone(), b.addr.to_string()],
        "eject_after = 3\n[upstreams.api.retry]\nattempts = 3\nbackoff = \"1ms\"",
        &["concurrency = 4"],
    );
    let gate = gate::start(&text).await;
    let mut all = items(30, "GET");
    all.extend((30..36).map(|i| item(&format!("{i}"), "POST", "/file/create")));
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(all)).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert!(
        statuses(&reply).iter().all(|s| *s == 200),
        "{}",
        reply.body_str()
    );
    assert_eq!(a.count() + b.count(), 36, "each item answered once");
    let m = scrape(gate.admin).await;
    let retried = m.sum(
        "batchgate_upstream_retries_total",
        &[
            ("upstream", "api"),
            ("reason", "connect"),
            ("result", "success"),
        ],
    );
    // Up to `concurrency` items may have chosen the dead address before the third failure
    // ejected it.
    assert!((1.0..=4.0).contains(&retried), "{retried}: {}", m.text);
    let ejected = m.sum(
        "batchgate_upstream_ejections_total",
        &[("address", dead.as_str())],
    );
    assert_eq!(ejected, 1.0, "{}", m.text);
    assert_eq!(
        m.value(
            "batchgate_upstream_address_up",
            &[("upstream", "api"), ("address", dead.as_str())]
        ),
        0.0
    );
}

/// An address answering 503 with `Retry-After: 1`: an idempotent item is retried on the
/// other address after the asked second, never sooner; a POST is not retried (it may have
/// been acted on) and reaches the 503 address exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_retried_elsewhere_after_the_wait_but_a_post_is_not() {
    let busy = Upstream::with_handler(|_| {
        Reply::json(503, "{\"busy\":true}").with_header("Retry-After", "1")
    })
    .await;
    let good = Upstream::echo().await;
    let text = config(
        &[busy.addr.to_string(), good.addr.to_string()],
        "[upstreams.api.retry]\nmax_retry_after = \"2s\"",
        &["concurrency = 2"],
    );
    let gate = gate::start(&text).await;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(2, "GET"))).await;
    let took = started.elapsed();
    assert_eq!(statuses(&reply), vec![200, 200], "{}", reply.body_str());
    assert!(
        took >= Duration::from_millis(950),
        "Retry-After honoured: {took:?}"
    );
    assert_eq!(
        busy.count(),
        1,
        "one of two items went to the busy address first"
    );
    assert_eq!(good.count(), 2, "and its retry to the other address");

    busy.reset();
    good.reset();
    let posts: Vec<Value> = (0..2)
        .map(|i| item(&format!("{i}"), "POST", "/file/create"))
        .collect();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(posts)).await;
    let mut got = statuses(&reply);
    got.sort_unstable();
    assert_eq!(got, vec![200, 503], "{}", reply.body_str());
    assert_eq!(busy.count(), 1, "the POST reached the busy address once");
    assert_eq!(good.count(), 1, "and was not sent again");
    let refused = responses(&reply)
        .into_iter()
        .find(|r| r["status"] == 503)
        .expect("the 503");
    assert_eq!(
        refused["headers"]["retry-after"], "1",
        "the client sees the upstream's Retry-After: {refused}"
    );
}

/// A route that declares its POSTs safe to repeat (a read-only JSON-RPC API would) gets them
/// retried; a `Retry-After` beyond `max_retry_after` ends the retries with the answer as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_methods_opt_posts_in_and_a_long_retry_after_is_not_waited_for() {
    let slow_down = Arc::new(AtomicBool::new(false));
    let flag = slow_down.clone();
    let busy = Upstream::with_handler(move |_| {
        let after = if flag.load(Ordering::Relaxed) {
            "30"
        } else {
            "0"
        };
        Reply::json(503, "{}").with_header("Retry-After", after)
    })
    .await;
    let good = Upstream::echo().await;
    let text = config(
        &[busy.addr.to_string(), good.addr.to_string()],
        "[upstreams.api.retry]\nattempts = 2",
        &["concurrency = 1", "idempotent_methods = [\"POST\"]"],
    );
    let gate = gate::start(&text).await;
    let posts: Vec<Value> = (0..4)
        .map(|i| item(&format!("{i}"), "POST", "/file/create"))
        .collect();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(posts.clone())).await;
    assert!(
        statuses(&reply).iter().all(|s| *s == 200),
        "{}",
        reply.body_str()
    );
    slow_down.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(posts)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(statuses(&reply).contains(&503), "{}", reply.body_str());
    let m = scrape(gate.admin).await;
    assert!(
        m.value(
            "batchgate_upstream_retries_skipped_total",
            &[("upstream", "api"), ("reason", "retry_after")]
        ) >= 1.0,
        "{}",
        m.text
    );
}

/// A connection reset after the request was written: a GET is retried, a POST is not sent
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_only_for_methods_that_may_be_repeated() {
    let resets = Upstream::with_handler(|_| Reply::abort()).await;
    let good = Upstream::echo().await;
    let text = config(
        &[resets.addr.to_string(), good.addr.to_string()],
        "[upstreams.api.retry]\nbackoff = \"1ms\"",
        &["concurrency = 1"],
    );
    let gate = gate::start(&text).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(4, "GET"))).await;
    assert!(
        statuses(&reply).iter().all(|s| *s == 200),
        "{}",
        reply.body_str()
    );
    let got_gets = resets.count();
    let posts: Vec<Value> = (0..4)
        .map(|i| item(&format!("{i}"), "POST", "/file/create"))
        .collect();
    good.reset();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(posts)).await;
    let failed = statuses(&reply).iter().filter(|s| **s != 200).count();
    let reset_posts = resets.count() - got_gets;
    assert_eq!(failed, reset_posts, "{}", reply.body_str());
    assert_eq!(good.count() + reset_posts, 4, "no POST was sent twice");
}

/// Every address answers 503: retries stay within the budget (10% of requests, no floor),
/// and the refused retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_holds_under_a_5xx_storm() {
    let a = Upstream::with_handler(|_| Reply::json(503, "{}")).await;
    let b = Upstream::with_handler(|_| Reply::json(503, "{}")).await;
    let text = config(
        &[a.addr.to_string(), b.addr.to_string()],
        "[upstreams.api.retry]\nattempts = 5\nbackoff = \"1ms\"\nbudget = 0.1\nmin_retries_per_second = 0",
        &["concurrency = 8", "max_items = 200"],
    );
    let gate = gate::start(&text).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(200, "GET"))).await;
    assert!(statuses(&reply).iter().all(|s| *s == 503));
    let sent = a.count() + b.count();
    assert!(
        (200..=222).contains(&sent),
        "{sent} requests for 200 items: retries within 10% (and a few lost in races)"
    );
    let m = scrape(gate.admin).await;
    assert!(
        m.value(
            "batchgate_upstream_retries_skipped_total",
            &[("upstream", "api"), ("reason", "budget")]
        ) >= 100.0,
        "{}",
        m.text
    );
}

/// A retry never waits past the item timeout: a `Retry-After` that would end after it stops
/// the retries at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_outlives_the_item_timeout() {
    let busy =
        Upstream::with_handler(|_| Reply::json(503, "{}").with_header("Retry-After", "2")).await;
    let text = config(
        &[busy.addr.to_string()],
        "[upstreams.api.retry]\nattempts = 5\nmax_retry_after = \"5s\"",
        &["item_timeout = \"1s\""],
    );
    let gate = gate::start(&text).await;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(1, "GET"))).await;
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(statuses(&reply), vec![503]);
    assert_eq!(busy.count(), 1);
    let m = scrape(gate.admin).await;
    assert_eq!(
        m.value(
            "batchgate_upstream_retries_skipped_total",
            &[("upstream", "api"), ("reason", "deadline")]
        ),
        1.0
    );
}

/// A slow address is hedged: after `hedge_after` a copy of the idempotent item goes to the
/// other address, the first answer wins; POSTs are never hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idempotent_items_are_hedged_to_another_address() {
    let slow =
        Upstream::with_handler(|_| Reply::json(200, "{\"slow\":true}").with_delay(1000)).await;
    let fast = Upstream::echo().await;
    let text = config(
        &[slow.addr.to_string(), fast.addr.to_string()],
        "",
        &["concurrency = 10", "hedge_after = \"50ms\""],
    );
    let gate = gate::start(&text).await;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(10, "GET"))).await;
    let took = started.elapsed();
    assert!(statuses(&reply).iter().all(|s| *s == 200));
    assert!(
        took < Duration::from_millis(700),
        "hedges answered: {took:?}"
    );
    assert!(
        responses(&reply)
            .iter()
            .all(|r| r["body"].get("slow").is_none()),
        "{}",
        reply.body_str()
    );
    let m = scrape(gate.admin).await;
    assert_eq!(
        m.value(
            "batchgate_upstream_hedges_total",
            &[("upstream", "api"), ("result", "won")]
        ),
        5.0,
        "{}",
        m.text
    );
    let posts: Vec<Value> = (0..2)
        .map(|i| item(&format!("{i}"), "POST", "/file/create"))
        .collect();
    slow.reset();
    fast.reset();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(posts)).await;
    assert!(statuses(&reply).iter().all(|s| *s == 200));
    assert_eq!(slow.count() + fast.count(), 2, "no POST copy");
}

/// `common::eventually_async` for checks that borrow their state (an `AsyncFnMut`).
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(admin: SocketAddr) -> (u16, Value) {
    let reply = client::get(admin, "/readyz").await;
    (reply.status, reply.json())
}

/// Active HTTP checks: an address whose `/healthz` fails leaves the choice (items go to the
/// others), `/readyz` stays ready while one address passes and turns 503 when none does (the
/// items are then still sent: trying beats failing unsent), and a flapping address comes back
/// after `healthy_after` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_address_out_and_readyz_follows() {
    let a_ok = Arc::new(AtomicBool::new(false));
    let b_ok = Arc::new(AtomicBool::new(true));
    let serve = |ok: Arc<AtomicBool>| {
        move |req: &common::upstream::RecordedRequest| {
            if req.path == "/healthz" {
                let healthy = ok.load(Ordering::Relaxed);
                Reply::json(if healthy { 200 } else { 500 }, "{}")
            } else {
                Reply::json(200, "{}")
            }
        }
    };
    let a = Upstream::with_handler(serve(a_ok.clone())).await;
    let b = Upstream::with_handler(serve(b_ok.clone())).await;
    let text = config(
        &[a.addr.to_string(), b.addr.to_string()],
        "[upstreams.api.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 2\nhealthy_after = 2",
        &["concurrency = 1"],
    );
    let gate = gate::start(&text).await;
    let a_address = a.addr.to_string();
    let admin = gate.admin;
    wait_until("a is out", async || {
        scrape(admin).await.sum(
            "batchgate_upstream_address_up",
            &[("address", a_address.as_str())],
        ) == 0.0
    })
    .await;
    let item_requests = |u: &Upstream| u.requests().iter().filter(|r| r.path != "/healthz").count();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(10, "GET"))).await;
    assert!(statuses(&reply).iter().all(|s| *s == 200));
    assert_eq!(item_requests(&a), 0, "no item to the failing address");
    assert_eq!(item_requests(&b), 10);
    let (status, body) = readyz(gate.admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstreams"][0]["addresses"][0]["healthy"], false);

    b_ok.store(false, Ordering::Relaxed);
    wait_until("not ready", async || readyz(admin).await.0 == 503).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(4, "GET"))).await;
    assert!(
        statuses(&reply).iter().all(|s| *s == 200),
        "every address failing: items still go"
    );

    a_ok.store(true, Ordering::Relaxed);
    wait_until("ready again", async || readyz(admin).await.0 == 200).await;
    let m = scrape(gate.admin).await;
    assert!(
        m.sum(
            "batchgate_upstream_health_checks_total",
            &[("address", a_address.as_str()), ("result", "fail")]
        ) >= 2.0
    );
}

/// Without a path the check is a connection: a dead address is out before any item (or
/// pass-through request) tried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_keeps_items_off_a_dead_address() {
    let live = Upstream::echo().await;
    let dead = dead_address();
    let text = config(
        &[dead.clone(), live.addr.to_string()],
        "[upstreams.api.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1",
        &[],
    );
    let gate = gate::start(&text).await;
    let admin = gate.admin;
    let dead_label = dead.clone();
    wait_until("dead is out", async || {
        scrape(admin).await.sum(
            "batchgate_upstream_address_up",
            &[("address", dead_label.as_str())],
        ) == 0.0
    })
    .await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(10, "GET"))).await;
    assert!(
        statuses(&reply).iter().all(|s| *s == 200),
        "{}",
        reply.body_str()
    );
    for _ in 0..6 {
        let passed = client::get(gate.addr, "/v2/file/get").await;
        assert_eq!(
            passed.status, 200,
            "pass-through avoids the dead address too"
        );
    }
}

#[test]
fn resilience_settings_are_checked_with_their_keys() {
    let text = config(
        &["127.0.0.1:9".to_string()],
        "[upstreams.api.retry]\non = [\"connect\", 200, \"sometimes\"]\nbudget = 2.0\n[upstreams.api.health_check]\nexpect_status = \"2xx\"\ninterval = \"1s\"\ntimeout = \"2s\"",
        &["idempotent_methods = [\"post\"]", "hedge_after = \"p20\""],
    );
    let out = gate::check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        "upstreams.api.retry.on[1]: 200 is not a retry condition",
        "upstreams.api.retry.on[2]: \"sometimes\" is not a retry condition",
        "upstreams.api.retry.budget: 2 is not a share of requests (0.0 to 1.0)",
        "upstreams.api.health_check.expect_status: \"2xx\" is not a status",
        "upstreams.api.health_check.timeout: 2s is longer than the interval (1s)",
        "routes[0].idempotent_methods[0]: \"post\" is not an upper-case HTTP method",
        "routes[0].hedge_after: \"p20\" is not a latency quantile from \"p50\" to \"p99.9\"",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}

/// `eject_on_5xx`: an address answering 500 to everything is ejected after `eject_after`
/// answers in a row, like one that refuses connections; without it, it stays in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eject_on_5xx_takes_an_address_answering_errors_out() {
    let broken = Upstream::with_handler(|_| Reply::json(500, "{}")).await;
    let good = Upstream::echo().await;
    let addresses = [broken.addr.to_string(), good.addr.to_string()];
    let text = config(
        &addresses,
        "eject_after = 2\neject_on_5xx = true",
        &["concurrency = 1"],
    );
    let gate = gate::start(&text).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(20, "GET"))).await;
    let errors = statuses(&reply).iter().filter(|s| **s == 500).count();
    assert_eq!(errors, 2, "{}", reply.body_str());
    let m = scrape(gate.admin).await;
    let broken_address = broken.addr.to_string();
    assert_eq!(
        m.sum(
            "batchgate_upstream_ejections_total",
            &[("address", broken_address.as_str())]
        ),
        1.0
    );
    drop(gate);
    let gate = gate::start(&config(&addresses, "eject_after = 2", &["concurrency = 1"])).await;
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(20, "GET"))).await;
    let errors = statuses(&reply).iter().filter(|s| **s == 500).count();
    assert_eq!(errors, 10, "answers are not failures without eject_on_5xx");
}

/// The "done when": one address dead, one flapping (every other request is cut off
/// after it arrived), one good. With retries, passive ejection and health checks, every
/// idempotent item of every batch is answered, retries stay within attempts, and the dead
/// address ends up out of the choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_and_one_flapping_address_cost_no_idempotent_item() {
    use std::sync::atomic::AtomicUsize;
    let turn = Arc::new(AtomicUsize::new(0));
    let flapping = Upstream::with_handler(move |req| {
        if req.path == "/healthz" {
            return Reply::json(200, "{}");
        }
        if turn.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            Reply::abort()
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let good = Upstream::echo().await;
    let dead = dead_address();
    let text = config(
        &[good.addr.to_string(), flapping.addr.to_string(), dead.clone()],
        "eject_after = 2\n[upstreams.api.retry]\nattempts = 3\nbackoff = \"1ms\"\n[upstreams.api.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_after = 2",
        &["concurrency = 8"],
    );
    let gate = gate::start(&text).await;
    for round in 0..5 {
        let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(40, "GET"))).await;
        assert_eq!(reply.status, 200);
        let failed: Vec<_> = responses(&reply)
            .into_iter()
            .filter(|r| r["status"] != 200)
            .collect();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
    }
    let m = scrape(gate.admin).await;
    assert_eq!(
        m.sum(
            "batchgate_upstream_address_up",
            &[("address", dead.as_str())]
        ),
        0.0,
        "{}",
        m.text
    );
    let items_sent = good.requests().len()
        + flapping
            .requests()
            .iter()
            .filter(|r| r.path != "/healthz")
            .count();
    assert!(items_sent >= 200, "{items_sent}");
    let attempts_skipped = m.sum(
        "batchgate_upstream_retries_skipped_total",
        &[("reason", "attempts")],
    );
    assert_eq!(attempts_skipped, 0.0, "{}", m.text);
}

/// `hedge_after = "p50"`: no hedge until the upstream has answered enough items to know its
/// latency; then items slower than the quantile get a copy, and a slow address stops
/// slowing the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_on_a_latency_quantile_starts_once_the_latency_is_known() {
    let slow = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(800)).await;
    let fast = Upstream::echo().await;
    let text = config(
        &[slow.addr.to_string(), fast.addr.to_string()],
        "",
        &["concurrency = 40", "hedge_after = \"p50\""],
    );
    let gate = gate::start(&text).await;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(40, "GET"))).await;
    assert!(statuses(&reply).iter().all(|s| *s == 200));
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "no latency known yet: no hedge"
    );
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(40, "GET"))).await;
    assert!(statuses(&reply).iter().all(|s| *s == 200));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "hedged: {took:?}");
    let m = scrape(gate.admin).await;
    assert!(
        m.value(
            "batchgate_upstream_hedges_total",
            &[("upstream", "api"), ("result", "won")]
        ) >= 10.0,
        "{}",
        m.text
    );
}

/// Pass-through: a connection that cannot be made is tried on another address (nothing was
/// sent, so any method), and the failures count toward the address's ejection as an item's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_moves_past_a_dead_address_and_ejects_it() {
    let live = Upstream::echo().await;
    let dead = dead_address();
    let text = config(
        &[dead.clone(), live.addr.to_string()],
        "eject_after = 2",
        &[],
    );
    let gate = gate::start(&text).await;
    for i in 0..8 {
        let reply = client::post(
            gate.addr,
            &format!("/v2/file/put?i={i}"),
            "application/json",
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body_str());
    }
    assert_eq!(live.count(), 8);
    let m = scrape(gate.admin).await;
    assert_eq!(
        m.sum(
            "batchgate_upstream_ejections_total",
            &[("address", dead.as_str())]
        ),
        1.0,
        "{}",
        m.text
    );
}

/// Nor past the batch deadline: with a long item timeout, the batch's own deadline stops a
/// retry whose `Retry-After` would end after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_outlives_the_batch_deadline() {
    let busy =
        Upstream::with_handler(|_| Reply::json(503, "{}").with_header("Retry-After", "2")).await;
    let text = config(
        &[busy.addr.to_string()],
        "[upstreams.api.retry]\nattempts = 5\nmax_retry_after = \"5s\"",
        &["item_timeout = \"10s\"", "batch_timeout = \"1s\""],
    );
    let gate = gate::start(&text).await;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &batch(items(1, "GET"))).await;
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(statuses(&reply), vec![503]);
    assert_eq!(busy.count(), 1);
}
