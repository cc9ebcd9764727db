//! The multipart dialect (Google API HTTP batch, OData `$batch`) against a real upstream:
//! parts become upstream requests through the guards, the outer `Authorization` applies to
//! parts that set none, the reply is `multipart/mixed` with `Content-ID: <response-ID>` and
//! the upstream's status, headers and bytes; whole-batch errors come back as one JSON error.

use crate::common;

use common::client;
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use std::net::SocketAddr;

const GOOGLE_PATH: &str = "/batch/drive/v3";

/// The default test config plus a multipart route at [`GOOGLE_PATH`] with `extra` lines.
fn config(upstream: SocketAddr, extra: &str) -> String {
    let mut text = GateConfig::new(upstream).toml();
    text.push_str(&format!(
        "\n[[routes]]\nname = \"google\"\npath = \"{GOOGLE_PATH}\"\ndialect = \"multipart\"\nupstream = \"api\"\nmax_items = 5\n{extra}\n"
    ));
    text
}

/// The reply's parts as (MIME headers, HTTP status line, HTTP headers, body), read with a
/// small splitter of this test's own (not the dialect's parser).
fn parts(reply: &client::Response) -> Vec<(String, String, String, Vec<u8>)> {
    let content_type = reply.header("content-type").expect("typed reply");
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let body = &reply.body;
    let text = String::from_utf8_lossy(body);
    assert!(text.ends_with(&format!("{delimiter}--\r\n")), "{text}");
    let mut out = Vec::new();
    for chunk in text.split(&format!("{delimiter}\r\n")).skip(1) {
        let chunk = chunk
            .split(&format!("\r\n{delimiter}"))
            .next()
            .expect("part");
        // The line break before the next delimiter belongs to it.
        let chunk = chunk.strip_suffix("\r\n").unwrap_or(chunk);
        let (mime, http) = chunk.split_once("\r\n\r\n").expect("MIME headers");
        let (head, body) = http.split_once("\r\n\r\n").expect("HTTP head");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        out.push((
            mime.to_string(),
            status.to_string(),
            headers.to_string(),
            body.as_bytes().to_vec(),
        ));
    }
    out
}

