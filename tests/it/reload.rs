//! In-place reload (issue 14): SIGHUP and `batchgate reload` apply a valid config without
//! dropping a request, refuse an invalid one without changing anything, and many reloads
//! under load leak nothing. Every test runs the real binary and rewrites its real file.

use crate::common;

use common::batch::{assert_rejected, batch, item, responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate::{self, Gate};
use common::prom::{scrape, scrape_until, Scrape};
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| item(&format!("{i}"), "GET", &format!("/file/get?i={i}")))
        .collect()
}

fn reloads(scrape: &Scrape, result: &str) -> f64 {
    scrape
        .get("batchgate_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

/// The `sha256` label of the one `batchgate_config_info` series.
fn config_sha(scrape: &Scrape) -> String {
    let series: Vec<_> = scrape
        .series()
        .into_iter()
        .filter(|(name, _)| name == "batchgate_config_info")
        .collect();
    assert_eq!(series.len(), 1, "one config_info series: {series:?}");
    series[0]
        .1
        .iter()
        .find(|(k, _)| k == "sha256")
        .map(|(_, v)| v.clone())
        .expect("sha256")
}

/// Sends SIGHUP and waits until the reload is counted with `result`.
async fn reload(gate: &Gate, result: &str) -> Scrape {
    let before = reloads(&scrape(gate.admin).await, result);
    gate.signal("HUP");
    scrape_until(gate.admin, Duration::from_secs(10), "reload counted", |s| {
        reloads(s, result) > before
    })
    .await;
    // A scrape gathers family after family: the one that saw the reload counted may have
    // gathered the families sorted before `batchgate_config_reloads_total` (route series,
    // `batchgate_config_info`) just before the reload changed them. One started after it
    // is consistent.
    scrape(gate.admin).await
}

/// A second route at `/v3/batch` named `v3`, to `upstream`.
fn v3_route(upstream: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"v3\"\npath = \"/v3/batch\"\ndialect = \"envelope\"\nupstream = \"{upstream}\"\nbase_path = \"/v3\"\n"
    )
}

async fn post(addr: SocketAddr, path: &str, n: usize) -> client::Response {
    client::post_json(addr, path, &batch(items(n))).await
}

/// A route changed (limit and upstream), a route added, then removed: each reload applies
/// at once, the metric series of the removed route go, and SIGHUP does not stop the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_added_changed_and_removed_in_place() {
    let (a, b) = (Upstream::echo().await, Upstream::echo().await);
    let before = GateConfig::new(a.addr)
        .upstream("b", b.addr)
        .route("max_items = 3");
    let mut gate = before.start().await;
    assert_eq!(post(gate.addr, BATCH_PATH, 3).await.status, 200);
    assert_eq!(a.count(), 3);
    let sha_before = config_sha(&scrape(gate.admin).await);

    let after = GateConfig::new(a.addr)
        .upstream("b", b.addr)
        .route_upstream("b")
        .route("max_items = 2");
    gate.rewrite_config(&format!("{}{}", after.toml(), v3_route("api")));
    let reloaded = reload(&gate, "ok").await;
    assert!(
        gate.wait_exit(Duration::from_millis(100)).await.is_none(),
        "SIGHUP must not stop batchgate"
    );
    assert_ne!(
        sha_before,
        config_sha(&reloaded),
        "the new file's hash is exported"
    );

    let over = post(gate.addr, BATCH_PATH, 3).await;
    assert_rejected(&over, 400, "InvalidParameter.Requests");
    assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    assert_eq!(
        (a.count(), b.count()),
        (3, 2),
        "the changed route goes to b"
    );
    let v3 = post(gate.addr, "/v3/batch", 1).await;
    assert_eq!(v3.status, 200, "{}", v3.body_str());
    assert_eq!(a.count(), 4, "the new route goes to api");
    scrape_until(gate.admin, Duration::from_secs(5), "v3 counted", |s| {
        s.sum("batchgate_batches_total", &[("route", "v3")]) == 1.0
    })
    .await;

    gate.rewrite_config(&after.toml());
    let without_v3 = reload(&gate, "ok").await;
    assert_eq!(
        without_v3.sum("batchgate_batches_total", &[("route", "v3")]),
        0.0,
        "the removed route's series are gone:\n{}",
        without_v3.text
    );
    assert!(
        !without_v3.text.contains("route=\"v3\""),
        "{}",
        without_v3.text
    );
    // Not a batch route any more: it is passed through to the default upstream.
    let passed = post(gate.addr, "/v3/batch", 1).await;
    assert_eq!(passed.status, 200);
    let last = a.requests().pop().expect("a request");
    assert_eq!(last.path, "/v3/batch", "passed through as it is");
}

