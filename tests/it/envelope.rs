//! The envelope dialect end to end: the PDS contract, order and ids, whole-batch refusals,
//! per-item refusals next to successful items, and the headers batchgate gives children.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::batch::{
    assert_item_error, assert_rejected, assert_upstream_untouched, batch, by_id, item,
    item_with_body, item_with_headers, responses, BATCH_PATH,
};
use common::client::{self, Conn};
use common::config::GateConfig;
use common::gate;
use common::upstream::{Reply, Upstream};
use serde_json::{json, Value};

/// The example of the PDS batch page, exactly as documented.
const PDS_EXAMPLE: &str = r#"{"resource":"file","requests":[{"id":"93433894994ad2e1","method":"POST","url":"/file/get","headers":{"Content-Type":"application/json"},"body":{"domain_id":"1","drive_id":"1"}}]}"#;

/// Sends `body` as a raw `POST /v2/batch` with the given extra headers.
async fn post_batch(gate: &gate::Gate, headers: &[(&str, &str)], body: &str) -> client::Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    client::request(gate.addr, "POST", BATCH_PATH, &all, body.as_bytes()).await
}

/// Posts each body in turn and asserts the whole batch is refused with `status` and `code`
/// while the upstream sees nothing.
async fn assert_each_refused<B: AsRef<str>>(
    gate: &gate::Gate,
    upstream: &Upstream,
    bodies: impl IntoIterator<Item = B>,
    status: u16,
    code: &str,
) {
    for body in bodies {
        let body = body.as_ref();
        let resp = post_batch(gate, &[], body).await;
        assert_rejected(&resp, status, code);
        assert_upstream_untouched(upstream, body);
    }
}

