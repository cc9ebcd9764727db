//! Admission control under overload: a full queue, a client over its share and a full memory
//! budget are refused at once (503 / 429, `Retry-After`, the route's error format, counted,
//! nothing sent upstream), a light client is not held behind a capped flood, and refusals
//! stop as soon as the load drops.

use crate::common;

use common::batch::{assert_rejected, batch, item, item_with_body, responses, BATCH_PATH};
use common::client::{self, Response};
use common::config::GateConfig;
use common::gate::Gate;
use common::prom::scrape;
use common::upstream::{Reply, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| item(&format!("{i}"), "POST", &format!("/file/get?i={i}")))
        .collect()
}

async fn slow_upstream(ms: u64) -> Upstream {
    Upstream::with_handler(move |_| Reply::json(200, "{}").with_delay(ms)).await
}

async fn post_as(gate: &Gate, key: &str, body: &str) -> Response {
    let headers = [("content-type", "application/json"), ("x-api-key", key)];
    client::request(gate.addr, "POST", BATCH_PATH, &headers, body.as_bytes()).await
}

/// Waits until `n` items of the batches sent so far are at the upstream: their batch was
/// admitted and holds its place.
async fn at_upstream(upstream: &Upstream, n: usize) {
    common::eventually(Duration::from_secs(5), "items at the upstream", || {
        upstream.in_flight() >= n
    })
    .await;
}

/// Waits until the admission's gauge `name` satisfies `ok`.
async fn gauge_until(gate: &Gate, name: &str, ok: impl Fn(f64) -> bool) {
    let admin = gate.admin;
    common::eventually_async(Duration::from_secs(5), name, || async {
        ok(scrape(admin).await.value(name, &[]))
    })
    .await;
}

fn retry_after(reply: &Response) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.body_str()))
}

/// Items beyond `max_in_flight` queue up to `max_queued_items`; a batch that does not fit is
/// refused at once with 503 and `Retry-After` in the envelope's format, counted as
/// `queue_full`, and none of its items is sent. Once the queue drains, batches are admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_recovers() {
    let upstream = slow_upstream(400).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 2")
        .server("[server.admission]")
        .server("max_queued_items = 3")
        .route("concurrency = 10")
        .start()
        .await;
    let first = tokio::spawn({
        let addr = gate.addr;
        async move { client::post_json(addr, BATCH_PATH, &batch(items(5))).await }
    });
    at_upstream(&upstream, 2).await;
    let started = Instant::now();
    let refused = client::post_json(gate.addr, BATCH_PATH, &batch(items(1))).await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_rejected(&refused, 503, "ServiceUnavailable.QueueFull");
    assert!(retry_after(&refused) >= 1);
    let first = first.await.expect("first batch");
    assert_eq!(responses(&first).len(), 5);
    assert_eq!(upstream.count(), 5, "the refused batch sent nothing");
    let again = client::post_json(gate.addr, BATCH_PATH, &batch(items(1))).await;
    assert_eq!(again.status, 200, "{}", again.body_str());
    let metrics = scrape(gate.admin).await;
    let refusals = metrics.sum("batchgate_rejections_total", &[("reason", "queue_full")]);
    assert_eq!(refusals, 1.0, "{}", metrics.text);
}

/// With `per_client_items` keyed by an API key header, a client over its share gets 429 while
/// another client is admitted and served within about two item latencies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_share_gets_429_and_others_are_served() {
    let upstream = slow_upstream(300).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 4")
        .server("[server.admission]")
        .server("per_client_items = 4")
        .server("client_key = \"header:x-api-key\"")
        .route("concurrency = 10")
        .start()
        .await;
    let flood = tokio::spawn({
        let addr = gate.addr;
        let body = batch(items(4));
        async move {
            let headers = [("content-type", "application/json"), ("x-api-key", "flood")];
            client::request(addr, "POST", BATCH_PATH, &headers, body.as_bytes()).await
        }
    });
    at_upstream(&upstream, 4).await;
    let over = post_as(&gate, "flood", &batch(items(1))).await;
    assert_rejected(&over, 429, "TooManyRequests");
    assert!(retry_after(&over) >= 1);
    let started = Instant::now();
    let light = post_as(&gate, "light", &batch(items(2))).await;
    let waited = started.elapsed();
    assert_eq!(light.status, 200, "{}", light.body_str());
    assert!(responses(&light).iter().all(|r| r["status"] == 200));
    // Behind at most the flood's four items in flight: one item latency of waiting.
    assert!(
        waited < Duration::from_millis(900),
        "light client waited {waited:?}"
    );
    assert_eq!(flood.await.expect("flood").status, 200);
}

