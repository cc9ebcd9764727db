//! The meta dialect and references between items, from outside: hostile values in answers
//! stay data where they land, whole-batch errors are Meta's, and an envelope route with
//! dependencies passes values (typed in JSON bodies) between items by id. The real SDKs are
//! in `clients.rs`.

use crate::common;

use common::client::{self, Response};
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use serde_json::{json, Value};
use std::time::Duration;

const META_PATH: &str = "/v21.0/";

/// POSTs `items` form-encoded as Meta's SDKs do, with the access token `tok`.
async fn post_batch(gate: &gate::Gate, items: &Value, extra: &[(&str, &str)]) -> Response {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("access_token", "tok")
        .append_pair("batch", &items.to_string());
    for (name, value) in extra {
        form.append_pair(name, value);
    }
    let body = form.finish();
    client::request(
        gate.addr,
        "POST",
        META_PATH,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await
}

/// An upstream whose `/v21.0/me` answer is made to escape wherever it is inserted; every other
/// call is answered 200 with what reached it.
async fn hostile_upstream() -> Upstream {
    Upstream::with_handler(|req| match req.path.as_str() {
        "/v21.0/me" => Reply::json(
            200,
            &json!({
                "id": "../../admin",
                "host": "http://evil.example/x",
                "q": "a&access_token=stolen#f",
                "h": "v\r\nX-Injected: 1",
                "dots": "..",
                "n": 7,
            })
            .to_string(),
        ),
        _ => Reply::json(200, &json!({"target": req.target}).to_string()),
    })
    .await
}

async fn meta_gate(upstream: &Upstream) -> gate::Gate {
    gate::start(&common::config::example("meta.toml", &[upstream.addr])).await
}

fn elements(resp: &Response) -> Vec<Value> {
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let reply: Value = serde_json::from_slice(&resp.body).expect("a JSON array");
    reply.as_array().expect("an array").clone()
}

/// Values from an answer are data where they land: a path value is one encoded segment (and
/// an encoded `/` is refused by the url guard, as in any item), a value cannot become a `..`
/// segment, a query value cannot add parameters or a fragment, a header value with a line
/// break is refused, and nothing leaves the route's base path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cannot_steer_items() {
    let upstream = hostile_upstream().await;
    let gate = meta_gate(&upstream).await;
    let items = json!([
        {"method": "GET", "relative_url": "me", "name": "me", "omit_response_on_success": false},
        {"method": "GET", "relative_url": "{result=me:$.id}/x"},
        {"method": "GET", "relative_url": "{result=me:$.host}"},
        {"method": "GET", "relative_url": "search?q={result=me:$.q}"},
        {"method": "GET", "relative_url": "{result=me:$.dots}/x"},
        {"method": "GET", "relative_url": "x", "headers": [{"name": "X-V", "value": "{result=me:$.h}"}]},
    ]);
    let reply = elements(&post_batch(&gate, &items, &[]).await);
    assert_eq!(reply.len(), 6);
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    // Only the query value reached the upstream, encoded as one value.
    assert_eq!(
        targets,
        [
            "/v21.0/me?access_token=tok",
            "/v21.0/search?q=a%26access_token%3Dstolen%23f&access_token=tok",
        ],
    );
    // The path values became one segment each with an encoded `/`, which the url guard
    // refuses as in any item; the dot segment and the header's line break are refused too.
    for (i, code) in [(1, 400), (2, 400), (4, 424), (5, 400)] {
        assert_eq!(reply[i]["code"], code, "{}", reply[i]);
    }
    // The batch is counted once its reply is out (pingora's logging phase).
    let metrics = common::prom::scrape_until(gate.admin, Duration::from_secs(5), "batch", |m| {
        m.value(
            "batchgate_referring_items_total",
            &[("route", "meta_batch")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.value(
            "batchgate_referring_items_total",
            &[("route", "meta_batch")]
        ),
        5.0
    );
    assert_eq!(
        metrics.value(
            "batchgate_references_unresolved_total",
            &[("route", "meta_batch")]
        ),
        1.0
    );
    for target in &targets {
        assert!(target.starts_with("/v21.0/"), "{target}");
    }
}

/// Whole-batch errors are Meta's GraphBatchException objects, and nothing is sent: more
/// than `max_items`, a name that is not an earlier item, a malformed reference, no batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_batch_errors_send_nothing() {
    let upstream = hostile_upstream().await;
    let gate = meta_gate(&upstream).await;
    let many: Vec<Value> = (0..51)
        .map(|_| json!({"method": "GET", "relative_url": "me"}))
        .collect();
    for (items, expect) in [
        (Value::Array(many), "Maximum batch size is 50"),
        (
            json!([{"method": "GET", "relative_url": "x?id={result=later:$.id}"},
                   {"method": "GET", "relative_url": "me", "name": "later"}]),
            "can only depend on preceding requests",
        ),
        (
            json!([{"method": "GET", "relative_url": "me", "name": "me"},
                   {"method": "GET", "relative_url": "x?id={result=me:$..id}"}]),
            "recursive descent",
        ),
        (json!({"not": "an array"}), "must be a JSON array"),
    ] {
        let resp = post_batch(&gate, &items, &[]).await;
        assert_eq!(resp.status, 400, "{}", resp.body_str());
        let error = resp.json();
        assert_eq!(error["error"]["type"], "GraphBatchException", "{error}");
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(expect), "{message}");
    }
    assert_eq!(upstream.count(), 0);
}

/// `include_headers=false` leaves headers out; by default every element has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_headers_false_leaves_headers_out() {
    let upstream = hostile_upstream().await;
    let gate = meta_gate(&upstream).await;
    let items = json!([{"method": "GET", "relative_url": "x"}]);
    let with = elements(&post_batch(&gate, &items, &[]).await);
    assert!(with[0]["headers"].is_array(), "{}", with[0]);
    let without = elements(&post_batch(&gate, &items, &[("include_headers", "false")]).await);
    assert_eq!(without[0].get("headers"), None, "{}", without[0]);
    assert_eq!(without[0]["code"], 200);
}

