//! Properties the fuzz targets check, shared with `tests/it/fuzz_corpus.rs`, which replays the
//! committed corpus as ordinary tests (no fuzzing in CI). Each function takes arbitrary bytes
//! and panics when a property does not hold; "no panic" alone is not the bar:
//!
//! * a decoder never lets an item through that the guards refuse (checked independently of
//!   the guard code: origin-form path, no dot segments, no control bytes, no proxy-owned
//!   header, allowed method), and its encoder always writes valid JSON;
//! * the HTTP/1.1 response reader accepts no head over the limit and no body over the limit,
//!   and a connection it marks reusable has nothing left over.

use batchgate::cache::{ItemCache, Lookup};
use batchgate::config::coalesce::{CacheConfig, CoalesceConfig};
use batchgate::config::{method_key, Config};
use batchgate::dialect::envelope::Envelope;
use batchgate::dialect::fanout::Fanout;
use batchgate::dialect::jsonrpc::JsonRpc;
use batchgate::dialect::meta::Meta;
use batchgate::dialect::multipart::Multipart;
use batchgate::dialect::{
    BatchRequest, Dialect, FailureKind, Outcome, Planned, RouteDialect, Sent, SubRequest,
    UpstreamResponse,
};
use batchgate::guard::owned::ownership;
use batchgate::upstream::h1::{exchange, Timeouts};
use batchgate::upstream::{BatchHeaders, MAX_RESPONSE_HEAD_BYTES};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:1"]
[upstreams.api]
addresses = ["127.0.0.1:9"]
[[routes]]
path = "/v2/batch"
dialect = "envelope"
allowed_methods = ["GET", "POST", "DELETE"]
allowed_url_prefixes = ["/file/"]
max_items = 20
dependencies = "graph"
[[routes]]
path = "/rpc"
dialect = "jsonrpc"
upstream_path = "/rpc"
denied_methods = ["admin_stop", "Debug.Dump"]
max_items = 20
[routes.profile]
unique_ids = true
[[routes]]
path = "/v2/fan"
dialect = "fanout"
max_items = 20
[routes.ids]
param = "ids"
[[routes.params]]
name = "group_id"
required = true
max_length = 32
[routes.request]
method = "GET"
path = "/v2/item/{id}?group={group_id}"
[routes.reply]
list_field = "items"
fields = { id = "$id", url = "/url" }
[[routes]]
path = "/file/batch"
dialect = "multipart"
allowed_methods = ["GET", "POST", "DELETE"]
allowed_url_prefixes = ["/file/"]
max_items = 20
max_part_bytes = 4096
max_part_head_bytes = 1024
[[routes]]
path = "/v21.0/"
dialect = "meta"
allowed_methods = ["GET", "POST", "DELETE"]
max_items = 20
"#;

/// The four dialects, built from one config through the real validation.
struct Dialects {
    envelope: Envelope,
    jsonrpc: JsonRpc,
    fanout: Fanout,
    multipart: Multipart,
    meta: Meta,
}

fn dialects() -> &'static Dialects {
    static DIALECTS: OnceLock<Dialects> = OnceLock::new();
    DIALECTS.get_or_init(|| {
        let config = Config::parse(CONFIG, "fuzz.toml").expect("the fuzz config is valid");
        let mut envelope = None;
        let mut jsonrpc = None;
        let mut fanout = None;
        let mut multipart = None;
        let mut meta = None;
        for route in &config.routes {
            match RouteDialect::new(&route.dialect, route.limits.max_items, "api") {
                RouteDialect::Envelope(d) => envelope = Some(d),
                RouteDialect::JsonRpc(d) => jsonrpc = Some(d),
                RouteDialect::Fanout(d) => fanout = Some(d),
                RouteDialect::Multipart(d) => multipart = Some(d),
                RouteDialect::Meta(d) => meta = Some(d),
                RouteDialect::Single(_) => {}
            }
        }
        Dialects {
            envelope: envelope.expect("envelope route"),
            jsonrpc: jsonrpc.expect("jsonrpc route"),
            fanout: fanout.expect("fanout route"),
            multipart: multipart.expect("multipart route"),
            meta: meta.expect("meta route"),
        }
    })
}

/// Dependencies the executor is given always admit an order: one list per item (or none at
/// all), indices in range, none naming its own item, no cycle (checked by repeatedly taking
/// an item whose dependencies are all taken).
fn assert_dependency_order(after: &[Vec<usize>], items: usize) {
    if after.is_empty() {
        return;
    }
    assert_eq!(after.len(), items, "one dependency list per item");
    for (item, dependencies) in after.iter().enumerate() {
        assert!(
            dependencies.iter().all(|&d| d < items && d != item),
            "{after:?}"
        );
    }
    let mut taken = vec![false; items];
    for _ in 0..items {
        let next = (0..items).find(|&i| !taken[i] && after[i].iter().all(|&d| taken[d]));
        taken[next.expect("the dependencies have a cycle")] = true;
    }
}

