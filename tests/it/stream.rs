//! Streamed batch replies, read by `curl -N` as a client would: each item's answer leaves as
//! it settles (a slow item does not hold the others back), the stream ends with the terminal
//! record, every format frames its records, the batch deadline and a client that leaves
//! mid-stream are handled, and HTTP/2 carries the stream as DATA frames.

use crate::common;

use common::batch::{assert_item_error, batch, item, BATCH_PATH};
use common::config::GateConfig;
use common::gate::Gate;
use common::prom::{require_tool, scrape};
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ALL_FORMATS: &str = r#"stream = ["ndjson", "sse", "json-seq"]"#;

/// An upstream answering `/slow…` after `slow_ms` and everything else after 10 ms.
async fn upstream(slow_ms: u64) -> Upstream {
    Upstream::with_handler(move |req| {
        let delay = if req.path.contains("slow") {
            slow_ms
        } else {
            10
        };
        Reply::json(200, r#"{"ok":true}"#).with_delay(delay)
    })
    .await
}

/// Four quick items and one slow one.
fn five_items() -> String {
    batch(vec![
        item("slow", "GET", "/file/slow"),
        item("a", "GET", "/file/a"),
        item("b", "GET", "/file/b"),
        item("c", "GET", "/file/c"),
        item("d", "GET", "/file/d"),
    ])
}

/// `n` items `GET /file/0` .. `/file/{n-1}`.
fn numbered(n: usize) -> String {
    batch(
        (0..n)
            .map(|i| item(&i.to_string(), "GET", &format!("/file/{i}")))
            .collect(),
    )
}

/// A connection with `POST path` and `body` written on it (`extra`: more header lines, each
/// ending in CRLF).
async fn send_post(gate: &Gate, path: &str, extra: &str, body: &str) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.expect("request");
    conn
}

const ASK_NDJSON: &str = "Accept: application/x-ndjson\r\n";

/// What curl printed: the head's lines, and each body line with when it arrived.
struct Streamed {
    head: Vec<String>,
    lines: Vec<(Duration, String)>,
}

impl Streamed {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The JSON records, each with its arrival; `data:` and RS prefixes taken off, blank
    /// lines and SSE event lines skipped.
    fn records(&self) -> Vec<(Duration, Value)> {
        self.lines
            .iter()
            .filter_map(|(at, line)| {
                let json = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix('\u{1e}'))
                    .unwrap_or(line);
                if json.is_empty() || json.starts_with("event:") {
                    return None;
                }
                let value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("record {json:?} is not JSON: {e}"));
                Some((*at, value))
            })
            .collect()
    }

    fn by_id(&self, id: &str) -> (Duration, Value) {
        self.records()
            .into_iter()
            .find(|(_, r)| r["id"] == id)
            .unwrap_or_else(|| panic!("no record for {id}: {:?}", self.lines))
    }

    fn terminal(&self) -> Value {
        let records = self.records();
        let (_, last) = records.last().expect("a terminal record");
        assert_eq!(
            last["done"], true,
            "the last record ends the stream: {last}"
        );
        last.clone()
    }
}