/// A broken file is refused with the problem in `check`'s format, counted, and nothing
/// changes; `batchgate reload` on it exits 1 without signalling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_is_reported() {
    let upstream = Upstream::echo().await;
    let config = GateConfig::new(upstream.addr).route("max_items = 3");
    let gate = config.start().await;
    let loaded = config_sha(&scrape(gate.admin).await);
    gate.rewrite_config(&config.toml().replace("max_items = 3", "max_items = 0"));
    let refused = reload(&gate, "error").await;
    assert_eq!(
        config_sha(&refused),
        loaded,
        "the config in effect is unchanged"
    );
    let stderr = gate
        .stderr_until("routes[0].max_items", Duration::from_secs(5))
        .await;
    assert!(
        stderr.contains("config reload refused, nothing changed")
            && stderr.contains("routes[0].max_items: 0 is not allowed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("config.toml:"),
        "names the file and line: {stderr}"
    );
    assert_eq!(
        post(gate.addr, BATCH_PATH, 3).await.status,
        200,
        "old limits hold"
    );

    let out = std::process::Command::new(gate::bin())
        .args(["reload", "-c"])
        .arg(gate.config_path())
        .output()
        .expect("batchgate reload");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("routes[0].max_items") && text.contains("not reloaded"),
        "{text}"
    );
    let after = scrape(gate.admin).await;
    assert_eq!(reloads(&after, "error"), 1.0, "the command sent nothing");
}

/// `batchgate reload -c FILE` validates, finds the instance through the pid file and signals
/// it; a setting that needs an upgrade is reported and the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_command_applies_and_reports_what_needs_an_upgrade() {
    let upstream = Upstream::echo().await;
    let config = GateConfig::new(upstream.addr).route("max_items = 3");
    let gate = config.start().await;
    let changed = config
        .toml()
        .replace("threads = 2", "threads = 1")
        .replace("max_items = 3", "max_items = 1");
    gate.rewrite_config(&changed);
    let out = std::process::Command::new(gate::bin())
        .args(["reload", "-c"])
        .arg(gate.config_path())
        .output()
        .expect("batchgate reload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("sent SIGHUP to pid {}", gate.pid())),
        "{stdout}"
    );
    scrape_until(gate.admin, Duration::from_secs(10), "reload ok", |s| {
        reloads(s, "ok") == 1.0
    })
    .await;
    assert_rejected(
        &post(gate.addr, BATCH_PATH, 2).await,
        400,
        "InvalidParameter.Requests",
    );
    // The reload is counted just before it is logged.
    let stderr = gate
        .stderr_until("needs an upgrade", Duration::from_secs(5))
        .await;
    assert!(
        stderr.contains("server.threads changed, which needs an upgrade"),
        "{stderr}"
    );
}

