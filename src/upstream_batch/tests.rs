use super::*;
use http::HeaderMap;
use std::time::Duration;

fn waiting(call: &str) -> (Waiting, oneshot::Receiver<Outcome>) {
    let (answer, answered) = oneshot::channel();
    let mut call: Map<String, Value> = serde_json::from_str(call).unwrap();
    let id = call.remove("id").unwrap();
    let now = Instant::now();
    let waiting = Waiting {
        call: Call::Rpc { call, id },
        arrived: now,
        until: now + Duration::from_secs(1),
        answer,
    };
    (waiting, answered)
}

fn answer(status: u16, body: &str) -> Outcome {
    Outcome::Response(UpstreamResponse {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_string()),
    })
}

fn calls() -> Vec<Waiting> {
    vec![
        waiting(r#"{"jsonrpc":"2.0","method":"a","params":[1],"id":"x"}"#).0,
        waiting(r#"{"jsonrpc":"2.0","method":"b","id":123456789012345678901234567890}"#).0,
        waiting(r#"{"jsonrpc":"2.0","method":"c","id":null}"#).0,
    ]
}

fn body(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Response(response) => String::from_utf8(response.body.to_vec()).unwrap(),
        Outcome::Failed(failure) => format!("failed: {:?} {:?}", failure.kind, failure.detail),
    }
}

#[test]
fn the_array_carries_each_call_with_its_position_as_id() {
    let text = String::from_utf8(array(&calls())).unwrap();
    assert_eq!(
        text,
        r#"[{"jsonrpc":"2.0","method":"a","params":[1],"id":0},{"jsonrpc":"2.0","method":"b","id":1},{"jsonrpc":"2.0","method":"c","id":2}]"#
    );
}

#[test]
fn answers_are_matched_by_id_not_position_and_get_the_caller_s_id() {
    let reply = r#"[{"jsonrpc":"2.0","id":2,"result":"c"},{"jsonrpc":"2.0","result":"a","id":0},{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}]"#;
    let outcomes = split(answer(200, reply), &calls());
    assert_eq!(
        body(&outcomes[0]),
        r#"{"jsonrpc":"2.0","result":"a","id":"x"}"#
    );
    assert_eq!(
        body(&outcomes[1]),
        r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"error":{"code":-1,"message":"no"}}"#
    );
    assert_eq!(
        body(&outcomes[2]),
        r#"{"jsonrpc":"2.0","id":null,"result":"c"}"#
    );
}

#[test]
fn a_reply_that_does_not_answer_a_call_fails_only_that_call() {
    // One answer missing, one with an id that was never sent, one repeated.
    let reply =
        r#"[{"id":0,"result":1},{"id":7,"result":2},{"id":0,"result":3},{"id":2,"result":4}]"#;
    let outcomes = split(answer(200, reply), &calls());
    assert_eq!(
        body(&outcomes[0]),
        r#"{"id":"x","result":1}"#,
        "the first answer for id 0"
    );
    assert!(body(&outcomes[1]).contains("has no answer for this call"));
    assert_eq!(body(&outcomes[2]), r#"{"id":null,"result":4}"#);
    for (reply, status, reason) in [
        (
            r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"x"},"id":null}"#,
            200,
            "single object",
        ),
        ("not json", 200, "not a JSON array"),
        ("[]", 503, "HTTP 503"),
    ] {
        let outcomes = split(answer(status, reply), &calls());
        assert_eq!(outcomes.len(), 3);
        for outcome in &outcomes {
            let failure = outcome.failure().expect("failed");
            assert_eq!(failure.kind, FailureKind::UpstreamBatch);
            assert!(
                failure.detail.as_deref().unwrap().contains(reason),
                "{reply}"
            );
            assert_eq!(failure.http_error().status, 502);
        }
    }
    let cut = split(
        Outcome::failed(FailureKind::Connect, Sent::Nothing),
        &calls(),
    );
    assert!(cut
        .iter()
        .all(|o| o.failure().is_some_and(|f| f.kind == FailureKind::Connect)));
}

fn list() -> IdListConfig {
    IdListConfig {
        method: http::Method::GET,
        path: "/items".into(),
        ids: "ids".into(),
        list_field: "items".into(),
        id_field: "id".into(),
        answer: [("name".to_string(), "/name".to_string())].into(),
        missing_status: 404,
    }
}

fn asking(id: &str) -> Waiting {
    let (answer, _answered) = oneshot::channel();
    let now = Instant::now();
    Waiting {
        call: Call::Id(id.to_string()),
        arrived: now,
        until: now + Duration::from_secs(1),
        answer,
    }
}

#[test]
fn an_id_list_call_asks_each_id_once_and_keeps_the_other_parameters() {
    let calls = [asking("b"), asking("a b"), asking("b")];
    let single = SubRequest {
        method: http::Method::GET,
        path: "/items/b/name?ids=evil&group=7&i%64s=x".into(),
        headers: Vec::new(),
        body: None,
    };
    let get = id_list_request(&list(), &single, &calls);
    assert_eq!(get.path, "/items?group=7&ids=b&ids=a+b");
    let post = id_list_request(
        &IdListConfig {
            method: http::Method::POST,
            ..list()
        },
        &single,
        &calls,
    );
    assert_eq!(post.path, "/items?group=7");
    assert_eq!(
        post.body.as_deref(),
        Some(br#"{"ids":["b","a b"]}"#.as_slice())
    );
}

#[test]
fn id_list_answers_are_matched_by_id_and_a_missing_id_is_its_status() {
    let calls = [asking("1"), asking("2"), asking("3")];
    let reply = r#"{"items":[{"id":2,"name":"two"},{"id":"1","name":"one","extra":true}]}"#;
    let outcomes = split_ids(&list(), answer(200, reply), &calls);
    assert_eq!(body(&outcomes[0]), r#"{"name":"one"}"#);
    assert_eq!(
        body(&outcomes[1]),
        r#"{"name":"two"}"#,
        "a number id matches too"
    );
    match &outcomes[2] {
        Outcome::Response(response) => assert_eq!(response.status, 404),
        other => panic!("{other:?}"),
    }
    for (status, reply, reason) in [
        (200, "[]", "no list of entries"),
        (200, "nope", "not JSON"),
        (502, "{}", "HTTP 502"),
    ] {
        for outcome in split_ids(&list(), answer(status, reply), &calls) {
            let failure = outcome.failure().expect("failed");
            assert_eq!(failure.kind, FailureKind::UpstreamBatch);
            assert!(
                failure.detail.as_deref().unwrap().contains(reason),
                "{reply}"
            );
        }
    }
}
