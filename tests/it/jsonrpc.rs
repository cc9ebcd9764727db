//! The JSON-RPC 2.0 dialect end to end (issue #3): every batch example of section 7 of the
//! specification, the Limelight Origin Storage profile, each upstream failure kind per element,
//! and how elements travel upstream (exact bytes, ids, refusals, concurrency).

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::client::{self, Response};
use common::gate;
use common::upstream::{refused_addr, RecordedRequest, Reply, Upstream};
use serde_json::{json, Value};

/// The batch route of the generic config.
const RPC_PATH: &str = "/jsonrpc";
/// Where the generic config POSTs each element (differs from the route path on purpose).
const RPC_UPSTREAM_PATH: &str = "/rpc/v1";
/// The Limelight route (from `conf/examples/limelight.toml`).
const LIMELIGHT_PATH: &str = "/jsonrpc2";

/// The body the upstream answers `app_error` with (HTTP 500), relayed untouched by the gate.
fn app_error_body(id: &str) -> String {
    format!(
        r#"{{"jsonrpc": "2.0", "error": {{"code": -32010, "message": "disk full", "data": {{"free" : 0}}}}, "id": {id}}}"#
    )
}

/// A JSON-RPC server answering single calls only, like the specification's examples and
/// Limelight's Origin Storage, plus a few methods that misbehave on purpose.
fn rpc_server(req: &RecordedRequest) -> Reply {
    let Ok(call) = serde_json::from_slice::<Value>(&req.body) else {
        return Reply::json(
            200,
            r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
        );
    };
    if call.is_array() {
        // This server has no batch support: that is what the gate is for.
        return Reply::json(
            200,
            r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
        );
    }
    let method = call["method"].as_str().unwrap_or("");
    let params = &call["params"];
    let Some(id) = call.get("id") else {
        // A notification (notify_* and every other call without id): no content.
        return Reply::new(204);
    };
    let id = id.to_string();
    let ok = |result: Value| {
        Reply::json(
            200,
            &format!(r#"{{"jsonrpc": "2.0", "result": {result}, "id": {id}}}"#),
        )
    };
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    match method {
        "subtract" => match params {
            Value::Object(p) => ok(json!(
                int(p.get("minuend").unwrap_or(&Value::Null))
                    - int(p.get("subtrahend").unwrap_or(&Value::Null))
            )),
            _ => ok(json!(int(&params[0]) - int(&params[1]))),
        },
        "sum" => ok(json!(params
            .as_array()
            .map(|a| a.iter().map(int).sum::<i64>())
            .unwrap_or(0))),
        "get_data" => ok(json!(["hello", 5])),
        // Limelight: a directory with missing leading paths fails inside `result`.
        "makeDir" if params[1] == "1/2/3" => ok(json!(-3)),
        "makeDir" => ok(json!(0)),
        "ping" => ok(json!({"code": 0, "operation": params[0]})),
        "slow" => ok(json!("late")).with_delay(3000),
        "garbage" => Reply::text(200, "this is not JSON"),
        "http503" => Reply::text(503, "service unavailable"),
        "wrong_id" => Reply::json(200, r#"{"jsonrpc": "2.0", "result": 1, "id": 999}"#),
        "app_error" => Reply::json(500, &app_error_body(&id)),
        _ => Reply::json(
            200,
            &format!(
                r#"{{"jsonrpc": "2.0", "error": {{"code": -32601, "message": "Method not found"}}, "id": {id}}}"#
            ),
        ),
    }
}

/// A config with one JSON-RPC route `/jsonrpc` over upstream `api` at `addresses`.
fn rpc_config(addresses: &[SocketAddr], route_extra: &str) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[server]
listen = ["{{listen}}"]
threads = 2
default_upstream = "api"
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = [{addresses}]
connect_timeout = "1s"

[[routes]]
name = "rpc"
path = "{RPC_PATH}"
dialect = "jsonrpc"
upstream = "api"
upstream_path = "{RPC_UPSTREAM_PATH}"
max_items = 100
denied_methods = ["admin_shutdown"]
item_timeout = "1s"
{route_extra}
"#,
        addresses = addresses.join(", ")
    )
}