/// POSTs `body` to `path` with `curl -N` and this `Accept`, reading what it prints as it
/// arrives; `None` (skip) without curl outside CI.
async fn curl_stream(
    gate: &Gate,
    path: &str,
    accept: &str,
    body: &str,
    extra: &[&str],
) -> Option<Streamed> {
    let curl = require_tool("curl", "apt-get install curl")?;
    let url = format!("http://{}{path}", gate.addr);
    let mut child = tokio::process::Command::new(curl)
        .args([
            "-sS",
            "-N",
            "-D",
            "-",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-H", &format!("Accept: {accept}"), "--data-binary", "@-"])
        .args(extra)
        .arg(&url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run curl");
    let started = Instant::now();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body.as_bytes()).await.expect("body");
    drop(stdin);
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut head = Vec::new();
    let mut lines = Vec::new();
    let read = async {
        let mut in_head = true;
        while let Some(line) = out.next_line().await.expect("curl output") {
            let line = line.trim_end_matches('\r').to_string();
            if in_head {
                in_head = !line.is_empty();
                head.push(line);
            } else {
                lines.push((started.elapsed(), line));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ended within 20 s");
    assert!(child.wait().await.expect("curl").success(), "curl failed");
    Some(Streamed { head, lines })
}

/// Each answer leaves as its item settles: the four quick ones long before the slow one, then
/// the terminal record with the counts. The head says what it is and asks proxies not to
/// buffer; HTTP/1.1 frames it chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_answers_leave_as_items_settle() {
    let upstream = upstream(1500).await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .start()
        .await;
    let Some(out) = curl_stream(
        &gate,
        BATCH_PATH,
        "application/x-ndjson",
        &five_items(),
        &[],
    )
    .await
    else {
        return;
    };
    assert_eq!(out.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(out.header("x-accel-buffering"), Some("no"));
    assert_eq!(out.header("transfer-encoding"), Some("chunked"));
    assert!(out.header("x-request-id").is_some());
    for id in ["a", "b", "c", "d"] {
        let (at, record) = out.by_id(id);
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["body"], serde_json::json!({"ok": true}), "{record}");
        assert!(
            at < Duration::from_millis(1000),
            "{id} arrived after {at:?}"
        );
    }
    let (slow_at, slow) = out.by_id("slow");
    assert_eq!(slow["status"], 200);
    assert!(
        slow_at >= Duration::from_millis(1400),
        "slow arrived at {slow_at:?}"
    );
    let done = out.terminal();
    assert_eq!(
        done,
        serde_json::json!({"done": true, "items": 5, "records": 5, "outcomes": {"2xx": 5}})
    );
    assert_eq!(
        out.records().len(),
        6,
        "five answers and the terminal record"
    );
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_streamed_batches_total",
            &[("route", "pds"), ("format", "ndjson")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "batchgate_stream_first_item_seconds_count",
            &[("route", "pds")]
        ),
        1.0
    );
}

/// SSE: each answer a `data:` event, the terminal record an `event: done`; JSON text
/// sequences: each record after an RS byte. A plain `Accept` gets the buffered reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_json_seq_frame_every_record_and_plain_json_is_buffered() {
    let upstream = upstream(200).await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .start()
        .await;
    let Some(sse) = curl_stream(&gate, BATCH_PATH, "text/event-stream", &five_items(), &[]).await
    else {
        return;
    };
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let data = sse
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("data: "))
        .count();
    assert_eq!(data, 6, "{:?}", sse.lines);
    assert!(sse.lines.iter().any(|(_, l)| l == "event: done"));
    assert_eq!(sse.terminal()["records"], 5);
    let seq = curl_stream(
        &gate,
        BATCH_PATH,
        "application/json-seq",
        &five_items(),
        &[],
    )
    .await
    .expect("curl");
    assert_eq!(seq.header("content-type"), Some("application/json-seq"));
    assert!(
        seq.lines.iter().all(|(_, l)| l.starts_with('\u{1e}')),
        "{:?}",
        seq.lines
    );
    assert_eq!(seq.terminal()["items"], 5);
    let plain = curl_stream(&gate, BATCH_PATH, "application/json", &five_items(), &[])
        .await
        .expect("curl");
    assert_eq!(plain.header("content-type"), Some("application/json"));
    assert_eq!(plain.lines.len(), 1, "one buffered body");
    let reply: Value = serde_json::from_str(&plain.lines[0].1).expect("JSON");
    assert_eq!(reply["responses"].as_array().map(Vec::len), Some(5));
}

/// The batch deadline mid-stream: the quick answers are out, the slow item gets its timeout
/// record at the deadline, then the terminal record, all well before the slow answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_mid_stream_writes_a_timeout_record_then_the_terminal() {
    let upstream = upstream(3000).await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .route("batch_timeout = \"500ms\"")
        .start()
        .await;
    let Some(out) = curl_stream(
        &gate,
        BATCH_PATH,
        "application/x-ndjson",
        &five_items(),
        &[],
    )
    .await
    else {
        return;
    };
    let (at, slow) = out.by_id("slow");
    assert_eq!(slow["status"], 504, "{slow}");
    assert_eq!(slow["body"]["code"], "BatchDeadlineExceeded", "{slow}");
    assert!(
        at < Duration::from_millis(1500),
        "the timeout record came at {at:?}"
    );
    assert_eq!(
        out.terminal()["outcomes"],
        serde_json::json!({"2xx": 4, "timeout": 1})
    );
}

