//! Graceful shutdown: a batch still running when SIGTERM's grace period is about to end
//! answers with what has finished instead of being cut off without a reply.

use crate::common;

use common::config::GateConfig;
use common::upstream::{Reply, Upstream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SIGTERM during a batch whose slow item outlasts the grace period: the client still gets
/// a 200 reply before the grace period ends, with the finished item and a 504 for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_running_batches_before_the_grace_period_ends() {
    let upstream = Upstream::with_handler(|r| {
        if r.path.ends_with("/slow") {
            Reply::json(200, "{}").with_delay(9_000)
        } else {
            Reply::json(200, r#"{"fast":true}"#)
        }
    })
    .await;
    // The test config's grace_period is 1 s: batches are told to answer 0.5 s after SIGTERM.
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 2")
        .start()
        .await;
    let body = r#"{"requests":[{"id":"f","method":"GET","url":"/fast"},{"id":"s","method":"GET","url":"/slow"}]}"#;
    let raw = format!(
        "POST /v2/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    upstream.wait_for_count(2, Duration::from_secs(5)).await;
    let terminated = Instant::now();
    gate.signal("TERM");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut reply))
        .await
        .expect("a reply before the process exits")
        .expect("read");
    let elapsed = terminated.elapsed();
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "no reply after SIGTERM: {text:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "reply came after the grace period: {elapsed:?}"
    );
    let json_start = text.find("{\"responses\"").expect("a batch reply body");
    let json: serde_json::Value = serde_json::from_str(&text[json_start..]).expect("JSON reply");
    assert_eq!(json["responses"][0]["status"], 200);
    assert_eq!(json["responses"][1]["status"], 504);
    assert_eq!(
        json["responses"][1]["body"]["code"],
        "BatchDeadlineExceeded"
    );
}
