//! HTTP/2 clients (here over h2c with prior knowledge, the same server as TLS with ALPN h2):
//! batches answer as over HTTP/1.1, a connection holds at most `client_max_h2_streams`
//! requests, and a stream whose body stalls gets 408 in the body timeout although its
//! connection is busy with others (the per-connection clock cannot time one stream).

use crate::common;

use bytes::Bytes;
use common::upstream::Upstream;
use std::time::{Duration, Instant};

fn config(upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
h2c = true
client_max_h2_streams = 7
client_body_timeout = "1s"
client_body_min_rate = 0
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{upstream}"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#
    )
}

async fn connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    client.ready().await.expect("ready")
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS the server's first SETTINGS frame advertises.
async fn advertised_max_streams(addr: std::net::SocketAddr) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.expect("frame head");
    assert_eq!(head[3], 4, "the server speaks first with SETTINGS");
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; length];
    tcp.read_exact(&mut payload).await.expect("settings");
    payload.chunks_exact(6).find_map(|setting| {
        let id = u16::from_be_bytes([setting[0], setting[1]]);
        (id == 3).then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

fn post(addr: std::net::SocketAddr, length: usize) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/v2/batch"))
        .header("content-type", "application/json")
        .header("content-length", length)
        .body(())
        .expect("request")
}

/// A batch over HTTP/2 is answered like over HTTP/1.1, and the server's SETTINGS cap the
/// streams one connection may open at `client_max_h2_streams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_batches_answer_and_streams_are_capped() {
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&config(&backend.host_port())).await;
    let mut client = connect(gate.addr).await;
    let body = Bytes::from_static(br#"{"requests":[{"id":"1","method":"GET","url":"/file/get"}]}"#);
    let (response, mut send) = client
        .send_request(post(gate.addr, body.len()), false)
        .expect("send");
    send.send_data(body, true).expect("data");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut received = response.into_body();
    let mut reply = Vec::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk.expect("chunk");
        let _ = received.flow_control().release_capacity(chunk.len());
        reply.extend_from_slice(&chunk);
    }
    let json: serde_json::Value = serde_json::from_slice(&reply).expect("json");
    assert_eq!(json["responses"][0]["status"], 200, "{json}");
    assert_eq!(advertised_max_streams(gate.addr).await, Some(7));
}

/// A stream that sends part of its body and stops is answered 408 after the body timeout
/// while another stream on the same connection is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_times_out_per_stream() {
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&config(&backend.host_port())).await;
    let mut client = connect(gate.addr).await;
    let started = Instant::now();
    let (stalled, mut stalled_body) = client
        .send_request(post(gate.addr, 1000), false)
        .expect("send");
    stalled_body
        .send_data(Bytes::from_static(b"{\"requests\":["), false)
        .expect("data");
    let mut client = client.ready().await.expect("ready");
    let body = Bytes::from_static(br#"{"requests":[{"id":"1","method":"GET","url":"/x"}]}"#);
    let (quick, mut send) = client
        .send_request(post(gate.addr, body.len()), false)
        .expect("send");
    send.send_data(body, true).expect("data");
    let quick = tokio::time::timeout(Duration::from_secs(2), quick)
        .await
        .expect("quick answer")
        .expect("response");
    assert_eq!(quick.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let stalled = tokio::time::timeout(Duration::from_secs(5), stalled)
        .await
        .expect("an answer in time")
        .expect("response");
    assert_eq!(stalled.status(), 408);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(stalled_body);
}

/// A malformed batch over HTTP/2 gets the dialect's error, as over HTTP/1.1, and the
/// connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_refusals_use_the_dialect_error_format() {
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&config(&backend.host_port())).await;
    let mut client = connect(gate.addr).await;
    for round in 0..2 {
        let body = Bytes::from_static(b"{not json");
        let (response, mut send) = client
            .send_request(post(gate.addr, body.len()), false)
            .expect("send");
        send.send_data(body, true).expect("data");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 400, "round {round}");
        let mut received = response.into_body();
        let mut reply = Vec::new();
        while let Some(chunk) = received.data().await {
            reply.extend_from_slice(&chunk.expect("chunk"));
        }
        let json: serde_json::Value = serde_json::from_slice(&reply).expect("a JSON error");
        assert!(
            json["code"].is_string() && json["message"].is_string(),
            "{json}"
        );
        client = client.ready().await.expect("the connection still serves");
    }
    assert_eq!(backend.count(), 0);
}