/// Starts the JSON-RPC test server and a gate in front of it.
async fn rpc_setup() -> (Upstream, gate::Gate) {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&rpc_config(&[upstream.addr], "concurrency = 16")).await;
    (upstream, gate)
}

/// POSTs `body` as `application/json` to `path`.
async fn post(gate: &gate::Gate, path: &str, body: &str) -> Response {
    client::post_json(gate.addr, path, body).await
}

/// Asserts a 200 `application/json` reply and returns its body as JSON.
fn json_reply(resp: &Response) -> Value {
    assert_eq!(resp.status, 200, "status; body: {}", lossy(resp));
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    resp.json()
}

fn lossy(resp: &Response) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// The JSON-RPC method of every request the upstream saw, in arrival order.
fn methods_seen(upstream: &Upstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|r| r.json()["method"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Section 7 of the JSON-RPC 2.0 specification.
// ---------------------------------------------------------------------------

/// Proves the specification's "rpc call Batch" example: the exact 5-element reply (invalid
/// element answered with id null, notification unanswered) and that every valid element,
/// notification included, went upstream while `{"foo":"boo"}` did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_mixed_batch() {
    let (upstream, gate) = rpc_setup().await;
    let body = r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#;
    let reply = json_reply(&post(&gate, RPC_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ])
    );
    assert_eq!(
        sorted(methods_seen(&upstream)),
        sorted(
            ["sum", "notify_hello", "subtract", "foo.get", "get_data"]
                .map(String::from)
                .to_vec()
        ),
        "each valid element (and only those) goes upstream"
    );
}

/// Proves "rpc call Batch, invalid JSON": one -32700 Parse error object (not an array),
/// and nothing is sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_invalid_json_batch() {
    let (upstream, gate) = rpc_setup().await;
    let body = r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#;
    let reply = json_reply(&post(&gate, RPC_PATH, body).await);
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
    );
    assert_eq!(upstream.count(), 0, "a parse error sends nothing upstream");
}

/// Proves "rpc call with an empty Array": one -32600 Invalid Request object, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_empty_array() {
    let (upstream, gate) = rpc_setup().await;
    let reply = json_reply(&post(&gate, RPC_PATH, "[]").await);
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null})
    );
    assert_eq!(upstream.count(), 0);
}

/// Proves "rpc call with an invalid Batch (but not empty)" and "rpc call with invalid Batch":
/// `[1]` answers an array of one -32600 with id null, `[1,2,3]` an array of three; nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_invalid_elements() {
    let (upstream, gate) = rpc_setup().await;
    let invalid = json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null});

    let reply = json_reply(&post(&gate, RPC_PATH, "[1]").await);
    assert_eq!(reply, json!([invalid]));

    let reply = json_reply(&post(&gate, RPC_PATH, "[1,2,3]").await);
    assert_eq!(reply, json!([invalid, invalid, invalid]));

    assert_eq!(upstream.count(), 0, "invalid elements are never sent");
}

/// Proves "rpc call Batch (all notifications)": HTTP 204 with no body, and both
/// notifications were still delivered upstream as POSTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_all_notifications() {
    let (upstream, gate) = rpc_setup().await;
    let body = r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"#;
    let resp = post(&gate, RPC_PATH, body).await;
    assert_eq!(resp.status, 204, "body: {}", lossy(&resp));
    assert!(resp.body.is_empty(), "204 has no body: {}", lossy(&resp));
    assert_eq!(
        sorted(methods_seen(&upstream)),
        vec!["notify_hello".to_string(), "notify_sum".to_string()],
        "both notifications are delivered"
    );
    for r in upstream.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, RPC_UPSTREAM_PATH);
    }
}

// ---------------------------------------------------------------------------
// Limelight Origin Storage profile (conf/examples/limelight.toml).
// ---------------------------------------------------------------------------