fn part(content_id: &str, request: &str) -> String {
    format!("--BOUNDARY\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{content_id}>\r\n\r\n{request}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_batches_run_and_answer_multipart() {
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/drive/v3/files/missing" => Reply::json(404, r#"{"error":{"code":404}}"#),
        _ => {
            let auth = req
                .headers
                .iter()
                .find(|(n, _)| n == "authorization")
                .map_or("none", |(_, v)| v.as_str());
            let body = serde_json::json!({"path": req.target, "method": req.method, "auth": auth, "body": String::from_utf8_lossy(&req.body)});
            Reply::json(200, &body.to_string())
        }
    })
    .await;
    let gate = gate::start(&config(upstream.addr, "")).await;
    let body = [
        part("id+1", "GET /drive/v3/files/a?alt=json HTTP/1.1\r\nAccept: application/json\r\n"),
        part("id+2", "POST /drive/v3/files HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 12\r\nAuthorization: Bearer part\r\n\r\n{\"name\":\"x\"}"),
        part("id+3", "GET /drive/v3/files/missing HTTP/1.1\r\n"),
        part("id+4", "GET http://evil.example/steal HTTP/1.1\r\n"),
    ]
    .concat()
        + "--BOUNDARY--\r\n";
    let reply = client::request(
        gate.addr,
        "POST",
        GOOGLE_PATH,
        &[
            ("Content-Type", "multipart/mixed; boundary=BOUNDARY"),
            ("Authorization", "Bearer outer"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let parts = parts(&reply);
    assert_eq!(parts.len(), 4);
    let ids: Vec<&str> = parts
        .iter()
        .map(|(mime, ..)| {
            mime.lines()
                .find_map(|l| l.strip_prefix("Content-ID: "))
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        ids,
        [
            "<response-id+1>",
            "<response-id+2>",
            "<response-id+3>",
            "<response-id+4>"
        ]
    );
    let statuses: Vec<&str> = parts.iter().map(|(_, s, ..)| s.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 400 Bad Request"
        ]
    );
    let first: serde_json::Value = serde_json::from_slice(&parts[0].3).expect("JSON");
    assert_eq!(first["path"], "/drive/v3/files/a?alt=json");
    assert_eq!(
        first["auth"], "Bearer outer",
        "the outer Authorization applies to every part"
    );
    let second: serde_json::Value = serde_json::from_slice(&parts[1].3).expect("JSON");
    assert_eq!(
        second["auth"], "Bearer part",
        "a part's own Authorization wins"
    );
    assert_eq!(second["body"], "{\"name\":\"x\"}");
    assert_eq!(parts[2].3, br#"{"error":{"code":404}}"#, "bytes unchanged");
    assert!(parts[2]
        .2
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    assert!(
        String::from_utf8_lossy(&parts[3].3).contains("InvalidParameter.Url")
            || String::from_utf8_lossy(&parts[3].3).contains("Url")
    );
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 3, "the foreign url never left: {paths:?}");
    assert!(!paths.iter().any(|p| p.contains("steal")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_batch_errors_are_one_json_error() {
    let upstream = Upstream::echo().await;
    let gate = gate::start(&config(upstream.addr, "")).await;
    let one = part("1", "GET /drive/v3/files/a HTTP/1.1\r\n");
    for (content_type, body, status, code) in [
        ("multipart/mixed", format!("{one}--BOUNDARY--"), 400, "InvalidArgument.Boundary"),
        ("multipart/mixed; boundary=BOUNDARY", one.clone(), 400, "InvalidArgument.Body"),
        ("multipart/mixed; boundary=BOUNDARY", format!("{}--BOUNDARY--", one.repeat(6)), 400, "InvalidArgument.Part"),
        ("multipart/mixed; boundary=BOUNDARY", "--BOUNDARY\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs--\r\n--BOUNDARY--".to_string(), 400, "Unsupported.ChangeSet"),
        ("application/json", "{}".to_string(), 415, "UnsupportedMediaType"),
    ] {
        let reply = client::post(gate.addr, GOOGLE_PATH, content_type, body.as_bytes()).await;
        assert_eq!(reply.status, status, "{content_type}: {}", reply.body_str());
        let json = reply.json();
        let got = json["error"]["status"].as_str().unwrap_or_default();
        assert!(got == code || (code == "InvalidArgument.Part" && got.contains("Part")), "{content_type}: {json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing of a refused batch was sent"
    );
}

/// OData: relative targets resolve against the service root, and `reply_content_id = "same"`
/// answers with the request's own Content-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odata_relative_targets_and_same_content_ids() {
    let upstream = Upstream::echo().await;
    let mut text = GateConfig::new(upstream.addr).toml();
    text.push_str("\n[[routes]]\nname = \"odata\"\npath = \"/odata/$batch\"\ndialect = \"multipart\"\nupstream = \"api\"\nreply_content_id = \"same\"\n");
    let gate = gate::start(&text).await;
    let body = "--batch_1\nContent-Type: application/http\nContent-ID: 1\n\nGET Customers('ALFKI') HTTP/1.1\nAccept: application/json\n\n\n--batch_1--\n";
    let reply = client::post(
        gate.addr,
        "/odata/$batch",
        "multipart/mixed;boundary=batch_1",
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let parts = parts(&reply);
    assert!(
        parts[0].0.lines().any(|l| l == "Content-ID: 1"),
        "the request's Content-ID as it was written: {}",
        parts[0].0
    );
    let echoed: serde_json::Value = serde_json::from_slice(&parts[0].3).expect("JSON");
    assert_eq!(echoed["path"], "/odata/Customers('ALFKI')");
}

/// Hostile peers: an upstream answer holding the request's boundary and binary bytes stays
/// one part of a reply that still splits right (a fresh boundary); an upstream that never
/// answers costs its part a 504 at the item timeout, not the batch; a batch body over
/// `max_body_bytes` is one 413 in the route's format and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_answers_and_oversized_batches() {
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/drive/v3/files/hang" => Reply::hang(),
        _ => Reply::bytes(
            200,
            "application/octet-stream",
            b"\r\n--BOUNDARY\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\x00\xff--BOUNDARY--\r\n",
        ),
    })
    .await;
    let gate = gate::start(&config(
        upstream.addr,
        "item_timeout = \"300ms\"\nmax_body_bytes = 4096",
    ))
    .await;
    let body = [
        part("1", "GET /drive/v3/files/forged HTTP/1.1\r\n"),
        part("2", "GET /drive/v3/files/hang HTTP/1.1\r\n"),
    ]
    .concat()
        + "--BOUNDARY--\r\n";
    let started = std::time::Instant::now();
    let reply = client::post(
        gate.addr,
        GOOGLE_PATH,
        "multipart/mixed; boundary=BOUNDARY",
        body.as_bytes(),
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        !content_type.contains("boundary=BOUNDARY"),
        "{content_type}"
    );
    let parts = parts(&reply);
    assert_eq!(parts.len(), 2, "{}", reply.body_str());
    let forged: &[u8] = b"\r\n--BOUNDARY\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\x00\xff--BOUNDARY--\r\n";
    assert!(
        reply.body.windows(forged.len()).any(|w| w == forged),
        "the upstream's bytes unchanged inside the reply"
    );
    assert_eq!(parts[0].1, "HTTP/1.1 200 OK");
    assert_eq!(parts[1].1, "HTTP/1.1 504 Gateway Timeout");
    let error: serde_json::Value = serde_json::from_slice(&parts[1].3).expect("JSON error");
    assert!(error["error"]["status"].is_string(), "{error}");

    let sent_before = upstream.requests().len();
    let big = [part(
        "1",
        &format!(
            "POST /drive/v3/files HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{}",
            "x".repeat(5000)
        ),
    )]
    .concat()
        + "--BOUNDARY--\r\n";
    let reply = client::post(
        gate.addr,
        GOOGLE_PATH,
        "multipart/mixed; boundary=BOUNDARY",
        big.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body_str());
    assert!(reply.json()["error"]["message"].is_string());
    assert_eq!(
        upstream.requests().len(),
        sent_before,
        "nothing of it was sent"
    );
}

/// OData references: `$1/Orders` waits for part 1 and goes to what it created (its
/// `Location`, here on the batch's own origin, or its body's `@odata.id`, relative), a
/// `Location` on another host is refused by the url guard (never followed), a part naming a
/// failed part answers 424 unsent, and `$metadata` (no such Content-ID) stays as written. A
/// reference to a later part refuses the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odata_content_id_references_follow_what_was_created() {
    let upstream = Upstream::with_handler(|req| match (req.method.as_str(), req.path.as_str()) {
        // Absolute on the origin the client used (the batch's Host reaches the upstream).
        ("POST", "/odata/Customers") => {
            let host = req
                .headers
                .iter()
                .find(|(name, _)| name == "host")
                .map_or("", |(_, value)| value.as_str());
            Reply::json(201, r#"{"ID":"C9"}"#)
                .with_header("Location", &format!("http://{host}/odata/Customers('C9')"))
        }
        ("POST", "/odata/People") => Reply::json(201, r#"{"@odata.id":"People(7)"}"#),
        ("POST", "/odata/Evil") => {
            Reply::json(201, "{}").with_header("Location", "http://evil.example/odata/x")
        }
        ("POST", "/odata/Fails") => Reply::json(500, "{}"),
        _ => Reply::json(200, &serde_json::json!({"target": req.target}).to_string()),
    })
    .await;
    let mut text = GateConfig::new(upstream.addr).toml();
    text.push_str("\n[[routes]]\nname = \"odata\"\npath = \"/odata/$batch\"\ndialect = \"multipart\"\nupstream = \"api\"\nreply_content_id = \"same\"\n");
    let gate = gate::start(&text).await;
    let part = |id: &str, line: &str| {
        format!("--b\r\nContent-Type: application/http\r\nContent-ID: {id}\r\n\r\n{line} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}\r\n")
    };
    let body = [
        part("1", "POST Customers"),
        part("2", "GET $1/Orders?$top=2"),
        part("3", "POST People"),
        part("4", "GET $3/Friends"),
        part("5", "POST Evil"),
        part("6", "GET $5"),
        part("7", "POST Fails"),
        part("8", "GET $7/Orders"),
        part("9", "GET $metadata"),
    ]
    .concat()
        + "--b--\r\n";
    let reply = client::post(
        gate.addr,
        "/odata/$batch",
        "multipart/mixed; boundary=b",
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let parts = parts(&reply);
    let status = |i: usize| parts[i].1.split(' ').nth(1).unwrap_or("").to_string();
    let statuses: Vec<String> = (0..parts.len()).map(status).collect();
    assert_eq!(
        statuses,
        ["201", "200", "201", "200", "201", "400", "500", "424", "200"]
    );
    let target = |i: usize| {
        let echoed: serde_json::Value = serde_json::from_slice(&parts[i].3).expect("JSON");
        echoed["target"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(target(1), "/odata/Customers('C9')/Orders?$top=2");
    assert_eq!(target(3), "/odata/People(7)/Friends");
    assert_eq!(status(5), "400", "a Location on another host is refused");
    assert_eq!(status(7), "424", "its part failed");
    assert_eq!(target(8), "/odata/$metadata");
    let sent: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert!(
        !sent.iter().any(|t| t.contains("evil") || t.contains("x")),
        "{sent:?}"
    );

    let forward = [part("1", "GET $2/Orders"), part("2", "POST Customers")].concat() + "--b--\r\n";
    let reply = client::post(
        gate.addr,
        "/odata/$batch",
        "multipart/mixed; boundary=b",
        forward.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body_str());
    assert!(
        reply.body_str().contains("not an earlier part"),
        "{}",
        reply.body_str()
    );
}
