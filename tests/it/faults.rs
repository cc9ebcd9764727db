//! Fault injection: a scripted upstream that controls every byte and pause, and scripted
//! clients that go idle, trickle, half-close and reset. Each test asserts what the item or
//! connection becomes, that the gate's memory stays bounded (its RSS), that permits and
//! connections come back (the in-flight gauge is 0 again, a later batch is served) and that
//! other clients are unaffected while it happens.

use crate::common;

use std::time::{Duration, Instant};

use common::batch::{batch, by_id, item, responses, BATCH_PATH};
use common::client::{self, build_request, Conn};
use common::config::GateConfig;
use common::gate::Gate;
use common::prom::scrape;
use common::scripted::{Scripted, Step};
use common::upstream::refused_addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// The script: `/v2/ok` is always answered well; any other path gets `hostile`.
fn upstream_with(
    hostile: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static,
) -> impl Fn(&str) -> Vec<Step> + Send + Sync + 'static {
    move |line: &str| {
        if line.contains(" /v2/ok") {
            vec![Step::write(OK)]
        } else {
            hostile(line)
        }
    }
}

async fn gate_for(upstream: &Scripted, route: &[&str], server: &[&str]) -> Gate {
    let mut config = GateConfig::new(upstream.addr);
    for line in route {
        config = config.route(line);
    }
    for line in server {
        config = config.server(line);
    }
    config.start().await
}

/// Sends one hostile item beside good ones, concurrently with a second client's good batch,
/// and returns the hostile item's reply entry.
async fn hostile_item(gate: &Gate, method: &str) -> serde_json::Value {
    let hostile = batch(vec![
        item("bad", method, "/bad"),
        item("good1", "GET", "/ok"),
        item("good2", "GET", "/ok"),
    ]);
    let other = batch(vec![item("other", "GET", "/ok")]);
    let (hostile, other) =
        tokio::join!(client::post_json(gate.addr, BATCH_PATH, &hostile), async {
            // The other client arrives while the hostile item is in flight.
            tokio::time::sleep(Duration::from_millis(50)).await;
            client::post_json(gate.addr, BATCH_PATH, &other).await
        });
    let others = responses(&other);
    assert_eq!(
        by_id(&others, "other")["status"],
        200,
        "another client was affected"
    );
    let replies = responses(&hostile);
    for good in ["good1", "good2"] {
        assert_eq!(
            by_id(&replies, good)["status"],
            200,
            "{good} beside the hostile item"
        );
    }
    by_id(&replies, "bad").clone()
}

/// Permits and upstream slots are back: nothing in flight, and a new batch is served.
async fn assert_recovered(gate: &Gate) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let in_flight = scrape(gate.admin)
            .await
            .sum("batchgate_items_in_flight", &[]);
        if in_flight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{in_flight} items still in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![item("after", "GET", "/ok")]),
    )
    .await;
    assert_eq!(by_id(&responses(&reply), "after")["status"], 200);
}

/// Peak RSS grew by less than `mib` since `baseline` (KiB).
fn assert_memory_bounded(gate: &Gate, baseline: u64, mib: u64) {
    let (rss, peak) = gate.memory_kib();
    eprintln!("peak RSS grew by {} KiB", peak.saturating_sub(baseline));
    assert!(
        peak.saturating_sub(baseline) < mib * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB (now {rss} KiB)"
    );
}

async fn warm(gate: &Gate) -> u64 {
    let reply = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![item("warm", "GET", "/ok")]),
    )
    .await;
    assert_eq!(by_id(&responses(&reply), "warm")["status"], 200);
    gate.memory_kib().1
}

fn assert_status(entry: &serde_json::Value, status: u64, code: &str) {
    assert_eq!(entry["status"], status, "{entry}");
    assert_eq!(entry["body"]["code"], code, "{entry}");
}