/// A client that reads the first answer and leaves: the items still queued never start, and
/// the cut stream is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_cancels_the_rest() {
    let upstream = Upstream::with_handler(|_| Reply::json(200, "{}").with_delay(300)).await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .route("concurrency = 1")
        .start()
        .await;
    let mut conn = send_post(&gate, BATCH_PATH, ASK_NDJSON, &numbered(8)).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"id\":\"0\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the first record within 5 s")
            .expect("read");
        assert!(n > 0, "closed before the first record");
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    drop(conn);
    let admin = gate.admin;
    common::eventually_async(Duration::from_secs(5), "the cut stream counted", || async {
        scrape(admin)
            .await
            .value("batchgate_streams_cut_total", &[("route", "pds")])
            == 1.0
    })
    .await;
    // 8 items of 300 ms one at a time would take 2.4 s; at most the one running when the
    // client left (and the one its write failure overlapped) reach the upstream.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        upstream.count() <= 3,
        "{} items reached the upstream after the client left",
        upstream.count()
    );
}

/// HTTP/2 (h2c here) carries the stream as DATA frames, with the same early answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_the_answers_too() {
    let upstream = upstream(1500).await;
    let gate = GateConfig::new(upstream.addr)
        .server("h2c = true")
        .route(ALL_FORMATS)
        .start()
        .await;
    let h2 = ["--http2-prior-knowledge"];
    let Some(out) = curl_stream(
        &gate,
        BATCH_PATH,
        "application/x-ndjson",
        &five_items(),
        &h2,
    )
    .await
    else {
        return;
    };
    assert!(
        out.head
            .first()
            .is_some_and(|l| l.starts_with("HTTP/2 200")),
        "{:?}",
        out.head
    );
    let (quick, _) = out.by_id("a");
    let (slow, _) = out.by_id("slow");
    assert!(quick < Duration::from_millis(1000) && slow >= Duration::from_millis(1400));
    assert_eq!(out.terminal()["records"], 5);
}

/// JSON-RPC over SSE (as MCP's Streamable HTTP answers a batch): each call's response object
/// is a record, a notification has none, and the terminal record counts every element.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_streams_response_objects() {
    let upstream = Upstream::with_handler(|req| {
        let call: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let reply =
            serde_json::json!({"jsonrpc": "2.0", "result": call["method"], "id": call["id"]});
        Reply::json(200, &reply.to_string())
    })
    .await;
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{}"]

[[routes]]
path = "/rpc"
dialect = "jsonrpc"
stream = ["sse"]
"#,
        upstream.addr
    );
    let gate = common::gate::start(&config).await;
    let body = r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"note"},{"jsonrpc":"2.0","method":"b","id":2}]"#;
    let Some(out) = curl_stream(
        &gate,
        "/rpc",
        "application/json, text/event-stream",
        body,
        &[],
    )
    .await
    else {
        return;
    };
    let mut results: Vec<Value> = out
        .records()
        .into_iter()
        .filter(|(_, r)| r.get("done").is_none())
        .map(|(_, r)| r)
        .collect();
    results.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        results,
        [
            serde_json::json!({"jsonrpc": "2.0", "result": "a", "id": 1}),
            serde_json::json!({"jsonrpc": "2.0", "result": "b", "id": 2}),
        ]
    );
    let done = out.terminal();
    assert_eq!(
        (done["items"].clone(), done["records"].clone()),
        (3.into(), 2.into())
    );
}

/// A client that reads the head and then stops reading a stream of large answers is cut off
/// after `client_send_timeout` without progress: the connection closes before the stream is
/// whole, and the cut stream is counted with the send timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_cut_off() {
    let big = format!("\"{}\"", "j".repeat((1 << 20) - 2));
    let upstream = Upstream::with_handler(move |_| Reply::json(200, &big)).await;
    let gate = GateConfig::new(upstream.addr)
        .server("client_send_timeout = \"1s\"")
        .route(ALL_FORMATS)
        .route("max_reply_bytes = 16777216")
        .route("max_item_response_bytes = 2000000")
        .start()
        .await;
    let mut stalled = send_post(&gate, BATCH_PATH, ASK_NDJSON, &numbered(8)).await;
    // Read nothing for a while: the gate's writes stop making progress.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "the head went out first");
    assert!(!text.contains("\"done\":true"), "the whole stream was sent");
    let metrics = scrape(gate.admin).await;
    assert_eq!(
        metrics.value("batchgate_streams_cut_total", &[("route", "pds")]),
        1.0
    );
    assert_eq!(
        metrics.sum("batchgate_client_timeouts_total", &[("phase", "send")]),
        1.0
    );
}

