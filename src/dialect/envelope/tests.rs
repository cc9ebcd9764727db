//! Envelope decode/encode tests on bytes only, with the PDS page's example as fixture.

use super::*;
use crate::dialect::{Failure, FailureKind, Sent, UpstreamResponse};
use crate::guard::{HeaderGuard, UrlGuard};
use http::{HeaderMap, Method};

/// The PDS page's child request, verbatim.
const PDS_REQUEST: &str = r#"{"resource":"file","requests":[{"id":"93433894994ad2e1","method":"POST","url":"/file/get","body":{"domain_id":"1","drive_id":"1"},"headers":{"Content-Type":"application/json"}}]}"#;

fn envelope() -> Envelope {
    Envelope {
        config: Arc::new(EnvelopeConfig {
            body_rule: Default::default(),
            sequential: false,
            stop_on_failure: false,
            dependencies: false,
            base_path: "/v2".into(),
            allowed_methods: vec![Method::GET, Method::POST],
            allowed_resources: Some(vec!["file".into()]),
            url_guard: UrlGuard::new("/v2".into(), None, vec!["/v2/batch".into()]),
            header_guard: HeaderGuard,
            error_format: crate::config::ErrorFormat::default(),
        }),
        max_items: 3,
    }
}

fn decode(body: &str) -> Result<Plan<EnvelopeMeta>, Rejection> {
    let headers = HeaderMap::new();
    let body = Bytes::copy_from_slice(body.as_bytes());
    envelope().decode(&BatchRequest {
        path: "/",
        authority: None,
        method: &Method::POST,
        query: None,
        headers: &headers,
        body: &body,
    })
}

fn rejection(body: &str) -> (RejectionKind, &'static str) {
    let r = decode(body).expect_err("must be rejected");
    (r.kind, r.code)
}

