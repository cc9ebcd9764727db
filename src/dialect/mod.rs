//! The `Dialect` seam the batch formats plug into, and what they share: whole-batch
//! refusals, the reply, media-type helpers. (The item vocabulary is `crate::item`, and the
//! error-body template `crate::config::ErrorFormat`: dialects read config, never the reverse.)
//!
//! A dialect is pure: `decode` turns the batch request's bytes into a `Plan` (one
//! `SubRequest` or an already-decided `Outcome` per item) or a whole-batch `Rejection`;
//! `encode` turns the executor's `Outcome`s back into one reply. No I/O, no clock and no
//! metrics happen here, so dialects are unit-testable and fuzzable on their own.

pub mod envelope;
pub mod fanout;
pub mod jsonrpc;
pub mod meta;
pub mod multipart;
pub mod reference;
pub mod single;

/// The item vocabulary, re-exported: dialects build `SubRequest`s and render `Outcome`s.
pub use crate::item::{
    Failure, FailureKind, Fault, ItemClass, ItemError, ItemRefusal, Outcome, Planned,
    RejectionKind, Sent, SubRequest, UpstreamResponse,
};

use crate::config::DialectConfig;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

/// The closed set of dialects, declared here once (static dispatch, exhaustive matches). A new
/// dialect is a module, a variant with its arm in `new`, and its arm in `with_dialect!`.
pub enum RouteDialect {
    Envelope(envelope::Envelope),
    JsonRpc(jsonrpc::JsonRpc),
    Fanout(fanout::Fanout),
    Multipart(multipart::Multipart),
    Meta(meta::Meta),
    Single(single::Single),
}

/// Runs `$body` with `$d` bound to the route's dialect, whichever it is.
macro_rules! with_dialect {
    ($dialect:expr, $d:ident => $body:expr) => {
        match $dialect {
            $crate::dialect::RouteDialect::Envelope($d) => $body,
            $crate::dialect::RouteDialect::JsonRpc($d) => $body,
            $crate::dialect::RouteDialect::Fanout($d) => $body,
            $crate::dialect::RouteDialect::Multipart($d) => $body,
            $crate::dialect::RouteDialect::Meta($d) => $body,
            $crate::dialect::RouteDialect::Single($d) => $body,
        }
    };
}
pub(crate) use with_dialect;

impl RouteDialect {
    /// The dialect a route's validated config describes; it shares the config, copies nothing.
    /// `upstream` is the upstream's name, which JSON-RPC reports in error `data`.
    pub fn new(config: &DialectConfig, max_items: usize, upstream: &str) -> Self {
        match config {
            DialectConfig::Envelope(config) => RouteDialect::Envelope(envelope::Envelope {
                config: config.clone(),
                max_items,
            }),
            DialectConfig::JsonRpc(config) => RouteDialect::JsonRpc(jsonrpc::JsonRpc {
                config: config.clone(),
                max_items,
                upstream: upstream.to_string(),
            }),
            DialectConfig::Fanout(config) => RouteDialect::Fanout(fanout::Fanout {
                config: config.clone(),
                max_items,
            }),
            DialectConfig::Multipart(config) => RouteDialect::Multipart(multipart::Multipart {
                config: config.clone(),
                max_items,
            }),
            DialectConfig::Meta(config) => RouteDialect::Meta(meta::Meta {
                config: config.clone(),
                max_items,
            }),
            DialectConfig::Single(config) => RouteDialect::Single(single::Single {
                config: config.clone(),
            }),
        }
    }

    /// The dialect's `Dialect::reply_cost`, for the executor's reply budget.
    pub fn reply_cost(&self) -> fn(&UpstreamResponse) -> usize {
        with_dialect!(self, d => d.reply_cost())
    }

    /// The dialect's `Dialect::item_sharing`.
    pub fn item_sharing(&self) -> Option<crate::item::ItemSharing> {
        with_dialect!(self, d => d.item_sharing())
    }
}

/// The outer batch request as a dialect sees it.
#[derive(Debug)]
pub struct BatchRequest<'a> {
    pub method: &'a Method,
    /// The request's path, without its query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The whole request body; dialects slice it (`Bytes::slice_ref`) instead of copying.
    pub body: &'a Bytes,
    /// The batch request's own authority (`Host`, or HTTP/2's `:authority`): an item url
    /// naming it is the same origin (`UrlGuard::origin_form`).
    pub authority: Option<&'a str>,
}

