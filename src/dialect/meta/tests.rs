//! Meta decode/encode tests on bytes only.

use super::*;
use crate::dialect::{Failure, RejectionKind, Sent, SubRequest};
use crate::guard::{HeaderGuard, UrlGuard};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

fn meta() -> Meta {
    Meta {
        config: Arc::new(MetaConfig {
            base_path: "/v21.0".into(),
            version: Some("v21.0".into()),
            allowed_methods: vec![Method::GET, Method::POST, Method::DELETE],
            url_guard: UrlGuard::new("/v21.0".into(), None, vec!["/v21.0".into()]),
            header_guard: HeaderGuard,
        }),
        max_items: 50,
    }
}

fn decode_with(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &str,
) -> Result<Plan<MetaMeta>, Rejection> {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
    }
    let body = Bytes::copy_from_slice(body.as_bytes());
    meta().decode(&BatchRequest {
        path: "/",
        authority: None,
        method: &Method::POST,
        query,
        headers: &headers,
        body: &body,
    })
}

/// A form-encoded batch of `items`, with a top-level token.
fn form(items: &Value) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("access_token", "tok")
        .append_pair("batch", &items.to_string())
        .finish()
}

fn decode_form(items: &Value) -> Result<Plan<MetaMeta>, Rejection> {
    decode_with(
        Some("application/x-www-form-urlencoded"),
        None,
        &form(items),
    )
}

fn ready(plan: &Plan<MetaMeta>, index: usize) -> &SubRequest {
    plan.items[index]
        .as_ref()
        .ok()
        .and_then(Planned::ready)
        .expect("ready")
}

#[test]
fn items_go_under_the_version_with_the_batch_token() {
    let plan = decode_form(&json!([
        {"method": "GET", "relative_url": "me?fields=id"},
        {"method": "post", "relative_url": "/v21.0/me/feed", "body": "message=hi%20there",
         "headers": [{"name": "X-A", "value": "1"}, "X-B: 2"]},
        {"method": "GET", "relative_url": "me?access_token=own"},
    ]))
    .expect("valid");
    assert_eq!(ready(&plan, 0).path, "/v21.0/me?fields=id&access_token=tok");
    let post = ready(&plan, 1);
    assert_eq!(post.method, Method::POST);
    assert_eq!(post.path, "/v21.0/me/feed?access_token=tok");
    assert_eq!(post.body.as_deref(), Some(b"message=hi%20there".as_slice()));
    let names: Vec<&str> = post.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-a", "x-b", "content-type"]);
    assert_eq!(ready(&plan, 2).path, "/v21.0/me?access_token=own");
    assert!(plan.after.is_empty());
}

#[test]
fn the_batch_comes_from_json_or_the_query_too() {
    let items = json!([{"method": "GET", "relative_url": "me"}]);
    let body = json!({"batch": items, "include_headers": false}).to_string();
    let plan = decode_with(Some("application/json"), Some("access_token=q"), &body).unwrap();
    assert_eq!(ready(&plan, 0).path, "/v21.0/me?access_token=q");
    assert!(!plan.meta[0].include_headers);
    let body = json!({"batch": items.to_string()}).to_string();
    assert!(decode_with(Some("application/json"), None, &body).is_ok());
    let query = form(&items);
    let plan = decode_with(None, Some(&query), "").unwrap();
    assert_eq!(ready(&plan, 0).path, "/v21.0/me?access_token=tok");
}

#[test]
fn whole_batch_errors_are_graph_batch_exceptions() {
    let kind = |r: Result<Plan<MetaMeta>, Rejection>| r.expect_err("refused").kind;
    assert_eq!(kind(decode_with(None, None, "")), RejectionKind::Empty);
    assert_eq!(
        kind(decode_with(
            Some("application/x-www-form-urlencoded"),
            None,
            "batch=%7B%7D"
        )),
        RejectionKind::ParseError
    );
    assert_eq!(kind(decode_form(&json!([]))), RejectionKind::Empty);
    let many: Vec<Value> = (0..51)
        .map(|_| json!({"method": "GET", "relative_url": "me"}))
        .collect();
    let err = decode_form(&Value::Array(many)).unwrap_err();
    assert_eq!(err.kind, RejectionKind::TooManyItems);
    assert!(err.message.contains("Maximum batch size is 50"));
    let reply = meta().reject(&err);
    assert_eq!(reply.status, 400);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["type"], "GraphBatchException");
    let twice = "batch=%5B%5D&batch=%5B%5D";
    assert!(
        decode_with(Some("application/x-www-form-urlencoded"), None, twice)
            .unwrap_err()
            .message
            .contains("more than once")
    );
}

