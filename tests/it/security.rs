//! Hostile child URLs and headers: each is refused in its own slot and never reaches the
//! upstream (asserted on the upstream's request log), while the valid items still go out.

use crate::common;

use common::batch::{
    assert_item_error, batch, by_id, item, item_with_headers, responses, BATCH_PATH,
};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::upstream::Upstream;
use serde_json::{json, Value};

/// Sorted `METHOD target` lines of what the upstream received.
fn upstream_targets(upstream: &Upstream) -> Vec<String> {
    let mut seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    seen.sort();
    seen
}

/// Proves hostile child URLs (authority forms, absolute URLs, dot segments plain and
/// encoded, CRLF injection, backslashes, encoded separators, the batch route itself, also
/// behind empty `;` segments) are refused per item and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_urls_never_reach_upstream() {
    let upstream = Upstream::echo().await;
    // No prefix restriction, so each URL guard has to stop its case on its own.
    let gate = GateConfig::new(upstream.addr).start().await;
    let hostile: &[(&str, u16, &str)] = &[
        ("//evil.example/x", 400, "InvalidParameter.Url"),
        ("http://evil.example/x", 400, "InvalidParameter.Url"),
        ("https://evil.example/file/get", 400, "InvalidParameter.Url"),
        ("evil.example/x", 400, "InvalidParameter.Url"),
        ("/file/../admin", 400, "InvalidParameter.Url"),
        ("/file/..", 400, "InvalidParameter.Url"),
        ("/file/./get", 400, "InvalidParameter.Url"),
        ("/file/%2e%2e/admin", 400, "InvalidParameter.Url"),
        ("/file/%2E%2E/admin", 400, "InvalidParameter.Url"),
        ("/file/.%2e/admin", 400, "InvalidParameter.Url"),
        ("/file/get/..?x=1", 400, "InvalidParameter.Url"),
        ("/file/get\r\nHost: evil", 400, "InvalidParameter.Url"),
        (
            "/file/get HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin",
            400,
            "InvalidParameter.Url",
        ),
        ("/file/get\nX-Injected: 1", 400, "InvalidParameter.Url"),
        ("/file/a%0d%0aHost:evil", 400, "InvalidParameter.Url"),
        ("/file/get\u{0}", 400, "InvalidParameter.Url"),
        ("/file/get x", 400, "InvalidParameter.Url"),
        ("/file/get#frag", 400, "InvalidParameter.Url"),
        ("/file/\u{e9}", 400, "InvalidParameter.Url"),
        ("/file/%zz", 400, "InvalidParameter.Url"),
        ("/file/a%2fb", 400, "InvalidParameter.Url"),
        ("\\\\evil.example\\x", 400, "InvalidParameter.Url"),
        ("/\\evil.example/x", 400, "InvalidParameter.Url"),
        ("/file\\..\\admin", 400, "InvalidParameter.Url"),
        ("/file/%5c..%5cadmin", 400, "InvalidParameter.Url"),
        ("/batch", 403, "Forbidden.Url"),
        ("/batch/", 403, "Forbidden.Url"),
        ("/BATCH", 403, "Forbidden.Url"),
        ("/%62atch", 403, "Forbidden.Url"),
        ("/batch?resource=file", 403, "Forbidden.Url"),
        ("/v2/batch", 403, "Forbidden.Url"),
        // Tomcat/Jetty/Spring drop `;params` and merge `//`: `/v2/;/batch` is `/v2/batch`.
        ("/;/batch", 403, "Forbidden.Url"),
        ("/;x=1/;/BATCH;y/", 403, "Forbidden.Url"),
        ("/%3b/batch", 403, "Forbidden.Url"),
    ];
    let mut items = vec![item("ok-first", "POST", "/file/get")];
    for (i, (url, _, _)) in hostile.iter().enumerate() {
        items.push(item(&format!("h{i}"), "POST", url));
    }
    items.push(item("ok-last", "GET", "/file/list?q=a%2Fb&r=%2e%2e"));

    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let replies = responses(&resp);
    assert_eq!(replies.len(), hostile.len() + 2);
    assert_eq!(by_id(&replies, "ok-first")["status"], 200);
    assert_eq!(by_id(&replies, "ok-last")["status"], 200);
    for (i, (url, status, code)) in hostile.iter().enumerate() {
        let entry = by_id(&replies, &format!("h{i}"));
        assert_eq!(entry["status"], *status, "{url:?}: {entry}");
        assert_item_error(entry, *status, code);
    }

    assert_eq!(
        upstream_targets(&upstream),
        vec![
            "GET /v2/file/list?q=a%2Fb&r=%2e%2e".to_string(),
            "POST /v2/file/get".to_string()
        ],
        "only the two valid items may reach the upstream"
    );
    for req in upstream.requests() {
        assert!(
            req.headers
                .iter()
                .all(|(k, v)| k != "x-injected" && !v.contains("evil")),
            "injected header reached the upstream: {:?}",
            req.headers
        );
        assert_eq!(req.header_all("host").len(), 1);
    }
}