/// A whole-batch refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Dialect-specific error code (e.g. PDS `InvalidParameter.Requests`).
    pub code: &'static str,
    pub message: String,
    /// When to try again (`Retry-After`), for refusals that are about load, not the batch.
    pub retry_after: Option<std::time::Duration>,
}

impl Rejection {
    pub fn new(kind: RejectionKind, code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The decoded batch: per item, dialect data for the reply and what to do.
#[derive(Debug)]
pub struct Plan<M> {
    pub meta: Vec<M>,
    pub items: Vec<Result<Planned, Outcome>>,
    /// How the items run: concurrently (the default) or one after another.
    pub order: Order,
    /// Per item, the items it waits for (Graph's `dependsOn`, as indices); empty when no item
    /// of the batch depends on another.
    pub after: Vec<Vec<usize>>,
}

/// How a batch's items run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Concurrently, within the route's `concurrency`.
    #[default]
    Concurrent,
    /// One after another in request order (Tyk's `suppress_parallel_execution`, KrakenD's
    /// `sequential`); with `stop_on_failure`, the items after the first failure (not 2xx or
    /// 3xx) are not sent and answer 424 `FailedDependency.NotRun`.
    Sequential { stop_on_failure: bool },
}

/// One reply, ready to write. `Content-Length` and `X-Request-Id` are added by the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// `None` for a reply without a body (204).
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// Extra response headers (e.g. `Allow` on 405).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The items (by index) whose upstream answer the dialect could not use (not its format,
    /// not the call's id, not JSON) and answered with an error in its place: the batch counts
    /// them as `upstream_error`, whatever status the upstream gave.
    pub unusable: Vec<usize>,
    /// Fields the reply promises that an upstream answer lacked, written as `null` (fan-out
    /// `missing_field = "null"`): counted, so a broken upstream shows.
    pub fields_missing: usize,
}

impl Reply {
    /// Adds `Retry-After` (whole seconds, rounded up) when there is a time to give.
    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        if let Some(after) = after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            self.headers
                .push((http::header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        self
    }

    /// A JSON reply.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: body.into(),
            headers: Vec::new(),
            unusable: Vec::new(),
            fields_missing: 0,
        }
    }

    /// A reply with no body at all.
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            content_type: None,
            body: Bytes::new(),
            headers: Vec::new(),
            unusable: Vec::new(),
            fields_missing: 0,
        }
    }
}

/// A batch dialect: pure decode and encode.
pub trait Dialect: Send + Sync {
    /// What the encoder needs to remember about each item (its id, ...).
    type Meta: Send;

    /// Turns the batch request into a plan, or refuses the whole batch.
    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<Self::Meta>, Rejection>;

    /// Builds the reply from each item's outcome, in the plan's order.
    fn encode(&self, meta: Vec<Self::Meta>, outcomes: Vec<Outcome>) -> Reply;

    /// Builds the reply for a whole-batch refusal.
    fn reject(&self, rejection: &Rejection) -> Reply;

    /// For a progressive reply: what `encode` writes before the first item's element and
    /// after the last (elements are joined by `,`), when this batch's reply is a 200
    /// `application/json` list of `stream_record` elements in request order; `None` when it
    /// is not (a single JSON-RPC call, only notifications), and the reply is buffered.
    fn progressive_frame(&self, _meta: &[Self::Meta]) -> Option<(&'static [u8], &'static [u8])> {
        None
    }

    /// Item `index`'s answer as a streamed record, the moment it settles: the element it has
    /// in the buffered reply, on its own (`None`: it has none, e.g. a JSON-RPC notification,
    /// or the dialect does not stream). `status_of(i)` is the status of item `i` if it has
    /// settled, for answers that name another item's (envelope dependencies).
    fn stream_record(
        &self,
        _meta: &[Self::Meta],
        _index: usize,
        _outcome: &Outcome,
        _status_of: &dyn Fn(usize) -> Option<u16>,
    ) -> Option<StreamRecord> {
        None
    }

    /// What one upstream response adds to the reply, in encoded bytes, for the reply budget
    /// (`max_reply_bytes`). The default counts body and headers as they came, which is what
    /// a dialect that embeds JSON as is or picks fields out of it writes at most.
    fn reply_cost(&self) -> fn(&UpstreamResponse) -> usize {
        UpstreamResponse::raw_size
    }

