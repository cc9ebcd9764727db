//! Upstream connection handling for batch items: keep-alive reuse across batches, the one retry
//! when a pooled connection turns out closed, and idle connections closed after
//! `idle_timeout`. The upstream counts the TCP connections it accepts and holds open.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client::{self, Conn};
use common::config::GateConfig;
use common::gate;
use common::prom::scrape;
use common::upstream::{echo, Reply, Upstream};
use serde_json::Value;

const REQUESTS: &str = "batchgate_upstream_requests_total";

fn items(n: usize) -> String {
    batch(
        (0..n)
            .map(|i| item(&i.to_string(), "GET", &format!("/file/{i}")))
            .collect(),
    )
}

fn statuses(resp: &client::Response) -> Vec<u64> {
    responses(resp)
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused_by_later_batches() {
    // 50 ms per answer keeps all ten items of a batch in flight at once.
    let upstream = Upstream::with_handler(|req| echo(req).with_delay(50)).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 10")
        .start()
        .await;

    // One client connection: it stays on the worker thread that accepted it, and idle
    // upstream connections are kept per thread (like nginx's and Envoy's per-worker pools).
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];
    let first = conn
        .request("POST", BATCH_PATH, &json, items(10).as_bytes())
        .await;
    assert_eq!(first.status, 200, "{}", first.body_str());
    assert_eq!(statuses(&first), vec![200; 10]);
    assert_eq!(
        upstream.connections(),
        10,
        "one connection per concurrent item"
    );

    for _ in 0..3 {
        let again = conn
            .request("POST", BATCH_PATH, &json, items(10).as_bytes())
            .await;
        assert_eq!(statuses(&again), vec![200; 10]);
    }
    assert_eq!(
        upstream.connections(),
        10,
        "later batches must reuse the pooled connections"
    );
    assert_eq!(upstream.count(), 40);

    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.value(REQUESTS, &[("upstream", "api"), ("connection", "new")]),
        10.0
    );
    assert_eq!(
        metrics.value(REQUESTS, &[("upstream", "api"), ("connection", "reused")]),
        30.0
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_under_the_request_is_retried_once_on_a_new_one() {
    // Every connection answers its first request and drops the second unanswered, like an
    // upstream whose keep-alive timeout fires just as the next request arrives.
    let served: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let seen = served.clone();
    let upstream = Upstream::with_handler(move |req| {
        let mut served = seen.lock().expect("lock");
        let count = served.entry(req.conn_id).or_default();
        *count += 1;
        if *count == 1 {
            echo(req)
        } else {
            Reply::abort()
        }
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;
    // One client connection, so every batch runs on the same worker thread and meets the
    // idle connections that thread keeps.
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];

    let first = conn
        .request("POST", BATCH_PATH, &json, items(1).as_bytes())
        .await;
    assert_eq!(statuses(&first), vec![200]);
    let second = conn
        .request("POST", BATCH_PATH, &json, items(1).as_bytes())
        .await;
    assert_eq!(
        statuses(&second),
        vec![200],
        "the retry on a new connection answers: {}",
        second.body_str()
    );
    // The first connection carried two requests (the second dropped), the retry a third.
    assert_eq!(upstream.count(), 3);
    assert_eq!(upstream.connections(), 2);

    // The same dead pooled connection under a POST: the request reached the upstream, which
    // may have acted on it, so it is not sent again (RFC 9112 section 9.3.1).
    let post = batch(vec![common::batch::item_with_body(
        "p",
        "POST",
        "/file/update",
        serde_json::json!({"n": 1}),
    )]);
    // The pool now holds the retry's connection, which has answered once.
    let before = upstream.count();
    let resp = conn
        .request("POST", BATCH_PATH, &json, post.as_bytes())
        .await;
    assert_eq!(statuses(&resp), vec![502], "{}", resp.body_str());
    assert_eq!(upstream.count(), before + 1, "the POST was sent once");
    assert_eq!(
        upstream.connections(),
        2,
        "and no new connection was opened for it"
    );

    // A connection that fails on its *first* request is not retried: the upstream saw it.
    let dropping = Upstream::with_handler(|_| Reply::abort()).await;
    let gate = GateConfig::new(dropping.addr).start().await;
    let resp = client::post_json(gate.addr, BATCH_PATH, &items(1)).await;
    let entries = responses(&resp);
    let entry: &Value = entries.first().expect("one entry");
    assert_eq!(entry["status"], 502, "{entry}");
    assert_eq!(dropping.count(), 1, "no second attempt on a new connection");
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let upstream = Upstream::echo().await;
    let text = GateConfig::new(upstream.addr)
        .route("concurrency = 4")
        .toml()
        .replace(
            "connect_timeout = \"1s\"\n",
            "connect_timeout = \"1s\"\nidle_timeout = \"300ms\"\n",
        );
    let gate = gate::start(&text).await;

    let resp = client::post_json(gate.addr, BATCH_PATH, &items(4)).await;
    assert_eq!(statuses(&resp), vec![200; 4]);
    assert!(upstream.open_connections() > 0);

    common::eventually(
        Duration::from_secs(5),
        "idle connections closed after a 300 ms idle timeout",
        || upstream.open_connections() == 0,
    )
    .await;
    // And the pool does not hand out the closed ones: the next batch just works.
    let resp = client::post_json(gate.addr, BATCH_PATH, &items(4)).await;
    assert_eq!(statuses(&resp), vec![200; 4]);
}

/// With no `pool_size` set, the pool keeps what the load needs: three keep-alive clients
/// sending 100-item batches side by side (300 items in flight at once; the old fixed 128 per
/// thread closed the surplus after every batch and the next batch opened it again) open their
/// connections once, and later batches reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_keeps_what_concurrent_batches_use() {
    const BATCHES: usize = 5;
    let upstream = Upstream::with_handler(|req| echo(req).with_delay(30)).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 100")
        .start()
        .await;
    // A client connection stays on the worker thread that accepted it, and so do the upstream
    // connections its items open (per-thread pools): each client's later batches find theirs.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let addr = gate.addr;
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await;
                let json = [("Content-Type", "application/json")];
                for _ in 0..BATCHES {
                    let reply = conn
                        .request("POST", BATCH_PATH, &json, items(100).as_bytes())
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.body_str());
                    assert_eq!(statuses(&reply), vec![200; 100]);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    assert_eq!(upstream.count(), 3 * BATCHES * 100);
    let opened = upstream.connections();
    // 300 for the first batches; a few more where one client's batch starts before another's
    // has handed its connections back.
    assert!(
        opened <= 330,
        "1,500 items, at most 300 at once, opened {opened} upstream connections"
    );
}

/// Pass-through on two worker threads: each client connection is served by one worker with
/// its own pingora pool, so the upstream connection its request used is back in that pool,
/// on that thread, for its next request. Sixteen keep-alive clients sending 150 requests each
/// (2,400) open about one upstream connection each; pingora's one pool shared by its threads
/// handed connections across threads and dropped some in the hand-over ("failed to acquire
/// reusable stream", counted in `batchgate_passthrough_pool_reuse_races_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_connections_stay_with_their_worker() {
    const CLIENTS: usize = 16;
    const EACH: usize = 150;
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = gate.addr;
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await;
                for i in 0..EACH {
                    let reply = conn
                        .request("GET", &format!("/v2/p/{c}/{i}"), &[], b"")
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.body_str());
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    assert_eq!(upstream.count(), CLIENTS * EACH);
    let metrics = scrape(gate.admin).await;
    let races = metrics.sum("batchgate_passthrough_pool_reuse_races_total", &[]);
    let new = metrics.sum(
        "batchgate_passthrough_upstream_requests_total",
        &[("connection", "new")],
    );
    let opened = upstream.connections();
    assert_eq!(races, 0.0, "pooled connections dropped in a hand-over");
    assert_eq!(new, opened as f64, "every new connection is counted");
    // One per client, and a few where a request starts before another's has handed its
    // connection back on the same worker.
    assert!(
        opened <= CLIENTS as u64 + 4,
        "{} requests from {CLIENTS} clients opened {opened} upstream connections",
        CLIENTS * EACH
    );
}

