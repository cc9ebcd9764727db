//! The real client libraries people batch with, unchanged, against batchgate started from
//! the shipped examples: `google-api-python-client`'s `BatchHttpRequest` through
//! `conf/examples/google.toml` (multipart), and `msgraph-core`'s `BatchRequestContent` with
//! `depends_on` through `conf/examples/graph.toml` (envelope with Graph's rules). What is
//! checked is what each library itself parsed (the scripts in `tests/clients/` print it), and
//! what the upstream saw.
//!
//! The libraries live in a Python venv with the pinned `tests/clients/requirements.txt`:
//! `.ci/run` makes it and sets `BATCHGATE_CLIENTS_PYTHON`; locally `target/clients-venv` is
//! used when it exists. Without one the tests skip with a note, except in CI, where they fail.

use crate::common;

use common::gate;
use common::upstream::{RecordedRequest, Reply, Upstream};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, or `None` (skip) outside CI when there is none.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("BATCHGATE_CLIENTS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/clients-venv/bin/python"));
    if python.exists() {
        return Some(python);
    }
    common::missing(
        &format!("the client venv at {}", python.display()),
        "run `python3 -m venv target/clients-venv && target/clients-venv/bin/pip install -r tests/clients/requirements.txt`",
    )
}

/// Runs `tests/clients/SCRIPT ARGS` and returns the JSON line it printed; panics with its
/// stderr when the library did not parse the reply.
async fn run_client(python: &Path, script: &str, args: &[&str]) -> Value {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(repo().join("tests/clients").join(script))
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish in 60 s"))
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed no JSON line ({e}): {stdout}\n{stderr}"))
}

fn paths(upstream: &Upstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|r: &RecordedRequest| r.path.clone())
        .collect()
}

/// Google's `BatchHttpRequest` (bare-LF multipart, quoted boundary with `=`, Content-IDs
/// `<uuid + id>`) sends one batch of three `files.get` calls; the library maps every reply
/// part back to its request, parses the two files and raises the 404 as that call's
/// `HttpError` with the upstream's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_batch_http_request_works_unchanged() {
    let Some(python) = python() else { return };
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/drive/v3/files/a" | "/drive/v3/files/b" => {
            let id = req.path.rsplit('/').next().unwrap_or_default();
            Reply::json(
                200,
                &format!(r#"{{"kind":"drive#file","id":"{id}","name":"file {id}"}}"#),
            )
        }
        _ => Reply::json(
            404,
            r#"{"error":{"code":404,"message":"File not found: missing.","status":"NOT_FOUND"}}"#,
        ),
    })
    .await;
    let gate = gate::start(&common::config::example("google.toml", &[upstream.addr])).await;
    let base = format!("http://{}", gate.addr);
    let parsed = run_client(&python, "google_batch.py", &[&base]).await;
    let responses = &parsed["responses"];
    for id in ["a", "b"] {
        assert_eq!(responses[id]["response"]["id"], id, "{parsed}");
        assert_eq!(responses[id]["response"]["name"], format!("file {id}"));
    }
    assert_eq!(responses["missing"]["error"]["status"], 404, "{parsed}");
    let content = responses["missing"]["error"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        content.contains("File not found: missing."),
        "the 404's body reached the library unchanged: {content}"
    );
    let mut sent = upstream.requests();
    sent.sort_by(|a, b| a.path.cmp(&b.path));
    let targets: Vec<&str> = sent.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/drive/v3/files/a?key=x&alt=json",
            "/drive/v3/files/b?key=x&alt=json",
            "/drive/v3/files/missing?key=x&alt=json"
        ]
    );
    for request in &sent {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.header("host"),
            Some(gate.addr.to_string().as_str()),
            "the batch request's Host, as for pass-through (no upstreams.api.host set)"
        );
    }
}