/// Proves Limelight's "Create Three Directories": three makeDir calls answer three results 0
/// with their ids (numeric and string ids alike), each sent as its own POST to /jsonrpc2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limelight_three_directories() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&common::config::example("limelight.toml", &[upstream.addr])).await;

    let body = r#"[
 {"jsonrpc": "2.0", "params": ["467e", "/house1"], "method": "makeDir", "id": 1},
 {"jsonrpc": "2.0", "params": ["467e", "/house2"], "method": "makeDir", "id": 2},
 {"jsonrpc": "2.0", "params": ["467e", "/house3"], "method": "makeDir", "id": 3}
]"#;
    let resp = client::request(
        gate.addr,
        "POST",
        LIMELIGHT_PATH,
        &[
            ("Content-Type", "application/json"),
            ("X-Agile-Authorization", "tok-467e"),
        ],
        body.as_bytes(),
    )
    .await;
    let reply = json_reply(&resp);
    assert_eq!(
        reply,
        json!([
            {"id": 1, "jsonrpc": "2.0", "result": 0},
            {"id": 2, "jsonrpc": "2.0", "result": 0},
            {"id": 3, "jsonrpc": "2.0", "result": 0}
        ])
    );
    let log = upstream.requests();
    assert_eq!(log.len(), 3, "one upstream call per element");
    for r in &log {
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/jsonrpc2")
        );
        assert_eq!(
            r.header_all("x-agile-authorization"),
            vec!["tok-467e"],
            "forward_headers carries the token to every call"
        );
    }

    // The curl example of the page, with string ids.
    let body = r#"[{"jsonrpc": "2.0", "params": ["467e", "/house1"], "method": "makeDir", "id": "1"}, {"jsonrpc": "2.0", "params": ["467e", "/house2"], "method": "makeDir", "id": "2"}, {"jsonrpc": "2.0", "params": ["467e", "/house3"], "method": "makeDir", "id": "3"}]"#;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"jsonrpc": "2.0", "id": "1", "result": 0},
            {"jsonrpc": "2.0", "id": "2", "result": 0},
            {"jsonrpc": "2.0", "id": "3", "result": 0}
        ])
    );
}

/// Proves Limelight's "Batch Request with a Failed Request Object": the ping result and the
/// failing makeDir's `"result": -3` are both relayed as the upstream answered them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limelight_failed_request_object_is_relayed() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&common::config::example("limelight.toml", &[upstream.addr])).await;
    let body = r#"[
 {"jsonrpc": "2.0", "params": ["hello"], "method": "ping", "id": "1"},
 {"jsonrpc": "2.0", "params": ["91c", "1/2/3"], "method": "makeDir", "id": "2"}
]"#;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"id": "1", "jsonrpc": "2.0", "result": {"code": 0, "operation": "hello"}},
            {"id": "2", "jsonrpc": "2.0", "result": -3}
        ])
    );
}

/// Proves the Limelight profile's `unique_ids`: a batch in which two elements share an id
/// is refused whole (one -32600 with id null, reason `duplicate_id`) and nothing is sent,
/// since two answers with one id could not be told apart; `"1"` next to `1` is not a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limelight_duplicate_ids_are_refused() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&common::config::example("limelight.toml", &[upstream.addr])).await;
    let body = r#"[
 {"jsonrpc": "2.0", "params": ["467e", "/a"], "method": "makeDir", "id": 1},
 {"jsonrpc": "2.0", "params": ["467e", "/b"], "method": "makeDir", "id": 1},
 {"jsonrpc": "2.0", "params": ["467e", "/c"], "method": "makeDir", "id": "1"}
]"#;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, body).await);
    assert_eq!(reply["id"], Value::Null, "{reply}");
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert_eq!(reply["error"]["data"]["reason"], "duplicate_id", "{reply}");
    assert!(upstream.requests().is_empty(), "nothing is sent");

    let body = r#"[
 {"jsonrpc": "2.0", "params": ["467e", "/a"], "method": "makeDir", "id": 1},
 {"jsonrpc": "2.0", "params": ["467e", "/c"], "method": "makeDir", "id": "1"}
]"#;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"id": 1, "jsonrpc": "2.0", "result": 0},
            {"id": "1", "jsonrpc": "2.0", "result": 0}
        ])
    );
}