/// The h2c listener, with short client read timeouts.
fn config_with_timeouts(upstream: &str) -> String {
    config(upstream).replace(
        "h2c = true\n",
        "h2c = true\nclient_idle_timeout = \"1s\"\nclient_header_timeout = \"1s\"\n",
    )
}

/// Reads until the server closes, or `wait` passes; whether it closed, and what it sent.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (false, got),
        }
    }
}

/// On an h2c listener every cleartext request is first peeked for the HTTP/2 preface. An
/// HTTP/1.0 request shorter than the preface's 24 bytes is answered at once (it is not held
/// waiting for bytes that never come), and a keep-alive HTTP/1.1 client that goes quiet is
/// closed after `client_idle_timeout` like on any listener (the peek is a read under the
/// connection's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_on_an_h2c_listener_keeps_its_deadlines() {
    use tokio::io::AsyncWriteExt;
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&config_with_timeouts(&backend.host_port())).await;

    let mut tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let short = b"GET /x HTTP/1.0\r\n\r\n";
    assert!(short.len() < 24);
    tcp.write_all(short).await.expect("write");
    let started = Instant::now();
    let (closed, answer) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    let mut conn = common::client::Conn::connect(gate.addr).await;
    assert_eq!(conn.request("GET", "/x", &[], b"").await.status, 200);
    let answered = Instant::now();
    assert!(
        conn.is_closed(Duration::from_secs(5)).await,
        "an idle keep-alive connection is still open after 5 s"
    );
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "idle")]),
        1.0
    );
}

/// A client that sends the start of the HTTP/2 preface and stops is closed after
/// `client_header_timeout`, and counted, as a stalled HTTP/1 head is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2c_preface_is_cut_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&config_with_timeouts(&backend.host_port())).await;
    let mut tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let (closed, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "head")]),
        1.0
    );
}

/// A client that grants no flow-control window (`INITIAL_WINDOW_SIZE = 0`, never a
/// WINDOW_UPDATE) gets its reply's HEADERS but no DATA: the stream is reset once no byte
/// could be written for `client_send_timeout`, counted as a `send` timeout, and what the reply
/// held is released (the admission's held bytes go back to zero), while another client on
/// the same listener is answered all along (issue 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_window_is_cut_at_the_send_timeout() {
    let backend = Upstream::echo().await;
    let text = config(&backend.host_port())
        .replace("h2c = true", "h2c = true\nclient_send_timeout = \"1s\"");
    let gate = common::gate::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let items: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"id":"{i}","method":"GET","url":"/v2/file/{i}?pad={}"}}"#,
                "p".repeat(500)
            )
        })
        .collect();
    let body = format!(r#"{{"requests":[{}]}}"#, items.join(","));
    let (response, mut send) = client
        .send_request(post(gate.addr, body.len()), false)
        .expect("send");
    send.send_data(Bytes::from(body), true).expect("body");
    let started = Instant::now();
    let response = response.await.expect("reply head");
    assert_eq!(response.status(), 200);
    let mut reply = response.into_body();
    let cut = tokio::time::timeout(Duration::from_secs(5), reply.data()).await;
    let error = match cut {
        Ok(Some(Err(e))) => e,
        other => panic!("no reset within 5 s: {other:?}"),
    };
    assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Another client is served meanwhile and after.
    let other = common::client::post_json(
        gate.addr,
        "/v2/batch",
        r#"{"requests":[{"id":"1","method":"GET","url":"/v2/x"}]}"#,
    )
    .await;
    assert_eq!(other.status, 200);
    let metrics = common::prom::scrape_until(
        gate.admin,
        Duration::from_secs(5),
        "cut counted, bytes freed",
        |s| {
            s.sum("batchgate_client_timeouts_total", &[("phase", "send")]) >= 1.0
                && s.value("batchgate_admission_held_bytes", &[]) == 0.0
        },
    )
    .await;
    assert_eq!(metrics.value("batchgate_admission_held_bytes", &[]), 0.0);
}

