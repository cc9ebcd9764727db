//! JSON-RPC decode/encode tests with the specification's section 7 batch examples as fixtures.

use super::*;
use crate::config::{method_key, JsonRpcProfile};
use crate::dialect::{Failure, FailureKind, Sent, UpstreamResponse};
use http::HeaderMap;

fn dialect(profile: JsonRpcProfile, max_items: usize) -> JsonRpc {
    JsonRpc {
        config: Arc::new(JsonRpcConfig {
            upstream_path: "/rpc".into(),
            allowed_methods: None,
            denied_methods: vec!["admin_stop".into()],
            profile,
        }),
        max_items,
        upstream: "node".into(),
    }
}

fn spec() -> JsonRpc {
    let invalid = RpcError {
        code: -32600,
        message: "Invalid Request".into(),
    };
    dialect(
        JsonRpcProfile {
            too_many: invalid.clone(),
            empty: invalid,
            batch_errors_as_array: false,
            unique_ids: false,
        },
        100,
    )
}

/// What a spec-following upstream answers for one element's exact bytes.
fn spec_upstream(body: &[u8]) -> Outcome {
    let request: Value = serde_json::from_slice(body).expect("element is JSON");
    let id = request["id"].clone();
    let params = &request["params"];
    let reply = match request["method"].as_str() {
        Some("sum") => {
            json!({"jsonrpc": "2.0", "result": params.as_array().map(|a| a.iter().filter_map(Value::as_i64).sum::<i64>()), "id": id})
        }
        Some("subtract") => {
            json!({"jsonrpc": "2.0", "result": params[0].as_i64().unwrap_or(0) - params[1].as_i64().unwrap_or(0), "id": id})
        }
        Some("get_data") => json!({"jsonrpc": "2.0", "result": ["hello", 5], "id": id}),
        _ => {
            json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": id})
        }
    };
    Outcome::Response(UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from(reply.to_string()),
    })
}

/// Decodes, answers every sent element with `answer`, encodes.
fn round_trip(d: &JsonRpc, body: &str, answer: impl Fn(&[u8]) -> Outcome) -> Reply {
    let headers = HeaderMap::new();
    let body = Bytes::copy_from_slice(body.as_bytes());
    let request = BatchRequest {
        path: "/",
        authority: None,
        method: &Method::POST,
        query: None,
        headers: &headers,
        body: &body,
    };
    match d.decode(&request) {
        Err(rejection) => d.reject(&rejection),
        Ok(plan) => {
            let outcomes = plan
                .items
                .into_iter()
                .map(|item| match item {
                    Ok(sub) => answer(
                        sub.ready()
                            .and_then(|s| s.body.as_deref())
                            .unwrap_or_default(),
                    ),
                    Err(decided) => decided,
                })
                .collect();
            d.encode(plan.meta, outcomes)
        }
    }
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).expect("reply is JSON")
}

/// Section 7, "rpc call Batch": mixed calls, a notification, an invalid object, an unknown method.
#[test]
fn spec_mixed_batch() {
    let body = r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#;
    let reply = round_trip(&spec(), body, spec_upstream);
    assert_eq!(reply.status, 200);
    assert_eq!(
        json_of(&reply),
        json!([
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ])
    );
}

/// Section 7: invalid JSON, empty array, `[1]`, `[1,2,3]`, all notifications.
#[test]
fn spec_error_examples() {
    let d = spec();
    let parse = round_trip(
        &d,
        r#"[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method""#,
        spec_upstream,
    );
    assert_eq!(
        json_of(&parse),
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
    );
    let empty = round_trip(&d, "[]", spec_upstream);
    assert_eq!(
        json_of(&empty),
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null})
    );
    let invalid = json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null});
    assert_eq!(
        json_of(&round_trip(&d, "[1]", spec_upstream)),
        json!([invalid])
    );
    assert_eq!(
        json_of(&round_trip(&d, "[1,2,3]", spec_upstream)),
        json!([invalid, invalid, invalid])
    );
    let notifications = round_trip(
        &d,
        r#"[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]"#,
        spec_upstream,
    );
    assert_eq!(notifications.status, 204);
    assert!(notifications.body.is_empty());
}