/// Proves Limelight's "Too Many Requests in Batch": four objects answer the single
/// `-32099 Batch Error` object with id null, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limelight_too_many_requests() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&common::config::example("limelight.toml", &[upstream.addr])).await;
    let body = r#"[
 {"jsonrpc": "2.0", "params": ["467e", "/a"], "method": "makeDir", "id": 1},
 {"jsonrpc": "2.0", "params": ["467e", "/b"], "method": "makeDir", "id": 2},
 {"jsonrpc": "2.0", "params": ["467e", "/c"], "method": "makeDir", "id": 3},
 {"jsonrpc": "2.0", "params": ["467e", "/d"], "method": "makeDir", "id": 4}
]"#;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, body).await);
    assert_eq!(
        reply,
        json!({"error": {"code": -32099, "message": "Batch Error"}, "id": null, "jsonrpc": "2.0"})
    );
    assert_eq!(
        upstream.count(),
        0,
        "a refused batch sends nothing upstream"
    );
}

/// Proves Limelight's "Batch with No Requests": `[]` answers the single `-32700 Parse Error`
/// object with id null, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limelight_empty_batch() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let gate = gate::start(&common::config::example("limelight.toml", &[upstream.addr])).await;
    let reply = json_reply(&post(&gate, LIMELIGHT_PATH, "[]").await);
    assert_eq!(
        reply,
        json!({"error": {"code": -32700, "message": "Parse Error"}, "id": null, "jsonrpc": "2.0"})
    );
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// Upstream failures, one element at a time.
// ---------------------------------------------------------------------------