/// Opens a stream carrying a two-item batch (each item takes 300 ms upstream) and resets it
/// 20 ms later; `Err` once the connection is gone.
async fn open_and_reset(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
) -> Result<(), h2::Error> {
    let body = r#"{"requests":[{"id":"1","method":"GET","url":"/v2/a"},{"id":"2","method":"GET","url":"/v2/b"}]}"#;
    let mut ready = client.clone().ready().await?;
    let (_response, mut send) = ready.send_request(post(addr, body.len()), false)?;
    send.send_data(Bytes::from_static(body.as_bytes()), true)?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    send.send_reset(h2::Reason::CANCEL);
    *client = ready;
    Ok(())
}

/// A client that opens streams and resets each right after (HEADERS then RST_STREAM 20 ms
/// later, the "rapid reset" follow-up) gets `GOAWAY(ENHANCE_YOUR_CALM)` once it has done so
/// `client_h2_max_premature_resets` times (counted), and the items its cancelled batches had
/// already sent keep their permits until they end: the upstream never sees more than
/// `max_in_flight` at once, and no queued item of a reset batch is ever sent (issue 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_right_after_they_open_are_bounded() {
    let backend =
        Upstream::with_handler(|_| common::upstream::Reply::json(200, "{}").with_delay(300)).await;
    let text = config(&backend.host_port()).replace(
        "h2c = true",
        "h2c = true\nmax_in_flight = 4\nclient_h2_max_premature_resets = 10",
    );
    let gate = common::gate::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut opened = 0;
    for _ in 0..200 {
        if open_and_reset(&mut client, gate.addr).await.is_err() {
            break;
        }
        opened += 1;
    }
    assert!(
        (10..40).contains(&opened),
        "closed after {opened} reset streams"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the connection is closed")
        .expect("the connection task ran");
    let goaway = closed.expect_err("closed with an error code");
    assert!(goaway.is_go_away() && goaway.is_remote(), "{goaway}");
    assert_eq!(goaway.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    let metrics = common::prom::scrape_until(gate.admin, Duration::from_secs(5), "counted", |s| {
        s.sum("batchgate_client_h2_premature_reset_closes_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.sum("batchgate_client_h2_premature_reset_closes_total", &[]),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        backend.peak() <= 4,
        "upstream peak {} > max_in_flight",
        backend.peak()
    );
    // Another client is served as usual.
    let reply = common::client::post_json(
        gate.addr,
        "/v2/batch",
        r#"{"requests":[{"id":"1","method":"GET","url":"/v2/x"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
}

/// An HTTP/2 request head that stalls (a HEADERS frame without END_HEADERS, and no
/// CONTINUATION) is cut at `client_header_timeout` like an HTTP/1.1 head, counted as a
/// `head` timeout; it used to wait for the 60 s idle timeout, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_header_block_is_cut_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let backend = Upstream::echo().await;
    let text = config(&backend.host_port())
        .replace("h2c = true", "h2c = true\nclient_header_timeout = \"1s\"");
    let gate = common::gate::start(&text).await;
    let mut tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    // Preface, empty SETTINGS, then HEADERS on stream 1 with END_STREAM but not END_HEADERS
    // (flags 0x1) and a one-byte block (an indexed `:method: GET`).
    tcp.write_all(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x01\x01\x01\0\0\0\x01\x82",
    )
    .await
    .expect("write");
    let started = Instant::now();
    common::client::assert_cut_at_a_one_second_head_timeout(&mut tcp, started, gate.admin).await;
}

/// A stream that sends a large part of its body at once and then nothing is cut one body
/// timeout after its last read, as over HTTP/1.1, not only at the whole-body deadline (which
/// 100 KB at `client_body_min_rate` 1000 B/s would put 100 s out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_that_stops_after_a_burst_gets_408_after_one_body_timeout() {
    let backend = Upstream::echo().await;
    let text = config(&backend.host_port())
        .replace("client_body_min_rate = 0", "client_body_min_rate = 1000");
    let gate = common::gate::start(&text).await;
    let mut client = connect(gate.addr).await;
    let (stalled, mut body) = client
        .send_request(post(gate.addr, 200_000), false)
        .expect("send");
    let mut burst = b"{\"requests\":[".to_vec();
    burst.resize(100_000, b' ');
    body.send_data(Bytes::from(burst), false).expect("data");
    let started = Instant::now();
    let stalled = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("an answer within 10 s")
        .expect("response");
    assert_eq!(stalled.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(body);
}

/// A pass-through request over HTTP/2 whose body stalls is reset (CANCEL) one body timeout
/// after its last piece and counted as a `body` timeout, while other streams on the busy
/// connection are served; the upstream connection it held is closed. pingora reads HTTP/2
/// bodies with no timeout, and the connection's clock cannot time one stream: before, such a
/// stream held its upstream connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pass_through_body_over_h2_is_reset_at_the_body_timeout() {
    let backend = Upstream::echo().await;
    let text =
        config(&backend.host_port()).replace("[admin]", "default_upstream = \"api\"\n\n[admin]");
    let gate = common::gate::start(&text).await;
    let mut client = connect(gate.addr).await;
    let upload = http::Request::builder()
        .method("PUT")
        .uri(format!("http://{}/v2/files/1", gate.addr))
        .header("content-length", 1000)
        .body(())
        .expect("request");
    let (stalled, mut body) = client.send_request(upload, false).expect("send");
    body.send_data(Bytes::from_static(b"the first part"), false)
        .expect("data");
    let started = Instant::now();
    // The upstream has the request head and the first part, on a connection of its own.
    common::eventually(
        Duration::from_secs(2),
        "the upload's upstream connection",
        || backend.open_connections() == 1,
    )
    .await;
    // Other streams keep the connection busy and are served meanwhile.
    let mut client = client.ready().await.expect("ready");
    for _ in 0..3 {
        let get = http::Request::builder()
            .uri(format!("http://{}/v2/other", gate.addr))
            .body(())
            .expect("request");
        let (quick, _) = client.send_request(get, true).expect("send");
        let quick = tokio::time::timeout(Duration::from_secs(2), quick)
            .await
            .expect("quick answer")
            .expect("response");
        assert_eq!(quick.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reset = tokio::time::timeout(Duration::from_secs(5), stalled)
        .await
        .expect("the stalled stream ends in time")
        .expect_err("it is reset, not answered");
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let metrics = common::prom::scrape_until(gate.admin, Duration::from_secs(2), "counted", |s| {
        s.sum("batchgate_client_timeouts_total", &[("phase", "body")]) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "body")]),
        1.0
    );
    // The upstream connection that carried the partial body is closed (the GETs' pooled
    // connection may stay).
    let closed = || backend.connections() - backend.open_connections() as u64;
    common::eventually(
        Duration::from_secs(2),
        "the upload's upstream connection closed",
        || closed() == 1,
    )
    .await;
    assert!(backend.requests().iter().all(|r| r.method == "GET"));
    drop(body);
}

/// An HTTP/2 pass-through upload that keeps coming, slower than the body timeout in all
/// but above `client_body_min_rate`, is passed on whole: the deadline moves with each piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_pass_through_body_over_h2_is_not_cut() {
    let backend = Upstream::echo().await;
    let text = config(&backend.host_port())
        .replace("client_body_min_rate = 0", "client_body_min_rate = 1000")
        .replace("[admin]", "default_upstream = \"api\"\n\n[admin]");
    let gate = common::gate::start(&text).await;
    let client = connect(gate.addr).await;
    let mut client = client.ready().await.expect("ready");
    let upload = http::Request::builder()
        .method("PUT")
        .uri(format!("http://{}/v2/files/1", gate.addr))
        .header("content-length", 3000)
        .body(())
        .expect("request");
    let (answer, mut body) = client.send_request(upload, false).expect("send");
    let started = Instant::now();
    for piece in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        body.send_data(Bytes::from(vec![b'a'; 500]), piece == 5)
            .expect("data");
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer")
        .expect("answered, not reset");
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(2400));
    let upload = backend.wait_for_count(1, Duration::from_secs(1)).await;
    assert_eq!(upload[0].body.len(), 3000);
}

