//! The built-in demo upstream used by `batchgate demo`: a tiny PDS-like API on loopback.
//!
//! It answers `POST /v2/file/get` and `POST /v2/file/list` with JSON built from the request
//! body, JSON-RPC calls (one, or an array) on `POST /jsonrpc` and `/jsonrpc2` (`sum`,
//! `subtract`, `get_data`, `ping`, `makeDir`, `notify_*`), one accessory at a time on
//! `GET /v2/servicerequest/accessorys/{id}/access-url` or a list of them on
//! `GET /v2/servicerequest/accessorys/access-urls` (id `404` is missing), and
//! `GET /v2/hello` for pass-through; any other JSON-RPC call on any path as above; 404 for
//! anything else under its own `/v2/`, and a 200 echo of method and path elsewhere (so each
//! example config's routes, whatever their API's paths, have something to answer them); a body with `"delay_ms": N` (at most 5000) is answered
//! after that long, to show a slow item (a streamed reply), so a newcomer can see each
//! dialect answered without any real API. It is a pingora `ServeHttp` app running as one more
//! service of the server.

pub mod hints;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

/// The demo API.
pub struct DemoUpstream;

/// Longest `delay_ms` honoured.
const MAX_DELAY_MS: u64 = 5000;

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 1024 * 1024 {
                return json_response(
                    413,
                    &json!({"code": "TooLarge", "message": "demo bodies are capped at 1 MiB"}),
                );
            }
            body.extend_from_slice(&chunk);
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Some(ms) = request.get("delay_ms").and_then(Value::as_u64) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
        }
        let header = session.req_header();
        let path = header.uri.path();
        if let Some(id) = path
            .strip_prefix("/v2/servicerequest/accessorys/")
            .and_then(|rest| rest.strip_suffix("/access-url"))
        {
            return access_url(header.uri.query(), id);
        }
        match (header.method.as_str(), path) {
            ("POST", "/v2/file/get") => file_get(&request),
            ("POST", "/v2/file/list") => file_list(&request),
            ("POST", "/jsonrpc" | "/jsonrpc2") => jsonrpc(&request),
            ("GET", "/v2/hello") => json_response(200, &json!({"hello": "from the demo upstream"})),
            ("GET", "/v2/servicerequest/accessorys/access-urls") => access_urls(header.uri.query()),
            ("POST", _) if is_jsonrpc(&request) => jsonrpc(&request),
            (_, p) if p.starts_with("/v2/") => json_response(
                404,
                &json!({"code": "NotFound", "message": format!("the demo upstream has no {} {}", header.method, path)}),
            ),
            _ => json_response(
                200,
                &json!({"demo": "echo", "method": header.method.as_str(), "path": path, "query": header.uri.query()}),
            ),
        }
    }
}

/// A JSON-RPC call or an array of them (what a jsonrpc route sends, to any upstream path).
fn is_jsonrpc(request: &Value) -> bool {
    let call = |v: &Value| v.get("jsonrpc").is_some();
    match request {
        Value::Array(calls) => calls.first().is_some_and(call),
        other => call(other),
    }
}

/// JSON-RPC calls: one, or an array of them (answered in one array, notifications left out,
/// as `[routes.upstream_batching]` sends them).
fn jsonrpc(request: &Value) -> Response<Vec<u8>> {
    let no_content = || {
        Response::builder()
            .status(204)
            .body(Vec::new())
            .unwrap_or_default()
    };
    match request {
        Value::Array(calls) if !calls.is_empty() => {
            let answers: Vec<Value> = calls.iter().filter_map(jsonrpc_call).collect();
            if answers.is_empty() {
                return no_content();
            }
            json_response(200, &Value::Array(answers))
        }
        call => match jsonrpc_call(call) {
            Some(answer) => json_response(200, &answer),
            None => no_content(),
        },
    }
}

/// The answer to one call; `None` for a notification (`notify_*`).
fn jsonrpc_call(request: &Value) -> Option<Value> {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    let number = |i: usize| params.get(i).and_then(Value::as_i64).unwrap_or(0);
    let error = |code: i64, message: &str, id: Value| json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id});
    let result = match request.get("method").and_then(Value::as_str) {
        _ if !request.is_object() => return Some(error(-32600, "Invalid Request", Value::Null)),
        Some(method) if method.starts_with("notify_") => return None,
        Some("sum") => json!(params
            .as_array()
            .map_or(0, |a| a.iter().filter_map(Value::as_i64).sum::<i64>())),
        Some("subtract") => json!(number(0) - number(1)),
        Some("get_data") => json!(["hello", 5]),
        Some("ping") => {
            json!({"code": 0, "operation": params.get(0).cloned().unwrap_or(Value::Null)})
        }
        // Limelight: 0 on success, -3 when a parent directory is missing.
        Some("makeDir") => match params.get(1).and_then(Value::as_str) {
            Some(path) if path.trim_start_matches('/').contains('/') => json!(-3),
            _ => json!(0),
        },
        _ => return Some(error(-32601, "Method not found", id)),
    };
    Some(json!({"jsonrpc": "2.0", "result": result, "id": id}))
}

fn json_response(status: u16, value: &Value) -> Response<Vec<u8>> {
    let body = value.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// Huawei `GET .../accessorys/{id}/access-url?group_id=..`: a URL, or 404 for id 404.
fn access_url(query: Option<&str>, id: &str) -> Response<Vec<u8>> {
    let group = query
        .and_then(|q| q.strip_prefix("group_id="))
        .unwrap_or("");
    match id {
        "404" => json_response(
            404,
            &json!({"error_code": "NotFound", "error_msg": "no such accessory"}),
        ),
        _ => json_response(
            200,
            &json!({"url": format!("https://files.demo.invalid/{group}/{id}")}),
        ),
    }
}

/// Huawei's id-list call, as `[routes.id_list]` sends it:
/// `?group_id=G&accessory_ids=1&accessory_ids=2` answers every id but `404`.
fn access_urls(query: Option<&str>) -> Response<Vec<u8>> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let group = pairs
        .iter()
        .find(|(k, _)| k == "group_id")
        .map_or("", |(_, v)| v.as_str());
    let urls: Vec<Value> = pairs
        .iter()
        .filter(|(k, id)| k == "accessory_ids" && id != "404")
        .map(|(_, id)| {
            json!({"accessory_url": format!("https://files.demo.invalid/{group}/{id}"), "accessory_id": id})
        })
        .collect();
    json_response(200, &json!({ "accessory_urls": urls }))
}

/// PDS `POST /v2/file/get`: the file the request names (a fixed one by default).
fn file_get(request: &Value) -> Response<Vec<u8>> {
    let field = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
    json_response(
        200,
        &json!({
            "domain_id": field("domain_id"),
            "drive_id": field("drive_id"),
            "file_id": request.get("file_id").cloned().unwrap_or(json!("9520943DC264")),
            "name": "demo.txt",
            "size": 1024
        }),
    )
}

/// PDS `POST /v2/file/list`: two entries.
fn file_list(request: &Value) -> Response<Vec<u8>> {
    json_response(
        200,
        &json!({
            "items": [
                {"file_id": "9520943DC264", "name": "demo.txt", "type": "file"},
                {"file_id": "9520943DC265", "name": "photos", "type": "folder"}
            ],
            "drive_id": request.get("drive_id").cloned().unwrap_or(Value::Null),
            "next_marker": ""
        }),
    )
}