/// While streaming, the reply budget counts what is not written yet: a client that reads gets
/// a batch whose answers add up to more than `max_reply_bytes`, where the buffered reply fails
/// the items over it; and what the answers held in the admission's memory is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_streams_more_than_the_reply_budget() {
    let big = format!("\"{}\"", "j".repeat((1 << 20) - 2));
    let upstream = Upstream::with_handler(move |_| Reply::json(200, &big).with_delay(50)).await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .route("concurrency = 1")
        .route("max_reply_bytes = 3000000")
        .route("max_item_response_bytes = 2000000")
        .start()
        .await;
    let body = numbered(6);
    let Some(out) = curl_stream(&gate, BATCH_PATH, "application/x-ndjson", &body, &[]).await else {
        return;
    };
    assert_eq!(
        out.terminal()["outcomes"],
        serde_json::json!({"2xx": 6}),
        "6 MiB streamed under a 3 MB budget"
    );
    let buffered = curl_stream(&gate, BATCH_PATH, "application/json", &body, &[])
        .await
        .expect("curl");
    let reply: Value = serde_json::from_str(&buffered.lines[0].1).expect("JSON");
    let over = reply["responses"].as_array().map(|r| {
        r.iter()
            .filter(|r| r["body"]["code"] == "ReplyTooLarge")
            .count()
    });
    assert!(
        over >= Some(3),
        "the buffered reply keeps the budget: {over:?}"
    );
    let metrics = scrape(gate.admin).await;
    assert_eq!(metrics.value("batchgate_admission_held_bytes", &[]), 0.0);
}

/// Reads a whole HTTP/1.1 reply from `stream`, noting when `needle` first appeared.
async fn read_reply(
    stream: &mut tokio::net::TcpStream,
    needle: &str,
    started: Instant,
) -> (String, Option<Duration>) {
    let mut seen = Vec::new();
    let mut found = None;
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the reply within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
        let text = String::from_utf8_lossy(&seen);
        if found.is_none() && text.contains(needle) {
            found = Some(started.elapsed());
        }
        if text.ends_with("0\r\n\r\n") || text.contains("Content-Length") && text.ends_with('}') {
            break;
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), found)
}

/// The body of a chunked or sized HTTP/1.1 reply.
fn body_of(reply: &str) -> String {
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(after.get(..size).expect("chunk"));
        rest = after.get(size + 2..).unwrap_or_default();
    }
    out
}

/// POSTs `body` to `path` and reads the reply, noting when `needle` arrived.
async fn post_raw(gate: &Gate, path: &str, body: &str, needle: &str) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut stream = send_post(gate, path, "Connection: close\r\n", body).await;
    read_reply(&mut stream, needle, started).await
}

