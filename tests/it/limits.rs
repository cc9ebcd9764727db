//! Limits: per-batch and global concurrency, parallelism, item timeout, batch deadline,
//! upstream failures (refused port, 500, oversized body) and cancellation on disconnect.

use crate::common;

use std::time::{Duration, Instant};

use common::batch::{assert_item_error, batch, by_id, item, responses, BATCH_PATH};
use common::client::{self, Conn, Response};
use common::config::GateConfig;
use common::gate::Gate;
use common::upstream::{refused_addr, Reply, Upstream};
use serde_json::Value;

/// `n` POST items `/file/get?i=N` with ids `item-N`.
fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| item(&format!("item-{i}"), "POST", &format!("/file/get?i={i}")))
        .collect()
}

/// An upstream answering every request 200 `{}` after `ms` milliseconds.
async fn slow_upstream(ms: u64) -> Upstream {
    Upstream::with_handler(move |_| Reply::json(200, "{}").with_delay(ms)).await
}

/// Posts a batch of `items(n)` to the route.
async fn post_items(gate: &Gate, n: usize) -> Response {
    client::post_json(gate.addr, BATCH_PATH, &batch(items(n))).await
}

/// Like [`post_items`], also returning how long the reply took.
async fn timed_post_items(gate: &Gate, n: usize) -> (Response, Duration) {
    let started = Instant::now();
    let resp = post_items(gate, n).await;
    (resp, started.elapsed())
}

/// Writes a batch of `items(n)` on a new connection without reading the reply; dropping the
/// returned connection is a client leaving mid-batch.
async fn send_unread(gate: &Gate, n: usize) -> Conn {
    let body = batch(items(n));
    let raw = client::build_request(
        "POST",
        BATCH_PATH,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let mut conn = Conn::connect(gate.addr).await;
    conn.write(&raw).await;
    conn
}

/// Asserts every entry of a reply is a 200.
fn assert_all_ok(replies: &[Value]) {
    for entry in replies {
        assert_eq!(entry["status"], 200, "{entry}");
    }
}

/// Asserts the reply has `n` entries, each the item error `status` with `code`.
fn assert_all_item_errors(replies: &[Value], n: usize, status: u16, code: &str) {
    assert_eq!(replies.len(), n);
    for entry in replies {
        assert_item_error(entry, status, code);
    }
}

/// Asserts the upstream's peak of children in flight stayed within `limit` (the setting
/// `what`) and reached 2, so the children did run in parallel.
fn assert_parallel_within(upstream: &Upstream, limit: usize, what: &str) {
    let peak = upstream.peak();
    assert!(peak <= limit, "peak {peak} exceeds {what}");
    assert!(peak >= 2, "peak {peak}: children were not run in parallel");
}

/// Proves one batch never has more than `concurrency` children in flight upstream, and
/// does run them in parallel (peak of at least 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_concurrency_is_bounded() {
    let upstream = slow_upstream(100).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 4")
        .start()
        .await;

    let resp = post_items(&gate, 20).await;

    let replies = responses(&resp);
    assert_eq!(replies.len(), 20);
    assert_all_ok(&replies);
    assert_eq!(upstream.count(), 20);
    assert_parallel_within(&upstream, 4, "concurrency = 4");
}

/// Proves `[server] max_in_flight` bounds children across simultaneous batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_max_in_flight_bounds_all_batches() {
    let upstream = slow_upstream(100).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 5")
        .route("concurrency = 10")
        .start()
        .await;

    let (a, b, c) = tokio::join!(
        post_items(&gate, 10),
        post_items(&gate, 10),
        post_items(&gate, 10),
    );

    for resp in [&a, &b, &c] {
        let replies = responses(resp);
        assert_eq!(replies.len(), 10);
        assert_all_ok(&replies);
    }
    assert_eq!(upstream.count(), 30);
    assert_parallel_within(&upstream, 5, "max_in_flight = 5");
}