/// The upstream of a Graph-style API under `/v1.0`.
async fn graph_upstream() -> Upstream {
    Upstream::with_handler(|req| match req.path.as_str() {
        "/v1.0/me" => Reply::json(200, r#"{"id":"me","displayName":"Me"}"#).with_delay(50),
        "/v1.0/me/drive" => Reply::json(200, r#"{"id":"drive"}"#),
        "/v1.0/me/notes.txt" => Reply::text(200, "hello"),
        _ => Reply::json(
            404,
            r#"{"error":{"code":"Request_ResourceNotFound","message":"not found"}}"#,
        ),
    })
    .await
}

/// What msgraph-core parsed, checked the same way for absolute and relative item urls:
/// statuses by id, 424 for the item whose dependency answered 404, the text body decoded
/// from Graph's base64, and the upstream order (`/me/drive` only after `/me`, `/me/manager`
/// never).
fn check_graph(parsed: &Value, upstream: &Upstream) {
    let responses = &parsed["responses"];
    let statuses: Vec<(String, i64)> = ["1", "2", "3", "4", "5"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                responses[id]["status"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [("1", 200), ("2", 200), ("3", 404), ("4", 424), ("5", 200)]
        .iter()
        .map(|(id, status)| (id.to_string(), *status))
        .collect();
    assert_eq!(statuses, expected, "{parsed}");
    // Graph encodes a non-JSON body as one base64 string; the SDK decodes it. (A JSON
    // object body comes out as None in kiota-serialization-json 1.16.0, kiota-python
    // issue 737, so JSON bodies are checked on the wire by tests/it/dependencies.rs.)
    assert_eq!(responses["5"]["body"], "hello", "{parsed}");
    let headers = responses["4"]["headers"].to_string().to_ascii_lowercase();
    assert!(headers.contains("application/json"), "{parsed}");
    let seen = paths(upstream);
    let at = |p: &str| seen.iter().position(|s| s == p);
    assert!(
        at("/v1.0/me").expect("/me sent") < at("/v1.0/me/drive").expect("/me/drive sent"),
        "a dependent item runs after its dependency: {seen:?}"
    );
    assert_eq!(at("/v1.0/me/manager"), None, "424 items are never sent");
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// msgraph-core's batch with hand-made requests: absolute item urls on the batch endpoint's
/// own origin (`http://gate/v1.0/me`) and `depends_on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_core_batch_with_absolute_urls_and_dependencies() {
    let Some(python) = python() else { return };
    let upstream = graph_upstream().await;
    let gate = gate::start(&common::config::example("graph.toml", &[upstream.addr])).await;
    let base = format!("http://{}/v1.0", gate.addr);
    let parsed = run_client(&python, "graph_batch.py", &[&base]).await;
    let sent = parsed["sent_urls"]["1"].as_str().unwrap_or_default();
    assert!(
        sent.starts_with("http://"),
        "absolute urls were sent: {parsed}"
    );
    check_graph(&parsed, &upstream);
}

/// The same batch with relative urls (`/me`), as msgraph-sdk's generated builders send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_core_batch_with_relative_urls() {
    let Some(python) = python() else { return };
    let upstream = graph_upstream().await;
    let gate = gate::start(&common::config::example("graph.toml", &[upstream.addr])).await;
    let base = format!("http://{}/v1.0", gate.addr);
    let parsed = run_client(&python, "graph_batch.py", &[&base, "--relative"]).await;
    assert_eq!(parsed["sent_urls"]["1"], "/me", "{parsed}");
    check_graph(&parsed, &upstream);
}

/// msgraph-core parses the same batch answered progressively (the route's
/// `stream = ["progressive"]`): the reply's bytes, written as its finished prefix grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_core_parses_a_progressive_reply() {
    let Some(python) = python() else { return };
    let upstream = graph_upstream().await;
    let config = common::config::example("graph.toml", &[upstream.addr]).replacen(
        "dialect = \"envelope\"\n",
        "dialect = \"envelope\"\nstream = [\"progressive\"]\n",
        1,
    );
    let gate = gate::start(&config).await;
    let base = format!("http://{}/v1.0", gate.addr);
    let parsed = run_client(&python, "graph_batch.py", &[&base, "--relative"]).await;
    check_graph(&parsed, &upstream);
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_streamed_batches_total",
            &[("route", "graph_batch"), ("format", "progressive")]
        ),
        1.0
    );
}

/// jsonrpcclient builds a batch of three calls and parses the reply `conf/examples/
/// limelight.toml` gives progressively (`stream = ["progressive"]`): the array is written as its
/// finished prefix grows, so the slow first call holds the two quick ones back and the array
/// keeps the calls' order, each answer paired with its call by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpcclient_parses_a_progressive_reply() {
    let Some(python) = python() else { return };
    let upstream = Upstream::with_handler(|req| {
        let call: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let path = call["params"][1].clone();
        let delay = if path == "/slow" { 600 } else { 5 };
        let answer = serde_json::json!({"jsonrpc": "2.0", "result": path, "id": call["id"]});
        Reply::json(200, &answer.to_string()).with_delay(delay)
    })
    .await;
    let config = common::config::example("limelight.toml", &[upstream.addr]).replacen(
        "dialect = \"jsonrpc\"\n",
        "dialect = \"jsonrpc\"\nstream = [\"progressive\"]\n",
        1,
    );
    let gate = gate::start(&config).await;
    let url = format!("http://{}/jsonrpc2", gate.addr);
    let parsed = run_client(&python, "jsonrpc_batch.py", &[&url]).await;

    assert_eq!(parsed["order"], parsed["sent"], "request order: {parsed}");
    let sent = parsed["sent"].as_array().expect("sent ids");
    for (id, path) in sent.iter().zip(["/slow", "/a", "/b"]) {
        assert_eq!(parsed["results"][id.to_string()], path, "{parsed}");
    }
    assert_eq!(parsed["transfer_encoding"], "chunked", "{parsed}");
    assert_eq!(upstream.count(), 3);
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_streamed_batches_total",
            &[("route", "limelight"), ("format", "progressive")]
        ),
        1.0
    );
}