/// Proves the batch route cannot be nested through any route's base path: with a second
/// batch route, a child of the first aimed at the second (plain or encoded) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_cannot_target_any_batch_route() {
    let upstream = Upstream::echo().await;
    let mut config = GateConfig::new(upstream.addr).toml();
    config.push_str(
        "\n[[routes]]\nname = \"other\"\npath = \"/v2/admin/batch\"\ndialect = \"envelope\"\nupstream = \"api\"\n",
    );
    let gate = gate::start(&config).await;
    let items = vec![
        item("ok", "POST", "/file/get"),
        item("other", "POST", "/admin/batch"),
        item("other-encoded", "POST", "/admin/%62atch"),
        item("other-upper", "POST", "/ADMIN/BATCH/"),
        item("other-empty-segment", "POST", "/admin/;/batch"),
        item("self", "POST", "/batch"),
    ];
    let replies = responses(&client::post_json(gate.addr, BATCH_PATH, &batch(items)).await);
    assert_eq!(by_id(&replies, "ok")["status"], 200);
    for id in [
        "other",
        "other-encoded",
        "other-upper",
        "other-empty-segment",
        "self",
    ] {
        assert_item_error(by_id(&replies, id), 403, "Forbidden.Url");
    }
    assert_eq!(
        upstream_targets(&upstream),
        vec!["POST /v2/file/get".to_string()]
    );
}

