//! Upstreams spoken to over cleartext HTTP/2 (`protocol = "h2c"`): batch items and
//! pass-through requests are multiplexed as streams over pooled connections.

use crate::common;

use common::h2c::{H2Upstream, H2_BODY};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{upstream}"]
protocol = "h2c"
max_h2_streams = 100

[[routes]]
path = "/v2/batch"
dialect = "envelope"
concurrency = 20
"#
    )
}

fn batch(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"id":"{i}","method":"POST","url":"/file/get","body":{{ "n" : {i} }}}}"#)
        })
        .collect();
    format!(r#"{{"requests":[{}]}}"#, items.join(","))
}

/// A batch over an h2c upstream: every item answered, sent as its own stream with its exact
/// body, with the headers HTTP/1.1 items keep, and later batches reuse the pooled connections
/// instead of opening new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_items_travel_as_h2_streams() {
    let upstream = H2Upstream::start(Duration::from_millis(20), true).await;
    let gate = common::gate::start(&config(upstream.addr)).await;
    for round in 0..3 {
        let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(20)).await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body_str());
        let json = reply.json();
        let responses = json["responses"].as_array().expect("responses");
        assert_eq!(responses.len(), 20);
        for (i, item) in responses.iter().enumerate() {
            assert_eq!(item["id"], serde_json::json!(i.to_string()));
            assert_eq!(item["status"], 200, "{item}");
            // One kept-header rule for every upstream protocol: the upstream's
            // Content-Length describes its message, not the item (as over HTTP/1.1).
            assert_eq!(
                item["headers"]["content-type"], "application/json",
                "{item}"
            );
            assert!(item["headers"].get("content-length").is_none(), "{item}");
            assert_eq!(
                item["body"],
                serde_json::from_slice::<serde_json::Value>(H2_BODY).expect("json")
            );
        }
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 60);
    assert!(seen
        .iter()
        .all(|r| r.method == "POST" && r.path == "/v2/file/get"));
    // The authority travels as `:authority` alone, never also as a `host` header.
    assert!(
        seen.iter()
            .all(|r| r.authority.is_some() && r.host_headers == 0),
        "{:?}",
        seen.first()
    );
    let mut bodies: Vec<String> = seen
        .iter()
        .take(20)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    assert!(bodies.contains(&r#"{ "n" : 7 }"#.to_string()), "{bodies:?}");
    let connections = upstream.connections.load(Ordering::Relaxed);
    assert!(
        connections <= 20,
        "60 items over h2c should share connections, saw {connections}"
    );
}

/// A request that is not a batch is proxied to an h2c upstream unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_to_h2c_upstream() {
    let upstream = H2Upstream::start(Duration::ZERO, true).await;
    let gate = common::gate::start(&config(upstream.addr)).await;
    let reply = common::client::get(gate.addr, "/v2/things/7?x=1").await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    assert_eq!(reply.body, H2_BODY);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v2/things/7?x=1");
    assert_eq!(seen[0].method, "GET");
}

/// Active health checks speak the upstream's protocol: over h2c the check is a `GET` stream
/// on the items' HTTP/2 session, and it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_h2c_to_an_h2c_upstream() {
    let upstream = H2Upstream::start(Duration::ZERO, true).await;
    let text = config(upstream.addr).replace(
        "max_h2_streams = 100\n",
        "max_h2_streams = 100\n[upstreams.api.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
    );
    let gate = common::gate::start(&text).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = common::prom::scrape(gate.admin).await;
        let passed = m.sum(
            "batchgate_upstream_health_checks_total",
            &[("upstream", "api"), ("result", "pass")],
        );
        if passed >= 2.0 {
            assert_eq!(
                m.sum(
                    "batchgate_upstream_health_checks_total",
                    &[("result", "fail")]
                ),
                0.0
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", m.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/healthz")
        .collect();
    assert!(checks.len() >= 2 && checks.iter().all(|r| r.method == "GET"));
}

/// A burst of items on a cold pool shares a few connections: 300 items of three batches arrive
/// at once, and the streams of one connection are used (up to `max_h2_streams`) before the
/// next connection is opened, instead of each item finding the pool empty and connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_items_shares_a_few_connections() {
    let upstream = H2Upstream::start(Duration::from_millis(50), false).await;
    let config = config(upstream.addr).replace("concurrency = 20", "concurrency = 100");
    let gate = common::gate::start(&config).await;
    for round in 0..3 {
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let addr = gate.addr;
                tokio::spawn(async move {
                    let reply = common::client::post_json(addr, "/v2/batch", &batch(100)).await;
                    assert_eq!(reply.status, 200, "round {round}: {}", reply.body_str());
                    let json = reply.json();
                    let responses = json["responses"].as_array().expect("responses").clone();
                    assert!(responses.iter().all(|r| r["status"] == 200), "{json}");
                })
            })
            .collect();
        for client in clients {
            client.await.expect("client");
        }
    }
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 900);
    let connections = upstream.connections.load(Ordering::Relaxed);
    // 300 streams at once need 3 connections of 100; a few more when streams of a finishing
    // batch and a starting one overlap.
    assert!(
        connections <= 8,
        "900 items, at most 300 at once, over {connections} connections"
    );
}