/// Asserts `entry` is a gate-made server error with `code`, `reason` and `id`.
fn assert_server_error(entry: &Value, code: i64, reason: &str, id: &Value) {
    assert_eq!(entry["jsonrpc"], "2.0", "{entry}");
    assert_eq!(entry["id"], *id, "{entry}");
    assert!(entry.get("result").is_none(), "{entry}");
    assert_eq!(entry["error"]["code"], code, "{entry}");
    assert!(
        entry["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{entry}"
    );
    assert_eq!(entry["error"]["data"]["reason"], reason, "{entry}");
}

/// Proves each upstream failure of one element (item timeout → -32001, non-JSON 200 → -32002,
/// non-2xx without a JSON-RPC body → -32003 with data.status, wrong id → -32004) is reported
/// for that element only, while its neighbours are still answered; and that an application
/// error sent with HTTP 500 and a proper JSON-RPC body is relayed untouched. An answer that
/// came with 200 but could not be used (not JSON-RPC, another id) counts as `upstream_error`
/// and makes its batch partial, not `2xx` and `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_per_element() {
    let (upstream, gate) = rpc_setup().await;
    let cases: [(&str, Option<(i64, &str)>); 5] = [
        ("slow", Some((-32001, "timeout"))),
        ("garbage", Some((-32002, "invalid_reply"))),
        ("http503", Some((-32003, "http_status"))),
        ("wrong_id", Some((-32004, "id_mismatch"))),
        ("app_error", None),
    ];
    for (method, expected) in cases {
        let body = format!(
            r#"[{{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"a"}},{{"jsonrpc":"2.0","method":"{method}","params":[],"id":"b"}},{{"jsonrpc":"2.0","method":"subtract","params":[5,3],"id":"c"}}]"#
        );
        let resp = post(&gate, RPC_PATH, &body).await;
        let reply = json_reply(&resp);
        let items = reply.as_array().unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(items.len(), 3, "{method}: {reply}");
        assert_eq!(
            items[0],
            json!({"jsonrpc": "2.0", "result": 3, "id": "a"}),
            "{method}"
        );
        assert_eq!(
            items[2],
            json!({"jsonrpc": "2.0", "result": 2, "id": "c"}),
            "{method}"
        );
        match expected {
            Some((code, reason)) => {
                assert_server_error(&items[1], code, reason, &json!("b"));
                if method == "http503" {
                    assert_eq!(items[1]["error"]["data"]["status"], 503, "{reply}");
                }
            }
            None => {
                let relayed = app_error_body("\"b\"");
                assert!(
                    resp.body_str().contains(&relayed),
                    "the HTTP 500 JSON-RPC error is relayed byte for byte: {}",
                    resp.body_str()
                );
                assert_eq!(items[1]["error"]["code"], -32010);
            }
        }
    }
    assert_eq!(upstream.count(), 15, "every element was sent");
    let metrics = common::prom::scrape(gate.admin).await;
    let items = |outcome: &str| {
        metrics
            .get(
                "batchgate_items_total",
                &[("route", "rpc"), ("upstream", "api"), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(items("upstream_error"), 2.0, "garbage and wrong_id");
    assert_eq!(items("timeout"), 1.0);
    assert_eq!(
        items("5xx"),
        2.0,
        "http503 and the relayed application error"
    );
    assert_eq!(items("2xx"), 10.0, "the neighbours only");
    // A batch is counted once its reply is out (pingora's logging phase): wait for the last.
    let batches = |scrape: &common::prom::Scrape, outcome: &str| {
        scrape
            .get(
                "batchgate_batches_total",
                &[("route", "rpc"), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
    };
    let metrics =
        common::prom::scrape_until(gate.admin, Duration::from_secs(5), "5 batches", |s| {
            batches(s, "partial") + batches(s, "ok") >= 5.0
        })
        .await;
    assert_eq!(
        (batches(&metrics, "partial"), batches(&metrics, "ok")),
        (5.0, 0.0)
    );
}

/// Proves a refused connection fails only the elements that went to the dead address
/// (-32000, data.reason "connect_error") while the others are answered: the upstream has
/// one live and one refusing address, so round robin sends half the elements to each. The
/// reply names no address and no OS error; the batch's log line does, with its request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_per_element() {
    let upstream = Upstream::with_handler(rpc_server).await;
    let dead = refused_addr().await;
    let gate = gate::start_with_env(
        &rpc_config(&[upstream.addr, dead], "concurrency = 1"),
        &[("RUST_LOG", "warn,batchgate::batch=info")],
    )
    .await;
    let body = r#"[
        {"jsonrpc":"2.0","method":"sum","params":[1,1],"id":1},
        {"jsonrpc":"2.0","method":"sum","params":[2,2],"id":2},
        {"jsonrpc":"2.0","method":"sum","params":[3,3],"id":3},
        {"jsonrpc":"2.0","method":"sum","params":[4,4],"id":4}
    ]"#;
    let resp = post(&gate, RPC_PATH, body).await;
    let text = resp.body_str();
    for internal in [
        dead.to_string(),
        "os error".to_string(),
        "refused".to_string(),
    ] {
        assert!(!text.contains(&internal), "{internal:?} in {text}");
    }
    let request_id = resp.header("x-request-id").unwrap_or("?").to_string();
    let log = gate.stderr_until("detail=", Duration::from_secs(5)).await;
    let line = log
        .lines()
        .find(|l| l.contains(&request_id))
        .unwrap_or_else(|| panic!("no batch line with {request_id}: {log}"));
    assert!(line.contains(&dead.to_string()), "{line}");
    let reply = json_reply(&resp);
    let items = reply.as_array().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(items.len(), 4, "{reply}");
    let mut answered = HashSet::new();
    let mut refused = 0;
    for (i, entry) in items.iter().enumerate() {
        let id = i as i64 + 1;
        if entry.get("result").is_some() {
            assert_eq!(
                *entry,
                json!({"jsonrpc": "2.0", "result": 2 * id, "id": id})
            );
            answered.insert(id);
        } else {
            assert_server_error(entry, -32000, "connect_error", &json!(id));
            assert_eq!(entry["error"]["data"]["upstream"], "api", "{entry}");
            refused += 1;
        }
    }
    assert_eq!((answered.len(), refused), (2, 2), "{reply}");
    let sent: HashSet<i64> = upstream
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        sent, answered,
        "the live upstream got exactly the answered ones"
    );
}

// ---------------------------------------------------------------------------
// How elements travel.
// ---------------------------------------------------------------------------

/// Proves each element is its own `POST upstream_path` with `Content-Type: application/json`
/// and the element's exact bytes (odd spacing, escapes and number formats kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_are_sent_as_exact_bytes() {
    let (upstream, gate) = rpc_setup().await;
    let e1 = r#"{ "jsonrpc" :"2.0",   "method":"sum","params":[1, 2.50, 1e1],"id":"x\u0031" }"#;
    let e2 = "{\"id\":7,\n\t\"method\" : \"subtract\" , \"params\":{\"subtrahend\":1,\"minuend\":8},\"jsonrpc\":\"2.0\"}";
    let e3 = r#"{"jsonrpc":"2.0","method":"notify_x","params":["\u00e9", "é"]}"#;
    let body = format!("[ {e1} ,\n  {e2},{e3}  ]");
    let reply = json_reply(&post(&gate, RPC_PATH, &body).await);
    assert_eq!(reply.as_array().map(Vec::len), Some(2), "{reply}");
    assert_eq!(reply[1], json!({"jsonrpc": "2.0", "result": 7, "id": 7}));

    let log = upstream.requests();
    assert_eq!(log.len(), 3, "one POST per element");
    let mut bodies: Vec<&str> = log.iter().map(|r| r.body_str()).collect();
    bodies.sort();
    let mut expected = vec![e1, e2, e3];
    expected.sort();
    assert_eq!(bodies, expected, "each element's exact bytes");
    for r in &log {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, RPC_UPSTREAM_PATH);
        assert_eq!(r.header_all("content-type"), vec!["application/json"]);
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
}

/// Proves ids keep their JSON type: `"1"` and `1` are different ids and each reply carries
/// exactly the id of its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_and_number_ids_are_preserved() {
    let (_upstream, gate) = rpc_setup().await;
    let body = r#"[
        {"jsonrpc":"2.0","method":"sum","params":[1],"id":"1"},
        {"jsonrpc":"2.0","method":"sum","params":[2],"id":1},
        {"jsonrpc":"2.0","method":"sum","params":[3],"id":-2.5},
        {"jsonrpc":"2.0","method":"sum","params":[4],"id":"abc"}
    ]"#;
    let reply = json_reply(&post(&gate, RPC_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"jsonrpc": "2.0", "result": 1, "id": "1"},
            {"jsonrpc": "2.0", "result": 2, "id": 1},
            {"jsonrpc": "2.0", "result": 3, "id": -2.5},
            {"jsonrpc": "2.0", "result": 4, "id": "abc"}
        ])
    );
    let ids: Vec<Value> = reply
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["id"].clone())
        .collect();
    assert!(ids[0].is_string() && ids[1].is_number(), "{ids:?}");
}

