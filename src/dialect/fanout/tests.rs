//! Fanout decode/encode tests with the Huawei page's example as fixture.

use super::*;
use crate::config::Config;
use crate::dialect::UpstreamResponse;
use bytes::Bytes;
use http::HeaderMap;

fn huawei() -> Fanout {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/huawei.toml"
    ))
    .expect("example exists");
    let config: Config = text.parse().expect("example is valid");
    let route = &config.routes[0];
    let crate::config::DialectConfig::Fanout(fanout) = &route.dialect else {
        panic!("fanout route expected");
    };
    Fanout {
        config: Arc::new(fanout.clone()),
        max_items: route.limits.max_items,
    }
}

fn headers(token: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(token) = token {
        map.insert("x-auth-token", HeaderValue::from_str(token).expect("ascii"));
    }
    map
}

fn decode(
    f: &Fanout,
    query: Option<&str>,
    body: &str,
    token: Option<&str>,
) -> Result<Plan<FanoutMeta>, Rejection> {
    let headers = headers(token);
    let body = Bytes::copy_from_slice(body.as_bytes());
    f.decode(&BatchRequest {
        method: &Method::GET,
        query,
        headers: &headers,
        body: &body,
    })
}

fn paths(plan: &Plan<FanoutMeta>) -> Vec<String> {
    plan.items
        .iter()
        .map(|i| i.as_ref().map(|s| s.path.clone()).unwrap_or_default())
        .collect()
}

/// The page's body form and both query forms produce the same two per-id requests.
#[test]
fn huawei_example_in_all_three_forms() {
    let f = huawei();
    let expected = [
        "/v2/servicerequest/accessorys/1/access-url?group_id=1",
        "/v2/servicerequest/accessorys/2/access-url?group_id=1",
    ];
    let body = decode(
        &f,
        None,
        r#"{ "group_id" : "1", "accessory_ids" : [ "1", "2" ] }"#,
        Some("t"),
    )
    .expect("valid");
    assert_eq!(paths(&body), expected);
    let repeated = decode(
        &f,
        Some("group_id=1&accessory_ids=1&accessory_ids=2"),
        "",
        Some("t"),
    )
    .expect("valid");
    assert_eq!(paths(&repeated), expected);
    let commas = decode(&f, Some("group_id=1&accessory_ids=1,2"), "", Some("t")).expect("valid");
    assert_eq!(paths(&commas), expected);
    let sub = body.items[0].as_ref().expect("sent");
    assert!(sub
        .headers
        .iter()
        .any(|(n, v)| n == "x-auth-token" && v == "t"));
}

/// The page's reply, exactly, from two per-id replies.
#[test]
fn huawei_example_reply() {
    let f = huawei();
    let plan = decode(
        &f,
        None,
        r#"{"group_id":"1","accessory_ids":["1","2"]}"#,
        Some("t"),
    )
    .expect("valid");
    let outcomes = ["url1", "url2"]
        .iter()
        .map(|url| {
            Outcome::Response(UpstreamResponse {
                status: 200,
                headers: HeaderMap::new(),
                body: Bytes::from(format!(r#"{{"url":"{url}"}}"#)),
            })
        })
        .collect();
    let reply = f.encode(plan.meta, outcomes);
    assert_eq!(
        std::str::from_utf8(&reply.body).expect("utf8"),
        r#"{"accessory_urls":[{"accessory_url":"url1","accessory_id":"1"},{"accessory_url":"url2","accessory_id":"2"}]}"#
    );
    assert!(
        reply.headers.is_empty(),
        "no partial flag when every part succeeded"
    );
}

/// Validation errors use the configured Huawei error shape.
#[test]
fn validation_errors() {
    let f = huawei();
    let cases: &[(Option<&str>, &str, Option<&str>, &str)] = &[
        (Some("group_id=1"), "", Some("t"), "MissingParameter"),
        (
            Some("group_id=1&accessory_ids="),
            "",
            Some("t"),
            "MissingParameter",
        ),
        (Some("accessory_ids=1"), "", Some("t"), "MissingParameter"),
        (
            Some("group_id=&accessory_ids=1"),
            "",
            Some("t"),
            "InvalidParameter",
        ),
        (
            Some("group_id=123456789012345678901234567890123&accessory_ids=1"),
            "",
            Some("t"),
            "InvalidParameter",
        ),
        (
            Some("group_id=1&accessory_ids=1"),
            "",
            None,
            "MissingHeader",
        ),
        (None, "[1]", Some("t"), "MalformedBody"),
        (
            None,
            r#"{"group_id":"1","accessory_ids":"1"}"#,
            Some("t"),
            "InvalidParameter",
        ),
        (
            Some("group_id=1&accessory_ids=.."),
            "",
            Some("t"),
            "InvalidParameter",
        ),
        (
            Some("group_id=1&accessory_ids=a%0d%0aHost:x"),
            "",
            Some("t"),
            "InvalidParameter",
        ),
    ];
    for (query, body, token, code) in cases {
        let rejection = decode(&f, *query, body, *token).expect_err("invalid");
        assert_eq!(rejection.code, *code, "{query:?} {body}");
        let reply = f.reject(&rejection);
        let value: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(value["error_code"], Value::from(*code));
        assert!(value["error_msg"].is_string());
    }
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let too_many = decode(
        &f,
        Some(&format!("group_id=1&accessory_ids={}", many.join(","))),
        "",
        Some("t"),
    )
    .expect_err("too many");
    assert_eq!(too_many.kind, RejectionKind::TooManyItems);
}

/// Repeated ids are collapsed, first occurrence kept.
#[test]
fn duplicates_collapse() {
    let plan = decode(
        &huawei(),
        Some("group_id=1&accessory_ids=2,1,2"),
        "",
        Some("t"),
    )
    .expect("valid");
    assert_eq!(
        plan.meta.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["2", "1"]
    );
}

/// `include`: a failed part carries the id and an error; the reply is flagged partial.
#[test]
fn include_mode_flags_partial() {
    let f = huawei();
    let plan = decode(&f, Some("group_id=1&accessory_ids=1,2"), "", Some("t")).expect("valid");
    let ok = Outcome::Response(UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from(r#"{"url":"u"}"#),
    });
    let reply = f.encode(plan.meta, vec![ok, Outcome::TimedOut]);
    let value: Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(value["accessory_urls"][1]["accessory_id"], Value::from("2"));
    assert_eq!(
        value["accessory_urls"][1]["error"]["status"],
        Value::from(504)
    );
    assert_eq!(
        reply.headers,
        vec![(PARTIAL_HEADER, HeaderValue::from_static("1/2"))]
    );
}
