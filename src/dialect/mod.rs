//! The vocabulary shared by all dialects, and the `Dialect` seam they plug into.
//!
//! A dialect is pure: `decode` turns the batch request's bytes into a `Plan` (one
//! `SubRequest` or an already-decided `Outcome` per item) or a whole-batch `Rejection`;
//! `encode` turns the executor's `Outcome`s back into one reply. No I/O, no clock and no
//! metrics happen here, so dialects are unit-testable and fuzzable on their own.

pub mod envelope;
pub mod fanout;
pub mod jsonrpc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

/// The outer batch request as a dialect sees it.
#[derive(Debug)]
pub struct BatchRequest<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The whole request body; dialects slice it (`Bytes::slice_ref`) instead of copying.
    pub body: &'a Bytes,
}

/// One request to send upstream, already checked by the guards.
#[derive(Debug, Clone, PartialEq)]
pub struct SubRequest {
    pub method: Method,
    /// Origin-form path and query, exactly as it goes on the request line.
    pub path: String,
    /// Item-specific headers; the batch-wide ones (forwarded, X-Request-Id, ...) are added by
    /// the upstream client once per batch, not copied into every item.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
}

/// What the upstream answered.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamResponse {
    /// The bytes of body and headers as they came: the reply cost of dialects whose encoding
    /// never grows them.
    pub fn raw_size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum::<usize>()
    }
}

/// An item refused before it was sent, with the status and code the dialect should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// What became of one item. A value, not an error: each dialect maps it to its own format
/// in one ordered `match`.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream answered (any status).
    Response(UpstreamResponse),
    /// Refused by the dialect or a guard; never sent.
    Refused(ItemError),
    /// The item's own timeout passed while it was in flight.
    TimedOut,
    /// The batch deadline passed before the item finished (or before it could start).
    DeadlineExceeded,
    /// No connection to the upstream could be made.
    ConnectFailed(String),
    /// The connection failed after the request was sent (reset, protocol error).
    UpstreamFailed(String),
    /// The upstream body exceeded `max_item_response_bytes`.
    ResponseTooLarge { limit: usize },
    /// The reply as a whole would exceed `max_reply_bytes`; this item's body was dropped.
    ReplyBudgetExceeded { limit: usize },
    /// The client went away; the item was not started or was abandoned.
    Cancelled,
}

/// The fixed classes of item outcomes: metric labels and log fields. The discriminant indexes
/// the metric handles resolved per route, so a class can never miss its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemClass {
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Timeout,
    ConnectError,
    UpstreamError,
    Rejected,
    Cancelled,
}

impl ItemClass {
    /// Every class, in discriminant order.
    pub const ALL: [ItemClass; 9] = [
        ItemClass::Status2xx,
        ItemClass::Status3xx,
        ItemClass::Status4xx,
        ItemClass::Status5xx,
        ItemClass::Timeout,
        ItemClass::ConnectError,
        ItemClass::UpstreamError,
        ItemClass::Rejected,
        ItemClass::Cancelled,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemClass::Status2xx => "2xx",
            ItemClass::Status3xx => "3xx",
            ItemClass::Status4xx => "4xx",
            ItemClass::Status5xx => "5xx",
            ItemClass::Timeout => "timeout",
            ItemClass::ConnectError => "connect_error",
            ItemClass::UpstreamError => "upstream_error",
            ItemClass::Rejected => "rejected",
            ItemClass::Cancelled => "cancelled",
        }
    }
}

impl Outcome {
    pub fn class(&self) -> ItemClass {
        match self {
            Outcome::Response(r) => match r.status {
                200..=299 => ItemClass::Status2xx,
                300..=399 => ItemClass::Status3xx,
                400..=499 => ItemClass::Status4xx,
                _ => ItemClass::Status5xx,
            },
            Outcome::Refused(_) => ItemClass::Rejected,
            Outcome::TimedOut | Outcome::DeadlineExceeded => ItemClass::Timeout,
            Outcome::ConnectFailed(_) => ItemClass::ConnectError,
            Outcome::UpstreamFailed(_)
            | Outcome::ResponseTooLarge { .. }
            | Outcome::ReplyBudgetExceeded { .. } => ItemClass::UpstreamError,
            Outcome::Cancelled => ItemClass::Cancelled,
        }
    }