/// Held batch bodies are capped by `max_held_bytes`: a second large batch while the first
/// runs is refused with 503 `memory`, and admitted again once the first is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_beyond_the_memory_budget_are_refused() {
    let upstream = slow_upstream(400).await;
    let gate = GateConfig::new(upstream.addr)
        .server("[server.admission]")
        .server("max_held_bytes = 2048")
        .start()
        .await;
    let padding = "x".repeat(1200);
    let body = batch(vec![item_with_body(
        "1",
        "POST",
        "/file/get",
        json!({"pad": padding}),
    )]);
    let first = tokio::spawn({
        let (addr, body) = (gate.addr, body.clone());
        async move { client::post_json(addr, BATCH_PATH, &body).await }
    });
    at_upstream(&upstream, 1).await;
    let refused = client::post_json(gate.addr, BATCH_PATH, &body).await;
    assert_rejected(&refused, 503, "ServiceUnavailable.Memory");
    assert_eq!(first.await.expect("first").status, 200);
    let again = client::post_json(gate.addr, BATCH_PATH, &body).await;
    assert_eq!(again.status, 200, "{}", again.body_str());
}

/// JSON-RPC refuses an overloaded batch with a server error object and HTTP 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_overload_is_a_server_error() {
    let upstream = slow_upstream(400).await;
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
max_in_flight = 1
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"

[server.admission]
max_queued_items = 1

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{}"]

[[routes]]
path = "/rpc"
dialect = "jsonrpc"
"#,
        upstream.addr
    );
    let gate = common::gate::start(&config).await;
    let call = |id: u32| json!({"jsonrpc": "2.0", "method": "m", "id": id});
    let first = tokio::spawn({
        let addr = gate.addr;
        let body = json!([call(1), call(2)]).to_string();
        async move { client::post_json(addr, "/rpc", &body).await }
    });
    at_upstream(&upstream, 1).await;
    let refused = client::post_json(gate.addr, "/rpc", &json!([call(3)]).to_string()).await;
    assert_eq!(refused.status, 503, "{}", refused.body_str());
    let json = refused.json();
    assert_eq!(json["error"]["code"], -32007, "{json}");
    assert_eq!(json["error"]["data"]["reason"], "queue_full", "{json}");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(first.await.expect("first").status, 200);
}

/// Without any per-client cap, permits go round-robin across clients (keyed here by the
/// route's own `client_key`): a light client's batch waits for at most one grant to the
/// flooding client per item, not behind every batch the flood has queued. FIFO would put each
/// of the light batch's items behind all six flood batches' waiters (about 0.8 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_take_turns_between_a_flood_and_a_light_client() {
    let upstream = slow_upstream(100).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 4")
        .route("concurrency = 8")
        .route("client_key = \"header:x-api-key\"")
        .start()
        .await;
    let flood: Vec<_> = (0..6)
        .map(|_| {
            let addr = gate.addr;
            let body = batch(items(8));
            tokio::spawn(async move {
                let headers = [("content-type", "application/json"), ("x-api-key", "flood")];
                client::request(addr, "POST", BATCH_PATH, &headers, body.as_bytes()).await
            })
        })
        .collect();
    // Every flood batch admitted: 4 of its 48 items in flight, the rest queued.
    gauge_until(&gate, "batchgate_admission_queued_items", |q| q >= 44.0).await;
    let started = Instant::now();
    let light = post_as(&gate, "light", &batch(items(4))).await;
    let waited = started.elapsed();
    assert_eq!(light.status, 200, "{}", light.body_str());
    assert!(responses(&light).iter().all(|r| r["status"] == 200));
    // Four items, each granted within two grants (one to the flood, one to itself) of four
    // permits turning over every 100 ms: about 300 ms, bounded here at 600.
    assert!(
        waited < Duration::from_millis(600),
        "light client waited {waited:?}"
    );
    let mut flood_busy = 0;
    for batch in flood {
        let reply = batch.await.expect("flood batch");
        assert_eq!(reply.status, 200, "{}", reply.body_str());
        flood_busy += responses(&reply).len();
    }
    assert_eq!(flood_busy, 48, "the flood is served in full, only later");
}

/// A gate whose one permit and one queue place are taken (by a two-item batch to an upstream
/// that answers after a second, still running), and that batch.
async fn full_queue() -> (Upstream, Gate, tokio::task::JoinHandle<Response>) {
    let upstream = slow_upstream(1000).await;
    let gate = GateConfig::new(upstream.addr)
        .server("max_in_flight = 1")
        .server("[server.admission]")
        .server("max_queued_items = 1")
        .route("concurrency = 10")
        .start()
        .await;
    let first = tokio::spawn({
        let addr = gate.addr;
        async move { client::post_json(addr, BATCH_PATH, &batch(items(2))).await }
    });
    at_upstream(&upstream, 1).await;
    (upstream, gate, first)
}

/// When no batch could be admitted (here: the queue is full), a batch is refused from its
/// head: the 503 comes at once although its body never arrives, and the connection is then
/// closed (its unread body cannot be taken for a next request). Without this, every refusal
/// under a burst first reads and decodes a body it throws away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_admitted_is_refused_from_its_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, gate, first) = full_queue().await;
    let mut socket = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"requests\":["
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_millis(700), socket.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        read.is_ok(),
        "no answer and no close without the body: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("ServiceUnavailable.QueueFull"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(upstream.count(), 2, "the refused batch sent nothing");
}