/// A batch that started before a reload finishes on the old config (its items all reach the
/// old upstream); the next batch goes where the new config says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_finishes_on_the_old_config() {
    let old = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(300)).await;
    let new = Upstream::echo().await;
    let config = GateConfig::new(old.addr)
        .upstream("new", new.addr)
        .route("concurrency = 1");
    let gate = config.start().await;
    let running = tokio::spawn({
        let addr = gate.addr;
        async move { post(addr, BATCH_PATH, 3).await }
    });
    common::eventually(
        Duration::from_secs(5),
        "the first item at the old upstream",
        || old.in_flight() >= 1,
    )
    .await;
    gate.rewrite_config(&config.clone().route_upstream("new").toml());
    reload(&gate, "ok").await;
    let reply = running.await.expect("batch");
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert!(responses(&reply).iter().all(|r| r["status"] == 200));
    assert_eq!(
        (old.count(), new.count()),
        (3, 0),
        "every item of the running batch went to the old upstream"
    );
    assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    assert_eq!(new.count(), 2);
}

/// Lowering `max_in_flight` under load strands nothing: running items finish, every batch is
/// answered in full, and once they have, no more than the new limit is in flight upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_lowered_under_load() {
    let upstream = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(50)).await;
    let config = GateConfig::new(upstream.addr)
        .route("concurrency = 8")
        .route("max_items = 8");
    let gate = config.clone().server("max_in_flight = 8").start().await;
    let stop = Instant::now() + Duration::from_millis(1500);
    let load: Vec<_> = (0..4)
        .map(|_| {
            let addr = gate.addr;
            tokio::spawn(async move {
                let mut answered = 0;
                while Instant::now() < stop {
                    let reply = post(addr, BATCH_PATH, 8).await;
                    assert_eq!(reply.status, 200, "{}", reply.body_str());
                    assert!(responses(&reply).iter().all(|r| r["status"] == 200));
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    common::eventually(
        Duration::from_secs(5),
        "more than 2 items in flight",
        || upstream.in_flight() > 2,
    )
    .await;
    let peak_before = upstream.in_flight();
    gate.rewrite_config(&config.clone().server("max_in_flight = 2").toml());
    reload(&gate, "ok").await;
    // Items that held permits before finish within one upstream latency.
    let admin = gate.admin;
    common::eventually_async(
        Duration::from_secs(5),
        "at most 2 items in flight",
        || async { scrape(admin).await.sum("batchgate_items_in_flight", &[]) <= 2.0 },
    )
    .await;
    // batchgate's own count (the upstream's would also see a finished request for the
    // moment before its handler returns).
    let mut peak_after = 0.0f64;
    while Instant::now() < stop - Duration::from_millis(100) {
        let metrics = scrape(gate.admin).await;
        peak_after = peak_after.max(metrics.sum("batchgate_items_in_flight", &[]));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answered = 0;
    for task in load {
        answered += task.await.expect("load");
    }
    assert!(
        peak_before > 2,
        "the load used more than 2 before: {peak_before}"
    );
    assert!(
        peak_after <= 2.0,
        "at most the new limit in flight: {peak_after}"
    );
    assert!(answered > 8, "batches kept being answered: {answered}");
    let metrics = scrape(gate.admin).await;
    assert_eq!(metrics.value("batchgate_max_in_flight", &[]), 2.0);
}

/// Load (batches on two connections, pass-through on a third) for as long as `reloads`
/// reloads take, alternating between two configs; every request must succeed.
async fn load_across_reloads(gate: &Gate, configs: [&GateConfig; 2], reloads: usize) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|n| {
            let addr = gate.addr;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = if n == 0 {
                        client::get(addr, "/file/get?pass=1").await
                    } else {
                        post(addr, BATCH_PATH, 10).await
                    };
                    assert_eq!(reply.status, 200, "{}", reply.body_str());
                    if n > 0 {
                        assert!(responses(&reply).iter().all(|r| r["status"] == 200));
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    for i in 0..reloads {
        gate.rewrite_config(&configs[i % 2].toml());
        reload(gate, "ok").await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for task in load {
        done += task.await.expect("load");
    }
    done
}

/// A hundred reloads in a row while batches and pass-through requests run: nothing fails, and
/// file descriptors and memory are where a short warm-up of the same shape left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reloads_under_load_leak_nothing() {
    let (a, b) = (Upstream::echo().await, Upstream::echo().await);
    let one = GateConfig::new(a.addr).upstream("b", b.addr);
    let two = one.clone().route_upstream("b").route("max_items = 50");
    let gate = one.start().await;
    // Warm-up: both upstreams' pools and the pass-through pool fill to what this load needs.
    load_across_reloads(&gate, [&two, &one], 30).await;
    let fds_before = gate.open_fds();
    let (rss_before, _) = gate.memory_kib();
    let done = load_across_reloads(&gate, [&two, &one], 100).await;
    assert!(done > 100, "requests kept being served: {done}");
    // Pooled connections differ by a few between two quiet points (once the ones the
    // upstreams close are gone); one descriptor leaked per reload would add a hundred.
    common::eventually(Duration::from_secs(5), "file descriptors back", || {
        gate.open_fds() <= fds_before + 20
    })
    .await;
    let (rss_after, _) = gate.memory_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

/// Pooled upstream connections survive a reload: of an unchanged upstream, and of one whose
/// timeouts changed but whose connections would be the same. A changed address gets new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_survive_a_reload_when_they_can() {
    let (a, b) = (Upstream::echo().await, Upstream::echo().await);
    let config = GateConfig::new(a.addr).route("concurrency = 1");
    // One worker thread: one idle pool (each thread keeps its own).
    let one_thread = |text: String| text.replace("threads = 2\n", "threads = 1\n");
    let gate = gate::start(&one_thread(config.toml())).await;
    let conns = |up: &Upstream| {
        let mut ids: Vec<u64> = up.requests().iter().map(|r| r.conn_id).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    // One item at a time: each batch uses the one pooled connection.
    for _ in 0..4 {
        assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    }
    let before = conns(&a);
    // Unchanged upstream, another route limit.
    gate.rewrite_config(&one_thread(config.clone().route("max_items = 50").toml()));
    reload(&gate, "ok").await;
    for _ in 0..4 {
        assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    }
    assert_eq!(conns(&a), before, "no new connection after a reload");
    // The same upstream with a longer read timeout keeps its pool too.
    let slower = one_thread(config.toml()).replace(
        "connect_timeout = \"1s\"\n",
        "connect_timeout = \"1s\"\nread_timeout = \"20s\"\n",
    );
    gate.rewrite_config(&slower);
    reload(&gate, "ok").await;
    for _ in 0..4 {
        assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    }
    assert_eq!(conns(&a), before, "a changed timeout keeps the connections");
    // A new address: its own connections.
    gate.rewrite_config(&one_thread(
        GateConfig::new(b.addr).route("concurrency = 1").toml(),
    ));
    reload(&gate, "ok").await;
    assert_eq!(post(gate.addr, BATCH_PATH, 2).await.status, 200);
    assert_eq!(b.count(), 2);
    assert_eq!(conns(&a), before);
}

/// `/readyz` probes the default upstream of the config in effect: after a reload moves the
/// default to an address nobody listens on, the pod turns unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_reloaded_default_upstream() {
    let live = Upstream::echo().await;
    let dead: SocketAddr = format!("127.0.0.1:{}", common::upstream::free_port())
        .parse()
        .expect("addr");
    let config = GateConfig::new(live.addr).upstream("gone", dead);
    let gate = config.start().await;
    assert_eq!(client::get(gate.admin, "/readyz").await.status, 200);
    gate.rewrite_config(
        &config
            .toml()
            .replace("default_upstream = \"api\"", "default_upstream = \"gone\""),
    );
    reload(&gate, "ok").await;
    let ready = client::get(gate.admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body_str());
    assert_eq!(ready.json()["default_upstream"]["name"], "gone");
}

/// A reload that drops an address drops its series too: a removed address left at
/// `batchgate_upstream_address_up 0` would keep `BatchgateUpstreamNoHealthyAddress` firing.
/// The health state of the address that stays is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_address_leaves_no_series_behind() {
    let live = Upstream::echo().await;
    let dead = format!("127.0.0.1:{}", common::upstream::free_port());
    let checks = "connect_timeout = \"1s\"\n[upstreams.api.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1\n";
    let both = GateConfig::new(live.addr)
        .toml()
        .replace(
            &format!("addresses = [\"{}\"]\n", live.addr),
            &format!("addresses = [\"{}\", \"{dead}\"]\n", live.addr),
        )
        .replace("connect_timeout = \"1s\"\n", checks);
    let gate = gate::start(&both).await;
    let admin = gate.admin;
    common::eventually_async(Duration::from_secs(5), "the dead address out", || async {
        let m = common::prom::scrape(admin).await;
        let up = m.sum(
            "batchgate_upstream_address_up",
            &[("address", dead.as_str())],
        );
        up == 0.0 && m.text.contains(&dead)
    })
    .await;
    let one = GateConfig::new(live.addr)
        .toml()
        .replace("connect_timeout = \"1s\"\n", checks);
    gate.rewrite_config(&one);
    let after = reload(&gate, "ok").await;
    assert!(!after.text.contains(&dead), "{}", after.text);
    let live_address = live.addr.to_string();
    assert_eq!(
        after.sum(
            "batchgate_upstream_address_up",
            &[("address", live_address.as_str())]
        ),
        1.0
    );
    let ready = client::get(gate.admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body_str());
}

/// A file caught half-written can still be valid TOML: a reload that removes every batch
/// route is applied (the file says so) but logged as a warning naming the likely cause, so
/// the operator sees why batches are suddenly passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_every_route_warns() {
    let upstream = Upstream::echo().await;
    let config = GateConfig::new(upstream.addr);
    let gate = config.start().await;
    let text = config.toml();
    let cut = text.find("[[routes]]").expect("a route");
    gate.rewrite_config(&text[..cut]);
    reload(&gate, "ok").await;
    let stderr = gate
        .stderr_until("removes every batch route", Duration::from_secs(5))
        .await;
    assert!(
        stderr.contains("config reload removes every batch route")
            && stderr.contains("temporary name"),
        "{stderr}"
    );
}

/// A reload keeps a route's item cache while it would hold the same answers (another setting
/// changed), and starts it empty when the cache's own settings change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_item_cache_unless_its_settings_change() {
    let upstream = Upstream::with_handler(|req| {
        Reply::json(200, &format!(r#"{{"n":"{}"}}"#, req.target))
            .with_header("Cache-Control", "max-age=60")
    })
    .await;
    let config = |max_items: usize, max_bytes: usize| {
        GateConfig::new(upstream.addr)
            .route(&format!("max_items = {max_items}"))
            .route(&format!("[routes.cache]\nmax_bytes = {max_bytes}"))
    };
    let source = |reply: client::Response| {
        responses(&reply)[0]["headers"]["x-batchgate-source"]
            .as_str()
            .unwrap_or("-")
            .to_string()
    };
    let one = vec![item("a", "GET", "/fresh")];
    let gate = config(10, 1 << 20).start().await;
    let first = client::post_json(gate.addr, BATCH_PATH, &batch(one.clone())).await;
    assert_eq!(source(first), "sent");

    gate.rewrite_config(&config(20, 1 << 20).toml());
    reload(&gate, "ok").await;
    let kept = client::post_json(gate.addr, BATCH_PATH, &batch(one.clone())).await;
    assert_eq!(source(kept), "cache", "another setting changed: kept");
    assert_eq!(upstream.count(), 1);

    gate.rewrite_config(&config(20, 2 << 20).toml());
    reload(&gate, "ok").await;
    let emptied = client::post_json(gate.addr, BATCH_PATH, &batch(one)).await;
    assert_eq!(
        source(emptied),
        "sent",
        "the cache's settings changed: empty"
    );
    assert_eq!(upstream.count(), 2);
}