/// The gate config with `pipeline_depth` and `pipeline_max_delay` on its upstream.
fn pipelined(upstream: std::net::SocketAddr, depth: usize, max_delay: &str) -> String {
    GateConfig::new(upstream)
        .route("concurrency = 10")
        .toml()
        .replace(
            "connect_timeout = \"1s\"\n",
            &format!(
                "connect_timeout = \"1s\"\npipeline_depth = {depth}\npipeline_max_delay = \"{max_delay}\"\n"
            ),
        )
}

/// Each answer is its own item's: the echo names the path the item asked for.
fn assert_own_answers(resp: &client::Response, n: usize) {
    let answers = responses(resp);
    assert_eq!(answers.len(), n, "{}", resp.body_str());
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(answer["body"]["path"], format!("/v2/file/{i}"), "item {i}");
    }
}

#[tokio::test]
async fn items_share_connections_up_to_the_pipeline_depth() {
    // 50 ms per answer: without pipelining the ten items would need ten connections. Up to
    // 1 s of waiting for the answers ahead allows the whole depth once that is measured; the
    // first batch, unmeasured, goes in pairs.
    let upstream = Upstream::with_handler(|req| echo(req).with_delay(50)).await;
    let gate = gate::start(&pipelined(upstream.addr, 4, "1s")).await;
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];
    let first = conn
        .request("POST", BATCH_PATH, &json, items(10).as_bytes())
        .await;
    assert_own_answers(&first, 10);
    assert_eq!(upstream.connections(), 5, "pairs while unmeasured");
    for _ in 0..2 {
        let again = conn
            .request("POST", BATCH_PATH, &json, items(10).as_bytes())
            .await;
        assert_own_answers(&again, 10);
    }
    assert_eq!(
        upstream.connections(),
        5,
        "the pipelined connections are kept"
    );
    let metrics = scrape(gate.admin).await;
    let count =
        |connection| metrics.value(REQUESTS, &[("upstream", "api"), ("connection", connection)]);
    // Then 4 + 4 + 2 per batch.
    assert_eq!(count("new"), 5.0);
    assert_eq!(count("reused"), 6.0);
    assert_eq!(count("pipelined"), 5.0 + 14.0);
}

