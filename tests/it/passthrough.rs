//! Everything that is not a batch: pass-through to the default upstream unchanged, the 404
//! without a default upstream, keep-alive between batches and `Expect: 100-continue`.

use crate::common;

use std::time::Duration;

use common::batch::{assert_rejected, batch, item, responses, BATCH_PATH};
use common::client::{self, Conn};
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Proves a non-batch request passes through with method, path, query, headers and body
/// unchanged, and the upstream's status, headers and body come back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_keeps_request_and_response() {
    let upstream = Upstream::with_handler(|_| {
        Reply::bytes(
            201,
            "application/vnd.thing+json",
            br#"{"id":7, "created" : true}"#,
        )
        .with_header("X-Thing-Version", "42")
        .with_header("Location", "/v2/things/7")
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let body = br#"{"name" : "seven",  "tags":[ ]}"#;

    let resp = client::request(
        gate.addr,
        "PUT",
        "/v2/things/7?x=1&y=%20z",
        &[
            ("Content-Type", "application/json"),
            ("X-Custom-Thing", "abc def"),
            ("Authorization", "Bearer pass"),
        ],
        body,
    )
    .await;

    let log = upstream.requests();
    assert_eq!(log.len(), 1);
    let req = &log[0];
    assert_eq!(req.method, "PUT");
    assert_eq!(req.target, "/v2/things/7?x=1&y=%20z");
    assert_eq!(req.header("x-custom-thing"), Some("abc def"));
    assert_eq!(req.header("authorization"), Some("Bearer pass"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.body, body);

    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("x-thing-version"), Some("42"));
    assert_eq!(resp.header("location"), Some("/v2/things/7"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/vnd.thing+json")
    );
    assert_eq!(resp.body, br#"{"id":7, "created" : true}"#);
}

/// Proves a GET that matches no batch route (including look-alikes of the batch path)
/// goes to the default upstream as is, and an upstream error status is relayed unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_route_match_passes_through() {
    let upstream = Upstream::with_handler(|req| {
        if req.path == "/v2/missing" {
            Reply::text(404, "no such thing")
        } else {
            Reply::text(200, &format!("hello {}", req.target))
        }
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;

    for target in [
        "/v2/hello",
        "/v2/hello?name=a%20b",
        "/v2/batchx",
        "/v2/batch/1",
    ] {
        let resp = client::get(gate.addr, target).await;
        assert_eq!(resp.status, 200, "{target}");
        assert_eq!(resp.body_str(), format!("hello {target}"));
    }
    let resp = client::get(gate.addr, "/v2/missing").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body_str(), "no such thing");

    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(
        seen,
        vec![
            "GET /v2/hello",
            "GET /v2/hello?name=a%20b",
            "GET /v2/batchx",
            "GET /v2/batch/1",
            "GET /v2/missing"
        ]
    );
}

/// Proves that with no default upstream a non-batch request gets a JSON 404 `NotFound`
/// and reaches no upstream, while the batch route still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_default_upstream_answers_404() {
    let api = Upstream::echo().await;
    let other = Upstream::echo().await;
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{api}"]

[upstreams.other]
addresses = ["{other}"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
upstream = "api"
"#,
        api = api.addr,
        other = other.addr,
    );
    let gate = gate::start(&config).await;

    let resp = client::get(gate.addr, "/v2/hello").await;
    assert_rejected(&resp, 404, "NotFound");
    let resp = client::request(
        gate.addr,
        "POST",
        "/v2/file/get",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_rejected(&resp, 404, "NotFound");
    assert_eq!(api.count() + other.count(), 0);

    let resp = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![item("1", "POST", "/file/get")]),
    )
    .await;
    assert_eq!(responses(&resp)[0]["status"], 200);
    assert_eq!(api.count(), 1);
    assert_eq!(other.count(), 0);
}

/// Proves two batches (and a pass-through call) on one keep-alive client connection are
/// all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_two_batches_on_one_connection() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];

    let first = batch(vec![
        item("a", "POST", "/file/get"),
        item("b", "POST", "/file/list"),
    ]);
    let resp = conn
        .request("POST", BATCH_PATH, &json, first.as_bytes())
        .await;
    let replies = responses(&resp);
    assert_eq!(replies[0]["id"], "a");
    assert_eq!(replies[1]["id"], "b");
    assert!(replies.iter().all(|r| r["status"] == 200));

    let second = batch(vec![item("c", "POST", "/file/get")]);
    let resp = conn
        .request("POST", BATCH_PATH, &json, second.as_bytes())
        .await;
    let replies = responses(&resp);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["id"], "c");
    assert_eq!(replies[0]["status"], 200);

    let resp = conn.request("GET", "/v2/hello", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/v2/hello");

    let third = batch(vec![item("d", "GET", "/file/get")]);
    let resp = conn
        .request("POST", BATCH_PATH, &json, third.as_bytes())
        .await;
    assert_eq!(responses(&resp)[0]["id"], "d");
    assert_eq!(upstream.count(), 5);
}

