//! Hostile and unusual clients against all three dialects at once: HTTP/1.1 pipelining,
//! malformed chunked bodies, byte order marks, charsets other than UTF-8, the JSON-RPC over
//! HTTP media types, path-parameter dot segments (`..;`), upstream replies with other number
//! spellings of an id, and fan-out ids that must not be rounded or patched with U+FFFD.
//! Every test also checks that the process did not panic.

use crate::common;

use std::time::Duration;

use common::batch::{assert_rejected, assert_upstream_untouched, responses, BATCH_PATH};
use common::client::{self, build_request, Conn, Response};
use common::config::GateConfig;
use common::gate::{self, Gate};
use common::upstream::{RecordedRequest, Reply, Upstream};
use serde_json::{json, Value};

const RPC_PATH: &str = "/rpc";
const FAN_PATH: &str = "/fan";
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The envelope route of `GateConfig` plus a JSON-RPC route and a fan-out route.
fn config(upstream: &Upstream) -> String {
    let mut text = GateConfig::new(upstream.addr).toml();
    text.push_str(
        r#"
[[routes]]
name = "rpc"
path = "/rpc"
dialect = "jsonrpc"
upstream_path = "/rpc/single"

[[routes]]
name = "fan"
path = "/fan"
dialect = "fanout"
[routes.ids]
param = "ids"
[routes.request]
path = "/item/{id}"
[routes.reply]
list_field = "items"
fields = { id = "$id", value = "/value" }
"#,
    );
    text
}