/// A gate with the same envelope route twice: `/v2/batch` progressive, `/v2/plain` buffered,
/// and the same JSON-RPC route twice: `/rpc` progressive, `/rpc-plain` buffered.
async fn progressive_gate(upstream: &Upstream) -> Gate {
    let route = |name: &str, path: &str, dialect: &str, extra: &str| {
        format!("\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\ndialect = \"{dialect}\"\nupstream = \"api\"\n{extra}\n")
    };
    let mut config = GateConfig::new(upstream.addr)
        .route(r#"stream = ["progressive"]"#)
        .toml();
    config.push_str(&route(
        "plain",
        "/v2/plain",
        "envelope",
        "base_path = \"/v2\"",
    ));
    config.push_str(&route(
        "rpc",
        "/rpc",
        "jsonrpc",
        "stream = [\"progressive\"]",
    ));
    config.push_str(&route("rpc_plain", "/rpc-plain", "jsonrpc", ""));
    common::gate::start(&config).await
}

/// Progressive replies need no client change: the bytes are the buffered reply's, but the
/// finished prefix leaves at once (item `a` before the slow one finishes), in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_envelope_replies_are_the_buffered_bytes_sooner() {
    let upstream = Upstream::with_handler(|req| {
        let delay = if req.path.contains("slow") { 1500 } else { 10 };
        let echo = format!(r#"{{"path":"{}"}}"#, req.path);
        Reply::json(200, &echo).with_delay(delay)
    })
    .await;
    let gate = progressive_gate(&upstream).await;
    let body = batch(vec![
        item("a", "GET", "/file/a"),
        item("slow", "GET", "/file/slow"),
        item("b", "GET", "/file/b"),
        item("bad", "TRACE", "/file/c"),
    ]);
    let (progressive, first) = post_raw(&gate, BATCH_PATH, &body, "\"id\":\"a\"").await;
    let (buffered, _) = post_raw(&gate, "/v2/plain", &body, "\"id\":\"a\"").await;
    assert!(progressive
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert!(
        progressive.contains("Content-Type: application/json"),
        "{progressive}"
    );
    let strip_dates = |text: String| {
        text.split(",\"date\":\"")
            .map(|part| part.split_once('"').map_or(part, |(_, rest)| rest))
            .collect::<Vec<_>>()
            .join("")
    };
    assert_eq!(
        strip_dates(body_of(&progressive)),
        strip_dates(body_of(&buffered)),
        "the same reply, byte for byte"
    );
    let first = first.expect("item a");
    assert!(
        first < Duration::from_millis(1000),
        "item a left at {first:?}"
    );
}

/// JSON-RPC: the array a buffered reply has (notifications have no element), progressively;
/// a batch of notifications only still gets its 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_jsonrpc_replies_are_the_buffered_bytes() {
    let upstream = Upstream::with_handler(|req| {
        let call: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let delay = if call["method"] == "slow" { 800 } else { 10 };
        let reply =
            serde_json::json!({"jsonrpc": "2.0", "result": call["method"], "id": call["id"]});
        Reply::json(200, &reply.to_string()).with_delay(delay)
    })
    .await;
    let gate = progressive_gate(&upstream).await;
    let body = r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"note"},{"jsonrpc":"2.0","method":"slow","id":2},{"jsonrpc":"2.0","method":"c","id":"x"},{"bad":true}]"#;
    let (progressive, first) = post_raw(&gate, "/rpc", body, "\"result\":\"a\"").await;
    let (buffered, _) = post_raw(&gate, "/rpc-plain", body, "x").await;
    assert_eq!(body_of(&progressive), body_of(&buffered), "the same array");
    assert!(first.expect("call 1") < Duration::from_millis(600));
    let notes = r#"[{"jsonrpc":"2.0","method":"note"}]"#;
    let (only, _) = post_raw(&gate, "/rpc", notes, "x").await;
    assert!(only.starts_with("HTTP/1.1 204"), "{only}");
}

/// One huge answer among small ones: the small ones are not held behind it, the huge one
/// (within `max_item_response_bytes`) arrives whole as one record, and one over the limit is
/// its item error, not a cut stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_answer_among_small_ones() {
    let huge = format!("\"{}\"", "h".repeat((2 << 20) - 2));
    let over = format!("\"{}\"", "o".repeat(5 << 20));
    let upstream = Upstream::with_handler(move |req| match req.path.as_str() {
        "/v2/file/huge" => Reply::json(200, &huge).with_delay(300),
        "/v2/file/over" => Reply::json(200, &over).with_delay(300),
        _ => Reply::json(200, r#"{"ok":true}"#).with_delay(10),
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route(ALL_FORMATS)
        .route("max_item_response_bytes = 3000000")
        .start()
        .await;
    let body = batch(vec![
        item("huge", "GET", "/file/huge"),
        item("over", "GET", "/file/over"),
        item("a", "GET", "/file/a"),
        item("b", "GET", "/file/b"),
    ]);
    let Some(out) = curl_stream(&gate, BATCH_PATH, "application/x-ndjson", &body, &[]).await else {
        return;
    };
    let (huge_at, huge) = out.by_id("huge");
    assert_eq!(huge["status"], 200);
    assert_eq!(huge["body"].as_str().map(str::len), Some((2 << 20) - 2));
    for id in ["a", "b"] {
        let (at, _) = out.by_id(id);
        assert!(
            at < huge_at,
            "{id} at {at:?} waited for the huge answer ({huge_at:?})"
        );
    }
    let (_, over) = out.by_id("over");
    assert_item_error(&over, 502, "UpstreamResponseTooLarge");
    assert_eq!(
        out.terminal()["outcomes"],
        serde_json::json!({"2xx": 3, "upstream_error": 1})
    );
}
