//! The ID-list fan-out dialect end to end (issue #4): the Huawei Cloud "Batch Obtaining
//! Download Links" example over a per-id upstream, each `on_item_error` mode with each kind of
//! failing part, request validation, hostile ids, concurrency and order, and the generic
//! `users.toml` example.

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::client::{self, Response};
use common::gate;
use common::upstream::{refused_addr, RecordedRequest, Reply, Upstream};
use serde_json::{json, Value};

/// The batch route of `conf/examples/huawei.toml`.
const ACCESS_URLS: &str = "/v2/servicerequest/accessorys/access-urls";
/// Prefix and suffix of the per-id upstream path.
const PER_ID_PREFIX: &str = "/v2/servicerequest/accessorys/";
const PER_ID_SUFFIX: &str = "/access-url";
/// The documented example request body, spacing as on the Huawei page.
const HUAWEI_BODY: &str = r#"{ "group_id" : "1", "accessory_ids" : [ "1", "2" ] }"#;
/// The documented example reply, compact.
const HUAWEI_REPLY: &str = r#"{"accessory_urls":[{"accessory_url":"url1","accessory_id":"1"},{"accessory_url":"url2","accessory_id":"2"}]}"#;
const TOKEN: &str = "MIIabc-token";

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap_or_else(|e| panic!("{text:?} is not UTF-8 once decoded: {e}"))
        .into_owned()
}

/// The id a per-id request was for (its one path segment, decoded), if the path has the shape.
fn id_of(req: &RecordedRequest) -> Option<String> {
    req.path
        .strip_prefix(PER_ID_PREFIX)
        .and_then(|rest| rest.strip_suffix(PER_ID_SUFFIX))
        .map(decode)
}

/// The per-id Huawei API: `GET .../accessorys/{id}/access-url?group_id=G` → `{"url":"url<id>"}`.
/// Ids `404` and `500` fail with that status; `slow` answers after 3 s; `bad-utf8` answers
/// JSON with an invalid UTF-8 byte inside a string; `d<N>-..` waits N×10 ms.
fn per_id(req: &RecordedRequest) -> Reply {
    let Some(id) = id_of(req) else {
        return Reply::json(404, r#"{"error_code":"NoRoute"}"#);
    };
    let ok = Reply::json(200, &json!({ "url": format!("url{id}") }).to_string());
    match id.as_str() {
        "404" => Reply::json(
            404,
            r#"{"error_code":"NotFound","error_msg":"no such accessory"}"#,
        ),
        "500" => Reply::text(500, "internal error"),
        "slow" => ok.with_delay(3000),
        "bad-utf8" => Reply::bytes(200, "application/json", b"{\"url\":\"\xff\"}"),
        "no-url" => Reply::json(200, r#"{"link":"elsewhere"}"#),
        _ => match id
            .strip_prefix('d')
            .and_then(|rest| rest.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => ok.with_delay(n * 10),
            None => ok,
        },
    }
}

/// Replaces `from` by `to` in a config text, insisting that `from` is there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "config has no {from:?}");
    text.replacen(from, to, 1)
}

/// `huawei.toml` with its `on_item_error`, `concurrency` and a 1 s `item_timeout`.
fn huawei_config(upstream: &[SocketAddr], on_item_error: &str, concurrency: usize) -> String {
    let text = common::config::example("huawei.toml", upstream);
    let text = edit(
        &text,
        "on_item_error = \"include\"",
        &format!("on_item_error = \"{on_item_error}\""),
    );
    edit(
        &text,
        "concurrency = 16",
        &format!("concurrency = {concurrency}\nitem_timeout = \"1s\""),
    )
}

/// Sends a request to the access-urls route with `X-Auth-Token` and a JSON body.
async fn access_urls(gate: &gate::Gate, method: &str, target: &str, body: &str) -> Response {
    let mut headers = vec![("X-Auth-Token", TOKEN)];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    client::request(gate.addr, method, target, &headers, body.as_bytes()).await
}

/// `GET` with body `{"group_id":"1","accessory_ids":[ids]}`.
async fn get_ids(gate: &gate::Gate, ids: &[&str]) -> Response {
    let body = json!({"group_id": "1", "accessory_ids": ids}).to_string();
    access_urls(gate, "GET", ACCESS_URLS, &body).await
}

fn lossy(resp: &Response) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

fn assert_json_ct(resp: &Response) {
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
}

/// Asserts a 200 JSON reply with exactly `body` and no `x-batch-partial`.
fn assert_complete(resp: &Response, body: &str) {
    assert_eq!(resp.status, 200, "body: {}", lossy(resp));
    assert_json_ct(resp);
    assert_eq!(resp.body_str(), body);
    assert_eq!(resp.header("x-batch-partial"), None, "nothing failed");
}

/// Asserts a Huawei-shaped error `{"error_code","error_msg"}` with `status` and `code`.
fn assert_huawei_error(resp: &Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status, status, "body: {}", lossy(resp));
    assert_json_ct(resp);
    let json = resp.json();
    let object = json.as_object().unwrap_or_else(|| panic!("{json}"));
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["error_code", "error_msg"], "{json}");
    assert_eq!(json["error_code"], code, "{json}");
    let message = json["error_msg"].as_str().unwrap_or("").to_string();
    assert!(!message.is_empty(), "{json}");
    message
}