/// An upstream head that never ends (endless header bytes, no blank line) costs at most the
/// head limit per item: four such items at once leave RSS within a few MiB (it grew by
/// ~700 MB per item before the limit was checked on every read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_and_oversized_heads_are_cut_at_the_head_limit() {
    let upstream = Scripted::start(upstream_with(|line| {
        if line.contains("/v2/big") {
            // A complete head with one 40 MiB header value, in one go.
            let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            head.extend(std::iter::repeat_n(b'b', 40 << 20));
            head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
            vec![Step::Write(head), Step::Hang]
        } else if line.contains("/v2/many") {
            // Fewer than 128 headers of 1 KiB each, one write per header, then the end.
            let mut steps = vec![Step::write("HTTP/1.1 200 OK\r\n")];
            for i in 0..120 {
                steps.push(Step::Write(
                    format!("X-H{i}: {}\r\n", "v".repeat(1024)).into_bytes(),
                ));
            }
            steps.push(Step::write("Content-Length: 0\r\n\r\n"));
            steps
        } else {
            vec![
                Step::write("HTTP/1.1 200 OK\r\nX-Endless: "),
                Step::Endless {
                    chunk: vec![b'a'; 64 * 1024],
                    pause: Duration::from_millis(1),
                    max: 1 << 30,
                },
            ]
        }
    }))
    .await;
    let gate = gate_for(&upstream, &["item_timeout = \"5s\""], &[]).await;
    let baseline = warm(&gate).await;
    let hostile = batch(vec![
        item("a", "GET", "/endless/1"),
        item("b", "GET", "/endless/2"),
        item("c", "GET", "/endless/3"),
        item("d", "GET", "/endless/4"),
        item("big", "GET", "/big"),
        item("many", "GET", "/many"),
    ]);
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, &hostile).await;
    let replies = responses(&reply);
    for id in ["a", "b", "c", "d", "big", "many"] {
        let entry = by_id(&replies, id);
        assert_status(entry, 502, "UpstreamFailed");
        // The parser's words ("head exceeds ...") go to the log line, not to the client.
        assert_eq!(
            entry["body"]["message"], "the upstream connection failed",
            "{entry}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at the limit, not at the timeout"
    );
    assert_memory_bounded(&gate, baseline, 48);
    assert!(
        upstream.written() < 200 << 20,
        "the gate kept reading: {} bytes",
        upstream.written()
    );
    assert_eq!(hostile_item(&gate, "GET").await["status"], 502);
    assert_recovered(&gate).await;
}

/// Heads and bodies trickled a byte at a time end at the item timeout (504), not when the
/// upstream feels like finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_and_bodies_end_at_the_item_timeout() {
    let upstream = Scripted::start(upstream_with(|line| {
        let slow = Duration::from_millis(100);
        if line.contains("/v2/body") {
            vec![
                Step::write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
                Step::Trickle(vec![b'x'; 1000], slow),
            ]
        } else {
            vec![Step::Trickle(OK.to_vec(), slow)]
        }
    }))
    .await;
    let gate = gate_for(&upstream, &["item_timeout = \"1s\""], &[]).await;
    let baseline = warm(&gate).await;
    let started = Instant::now();
    let reply = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![
            item("head", "GET", "/head"),
            item("body", "GET", "/body"),
        ]),
    )
    .await;
    let replies = responses(&reply);
    assert_status(by_id(&replies, "head"), 504, "GatewayTimeout");
    assert_status(by_id(&replies, "body"), 504, "GatewayTimeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(hostile_item(&gate, "GET").await["status"], 504);
    assert_memory_bounded(&gate, baseline, 16);
    assert_recovered(&gate).await;
}

/// Resets and closes in the middle of a body or a chunk, garbage instead of HTTP, a flood of
/// 1xx answers and a refused connection each fail only their item, with a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_fail_only_their_item() {
    let upstream = Scripted::start(upstream_with(|line| {
        let path = line.split(' ').nth(1).unwrap_or("");
        match path {
            "/v2/reset" => vec![
                Step::write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
                Step::Pause(Duration::from_millis(20)),
                Step::Reset,
            ],
            "/v2/close-chunk" => vec![
                Step::write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-half"),
                Step::Close,
            ],
            "/v2/garbage" => vec![
                Step::write("\x00\x01\x02garbage, not HTTP\r\n\r\n"),
                Step::Close,
            ],
            "/v2/interim" => {
                let mut steps: Vec<Step> = (0..50)
                    .map(|_| Step::write("HTTP/1.1 100 Continue\r\n\r\n"))
                    .collect();
                steps.push(Step::write(OK));
                steps
            }
            "/v2/close-head" => vec![Step::write("HTTP/1.1 200 OK\r\nContent-"), Step::Close],
            _ => vec![Step::write(OK)],
        }
    }))
    .await;
    let gate = gate_for(&upstream, &["item_timeout = \"2s\""], &[]).await;
    let baseline = warm(&gate).await;
    let reply = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![
            item("reset", "GET", "/reset"),
            item("close-chunk", "GET", "/close-chunk"),
            item("garbage", "GET", "/garbage"),
            item("interim", "GET", "/interim"),
            item("close-head", "GET", "/close-head"),
            item("fine", "GET", "/ok"),
        ]),
    )
    .await;
    let replies = responses(&reply);
    for id in ["reset", "close-chunk", "garbage", "interim", "close-head"] {
        assert_status(by_id(&replies, id), 502, "UpstreamFailed");
    }
    assert_eq!(by_id(&replies, "fine")["status"], 200);
    assert_memory_bounded(&gate, baseline, 16);
    assert_recovered(&gate).await;

    // Connect refused: its own outcome, the gate unharmed.
    let refused = refused_addr().await;
    let gate = GateConfig::new(refused).start().await;
    let reply =
        client::post_json(gate.addr, BATCH_PATH, &batch(vec![item("x", "GET", "/x")])).await;
    assert_status(by_id(&responses(&reply), "x"), 502, "UpstreamConnectFailed");
}

