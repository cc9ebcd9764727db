//! Fanout decode/encode tests with the Huawei page's example as fixture.

use super::*;
use crate::config::Config;
use crate::dialect::{FailureKind, Sent, UpstreamResponse};
use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;

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
        config: fanout.clone(),
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
        path: "/",
        authority: None,
        method: &Method::GET,
        query,
        headers: &headers,
        body: &body,
    })
}

fn paths(plan: &Plan<FanoutMeta>) -> Vec<String> {
    plan.items
        .iter()
        .map(|i| {
            i.as_ref()
                .ok()
                .and_then(Planned::ready)
                .map(|s| s.path.clone())
                .unwrap_or_default()
        })
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
    let sub = body.items[0]
        .as_ref()
        .ok()
        .and_then(Planned::ready)
        .expect("sent");
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
            "MissingParameter",
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
    let reply = f.encode(
        plan.meta,
        vec![ok, Outcome::failed(FailureKind::Timeout, Sent::Maybe)],
    );
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

fn ok_reply(body: &str) -> Outcome {
    Outcome::Response(UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

/// Numeric ids keep the spelling the client wrote: beyond 64 bits, `-0`, exponents.
#[test]
fn numeric_ids_are_not_rounded() {
    let f = huawei();
    let plan = decode(
        &f,
        None,
        r#"{"group_id":1,"accessory_ids":[12345678901234567890123,-0,1e2,1.10]}"#,
        Some("t"),
    )
    .expect("valid");
    let ids: Vec<&str> = plan.meta.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["12345678901234567890123", "-0", "1e2", "1.10"]);
    assert_eq!(
        paths(&plan)[0],
        "/v2/servicerequest/accessorys/12345678901234567890123/access-url?group_id=1"
    );
}

/// A query value that is not UTF-8 once percent-decoded is refused, not replaced by U+FFFD
/// (which would fetch a different id); unused parameters do not matter.
#[test]
fn non_utf8_query_values_are_refused() {
    let f = huawei();
    for query in [
        "group_id=1&accessory_ids=%FF%FE",
        "group_id=1&accessory_ids=1,%C3",
        "group_id=%FF&accessory_ids=1",
    ] {
        let r = decode(&f, Some(query), "", Some("t")).expect_err(query);
        assert_eq!(r.code, "InvalidParameter", "{query}");
        assert!(r.message.contains("UTF-8"), "{}", r.message);
    }
    let plan = decode(
        &f,
        Some("group_id=1&accessory_ids=%C3%A9&utm=%FF"),
        "",
        Some("t"),
    )
    .expect("valid");
    assert_eq!(plan.meta[0].id, "é");
}

/// `null` members mean "not given" (what Jackson or Newtonsoft write for unset fields).
#[test]
fn null_members_are_absent() {
    let f = huawei();
    let plan = decode(
        &f,
        Some("group_id=7"),
        r#"{"group_id":null,"accessory_ids":["1"]}"#,
        Some("t"),
    )
    .expect("null falls back to the query");
    assert!(
        paths(&plan)[0].ends_with("?group_id=7"),
        "{:?}",
        paths(&plan)
    );
    let r = decode(
        &f,
        None,
        r#"{"group_id":null,"accessory_ids":["1"]}"#,
        Some("t"),
    )
    .expect_err("required");
    assert_eq!(r.code, "MissingParameter");
    let r = decode(
        &f,
        None,
        r#"{"group_id":"1","accessory_ids":null}"#,
        Some("t"),
    )
    .expect_err("no ids");
    assert_eq!(r.code, "MissingParameter");
}

/// Reply fields are the upstream's JSON text: big numbers, number spelling and key order
/// survive; a missing pointer gives null; a byte order mark is not part of the reply.
#[test]
fn reply_fields_keep_the_upstream_text() {
    let f = huawei();
    let plan = decode(&f, Some("group_id=1&accessory_ids=1,2,3"), "", Some("t")).expect("valid");
    let outcomes = vec![
        ok_reply(r#"{"url":{"z":12345678901234567890123,"a":1.10}}"#),
        ok_reply("\u{feff}{\"url\":\"u\"}"),
        ok_reply(r#"{"other":1}"#),
    ];
    let reply = f.encode(plan.meta, outcomes);
    assert_eq!(
        std::str::from_utf8(&reply.body).expect("utf8"),
        r#"{"accessory_urls":[{"accessory_url":{"z":12345678901234567890123,"a":1.10},"accessory_id":"1"},{"accessory_url":"u","accessory_id":"2"},{"accessory_url":null,"accessory_id":"3"}]}"#
    );
}

/// RFC 6901 pointers over JSON text.
#[test]
fn raw_pointers_follow_rfc_6901() {
    let doc: &RawValue =
        serde_json::from_str(r#"{"a/b":[10,{"m~n":2.50}],"":0,"x":{"y":null}}"#).expect("json");
    let at = |p: &str| raw_pointer(doc, p).map(RawValue::get);
    assert_eq!(at("/a~1b/0"), Some("10"));
    assert_eq!(at("/a~1b/1/m~0n"), Some("2.50"));
    assert_eq!(at("/"), Some("0"));
    assert_eq!(at("/x/y"), Some("null"));
    assert_eq!(at("/a~1b/01"), None);
    assert_eq!(at("/a~1b/2"), None);
    assert_eq!(at("/nope"), None);
    assert_eq!(at("x"), None);
    assert!(at("").is_some_and(|whole| whole.starts_with('{')));
}

/// `fail`: an error status of the failed part is the reply's status; a 1xx/3xx part is a 502
/// (a 304 reply would drop the error body and claim "Not Modified", a 302 has no Location).
#[test]
fn fail_mode_only_relays_error_statuses() {
    let mut config = (*huawei().config).clone();
    config.on_item_error = OnItemError::Fail;
    let f = Fanout {
        config: Arc::new(config),
        max_items: 10,
    };
    for (part, expected) in [(404, 404), (503, 503), (304, 502), (302, 502), (101, 502)] {
        let plan = decode(&f, Some("group_id=1&accessory_ids=1"), "", Some("t")).expect("valid");
        let outcome = Outcome::Response(UpstreamResponse {
            status: part,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        });
        let reply = f.encode(plan.meta, vec![outcome]);
        assert_eq!(reply.status, expected, "part answered {part}");
        let value: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(value["error_code"], "UpstreamStatus");
    }
}

/// docs/DIALECTS.md promises `MissingParameter` / `MissingHeader` for a required value that is
/// missing *or empty*, whatever its `min_length`; an empty optional value is still checked
/// against `min_length`.
#[test]
fn empty_required_values_are_missing() {
    let f = huawei();
    let cases: &[(Option<&str>, &str, Option<&str>, &str)] = &[
        (
            Some("group_id=&accessory_ids=1"),
            "",
            Some("t"),
            "MissingParameter",
        ),
        (
            Some("group_id&accessory_ids=1"),
            "",
            Some("t"),
            "MissingParameter",
        ),
        (
            None,
            r#"{"group_id":"","accessory_ids":["1"]}"#,
            Some("t"),
            "MissingParameter",
        ),
        (
            Some("group_id=1&accessory_ids=1"),
            "",
            Some(""),
            "MissingHeader",
        ),
    ];
    for (query, body, token, code) in cases {
        let rejection = decode(&f, *query, body, *token).expect_err("missing");
        assert_eq!(rejection.code, *code, "{query:?} {body} {token:?}");
        assert!(
            rejection.message.contains("is required"),
            "{}",
            rejection.message
        );
    }

    // With min_length 0 an empty required value used to pass.
    let mut config = (*f.config).clone();
    for rule in config.params.iter_mut() {
        rule.min_length = 0;
    }
    for rule in config.headers.iter_mut() {
        rule.rule.min_length = 0;
    }
    let lenient = Fanout {
        config: Arc::new(config),
        max_items: 10,
    };
    let r = decode(&lenient, Some("group_id=&accessory_ids=1"), "", Some("t")).expect_err("empty");
    assert_eq!(r.code, "MissingParameter");
    let r = decode(&lenient, Some("group_id=1&accessory_ids=1"), "", Some("")).expect_err("empty");
    assert_eq!(r.code, "MissingHeader");

    // An empty optional header (X-Language, min_length 1) is invalid, not missing.
    let mut headers = headers(Some("t"));
    headers.insert("x-language", HeaderValue::from_static(""));
    let body = Bytes::new();
    let r = f
        .decode(&BatchRequest {
            path: "/",
            authority: None,
            method: &Method::GET,
            query: Some("group_id=1&accessory_ids=1"),
            headers: &headers,
            body: &body,
        })
        .expect_err("too short");
    assert_eq!(r.code, "InvalidHeader");
}

/// A per-id reply with invalid UTF-8 inside a JSON string passes a JSON syntax check but
/// would make the merged reply invalid UTF-8: the part fails as `InvalidUpstreamReply`,
/// with and without `fields`.
#[test]
fn non_utf8_replies_are_invalid() {
    let bad = || {
        Outcome::Response(UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{\"url\":\"\xff\"}"),
        })
    };
    let with_fields = huawei();
    let mut config = (*with_fields.config).clone();
    config.fields = None;
    let whole = Fanout {
        config: Arc::new(config),
        max_items: 10,
    };
    for f in [&with_fields, &whole] {
        let plan = decode(f, Some("group_id=1&accessory_ids=1,2"), "", Some("t")).expect("valid");
        let reply = f.encode(plan.meta, vec![ok_reply(r#"{"url":"u"}"#), bad()]);
        let text = std::str::from_utf8(&reply.body).expect("the reply stays UTF-8");
        let value: Value = serde_json::from_str(text).expect("json");
        let failed = &value["accessory_urls"][1];
        assert_eq!(failed["error"]["code"], "InvalidUpstreamReply", "{text}");
        assert_eq!(failed["error"]["status"], 502, "{text}");
        assert_eq!(
            reply.headers,
            vec![(PARTIAL_HEADER, HeaderValue::from_static("1/2"))]
        );
    }
}