/// What every item a decoder lets through must look like, checked without the guard code.
fn assert_safe(sub: &SubRequest, path_prefix: &str) {
    let path = sub.path.as_bytes();
    assert!(
        sub.path.starts_with(path_prefix),
        "outside the prefix: {:?}",
        sub.path
    );
    assert!(
        path.first() == Some(&b'/') && path.get(1) != Some(&b'/'),
        "not origin-form: {:?}",
        sub.path
    );
    assert!(
        path.iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'\\')),
        "a byte that must not go on the request line: {:?}",
        sub.path
    );
    let path_only = sub.path.split('?').next().unwrap_or_default();
    for segment in path_only.split('/') {
        let decoded = percent_decode(segment.as_bytes());
        let name = decoded.split(|b| *b == b';').next().unwrap_or_default();
        assert!(
            name != b"." && name != b"..",
            "dot segment in {:?}",
            sub.path
        );
        assert!(
            !decoded
                .iter()
                .any(|b| *b == b'/' || *b == b'\\' || b.is_ascii_control()),
            "encoded separator or control byte in {:?}",
            sub.path
        );
    }
    // The path as a lenient upstream routes it: decoded, lower-cased, without `;params` and
    // empty segments.
    let routed: Vec<String> = percent_decode(path_only.as_bytes())
        .split(|b| *b == b'/')
        .map(|segment| segment.split(|b| *b == b';').next().unwrap_or_default())
        .filter(|segment| !segment.is_empty())
        .map(|segment| String::from_utf8_lossy(segment).to_ascii_lowercase())
        .collect();
    assert!(routed != ["v2", "batch"], "a nested batch: {:?}", sub.path);
    for (name, value) in &sub.headers {
        assert_eq!(
            ownership(name.as_str()),
            None,
            "proxy-owned header {name} let through"
        );
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "CR, LF or NUL in {name}"
        );
    }
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let hex = |j: usize| input.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn request<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    body: &'a Bytes,
    method: &'a Method,
) -> BatchRequest<'a> {
    BatchRequest {
        path: "/",
        // An item url on this origin is taken as its path: the fuzzer may find that too.
        authority: Some("gate.test"),
        method,
        query,
        headers,
        body,
    }
}