/// A 5xx storm: every item of large batches fails upstream at once; each failure is relayed
/// as the upstream's status and the gate stays within its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_is_relayed_item_by_item() {
    let upstream = Scripted::start(upstream_with(|_| {
        vec![Step::write(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"busy\":\"storm\"}\n",
        )]
    }))
    .await;
    let gate = gate_for(&upstream, &["max_items = 100", "concurrency = 10"], &[]).await;
    let baseline = warm(&gate).await;
    let items = |n: usize| {
        batch(
            (0..n)
                .map(|i| item(&i.to_string(), "GET", &format!("/s/{i}")))
                .collect(),
        )
    };
    let body = items(100);
    let replies = futures_util::future::join_all(
        (0..10).map(|_| client::post_json(gate.addr, BATCH_PATH, &body)),
    )
    .await;
    for reply in &replies {
        let entries = responses(reply);
        assert_eq!(entries.len(), 100);
        let other: Vec<_> = entries.iter().filter(|e| e["status"] != 503).collect();
        assert!(other.is_empty(), "not the upstream's 503: {other:?}");
    }
    assert_memory_bounded(&gate, baseline, 32);
    assert_recovered(&gate).await;
}

/// Bytes that come after a complete bodiless answer (a HEAD answer's declared body, sent
/// late) never become another item's answer: that connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_bytes_after_a_bodiless_answer_reach_no_other_item() {
    let upstream = Scripted::start(|line: &str| {
        if line.starts_with("HEAD") {
            vec![
                Step::write("HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n"),
                Step::Pause(Duration::from_millis(300)),
                Step::write("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"evil\":true}"),
                Step::Hang,
            ]
        } else {
            vec![Step::write(OK)]
        }
    })
    .await;
    let gate = gate_for(&upstream, &[], &[]).await;
    let mut conn = Conn::connect(gate.addr).await;
    let json = [("Content-Type", "application/json")];
    let head = conn
        .request(
            "POST",
            BATCH_PATH,
            &json,
            batch(vec![item("h", "HEAD", "/x")]).as_bytes(),
        )
        .await;
    assert_eq!(by_id(&responses(&head), "h")["status"], 200);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let get = conn
            .request(
                "POST",
                BATCH_PATH,
                &json,
                batch(vec![item("g", "GET", "/y")]).as_bytes(),
            )
            .await;
        let entry = by_id(&responses(&get), "g").clone();
        assert_eq!(
            entry["body"],
            serde_json::json!({"ok": true}),
            "round {round}: {entry}"
        );
    }
}

/// A kept-alive client connection that goes quiet is closed after `client_idle_timeout`,
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(&upstream, &[], &["client_idle_timeout = \"1s\""]).await;
    let mut conn = Conn::connect(gate.addr).await;
    let first = conn.request("GET", "/v2/ok", &[], b"").await;
    assert_eq!(first.status, 200);
    let started = Instant::now();
    assert!(
        conn.is_closed(Duration::from_secs(5)).await,
        "still open after 5 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "idle")]),
        1.0
    );
}