/// Proves the PDS page's round trip: the child goes out as `POST /v2/file/get` with the
/// body byte for byte, and the reply carries the id, status and the upstream JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pds_example_round_trip() {
    let upstream = Upstream::with_handler(|_| {
        Reply::json(
            200,
            r#"{"domain_id" : "1", "drive_id":"1","file_id":"root","size":1.50}"#,
        )
        .with_header("X-Upstream", "yes")
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;

    let resp = client::post_json(gate.addr, BATCH_PATH, PDS_EXAMPLE).await;

    let log = upstream.requests();
    assert_eq!(log.len(), 1, "one child, one upstream request: {log:?}");
    let child = &log[0];
    assert_eq!(child.method, "POST");
    assert_eq!(child.target, "/v2/file/get");
    assert_eq!(child.body, br#"{"domain_id":"1","drive_id":"1"}"#);
    assert_eq!(child.header_all("content-type"), vec!["application/json"]);
    assert_eq!(child.header("content-length"), Some("32"));

    let items = responses(&resp);
    assert_eq!(items.len(), 1, "{items:?}");
    let entry = &items[0];
    assert_eq!(entry["id"], "93433894994ad2e1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["headers"]["x-upstream"], "yes");
    assert_eq!(
        entry["body"],
        serde_json::from_str::<Value>(
            r#"{"domain_id":"1","drive_id":"1","file_id":"root","size":1.50}"#
        )
        .unwrap(),
        "the upstream body is embedded as JSON, not as a string, digit for digit"
    );
    // Embedded as the upstream wrote it, not re-encoded.
    assert!(
        resp.body_str()
            .contains(r#""body":{"domain_id" : "1", "drive_id":"1","file_id":"root","size":1.50}"#),
        "{}",
        resp.body_str()
    );
    assert!(resp.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

/// Proves child bodies are forwarded as the exact JSON text the client wrote (spacing,
/// number formats, escapes, big numbers), never re-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_bodies_arrive_byte_identical() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let bodies = [
        r#"{ "a" : 1.0e3 , "b":[ ] }"#,
        r#"[1, 2.50, -0.0, 1E+2]"#,
        r#"{"n":123456789012345678901234567890,"s":"\u0041\/\ud83d\ude00"}"#,
        r#""caf\u00e9""#,
        "1.0e3",
        "{\n\t\"nested\" : {\"x\":[{},{ }]}\n}",
    ];
    let items: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(r#"{{"id":"b{i}","method":"POST","url":"/file/update?i={i}","body":{b}}}"#)
        })
        .collect();
    let body = format!(
        r#"{{"resource":"file","requests":[{}]}}"#,
        items.join(" , ")
    );

    let resp = client::post_json(gate.addr, BATCH_PATH, &body).await;
    let replies = responses(&resp);
    assert_eq!(replies.len(), bodies.len());
    for r in &replies {
        assert_eq!(r["status"], 200, "{r}");
    }

    let log = upstream.requests();
    assert_eq!(log.len(), bodies.len());
    for (i, expected) in bodies.iter().enumerate() {
        let query = format!("i={i}");
        let req = log
            .iter()
            .find(|r| r.query.as_deref() == Some(query.as_str()))
            .unwrap_or_else(|| panic!("no upstream request for item {i}"));
        assert_eq!(req.path, "/v2/file/update");
        assert_eq!(
            req.body_str(),
            *expected,
            "item {i}: body must arrive byte for byte"
        );
        assert_eq!(req.header_all("content-type"), vec!["application/json"]);
        assert_eq!(
            req.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
    }
}

/// Proves 100 items come back in request order with their ids although the upstream
/// finishes them in a different order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_and_ids_kept_for_100_items() {
    // Pseudo-random small delays keyed on the item index so completion order is shuffled.
    let upstream = Upstream::with_handler(|req| {
        let i: u64 = req
            .query
            .as_deref()
            .and_then(|q| q.strip_prefix("i="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let body = json!({"target": req.target, "body": String::from_utf8_lossy(&req.body)});
        Reply::json(200, &body.to_string()).with_delay((i * 7919 + 13) % 37)
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("concurrency = 16")
        .start()
        .await;

    let ids: Vec<String> = (0..100)
        .map(|i: u64| format!("{:016x}", (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let items: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| item_with_body(id, "POST", &format!("/file/get?i={i}"), json!({"index": i})))
        .collect();
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;

    let replies = responses(&resp);
    assert_eq!(replies.len(), 100);
    for (i, (entry, id)) in replies.iter().zip(&ids).enumerate() {
        assert_eq!(entry["id"], id.as_str(), "entry {i} out of order");
        assert_eq!(entry["status"], 200, "{entry}");
        assert_eq!(entry["body"]["target"], format!("/v2/file/get?i={i}"));
        assert_eq!(entry["body"]["body"], format!(r#"{{"index":{i}}}"#));
    }
    assert_eq!(upstream.count(), 100);
    assert!(
        upstream.peak() >= 2,
        "items ran one at a time (peak {}), order was never at risk",
        upstream.peak()
    );
}

/// Proves `max_items + 1` children are refused as a whole and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_items_plus_one_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_items = 100")
        .start()
        .await;
    let items: Vec<Value> = (0..101)
        .map(|i| item(&format!("id{i}"), "POST", "/file/get"))
        .collect();

    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;

    assert_rejected(&resp, 400, "InvalidParameter.Requests");
    assert_upstream_untouched(&upstream, "101 items");
}

/// Proves a body that is not a JSON object is refused with 400 `InvalidParameter.Body`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_not_json_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let bodies = [
        "not json",
        "",
        r#"{"resource":"file","requests":[{"id":"1","method":"POST","url":"/file/get"}]"#,
        r#"{"resource":"file","requests":[]} trailing"#,
        "\"just a string\"",
        "42",
        "null",
        // A struct written as an array is not the contract's object.
        r#"["file",[{"id":"1","method":"POST","url":"/file/get"}]]"#,
        "[]",
    ];
    assert_each_refused(&gate, &upstream, bodies, 400, "InvalidParameter.Body").await;
}

/// Proves `requests` missing, null, empty, not an array or holding non-objects is refused
/// with 400 `InvalidParameter.Requests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_missing_empty_or_not_an_array_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let bodies = [
        r#"{"resource":"file"}"#,
        r#"{"resource":"file","requests":null}"#,
        r#"{"resource":"file","requests":[]}"#,
        r#"{"resource":"file","requests":{}}"#,
        r#"{"resource":"file","requests":{"id":"1","method":"POST","url":"/file/get"}}"#,
        r#"{"resource":"file","requests":"[]"}"#,
        r#"{"resource":"file","requests":7}"#,
        r#"{"resource":"file","requests":[{"id":"1","method":"POST","url":"/file/get"},3]}"#,
        r#"{"resource":"file","requests":[{"id":"1","method":"POST","url":"/file/get"},"x"]}"#,
        r#"{"resource":"file","requests":[["2","POST","/file/get"]]}"#,
    ];
    assert_each_refused(&gate, &upstream, bodies, 400, "InvalidParameter.Requests").await;
}

/// Proves a missing, empty, duplicate or non-string id refuses the whole batch with 400
/// `InvalidParameter.Id` (even when other items are fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let ok = r#"{"id":"ok","method":"POST","url":"/file/get"}"#;
    let cases = [
        format!(r#"[{ok},{{"method":"POST","url":"/file/get"}}]"#),
        format!(r#"[{ok},{{"id":"","method":"POST","url":"/file/get"}}]"#),
        format!(r#"[{ok},{{"id":"ok","method":"POST","url":"/file/list"}}]"#),
        // The same id written with an escape is still the same id.
        format!(r#"[{ok},{{"id":"\u006fk","method":"POST","url":"/file/list"}}]"#),
        format!(r#"[{ok},{{"id":7,"method":"POST","url":"/file/get"}}]"#),
        format!(r#"[{ok},{{"id":null,"method":"POST","url":"/file/get"}}]"#),
        format!(r#"[{ok},{{"id":["a"],"method":"POST","url":"/file/get"}}]"#),
        format!(r#"[{ok},{{"id":{{"x":1}},"method":"POST","url":"/file/get"}}]"#),
    ];
    let bodies = cases
        .iter()
        .map(|requests| format!(r#"{{"resource":"file","requests":{requests}}}"#));
    assert_each_refused(&gate, &upstream, bodies, 400, "InvalidParameter.Id").await;
}

/// Proves a `resource` outside `allowed_resources` (or missing, or not a string) is
/// refused with 400 `InvalidParameter.Resource`, while an allowed one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_not_allowed_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"allowed_resources = ["file"]"#)
        .start()
        .await;
    let requests = r#"[{"id":"1","method":"POST","url":"/file/get"}]"#;
    let resources = [
        r#""resource":"drive","#,
        r#""resource":"File","#,
        r#""resource":"","#,
        r#""resource":1,"#,
        r#""resource":null,"#,
        "",
    ];
    let bodies = resources
        .iter()
        .map(|resource| format!(r#"{{{resource}"requests":{requests}}}"#));
    assert_each_refused(&gate, &upstream, bodies, 400, "InvalidParameter.Resource").await;
    let body = format!(r#"{{"resource":"file","requests":{requests}}}"#);
    let items = responses(&post_batch(&gate, &[], &body).await);
    assert_eq!(items[0]["status"], 200);
    assert_eq!(upstream.count(), 1);
}

/// Proves a body over `max_body_bytes` announced by Content-Length is refused with 413
/// `RequestEntityTooLarge` and nothing is sent; a body of exactly the limit is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_with_content_length_is_413() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_body_bytes = 1000")
        .start()
        .await;
    let padded = |len: usize| {
        let head = r#"{"resource":"file","requests":[{"id":"1","method":"POST","url":"/file/get"}],"pad":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };

    let resp = post_batch(&gate, &[], &padded(1001)).await;
    assert_rejected(&resp, 413, "RequestEntityTooLarge");
    let resp = post_batch(&gate, &[], &padded(64 * 1024)).await;
    assert_rejected(&resp, 413, "RequestEntityTooLarge");
    assert_upstream_untouched(&upstream, "oversized body");

    let resp = post_batch(&gate, &[], &padded(1000)).await;
    assert_eq!(responses(&resp)[0]["status"], 200);
}

/// Proves a chunked body (no Content-Length) that grows over `max_body_bytes` is refused
/// with 413 `RequestEntityTooLarge` and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_is_413() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("max_body_bytes = 1000")
        .start()
        .await;
    let first =
        r#"{"resource":"file","requests":[{"id":"1","method":"POST","url":"/file/get"}],"pad":""#;
    let second = format!("{}\"}}", "y".repeat(1200));
    let mut raw = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in [first, second.as_str()] {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");

    let resp = client::send_raw(gate.addr, raw.as_bytes())
        .await
        .expect("chunked oversized batch");
    assert_rejected(&resp, 413, "RequestEntityTooLarge");
    assert_upstream_untouched(&upstream, "oversized chunked body");

    // A small chunked batch is fine.
    let body = batch(vec![item("1", "POST", "/file/get")]);
    let raw = format!(
        "POST {BATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let resp = client::send_raw(gate.addr, raw.as_bytes())
        .await
        .expect("chunked batch");
    assert_eq!(responses(&resp)[0]["status"], 200);
}

/// Proves a batch whose outer Content-Type is not JSON (or missing) is refused with 415
/// `UnsupportedMediaType`, and that JSON with parameters or `+json` is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_outer_content_type_is_415() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let body = batch(vec![item("1", "POST", "/file/get")]);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        Some("text/json"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("Content-Type", ct)])
            .unwrap_or_default();
        let resp = client::request(gate.addr, "POST", BATCH_PATH, &headers, body.as_bytes()).await;
        assert_rejected(&resp, 415, "UnsupportedMediaType");
        assert_upstream_untouched(&upstream, &format!("{content_type:?}"));
    }
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
    ] {
        let resp = client::post(gate.addr, BATCH_PATH, content_type, body.as_bytes()).await;
        assert_eq!(responses(&resp)[0]["status"], 200, "{content_type}");
    }
}

/// Proves GET (and other non-POST methods) on the batch route get 405 `MethodNotAllowed`
/// with `Allow: POST`, and are not passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_batch_route_is_405_with_allow() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let resp = client::request(gate.addr, method, BATCH_PATH, &[], b"").await;
        assert_rejected(&resp, 405, "MethodNotAllowed");
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
        assert_upstream_untouched(&upstream, method);
    }
    let resp = client::get(gate.addr, "/v2/batch?x=1").await;
    assert_rejected(&resp, 405, "MethodNotAllowed");
    assert_upstream_untouched(&upstream, "GET with query");
}

/// Proves per-item refusals (method, url, prefix, content type, header) are reported in
/// the item's slot while the other items of the same batch are sent and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_item_errors_leave_other_items_alone() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"allowed_methods = ["GET", "POST"]"#)
        .route(r#"allowed_url_prefixes = ["/file/"]"#)
        .start()
        .await;
    let items = vec![
        item_with_body("ok-first", "POST", "/file/get", json!({"n": 1})),
        item("bad-method", "DELETE", "/file/delete"),
        item("bad-method-2", "TRACE", "/file/get"),
        item("bad-url", "POST", "file/get"),
        item("empty-url", "POST", ""),
        json!({"id": "no-url", "method": "POST"}),
        json!({"id": "num-url", "method": "POST", "url": 7}),
        item("outside-prefix", "POST", "/admin/users"),
        item("prefix-lookalike", "POST", "/filesystem/x"),
        json!({"id": "text-plain", "method": "POST", "url": "/file/get",
               "headers": {"Content-Type": "text/plain"}, "body": "hello"}),
        item_with_headers(
            "host-header",
            "GET",
            "/file/get",
            json!({"Host": "evil.example"}),
        ),
        item("ok-last", "get", "/file/list?marker=a%20b"),
    ];
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let replies = responses(&resp);
    assert_eq!(replies.len(), 12);

    assert_eq!(by_id(&replies, "ok-first")["status"], 200);
    assert_eq!(by_id(&replies, "ok-last")["status"], 200);
    assert_item_error(by_id(&replies, "bad-method"), 405, "MethodNotAllowed");
    assert_item_error(by_id(&replies, "bad-method-2"), 405, "MethodNotAllowed");
    assert_item_error(by_id(&replies, "bad-url"), 400, "InvalidParameter.Url");
    assert_item_error(by_id(&replies, "empty-url"), 400, "InvalidParameter.Url");
    assert_item_error(by_id(&replies, "no-url"), 400, "InvalidParameter.Url");
    assert_item_error(by_id(&replies, "num-url"), 400, "InvalidParameter.Url");
    assert_item_error(by_id(&replies, "outside-prefix"), 403, "Forbidden.Url");
    assert_item_error(by_id(&replies, "prefix-lookalike"), 403, "Forbidden.Url");
    assert_item_error(
        by_id(&replies, "text-plain"),
        400,
        "InvalidParameter.ContentType",
    );
    assert_item_error(
        by_id(&replies, "host-header"),
        400,
        "InvalidParameter.Headers",
    );

    let mut seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec!["GET /v2/file/list?marker=a%20b", "POST /v2/file/get"],
        "only the valid items may reach the upstream"
    );
}

/// Proves each header the proxy owns or that frames the message is refused per item with
/// 400 `InvalidParameter.Headers`, and that none of them reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_child_headers_are_refused_per_item() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let forbidden = [
        ("Host", "evil.example"),
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Request-Id", "forged"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ];
    let mut items: Vec<Value> = forbidden
        .iter()
        .map(|(name, value)| item_with_headers(name, "POST", "/file/get", json!({ *name: *value })))
        .collect();
    items.push(item_with_headers(
        "ok",
        "POST",
        "/file/get",
        json!({"X-Custom": "1"}),
    ));
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let replies = responses(&resp);
    for (name, _) in forbidden {
        assert_item_error(by_id(&replies, name), 400, "InvalidParameter.Headers");
    }
    assert_eq!(by_id(&replies, "ok")["status"], 200);

    let log = upstream.requests();
    assert_eq!(log.len(), 1, "only the ok item may be sent");
    let sent = &log[0];
    assert_eq!(sent.header("x-custom"), Some("1"));
    assert_eq!(sent.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(sent.header_all("x-real-ip"), Vec::<&str>::new());
    assert_eq!(sent.header_all("proxy-authorization"), Vec::<&str>::new());
    assert_eq!(sent.header_all("transfer-encoding"), Vec::<&str>::new());
    assert_ne!(sent.header("host"), Some("evil.example"));
    assert_ne!(sent.header("x-request-id"), Some("forged"));
}

/// Proves every child carries X-Forwarded-For = the client ip (a client-sent one is not
/// trusted), the client's X-Request-Id (also returned), the forwarded Authorization and
/// its own item headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_get_forwarded_for_request_id_and_forwarded_headers() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let items = vec![
        item("a", "POST", "/file/get"),
        item_with_headers("b", "POST", "/file/list", json!({"X-Custom": "1"})),
        item("c", "GET", "/file/get?x=1"),
    ];
    let resp = post_batch(
        &gate,
        &[
            ("X-Request-Id", "client-req-42"),
            ("Authorization", "Bearer t0k3n"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Not-Forwarded", "secret"),
            ("Cookie", "session=1"),
        ],
        &batch(items),
    )
    .await;
    let replies = responses(&resp);
    assert!(replies.iter().all(|r| r["status"] == 200), "{replies:?}");
    assert_eq!(resp.header("x-request-id"), Some("client-req-42"));

    let log = upstream.requests();
    assert_eq!(log.len(), 3);
    for req in &log {
        assert_eq!(
            req.header_all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "{}",
            req.target
        );
        assert_eq!(
            req.header_all("x-request-id"),
            vec!["client-req-42"],
            "{}",
            req.target
        );
        assert_eq!(
            req.header_all("authorization"),
            vec!["Bearer t0k3n"],
            "{}",
            req.target
        );
        assert_eq!(req.header("x-not-forwarded"), None, "{}", req.target);
        assert_eq!(req.header("cookie"), None, "{}", req.target);
    }
    let custom: Vec<&str> = log
        .iter()
        .filter(|r| r.header("x-custom") == Some("1"))
        .map(|r| r.target.as_str())
        .collect();
    assert_eq!(
        custom,
        vec!["/v2/file/list"],
        "X-Custom only on its own item"
    );
}

/// Proves that without a client X-Request-Id, one id is generated per batch, shared by all
/// its children and returned in the reply's x-request-id header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_request_id_is_shared_and_returned() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let mut conn = Conn::connect(gate.addr).await;
    let mut batch_ids = HashSet::new();
    for round in 0..2 {
        upstream.reset();
        let items: Vec<Value> = (0..4)
            .map(|i| item(&format!("{round}-{i}"), "POST", "/file/get"))
            .collect();
        let body = batch(items);
        let resp = conn
            .request(
                "POST",
                BATCH_PATH,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        let replies = responses(&resp);
        assert!(replies.iter().all(|r| r["status"] == 200), "{replies:?}");
        let returned = resp
            .header("x-request-id")
            .expect("reply carries x-request-id")
            .to_string();
        assert!(!returned.is_empty());
        let log = upstream.wait_for_count(4, Duration::from_secs(5)).await;
        for req in &log {
            assert_eq!(req.header_all("x-request-id"), vec![returned.as_str()]);
        }
        batch_ids.insert(returned);
    }
    assert_eq!(batch_ids.len(), 2, "each batch gets its own id");
}

/// Absolute item urls on the batch request's own origin (as the Microsoft Graph SDKs send
/// them) or on a configured public origin are their path, which holds the route's base path
/// (`/v2`) as on the wire; every other absolute url, and one outside the base path, is
/// refused as before, and the path still goes through the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_absolute_urls_are_paths_and_others_are_refused() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr)
        .route("public_origins = [\"https://api.example.com\"]")
        .start()
        .await;
    // The test client sends `Host: 127.0.0.1`: that is the batch request's own origin.
    let own = "http://127.0.0.1";
    let body = batch(vec![
        item("own", "GET", &format!("{own}/v2/file/get?id=1")),
        item("public", "GET", "https://api.example.com/v2/file/get?id=2"),
        item("outside_base", "GET", &format!("{own}/file/get?id=3")),
        item("foreign", "GET", "http://evil.example/file/get"),
        item("userinfo", "GET", "http://me@127.0.0.1/file/get"),
        item(
            "other_port",
            "GET",
            &format!("http://{}/file/get", gate.addr),
        ),
        item("escape", "GET", &format!("{own}/v2/file/../../admin")),
    ]);
    let reply = client::post_json(gate.addr, BATCH_PATH, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let statuses: Vec<(String, i64)> = responses(&reply)
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("own".to_string(), 200),
            ("public".to_string(), 200),
            ("outside_base".to_string(), 400),
            ("foreign".to_string(), 400),
            ("userinfo".to_string(), 400),
            ("other_port".to_string(), 400),
            ("escape".to_string(), 400),
        ],
        "{}",
        reply.body_str()
    );
    let mut targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    targets.sort();
    assert_eq!(targets, vec!["/v2/file/get?id=1", "/v2/file/get?id=2"]);
}

#[test]
fn public_origins_must_be_origins() {
    let text = GateConfig::new("127.0.0.1:9".parse().expect("addr"))
        .route("public_origins = [\"https://api.example.com/v1\", \"api.example.com\"]")
        .toml();
    let out = gate::check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "routes[0].public_origins[0]: \"https://api.example.com/v1\" must be an origin"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("routes[0].public_origins[1]"), "{stderr}");
}

/// `reply_body = "graph"`: bodies that are not JSON come back as one base64 string (Microsoft
/// Graph's rule, which its SDKs decode by the item's `Content-Type`), JSON as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_body_rule_base64_encodes_every_non_json_body() {
    use base64::Engine;
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/text" => Reply::text(200, "hello \"graph\""),
        "/v2/photo" => Reply::bytes(200, "image/jpeg", &[0xff, 0xd8, 0xff, 0x00]),
        _ => Reply::json(200, r#"{"id": 1}"#),
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("reply_body = \"graph\"")
        .start()
        .await;
    let body = batch(vec![
        item("text", "GET", "/text"),
        item("photo", "GET", "/photo"),
        item("json", "GET", "/json"),
    ]);
    let reply = client::post_json(gate.addr, BATCH_PATH, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let all = responses(&reply);
    let b64 = base64::engine::general_purpose::STANDARD;
    let decoded = |r: &Value| {
        b64.decode(r["body"].as_str().expect("a base64 string"))
            .expect("base64")
    };
    assert_eq!(decoded(&all[0]), b"hello \"graph\"");
    assert_eq!(decoded(&all[1]), [0xff, 0xd8, 0xff, 0x00]);
    assert_eq!(all[2]["body"], json!({"id": 1}));
    assert!(
        !reply.body_str().contains("body_encoding"),
        "{}",
        reply.body_str()
    );
}

/// `"sequential": true` runs items one after another in request order; with
/// `"stop_on_failure": true` the items after the first failure are not sent (424
/// `FailedDependency.NotRun`). The route keys of the same names set the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_batches_run_in_order_and_can_stop_at_a_failure() {
    let upstream = Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/slow" => Reply::json(200, "{}").with_delay(100),
        "/v2/fail" => Reply::json(500, "{}"),
        _ => Reply::json(200, "{}"),
    })
    .await;
    let gate = GateConfig::new(upstream.addr)
        .route("stop_on_failure = true")
        .start()
        .await;
    let body = |extra: &str| {
        format!(
            r#"{{{extra}"requests":[{{"id":"a","method":"GET","url":"/slow"}},{{"id":"b","method":"GET","url":"/fail"}},{{"id":"c","method":"GET","url":"/last"}}]}}"#
        )
    };
    let statuses = |reply: &client::Response| -> Vec<i64> {
        responses(reply)
            .iter()
            .map(|r| r["status"].as_i64().unwrap_or(0))
            .collect()
    };
    let reply = client::post_json(gate.addr, BATCH_PATH, &body(r#""sequential":true,"#)).await;
    assert_eq!(
        statuses(&reply),
        vec![200, 500, 424],
        "{}",
        reply.body_str()
    );
    assert_eq!(
        responses(&reply)[2]["body"]["code"],
        "FailedDependency.NotRun"
    );
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/v2/slow", "/v2/fail"],
        "in order, and /last never sent"
    );

    upstream.reset();
    let reply = client::post_json(
        gate.addr,
        BATCH_PATH,
        &body(r#""sequential":true,"stop_on_failure":false,"#),
    )
    .await;
    assert_eq!(statuses(&reply), vec![200, 500, 200]);
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, vec!["/v2/slow", "/v2/fail", "/v2/last"]);

    upstream.reset();
    let reply = client::post_json(gate.addr, BATCH_PATH, &body("")).await;
    assert_eq!(
        statuses(&reply),
        vec![200, 500, 200],
        "concurrent by default"
    );
}