/// An upstream answering `/v2/file/slow` after 1.5 s and the rest at once, behind a route
/// that streams, and a batch of one slow and three quick items.
async fn streaming_gate() -> (Upstream, gate::Gate, String) {
    let upstream = Upstream::with_handler(|req| {
        let delay = if req.path.contains("slow") { 1500 } else { 5 };
        Reply::json(200, r#"{"ok":true}"#).with_delay(delay)
    })
    .await;
    let gate = common::config::GateConfig::new(upstream.addr)
        .route(r#"stream = ["ndjson", "sse"]"#)
        .start()
        .await;
    let body = common::batch::batch(
        ["slow", "a", "b", "c"]
            .iter()
            .map(|id| common::batch::item(id, "GET", &format!("/file/{id}")))
            .collect(),
    );
    (upstream, gate, body)
}

/// What a consumer read: each item's record with its arrival, and the terminal record.
fn check_streamed(parsed: &Value, what: &str) {
    let records = parsed["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {parsed}"));
    assert_eq!(
        records.len(),
        5,
        "{what}: four answers and the terminal record: {parsed}"
    );
    let at = |id: &str| {
        records
            .iter()
            .find(|r| r["data"]["id"] == id)
            .and_then(|r| r["at"].as_f64())
            .unwrap_or_else(|| panic!("{what}: no record for {id}: {parsed}"))
    };
    for id in ["a", "b", "c"] {
        assert!(at(id) < 1.0, "{what}: {id} arrived at {} s", at(id));
    }
    assert!(
        at("slow") >= 1.4,
        "{what}: slow arrived at {} s",
        at("slow")
    );
    let last = &records[4]["data"];
    assert_eq!(last["done"], true, "{what}: {parsed}");
    assert_eq!(last["outcomes"]["2xx"], 4, "{what}: {parsed}");
}

/// httpx's `iter_lines()` (JSON Lines) and httpx-sse's `iter_sse()` (server-sent events) read
/// each answer as it settles: the quick ones long before the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumers_read_streamed_answers_as_they_settle() {
    let Some(python) = python() else { return };
    let (_upstream, gate, body) = streaming_gate().await;
    let url = format!("http://{}/v2/batch", gate.addr);
    let lines = run_client(&python, "stream_batch.py", &[&url, "ndjson", &body]).await;
    assert_eq!(lines["content_type"], "application/x-ndjson");
    check_streamed(&lines, "httpx iter_lines");
    let events = run_client(&python, "stream_batch.py", &[&url, "sse", &body]).await;
    assert_eq!(events["content_type"], "text/event-stream");
    check_streamed(&events, "httpx-sse");
    let names: Vec<&Value> = events["records"]
        .as_array()
        .map(|r| r.iter().map(|r| &r["event"]).collect())
        .unwrap_or_default();
    assert_eq!(
        names.last().copied(),
        Some(&Value::from("done")),
        "{events}"
    );
    assert!(names.iter().take(4).all(|n| *n == "message"), "{events}");
}

/// Node's `fetch()` with the body's stream reader gets the quick answers before the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_reads_streamed_answers_as_they_settle() {
    let Some(node) = common::prom::require_tool("node", "apt-get install nodejs") else {
        return;
    };
    let (_upstream, gate, body) = streaming_gate().await;
    let url = format!("http://{}/v2/batch", gate.addr);
    let out = tokio::process::Command::new(node)
        .arg(repo().join("tests/clients/stream_batch.mjs"))
        .args([&url, &body])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(parsed["content_type"], "application/x-ndjson");
    check_streamed(&parsed, "node fetch");
}