/// Each request moves the idle deadline on: a client that comes back within
/// `client_idle_timeout` every time is never cut off, and is closed one idle timeout after
/// its last answer. (The timer is armed lazily and moved on when it fires early: closing at
/// the first request's deadline would be the bug this catches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_deadline_moves_with_every_request() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(&upstream, &[], &["client_idle_timeout = \"1s\""]).await;
    let mut conn = Conn::connect(gate.addr).await;
    for round in 0..4 {
        let answer = conn.request("GET", "/v2/ok", &[], b"").await;
        assert_eq!(answer.status, 200, "round {round}");
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    let last_answer = Instant::now();
    assert!(
        conn.is_closed(Duration::from_secs(5)).await,
        "still open after 5 s"
    );
    let waited = last_answer.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "closed {waited:?} after the last answer"
    );
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "idle")]),
        1.0
    );
}

/// A half-sent request head, and a head trickled one byte every 200 ms, are cut off at
/// `client_header_timeout` from their first byte, however steadily the bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(&upstream, &[], &["client_header_timeout = \"1s\""]).await;

    let mut half = Conn::connect(gate.addr).await;
    half.write(b"GET /v2/ok HTTP/1.1\r\nHost: x\r\n").await;
    let started = Instant::now();
    assert!(half.is_closed(Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(3));

    // On a kept-alive connection, the second head is timed from its first byte.
    let mut kept = Conn::connect(gate.addr).await;
    assert_eq!(kept.request("GET", "/v2/ok", &[], b"").await.status, 200);
    let mut trickle = TcpStream::connect(gate.addr).await.expect("connect");
    let started = Instant::now();
    let head = b"GET /v2/ok HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in head {
        if trickle.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let mut rest = Vec::new();
    let closed = cut
        || tokio::time::timeout(Duration::from_secs(2), trickle.read_to_end(&mut rest))
            .await
            .is_ok();
    assert!(
        closed && rest.is_empty(),
        "the trickled head was served: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        kept.request("GET", "/v2/ok", &[], b"").await.status,
        200,
        "other clients unaffected"
    );
    let metrics = scrape(gate.admin).await;
    assert!(metrics.sum("batchgate_client_timeouts_total", &[("phase", "head")]) >= 2.0);
}

/// A batch body trickled a byte at a time gets 408 in the route's error format, and a
/// pass-through body the same status; a body sent at a steady rate passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_get_408() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(
        &upstream,
        &[],
        &["client_body_timeout = \"1s\"", "client_body_min_rate = 100"],
    )
    .await;
    let body = batch(vec![item("a", "GET", "/ok")]);
    for path in [BATCH_PATH, "/v2/ok"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut conn = TcpStream::connect(gate.addr).await.expect("connect");
        conn.write_all(head.as_bytes()).await.expect("head");
        let started = Instant::now();
        let mut reply = Vec::new();
        for byte in body.as_bytes() {
            if conn.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut reply)).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        if path == BATCH_PATH {
            assert!(text.contains("\"code\":\"RequestTimeout\""), "{text}");
        }
        assert!(started.elapsed() < Duration::from_secs(4), "{path}");
    }
    // 200 bytes/s against a 100 bytes/s minimum: the deadline keeps moving, the body passes.
    let mut steady = TcpStream::connect(gate.addr).await.expect("connect");
    let request = build_request(
        "POST",
        BATCH_PATH,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    for chunk in request.chunks(20) {
        steady.write_all(chunk).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), steady.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "body")]),
        2.0
    );
    assert_eq!(
        metrics.value(
            "batchgate_rejections_total",
            &[("route", "pds"), ("reason", "body_timeout")]
        ),
        1.0
    );
}

/// Beyond `max_client_connections` a listener refuses new connections with a 503 and a
/// close, counts them, and accepts again once one closes; connections already open are
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_are_capped_per_listener() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(&upstream, &[], &["max_client_connections = 3"]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::connect(gate.addr).await;
        assert_eq!(conn.request("GET", "/v2/ok", &[], b"").await.status, 200);
        open.push(conn);
    }
    for _ in 0..5 {
        let mut extra = TcpStream::connect(gate.addr)
            .await
            .expect("the kernel still accepts");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut reply)).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "{text}"
        );
    }
    for conn in &mut open {
        assert_eq!(conn.request("GET", "/v2/ok", &[], b"").await.status, 200);
    }
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_connections_refused_total", &[]),
        5.0
    );
    let listener = gate.addr.to_string();
    let open_here = [("listener", listener.as_str())];
    assert_eq!(metrics.sum("batchgate_client_connections", &open_here), 3.0);
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Conn::connect(gate.addr).await;
    assert_eq!(again.request("GET", "/v2/ok", &[], b"").await.status, 200);
}

