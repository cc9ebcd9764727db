use super::*;

fn request(accept: &[&str]) -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/v2/batch", None).expect("request");
    for value in accept {
        req.append_header(http::header::ACCEPT, *value)
            .expect("accept");
    }
    req
}

const ALL: &[StreamFormat] = &[
    StreamFormat::Ndjson,
    StreamFormat::Sse,
    StreamFormat::JsonSeq,
];
const WITH_PROGRESSIVE: &[StreamFormat] = &[StreamFormat::Sse, StreamFormat::Progressive];

#[test]
fn accept_picks_an_offered_format_the_client_does_not_rank_below_json() {
    let cases: &[(&[&str], &[StreamFormat], Option<StreamFormat>)] = &[
        (&["application/x-ndjson"], ALL, Some(StreamFormat::Ndjson)),
        (&["application/jsonl"], ALL, Some(StreamFormat::Ndjson)),
        (&["Text/Event-Stream"], ALL, Some(StreamFormat::Sse)),
        (&["application/json-seq"], ALL, Some(StreamFormat::JsonSeq)),
        // MCP's clients list both; the stream is what they can take best.
        (
            &["application/json, text/event-stream"],
            ALL,
            Some(StreamFormat::Sse),
        ),
        (
            &["application/json", "text/event-stream"],
            ALL,
            Some(StreamFormat::Sse),
        ),
        // The client prefers the plain reply, or refuses the stream outright.
        (&["application/json, text/event-stream;q=0.5"], ALL, None),
        (&["text/event-stream;q=0"], ALL, None),
        // The highest weight wins.
        (
            &["text/event-stream;q=0.4, application/x-ndjson;q=0.9"],
            ALL,
            Some(StreamFormat::Ndjson),
        ),
        // Not offered by the route, not asked for, or a wildcard: the buffered reply.
        (&["text/event-stream"], &[StreamFormat::Ndjson], None),
        (&["text/event-stream"], &[], None),
        (&["*/*"], ALL, None),
        (&[], ALL, None),
        // A route that also offers progressive replies gives one to everyone else.
        (
            &["text/event-stream"],
            WITH_PROGRESSIVE,
            Some(StreamFormat::Sse),
        ),
        (
            &["application/json"],
            WITH_PROGRESSIVE,
            Some(StreamFormat::Progressive),
        ),
        (&[], WITH_PROGRESSIVE, Some(StreamFormat::Progressive)),
    ];
    for (accept, offered, want) in cases {
        assert_eq!(negotiate(offered, &request(accept)), *want, "{accept:?}");
    }
}

#[test]
fn a_record_is_one_line_in_every_format() {
    let json = b"{\"a\":\n  [1,\r\n 2],\"s\":\"x\\ny\"}";
    let flat = "{\"a\":   [1,   2],\"s\":\"x\\ny\"}";
    assert_eq!(
        frame(StreamFormat::Ndjson, json.to_vec(), None),
        format!("{flat}\n").into_bytes()
    );
    assert_eq!(
        frame(StreamFormat::JsonSeq, json.to_vec(), None),
        format!("\u{1e}{flat}\n").into_bytes()
    );
    assert_eq!(
        frame(StreamFormat::Sse, json.to_vec(), None),
        format!("data: {flat}\n\n").into_bytes()
    );
    assert_eq!(
        frame(StreamFormat::Sse, b"{}".to_vec(), Some("done")),
        b"event: done\ndata: {}\n\n".to_vec()
    );
    assert_eq!(keepalive(StreamFormat::Sse), b": keep-alive\n\n".to_vec());
    assert_eq!(
        keepalive(StreamFormat::Ndjson),
        b"{\"heartbeat\":true}\n".to_vec()
    );
}

#[test]
fn the_terminal_record_counts_items_records_and_outcomes() {
    let classes = [
        ItemClass::Status2xx,
        ItemClass::Timeout,
        ItemClass::Status2xx,
    ];
    let done: serde_json::Value = serde_json::from_slice(&terminal(4, 3, &classes)).expect("JSON");
    assert_eq!(
        done,
        serde_json::json!({"done": true, "items": 4, "records": 3,
            "outcomes": {"2xx": 2, "timeout": 1}})
    );
}