/// An upstream answer made from `bytes`, typed by `kind` (JSON, text or binary).
fn answer(kind: u8, bytes: &[u8]) -> Outcome {
    let mut headers = HeaderMap::new();
    let content_type = match kind % 3 {
        0 => "application/json",
        1 => "text/plain",
        _ => "application/octet-stream",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Outcome::Response(UpstreamResponse {
        status: 200,
        headers,
        body: Bytes::copy_from_slice(bytes),
    })
}

/// The reply is JSON text (RFC 8259 syntax: a number such as `1e7777` that no f64 holds is
/// still JSON, relayed as the upstream wrote it, so the syntax is checked, not the values).
fn assert_json(reply: &[u8], what: &str) {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(reply) {
        panic!(
            "{what} reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

/// The members of a sent JSON-RPC call the property reads.
#[derive(serde::Deserialize)]
struct SentCall<'a> {
    jsonrpc: String,
    method: String,
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
}

/// An envelope reply's entries, as raw JSON.
#[derive(serde::Deserialize)]
struct EnvelopeReply<'a> {
    #[serde(borrow)]
    responses: Vec<&'a serde_json::value::RawValue>,
}

/// Envelope: the body is the batch; every sent child is safe, and the reply (children
/// answered with their own bodies as JSON, text or bytes) is JSON with one entry each.
pub fn envelope(data: &[u8]) {
    let d = &dialects().envelope;
    let body = Bytes::copy_from_slice(data);
    let headers = HeaderMap::new();
    let Ok(plan) = d.decode(&request(&headers, None, &body, &Method::POST)) else {
        return;
    };
    assert_eq!(plan.meta.len(), plan.items.len());
    assert!(plan.items.len() <= d.max_items);
    assert_dependency_order(&plan.after, plan.items.len());
    let outcomes = answered(&plan.items, "/v2/file/", data);
    let n = outcomes.len();
    let reply = d.encode(plan.meta, outcomes);
    assert_json(&reply.body, "envelope");
    let parsed: EnvelopeReply<'_> =
        serde_json::from_slice(&reply.body).expect("an envelope reply has a responses array");
    assert_eq!(parsed.responses.len(), n);
}

/// Meta: the first byte picks where the rest goes (the whole form body, a JSON body, or the
/// `batch` parameter's JSON beside an access token). Every item sent, also one whose
/// references were filled from hostile answers, is safe and under the route's version; every
/// dependency is an earlier item; the reply is a JSON array with one element per item.
pub fn meta(data: &[u8]) {
    let d = &dialects().meta;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body) = match mode % 3 {
        0 => ("application/x-www-form-urlencoded", rest.to_vec()),
        1 => ("application/json", rest.to_vec()),
        _ => {
            let batch = String::from_utf8_lossy(rest);
            let form: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("access_token", "tok&en")
                .append_pair("batch", &batch)
                .finish();
            ("application/x-www-form-urlencoded", form.into_bytes())
        }
    };
    let body = Bytes::from(body);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let plan = match d.decode(&request(&headers, None, &body, &Method::POST)) {
        Ok(plan) => plan,
        Err(rejection) => {
            assert_json(&d.reject(&rejection).body, "meta refusal");
            return;
        }
    };
    assert_eq!(plan.meta.len(), plan.items.len());
    assert!(plan.items.len() <= d.max_items);
    assert_dependency_order(&plan.after, plan.items.len());
    for (item, dependencies) in plan.after.iter().enumerate() {
        assert!(dependencies.iter().all(|&d| d < item), "{:?}", plan.after);
    }
    let outcomes = answered(&plan.items, "/v21.0/", data);
    let n = outcomes.len();
    let reply = d.encode(plan.meta, outcomes);
    let parsed: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(&reply.body).expect("a meta reply is a JSON array");
    assert_eq!(parsed.len(), n);
}

/// JSON-RPC: every sent call is a 2.0 object whose method is usable and not denied in any
/// spelling; the reply to answered calls is JSON (or an empty 204).
pub fn jsonrpc(data: &[u8]) {
    let d = &dialects().jsonrpc;
    let body = Bytes::copy_from_slice(data);
    let headers = HeaderMap::new();
    let reply = match d.decode(&request(&headers, None, &body, &Method::POST)) {
        Err(rejection) => d.reject(&rejection),
        Ok(plan) => {
            let outcomes: Vec<Outcome> = plan
                .items
                .iter()
                .map(|item| match item {
                    Ok(planned) => {
                        let sub = planned.ready().expect("this dialect has no references");
                        // Raw members: a number no f64 holds (`1e999` in params) is still a
                        // call the upstream may receive.
                        let call: SentCall<'_> =
                            serde_json::from_slice(sub.body.as_deref().unwrap_or_default())
                                .expect("a sent call is a JSON object");
                        assert_eq!(call.jsonrpc, "2.0");
                        let method = call.method.as_str();
                        let key = method_key(method).expect("a sent method is usable");
                        assert!(
                            key != "admin_stop" && key != "debug.dump",
                            "denied {method:?} sent"
                        );
                        let id = call.id.map_or("null", |id| id.get());
                        let answer = format!(
                            r#"{{"jsonrpc":"2.0","result":{},"id":{id}}}"#,
                            serde_json::Value::from(method)
                        );
                        let mut headers = HeaderMap::new();
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Outcome::Response(UpstreamResponse {
                            status: 200,
                            headers,
                            body: Bytes::from(answer),
                        })
                    }
                    Err(decided) => decided.clone(),
                })
                .collect();
            d.encode(plan.meta, outcomes)
        }
    };
    if !reply.body.is_empty() {
        assert_json(&reply.body, "jsonrpc");
    }
}

/// Fan-out: the first line is the query string, the rest the body; every part's path is the
/// template with each value as one percent-encoded segment or query value.
pub fn fanout(data: &[u8]) {
    let d = &dialects().fanout;
    let (query, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let body = Bytes::copy_from_slice(body);
    let headers = HeaderMap::new();
    let Ok(plan) = d.decode(&request(&headers, Some(query), &body, &Method::GET)) else {
        return;
    };
    let outcomes: Vec<Outcome> = plan
        .items
        .iter()
        .map(|item| match item {
            Ok(planned) => {
                let sub = planned.ready().expect("this dialect has no references");
                assert_safe(sub, "/v2/item/");
                let (path, query) = sub.path.split_once('?').expect("the template has a query");
                let id = path.strip_prefix("/v2/item/").expect("template prefix");
                assert!(
                    id.bytes().all(|b| b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%')),
                    "id not encoded as one segment: {id:?}"
                );
                let group = query.strip_prefix("group=").expect("template query");
                assert!(
                    !group.contains('&') && !group.contains('='),
                    "value broke out of the query: {query:?}"
                );
                answer(0, br#"{"url":"https://example.invalid/x"}"#)
            }
            Err(decided) => decided.clone(),
        })
        .collect();
    let reply = d.encode(plan.meta, outcomes);
    assert_json(&reply.body, "fanout");
}

/// Multipart: the first line is the batch's Content-Type, the rest its body. Every sent part
/// is safe (a relative target resolves under `/file/`, the route's parent, and the route
/// itself is never a target) with an allowed method; the reply is `multipart/mixed` with one
/// part per request, its boundary declared, on no other line and in no part's bytes; a
/// refused batch is answered with JSON.
pub fn multipart(data: &[u8]) {
    let d = &dialects().multipart;
    let (content_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(content_type) = HeaderValue::from_bytes(content_type) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    let body = Bytes::copy_from_slice(body);
    let plan = match d.decode(&request(&headers, None, &body, &Method::POST)) {
        Ok(plan) => plan,
        Err(rejection) => {
            assert_json(&d.reject(&rejection).body, "multipart rejection");
            return;
        }
    };
    assert_eq!(plan.meta.len(), plan.items.len());
    assert!(plan.items.len() <= d.max_items);
    let outcomes: Vec<Outcome> = plan
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Ok(planned) => {
                let Some(sub) = &sendable(planned) else {
                    return Outcome::failed(FailureKind::ReferenceUnresolved, Sent::Nothing);
                };
                assert_safe(sub, "/file/");
                let path = sub.path.split('?').next().unwrap_or_default();
                assert!(
                    path.trim_end_matches('/') != "/file/batch",
                    "a nested batch: {:?}",
                    sub.path
                );
                assert!(
                    [Method::GET, Method::POST, Method::DELETE].contains(&sub.method),
                    "method {} let through",
                    sub.method
                );
                answer(i as u8, sub.body.as_deref().unwrap_or(data))
            }
            Err(decided) => decided.clone(),
        })
        .collect();
    let n = outcomes.len();
    let reply = d.encode(plan.meta, outcomes);
    assert_multipart_reply(&reply, n);
}

/// A multipart reply, checked without the dialect's parser: `n` parts of `application/http`,
/// each an HTTP/1.1 status line, between delimiters of the declared boundary, which occurs
/// nowhere else.
fn assert_multipart_reply(reply: &batchgate::dialect::Reply, n: usize) {
    let content_type = reply.content_type.as_ref().expect("a content type");
    let content_type = content_type.to_str().expect("ASCII content type");
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .expect("multipart/mixed with a boundary");
    assert!(
        (1..=70).contains(&boundary.len())
            && boundary
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "boundary {boundary:?}"
    );
    let body = &reply.body[..];
    let occurrences = memchr::memmem::find_iter(body, boundary.as_bytes()).count();
    assert_eq!(
        occurrences,
        n + 1,
        "the boundary occurs only on delimiter lines"
    );
    let opening = format!("--{boundary}\r\n");
    let closing = format!("--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()), "no closing delimiter");
    let parts = &body[..body.len() - closing.len()];
    let mut count = 0;
    for part in
        memchr::memmem::find_iter(parts, opening.as_bytes()).map(|at| &parts[at + opening.len()..])
    {
        assert!(
            part.starts_with(b"Content-Type: application/http\r\n"),
            "part without its MIME type"
        );
        let head_end = memchr::memmem::find(part, b"\r\n\r\n").expect("MIME headers end");
        assert!(
            part[head_end + 4..].starts_with(b"HTTP/1.1 "),
            "part without a status line"
        );
        count += 1;
    }
    assert_eq!(count, n, "one reply part per request");
}

/// An in-memory upstream connection: reads hand out the script in pieces whose sizes come
/// from the first input byte; writes are swallowed.
struct Script {
    data: Vec<u8>,
    at: usize,
    piece: usize,
}

impl Script {
    /// `data` as an upstream sends it: all at once with bit 6 of `control`, otherwise in
    /// pieces of 1..=64 bytes (its low six bits).
    fn new(data: &[u8], control: u8) -> Script {
        let piece = if control & 0x40 != 0 {
            usize::MAX
        } else {
            usize::from(control & 0x3f) + 1
        };
        Script {
            data: data.to_vec(),
            at: 0,
            piece,
        }
    }
}

/// One current-thread runtime per fuzzing process, for the targets that drive async readers.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let end = self
            .at
            .saturating_add(self.piece)
            .min(self.data.len())
            .min(self.at + buf.remaining());
        let chunk = &self.data[self.at..end];
        buf.put_slice(chunk);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Most body bytes the reader may accept in `h1_response`.
const BODY_LIMIT: usize = 4096;

/// The HTTP/1.1 response reader on arbitrary upstream bytes (first byte: read piece size and
/// method; the rest: what the upstream sends, then EOF).
pub fn h1_response(data: &[u8]) {
    let Some((&control, answer)) = data.split_first() else {
        return;
    };
    let runtime = runtime();
    // Bit 6: everything the upstream sent is readable at once (as when a late answer is
    // already in the socket); otherwise it arrives in pieces of 1..=64 bytes.
    let all_at_once = control & 0x40 != 0;
    let mut stream = Script::new(answer, control);
    let method = if control & 0x80 != 0 {
        Method::HEAD
    } else {
        Method::GET
    };
    let sub = SubRequest {
        method,
        path: "/x".into(),
        headers: vec![(
            HeaderName::from_static("accept"),
            HeaderValue::from_static("*/*"),
        )],
        body: None,
    };
    let batch = BatchHeaders {
        host: HeaderValue::from_static("upstream.test"),
        common: Vec::new(),
        max_response_bytes: BODY_LIMIT,
        item_timeout: Duration::from_secs(60),
    };
    let timeouts = Timeouts {
        read: Duration::from_secs(60),
        write: Duration::from_secs(60),
    };
    let result = runtime.block_on(exchange(&mut stream, &sub, &batch, timeouts));
    let Ok(exchanged) = result else {
        return;
    };
    let response = &exchanged.response;
    assert!(
        response.body.len() <= BODY_LIMIT,
        "body over the limit accepted"
    );
    assert!((100..=999).contains(&response.status));
    assert!(
        batchgate::upstream::head_size(&response.headers) <= MAX_RESPONSE_HEAD_BYTES,
        "head over the limit accepted"
    );
    // Bytes beyond the response that the reader saw must stop reuse. (Bytes that had not
    // arrived yet when the response ended are the pool's business: it checks a connection
    // for unasked-for bytes right before reusing it.)
    if exchanged.reusable && all_at_once {
        assert_eq!(
            stream.at,
            stream.data.len(),
            "reusable with bytes left over"
        );
    }
}

/// Pipelined answers (`upstream::h1::pipeline`): up to eight requests written as one group and
/// their answers read in order off one byte stream. First byte: read piece sizes (as
/// `Script`); second: bit 7 generates the answers, its low three bits give the number of
/// requests less one. Generated answers take their status, body length and framing (a length,
/// or chunks of 1..=16 bytes) from the next bytes and their body from the bytes after; the
/// input's rest follows them on the wire. Every request gets exactly one result, in order; no
/// answer follows a failure; bodies stay within the limit; generated answers come back
/// exactly, each to its own request, whatever pieces the bytes arrive in.
pub fn pipelined_responses(data: &[u8]) {
    use batchgate::upstream::h1::pipeline::exchange_once;
    let [control, shape, input @ ..] = data else {
        return;
    };
    let k = usize::from(shape & 0x07) + 1;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut rest = input;
    if shape & 0x80 != 0 {
        const STATUSES: [u16; 8] = [200, 201, 202, 206, 400, 404, 500, 503];
        for _ in 0..k {
            let [status, len, framing, after @ ..] = rest else {
                break;
            };
            let status = STATUSES[usize::from(status & 0x07)];
            let body = &after[..usize::from(*len).min(after.len())];
            rest = &after[body.len()..];
            wire.extend_from_slice(format!("HTTP/1.1 {status} X\r\n").as_bytes());
            if framing & 1 == 0 {
                wire.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                wire.extend_from_slice(body);
            } else {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for chunk in body.chunks(usize::from(framing >> 1 & 0x0f) + 1) {
                    wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            }
            expected.push((status, body));
        }
    }
    wire.extend_from_slice(rest);
    let requests = (0..k)
        .map(|i| {
            (
                format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
                false,
            )
        })
        .collect();
    let mut stream = Script::new(&wire, *control);
    let answers = runtime().block_on(exchange_once(&mut stream, requests, BODY_LIMIT));
    assert_eq!(answers.len(), k);
    let answers: Vec<_> = answers
        .into_iter()
        .map(|answer| answer.expect("every request gets a result"))
        .collect();
    let failed_at = answers.iter().position(Result::is_err).unwrap_or(k);
    assert!(
        answers[failed_at..].iter().all(Result::is_err),
        "an answer after a failure"
    );
    for answer in answers.iter().flatten() {
        assert!(
            answer.body.len() <= BODY_LIMIT,
            "body over the limit accepted"
        );
        assert!((100..=999).contains(&answer.status));
    }
    for (i, (status, body)) in expected.iter().enumerate() {
        let answer = answers[i].as_ref().expect("a generated answer reads back");
        assert_eq!(answer.status, *status, "answer {i}");
        assert_eq!(&answer.body[..], *body, "answer {i}");
    }
}

/// The HTTP/2 frame-head reader on arbitrary client bytes (first byte: the size of the pieces
/// they arrive in, 1..=64): read whole or in pieces, it sees the same streams, the same
/// premature resets and the same half-received frame; it never remembers more streams than
/// its bound; and it never panics.
pub fn h2_frames(data: &[u8]) {
    use batchgate::listener::{FrameWatch, Pending, MAX_REMEMBERED_STREAMS};
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control & 0x3f) + 1;
    let now = tokio::time::Instant::now();
    let mut whole = FrameWatch::new(3, now);
    whole.feed(bytes, now);
    let mut pieces = FrameWatch::new(3, now);
    for chunk in bytes.chunks(piece) {
        pieces.feed(chunk, now);
        assert!(pieces.remembered() <= MAX_REMEMBERED_STREAMS);
    }
    assert_eq!(whole.counts(), pieces.counts());
    assert_eq!(
        whole.too_many_premature_resets(),
        pieces.too_many_premature_resets()
    );
    let kind = |p: Pending| match p {
        Pending::Nothing => 0,
        Pending::Head(_) => 1,
        Pending::Body(_) => 2,
    };
    assert_eq!(kind(whole.pending()), kind(pieces.pending()));
    let (streams, premature) = whole.counts();
    assert!(premature <= streams);
}

/// The item cache's reading of an answer's headers (`Cache-Control`, `Expires`, `Date`,
/// `Age`, `Vary`; one `name: value` per line of the input, the first line the status): never a
/// panic; an answer the rules say no to is never served (`no-store`, `no-cache`, `private`,
/// `Vary: *`, a cookie, a status not cacheable by default); what it holds stays within its bound.
pub fn cache(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.trim().parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .unwrap_or(200);
    let mut headers = HeaderMap::new();
    for line in lines.take(64) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    // Directive names and Vary members as RFC 9111 reads them: comma-separated, trimmed,
    // a directive's name before any `=`, case-insensitive.
    let members = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|m| {
                        m.split('=')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_ascii_lowercase()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let directives = members("cache-control");
    let never = directives
        .iter()
        .any(|d| matches!(d.as_str(), "no-store" | "no-cache" | "private"))
        || members("vary").iter().any(|m| m == "*")
        || headers.contains_key("set-cookie")
        || headers.contains_key("set-cookie2")
        || ![200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501].contains(&status);
    let config = CacheConfig {
        key: std::sync::Arc::new(CoalesceConfig {
            methods: vec![Method::GET],
            rpc_methods: Vec::new(),
            public: false,
            key_headers: Vec::new(),
        }),
        max_bytes: 4096,
        ttl: None,
        ttl_by_method: Default::default(),
    };
    let budget = std::sync::Arc::new(batchgate::admission::Admission::new(
        batchgate::config::AdmissionLimits {
            max_queued_items: 16,
            queue_budget: Duration::from_secs(5),
            max_held_bytes: 1 << 20,
            per_client_items: 16,
            client_key: batchgate::config::ClientKey::Ip,
        },
        16,
    ));
    let cache = ItemCache::new(&config, budget, || {});
    let request = SubRequest {
        method: Method::GET,
        path: "/x".into(),
        headers: Vec::new(),
        body: None,
    };
    let outcome = Outcome::Response(UpstreamResponse {
        status,
        headers,
        body: Bytes::from_static(b"{}"),
    });
    let ttl = Some(Duration::from_secs(60));
    for key in 0..8u8 {
        cache.store([key; 32], "api\0h\0/x", &request, &[], &outcome, ttl);
        let served = matches!(cache.lookup(&[key; 32], &request, &[]), Lookup::Hit(_));
        assert!(!(never && served), "kept what must not be: status {status}");
    }
    assert!(cache.bytes() <= 4096 + 8 * 512, "{}", cache.bytes());
}

/// Each planned item checked as it would be sent (`sendable`: deferred ones finished from a
/// hostile answer) and answered with its own bytes; decided items as they are. Every item sent
/// is safe under `prefix`, with one of the routes' methods (GET, POST, DELETE).
fn answered(items: &[Result<Planned, Outcome>], prefix: &str, data: &[u8]) -> Vec<Outcome> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Ok(planned) => {
                let Some(sub) = &sendable(planned) else {
                    return Outcome::failed(FailureKind::ReferenceUnresolved, Sent::Nothing);
                };
                assert_safe(sub, prefix);
                assert!(
                    [Method::GET, Method::POST, Method::DELETE].contains(&sub.method),
                    "method {} let through",
                    sub.method
                );
                answer(i as u8, sub.body.as_deref().unwrap_or(data))
            }
            Err(decided) => decided.clone(),
        })
        .collect()
}

/// What a referenced item answers in `sendable`: values made to escape a path segment, add a
/// query or fragment, or become a dot segment (an OData `@odata.id` too).
const HOSTILE_ANSWER: &str = r#"{"@odata.id":"x/..%2F..%2Fadmin","id":"..","url":"/../admin?x=1#f","host":"http://evil.example/","n":1,"data":[{"id":"."},{"id":"a/b"},{"id":"%2e%2e"}],"h":"a\r\nX-Injected: 1"}"#;

/// A planned item as it would be sent: a ready one as it is; a deferred one finished as if
/// every item it refers to had answered `HOSTILE_ANSWER` (`None` when that leaves it
/// unresolved or refused, which is never sent).
fn sendable(planned: &Planned) -> Option<SubRequest> {
    match planned {
        Planned::Ready(request) => Some(request.clone()),
        Planned::Deferred(template) => {
            let answer = Outcome::Response(UpstreamResponse {
                status: 200,
                headers: HeaderMap::new(),
                body: Bytes::from_static(HOSTILE_ANSWER.as_bytes()),
            });
            template.finish(&|_| Some(&answer)).ok()
        }
    }
}

/// Upstream batching's reading of the upstream's replies and its id-list calls (the first
/// byte picks the shape and how many calls, the rest is the reply): one outcome per call,
/// never another caller's answer (a JSON-RPC answer carries exactly its caller's id, an id-list
/// answer is the entry naming the caller's id or `missing_status`), every failure a 502 kind,
/// and the id-list call asks each caller's id once and no other id.
pub fn upstream_batch(data: &[u8]) {
    use batchgate::config::upstream_batch::IdListConfig;
    use batchgate::upstream_batch::{array, id_list_request, split, split_ids, Call};
    let Some((&control, reply)) = data.split_first() else {
        return;
    };
    let n = usize::from(control >> 4) % 8 + 1;
    let status = if control & 0x08 == 0 { 200 } else { 500 };
    let outcome = || {
        Outcome::Response(UpstreamResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(reply),
        })
    };
    let check_failure = |outcome: &Outcome| {
        if let Some(failure) = outcome.failure() {
            assert_eq!(failure.kind, FailureKind::UpstreamBatch, "{failure:?}");
        }
    };
    if control & 0x01 == 0 {
        let ids = [
            serde_json::json!(1),
            serde_json::json!("1"),
            serde_json::from_str("1.000000000000000000001").expect("a number"),
            serde_json::json!(null),
            serde_json::json!("b"),
            serde_json::json!(-7),
            serde_json::json!(""),
            serde_json::json!(0),
        ];
        let calls: Vec<Call> = (0..n)
            .map(|i| Call::Rpc {
                call: serde_json::json!({"jsonrpc": "2.0", "method": "m"})
                    .as_object()
                    .cloned()
                    .expect("an object"),
                id: ids[i].clone(),
            })
            .collect();
        let sent: Vec<serde_json::Value> =
            serde_json::from_slice(&array(&calls)).expect("the array is JSON");
        assert_eq!(sent.len(), n);
        for (position, call) in sent.iter().enumerate() {
            assert_eq!(call["id"], serde_json::json!(position), "positions as ids");
        }
        let outcomes = split(outcome(), &calls);
        assert_eq!(outcomes.len(), n);
        for (outcome, id) in outcomes.iter().zip(&ids) {
            check_failure(outcome);
            if let Outcome::Response(response) = outcome {
                assert!((200..300).contains(&response.status));
                let answer: serde_json::Value =
                    serde_json::from_slice(&response.body).expect("an answer is JSON");
                assert_eq!(
                    answer["id"].to_string(),
                    id.to_string(),
                    "the caller's own id"
                );
            }
        }
        return;
    }
    let list = IdListConfig {
        method: if control & 0x02 == 0 {
            Method::GET
        } else {
            Method::POST
        },
        path: "/items".into(),
        ids: "ids".into(),
        list_field: if control & 0x04 == 0 {
            String::new()
        } else {
            "items".into()
        },
        id_field: "id".into(),
        answer: if control & 0x10 == 0 {
            Default::default()
        } else {
            [("v".to_string(), "/v".to_string())].into()
        },
        missing_status: 404,
    };
    let asked = ["1", "a", "1", "b-2", "x.y", "~", "10", "a"];
    let calls: Vec<Call> = asked[..n]
        .iter()
        .map(|id| Call::Id(id.to_string()))
        .collect();
    let single = SubRequest {
        method: Method::GET,
        path: "/items/1?ids=9&g=1".into(),
        headers: Vec::new(),
        body: None,
    };
    let request = id_list_request(&list, &single, &calls);
    let sent_ids: Vec<String> = if list.method == Method::GET {
        let query = request.path.split_once('?').expect("a query").1;
        form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "ids")
            .map(|(_, v)| v.into_owned())
            .collect()
    } else {
        let body: serde_json::Value =
            serde_json::from_slice(request.body.as_deref().expect("a body")).expect("JSON");
        serde_json::from_value(body["ids"].clone()).expect("a list of ids")
    };
    let mut unique: Vec<String> = Vec::new();
    for id in &asked[..n] {
        if !unique.iter().any(|u| u == id) {
            unique.push(id.to_string());
        }
    }
    assert_eq!(sent_ids, unique, "each asked id once, and no other");
    let outcomes = split_ids(&list, outcome(), &calls);
    assert_eq!(outcomes.len(), n);
    let reply: Option<serde_json::Value> = serde_json::from_slice(reply).ok();
    for (outcome, id) in outcomes.iter().zip(&asked) {
        check_failure(outcome);
        let Outcome::Response(response) = outcome else {
            continue;
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&response.body).expect("an answer is JSON");
        if response.status == 404 && answer["code"] == "NotFound" {
            continue;
        }
        assert!((200..300).contains(&response.status));
        let entries = reply
            .as_ref()
            .and_then(|r| {
                if list.list_field.is_empty() {
                    r.as_array()
                } else {
                    r.get("items").and_then(|v| v.as_array())
                }
            })
            .expect("answered from a list");
        let named = |e: &&serde_json::Value| match &e["id"] {
            serde_json::Value::String(s) => s == id,
            serde_json::Value::Number(n) => n.to_string() == *id,
            _ => false,
        };
        let entry = entries
            .iter()
            .find(named)
            .expect("an entry with the caller's id");
        if list.answer.is_empty() {
            assert_eq!(&answer, entry);
        } else {
            assert_eq!(
                answer,
                serde_json::json!({"v": entry.pointer("/v").cloned().unwrap_or_default()})
            );
        }
    }
}