/// A client that half-closes after its request still gets its answer; one that resets in
/// the middle of a batch gives its permits back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closing_and_resetting_clients() {
    let upstream = Scripted::start(upstream_with(|line| {
        if line.contains("/v2/slow") {
            vec![Step::Pause(Duration::from_millis(500)), Step::write(OK)]
        } else {
            vec![Step::write(OK)]
        }
    }))
    .await;
    let gate = gate_for(&upstream, &[], &[]).await;
    let body = batch(vec![item("a", "GET", "/ok")]);
    let request = build_request(
        "POST",
        BATCH_PATH,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let mut half = TcpStream::connect(gate.addr).await.expect("connect");
    half.write_all(&request).await.expect("write");
    half.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), half.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 200") || text.is_empty(),
        "{text}"
    );

    let slow = batch(
        (0..20)
            .map(|i| item(&i.to_string(), "GET", "/slow"))
            .collect(),
    );
    let request = build_request(
        "POST",
        BATCH_PATH,
        &[("Content-Type", "application/json")],
        slow.as_bytes(),
    );
    let mut reset = TcpStream::connect(gate.addr).await.expect("connect");
    reset.write_all(&request).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Linger 0 makes the close an RST; it does not block the thread.
    #[allow(deprecated)]
    reset.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(reset);
    assert_recovered(&gate).await;
}

/// A request head larger than `client_max_head_bytes` (pingora alone buffers up to 1 MiB per
/// head) is refused with 431 and a close, however it is sent; one under the limit is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let upstream = Scripted::start(upstream_with(|_| vec![Step::write(OK)])).await;
    let gate = gate_for(&upstream, &[], &["client_max_head_bytes = 16384"]).await;
    let big = format!(
        "GET /v2/ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    for chunk in [big.len(), 1000] {
        let mut conn = TcpStream::connect(gate.addr).await.expect("connect");
        for piece in big.as_bytes().chunks(chunk) {
            if conn.write_all(piece).await.is_err() {
                break;
            }
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut reply)).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{text}"
        );
    }
    let fits = format!(
        "GET /v2/ok HTTP/1.1\r\nHost: x\r\nX-Fits: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let mut conn = Conn::connect(gate.addr).await;
    assert_eq!(conn.send(fits.as_bytes()).await.status, 200);
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_heads_too_large_total", &[]),
        2.0
    );
}

/// A client that stops reading its answer (a large pass-through body, a large batch reply)
/// is cut off after `client_send_timeout` without progress, and its connection and the
/// unsent bytes are released; a client that reads is served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_cut_off() {
    const BIG: usize = 8 << 20;
    let upstream = Scripted::start(move |line: &str| {
        let body = if line.contains("/v2/file/") {
            format!("\"{}\"", "j".repeat((1 << 20) - 2)).into_bytes()
        } else {
            vec![b'p'; BIG]
        };
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        vec![Step::Write(answer)]
    })
    .await;
    let gate = gate_for(
        &upstream,
        &[
            "max_reply_bytes = 16777216",
            "max_item_response_bytes = 2000000",
        ],
        &["client_send_timeout = \"1s\""],
    )
    .await;
    let batch_body = batch(
        (0..8)
            .map(|i| item(&i.to_string(), "GET", &format!("/file/{i}")))
            .collect(),
    );
    let requests = [
        build_request("GET", "/v2/big", &[], b""),
        build_request(
            "POST",
            BATCH_PATH,
            &[("Content-Type", "application/json")],
            batch_body.as_bytes(),
        ),
    ];
    for request in &requests {
        let mut stalled = TcpStream::connect(gate.addr).await.expect("connect");
        stalled.write_all(request).await.expect("request");
        // Read nothing for a while: the gate's writes stop making progress.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut received = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the connection was not closed");
        assert!(
            received.len() < BIG,
            "the whole answer was sent: {} bytes",
            received.len()
        );
    }
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "send")]),
        2.0
    );
    // A client that reads gets everything.
    let whole = client::get(gate.addr, "/v2/big").await;
    assert_eq!(whole.body.len(), BIG);
}
