//! Upstream and client behaviours at the edges of HTTP: informational 1xx answers, HEAD with a
//! large declared length, clients that leave with a reset, forged identity headers on
//! pass-through.

use crate::common;

use common::config::GateConfig;
use common::upstream::{Reply, Upstream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with `103 Early Hints` and then `200 {}`.
async fn early_hints_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // One request per connection is enough here: answer once the head is in.
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let reply = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}";
                        let _ = socket.write_all(reply).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A 1xx informational answer before the real one is skipped: the item gets the final 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_are_skipped() {
    let upstream = early_hints_upstream().await;
    let gate = GateConfig::new(upstream).start().await;
    let reply = common::client::post_json(
        gate.addr,
        "/v2/batch",
        r#"{"requests":[{"id":"a","method":"GET","url":"/x"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let item = &reply.json()["responses"][0];
    assert_eq!(item["status"], 200, "{item}");
    assert_eq!(item["body"], serde_json::json!({"ok": true}));
    assert!(!gate.stderr().contains("panicked"), "{}", gate.stderr());
}

/// A HEAD item whose upstream declares a body larger than `max_item_response_bytes` is not
/// a 502: HEAD carries no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_items_ignore_the_declared_length() {
    let upstream =
        Upstream::with_handler(|_| Reply::new(200).with_header("Content-Length", "5000000")).await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_item_response_bytes = 1000")
        .start()
        .await;
    let reply = common::client::post_json(
        gate.addr,
        "/v2/batch",
        r#"{"requests":[{"id":"h","method":"HEAD","url":"/big"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert_eq!(
        reply.json()["responses"][0]["status"],
        200,
        "{}",
        reply.body_str()
    );
    assert_eq!(upstream.requests()[0].method, "HEAD");
}

/// A client that leaves with a TCP reset (not a FIN) cancels its batch: queued items are
/// never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_client_cancels_its_batch() {
    let upstream = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(300)).await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 1")
        .start()
        .await;
    let items: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"id":"{i}","method":"GET","url":"/x?i={i}"}}"#))
        .collect();
    let body = format!(r#"{{"requests":[{}]}}"#, items.join(","));
    let raw = format!(
        "POST /v2/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(gate.addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    common::eventually(Duration::from_secs(5), "the batch started", || {
        upstream.count() >= 1
    })
    .await;
    // SO_LINGER 0: closing sends RST instead of FIN.
    stream.set_zero_linger().expect("linger");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = upstream.count();
    assert!(
        started <= 3,
        "{started} items started after the client reset"
    );
}

/// On pass-through the client cannot forge the identity headers the upstream trusts on batch
/// items, in any spelling a framework folds into the same name: X-Forwarded-For is the
/// client address, X-Request-Id the proxy's, X-Real-IP and friends are dropped, other headers
/// pass unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_does_not_forward_forged_identity_headers() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let reply = common::client::request(
        gate.addr,
        "GET",
        "/v2/echo",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("True-Client-IP", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X_Real_IP", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("Client-IP", "6.6.6.6"),
            ("X-Originating-IP", "6.6.6.6"),
            ("Fastly-Client-IP", "6.6.6.6"),
            ("X-Envoy-External-Address", "6.6.6.6"),
            ("X-Host", "evil.example"),
            ("X_Original_Host", "evil.example"),
            ("X_Custom_Token", "kept"),
            ("X-Request-Id", "client-trace-1"),
            ("X-Custom", "kept"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    for dropped in [
        "x-real-ip",
        "true-client-ip",
        "forwarded",
        "x-forwarded-proto",
        "x_real_ip",
        "x_forwarded_for",
        "client-ip",
        "x-originating-ip",
        "fastly-client-ip",
        "x-envoy-external-address",
        "x-host",
        "x_original_host",
    ] {
        assert_eq!(seen.header(dropped), None, "{dropped}");
    }
    // A sane client request id is kept (the same rule as for batches).
    assert_eq!(seen.header_all("x-request-id"), ["client-trace-1"]);
    assert_eq!(seen.header("x_custom_token"), Some("kept"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
}

/// An HTTP/1.0 client gets a chunked upstream body without chunk framing (it cannot read
/// it): close-delimited, and the connection ends after the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_no_chunked_framing() {
    let upstream = Upstream::with_handler(|_| {
        Reply::new(200)
            .with_header("Transfer-Encoding", "chunked")
            .with_body(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let reply = common::client::send_raw(gate.addr, b"GET /chunked HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("transfer-encoding"),
        None,
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.body_str(), "hello world");
}

/// The admin listener closes an HTTP/1.0 health check after the answer (checkers read until
/// close) and answers pipelined HTTP/1.1 probes in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_http10_and_pipelined_probes() {
    let upstream = Upstream::echo().await;
    let mut gate = GateConfig::new(upstream.addr).start().await;
    gate.wait_admin().await;
    let mut conn = common::client::Conn::connect(gate.admin).await;
    let reply = conn.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200);
    assert!(
        conn.is_closed(Duration::from_secs(2)).await,
        "HTTP/1.0 connection left open"
    );

    let mut conn = common::client::Conn::connect(gate.admin).await;
    conn.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(conn.read_response().await.status, 200);
    let metrics = conn.read_response().await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body_str().contains("batchgate_build_info"));
}

/// Pass-through framing that could poison a pooled upstream connection is fixed on the way:
/// a `Content-Length: N, N` list goes upstream as one `N` (pingora framed the body by it),
/// and a HEAD carries `Connection: close`, so a late body the upstream might still send after
/// its bodiless answer cannot be read as the next request's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_framing_is_normalised() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let raw = b"POST /v2/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello";
    let reply = common::client::send_raw(gate.addr, raw)
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    let head = b"HEAD /v2/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = common::client::send_raw(gate.addr, head)
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen[0].header_all("content-length"), ["5"]);
    assert_eq!(seen[0].body_str(), "hello");
    assert_eq!(seen[1].method, "HEAD");
    assert_eq!(seen[1].header("connection"), Some("close"));
}