/// Proves invalid elements (jsonrpc "1.0", method not a string, scalar params, missing
/// jsonrpc) get -32600 with their id and never reach the upstream, next to a valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_elements_are_not_sent() {
    let (upstream, gate) = rpc_setup().await;
    let body = r#"[
        {"jsonrpc":"1.0","method":"sum","params":[1],"id":1},
        {"jsonrpc":"2.0","method":5,"params":[1],"id":2},
        {"jsonrpc":"2.0","method":"sum","params":3,"id":3},
        {"method":"sum","params":[1],"id":4},
        {"jsonrpc":"2.0","method":"sum","params":[1,2],"id":5}
    ]"#;
    let reply = json_reply(&post(&gate, RPC_PATH, body).await);
    let invalid = |id: i64| json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": id});
    assert_eq!(
        reply,
        json!([
            invalid(1),
            invalid(2),
            invalid(3),
            invalid(4),
            {"jsonrpc": "2.0", "result": 3, "id": 5}
        ])
    );
    let log = upstream.requests();
    assert_eq!(log.len(), 1, "only the valid element is sent");
    assert_eq!(log[0].json()["id"], 5);
}

/// Proves a denied method answers -32601 Method not found and is never sent, a denied
/// notification gets no reply either, and the other elements go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_methods_are_not_sent() {
    let (upstream, gate) = rpc_setup().await;
    let body = r#"[
        {"jsonrpc":"2.0","method":"admin_shutdown","params":[],"id":"d"},
        {"jsonrpc":"2.0","method":"admin_shutdown","params":[]},
        {"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"s"}
    ]"#;
    let reply = json_reply(&post(&gate, RPC_PATH, body).await);
    assert_eq!(
        reply,
        json!([
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "d"},
            {"jsonrpc": "2.0", "result": 3, "id": "s"}
        ])
    );
    assert_eq!(methods_seen(&upstream), vec!["sum".to_string()]);
}