/// Proves children run in parallel: 8 items of 200 ms with concurrency 8 are answered in
/// well under the 1.6 s a sequential run would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_items_finish_in_about_one_delay() {
    let upstream = slow_upstream(200).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 8")
        .start()
        .await;

    let (resp, elapsed) = timed_post_items(&gate, 8).await;

    assert_all_ok(&responses(&resp));
    assert!(
        elapsed < Duration::from_millis(1000),
        "8 x 200 ms with concurrency 8 took {elapsed:?}"
    );
    assert!(elapsed >= Duration::from_millis(200), "took {elapsed:?}");
}

/// Proves `item_timeout` turns only the slow item into 504 `GatewayTimeout`; the others
/// of the batch are answered normally and the reply does not wait for the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_timeout_gives_504_for_that_item_only() {
    let upstream = Upstream::with_handler(|req| {
        if req.query.as_deref() == Some("i=2") {
            Reply::json(200, "{}").with_delay(2000)
        } else {
            Reply::json(200, r#"{"fast":true}"#)
        }
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"item_timeout = "300ms""#)
        .start()
        .await;

    let (resp, elapsed) = timed_post_items(&gate, 5).await;

    let replies = responses(&resp);
    assert_eq!(replies.len(), 5);
    for (i, entry) in replies.iter().enumerate() {
        if i == 2 {
            assert_item_error(entry, 504, "GatewayTimeout");
        } else {
            assert_eq!(entry["status"], 200, "{entry}");
            assert_eq!(entry["body"]["fast"], true);
        }
    }
    assert!(
        elapsed < Duration::from_millis(1500),
        "reply waited for the slow item: {elapsed:?}"
    );
}

/// Proves `batch_timeout` sends the reply at the deadline: finished items are 200, the
/// unfinished and unstarted ones 504 `BatchDeadlineExceeded`, and no item starts late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_deadline_answers_with_what_finished() {
    let upstream = Upstream::with_handler(|req| {
        let body = serde_json::json!({"target": req.target});
        Reply::json(200, &body.to_string()).with_delay(300)
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 1")
        .route(r#"batch_timeout = "500ms""#)
        .start()
        .await;

    // 10 x 300 ms one at a time would take 3 s without the deadline.
    let (resp, elapsed) = timed_post_items(&gate, 10).await;

    assert!(
        elapsed < Duration::from_millis(1500),
        "deadline 500 ms, reply took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450),
        "reply came before the deadline: {elapsed:?}"
    );
    let replies = responses(&resp);
    assert_eq!(replies.len(), 10);
    let mut finished = 0;
    for (i, entry) in replies.iter().enumerate() {
        assert_eq!(entry["id"], format!("item-{i}"), "order kept");
        if entry["status"] == 200 {
            finished += 1;
            assert_eq!(
                entry["body"]["target"],
                format!("/v2/file/get?i={i}"),
                "a finished item carries its own answer"
            );
        } else {
            assert_item_error(entry, 504, "BatchDeadlineExceeded");
        }
    }
    assert!(
        (1..=2).contains(&finished),
        "{finished} items finished; with 300 ms items one at a time and a 500 ms deadline 1 can"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        upstream.count() <= 3,
        "items must not be started after the deadline: {} started",
        upstream.count()
    );
}

/// Proves the deadline reply does not wait for children still in flight: with every item
/// slower than the batch deadline, the reply comes at the deadline with all items 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_deadline_does_not_wait_for_in_flight_items() {
    let upstream = slow_upstream(3000).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 2")
        .route(r#"batch_timeout = "500ms""#)
        .start()
        .await;

    let (resp, elapsed) = timed_post_items(&gate, 4).await;

    assert!(
        elapsed < Duration::from_millis(1500),
        "deadline 500 ms, items 3 s: reply took {elapsed:?}"
    );
    assert_all_item_errors(&responses(&resp), 4, 504, "BatchDeadlineExceeded");
}

/// Proves that with `concurrency = 1` the children are sent one after another in request
/// order (the first item first), so a deadline cuts off the tail of the batch, not its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_sends_items_in_request_order() {
    let upstream = slow_upstream(20).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 1")
        .start()
        .await;

    let resp = post_items(&gate, 8).await;

    assert_all_ok(&responses(&resp));
    let order: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    let expected: Vec<String> = (0..8).map(|i| format!("/v2/file/get?i={i}")).collect();
    assert_eq!(
        order, expected,
        "upstream arrival order with concurrency = 1"
    );
    assert_eq!(upstream.peak(), 1);
}

/// Proves a refused upstream port gives every item 502 `UpstreamConnectFailed` while the
/// reply itself is a normal 200; and items of another route upstream are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_gives_502_per_item() {
    let live = Upstream::echo().await;
    let dead = refused_addr().await;
    let gate = GateConfig::new(live.addr)
        .upstream("dead", dead)
        .route_upstream("dead")
        .start()
        .await;

    let started = Instant::now();
    let resp = post_items(&gate, 3).await;

    assert_all_item_errors(&responses(&resp), 3, 502, "UpstreamConnectFailed");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        live.count(),
        0,
        "children must not fall back to another upstream"
    );
}

/// Proves an upstream error status is relayed as the item's status with the upstream body,
/// next to successful items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_status_is_relayed() {
    let upstream = Upstream::with_handler(|req| match req.query.as_deref() {
        Some("i=1") => Reply::json(500, r#"{"code":"InternalError","message":"boom"}"#),
        Some("i=2") => Reply::text(503, "try later"),
        Some("i=3") => Reply::json(404, r#"{"code":"NotFound.File"}"#),
        _ => Reply::json(200, r#"{"ok":1}"#),
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;

    let resp = post_items(&gate, 4).await;

    let replies = responses(&resp);
    assert_eq!(replies[0]["status"], 200);
    assert_eq!(replies[0]["body"]["ok"], 1);
    assert_eq!(replies[1]["status"], 500);
    assert_eq!(
        replies[1]["body"],
        serde_json::json!({"code":"InternalError","message":"boom"})
    );
    assert_eq!(replies[2]["status"], 503);
    assert_eq!(replies[2]["body"], "try later");
    assert_eq!(replies[3]["status"], 404);
    assert_eq!(replies[3]["body"]["code"], "NotFound.File");
    assert_eq!(upstream.count(), 4, "error statuses are not retried");
}

/// Proves an upstream body over `max_item_response_bytes` (declared by Content-Length or
/// chunked) gives that item 502 `UpstreamResponseTooLarge`; a body at the limit is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upstream_body_is_502() {
    let upstream = Upstream::with_handler(|req| match req.query.as_deref() {
        Some("i=0") => Reply::text(200, &"a".repeat(1000)),
        Some("i=1") => Reply::text(200, &"b".repeat(5000)),
        Some("i=2") => {
            let chunk = "c".repeat(700);
            let body = format!("2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n");
            Reply::bytes(200, "text/plain", body.as_bytes())
                .with_header("Transfer-Encoding", "chunked")
        }
        _ => Reply::json(200, r#"{"small":true}"#),
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_item_response_bytes = 1000")
        .start()
        .await;

    let resp = post_items(&gate, 4).await;

    let replies = responses(&resp);
    assert_eq!(replies[0]["status"], 200);
    assert_eq!(replies[0]["body"].as_str().map(str::len), Some(1000));
    assert_item_error(&replies[1], 502, "UpstreamResponseTooLarge");
    assert_item_error(&replies[2], 502, "UpstreamResponseTooLarge");
    assert_eq!(replies[3]["status"], 200);
    assert_eq!(replies[3]["body"]["small"], true);
    assert!(
        !resp.body_str().contains("bbbbbbbbbb") && !resp.body_str().contains("cccccccccc"),
        "oversized bodies must not be relayed"
    );
}

/// Proves a client that disconnects mid-batch cancels the batch: children not yet started
/// are never sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_remaining_items() {
    let upstream = slow_upstream(300).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 1")
        .start()
        .await;

    let conn = send_unread(&gate, 10).await;
    common::eventually(Duration::from_secs(5), "the batch started", || {
        upstream.count() >= 1
    })
    .await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let seen = upstream.count();
    assert!(
        seen <= 2,
        "the upstream saw {seen} children start after the client left (at most 2 expected)"
    );
}

/// Proves the gate stays usable after a disconnect-cancelled batch: a new batch is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_serves_after_cancelled_batch() {
    let upstream = slow_upstream(200).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 1")
        .route("concurrency = 1")
        .start()
        .await;
    let conn = send_unread(&gate, 10).await;
    common::eventually(Duration::from_secs(5), "the batch started", || {
        upstream.count() >= 1
    })
    .await;
    drop(conn);
    // The item already sent runs to its end in the background, then frees its permit.
    let admin = gate.admin;
    common::eventually_async(Duration::from_secs(5), "no item in flight", || async {
        common::prom::scrape(admin)
            .await
            .sum("batchgate_items_in_flight", &[])
            == 0.0
    })
    .await;

    // With max_in_flight = 1 a leaked permit would block this batch until the deadline.
    let started = Instant::now();
    let resp = post_items(&gate, 2).await;
    let replies = responses(&resp);
    assert_all_ok(&replies);
    assert_eq!(by_id(&replies, "item-1")["status"], 200);
    assert!(started.elapsed() < Duration::from_millis(2000));
}

/// `max_reply_bytes` bounds the reply as encoded: text full of control characters is six
/// times larger once escaped, and binary 4/3 once base64-encoded, so such bodies are charged
/// by what they become. A 1.2 kB batch once made a 100 MB reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_budget_counts_encoded_bytes() {
    // 100 kB of \u0001 (600 kB escaped) and 100 kB of binary (133 kB as base64) per item.
    let upstream = Upstream::with_handler(|req| {
        if req.target.contains("bin") {
            Reply::bytes(200, "application/octet-stream", &[0xff; 100_000])
        } else {
            Reply::bytes(200, "text/plain", &[0x01; 100_000])
        }
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_reply_bytes = 1000000")
        .route("max_item_response_bytes = 200000")
        .start()
        .await;
    let items: Vec<Value> = (0..10)
        .map(|i| item(&i.to_string(), "GET", &format!("/file/text{i}")))
        .chain((0..10).map(|i| item(&format!("b{i}"), "GET", &format!("/file/bin{i}"))))
        .collect();
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    assert!(
        resp.body.len() <= 1_000_000 + 20 * 256,
        "the reply is {} bytes, over max_reply_bytes plus per-item framing",
        resp.body.len()
    );
    let replies = responses(&resp);
    let sent = replies.iter().filter(|r| r["status"] == 200).count();
    let dropped = replies
        .iter()
        .filter(|r| r["body"]["code"] == "ReplyTooLarge")
        .count();
    assert_eq!(sent + dropped, 20);
    // One escaped text (600 kB) fits, a second does not; base64 bodies (133 kB) fill the rest.
    assert!(sent >= 2 && dropped >= 9, "{sent} sent, {dropped} dropped");
}

/// A `Content-Length: N, N` list is a body like a plain `N`: the media type is checked (415)
/// and a declared size over `max_body_bytes` is refused before reading (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_lists_are_checked_like_lengths() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_body_bytes = 1000")
        .start()
        .await;
    let wrong_type = b"POST /v2/batch HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\n{}";
    let resp = client::send_raw(gate.addr, wrong_type)
        .await
        .expect("reply");
    assert_eq!(resp.status, 415, "{}", String::from_utf8_lossy(&resp.body));
    let too_big = b"POST /v2/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000, 5000\r\nConnection: close\r\n\r\n";
    let resp = client::send_raw(gate.addr, too_big).await.expect("reply");
    assert_eq!(resp.status, 413, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(upstream.count(), 0);
}

/// A timeout is a timeout wherever it fires: an upstream `read_timeout` shorter than the
/// route's `item_timeout` gives the item 504 `GatewayTimeout`, not a 502 connection failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_read_timeout_is_a_timeout() {
    let upstream = slow_upstream(600).await;
    let text = GateConfig::new(upstream.addr)
        .route("item_timeout = \"10s\"")
        .toml()
        .replace(
            "connect_timeout = \"1s\"\n",
            "connect_timeout = \"1s\"\nread_timeout = \"200ms\"\n",
        );
    let gate = common::gate::start(&text).await;
    let started = Instant::now();
    let resp = post_items(&gate, 2).await;
    let replies = responses(&resp);
    assert_all_item_errors(&replies, 2, 504, "GatewayTimeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the read timeout fired, not the item timeout"
    );
}

/// With `server.item_log`, each item gets one line with its final outcome: an answer dropped
/// for the reply budget is logged as the client got it (502, `upstream_error`), not as the
/// 200 the upstream sent, and a refused item has its line too, without a duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_lines_carry_the_final_outcome() {
    let upstream = Upstream::with_handler(|req| {
        if req.target.contains("big") {
            Reply::bytes(200, "text/plain", &[b'a'; 5_000])
        } else {
            Reply::bytes(200, "text/plain", b"small")
        }
    })
    .await;
    let config = GateConfig::new(upstream.addr)
        .server("item_log = true")
        .route("max_reply_bytes = 3000")
        .route("concurrency = 1");
    let gate =
        common::gate::start_with_env(&config.toml(), &[("RUST_LOG", "warn,batchgate::item=info")])
            .await;
    let items = vec![
        item("small", "GET", "/small"),
        item("big", "GET", "/big"),
        item("refused", "TRACE", "/small"),
    ];
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let replies = responses(&resp);
    assert_eq!(by_id(&replies, "big")["body"]["code"], "ReplyTooLarge");
    let request_id = resp.header("x-request-id").unwrap_or("?").to_string();
    let log = gate.stderr_until("index=2", Duration::from_secs(5)).await;
    let line = |index: usize| {
        log.lines()
            .find(|l| l.contains(&request_id) && l.contains(&format!("index={index} ")))
            .unwrap_or_else(|| panic!("no item line {index} for {request_id}: {log}"))
            .to_string()
    };
    let (small, big, refused) = (line(0), line(1), line(2));
    assert!(
        small.contains("status=200") && small.contains(r#"outcome="2xx""#),
        "{small}"
    );
    assert!(small.contains("duration_ms="), "{small}");
    assert!(
        big.contains("status=502") && big.contains(r#"outcome="upstream_error""#),
        "{big}"
    );
    assert!(refused.contains(r#"outcome="rejected""#), "{refused}");
    assert!(!refused.contains("duration_ms="), "{refused}");
}

/// With `server.access_log`, each pass-through request gets one line (method, path without its
/// query, status, client, upstream address); batch lines carry the client's address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_has_an_access_log_and_batch_lines_name_the_client() {
    let upstream = Upstream::with_handler(|_req| Reply::bytes(201, "text/plain", b"made")).await;
    let config = GateConfig::new(upstream.addr).server("access_log = true");
    let gate = common::gate::start_with_env(
        &config.toml(),
        &[(
            "RUST_LOG",
            "warn,batchgate::access=info,batchgate::batch=info",
        )],
    )
    .await;
    let resp = client::request(gate.addr, "PUT", "/things/7?token=secret", &[], b"x").await;
    assert_eq!(resp.status, 201);
    let log = gate
        .stderr_until("pass-through", Duration::from_secs(5))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("pass-through"))
        .expect("an access line");
    for field in [
        "method=PUT",
        "path=/things/7",
        "status=201",
        "client=127.0.0.1:",
        &format!("upstream={}", upstream.addr),
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    assert!(
        !line.contains("secret"),
        "queries stay out of the log: {line}"
    );
    let items = vec![item("a", "GET", "/a")];
    client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let log = gate
        .stderr_until("INFO batchgate::batch", Duration::from_secs(5))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("batchgate::batch"))
        .unwrap_or_else(|| panic!("a batch line: {log}"));
    assert!(line.contains("client=127.0.0.1:"), "{line}");
}