/// A Graph-style API under `/v21.0` for the Meta SDKs; every call must carry the batch's
/// access token. `/v21.0/slow` answers after 3 s (past the test's 1 s item timeout).
async fn meta_upstream() -> Upstream {
    Upstream::with_handler(|req| {
        if !req.query.as_deref().unwrap_or("").contains("access_token=tok") {
            return Reply::json(400, r#"{"error":{"message":"no token","code":190}}"#);
        }
        let body = String::from_utf8_lossy(&req.body).into_owned();
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v21.0/me") => Reply::json(200, r#"{"id":"4","name":"Ann Lee"}"#),
            ("GET", "/v21.0/me/friends") => {
                Reply::json(200, r#"{"data":[{"id":"7"},{"id":"8"}],"paging":{}}"#)
            }
            ("GET", "/v21.0/people") => Reply::json(
                200,
                &serde_json::json!({"query": req.query}).to_string(),
            ),
            ("POST", "/v21.0/me/feed") | ("POST", "/v21.0/4/notes") => {
                Reply::json(200, &serde_json::json!({"id": "4_99", "sent": body}).to_string())
            }
            ("GET", "/v21.0/slow") => Reply::json(200, "{}").with_delay(3000),
            _ => Reply::json(
                404,
                r#"{"error":{"message":"Unsupported get request.","type":"GraphMethodException","code":100}}"#,
            ),
        }
    })
    .await
}

/// `conf/examples/meta.toml` with a 1 s item timeout, pointed at `upstream`.
async fn meta_gate(upstream: &Upstream) -> gate::Gate {
    let config = common::config::example("meta.toml", &[upstream.addr]).replacen(
        "concurrency = 16\n",
        "concurrency = 16\nitem_timeout = \"1s\"\n",
        1,
    );
    gate::start(&config).await
}

/// facebook-business's FacebookAdsApiBatch posts `batch=[...]` form-encoded to `/v21.0/` with
/// the token in the query: each callback gets what the SDK parsed (the feed post's body
/// form-encoded as the SDK wrote it, the 404 as a FacebookRequestError), and the call that
/// timed out comes back `null`, which the SDK returns as the batch to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facebook_business_batches_through_the_meta_example() {
    let Some(python) = python() else { return };
    let upstream = meta_upstream().await;
    let gate = meta_gate(&upstream).await;
    let base = format!("http://{}", gate.addr);
    let parsed = run_client(&python, "meta_batch.py", &["business", &base]).await;

    assert_eq!(
        parsed["success"]["me"],
        serde_json::json!({"id": "4", "name": "Ann Lee"})
    );
    let sent = parsed["success"]["post"]["sent"]
        .as_str()
        .expect("the feed post");
    assert!(sent.contains("message=hi%20there"), "{sent}");
    assert!(sent.contains("tags=%5B%22a%22%2C%22b%22%5D"), "{sent}");
    assert_eq!(parsed["failure"]["missing"]["code"], 100, "{parsed}");
    assert_eq!(parsed["failure"]["missing"]["status"], 404, "{parsed}");
    assert_eq!(parsed["retry"], serde_json::json!(["slow"]), "{parsed}");
    let seen = paths(&upstream);
    for path in [
        "/v21.0/me",
        "/v21.0/me/feed",
        "/v21.0/missing",
        "/v21.0/slow",
    ] {
        assert!(seen.iter().any(|p| p == path), "{path} not in {seen:?}");
    }
}

/// facebook-sdk sends a raw batch with names, depends_on and `{result=...}` references: a
/// referenced success is `null` (Meta's omit_response_on_success) unless it said otherwise,
/// values land encoded where they stand (the friends' ids joined by commas in the query, the
/// user's id as a path segment, the name form-encoded in the body), and a reference that
/// selects nothing answers 424 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facebook_sdk_passes_values_between_named_items() {
    let Some(python) = python() else { return };
    let upstream = meta_upstream().await;
    let gate = meta_gate(&upstream).await;
    let base = format!("http://{}", gate.addr);
    let parsed = run_client(&python, "meta_batch.py", &["raw", &base]).await;
    let reply = parsed["reply"].as_array().expect("the reply array");
    assert_eq!(reply.len(), 5, "{parsed}");
    assert_eq!(
        reply[0],
        Value::Null,
        "me is referenced: omitted on success"
    );
    assert_eq!(reply[1]["code"], 200);
    assert_eq!(reply[1]["body"]["data"][1]["id"], "8");
    assert_eq!(reply[2]["body"]["query"], "ids=7,8&access_token=tok");
    // The client's own text as it wrote it; the inserted value form-encoded.
    assert_eq!(reply[3]["body"]["sent"], "message=Hello Ann%20Lee");
    assert_eq!(reply[4]["code"], 424, "{parsed}");
    let message = reply[4]["body"]["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("{result=friends:$.paging.next}"),
        "{message}"
    );
    assert!(
        !paths(&upstream)
            .iter()
            .any(|p| p.starts_with("/v21.0/people/")),
        "the unresolved item was not sent"
    );
}
