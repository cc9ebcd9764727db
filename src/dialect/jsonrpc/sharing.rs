//! How identical JSON-RPC calls share an answer (coalescing and the item cache,
//! `crate::item::ItemSharing`): two calls are the same when their method and params are
//! (params compared as JSON values, members in any order, numbers by their exact text),
//! whatever their ids; an answer shared with another call gets that call's own id, the rest
//! of it as the upstream wrote it (members in order, numbers digit for digit).

use crate::item::{ItemSharing, Outcome, SubRequest, UpstreamResponse};
use bytes::Bytes;
use serde_json::{Map, Value};

pub(super) const SHARING: ItemSharing = ItemSharing {
    key_body,
    method,
    answer_for,
    storable,
};

/// The call sent upstream, as a JSON object.
fn call(request: &SubRequest) -> Option<Map<String, Value>> {
    serde_json::from_slice(request.body.as_deref()?).ok()
}

/// `[method, params]` of a call that expects an answer (a notification is never shared).
fn key_body(request: &SubRequest) -> Option<Vec<u8>> {
    let call = call(request)?;
    call.get("id")?;
    let mut params = call.get("params").cloned().unwrap_or(Value::Null);
    sort_members(&mut params);
    serde_json::to_vec(&Value::Array(vec![call.get("method")?.clone(), params])).ok()
}

/// Objects with their members in one order, at every depth, so member order does not
/// make two calls differ.
fn sort_members(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.sort_keys();
            members.values_mut().for_each(sort_members);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_members),
        _ => {}
    }
}

fn method(request: &SubRequest) -> Option<String> {
    call(request)?.get("method")?.as_str().map(str::to_string)
}

/// The answer with this call's id in place of the one it was sent with.
fn answer_for(request: &SubRequest, outcome: Outcome) -> Outcome {
    let Outcome::Response(mut response) = outcome else {
        return outcome;
    };
    let id = call(request).and_then(|mut call| call.remove("id"));
    let reply = serde_json::from_slice::<Map<String, Value>>(&response.body);
    if let (Some(id), Ok(mut reply)) = (id, reply) {
        reply.insert("id".to_string(), id);
        if let Ok(body) = serde_json::to_vec(&reply) {
            response.body = Bytes::from(body);
        }
    }
    Outcome::Response(response)
}

/// A result may be kept; an error answer (or anything else) may not.
fn storable(response: &UpstreamResponse) -> bool {
    (200..300).contains(&response.status)
        && serde_json::from_slice::<Map<String, Value>>(&response.body)
            .is_ok_and(|reply| reply.contains_key("result") && !reply.contains_key("error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn post(body: &str) -> SubRequest {
        SubRequest {
            method: Method::POST,
            path: "/rpc".into(),
            headers: Vec::new(),
            body: Some(Bytes::copy_from_slice(body.as_bytes())),
        }
    }

    #[test]
    fn calls_are_the_same_whatever_their_ids_and_member_order() {
        let a = post(r#"{"jsonrpc":"2.0","method":"get","params":{"a":1,"b":2},"id":1}"#);
        let b = post(r#"{"id":"x","params":{"b":2,"a":1},"method":"get","jsonrpc":"2.0"}"#);
        let nested_a = post(r#"{"method":"get","params":[{"x":{"p":1,"q":2}}],"id":1}"#);
        let nested_b = post(r#"{"method":"get","params":[{"x":{"q":2,"p":1}}],"id":2}"#);
        assert_eq!(key_body(&nested_a), key_body(&nested_b));
        let c = post(r#"{"jsonrpc":"2.0","method":"get","params":{"a":2,"b":2},"id":1}"#);
        let note = post(r#"{"jsonrpc":"2.0","method":"get","params":{"a":1,"b":2}}"#);
        assert_eq!(key_body(&a), key_body(&b));
        assert_ne!(key_body(&a), key_body(&c));
        assert_eq!(key_body(&note), None, "a notification is never shared");
        assert_eq!(method(&a).as_deref(), Some("get"));
    }

    #[test]
    fn numbers_past_f64_keep_calls_apart() {
        // As f64 both are 1.2345678901234568e22: read as floats, they would share an answer.
        let a = post(r#"{"method":"getBalance","params":[12345678901234567890123],"id":1}"#);
        let b = post(r#"{"method":"getBalance","params":[12345678901234567890124],"id":1}"#);
        assert_ne!(key_body(&a), key_body(&b));
    }

    #[test]
    fn a_shared_answer_keeps_the_upstream_s_numbers_and_member_order() {
        let answer = Outcome::Response(UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"result":{"z":0.10000000000000000000001,"a":123456789012345678901234567890}}"#,
            ),
        });
        let Outcome::Response(mine) = answer_for(&post(r#"{"method":"get","id":"x"}"#), answer)
        else {
            panic!("a response");
        };
        assert_eq!(
            std::str::from_utf8(&mine.body).unwrap(),
            r#"{"jsonrpc":"2.0","id":"x","result":{"z":0.10000000000000000000001,"a":123456789012345678901234567890}}"#
        );
    }

    #[test]
    fn a_shared_answer_gets_the_call_s_own_id() {
        let answer = Outcome::Response(UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"jsonrpc":"2.0","result":42,"id":1}"#),
        });
        let Outcome::Response(mine) = answer_for(&post(r#"{"method":"get","id":"x"}"#), answer)
        else {
            panic!("a response");
        };
        let reply: Value = serde_json::from_slice(&mine.body).unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"jsonrpc": "2.0", "result": 42, "id": "x"})
        );
        assert!(storable(&mine));
        let error = UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"jsonrpc":"2.0","error":{"code":1},"id":1}"#),
        };
        assert!(!storable(&error));
    }
}