/// Requests pingora rejects as malformed (a `Host` that contradicts `:authority`) are
/// answered 400 and leave the other streams alone, up to 32 on one connection; the 32nd
/// ends it with `GOAWAY(PROTOCOL_ERROR)`, as pingora's own accept loop bounds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_h2_requests_are_bounded_per_connection() {
    let backend = Upstream::echo().await;
    let text =
        config(&backend.host_port()).replace("[admin]", "default_upstream = \"api\"\n\n[admin]");
    let gate = common::gate::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let malformed = || {
        http::Request::builder()
            .uri(format!("http://{}/v2/things", gate.addr))
            .header("host", "other.example")
            .body(())
            .expect("request")
    };
    for sent in 1..=31 {
        client = client.ready().await.expect("ready");
        let (answer, _) = client.send_request(malformed(), true).expect("send");
        let refused = answer.await.expect("answered");
        assert_eq!(refused.status(), 400, "{sent}");
    }
    // A well-formed request on the same connection is still served.
    client = client.ready().await.expect("ready");
    let get = http::Request::builder()
        .uri(format!("http://{}/v2/things", gate.addr))
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(get, true).expect("send");
    assert_eq!(answer.await.expect("answered").status(), 200);
    client = client.ready().await.expect("ready");
    let (last, _) = client.send_request(malformed(), true).expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the connection is closed")
        .expect("the connection task ran");
    let goaway = closed.expect_err("closed with an error code");
    assert_eq!(
        goaway.reason(),
        Some(h2::Reason::PROTOCOL_ERROR),
        "{goaway}"
    );
    assert!(last.await.is_err());
    assert_eq!(backend.count(), 1);
}