/// Invalid elements are answered with their id when it is valid, and never sent.
#[test]
fn invalid_elements_keep_valid_ids_and_are_not_sent() {
    let body = r#"[{"jsonrpc":"1.0","method":"a","id":7},{"jsonrpc":"2.0","method":5,"id":"x"},{"jsonrpc":"2.0","method":"a","params":3,"id":8},{"jsonrpc":"2.0","method":"a","id":{}},{"jsonrpc":"2.0","method":"admin_stop","id":9}]"#;
    let reply = round_trip(&spec(), body, |_| panic!("nothing may be sent"));
    let ids: Vec<Value> = json_of(&reply)
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!(7), json!("x"), json!(8), Value::Null, json!(9)]);
    assert_eq!(json_of(&reply)[4]["error"]["code"], json!(-32601));
}

/// Ids come back exactly as sent: "1" stays a string, 1 a number.
#[test]
fn ids_keep_their_type() {
    let body = r#"[{"jsonrpc":"2.0","method":"sum","params":[1],"id":"1"},{"jsonrpc":"2.0","method":"sum","params":[2],"id":1}]"#;
    let reply = json_of(&round_trip(&spec(), body, spec_upstream));
    assert_eq!(reply[0]["id"], json!("1"));
    assert_eq!(reply[1]["id"], json!(1));
}

/// Each upstream failure is its own server error with the element's id.
#[test]
fn upstream_failures_map_to_distinct_codes() {
    let body = r#"[{"jsonrpc":"2.0","method":"m","id":1},{"jsonrpc":"2.0","method":"m","id":2},{"jsonrpc":"2.0","method":"m","id":3},{"jsonrpc":"2.0","method":"m","id":4},{"jsonrpc":"2.0","method":"m","id":5},{"jsonrpc":"2.0","method":"m","id":6}]"#;
    let answer = |raw: &[u8]| {
        let id = serde_json::from_slice::<Value>(raw).expect("json")["id"]
            .as_i64()
            .unwrap_or(0);
        let response = |status, text: &str| {
            Outcome::Response(UpstreamResponse {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(text.to_string()),
            })
        };
        match id {
            1 => Outcome::Failed(
                Failure::new(FailureKind::Connect, Sent::Nothing).with_detail("refused"),
            ),
            2 => Outcome::failed(FailureKind::Timeout, Sent::Maybe),
            3 => response(200, "<html>"),
            4 => response(502, "bad gateway"),
            5 => response(200, r#"{"jsonrpc":"2.0","result":1,"id":99}"#),
            _ => response(
                500,
                r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"app"},"id":6}"#,
            ),
        }
    };
    let reply = json_of(&round_trip(&spec(), body, answer));
    let codes: Vec<Value> = (0..5).map(|i| reply[i]["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        [
            json!(-32000),
            json!(-32001),
            json!(-32002),
            json!(-32003),
            json!(-32004)
        ]
    );
    assert_eq!(
        reply[1]["error"]["data"],
        json!({"reason": "timeout", "upstream": "node"})
    );
    assert_eq!(reply[3]["error"]["data"]["status"], json!(502));
    // An application error is relayed untouched, even on HTTP 500.
    assert_eq!(
        reply[5],
        json!({"jsonrpc":"2.0","error":{"code":-1,"message":"app"},"id":6})
    );
}

/// The Limelight profile: limit 3 → Batch Error; empty → Parse Error; duplicate ids refused.
#[test]
fn limelight_profile() {
    let d = dialect(
        JsonRpcProfile {
            too_many: RpcError {
                code: -32099,
                message: "Batch Error".into(),
            },
            empty: RpcError {
                code: -32700,
                message: "Parse Error".into(),
            },
            batch_errors_as_array: false,
            unique_ids: true,
        },
        3,
    );
    let call = r#"{"jsonrpc":"2.0","method":"ping","params":["hello"],"id":"1"}"#;
    let four = format!("[{call},{call},{call},{call}]");
    assert_eq!(
        json_of(&round_trip(&d, &four, spec_upstream)),
        json!({"error": {"code": -32099, "message": "Batch Error"}, "id": null, "jsonrpc": "2.0"})
    );
    assert_eq!(
        json_of(&round_trip(&d, "[]", spec_upstream)),
        json!({"error": {"code": -32700, "message": "Parse Error"}, "id": null, "jsonrpc": "2.0"})
    );
    // Refused whole, before anything is sent: one error, not two answers with one id.
    let dup = round_trip(&d, &format!("[{call},{call}]"), |_| {
        panic!("nothing may be sent for a batch with duplicate ids")
    });
    let dup = json_of(&dup);
    assert_eq!(dup["error"]["code"], json!(-32600));
    assert_eq!(dup["id"], json!(null));
    assert_eq!(dup["error"]["data"]["reason"], json!("duplicate_id"));
}