// ---------------------------------------------------------------------------
// The Huawei example.
// ---------------------------------------------------------------------------

/// Proves the Huawei page's example from `huawei.toml`: a GET with a JSON body answers the
/// documented reply byte for byte, and the upstream got one GET per id with the group id
/// and the `X-Auth-Token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_example() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;

    let resp = access_urls(&gate, "GET", ACCESS_URLS, HUAWEI_BODY).await;
    assert_complete(&resp, HUAWEI_REPLY);

    let mut log = upstream.requests();
    log.sort_by(|a, b| a.target.cmp(&b.target));
    let targets: Vec<&str> = log.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        vec![
            "/v2/servicerequest/accessorys/1/access-url?group_id=1",
            "/v2/servicerequest/accessorys/2/access-url?group_id=1",
        ]
    );
    for r in &log {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.header_all("x-auth-token"),
            vec![TOKEN],
            "token forwarded once"
        );
        assert!(r.body.is_empty(), "per-id GETs carry no body");
    }
}

/// Proves both query-string forms (`accessory_ids=1&accessory_ids=2` and `accessory_ids=1,2`)
/// give the same reply as the JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_query_string_forms() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    for query in [
        "group_id=1&accessory_ids=1&accessory_ids=2",
        "group_id=1&accessory_ids=1,2",
    ] {
        let target = format!("{ACCESS_URLS}?{query}");
        let resp = access_urls(&gate, "GET", &target, "").await;
        assert_complete(&resp, HUAWEI_REPLY);
    }
    let log = upstream.requests();
    assert_eq!(log.len(), 4, "two ids per request");
    assert!(log.iter().all(|r| r.query.as_deref() == Some("group_id=1")));
}

// ---------------------------------------------------------------------------
// on_item_error.
// ---------------------------------------------------------------------------

/// The failing ids and what a failed part reports: (id, status, code).
const FAILURES: [(&str, u16, &str); 3] = [
    ("404", 404, "UpstreamStatus"),
    ("500", 500, "UpstreamStatus"),
    ("slow", 504, "GatewayTimeout"),
];

const URL1: &str = r#"{"accessory_url":"url1","accessory_id":"1"}"#;

/// Proves `on_item_error = "fail"`: one failing id (upstream 404, upstream 500, item timeout)
/// makes the whole reply an error with that status in the configured error shape, naming the
/// id; with no failure the reply is complete and unflagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_item_error_fail() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&huawei_config(&[upstream.addr], "fail", 16)).await;
    for (id, status, code) in FAILURES {
        let resp = get_ids(&gate, &["1", id]).await;
        let message = assert_huawei_error(&resp, status, code);
        assert!(message.contains(id), "message names the id {id}: {message}");
        assert_eq!(resp.header("x-batch-partial"), None);
    }
    assert_complete(&get_ids(&gate, &["1", "2"]).await, HUAWEI_REPLY);
}

