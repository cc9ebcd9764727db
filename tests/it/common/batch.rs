//! Envelope (PDS `POST /v2/batch`) helpers: building batch bodies and checking replies.

use serde_json::{json, Value};

use super::client::Response;
use super::upstream::Upstream;

/// The batch route every test config serves.
pub const BATCH_PATH: &str = "/v2/batch";

/// One child request `{"id","method","url"}` without body or headers.
pub fn item(id: &str, method: &str, url: &str) -> Value {
    json!({"id": id, "method": method, "url": url})
}

/// One child request with a JSON body.
pub fn item_with_body(id: &str, method: &str, url: &str, body: Value) -> Value {
    json!({"id": id, "method": method, "url": url, "body": body})
}

/// One child request with headers (no body).
pub fn item_with_headers(id: &str, method: &str, url: &str, headers: Value) -> Value {
    json!({"id": id, "method": method, "url": url, "headers": headers})
}

/// `{"resource":"file","requests":[...]}` as JSON text.
pub fn batch(items: Vec<Value>) -> String {
    json!({"resource": "file", "requests": items}).to_string()
}

/// Asserts a 200 `application/json` envelope reply and returns its `responses` array.
pub fn responses(resp: &Response) -> Vec<Value> {
    assert_eq!(
        resp.status,
        200,
        "batch reply status; body: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_json_content_type(resp);
    let json = resp.json();
    match json.get("responses") {
        Some(Value::Array(items)) => items.clone(),
        _ => panic!("reply has no responses array: {json}"),
    }
}

/// Asserts the reply's Content-Type is `application/json`.
pub fn assert_json_content_type(resp: &Response) {
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}, expected application/json"
    );
}

/// Finds the reply entry with `id`; panics if it is missing.
pub fn by_id<'a>(responses: &'a [Value], id: &str) -> &'a Value {
    responses
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no response with id {id:?} in {responses:?}"))
}

/// Asserts an item failed with `status` and the error `code` in its body.
pub fn assert_item_error(entry: &Value, status: u16, code: &str) {
    assert_eq!(entry["status"], status, "status of {entry}");
    assert_eq!(entry["body"]["code"], code, "code of {entry}");
    assert!(
        entry["body"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error entry has no message: {entry}"
    );
}

/// Asserts a whole-batch refusal `{"code":..,"message":..}` with `status`.
pub fn assert_rejected(resp: &Response, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "status; body: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_json_content_type(resp);
    let json = resp.json();
    assert_eq!(json["code"], code, "code in {json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "refusal has no message: {json}"
    );
}

/// Asserts the upstream has seen no request at all.
pub fn assert_upstream_untouched(upstream: &Upstream, context: &str) {
    let log = upstream.requests();
    assert!(
        log.is_empty(),
        "{context}: upstream must see nothing, saw {:?}",
        log.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}