/// Proves `Expect: 100-continue` on a batch is answered with `100 Continue` before the body
/// is sent, and the batch is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_on_batch_is_answered() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let body = batch(vec![item("x", "POST", "/file/get")]);
    let head = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );

    let mut stream = TcpStream::connect(gate.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut buf = Vec::new();
    let interim = tokio::time::timeout(
        Duration::from_secs(5),
        common::client::read_head(&mut stream, &mut buf, 64 * 1024),
    )
    .await
    .expect("no 100 Continue within 5 s while holding the body back")
    .expect("read interim response")
    .expect("connection closed instead of 100 Continue");
    let interim_text = String::from_utf8_lossy(&buf[..interim]).to_string();
    assert!(
        interim_text.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {interim_text:?}"
    );
    assert_eq!(upstream.count(), 0);
    buf.drain(..interim);

    stream.write_all(body.as_bytes()).await.expect("write body");
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        common::client::read_response(&mut stream, &mut buf, false),
    )
    .await
    .expect("batch reply within 10 s")
    .expect("read batch reply");
    let replies = responses(&resp);
    assert_eq!(replies[0]["id"], "x");
    assert_eq!(replies[0]["status"], 200);
    assert_eq!(upstream.count(), 1);
}

/// Proves an oversized batch announced with `Expect: 100-continue` is refused with 413 at
/// once, without inviting the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_with_oversized_body_gets_413_without_continue() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_body_bytes = 1000")
        .start()
        .await;
    let head = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    );

    let mut stream = TcpStream::connect(gate.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut buf = Vec::new();
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        common::client::read_head(&mut stream, &mut buf, 64 * 1024),
    )
    .await
    .expect("an answer within 5 s without sending the body")
    .expect("read response head")
    .expect("connection closed without an answer");
    let first_text = String::from_utf8_lossy(&buf[..first]).to_string();
    assert!(
        !first_text.starts_with("HTTP/1.1 100"),
        "an oversized body must not be invited with 100 Continue"
    );
    // The head is still buffered; parse the whole response from it.
    let resp = common::client::read_response(&mut stream, &mut buf, false)
        .await
        .expect("read 413 response");
    assert_rejected(&resp, 413, "RequestEntityTooLarge");
    assert_eq!(upstream.count(), 0);
}

/// Proves a client that hangs up while its pass-through request waits for the upstream is
/// not logged as the proxy's error (pingora's "Fail to proxy: Downstream ..." ERROR line),
/// while an upstream failure still is, and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_not_an_error_line_but_a_failing_upstream_is() {
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/slow" => Reply::text(200, "late").with_delay(400),
        "/v2/abort" => Reply::abort(),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;

    let mut stream = TcpStream::connect(gate.addr).await.expect("connect");
    stream
        .write_all(b"GET /v2/slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    common::eventually(
        Duration::from_secs(5),
        "the request at the upstream",
        || upstream.count() == 1,
    )
    .await;
    drop(stream);
    // The upstream answers after 400 ms, to nobody.
    common::eventually(Duration::from_secs(5), "the upstream answered", || {
        upstream.in_flight() == 0
    })
    .await;
    assert_eq!(upstream.count(), 1, "the request reached the upstream once");

    let resp = client::get(gate.addr, "/v2/abort").await;
    assert_eq!(resp.status, 502);
    assert_eq!(client::get(gate.addr, "/v2/hello").await.status, 200);

    // pingora logs the failure after writing the 502.
    let stderr = gate
        .stderr_until("Fail to proxy", Duration::from_secs(5))
        .await;
    assert!(
        !stderr.contains("Downstream"),
        "the client's hang-up was logged as an error:\n{stderr}"
    );
    assert!(
        stderr.contains("Fail to proxy"),
        "the upstream failure was not logged:\n{stderr}"
    );
}