/// Responses kept for a running batch's reply count against `max_held_bytes` like bodies:
/// while one batch holds a large answer and waits for its slow item, a batch whose body alone
/// would fit is refused with 503 `memory`; once the reply is written it is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_responses_count_against_the_memory_budget() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1900));
    let upstream = Upstream::with_handler(move |req| {
        if req.path.ends_with("/big") {
            Reply::json(200, &big)
        } else {
            Reply::json(200, "{}").with_delay(500)
        }
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .server("[server.admission]")
        .server("max_held_bytes = 2048")
        .start()
        .await;
    let first = tokio::spawn({
        let addr = gate.addr;
        let body = batch(vec![
            item("big", "POST", "/file/big"),
            item("slow", "POST", "/file/slow"),
        ]);
        async move { client::post_json(addr, BATCH_PATH, &body).await }
    });
    // The big answer is kept for the reply while the slow item runs.
    gauge_until(&gate, "batchgate_admission_held_bytes", |held| {
        held >= 1900.0
    })
    .await;
    let small = batch(items(1));
    let refused = client::post_json(gate.addr, BATCH_PATH, &small).await;
    assert_rejected(&refused, 503, "ServiceUnavailable.Memory");
    // The gauge follows the kept answer, though no batch was admitted since it came.
    let held = scrape(gate.admin)
        .await
        .value("batchgate_admission_held_bytes", &[]);
    assert!(held >= 1900.0, "held bytes gauge {held}");
    let first = first.await.expect("first");
    assert_eq!(first.status, 200, "{}", first.body_str());
    let again = client::post_json(gate.addr, BATCH_PATH, &small).await;
    assert_eq!(again.status, 200, "{}", again.body_str());
}

/// `client_key = "forwarded"` tells clients apart by the last `X-Forwarded-For` hop (what
/// the load balancer in front appended): hops a client forged before it do not make a new
/// client, and a different last hop is a different client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_key_counts_by_the_last_hop() {
    let upstream = slow_upstream(400).await;
    let gate = GateConfig::new(upstream.addr)
        .server("[server.admission]")
        .server("per_client_items = 2")
        .server("client_key = \"forwarded\"")
        .start()
        .await;
    let post_from = |xff: &'static str, n: usize| {
        let addr = gate.addr;
        let body = batch(items(n));
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("x-forwarded-for", xff),
            ];
            client::request(addr, "POST", BATCH_PATH, &headers, body.as_bytes()).await
        }
    };
    let first = tokio::spawn(post_from("198.51.100.7", 2));
    at_upstream(&upstream, 2).await;
    let forged = post_from("203.0.113.1, 198.51.100.7", 1).await;
    assert_rejected(&forged, 429, "TooManyRequests");
    let other = post_from("198.51.100.7, 192.0.2.9", 1).await;
    assert_eq!(other.status, 200, "{}", other.body_str());
    assert_eq!(first.await.expect("first").status, 200);
}

/// Bodies still being read count against `max_held_bytes` too: while one client trickles a
/// batch body it never finishes, another whose body would take the total over the budget is
/// refused with 503 `memory`; once the first connection is gone, it is admitted. Memory for
/// half-sent bodies is so bounded by configuration, whatever the number of connections and
/// HTTP/2 streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_read_count_against_the_memory_budget() {
    use tokio::io::AsyncWriteExt;
    let upstream = slow_upstream(0).await;
    let gate = GateConfig::new(upstream.addr)
        .server("[server.admission]")
        .server("max_held_bytes = 2048")
        .start()
        .await;
    let mut stalled = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let body = format!("{{\"requests\":[{}", " ".repeat(1500));
    let head = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1600\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled.write_all(body.as_bytes()).await.expect("body");
    // The half-read body is held.
    gauge_until(&gate, "batchgate_admission_held_bytes", |held| {
        held >= 1500.0
    })
    .await;
    let padded = batch(vec![item_with_body(
        "1",
        "POST",
        "/file/get",
        json!({"pad": "x".repeat(700)}),
    )]);
    let refused = client::post_json(gate.addr, BATCH_PATH, &padded).await;
    assert_rejected(&refused, 503, "ServiceUnavailable.Memory");
    drop(stalled);
    gauge_until(&gate, "batchgate_admission_held_bytes", |held| {
        held < 1500.0
    })
    .await;
    let again = client::post_json(gate.addr, BATCH_PATH, &padded).await;
    assert_eq!(again.status, 200, "{}", again.body_str());
}

/// A small batch refused from its head keeps its kept-alive connection: the 503 comes first,
/// the body is then drained unread (never decoded, nothing sent), and the same connection
/// carries the client's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_batch_refused_from_its_head_keeps_the_connection() {
    let (upstream, gate, first) = full_queue().await;
    let mut conn = common::client::Conn::connect(gate.addr).await;
    let body = batch(items(1));
    let headers = [("content-type", "application/json")];
    let refused = conn
        .request("POST", BATCH_PATH, &headers, body.as_bytes())
        .await;
    assert_rejected(&refused, 503, "ServiceUnavailable.QueueFull");
    let again = conn.request("GET", "/v2/hello", &[], b"").await;
    assert_eq!(
        again.status,
        200,
        "the connection carried on: {}",
        again.body_str()
    );
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(
        upstream.count(),
        3,
        "two items and the pass-through, nothing of the refused batch"
    );
}