/// A streamed fan-out reply counts a missing field as the buffered one does: each element is a
/// JSON Lines record (`null` in the missing field), then the terminal record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_reply_field_is_counted_when_streamed() {
    let upstream = Upstream::with_handler(per_id).await;
    let config = edit(
        &huawei_config(&[upstream.addr], "include", 16),
        "on_item_error = \"include\"",
        "on_item_error = \"include\"\nstream = [\"ndjson\"]",
    );
    let gate = gate::start(&config).await;
    let body = json!({"group_id": "1", "accessory_ids": ["1", "no-url"]}).to_string();
    let headers = [
        ("X-Auth-Token", TOKEN),
        ("Content-Type", "application/json"),
        ("Accept", "application/x-ndjson"),
    ];
    let resp = client::request(gate.addr, "GET", ACCESS_URLS, &headers, body.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    let records: Vec<Value> = resp
        .body_str()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        records.contains(&json!({"accessory_url": null, "accessory_id": "no-url"})),
        "{records:?}"
    );
    assert_eq!(records[2]["done"], true, "{records:?}");
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_reply_fields_missing_total", &[]),
        1.0
    );
}

/// Proves a part whose 2xx reply lacks a field the reply promises is counted either way:
/// `missing_field = "null"` (the default) writes `null` and counts
/// `batchgate_reply_fields_missing_total`; `"error"` fails the part as
/// `UpstreamReplyFieldMissing`, counted as an `upstream_error` item, the batch partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_reply_field_is_counted() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&huawei_config(&[upstream.addr], "include", 16)).await;
    let resp = get_ids(&gate, &["1", "no-url"]).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(
        resp.json()["accessory_urls"][1],
        json!({"accessory_url": null, "accessory_id": "no-url"})
    );
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.sum("batchgate_reply_fields_missing_total", &[]),
        1.0
    );
    assert_eq!(
        metrics.sum("batchgate_items_total", &[("outcome", "2xx")]),
        2.0
    );

    let config = edit(
        &huawei_config(&[upstream.addr], "include", 16),
        "list_field = \"accessory_urls\"",
        "list_field = \"accessory_urls\"\nmissing_field = \"error\"",
    );
    let gate = gate::start(&config).await;
    let resp = get_ids(&gate, &["1", "no-url"]).await;
    assert_eq!(resp.header("x-batch-partial"), Some("1/2"));
    let failed = &resp.json()["accessory_urls"][1];
    assert_eq!(
        failed["error"]["code"], "UpstreamReplyFieldMissing",
        "{failed}"
    );
    assert_eq!(failed["error"]["status"], 502, "{failed}");
    // The batch is counted once its reply is out (pingora's logging phase).
    let metrics = common::prom::scrape_until(gate.admin, Duration::from_secs(5), "batch", |s| {
        s.sum("batchgate_batches_total", &[("outcome", "partial")]) >= 1.0
    })
    .await;
    let items = |outcome| metrics.sum("batchgate_items_total", &[("outcome", outcome)]);
    assert_eq!((items("upstream_error"), items("2xx")), (1.0, 1.0));
}

/// Proves `on_item_error = "omit"`: the failing part (404, 500, timeout) is left out, the rest
/// is answered, and `x-batch-partial: 1/2` flags it; absent when all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_item_error_omit() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&huawei_config(&[upstream.addr], "omit", 16)).await;
    for (id, _, _) in FAILURES {
        let resp = get_ids(&gate, &["1", id]).await;
        assert_eq!(resp.status, 200, "{id}: {}", lossy(&resp));
        assert_json_ct(&resp);
        assert_eq!(
            resp.body_str(),
            format!(r#"{{"accessory_urls":[{URL1}]}}"#),
            "{id}"
        );
        assert_eq!(resp.header("x-batch-partial"), Some("1/2"), "{id}");
    }
    assert_complete(&get_ids(&gate, &["1", "2"]).await, HUAWEI_REPLY);
}