    /// Whether the item counts as a failure in a batch summary.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Response(r) if r.status < 400)
    }

    /// HTTP-style status for dialects that report one per item, with a code and message.
    pub fn http_error(&self) -> Option<ItemError> {
        let (status, code, message) = match self {
            Outcome::Response(_) => return None,
            Outcome::Refused(e) => return Some(e.clone()),
            Outcome::TimedOut => (
                504,
                "GatewayTimeout",
                "the upstream did not answer in time (item timeout, or the upstream's read or write timeout)".to_string(),
            ),
            Outcome::DeadlineExceeded => (
                504,
                "BatchDeadlineExceeded",
                "the batch deadline passed before this item finished".to_string(),
            ),
            Outcome::ConnectFailed(why) => (
                502,
                "UpstreamConnectFailed",
                format!("could not connect to the upstream: {why}"),
            ),
            Outcome::UpstreamFailed(why) => (
                502,
                "UpstreamFailed",
                format!("the upstream connection failed: {why}"),
            ),
            Outcome::ResponseTooLarge { limit } => (
                502,
                "UpstreamResponseTooLarge",
                format!("the upstream body exceeded {limit} bytes"),
            ),
            Outcome::ReplyBudgetExceeded { limit } => (
                502,
                "ReplyTooLarge",
                format!("the batch reply would exceed {limit} bytes"),
            ),
            Outcome::Cancelled => (
                499,
                "Cancelled",
                "the client closed the connection".to_string(),
            ),
        };
        Some(ItemError {
            status,
            code,
            message,
        })
    }
}

/// Why a whole batch was refused (nothing was sent upstream). The kinds are fixed metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    ParseError,
    Empty,
    TooManyItems,
    DuplicateId,
    InvalidItem,
    InvalidParameter,
    NotAllowed,
    BodyTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    /// The body did not arrive within `server.client_body_timeout` (and its minimum rate).
    BodyTimeout,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::ParseError => "parse_error",
            RejectionKind::Empty => "empty",
            RejectionKind::TooManyItems => "too_many_items",
            RejectionKind::DuplicateId => "duplicate_id",
            RejectionKind::InvalidItem => "invalid_item",
            RejectionKind::InvalidParameter => "invalid_parameter",
            RejectionKind::NotAllowed => "not_allowed",
            RejectionKind::BodyTooLarge => "body_too_large",
            RejectionKind::UnsupportedMediaType => "unsupported_media_type",
            RejectionKind::MethodNotAllowed => "method_not_allowed",
            RejectionKind::BodyTimeout => "body_timeout",
        }
    }

    /// Default HTTP status of a rejection of this kind.
    pub fn status(self) -> u16 {
        match self {
            RejectionKind::BodyTooLarge => 413,
            RejectionKind::UnsupportedMediaType => 415,
            RejectionKind::MethodNotAllowed => 405,
            RejectionKind::BodyTimeout => 408,
            RejectionKind::NotAllowed => 403,
            _ => 400,
        }
    }
}

/// A whole-batch refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Dialect-specific error code (e.g. PDS `InvalidParameter.Requests`).
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(kind: RejectionKind, code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            code,
            message: message.into(),
        }
    }
}

/// The decoded batch: per item, dialect data for the reply and what to do.
#[derive(Debug)]
pub struct Plan<M> {
    pub meta: Vec<M>,
    pub items: Vec<Result<SubRequest, Outcome>>,
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
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A reply with no body at all.
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            content_type: None,
            body: Bytes::new(),
            headers: Vec::new(),
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

/// The JSON shape of a whole-request error, from a small template such as
/// `{"error_code":"{code}","error_msg":"{message}"}`. `{code}` and `{message}` are replaced
/// by the JSON-escaped text (without quotes), so the template keeps its own quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFormat {
    template: String,
}

/// PDS style, the envelope default.
pub const PDS_ERROR_FORMAT: &str = r#"{"code":"{code}","message":"{message}"}"#;
/// Huawei Cloud style, the fanout default.
pub const HUAWEI_ERROR_FORMAT: &str = r#"{"error_code":"{code}","error_msg":"{message}"}"#;

impl ErrorFormat {
    /// Checks that the template renders to a JSON object and mentions `{message}`.
    pub fn new(template: &str) -> Result<Self, String> {
        let format = ErrorFormat {
            template: template.to_string(),
        };
        if !template.contains("{message}") {
            return Err("the template must contain {message}".to_string());
        }
        let sample = format.render("Code\"\\", "a \"quoted\" message\n");
        match serde_json::from_slice::<serde_json::Value>(&sample) {
            Ok(value) if value.is_object() => Ok(format),
            _ => Err(format!(
                "the template must render to a JSON object, got {}",
                String::from_utf8_lossy(&sample)
            )),
        }
    }

    /// Renders the error body.
    pub fn render(&self, code: &str, message: &str) -> Bytes {
        let escape = |text: &str| {
            let quoted = serde_json::Value::from(text).to_string();
            quoted
                .get(1..quoted.len().saturating_sub(1))
                .unwrap_or_default()
                .to_string()
        };
        Bytes::from(
            self.template
                .replace("{code}", &escape(code))
                .replace("{message}", &escape(message)),
        )
    }
}

impl Default for ErrorFormat {
    fn default() -> Self {
        ErrorFormat {
            template: PDS_ERROR_FORMAT.to_string(),
        }
    }
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