#[test]
fn names_order_items_and_only_earlier_ones_can_be_named() {
    let plan = decode_form(&json!([
        {"method": "GET", "relative_url": "me", "name": "me"},
        {"method": "GET", "relative_url": "me/friends", "name": "friends", "depends_on": "me"},
        {"method": "GET", "relative_url": "?ids={result=friends:$.data.*.id}",
         "omit_response_on_success": false},
        {"method": "GET", "relative_url": "x", "name": "kept", "omit_response_on_success": false},
        {"method": "GET", "relative_url": "y", "depends_on": ["kept", "me"]},
    ]))
    .expect("valid");
    assert_eq!(plan.after, [vec![], vec![0], vec![1], vec![], vec![3, 0]]);
    assert!(matches!(plan.items[2], Ok(Planned::Deferred(_))));
    let omitted: Vec<bool> = plan.meta.iter().map(|m| m.omit_on_success).collect();
    assert_eq!(omitted, [true, true, false, false, false]);

    for items in [
        json!([{"method": "GET", "relative_url": "a", "depends_on": "b"},
               {"method": "GET", "relative_url": "b", "name": "b"}]),
        json!([{"method": "GET", "relative_url": "a?x={result=nobody:$.id}"}]),
        json!([{"method": "GET", "relative_url": "a", "name": "a", "depends_on": "a"}]),
    ] {
        let err = decode_form(&items).unwrap_err();
        assert!(
            err.message
                .contains("can only depend on preceding requests"),
            "{}",
            err.message
        );
    }
    let err = decode_form(&json!([
        {"method": "GET", "relative_url": "a", "name": "x"},
        {"method": "GET", "relative_url": "b", "name": "x"},
    ]))
    .unwrap_err();
    assert_eq!(err.kind, RejectionKind::DuplicateId);
}

#[test]
fn bad_items_are_refused_alone() {
    let plan = decode_form(&json!([
        {"relative_url": "me"},
        {"method": "GET"},
        {"method": "PATCH", "relative_url": "me"},
        {"method": "GET", "relative_url": "v2.0/me"},
        {"method": "GET", "relative_url": "../admin"},
        {"method": "POST", "relative_url": "me", "attached_files": "f1"},
        {"method": "GET", "relative_url": "me", "headers": ["no colon"]},
        {"method": "GET", "relative_url": "me", "headers": ["Host: evil"]},
        {"method": "GET", "relative_url": "me"},
    ]))
    .expect("valid");
    let refused: Vec<bool> = plan.items.iter().map(Result::is_err).collect();
    assert_eq!(
        refused,
        [true, true, true, true, true, true, true, true, false]
    );
}

fn response(status: u16, body: &str) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Outcome::Response(UpstreamResponse {
        status,
        headers,
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

#[test]
fn the_reply_is_meta_s_array_with_nulls_where_meta_has_them() {
    let metas = vec![
        MetaMeta {
            omit_on_success: false,
            include_headers: true,
        },
        MetaMeta {
            omit_on_success: true,
            include_headers: true,
        },
        MetaMeta {
            omit_on_success: true,
            include_headers: true,
        },
        MetaMeta {
            omit_on_success: false,
            include_headers: true,
        },
        MetaMeta {
            omit_on_success: false,
            include_headers: true,
        },
        MetaMeta {
            omit_on_success: false,
            include_headers: false,
        },
    ];
    let outcomes = vec![
        response(200, r#"{"id":"1"}"#),
        response(200, r#"{"id":"2"}"#),
        response(404, r#"{"error":{}}"#),
        Outcome::failed(FailureKind::BatchDeadline, Sent::Maybe),
        Outcome::Failed(
            Failure::new(FailureKind::ReferenceUnresolved, Sent::Nothing)
                .with_detail("{result=a:$.x} matched nothing"),
        ),
        response(201, "{}"),
    ];
    let reply = meta().encode(metas, outcomes);
    assert_eq!(reply.status, 200);
    let array: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        array[0],
        json!({"code": 200, "headers": [{"name": "content-type", "value": "application/json"}], "body": "{\"id\":\"1\"}"})
    );
    assert_eq!(array[1], Value::Null, "a referenced success is omitted");
    assert_eq!(array[2]["code"], 404, "a referenced failure is not");
    assert_eq!(array[3], Value::Null, "timed out: the client retries it");
    assert_eq!(array[4]["code"], 424);
    let error: Value = serde_json::from_str(array[4]["body"].as_str().unwrap()).unwrap();
    assert_eq!(error["error"]["type"], "FailedDependency.Reference");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("{result=a:$.x} matched nothing"));
    assert_eq!(array[5], json!({"code": 201, "body": "{}"}));
}