#[tokio::test]
async fn an_upstream_slower_than_the_delay_allows_is_not_pipelined() {
    // 50 ms per answer against the default pipeline_max_delay of 1 ms: once measured, each
    // item has a connection of its own and the batch takes one answer's time.
    let upstream = Upstream::with_handler(|req| echo(req).with_delay(50)).await;
    let toml = pipelined(upstream.addr, 8, "1ms").replace("pipeline_max_delay = \"1ms\"\n", "");
    let gate = gate::start(&toml).await;
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];
    let first = conn
        .request("POST", BATCH_PATH, &json, items(10).as_bytes())
        .await;
    assert_own_answers(&first, 10);
    let started = std::time::Instant::now();
    let again = conn
        .request("POST", BATCH_PATH, &json, items(10).as_bytes())
        .await;
    assert_own_answers(&again, 10);
    assert!(
        started.elapsed() < Duration::from_millis(95),
        "{:?}",
        started.elapsed()
    );
    let metrics = scrape(gate.admin).await;
    let pipelined = metrics.value(
        REQUESTS,
        &[("upstream", "api"), ("connection", "pipelined")],
    );
    assert_eq!(pipelined, 5.0, "only the first batch's pairs");
}

#[tokio::test]
async fn a_keep_alive_limit_loses_no_item_behind_it() {
    // Like nginx's keepalive_requests reached at once: the first request on each connection
    // is answered with Connection: close, and the request pipelined behind it is never read.
    let served = Arc::new(Mutex::new(HashMap::<u64, usize>::new()));
    let seen = served.clone();
    let upstream = Upstream::with_handler(move |req| {
        let mut served = seen.lock().expect("served");
        let n = served.entry(req.conn_id).or_default();
        *n += 1;
        if *n == 1 {
            echo(req).closing()
        } else {
            echo(req)
        }
    })
    .await;
    let gate = gate::start(&pipelined(upstream.addr, 8, "1s")).await;
    // POSTs: not repeatable, and still sent again, since the upstream said it read no more.
    let posts = batch(
        (0..10)
            .map(|i| {
                common::batch::item_with_body(
                    &i.to_string(),
                    "POST",
                    &format!("/file/{i}"),
                    serde_json::json!({ "n": i }),
                )
            })
            .collect(),
    );
    let resp = client::post_json(gate.addr, BATCH_PATH, &posts).await;
    assert_own_answers(&resp, 10);
    let mut paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("/v2/file/{i}")).collect();
    expected.sort();
    assert_eq!(paths, expected, "each item acted on exactly once");
}