/// Proves `on_item_error = "include"`: the failing part (404, 500, timeout) becomes an element
/// with its id and an `error` object (status, code, message) in its place, and
/// `x-batch-partial: 1/2` flags it; absent when all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_item_error_include() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&huawei_config(&[upstream.addr], "include", 16)).await;
    for (id, status, code) in FAILURES {
        let resp = get_ids(&gate, &[id, "1"]).await;
        assert_eq!(resp.status, 200, "{id}: {}", lossy(&resp));
        assert_json_ct(&resp);
        assert_eq!(resp.header("x-batch-partial"), Some("1/2"), "{id}");
        let json = resp.json();
        let list = json["accessory_urls"]
            .as_array()
            .unwrap_or_else(|| panic!("{json}"));
        assert_eq!(list.len(), 2, "{json}");
        let failed = &list[0];
        assert_eq!(failed["accessory_id"], id, "{json}");
        assert_eq!(failed["error"]["status"], status, "{json}");
        assert_eq!(failed["error"]["code"], code, "{json}");
        assert!(failed["error"]["message"].is_string(), "{json}");
        assert!(failed.get("accessory_url").is_none(), "{json}");
        assert_eq!(
            list[1],
            json!({"accessory_url": "url1", "accessory_id": "1"})
        );
    }
    assert_complete(&get_ids(&gate, &["1", "2"]).await, HUAWEI_REPLY);
}