/// The pass-through lane's reading of a request head (`proxy::lane_plan`, on the head up to
/// its first empty line): a head it relays is a valid HTTP/1.1 request that is no batch route's,
/// and the upstream head it writes parses, keeps the method and target, has one `Host`, the
/// client's length as its only framing, one `X-Forwarded-For` (the client's address) and one
/// `X-Request-Id`, and none of the connection or proxy-set headers the client sent.
pub fn lane_request(data: &[u8]) {
    let Some(end) = memchr::memmem::find(data, b"\r\n\r\n") else {
        return;
    };
    let head = &data[..end + 4];
    let mut out = Vec::new();
    let client = Some("10.0.0.1");
    let is_route = |_: &Method, path: &str| path == "/batch";
    let Some(plan) = batchgate::proxy::lane_plan(head, is_route, None, client, &mut out) else {
        return;
    };
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut original = httparse::Request::new(&mut slots);
    assert!(
        matches!(original.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()),
        "relayed a head that does not parse"
    );
    assert_eq!(original.version, Some(1), "relayed another version");
    assert_ne!(
        original.path,
        Some("/batch"),
        "relayed a batch route's request"
    );
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut sent = httparse::Request::new(&mut slots);
    assert!(
        matches!(sent.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the upstream head does not parse"
    );
    assert_eq!(sent.method, Some(plan.method.as_str()));
    assert_eq!(sent.method, original.method);
    assert_eq!(sent.path, original.path);
    let count = |name: &str| {
        sent.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("host"), 1);
    assert_eq!(count("x-forwarded-for"), 1);
    assert_eq!(count("x-request-id"), 1);
    for hop in [
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "expect",
        "te",
    ] {
        assert_eq!(count(hop), 0, "{hop} went upstream");
    }
    for header in sent.headers.iter() {
        let owned = ownership(header.name);
        let set_here = header.name == "X-Forwarded-For" || header.name == "X-Request-Id";
        assert!(
            set_here || !matches!(owned, Some(batchgate::guard::owned::Ownership::ProxySet)),
            "{} went upstream",
            header.name
        );
        if header.name == "X-Forwarded-For" {
            assert_eq!(header.value, b"10.0.0.1");
        }
    }
    let lengths: Vec<&[u8]> = sent
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    match lengths.as_slice() {
        [] => assert_eq!(plan.length, 0),
        [one] => assert_eq!(*one, plan.length.to_string().as_bytes()),
        _ => panic!("two lengths went upstream"),
    }
}

/// A client that sends nothing and keeps what it is sent.
#[derive(Default)]
struct Collect {
    got: Vec<u8>,
}

impl AsyncRead for Collect {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Collect {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.got.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The pass-through relay (`upstream::h1::relay`) on arbitrary upstream bytes (first byte:
/// the size of the pieces they arrive in, 1..=64, or all at once with bit 6): an answer it
/// cannot frame reaches the client as nothing; an answer it relays reaches the client as one
/// well-framed HTTP/1.1 response (its status, no hop-by-hop header, exactly the body its
/// `Content-Length` or its chunks say and nothing after); a connection it keeps has nothing
/// left over that it saw.
pub fn relay_response(data: &[u8]) {
    use batchgate::upstream::h1::relay::{relay, Buffers, Outbound, RelayError};
    let Some((&control, answer)) = data.split_first() else {
        return;
    };
    let runtime = runtime();
    let all_at_once = control & 0x40 != 0;
    let mut upstream = Script::new(answer, control);
    let mut client = Collect::default();
    let out = Outbound {
        first: b"GET /x HTTP/1.1\r\nHost: u\r\n\r\n",
        rest: 0,
        close: control & 0x80 != 0,
    };
    let timeouts = Timeouts {
        read: Duration::from_secs(60),
        write: Duration::from_secs(60),
    };
    let mut buffers = Buffers::default();
    let result = runtime.block_on(relay(
        &mut upstream,
        &mut client,
        out,
        timeouts,
        &mut buffers,
    ));
    let answered = match result {
        Ok(answered) => answered,
        Err(RelayError::Upstream(_) | RelayError::Connect(_)) => {
            assert!(client.got.is_empty(), "a refused answer reached the client");
            return;
        }
        Err(RelayError::ClientBody(_)) => panic!("the client had no body to send"),
        Err(RelayError::Cut { .. }) => return,
    };
    let got = &client.got;
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(got) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("the client got no valid head: {other:?}"),
    };
    assert_eq!(parsed.code, Some(answered.status));
    assert!(answered.status >= 200);
    let values = |name: &str| -> Vec<&[u8]> {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    for hop in ["keep-alive", "te", "trailer", "upgrade", "proxy-connection"] {
        assert!(values(hop).is_empty(), "{hop} reached the client");
    }
    assert!(values("connection").iter().all(|v| *v == b"close"));
    let body = &got[head_len..];
    match (
        values("content-length").as_slice(),
        values("transfer-encoding").as_slice(),
    ) {
        ([length], []) => {
            let length: usize = std::str::from_utf8(length)
                .expect("ascii")
                .parse()
                .expect("a length");
            assert_eq!(body.len(), length, "the body is not its length");
        }
        ([], [b"chunked"]) => assert_chunked(body),
        ([], []) => {
            assert!(
                matches!(answered.status, 204 | 304),
                "no framing on a {}",
                answered.status
            );
            assert!(body.is_empty());
        }
        (lengths, codings) => panic!("framing {lengths:?} {codings:?}"),
    }
    if answered.reusable && all_at_once {
        assert_eq!(
            upstream.at,
            upstream.data.len(),
            "reusable with bytes left over"
        );
    }
}

/// A chunked body that is exactly its chunks and the last chunk, with no trailers.
fn assert_chunked(mut body: &[u8]) {
    loop {
        let line = memchr::memmem::find(body, b"\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line]).expect("ascii"), 16)
            .expect("a hex size");
        body = &body[line + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n", "bytes after the last chunk");
            return;
        }
        assert!(size > 0 && body.len() >= size + 2, "a short chunk");
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}