    /// The outer HTTP methods this dialect answers.
    fn accepts_method(&self, method: &Method) -> bool {
        method == Method::POST
    }

    /// The refusal for a body that is not even valid HTTP framing (a malformed chunked
    /// encoding): the dialect's own "unreadable body" answer.
    fn malformed_body(&self, message: String) -> Rejection {
        Rejection::new(RejectionKind::ParseError, "MalformedBody", message)
    }

    /// Whether a body without any `Content-Type` is refused (415). The fan-out dialect reads
    /// such a body as JSON: `requests.get(url, data=...)` and similar clients send a GET body
    /// with no Content-Type at all.
    fn requires_content_type(&self) -> bool {
        true
    }

    /// Whether the outer `Content-Type` names a media type this dialect reads (its charset is
    /// checked separately, by `is_utf8_charset`).
    fn accepts_content_type(&self, value: &[u8]) -> bool {
        is_json_content_type(value)
    }

    /// The media type named in a 415 answer.
    fn media_type_name(&self) -> &'static str {
        "application/json"
    }

    /// Whether the body is JSON, so a `charset` other than UTF-8 is refused (415).
    fn is_json(&self) -> bool {
        true
    }

    /// How identical items share an answer when the request alone does not say it
    /// (`ItemSharing`); `None`: by the request as it is.
    fn item_sharing(&self) -> Option<crate::item::ItemSharing> {
        None
    }
}

/// One item's answer as a streamed record.
#[derive(Debug)]
pub struct StreamRecord {
    /// The answer's JSON, as the buffered reply would carry it.
    pub json: Vec<u8>,
    /// The dialect could not use the upstream's answer (it counts as `upstream_error`, as
    /// `Reply::unusable` says for a buffered reply).
    pub unusable: bool,
    /// Configured fields the answer lacked (fan-out; as `Reply::fields_missing`).
    pub fields_missing: usize,
}

/// An item's method under the route's method policy (case-insensitive), or its 405 naming
/// the allowed ones.
pub fn allowed_method(allowed: &[Method], name: &str) -> Result<Method, ItemRefusal> {
    let upper = name.to_ascii_uppercase();
    match allowed.iter().find(|m| m.as_str() == upper) {
        Some(method) => Ok(method.clone()),
        None => Err(ItemRefusal::MethodNotAllowed {
            message: format!(
                "method {name:?} is not allowed here (allowed: {})",
                allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `text` as a JSON string (quoted and escaped by serde_json).
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The length of `text` written as a JSON string by serde_json: quotes, `\"` and `\\`, the
/// two-byte escapes of \b \t \n \f \r, and `\u00XX` for the other control characters.
pub fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The media type of a Content-Type value, lower-cased, without parameters.
pub fn media_type(value: &[u8]) -> Option<String> {
    let essence = value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    std::str::from_utf8(essence)
        .ok()
        .map(str::to_ascii_lowercase)
}

/// Whether an outer Content-Type is JSON (`application/json`, `application/*+json`, with params).
pub fn is_json_content_type(value: &[u8]) -> bool {
    media_type(value).is_some_and(|essence| {
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// Whether a Content-Type's `charset` parameter, if any, is UTF-8. JSON exchanged between
/// systems is UTF-8 (RFC 8259 section 8.1); a body declared `charset=utf-16` or `latin1` is
/// refused with 415 instead of failing later as a parse error.
pub fn is_utf8_charset(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    text.split(';').skip(1).all(|parameter| {
        let Some((name, charset)) = parameter.split_once('=') else {
            return true;
        };
        if !name.trim().eq_ignore_ascii_case("charset") {
            return true;
        }
        let charset = charset.trim().trim_matches('"');
        charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
    })
}

/// The bytes after a leading UTF-8 byte order mark. RFC 8259 section 8.1: senders must not add
/// one, parsers may ignore it; some .NET and PowerShell clients and servers do send one.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_other_than_utf8_are_not_json_we_read() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF8",
            "application/json; charset=\"utf-8\"; boundary=x",
        ] {
            assert!(is_utf8_charset(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "application/json; charset=utf-16",
            "application/json; Charset=ISO-8859-1",
            "application/json; charset=",
        ] {
            assert!(!is_utf8_charset(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn byte_order_mark_is_stripped_once() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBF{}"), b"{}");
        assert_eq!(strip_bom(b"{}"), b"{}");
        assert_eq!(strip_bom(b"\xEF\xBB"), b"\xEF\xBB");
    }
}