/// An h2c address whose accept queue is full (SYNs dropped, so connects time out): the first
/// item's connect fails after `connect_timeout`, and the items queued behind it for a
/// connection fail with it instead of each waiting out a connect timeout of its own in turn
/// (50 x 300 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_queued_behind_a_failed_connect_fail_with_it() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue; nothing ever accepts.
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(s);
        }
    }
    let config = config(addr)
        .replace("concurrency = 20", "concurrency = 100")
        .replace(
            "protocol = \"h2c\"",
            "protocol = \"h2c\"\nconnect_timeout = \"300ms\"",
        );
    let gate = common::gate::start(&config).await;
    let started = std::time::Instant::now();
    let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(50)).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let json = reply.json();
    let responses = json["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 50);
    for item in responses {
        assert_eq!(item["status"], 502, "{item}");
        assert_eq!(item["body"]["code"], "UpstreamConnectFailed", "{item}");
    }
    assert!(
        elapsed < Duration::from_secs(3),
        "50 items behind one failed connect took {elapsed:?}"
    );
    drop(held);
}

/// A connection found idle for longer than `idle_timeout` is closed and not used again; within
/// it, the next batch reuses the open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_are_closed_after_idle_timeout() {
    let upstream = H2Upstream::start(Duration::ZERO, false).await;
    let config = config(upstream.addr)
        .replace(
            "protocol = \"h2c\"",
            "protocol = \"h2c\"\nidle_timeout = \"300ms\"",
        )
        .replace("concurrency = 20", "concurrency = 1");
    let gate = common::gate::start(&config).await;
    let send = || async {
        let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(3)).await;
        assert_eq!(reply.status, 200, "{}", reply.body_str());
    };
    send().await;
    send().await;
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        1,
        "reused within idle_timeout"
    );
    // The first look finds it idle; a later one past idle_timeout closes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    send().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    send().await;
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        2,
        "a connection idle past idle_timeout is replaced"
    );
}

/// An upstream that answers before it has read the item's body and then resets the stream
/// (RFC 9113 section 8.1; nginx does so for every location that does not read the body):
/// the body write fails, but the answer is the item's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_the_whole_body_is_the_items_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    // The body is never read: its flow-control window stays shut.
                    let _unread = request.into_body();
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(bytes::Bytes::from_static(H2_BODY), true);
                    }
                }
            });
        }
    });
    let gate = common::gate::start(&config(addr)).await;
    // 200 KiB per item: more than the 64 KiB stream window the upstream never opens.
    let filler = "x".repeat(200 * 1024);
    let items: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"id":"{i}","method":"POST","url":"/file/get","body":{{"pad":"{filler}"}}}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"requests":[{}]}}"#, items.join(","));
    let reply = common::client::post_json(gate.addr, "/v2/batch", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let json = reply.json();
    for item in json["responses"].as_array().expect("responses") {
        assert_eq!(item["status"], 200, "{item}");
        assert_eq!(
            item["body"],
            serde_json::from_slice::<serde_json::Value>(H2_BODY).expect("json")
        );
    }
}

/// An h2c upstream that answers one stream per connection, then sends a graceful GOAWAY
/// (nginx does it after `keepalive_requests`; some servers after every answer): the streams
/// it refused unprocessed go to the next connection until each is answered, so every item of
/// a 16-item batch succeeds (it used to fail 14 of 16 after one retry), and no item is sent
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_by_a_graceful_goaway_go_to_a_new_connection() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answered = Arc::new(AtomicU64::new(0));
    let a = answered.clone();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let a = a.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                let Some(Ok((request, mut respond))) = conn.accept().await else {
                    return;
                };
                conn.graceful_shutdown();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = send.send_data(bytes::Bytes::from_static(H2_BODY), true);
                    }
                });
                // Drive the connection until it has closed: refused streams are reset here.
                while let Some(Ok((_, mut refused))) = conn.accept().await {
                    refused.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let gate = common::gate::start(&config(addr)).await;
    let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(16)).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let json = reply.json();
    let responses = json["responses"].as_array().expect("responses");
    let failed: Vec<_> = responses.iter().filter(|r| r["status"] != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        answered.load(Ordering::Relaxed),
        16,
        "each item answered once"
    );
    server.abort();
}
