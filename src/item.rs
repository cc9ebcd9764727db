//! The vocabulary of one item, shared by every layer: the request sent upstream, the
//! upstream's response, and what became of the item (`Outcome`, with its fixed `ItemClass`).
//!
//! It lives below everything that uses it (mini-redis's `frame.rs` is the model), so the
//! executor, the upstream client and the metrics import this module, never a dialect.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

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
