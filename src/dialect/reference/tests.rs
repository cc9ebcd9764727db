use super::*;
use crate::item::UpstreamResponse;
use http::HeaderMap;
use serde_json::json;

/// Names `first` (0) and `second` (1) are earlier items; anything else is not.
fn lookup(name: &str) -> Result<usize, String> {
    match name {
        "first" => Ok(0),
        "second" => Ok(1),
        other => Err(format!("{other:?} is not an earlier item")),
    }
}

fn raw(url: &str, headers: &[(&str, &str)], body: Option<&str>) -> RawItem {
    RawItem {
        method: "GET".into(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.map(|b| Bytes::from(b.to_string())),
    }
}

fn answer(status: u16, body: &Value) -> Outcome {
    Outcome::Response(UpstreamResponse {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_string()),
    })
}

/// `raw` resolved against answers `first` and `second`.
fn resolve(item: &RawItem, kind: BodyKind, answers: &[Outcome]) -> Result<RawItem, String> {
    let template = Template::parse(item, kind, &lookup)?.expect("references");
    template.resolve(item, &|i| answers.get(i))
}

fn friends() -> Vec<Outcome> {
    vec![
        answer(
            200,
            &json!({"id": "10", "n": 7, "data": [{"id": "a"}, {"id": "b"}]}),
        ),
        answer(
            200,
            &json!({"id": "a/../b?x#y", "dots": "..", "flag": true}),
        ),
    ]
}

#[test]
fn an_item_without_references_is_sent_as_written() {
    let item = raw("/me?fields=id", &[("X", "1")], Some(r#"{"a":"{b}"}"#));
    assert_eq!(Template::parse(&item, BodyKind::Json, &lookup), Ok(None));
}

#[test]
fn url_values_are_encoded_for_their_component_and_joined_by_commas() {
    let item = raw(
        "/v1/{result=first:$.id}/friends?ids={result=first:$.data.*.id}",
        &[],
        None,
    );
    let out = resolve(&item, BodyKind::Json, &friends()).unwrap();
    assert_eq!(out.url, "/v1/10/friends?ids=a,b");
    // A value cannot add a segment, a query or a fragment.
    let item = raw("/v1/{result=second:$.id}?q={result=second:$.id}", &[], None);
    let out = resolve(&item, BodyKind::Json, &friends()).unwrap();
    assert_eq!(out.url, "/v1/a%2F..%2Fb%3Fx%23y?q=a%2F..%2Fb%3Fx%23y");
    // Nor become a dot segment on its own.
    let item = raw("/v1/{result=second:$.dots}/x", &[], None);
    let err = resolve(&item, BodyKind::Json, &friends()).unwrap_err();
    assert!(err.contains("path segment \"..\""), "{err}");
    // Inside a segment, dots are data.
    let item = raw("/v1/x{result=second:$.dots}", &[], None);
    assert_eq!(
        resolve(&item, BodyKind::Json, &friends()).unwrap().url,
        "/v1/x.."
    );
}

#[test]
fn headers_and_form_bodies_take_values_too() {
    let item = raw(
        "/x",
        &[("X-Ids", "{result=first:$.data[*].id}"), ("X-Plain", "p")],
        Some("message=hi {result=first:$.n}&to={result=second:$.id}"),
    );
    let out = resolve(&item, BodyKind::Form, &friends()).unwrap();
    assert_eq!(out.headers[0], ("X-Ids".to_string(), "a,b".to_string()));
    assert_eq!(out.headers[1], ("X-Plain".to_string(), "p".to_string()));
    assert_eq!(
        out.body.as_deref(),
        Some(b"message=hi 7&to=a%2F..%2Fb%3Fx%23y".as_slice())
    );
}

#[test]
fn json_bodies_take_text_and_typed_values() {
    let body = json!({
        "name": "friend of {result=first:$.id}",
        "count": {"$ref": "first:$.n"},
        "ids": {"$ref": "first:$.data.*.id"},
        "flag": {"$ref": "second:$.flag"},
        "kept": [1, {"$ref": "x"}, {"a": 2, "b": 3}],
    });
    // `{"$ref": "x"}` inside a literal-only array is still a reference: "x" has no path.
    let item = raw("/x", &[], Some(&body.to_string()));
    assert!(Template::parse(&item, BodyKind::Json, &lookup).is_err());

    let body = json!({
        "name": "friend of {result=first:$.id}",
        "count": {"$ref": "first:$.n"},
        "ids": {"$ref": "first:$.data.*.id"},
        "flag": {"$ref": "second:$.flag"},
        "kept": [1, {"a": 2}],
    });
    let item = raw("/x", &[], Some(&body.to_string()));
    let out = resolve(&item, BodyKind::Json, &friends()).unwrap();
    let sent: Value = serde_json::from_slice(out.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"name": "friend of 10", "count": 7, "ids": ["a", "b"], "flag": true, "kept": [1, {"a": 2}]})
    );
}