/// An upstream for every route: envelope children are echoed, JSON-RPC calls answered by
/// method, fan-out parts answered by id.
fn handler(req: &RecordedRequest) -> Reply {
    if req.path == "/rpc/single" {
        let call: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let id = call["id"].to_string();
        return match call["method"].as_str() {
            // A JavaScript/PHP-style server: the id comes back as another spelling.
            Some("float_id") => Reply::json(200, r#"{"jsonrpc":"2.0","result":1,"id":1.0}"#),
            // A .NET-style server: a byte order mark before the object.
            Some("bom") => Reply::bytes(
                200,
                "application/json; charset=utf-8",
                &[
                    BOM,
                    format!(r#"{{"jsonrpc":"2.0","result":"bom","id":{id}}}"#).as_bytes(),
                ]
                .concat(),
            ),
            _ => Reply::json(
                200,
                &format!(r#"{{"jsonrpc":"2.0","result":"ok","id":{id}}}"#),
            ),
        };
    }
    if let Some(id) = req.path.strip_prefix("/item/") {
        return Reply::json(
            200,
            &format!(r#"{{"value":{{"id":"{id}","big":12345678901234567890123}}}}"#),
        );
    }
    if req.path.starts_with("/v2/slow") {
        return Reply::json(200, r#"{"slow":true}"#).with_delay(300);
    }
    common::upstream::echo(req)
}

async fn start() -> (Upstream, Gate) {
    let upstream = Upstream::with_handler(handler).await;
    let gate = gate::start(&config(&upstream)).await;
    (upstream, gate)
}

fn assert_no_panic(gate: &Gate) {
    let stderr = gate.stderr();
    assert!(
        !stderr.contains("panicked"),
        "batchgate panicked:\n{stderr}"
    );
}

const ENVELOPE: &str = r#"{"requests":[{"id":"a","method":"GET","url":"/x"}]}"#;
const RPC_BATCH: &str = r#"[{"jsonrpc":"2.0","method":"m","id":1}]"#;

/// A keep-alive request (no `Connection: close`).
fn keep_alive(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    build_request(
        method,
        target,
        &[headers, &[("Connection", "keep-alive")]].concat(),
        body,
    )
}

/// Proves requests pipelined in one write (RFC 9112 section 9.3.2) are all answered, in
/// order, whatever mix of dialects and pass-through; before, pingora answered the first and
/// closed the connection, dropping the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let (_upstream, gate) = start().await;
    let json = [("Content-Type", "application/json")];
    let mut raw = keep_alive("POST", BATCH_PATH, &json, ENVELOPE.as_bytes());
    raw.extend(keep_alive("POST", RPC_PATH, &json, RPC_BATCH.as_bytes()));
    raw.extend(keep_alive("GET", "/fan?ids=1,2", &[], b""));
    raw.extend(keep_alive("GET", "/v2/hello", &[], b""));
    raw.extend(build_request(
        "POST",
        BATCH_PATH,
        &json,
        ENVELOPE.as_bytes(),
    ));
    let mut conn = Conn::connect(gate.addr).await;
    conn.write(&raw).await;

    let first = conn.read_response().await;
    assert_eq!(responses(&first)[0]["id"], "a");
    let second = conn.read_response().await;
    assert_eq!(second.json()[0]["result"], "ok", "{}", second.body_str());
    let third = conn.read_response().await;
    assert_eq!(third.json()["items"][1]["id"], "2", "{}", third.body_str());
    let fourth = conn.read_response().await;
    assert_eq!(fourth.status, 200);
    assert_eq!(fourth.json()["path"], "/v2/hello", "{}", fourth.body_str());
    let fifth = conn.read_response().await;
    assert_eq!(responses(&fifth)[0]["status"], 200);
    assert!(conn.is_closed(Duration::from_secs(2)).await);
    assert_no_panic(&gate);
}

/// Proves a request written while the previous batch is still running upstream is kept and
/// answered after it (the gate's "did the client leave?" probe reads those bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_pipelined_behind_a_running_batch_is_answered() {
    let (upstream, gate) = start().await;
    let json = [("Content-Type", "application/json")];
    let slow = r#"{"requests":[{"id":"s","method":"GET","url":"/slow"}]}"#;
    let mut conn = Conn::connect(gate.addr).await;
    conn.write(&keep_alive("POST", BATCH_PATH, &json, slow.as_bytes()))
        .await;
    // The next request is written while the batch runs upstream.
    crate::common::eventually(Duration::from_secs(5), "the slow item upstream", || {
        upstream.in_flight() >= 1
    })
    .await;
    conn.write(&build_request(
        "POST",
        BATCH_PATH,
        &json,
        ENVELOPE.as_bytes(),
    ))
    .await;
    let first = conn.read_response().await;
    assert_eq!(responses(&first)[0]["body"], json!({"slow": true}));
    let second = conn.read_response().await;
    assert_eq!(responses(&second)[0]["id"], "a");
    assert_no_panic(&gate);
}

fn chunked(path: &str, chunks: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
    )
    .into_bytes()
}

/// Proves a malformed chunked body is the client's 400 (pingora's default was an empty 500)
/// in each dialect's own error format, nothing is sent, and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_a_client_error_in_dialect_format() {
    let (upstream, gate) = start().await;
    let bad = "zz\r\n{}\r\n0\r\n\r\n";

    let mut conn = Conn::connect(gate.addr).await;
    let resp = conn.send(&chunked(BATCH_PATH, bad)).await;
    assert_rejected(&resp, 400, "InvalidParameter.Body");
    assert!(conn.is_closed(Duration::from_secs(2)).await);

    let resp = client::send_raw(gate.addr, &chunked(RPC_PATH, bad))
        .await
        .expect("answer");
    assert_eq!(resp.json()["error"]["code"], -32700, "{}", resp.body_str());

    let resp = client::send_raw(gate.addr, &chunked(FAN_PATH, bad))
        .await
        .expect("answer");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error_code"], "MalformedBody");

    assert_upstream_untouched(&upstream, "malformed chunked bodies");
    // Still serving.
    let resp = client::post_json(gate.addr, BATCH_PATH, ENVELOPE).await;
    assert_eq!(responses(&resp)[0]["status"], 200);
    assert_no_panic(&gate);
}

/// Proves a body starting with a UTF-8 byte order mark (Windows PowerShell, some .NET
/// clients) is read in every dialect instead of failing as invalid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bom_prefixed_bodies_are_read() {
    let (_upstream, gate) = start().await;
    let with_bom = |text: &str| [BOM, text.as_bytes()].concat();
    let resp = client::post(
        gate.addr,
        BATCH_PATH,
        "application/json",
        &with_bom(ENVELOPE),
    )
    .await;
    assert_eq!(responses(&resp)[0]["status"], 200);
    let resp = client::post(
        gate.addr,
        RPC_PATH,
        "application/json",
        &with_bom(RPC_BATCH),
    )
    .await;
    assert_eq!(resp.json()[0]["result"], "ok", "{}", resp.body_str());
    let resp = client::request(
        gate.addr,
        "POST",
        FAN_PATH,
        &[("Content-Type", "application/json")],
        &with_bom(r#"{"ids":["7"]}"#),
    )
    .await;
    assert_eq!(resp.json()["items"][0]["id"], "7", "{}", resp.body_str());
    assert_no_panic(&gate);
}

/// Proves a body declared in a charset other than UTF-8 is 415 in each dialect's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_charset_is_415() {
    let (upstream, gate) = start().await;
    let ct = "application/json; charset=utf-16";
    let resp = client::post(gate.addr, BATCH_PATH, ct, ENVELOPE.as_bytes()).await;
    assert_rejected(&resp, 415, "UnsupportedMediaType");
    let resp = client::post(gate.addr, RPC_PATH, ct, RPC_BATCH.as_bytes()).await;
    assert_eq!(resp.status, 415);
    assert_eq!(
        resp.json()["error"]["data"]["reason"],
        "unsupported_media_type"
    );
    let resp = client::post(gate.addr, FAN_PATH, ct, br#"{"ids":["1"]}"#).await;
    assert_eq!(resp.status, 415);
    assert_eq!(resp.json()["error_code"], "UnsupportedMediaType");
    assert_upstream_untouched(&upstream, "utf-16 bodies");
    assert_no_panic(&gate);
}

/// Proves the JSON-RPC route takes `application/json-rpc` (jsonrpc4j's default) and
/// `application/jsonrequest`, the media types of the JSON-RPC over HTTP draft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_route_accepts_json_rpc_media_types() {
    let (_upstream, gate) = start().await;
    for ct in ["application/json-rpc", "application/jsonrequest"] {
        let resp = client::post(gate.addr, RPC_PATH, ct, RPC_BATCH.as_bytes()).await;
        assert_eq!(resp.status, 200, "{ct}: {}", resp.body_str());
        assert_eq!(resp.json()[0]["result"], "ok", "{ct}");
    }
    // The envelope route still wants JSON.
    let resp = client::post(
        gate.addr,
        BATCH_PATH,
        "application/json-rpc",
        ENVELOPE.as_bytes(),
    )
    .await;
    assert_rejected(&resp, 415, "UnsupportedMediaType");
    assert_no_panic(&gate);
}