/// At shutdown (SIGTERM) an HTTP/2 connection gets a graceful GOAWAY: the stream it has
/// running is still answered within `grace_period`, then the connection closes cleanly
/// instead of being cut when the grace period ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_h2_connection_with_a_graceful_goaway() {
    let backend =
        Upstream::with_handler(|_| common::upstream::Reply::json(200, "{}").with_delay(500)).await;
    let text = config(&backend.host_port()).replace(
        "[admin]",
        "default_upstream = \"api\"\ngrace_period = \"3s\"\n\n[admin]",
    );
    let gate = common::gate::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let get = http::Request::builder()
        .uri(format!("http://{}/v2/slow", gate.addr))
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(get, true).expect("send");
    backend.wait_for_count(1, Duration::from_secs(2)).await;
    gate.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(4), answer)
        .await
        .expect("answered before the process exits")
        .expect("answered, not reset");
    assert_eq!(answer.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(4), connection)
        .await
        .expect("the connection closes")
        .expect("the connection task ran");
    assert!(closed.is_ok(), "closed with GOAWAY(NO_ERROR): {closed:?}");
}

/// An HTTP/2 connection with no stream open is closed after `client_idle_timeout`, counted
/// from its last stream's end (a busy connection is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_the_idle_timeout() {
    let backend =
        Upstream::with_handler(|_| common::upstream::Reply::json(200, "{}").with_delay(1_500))
            .await;
    let text = config_with_timeouts(&backend.host_port())
        .replace("[admin]", "default_upstream = \"api\"\n\n[admin]");
    let gate = common::gate::start(&text).await;
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    // One stream that outlasts the idle timeout: the connection stays open for it.
    let get = http::Request::builder()
        .uri(format!("http://{}/v2/slow", gate.addr))
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(get, true).expect("send");
    let answer = answer.await.expect("answered");
    assert_eq!(answer.status(), 200);
    let ended = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), &mut connection)
        .await
        .expect("closed once idle");
    let idle = ended.elapsed();
    assert!(closed.is_ok());
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}