/// An envelope route with `dependencies = "graph"`: a later item uses an earlier answer by its
/// id, as text in its url and typed in its JSON body (`{"$ref": ...}`: a number stays a
/// number, several values an array), and a reference that selects nothing answers 424 in the
/// route's error format without being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_items_pass_typed_values_by_id() {
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/file/create" => Reply::json(200, r#"{"file_id":"f 1","size":42,"tags":["a","b"]}"#),
        _ => Reply::json(
            200,
            &json!({"target": req.target, "body": String::from_utf8_lossy(&req.body)}).to_string(),
        ),
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("dependencies = \"graph\"")
        .start()
        .await;
    let body = json!({"resource": "file", "requests": [
        {"id": "create", "method": "POST", "url": "/file/create", "body": {}},
        {"id": "get", "method": "POST", "url": "/file/get?file_id={result=create:$.file_id}",
         "body": {"size": {"$ref": "create:$.size"}, "tags": {"$ref": "create:$.tags.*"},
                  "note": "made {result=create:$.file_id}"}},
        {"id": "lost", "method": "GET", "url": "/file/{result=create:$.missing}"},
    ]})
    .to_string();
    let resp = client::post_json(gate.addr, common::batch::BATCH_PATH, &body).await;
    let replies = common::batch::responses(&resp);
    let get = &replies[1]["body"];
    assert_eq!(get["target"], "/v2/file/get?file_id=f%201");
    let sent: Value = serde_json::from_str(get["body"].as_str().expect("the sent body")).unwrap();
    assert_eq!(
        sent,
        json!({"size": 42, "tags": ["a", "b"], "note": "made f 1"})
    );
    assert_eq!(replies[2]["status"], 424, "{}", replies[2]);
    let message = replies[2]["body"]["message"].as_str().unwrap_or("");
    assert!(message.contains("{result=create:$.missing}"), "{message}");
    assert_eq!(upstream.count(), 2);
}