/// Proves `..;` / `.;x` segments (dot segments to Tomcat, Jetty and Spring, which drop
/// `;params` first) are refused and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameter_dot_segments_never_reach_the_upstream() {
    let (upstream, gate) = start().await;
    for url in [
        "/file/..;/admin",
        "/file/.;x/get",
        "/file/..%3B/admin",
        "/batch;x",
    ] {
        let body = json!({"requests": [{"id": "a", "method": "GET", "url": url}]}).to_string();
        let resp = client::post_json(gate.addr, BATCH_PATH, &body).await;
        let entry = &responses(&resp)[0];
        assert!(
            entry["status"] == 400 || entry["status"] == 403,
            "{url}: {entry}"
        );
    }
    assert_upstream_untouched(&upstream, "path-parameter dot segments");
    assert_no_panic(&gate);
}

/// Proves JSON-RPC replies whose id is another spelling of the same number, or that start
/// with a byte order mark, are relayed (they were `-32004` / `-32002` before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_replies_with_other_id_spellings_or_a_bom_are_relayed() {
    let (_upstream, gate) = start().await;
    let batch = r#"[{"jsonrpc":"2.0","method":"float_id","id":1},{"jsonrpc":"2.0","method":"bom","id":"b"}]"#;
    let resp = client::post_json(gate.addr, RPC_PATH, batch).await;
    let replies = resp.json();
    assert_eq!(replies[0]["result"], 1, "{replies}");
    assert_eq!(replies[1], json!({"jsonrpc":"2.0","result":"bom","id":"b"}));
    assert_no_panic(&gate);
}

/// Proves fan-out ids keep their exact text (a 23-digit number is not rounded, an id that is
/// not UTF-8 is refused rather than replaced by U+FFFD) and reply fields keep the upstream's
/// number text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_ids_and_reply_values_are_exact() {
    let (upstream, gate) = start().await;
    let resp = client::post_json(gate.addr, FAN_PATH, r#"{"ids":[12345678901234567890123]}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(
        resp.body_str(),
        r#"{"items":[{"id":"12345678901234567890123","value":{"id":"12345678901234567890123","big":12345678901234567890123}}]}"#
    );
    assert_eq!(upstream.requests()[0].path, "/item/12345678901234567890123");

    let resp: Response = client::get(gate.addr, "/fan?ids=%FF%FE").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error_code"], "InvalidParameter");
    assert_eq!(upstream.count(), 1, "the invalid id was not sent");
    assert_no_panic(&gate);
}

/// Proves a fan-out GET whose JSON body has no Content-Type at all (what
/// `requests.get(url, data=json.dumps(...))` sends) is read as JSON, while a body declared as
/// something else is still 415 and a body that is not JSON is `MalformedBody`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_body_without_content_type_is_read_as_json() {
    let (_upstream, gate) = start().await;
    let resp = client::request(gate.addr, "GET", FAN_PATH, &[], br#"{"ids":["5"]}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.json()["items"][0]["id"], "5");

    let resp = client::request(
        gate.addr,
        "GET",
        FAN_PATH,
        &[("Content-Type", "text/plain")],
        br#"{"ids":["5"]}"#,
    )
    .await;
    assert_eq!(resp.status, 415);
    assert_eq!(resp.json()["error_code"], "UnsupportedMediaType");

    let resp = client::request(gate.addr, "GET", FAN_PATH, &[], b"ids=5").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error_code"], "MalformedBody");

    // The envelope still needs its Content-Type.
    let resp = client::request(gate.addr, "POST", BATCH_PATH, &[], ENVELOPE.as_bytes()).await;
    assert_rejected(&resp, 415, "UnsupportedMediaType");
    assert_no_panic(&gate);
}