#[test]
fn malformed_and_unknown_references_are_refused_when_parsed() {
    for (url, expect) in [
        ("/x/{result=third:$.id}", "not an earlier item"),
        ("/x/{result=first}", "NAME:JSONPATH"),
        ("/x/{result=first:$..id}", "only $"),
        ("/x/{result=first:$.id", "not closed"),
        ("/x/{result=first:id}", "must start with $"),
    ] {
        let err = Template::parse(&raw(url, &[], None), BodyKind::Json, &lookup).unwrap_err();
        assert!(err.contains(expect), "{url}: {err}");
    }
    let many = "{result=first:$.id}".repeat(MAX_REFERENCES + 1);
    let err = Template::parse(
        &raw(&format!("/x/{many}"), &[], None),
        BodyKind::Json,
        &lookup,
    )
    .unwrap_err();
    assert!(err.contains("at most"), "{err}");
}

#[test]
fn unresolved_references_say_which_and_why() {
    let item = raw("/x/{result=first:$.missing}", &[], None);
    let err = resolve(&item, BodyKind::Json, &friends()).unwrap_err();
    assert!(
        err.contains("{result=first:$.missing} matched nothing"),
        "{err}"
    );

    let failed = vec![answer(404, &json!({"error": 1}))];
    let item = raw("/x/{result=first:$.id}", &[], None);
    let err = resolve(&item, BodyKind::Json, &failed).unwrap_err();
    assert!(err.contains("did not succeed"), "{err}");

    let not_json = vec![Outcome::Response(UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"<html>"),
    })];
    let err = resolve(&item, BodyKind::Json, &not_json).unwrap_err();
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn expansion_is_bounded() {
    let big = "x".repeat(MAX_EXPANDED_BYTES / 4 + 1);
    let answers = vec![answer(200, &json!({"big": big}))];
    let item = raw(
        "/x?a={result=first:$.big}",
        &[
            ("X-A", "{result=first:$.big}"),
            ("X-B", "{result=first:$.big}"),
        ],
        Some("a={result=first:$.big}&b={result=first:$.big}"),
    );
    let err = resolve(&item, BodyKind::Form, &answers).unwrap_err();
    assert!(err.contains("expand past"), "{err}");
    let many = json!({"data": (0..=MAX_VALUES).collect::<Vec<_>>()});
    let answers = vec![answer(200, &many)];
    let err = resolve(
        &raw("/x?ids={result=first:$.data.*}", &[], None),
        BodyKind::Json,
        &answers,
    )
    .unwrap_err();
    assert!(err.contains("more than"), "{err}");
}

#[test]
fn sources_are_each_referenced_item_once() {
    let item = raw(
        "/{result=second:$.id}/{result=first:$.id}/{result=second:$.n}",
        &[],
        None,
    );
    let template = Template::parse(&item, BodyKind::Json, &lookup)
        .unwrap()
        .unwrap();
    assert_eq!(template.sources(), [0, 1]);
}

/// A reference to a whole large answer is refused by its size before it is copied or written
/// out, however many times the item names it.
#[test]
fn a_large_answer_is_refused_before_it_is_copied() {
    let big: Vec<String> = (0..20_000).map(|i| format!("value {i}")).collect();
    let answers = vec![answer(200, &json!({"data": big}))];
    let body = json!({"a": {"$ref": "first:$"}, "b": {"$ref": "first:$.data"}});
    let item = raw("/x", &[], Some(&body.to_string()));
    let err = resolve(&item, BodyKind::Json, &answers).unwrap_err();
    assert!(err.contains("expand past"), "{err}");
    let item = raw("/x?q={result=first:$.data.*}", &[], None);
    let err = resolve(&item, BodyKind::Json, &answers).unwrap_err();
    assert!(err.contains("more than"), "{err}");
    let item = raw("/x?q={result=first:$}", &[], None);
    let err = resolve(&item, BodyKind::Json, &answers).unwrap_err();
    assert!(err.contains("expand past"), "{err}");
}

#[test]
fn json_bodies_keep_numbers_digit_for_digit_and_members_in_order() {
    // Past f64's precision: re-encoding through floats would change what the client sent
    // and what the referred answer said.
    let answers = vec![Outcome::Response(UpstreamResponse {
        status: 200,
        headers: HeaderMap::new(),
        body: Bytes::from_static(
            br#"{"balance":123456789012345678901234567890.000000000000000001}"#,
        ),
    })];
    let body = r#"{"zeta":0.10000000000000000000001,"amount":{"$ref":"first:$.balance"},"alpha":18446744073709551616}"#;
    let out = resolve(&raw("/x", &[], Some(body)), BodyKind::Json, &answers).unwrap();
    assert_eq!(
        std::str::from_utf8(out.body.as_deref().unwrap()).unwrap(),
        r#"{"zeta":0.10000000000000000000001,"amount":123456789012345678901234567890.000000000000000001,"alpha":18446744073709551616}"#
    );
}