/// With `batch_errors = "array"`, batch-level errors come back wrapped in an array.
#[test]
fn batch_errors_can_be_arrays() {
    let mut d = spec();
    Arc::make_mut(&mut d.config).profile.batch_errors_as_array = true;
    assert!(json_of(&round_trip(&d, "[]", spec_upstream)).is_array());
}

/// A single call is relayed as the upstream answered it; a single invalid call is answered here.
#[test]
fn single_calls() {
    let d = spec();
    let reply = round_trip(
        &d,
        r#"{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}"#,
        spec_upstream,
    );
    assert_eq!(json_of(&reply), json!({"jsonrpc":"2.0","result":19,"id":1}));
    let invalid = round_trip(
        &d,
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
        |_| panic!("not sent"),
    );
    assert_eq!(
        json_of(&invalid),
        json!({"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null})
    );
    let down = round_trip(&d, r#"{"jsonrpc":"2.0","method":"m","id":"a"}"#, |_| {
        Outcome::Failed(Failure::new(FailureKind::Connect, Sent::Nothing).with_detail("refused"))
    });
    assert_eq!(down.status, 502);
    assert_eq!(json_of(&down)["id"], json!("a"));
}

/// An upstream that writes ids back as numbers of another spelling (`1.0` for `1`, `0` for
/// `-0`, `1000` for `1e3`: JavaScript, PHP, Lua) answered the same call; strings still
/// differ from numbers.
#[test]
fn reply_ids_compare_by_numeric_value() {
    let cases = [
        ("1", "1.0", true),
        ("1.0", "1", true),
        ("-0", "0", true),
        ("1e3", "1000", true),
        ("12345678901234567890", "12345678901234567890", true),
        ("9007199254740993", "9007199254740992", false),
        ("1", "2", false),
        ("1", "\"1\"", false),
        ("\"a\"", "\"\\u0061\"", true),
        ("null", "null", true),
        (r#""\ud800""#, r#""\ud800""#, true),
        (r#""\ud800""#, r#""\ud801""#, false),
    ];
    for (sent, replied, same) in cases {
        let body = format!(r#"{{"jsonrpc":"2.0","result":1,"id":{replied}}}"#);
        let result = check_reply(sent.as_bytes(), 200, body.as_bytes());
        assert_eq!(result.is_ok(), same, "sent {sent}, replied {replied}");
        if !same {
            assert_eq!(result, Err(UpstreamError::IdMismatch));
        }
    }
}

/// A reply with a byte order mark or surrounding whitespace is relayed without them.
#[test]
fn reply_bom_and_whitespace_are_not_part_of_the_object() {
    let body = b"\xEF\xBB\xBF\n {\"jsonrpc\":\"2.0\",\"result\":1,\"id\":1} \n";
    assert_eq!(
        check_reply(b"1", 200, body),
        Ok(&br#"{"jsonrpc":"2.0","result":1,"id":1}"#[..])
    );
}

/// With `unique_ids`, `1` and `1.0` are one id (the replies could not be told apart).
#[test]
fn unique_ids_compare_numbers_by_value() {
    let d = dialect(
        JsonRpcProfile {
            unique_ids: true,
            ..spec().config.profile.clone()
        },
        100,
    );
    let reply = round_trip(
        &d,
        r#"[{"jsonrpc":"2.0","method":"sum","params":[1],"id":1},{"jsonrpc":"2.0","method":"sum","params":[2],"id":1.0},{"jsonrpc":"2.0","method":"sum","params":[3],"id":"1"}]"#,
        spec_upstream,
    );
    let refused = json_of(&reply);
    assert_eq!(refused["error"]["code"], json!(-32600));
    assert_eq!(refused["error"]["data"]["reason"], json!("duplicate_id"));
    // `1` and `"1"` are different ids.
    let reply = round_trip(
        &d,
        r#"[{"jsonrpc":"2.0","method":"sum","params":[1],"id":1},{"jsonrpc":"2.0","method":"sum","params":[3],"id":"1"}]"#,
        spec_upstream,
    );
    let replies = json_of(&reply);
    assert_eq!(replies[0]["result"], json!(1));
    assert_eq!(replies[1]["result"], json!(3));
}

/// The JSON-RPC over HTTP media types are accepted besides application/json.
#[test]
fn jsonrpc_media_types() {
    let d = spec();
    for ct in [
        "application/json",
        "application/json-rpc",
        "Application/JSON-RPC; charset=utf-8",
        "application/jsonrequest",
        "application/vnd.api+json",
    ] {
        assert!(d.accepts_content_type(ct.as_bytes()), "{ct}");
    }
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/json",
    ] {
        assert!(!d.accepts_content_type(ct.as_bytes()), "{ct}");
    }
}

/// JSON-RPC 1.0 style replies carry both members, one of them `null`: relayed, not `-32002`.
/// Both non-null, neither present, or `error: null` alone are still invalid.
#[test]
fn replies_with_a_null_partner_member_are_responses() {
    let cases = [
        (r#"{"result":7,"error":null,"id":1}"#, true),
        (
            r#"{"result":null,"error":{"code":-1,"message":"x"},"id":1}"#,
            true,
        ),
        (r#"{"jsonrpc":"2.0","result":null,"id":1}"#, true),
        (
            r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"x"},"id":1}"#,
            true,
        ),
        (
            r#"{"result":7,"error":{"code":-1,"message":"x"},"id":1}"#,
            false,
        ),
        (r#"{"error":null,"id":1}"#, false),
        (r#"{"id":1}"#, false),
    ];
    for (body, ok) in cases {
        let result = check_reply(b"1", 200, body.as_bytes());
        assert_eq!(result.is_ok(), ok, "{body}: {result:?}");
        if !ok {
            assert_eq!(result, Err(UpstreamError::InvalidReply), "{body}");
        }
    }
}

/// The method policy compares names the way a case-insensitive dispatcher reads them, and a
/// name a lenient dispatcher would trim or strip (whitespace, NUL, zero-width space) is
/// refused whatever the lists say: a denied method never reaches the upstream in disguise.
#[test]
fn denied_methods_cannot_be_reached_by_spelling() {
    let d = spec();
    for disguise in [
        "ADMIN_STOP",
        "Admin_Stop",
        " admin_stop",
        "admin_stop ",
        "admin_stop\u{0}",
        "admin_stop\t",
        "\u{200B}admin_stop",
        "admin\u{FEFF}_stop",
        "ADM\u{130}N_STOP",
        "adm\u{131}n_stop",
        "admin_\u{17F}top",
        "",
    ] {
        let call = json!({"jsonrpc": "2.0", "method": disguise, "id": 7}).to_string();
        let reply = round_trip(&d, &format!("[{call}]"), |body| {
            panic!("sent upstream: {}", String::from_utf8_lossy(body))
        });
        let code = json_of(&reply)[0]["error"]["code"].clone();
        assert!(
            code == json!(-32601) || code == json!(-32600),
            "{disguise:?}: {code}"
        );
        assert_eq!(json_of(&reply)[0]["id"], json!(7), "{disguise:?}");
    }
    assert_eq!(method_key("Admin.Stop").as_deref(), Some("admin.stop"));
    assert_eq!(method_key("\u{212A}ill").as_deref(), Some("kill"));
    assert_eq!(
        method_key("\u{e9}t\u{c9}").as_deref(),
        Some("\u{e9}t\u{e9}")
    );
    assert_eq!(method_key(" x"), None);
    let fine = json!({"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 1}).to_string();
    assert_eq!(
        json_of(&round_trip(&d, &format!("[{fine}]"), spec_upstream))[0]["result"],
        json!(3)
    );
}