/// Proves an outer `Content-Type: text/plain` is refused with 415 and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_plain_is_415() {
    let (upstream, gate) = rpc_setup().await;
    let body = br#"[{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":1}]"#;
    let resp = client::post(gate.addr, RPC_PATH, "text/plain", body).await;
    assert_eq!(resp.status, 415, "body: {}", lossy(&resp));
    let json = resp.json();
    assert_eq!(json["jsonrpc"], "2.0", "{json}");
    assert!(json["error"]["code"].is_i64(), "{json}");
    assert_eq!(json["id"], Value::Null, "{json}");
    assert_eq!(upstream.count(), 0, "a refused batch sends nothing");
}

/// Proves the route's `concurrency` bounds the elements in flight upstream (12 elements of
/// 100 ms with concurrency 3 → peak ≤ 3) while still running them in parallel (peak ≥ 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded() {
    let upstream = Upstream::with_handler(|req| rpc_server(req).with_delay(100)).await;
    let gate = gate::start(&rpc_config(&[upstream.addr], "concurrency = 3")).await;
    let elements: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[{i}],"id":{i}}}"#))
        .collect();
    let body = format!("[{}]", elements.join(","));
    let reply = json_reply(&post(&gate, RPC_PATH, &body).await);
    let expected: Vec<Value> = (0..12)
        .map(|i| json!({"jsonrpc": "2.0", "result": i, "id": i}))
        .collect();
    assert_eq!(reply, Value::Array(expected), "all answered, in order");
    assert_eq!(upstream.count(), 12);
    let peak = upstream.peak();
    assert!(peak <= 3, "peak {peak} exceeds concurrency 3");
    assert!(peak >= 2, "peak {peak}: elements were not run in parallel");
}

/// Proves a single call (an object, not an array) is relayed as the upstream answered it:
/// same status and the same body bytes, also for an HTTP 500 JSON-RPC error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_call_is_relayed() {
    let (upstream, gate) = rpc_setup().await;
    let call = r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#;
    let resp = post(&gate, RPC_PATH, call).await;
    assert_eq!(resp.status, 200, "body: {}", lossy(&resp));
    assert_eq!(
        resp.body_str(),
        r#"{"jsonrpc": "2.0", "result": 19, "id": 1}"#,
        "the upstream's bytes, not an array"
    );
    let log = upstream.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body_str(), call);

    let call = r#"{"jsonrpc":"2.0","method":"app_error","id":"e"}"#;
    let resp = post(&gate, RPC_PATH, call).await;
    assert_eq!(resp.status, 500, "body: {}", lossy(&resp));
    assert_eq!(resp.body_str(), app_error_body("\"e\""));
}

/// JSON-RPC items are POSTs: a route of read-only methods declares them safe to repeat with
/// `idempotent_methods = ["POST"]`, and a call that met a 503 on one address is answered by
/// the other. Without the declaration the 503 goes back to the client as the call's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_declares_posts_repeatable_gets_its_calls_retried() {
    let busy = Upstream::with_handler(|_| Reply::json(503, "{}")).await;
    let good = Upstream::with_handler(rpc_server).await;
    let calls = r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 1},
        {"jsonrpc": "2.0", "method": "sum", "params": [3, 4], "id": 2}
    ]"#;
    let with_retry = |route_extra: &str| {
        rpc_config(&[busy.addr, good.addr], route_extra).replace(
            "connect_timeout = \"1s\"\n",
            "connect_timeout = \"1s\"\n[upstreams.api.retry]\n",
        )
    };
    let gate = gate::start(&with_retry(
        "concurrency = 1\nidempotent_methods = [\"POST\"]",
    ))
    .await;
    let reply = json_reply(&post(&gate, RPC_PATH, calls).await);
    let results: Vec<Value> = reply
        .as_array()
        .expect("a batch reply")
        .iter()
        .map(|r| r["result"].clone())
        .collect();
    assert_eq!(results, vec![json!(3), json!(7)], "{reply}");
    drop(gate);
    busy.reset();
    good.reset();
    let gate = gate::start(&with_retry("concurrency = 1")).await;
    let reply = json_reply(&post(&gate, RPC_PATH, calls).await);
    let errors = reply
        .as_array()
        .expect("a batch reply")
        .iter()
        .filter(|r| r.get("error").is_some())
        .count();
    assert_eq!(errors, 1, "{reply}");
    assert_eq!(busy.count() + good.count(), 2, "no call sent twice");
}