/// Proves a refused connection is a failed part in each mode: the upstream has one live and
/// one refusing address, so round robin fails exactly one of two ids — fail → 502
/// `UpstreamConnectFailed`; omit → the other element only, `1/2`; include → an error element
/// with status 502 next to the other one, `1/2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_item_error_refused_connection() {
    let upstream = Upstream::with_handler(per_id).await;
    let dead = refused_addr().await;
    for mode in ["fail", "omit", "include"] {
        upstream.reset();
        let gate = gate::start(&huawei_config(&[upstream.addr, dead], mode, 1)).await;
        let resp = get_ids(&gate, &["1", "2"]).await;
        let log = upstream.requests();
        assert_eq!(log.len(), 1, "{mode}: one id reached the live address");
        let reached = id_of(&log[0]).unwrap_or_default();
        let lost = if reached == "1" { "2" } else { "1" };
        match mode {
            "fail" => {
                let message = assert_huawei_error(&resp, 502, "UpstreamConnectFailed");
                assert!(message.contains(lost), "{message}");
            }
            "omit" => {
                assert_eq!(resp.status, 200, "{}", lossy(&resp));
                assert_eq!(resp.header("x-batch-partial"), Some("1/2"));
                assert_eq!(
                    resp.json(),
                    json!({"accessory_urls": [{"accessory_url": format!("url{reached}"), "accessory_id": reached}]})
                );
            }
            _ => {
                assert_eq!(resp.status, 200, "{}", lossy(&resp));
                assert_eq!(resp.header("x-batch-partial"), Some("1/2"));
                let json = resp.json();
                let list = json["accessory_urls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(list.len(), 2, "{json}");
                for element in &list {
                    if element["accessory_id"] == lost {
                        assert_eq!(element["error"]["status"], 502, "{json}");
                        assert_eq!(element["error"]["code"], "UpstreamConnectFailed", "{json}");
                    } else {
                        assert_eq!(
                            *element,
                            json!({"accessory_url": format!("url{reached}"), "accessory_id": reached})
                        );
                    }
                }
                assert_eq!(list[0]["accessory_id"], "1", "order kept: {json}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

/// Proves each invalid request is refused with 400 in the configured
/// `{"error_code","error_msg"}` shape before anything is sent: missing ids, empty ids, more
/// than max_items ids, missing group_id, a 33-character group_id, missing X-Auth-Token, a
/// 5001-character token, a malformed body. The limits themselves (32, 5000) are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let g33 = "g".repeat(33);
    let t5001 = "t".repeat(5001);
    let ct = ("Content-Type", "application/json");
    let ids = r#"{"group_id":"1","accessory_ids":["1","2"]}"#.to_string();
    // (what, X-Auth-Token, body, error_code)
    let cases: [(&str, Option<&str>, String, &str); 8] = [
        (
            "missing ids",
            Some(TOKEN),
            r#"{"group_id":"1"}"#.to_string(),
            "MissingParameter",
        ),
        (
            "empty ids",
            Some(TOKEN),
            r#"{"group_id":"1","accessory_ids":[]}"#.to_string(),
            "MissingParameter",
        ),
        (
            "101 ids",
            Some(TOKEN),
            json!({"group_id": "1", "accessory_ids": many}).to_string(),
            "TooManyIds",
        ),
        (
            "missing group_id",
            Some(TOKEN),
            r#"{"accessory_ids":["1"]}"#.to_string(),
            "MissingParameter",
        ),
        (
            "33-character group_id",
            Some(TOKEN),
            json!({"group_id": g33, "accessory_ids": ["1"]}).to_string(),
            "InvalidParameter",
        ),
        ("missing X-Auth-Token", None, ids.clone(), "MissingHeader"),
        (
            "5001-character X-Auth-Token",
            Some(t5001.as_str()),
            ids.clone(),
            "InvalidHeader",
        ),
        (
            "malformed JSON",
            Some(TOKEN),
            r#"{"group_id":"1","accessory_ids":["1""#.to_string(),
            "MalformedBody",
        ),
    ];
    for (what, token, body, code) in cases {
        let mut headers = vec![ct];
        headers.extend(token.map(|t| ("X-Auth-Token", t)));
        let resp = client::request(gate.addr, "GET", ACCESS_URLS, &headers, body.as_bytes()).await;
        let message = assert_huawei_error(&resp, 400, code);
        assert_eq!(upstream.count(), 0, "{what}: nothing sent ({message})");
    }

    // At the limits: 32 characters of group_id, 5000 of token, 100 ids.
    let g32 = "g".repeat(32);
    let t5000 = "t".repeat(5000);
    let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let body = json!({"group_id": g32, "accessory_ids": hundred}).to_string();
    let resp = client::request(
        gate.addr,
        "GET",
        ACCESS_URLS,
        &[ct, ("X-Auth-Token", t5000.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(upstream.count(), 100);
    assert!(upstream.requests().iter().all(|r| r.query.as_deref()
        == Some(format!("group_id={g32}").as_str())
        && r.header("x-auth-token") == Some(t5000.as_str())));
}

/// Proves a required parameter or header that is present but empty is `MissingParameter` /
/// `MissingHeader` (as documented), in the body and in the query, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_required_values_are_missing() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    let ct = ("Content-Type", "application/json");
    let cases: [(&str, Option<&str>, &str, &str); 4] = [
        (
            ACCESS_URLS,
            Some(TOKEN),
            r#"{"group_id":"","accessory_ids":["1"]}"#,
            "MissingParameter",
        ),
        (
            "/v2/servicerequest/accessorys/access-urls?group_id=&accessory_ids=1",
            Some(TOKEN),
            "",
            "MissingParameter",
        ),
        (
            ACCESS_URLS,
            Some(""),
            r#"{"group_id":"1","accessory_ids":["1"]}"#,
            "MissingHeader",
        ),
        (
            ACCESS_URLS,
            Some(TOKEN),
            r#"{"group_id":"1","accessory_ids":[]}"#,
            "MissingParameter",
        ),
    ];
    for (target, token, body, code) in cases {
        let mut headers = vec![ct];
        headers.extend(token.map(|t| ("X-Auth-Token", t)));
        let resp = client::request(gate.addr, "GET", target, &headers, body.as_bytes()).await;
        let message = assert_huawei_error(&resp, 400, code);
        assert!(
            message.contains("missing or empty"),
            "{target} {body}: {message}"
        );
        assert_eq!(upstream.count(), 0, "{target} {body}: nothing sent");
    }
}

/// Proves a per-id reply that is JSON-shaped but not UTF-8 (`{"url":"\xff"}`) fails that part
/// as `InvalidUpstreamReply` (502) instead of being embedded into an invalid UTF-8 reply:
/// with `fields` (huawei.toml, include) and with whole replies (users.toml, omit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_upstream_reply_fails_the_part() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    let resp = get_ids(&gate, &["1", "bad-utf8"]).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(resp.header("x-batch-partial"), Some("1/2"));
    let json: Value = serde_json::from_str(resp.body_str()).expect("JSON");
    assert_eq!(
        json["accessory_urls"][0],
        json!({"accessory_url": "url1", "accessory_id": "1"})
    );
    let failed = &json["accessory_urls"][1];
    assert_eq!(failed["accessory_id"], "bad-utf8", "{json}");
    assert_eq!(failed["error"]["status"], 502, "{json}");
    assert_eq!(failed["error"]["code"], "InvalidUpstreamReply", "{json}");

    let users = Upstream::with_handler(|req| match req.path.as_str() {
        "/users/7" => Reply::json(200, r#"{"id":"7"}"#),
        _ => Reply::bytes(200, "application/json", b"{\"name\":\"\xff\xfe\"}"),
    })
    .await;
    let gate = gate::start(&common::config::example("users.toml", &[users.addr])).await;
    let resp = client::request(
        gate.addr,
        "POST",
        "/users/batch-get",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer abc"),
        ],
        br#"{"ids":["7","8"]}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(resp.body_str(), r#"{"users":[{"id":"7"}]}"#);
    assert_eq!(resp.header("x-batch-partial"), Some("1/2"));
    assert_eq!(users.count(), 2);
}

// ---------------------------------------------------------------------------
// Hostile ids.
// ---------------------------------------------------------------------------

/// Proves an id can never add a path segment, a query or a dot segment: each accepted hostile
/// id reaches the upstream as exactly one encoded segment (the target keeps its five '/' and
/// its one '?', and the decoded segment is the id), and the reply names the ids as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_stay_one_segment() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    let hostile = [
        "%2e%2e",
        "x?y=1",
        "..%2f..%2fetc",
        "a#b",
        "a b&group_id=2",
        "\u{e9}t\u{e9}",
    ];
    let resp = get_ids(&gate, &hostile).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(resp.header("x-batch-partial"), None, "{}", lossy(&resp));
    let expected: Vec<Value> = hostile
        .iter()
        .map(|id| json!({"accessory_url": format!("url{id}"), "accessory_id": id}))
        .collect();
    assert_eq!(resp.json(), json!({ "accessory_urls": expected }));

    let log = upstream.requests();
    assert_eq!(log.len(), hostile.len());
    let mut seen = HashSet::new();
    for r in &log {
        let t = &r.target;
        assert_eq!(t.matches('/').count(), 5, "one segment only: {t}");
        assert_eq!(t.matches('?').count(), 1, "one query only: {t}");
        assert!(t.starts_with(PER_ID_PREFIX), "{t}");
        assert!(t.ends_with("/access-url?group_id=1"), "{t}");
        let segment = &t[PER_ID_PREFIX.len()..t.len() - "/access-url?group_id=1".len()];
        assert!(
            !segment.contains(['/', '?', '#', ' ', '&']),
            "raw segment {segment:?}"
        );
        seen.insert(decode(segment));
    }
    let want: HashSet<String> = hostile.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, want, "each decoded segment is one of the ids");
}

/// Proves ids that cannot be made safe are refused as a whole with 400 and nothing sent:
/// 300 characters (over `max_length`), CR LF, other control characters, dot segments, and
/// path separators (`%2F`/`%5C` in a path segment, which upstreams that decode before routing
/// read as `/`: `..%2Fadmin` would climb out of the template).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_ids_are_rejected() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    let long = "a".repeat(300);
    for id in [
        long.as_str(),
        "a\r\nb",
        "\r\n",
        "a\u{0}b",
        "..",
        ".",
        "",
        "../admin",
        "a/b",
        "..\\admin",
        "..;",
        ".;x=1",
    ] {
        let resp = get_ids(&gate, &["1", id]).await;
        assert_huawei_error(&resp, 400, "InvalidParameter");
        assert_eq!(upstream.count(), 0, "{id:?}: nothing sent");
    }
}

// ---------------------------------------------------------------------------
// Concurrency and order.
// ---------------------------------------------------------------------------

/// Proves the route's `concurrency` bounds the per-id requests in flight upstream (20 ids of
/// 100 ms with concurrency 4 → peak ≤ 4) and that they do run in parallel (peak ≥ 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded() {
    let upstream = Upstream::with_handler(|req| per_id(req).with_delay(100)).await;
    let gate = gate::start(&huawei_config(&[upstream.addr], "include", 4)).await;
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let resp = get_ids(&gate, &refs).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(resp.header("x-batch-partial"), None);
    assert_eq!(upstream.count(), 20);
    let peak = upstream.peak();
    assert!(peak <= 4, "peak {peak} exceeds concurrency 4");
    assert!(peak >= 2, "peak {peak}: ids were not fetched in parallel");
}

/// Proves 100 ids answered in a scrambled order (varying upstream delays) come back in the
/// order they were asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_ids_keep_their_order() {
    let upstream = Upstream::with_handler(per_id).await;
    let gate = gate::start(&common::config::example("huawei.toml", &[upstream.addr])).await;
    // `d<N>-<i>` waits N×10 ms (N cycles over 9..0): later ids often finish first.
    let ids: Vec<String> = (0..100)
        .map(|i| format!("d{}-{i}", 9 - (i * 7) % 10))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let resp = get_ids(&gate, &refs).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    let json = resp.json();
    let list = json["accessory_urls"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    let got: Vec<&str> = list
        .iter()
        .map(|e| e["accessory_id"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(got, refs, "ids in request order");
    for e in list {
        assert_eq!(
            e["accessory_url"],
            format!("url{}", e["accessory_id"].as_str().unwrap_or("?"))
        );
    }
}

// ---------------------------------------------------------------------------
// The generic example (conf/examples/users.toml).
// ---------------------------------------------------------------------------

/// The per-id users API: `GET /users/{id}` with odd spacing in its replies; `404` is unknown.
fn users_api(req: &RecordedRequest) -> Reply {
    match req.path.as_str() {
        "/users/7" => Reply::json(200, r#"{"id": "7", "name" : "Ann"}"#),
        "/users/9" => Reply::json(200, r#"{ "id":"9","tags":[1, 2.50] }"#),
        _ => Reply::json(404, r#"{"message":"not found"}"#),
    }
}

/// Proves `users.toml` works as shipped: `POST /users/batch-get {"ids":["7","9"]}` answers
/// `{"users":[..]}` with each per-id reply as it came (bytes kept), the upstream got one
/// `GET /users/{id}` per id with the Authorization header once; a 404 id is omitted and
/// flagged with `x-batch-partial: 1/3`; a missing Authorization is refused in the
/// configured error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_example() {
    let upstream = Upstream::with_handler(users_api).await;
    let gate = gate::start(&common::config::example("users.toml", &[upstream.addr])).await;
    let post = |body: &'static str, auth: bool| {
        let mut headers = vec![("Content-Type", "application/json")];
        if auth {
            headers.push(("Authorization", "Bearer abc"));
        }
        let addr = gate.addr;
        async move { client::request(addr, "POST", "/users/batch-get", &headers, body.as_bytes()).await }
    };

    let resp = post(r#"{"ids":["7","9"]}"#, true).await;
    assert_complete(
        &resp,
        r#"{"users":[{"id": "7", "name" : "Ann"},{ "id":"9","tags":[1, 2.50] }]}"#,
    );
    let mut log = upstream.requests();
    log.sort_by(|a, b| a.target.cmp(&b.target));
    let targets: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(targets, vec![("GET", "/users/7"), ("GET", "/users/9")]);
    for r in &log {
        assert_eq!(r.header_all("authorization"), vec!["Bearer abc"]);
    }

    let resp = post(r#"{"ids":["7","404","9"]}"#, true).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp));
    assert_eq!(
        resp.body_str(),
        r#"{"users":[{"id": "7", "name" : "Ann"},{ "id":"9","tags":[1, 2.50] }]}"#
    );
    assert_eq!(resp.header("x-batch-partial"), Some("1/3"));

    upstream.reset();
    let resp = post(r#"{"ids":["7"]}"#, false).await;
    assert_eq!(resp.status, 400, "{}", lossy(&resp));
    let json = resp.json();
    assert_eq!(json["error"]["code"], "MissingHeader", "{json}");
    assert!(json["error"]["message"].is_string(), "{json}");
    assert_eq!(upstream.count(), 0);
}