/// Proves hostile child headers (CRLF in values, invalid names, framing and proxy-owned
/// headers in any case, client-IP headers, path and method overrides) are refused per item
/// and none of them reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_never_reach_upstream() {
    let upstream = Upstream::echo().await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let hostile: Vec<(&str, Value)> = vec![
        ("crlf-value", json!({"X-Ok": "a\r\nX-Injected: 1"})),
        ("lf-value", json!({"X-Ok": "a\nX-Injected: 1"})),
        ("nul-value", json!({"X-Ok": "a\u{0}b"})),
        ("crlf-name", json!({"X-Ok\r\nX-Injected": "1"})),
        ("colon-name", json!({"X-Injected: 1\r\nX-B": "1"})),
        ("space-name", json!({"X Injected": "1"})),
        ("empty-name", json!({"": "1"})),
        ("non-string", json!({"X-Injected": 1})),
        ("not-object", json!(["X-Injected", "1"])),
        ("host-lower", json!({"host": "evil.example"})),
        ("host-upper", json!({"HOST": "evil.example"})),
        ("content-length", json!({"content-length": "5"})),
        ("transfer-encoding", json!({"Transfer-Encoding": "chunked"})),
        ("te", json!({"TE": "trailers"})),
        ("connection", json!({"Connection": "close, X-Injected"})),
        ("upgrade", json!({"Upgrade": "websocket"})),
        ("expect", json!({"Expect": "100-continue"})),
        ("keep-alive", json!({"Keep-Alive": "timeout=5"})),
        ("xff", json!({"x-forwarded-for": "6.6.6.6"})),
        ("xfh", json!({"X-Forwarded-Host": "evil.example"})),
        ("xfp", json!({"X-Forwarded-Proto": "https"})),
        ("forwarded", json!({"Forwarded": "for=6.6.6.6"})),
        ("real-ip", json!({"x-real-ip": "6.6.6.6"})),
        ("request-id", json!({"X-REQUEST-ID": "forged"})),
        ("via", json!({"Via": "1.1 evil"})),
        ("proxy-auth", json!({"proxy-authorization": "Basic eA=="})),
        ("proxy-conn", json!({"Proxy-Connection": "keep-alive"})),
        // Path and method overrides route around allowed_url_prefixes / allowed_methods.
        ("original-url", json!({"X-Original-URL": "/v2/batch"})),
        ("rewrite-url", json!({"x-rewrite-url": "/admin"})),
        (
            "method-override",
            json!({"X-HTTP-Method-Override": "DELETE"}),
        ),
        ("http-method", json!({"X-HTTP-Method": "DELETE"})),
        ("x-method-override", json!({"X-Method-Override": "DELETE"})),
        // Client-IP headers upstreams trust like X-Real-IP.
        ("true-client-ip", json!({"True-Client-IP": "6.6.6.6"})),
        ("client-ip", json!({"X-Client-IP": "6.6.6.6"})),
        (
            "cluster-client-ip",
            json!({"X-Cluster-Client-IP": "6.6.6.6"}),
        ),
        ("cf-connecting-ip", json!({"CF-Connecting-IP": "6.6.6.6"})),
        // Underscore spellings: CGI, WSGI, Rack and PHP fold them into the same variable.
        ("underscore-real-ip", json!({"X_Real_IP": "6.6.6.6"})),
        ("underscore-xff", json!({"x_forwarded_for": "6.6.6.6"})),
        (
            "underscore-mixed",
            json!({"X-Forwarded_Host": "evil.example"}),
        ),
        (
            "underscore-override",
            json!({"X_HTTP_Method_Override": "DELETE"}),
        ),
        (
            "underscore-original-url",
            json!({"x_original_url": "/admin"}),
        ),
        ("underscore-cl", json!({"Content_Length": "5"})),
        ("underscore-te", json!({"Transfer_Encoding": "chunked"})),
        // Client-address headers of CDNs, load balancers and mail gateways.
        ("plain-client-ip", json!({"Client-IP": "6.6.6.6"})),
        ("originating-ip", json!({"X-Originating-IP": "6.6.6.6"})),
        ("fastly", json!({"Fastly-Client-IP": "6.6.6.6"})),
        ("envoy", json!({"X-Envoy-External-Address": "6.6.6.6"})),
        ("x-forwarded", json!({"X-Forwarded": "for=6.6.6.6"})),
        ("x-host", json!({"X-Host": "evil.example"})),
        ("original-host", json!({"X-Original-Host": "evil.example"})),
    ];
    let mut items = vec![item_with_headers(
        "ok",
        "POST",
        "/file/get",
        json!({"X-Custom": "1", "Authorization": "Bearer item"}),
    )];
    for (id, headers) in &hostile {
        items.push(item_with_headers(id, "POST", "/file/get", headers.clone()));
    }

    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let replies = responses(&resp);
    assert_eq!(by_id(&replies, "ok")["status"], 200);
    for (id, _) in &hostile {
        assert_item_error(by_id(&replies, id), 400, "InvalidParameter.Headers");
    }

    let log = upstream.requests();
    assert_eq!(log.len(), 1, "only the ok item may be sent");
    let sent = &log[0];
    assert_eq!(sent.header("x-custom"), Some("1"));
    assert_eq!(sent.header_all("authorization"), vec!["Bearer item"]);
    assert_eq!(sent.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(sent.header_all("host").len(), 1);
    for (name, value) in &sent.headers {
        assert!(
            name != "x-injected"
                && name != "forwarded"
                && name != "via"
                && name != "x-real-ip"
                && !name.ends_with("-ip")
                && !name.contains("override")
                && !name.ends_with("-url")
                && name != "x-http-method"
                && !name.starts_with("proxy-")
                && !name.starts_with("x-forwarded-h")
                && !name.contains('_')
                && name != "x-originating-ip"
                && name != "x-envoy-external-address"
                && !value.contains("evil")
                && !value.contains("6.6.6.6"),
            "hostile header reached the upstream: {name}: {value}"
        );
    }
}