/// The PDS example becomes one POST /v2/file/get carrying the child body byte for byte.
#[test]
fn pds_example_decodes_to_one_exact_child() {
    let plan = decode(PDS_REQUEST).expect("valid");
    assert_eq!(&plan.meta[0].id[..], br#""93433894994ad2e1""#);
    let child = plan.items[0]
        .as_ref()
        .ok()
        .and_then(Planned::ready)
        .expect("sent");
    assert_eq!(child.method, Method::POST);
    assert_eq!(child.path, "/v2/file/get");
    assert_eq!(
        child.body.as_deref(),
        Some(&br#"{"domain_id":"1","drive_id":"1"}"#[..])
    );
}

/// Child bodies are not re-encoded: spacing, key order and number spelling survive.
#[test]
fn child_body_is_forwarded_verbatim() {
    let plan = decode(r#"{"resource":"file","requests":[{"id":"a","method":"POST","url":"/x","body":{ "z" : 1.0e3, "a":[ ] }}]}"#).expect("valid");
    let child = plan.items[0]
        .as_ref()
        .ok()
        .and_then(Planned::ready)
        .expect("sent");
    assert_eq!(
        child.body.as_deref(),
        Some(&br#"{ "z" : 1.0e3, "a":[ ] }"#[..])
    );
    assert!(child
        .headers
        .iter()
        .any(|(n, v)| n == CONTENT_TYPE && v == "application/json"));
}

/// Each whole-batch error has its kind and PDS code.
#[test]
fn whole_batch_errors_have_kinds_and_codes() {
    use RejectionKind::*;
    let cases = [
        ("not json", (ParseError, CODE_BODY)),
        ("[1,2]", (ParseError, CODE_BODY)),
        (r#"{"resource":"file"}"#, (Empty, CODE_REQUESTS)),
        (
            r#"{"resource":"file","requests":[]}"#,
            (Empty, CODE_REQUESTS),
        ),
        (
            r#"{"resource":"file","requests":{}}"#,
            (InvalidParameter, CODE_REQUESTS),
        ),
        (
            r#"{"resource":"file","requests":[1]}"#,
            (InvalidItem, CODE_REQUESTS),
        ),
        (
            r#"{"resource":"file","requests":[{},{},{},{}]}"#,
            (TooManyItems, CODE_REQUESTS),
        ),
        (
            r#"{"resource":"file","requests":[{"method":"GET","url":"/a"}]}"#,
            (InvalidItem, CODE_ID),
        ),
        (
            r#"{"resource":"file","requests":[{"id":"","url":"/a"}]}"#,
            (InvalidItem, CODE_ID),
        ),
        (
            r#"{"resource":"file","requests":[{"id":7,"url":"/a"}]}"#,
            (InvalidItem, CODE_ID),
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a"},{"id":"a"}]}"#,
            (DuplicateId, CODE_ID),
        ),
        (
            r#"{"resource":"user","requests":[{"id":"a"}]}"#,
            (InvalidParameter, CODE_RESOURCE),
        ),
        (
            r#"{"requests":[{"id":"a"}]}"#,
            (InvalidParameter, CODE_RESOURCE),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(rejection(body), expected, "{body}");
    }
}

/// Escaped ids are compared decoded: "\u0061" and "a" are duplicates.
#[test]
fn duplicate_ids_are_compared_after_unescaping() {
    let body = r#"{"resource":"file","requests":[{"id":"\u0061"},{"id":"a"}]}"#;
    assert_eq!(rejection(body).0, RejectionKind::DuplicateId);
}

/// Per-item problems refuse only that item, with status and code.
#[test]
fn per_item_errors_refuse_only_their_item() {
    let body = r#"{"resource":"file","requests":[
        {"id":"1","method":"DELETE","url":"/file/x"},
        {"id":"2","method":"GET","url":"//evil/x"},
        {"id":"3","method":"GET","url":"/x","headers":{"Host":"evil"}},
        {"id":"4","method":"GET","url":"/x","headers":{"Content-Type":"text/plain"}}]}"#;
    let mut e = envelope();
    e.max_items = 10;
    let headers = HeaderMap::new();
    let body = Bytes::from(body);
    let plan = e
        .decode(&BatchRequest {
            path: "/",
            authority: None,
            method: &Method::POST,
            query: None,
            headers: &headers,
            body: &body,
        })
        .expect("valid batch");
    let refused: Vec<(u16, &str)> = plan
        .items
        .iter()
        .map(|i| match i {
            Err(Outcome::Failed(Failure {
                kind: FailureKind::Refused(e),
                ..
            })) => (e.status(), e.code()),
            other => panic!("expected a refusal, got {other:?}"),
        })
        .collect();
    assert_eq!(
        refused,
        [
            (405, "MethodNotAllowed"),
            (400, "InvalidParameter.Url"),
            (400, "InvalidParameter.Headers"),
            (400, "InvalidParameter.ContentType"),
        ]
    );
}

fn response(status: u16, content_type: Option<&str>, body: &[u8]) -> Outcome {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).expect("ascii"));
    }
    Outcome::Response(UpstreamResponse {
        status,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// Replies embed JSON as is, text as a string, binary as base64 with a marker; errors
/// carry {code,message}; ids come back as the client wrote them.
#[test]
fn encode_follows_the_body_rule() {
    let meta = ["\"a\"", "\"b\"", "\"c\"", "\"d\""]
        .iter()
        .map(|id| EnvelopeMeta {
            id: Bytes::from(*id),
        })
        .collect();
    let outcomes = vec![
        response(200, Some("application/json"), b"{\"n\":1.50}\n"),
        response(404, Some("text/plain"), b"not \"here\""),
        response(200, Some("application/octet-stream"), &[0xff, 0x00]),
        Outcome::failed(FailureKind::Timeout, Sent::Maybe),
    ];
    let reply = envelope().encode(meta, outcomes);
    let text = std::str::from_utf8(&reply.body).expect("utf8");
    assert!(text.contains(r#"{"id":"a","status":200,"headers":{"content-type":"application/json"},"body":{"n":1.50}}"#), "{text}");
    assert!(text.contains(r#""body":"not \"here\"""#), "{text}");
    assert!(
        text.contains(r#""body_encoding":"base64","body":"/wA=""#),
        "{text}"
    );
    assert!(
        text.contains(r#"{"id":"d","status":504,"body":{"code":"GatewayTimeout""#),
        "{text}"
    );
    let parsed: serde_json::Value = serde_json::from_slice(&reply.body).expect("valid JSON");
    assert_eq!(parsed["responses"].as_array().map(Vec::len), Some(4));
}

/// The item error of the only item of `body`.
fn item_error(body: &str) -> ItemRefusal {
    let plan = decode(body).expect("valid batch");
    match plan.items.into_iter().next() {
        Some(Err(Outcome::Failed(Failure {
            kind: FailureKind::Refused(e),
            ..
        }))) => e,
        other => panic!("expected a refused item, got {other:?}"),
    }
}

/// `{"X-A":"1","x-a":"2"}` and `{"X-A":"1","X-A":"2"}` name one header twice: refused, not
/// silently reduced to one of the values.
#[test]
fn repeated_item_header_names_are_refused() {
    for headers in [
        r#"{"X-A":"1","x-a":"2"}"#,
        r#"{"X-A":"1","X-A":"2"}"#,
        r#"{"Content-Type":"application/json","content-type":"application/json"}"#,
    ] {
        let body = format!(
            r#"{{"resource":"file","requests":[{{"id":"a","method":"POST","url":"/x","headers":{headers}}}]}}"#
        );
        let e = item_error(&body);
        assert_eq!(
            (e.status(), e.code()),
            (400, "InvalidParameter.Headers"),
            "{headers}"
        );
        assert!(e.message().contains("more than once"), "{}", e.message());
    }
}

/// Item headers keep the order written and are capped per item.
#[test]
fn item_headers_keep_order_and_are_capped() {
    let plan = decode(r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/x","headers":{"X-B":"1","X-A":"2"}}]}"#).expect("valid");
    let child = plan.items[0]
        .as_ref()
        .ok()
        .and_then(Planned::ready)
        .expect("sent");
    let names: Vec<&str> = child.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-b", "x-a"]);

    let many: Vec<String> = (0..=MAX_ITEM_HEADERS)
        .map(|i| format!(r#""X-H{i}":"v""#))
        .collect();
    let body = format!(
        r#"{{"resource":"file","requests":[{{"id":"a","method":"GET","url":"/x","headers":{{{}}}}}]}}"#,
        many.join(",")
    );
    let e = item_error(&body);
    assert_eq!((e.status(), e.code()), (400, "InvalidParameter.Headers"));
}

/// A child Content-Type naming a charset other than UTF-8 would mislabel the (UTF-8) body.
#[test]
fn child_content_type_must_be_utf8_json() {
    for (ct, ok) in [
        ("application/json; charset=utf-8", true),
        ("application/json; charset=\"UTF-8\"", true),
        ("APPLICATION/JSON", true),
        ("application/json; charset=utf-16", false),
        ("application/json;charset=latin1", false),
    ] {
        let body = format!(
            r#"{{"resource":"file","requests":[{{"id":"a","method":"POST","url":"/x","body":{{}},"headers":{{"Content-Type":"{}"}}}}]}}"#,
            ct.replace('"', "\\\"")
        );
        let plan = decode(&body).expect("valid batch");
        match &plan.items[0] {
            Ok(_) => assert!(ok, "{ct} must be refused"),
            Err(Outcome::Failed(Failure {
                kind: FailureKind::Refused(e),
                ..
            })) => {
                assert!(!ok, "{ct} must pass: {e:?}");
                assert_eq!(e.code(), "InvalidParameter.ContentType");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// A member written twice in an item is named in the error, not reported as "not an object";
/// a lone surrogate id is reported as such.
#[test]
fn whole_batch_messages_say_what_is_wrong() {
    let r = decode(
        r#"{"resource":"file","requests":[{"id":"a","url":"/x","url":"/admin","method":"GET"}]}"#,
    )
    .expect_err("refused");
    assert_eq!(
        (r.kind, r.code),
        (RejectionKind::InvalidItem, CODE_REQUESTS)
    );
    assert!(r.message.contains("duplicate field `url`"), "{}", r.message);
    let r = decode(r#"{"resource":"file","requests":[{"id":"\ud800","url":"/x","method":"GET"}]}"#)
        .expect_err("refused");
    assert_eq!(r.code, CODE_ID);
    assert!(r.message.contains("lone surrogate"), "{}", r.message);
}

/// An upstream JSON body with a UTF-8 byte order mark is still embedded as JSON.
#[test]
fn upstream_json_with_bom_is_embedded() {
    let meta = vec![EnvelopeMeta {
        id: Bytes::from_static(b"\"a\""),
    }];
    let outcomes = vec![response(
        200,
        Some("application/json; charset=utf-8"),
        b"\xEF\xBB\xBF {\"n\":1}\r\n",
    )];
    let reply = envelope().encode(meta, outcomes);
    let parsed: serde_json::Value = serde_json::from_slice(&reply.body).expect("valid JSON");
    assert_eq!(parsed["responses"][0]["body"], serde_json::json!({"n": 1}));
}

/// A "JSON" upstream body with invalid UTF-8 inside a string is not embedded raw (the reply
/// would not be valid UTF-8): it takes the base64 branch.
#[test]
fn invalid_utf8_json_bodies_are_base64() {
    let meta = vec![EnvelopeMeta {
        id: Bytes::from_static(b"\"a\""),
    }];
    let outcomes = vec![response(
        200,
        Some("application/json"),
        b"{\"a\":\"\xff\xfe\"}",
    )];
    let reply = envelope().encode(meta, outcomes);
    assert!(std::str::from_utf8(&reply.body).is_ok());
    let parsed: serde_json::Value = serde_json::from_slice(&reply.body).expect("valid JSON");
    assert_eq!(parsed["responses"][0]["body_encoding"], "base64");
}

/// Microsoft Graph's `dependsOn` is refused per item (400) instead of silently ignored; an
/// empty list is fine.
#[test]
fn depends_on_is_refused() {
    let mut e = envelope();
    e.max_items = 10;
    let headers = HeaderMap::new();
    let body = Bytes::from_static(br#"{"resource":"file","requests":[{"id":"1","method":"GET","url":"/a"},{"id":"2","method":"GET","url":"/b","dependsOn":["1"]},{"id":"3","method":"GET","url":"/c","dependsOn":[]}]}"#);
    let plan = e
        .decode(&BatchRequest {
            path: "/",
            authority: None,
            method: &Method::POST,
            query: None,
            headers: &headers,
            body: &body,
        })
        .expect("valid batch");
    assert!(plan.items[0].is_ok());
    assert!(
        matches!(&plan.items[1], Err(Outcome::Failed(Failure { kind: FailureKind::Refused(e), .. })) if e.code() == "InvalidParameter.DependsOn")
    );
    assert!(plan.items[2].is_ok());
}

/// The reply cost is what the reply will carry for the item, byte for byte: escaped text
/// (a control character is 6 bytes), base64 (4/3), and JSON as is. `max_reply_bytes` then
/// bounds the reply rather than the upstream's bytes.
#[test]
fn reply_cost_is_the_encoded_size() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text/plain", vec![0x01; 1000]),
        ("text/plain", b"quote \" backslash \\ tab \t".to_vec()),
        ("application/octet-stream", vec![0xff; 999]),
        ("application/json", br#" {"a": [1, 2, "x\"y"]} "#.to_vec()),
        ("text/plain", Vec::new()),
    ];
    for (content_type, body) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.append("x-multi", HeaderValue::from_static("a\"b"));
        headers.append("x-multi", HeaderValue::from_static("c"));
        let response = UpstreamResponse {
            status: 200,
            headers,
            body: Bytes::from(body),
        };
        let mut written = Vec::new();
        write_headers(&mut written, &response.headers);
        write_body(&mut written, &response.headers, &response.body);
        // `,"headers":{` + `}` and `,"body":` are per-item framing, not counted.
        let framing = b",\"headers\":{}".len()
            + match body_form(&response.headers, &response.body) {
                BodyForm::Absent => 0,
                BodyForm::Base64 => b",\"body\":".len(),
                _ => b",\"body\":".len(),
            };
        let cost = reply_cost(&response);
        assert!(
            cost + framing >= written.len() && cost + framing <= written.len() + 24,
            "{content_type}: cost {cost} + {framing} vs {} written",
            written.len()
        );
        // Graph's rule: the whole entry, headers and body, against its own cost.
        let mut graph = Vec::new();
        write_outcome(
            &mut graph,
            &Outcome::Response(response.clone()),
            BodyRule::Graph,
            &crate::config::ErrorFormat::default(),
        );
        let graph_cost = reply::graph_reply_cost(&response);
        let framing = b",\"status\":200".len() + b",\"headers\":{}".len() + b",\"body\":".len();
        assert!(
            graph_cost + framing >= graph.len() && graph_cost + framing <= graph.len() + 24,
            "graph {content_type}: cost {graph_cost} + {framing} vs {} written",
            graph.len()
        );
        let text = String::from_utf8_lossy(&graph);
        assert!(!text.contains("body_encoding"), "{text}");
    }
    let control = UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![0x01; 1000]),
    };
    assert_eq!(reply_cost(&control), 6002);
}

fn graph_envelope() -> Envelope {
    let mut e = envelope();
    e.max_items = 10;
    let mut config = (*e.config).clone();
    config.dependencies = true;
    e.config = Arc::new(config);
    e
}

fn decode_with(e: &Envelope, body: &str) -> Result<Plan<EnvelopeMeta>, Rejection> {
    let headers = HeaderMap::new();
    let body = Bytes::copy_from_slice(body.as_bytes());
    e.decode(&BatchRequest {
        path: "/",
        authority: None,
        method: &Method::POST,
        query: None,
        headers: &headers,
        body: &body,
    })
}

/// With `dependencies = "graph"`, both spellings become indices for the executor; an item
/// that names none leaves the plan without dependencies (the plain concurrent path).
#[test]
fn depends_on_lists_become_the_plan_order() {
    let e = graph_envelope();
    let plan = decode_with(&e, r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a"},{"id":"b","method":"GET","url":"/b","dependsOn":["a"]},{"id":"c","method":"GET","url":"/c","depends_on":["a","b"]}]}"#).expect("valid");
    assert_eq!(plan.after, [vec![], vec![0], vec![0, 1]]);
    assert!(plan.items.iter().all(Result::is_ok));
    let plan = decode_with(
        &e,
        r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","dependsOn":[]}]}"#,
    )
    .expect("valid");
    assert!(plan.after.is_empty());
}

/// Unknown ids, self-reference, cycles and both spellings at once refuse the whole batch
/// before anything is sent.
#[test]
fn bad_dependency_graphs_refuse_the_batch() {
    let e = graph_envelope();
    for (body, says) in [
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["zz"]}]}"#,
            "not an id",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["a"]}]}"#,
            "its own id",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["b"]},{"id":"b","method":"GET","url":"/b","dependsOn":["a"]}]}"#,
            "cycle",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a"},{"id":"b","method":"GET","url":"/b","dependsOn":["a"],"depends_on":["a"]}]}"#,
            "both",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a"},{"id":"b","method":"GET","url":"/b","dependsOn":"a"}]}"#,
            "array of ids",
        ),
    ] {
        let rejection = decode_with(&e, body).expect_err(body);
        assert_eq!(rejection.code, "InvalidParameter.DependsOn", "{body}");
        assert_eq!(rejection.kind, RejectionKind::InvalidParameter, "{body}");
        assert!(
            rejection.message.contains(says),
            "{body}: {}",
            rejection.message
        );
    }
    // Off (the default), the alias is refused per item like dependsOn.
    let plan = decode(r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","depends_on":["b"]}]}"#).expect("valid");
    assert!(
        matches!(&plan.items[0], Err(Outcome::Failed(Failure { kind: FailureKind::Refused(e), .. })) if e.code() == "InvalidParameter.DependsOn")
    );
}

/// A 424 names the dependency that did not succeed and what it answered.
#[test]
fn failed_dependency_reply_names_the_dependency() {
    let e = graph_envelope();
    let plan = decode_with(&e, r#"{"resource":"file","requests":[{"id":"first","method":"GET","url":"/a"},{"id":"second","method":"GET","url":"/b","dependsOn":["first"]}]}"#).expect("valid");
    let outcomes = vec![
        Outcome::Response(UpstreamResponse {
            status: 404,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }),
        Outcome::failed(
            FailureKind::DependencyFailed { dependency: 0 },
            Sent::Nothing,
        ),
    ];
    let reply = e.encode(plan.meta, outcomes);
    let parsed: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let second = &parsed["responses"][1];
    assert_eq!(second["status"], 424);
    assert_eq!(second["body"]["code"], "FailedDependency");
    let message = second["body"]["message"].as_str().expect("message");
    assert!(
        message.contains(r#"dependency "first" answered 404"#),
        "{message}"
    );
}

/// Under Graph's body rule an item batchgate answers itself carries a JSON Content-Type and
/// the route's error format, as Graph's own error items do; the PDS rule keeps
/// `{"code","message"}`.
#[test]
fn graph_rule_error_items_use_the_error_format() {
    let mut e = graph_envelope();
    let mut config = (*e.config).clone();
    config.body_rule = BodyRule::Graph;
    config.error_format =
        crate::config::ErrorFormat::new(r#"{"error":{"code":"{code}","message":"{message}"}}"#)
            .expect("valid");
    e.config = Arc::new(config);
    let plan = decode_with(&e, r#"{"resource":"file","requests":[{"id":"1","method":"GET","url":"/a"},{"id":"2","method":"GET","url":"/b","dependsOn":["1"]}]}"#).expect("valid");
    let outcomes = vec![
        Outcome::Response(UpstreamResponse {
            status: 404,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }),
        Outcome::failed(
            FailureKind::DependencyFailed { dependency: 0 },
            Sent::Nothing,
        ),
    ];
    let reply = e.encode(plan.meta, outcomes);
    let parsed: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let second = &parsed["responses"][1];
    assert_eq!(second["status"], 424);
    assert_eq!(second["headers"]["content-type"], "application/json");
    assert_eq!(second["body"]["error"]["code"], "FailedDependency");
    let message = second["body"]["error"]["message"]
        .as_str()
        .expect("message");
    assert!(
        message.contains(r#"dependency "1" answered 404"#),
        "{message}"
    );
}

/// A reference names an earlier item by id: a later one, the item itself, an unknown id and a
/// malformed reference refuse the batch; a reference is a dependency, so one that closes a
/// cycle with a forward `dependsOn` does too; without `dependencies = "graph"` the text is a
/// url like any other (and the url guard refuses its braces).
#[test]
fn references_name_earlier_items_only() {
    let e = graph_envelope();
    for (body, code, says) in [
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a/{result=b:$.id}"},{"id":"b","method":"GET","url":"/b"}]}"#,
            "InvalidParameter.Reference",
            "later item",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a/{result=a:$.id}"}]}"#,
            "InvalidParameter.Reference",
            "own id",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","headers":{"X":"{result=zz:$.id}"}}]}"#,
            "InvalidParameter.Reference",
            "not an id",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","body":{"x":{"$ref":"a"}}}]}"#,
            "InvalidParameter.Reference",
            "NAME:JSONPATH",
        ),
        (
            r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["b"]},{"id":"b","method":"GET","url":"/b/{result=a:$.id}"}]}"#,
            "InvalidParameter.DependsOn",
            "cycle",
        ),
    ] {
        let rejection = decode_with(&e, body).expect_err(body);
        assert_eq!(rejection.code, code, "{body}");
        assert!(
            rejection.message.contains(says),
            "{body}: {}",
            rejection.message
        );
    }
    let body = r#"{"resource":"file","requests":[{"id":"a","method":"GET","url":"/a"},{"id":"b","method":"GET","url":"/b/{result=a:$.id}"}]}"#;
    let plan = decode_with(&e, body).expect("valid");
    assert!(matches!(plan.items[1], Ok(Planned::Deferred(_))));
    assert_eq!(plan.after, [vec![], vec![0]]);
    let plain = decode(body).expect("valid");
    assert!(
        plain.items[1].is_err(),
        "no dependencies: a literal url, refused"
    );
}
