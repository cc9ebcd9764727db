//! The vocabulary of one item, shared by every layer: the request sent upstream, the
//! upstream's response, and what became of the item (`Outcome`, with its fixed `ItemClass`),
//! including a typed `Failure` and the one table mapping it to status, code and class.
//!
//! It lives below everything that uses it (mini-redis's `frame.rs` is the model), so the
//! executor, the upstream client and the metrics import this module, never a dialect.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use std::future::Future;
use tokio::time::Instant;

/// Sends one sub-request and reports what happened: the seam between the executor and the
/// upstream client, here with the vocabulary so neither imports the other. Implemented over
/// pingora's connector in `upstream.rs`, and by in-memory fakes in the executor's tests.
///
/// The executor decides when an item must be done (`until`: its start plus the item
/// timeout) and stops waiting then (the item is a `Timeout`). The upstream is told, so no
/// retry starts past it and an attempt cut off there counts against its address.
pub trait Upstream: Send + Sync + 'static {
    fn send(&self, request: SubRequest, until: Instant) -> impl Future<Output = Outcome> + Send;
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

/// An item as the executor gets it: ready to send, or finished only once the earlier answers
/// it refers to are in (references between items, `dialect::reference`).
#[derive(Debug)]
pub enum Planned {
    Ready(SubRequest),
    Deferred(Box<dyn RequestTemplate>),
}

impl Planned {
    /// The request, when it is ready to send as it is.
    pub fn ready(&self) -> Option<&SubRequest> {
        match self {
            Planned::Ready(request) => Some(request),
            Planned::Deferred(_) => None,
        }
    }
}

impl From<SubRequest> for Planned {
    fn from(request: SubRequest) -> Self {
        Planned::Ready(request)
    }
}

/// The outcomes so far, by item index (`None`: not settled yet).
pub type Answers<'a> = &'a dyn Fn(usize) -> Option<&'a Outcome>;

/// An item whose request is finished from earlier items' answers.
pub trait RequestTemplate: Send + Sync + std::fmt::Debug {
    /// The items whose answers it reads (each also one of its dependencies).
    fn sources(&self) -> &[usize];
    /// The finished request, through the same guards as any item, or why it cannot be
    /// finished (never sent). `answers(i)`: item `i`'s outcome, once it has one.
    fn finish(&self, answers: Answers<'_>) -> Result<SubRequest, Failure>;
}

/// How a dialect whose items carry their own identity in the body (a JSON-RPC call's `id`)
/// lets identical items share an answer (coalescing, the item cache): what of the request
/// identifies it, the name the route's method list is matched against, and how another
/// item's answer is made this item's own. Dialects without one share by the request as it is.
#[derive(Debug, Clone, Copy)]
pub struct ItemSharing {
    /// The request's body as it identifies the call (without its id); `None`: never shared
    /// (a notification, a body that is not a call).
    pub key_body: fn(&SubRequest) -> Option<Vec<u8>>,
    /// The call's method name.
    pub method: fn(&SubRequest) -> Option<String>,
    /// Another identical item's answer, made this item's (its own id in it).
    pub answer_for: fn(&SubRequest, Outcome) -> Outcome,
    /// Whether an answer may be kept by the cache (a JSON-RPC result, not an error).
    pub storable: fn(&UpstreamResponse) -> bool,
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

/// An item error as a dialect shows it: status, code and message (`Failure::http_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// Why an item was refused before it was sent, one variant per status. The dialect names the
/// field or rule in its own vocabulary (`code`: `InvalidParameter.Headers` for envelopes,
/// `InvalidArgument.Headers` for multipart) and says why (`message`); the status comes from
/// the one table, `ItemRefusal::status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemRefusal {
    /// A field is missing or malformed, or a URL or header breaks a guard's rule.
    Invalid { code: &'static str, message: String },
    /// A well-formed URL the route's policy refuses (outside its prefixes, a batch route).
    Forbidden { code: &'static str, message: String },
    /// The method is not among the route's allowed methods.
    MethodNotAllowed { message: String },
    /// The item's request head is larger than the route allows.
    HeadTooLarge { code: &'static str, message: String },
}

impl ItemRefusal {
    pub fn status(&self) -> u16 {
        match self {
            ItemRefusal::Invalid { .. } => 400,
            ItemRefusal::Forbidden { .. } => 403,
            ItemRefusal::MethodNotAllowed { .. } => 405,
            ItemRefusal::HeadTooLarge { .. } => 431,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ItemRefusal::Invalid { code, .. }
            | ItemRefusal::Forbidden { code, .. }
            | ItemRefusal::HeadTooLarge { code, .. } => code,
            ItemRefusal::MethodNotAllowed { .. } => "MethodNotAllowed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ItemRefusal::Invalid { message, .. }
            | ItemRefusal::Forbidden { message, .. }
            | ItemRefusal::MethodNotAllowed { message }
            | ItemRefusal::HeadTooLarge { message, .. } => message,
        }
    }

    /// A malformed field, named by `code`.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ItemRefusal::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// What became of one item. A value, not an error: each dialect maps it to its own format
/// in one ordered `match`.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream answered (any status).
    Response(UpstreamResponse),
    /// No answer to relay: refused, timed out, failed or cancelled.
    Failed(Failure),
}

/// Why an item has no upstream answer, with what a retry or a log needs to know: whose
/// fault it was and how much of the request reached the upstream.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub sent: Sent,
    /// The underlying error in words (the connector's, the parser's), for the logs; `None`
    /// where the kind says it all. Replies carry it only where the mapping says it is the
    /// client's business (`http_error`).
    pub detail: Option<String>,
}

/// What went wrong, one variant per distinct condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused by the dialect or a guard; never sent.
    Refused(ItemRefusal),
    /// The item's own timeout, or the upstream's shorter read or write timeout, fired.
    Timeout,
    /// The batch deadline passed before the item finished (or before it could start).
    BatchDeadline,
    /// No connection to the upstream could be made.
    Connect,
    /// The TLS handshake with the upstream failed (certificate not trusted or not for the
    /// name, no common version or cipher, the upstream not speaking TLS).
    Tls,
    /// The connection failed once the request was on it (reset, closed, invalid response).
    Connection,
    /// The upstream body exceeded `max_item_response_bytes`.
    ResponseTooLarge { limit: usize },
    /// The reply as a whole would exceed `max_reply_bytes`; this item's body was dropped.
    ReplyBudgetExceeded { limit: usize },
    /// The client went away; the item was not started or was abandoned.
    Cancelled,
    /// A sequential batch stopped at an earlier item's failure; this one was never sent.
    NotRun,
    /// An item this one depends on (by index in the batch) did not answer 2xx; this one was
    /// never sent.
    DependencyFailed { dependency: usize },
    /// A reference to an earlier item's answer selected nothing (or that answer was not
    /// JSON, or expanded past its limit); this one was never sent.
    ReferenceUnresolved,
    /// The upstream's answer to the batch this call was gathered into did not answer it
    /// (`crate::upstream_batch`): not an array, no element with its id, an HTTP error.
    UpstreamBatch,
    /// batchgate itself failed while running the item (its task panicked).
    Internal,
}

/// Whose fault a failure is: it decides 4xx against 5xx, and who should be paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Proxy,
}

/// How much of the request reached the upstream when the item failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Not one byte: the upstream cannot have acted on it.
    Nothing,
    /// Some or all of it, and no complete answer came back: it may have been acted on.
    Maybe,
    /// All of it, and an answer began (it was unusable: too large, malformed, cut off).
    All,
}

/// How a failure shows on the wire and in the metrics: the one ordered table.
struct Mapping {
    status: u16,
    code: &'static str,
    class: ItemClass,
    fault: Fault,
    /// The message before any detail.
    message: &'static str,
    /// Whether the failure's detail is the client's business (which of its items a dependent
    /// waited for). Every other detail names addresses, OS errors or parser internals: it goes
    /// to the logs, never into a reply.
    public_detail: bool,
}

impl FailureKind {
    /// The one place that decides what a failure becomes: HTTP status and error code for the
    /// dialects that report them, the metric class, and whose fault it was. Dialects render
    /// the result in their own format; none of them re-decides it.
    #[rustfmt::skip] // a table: one line per kind reads best
    fn mapping(&self) -> Mapping {
        use FailureKind::*;
        use ItemClass as C;
        let (status, code, class, fault, message) = match self {
            Refused(e) => (e.status(), e.code(), C::Rejected, Fault::Client, ""),
            Timeout => (504, "GatewayTimeout", C::Timeout, Fault::Upstream, TIMEOUT),
            BatchDeadline => (504, "BatchDeadlineExceeded", C::Timeout, Fault::Upstream, DEADLINE),
            Connect => (502, "UpstreamConnectFailed", C::ConnectError, Fault::Upstream, CONNECT),
            Tls => (502, "UpstreamTlsFailed", C::TlsError, Fault::Upstream, TLS),
            Connection => (502, "UpstreamFailed", C::UpstreamError, Fault::Upstream, CONNECTION),
            ResponseTooLarge { .. } => (502, "UpstreamResponseTooLarge", C::UpstreamError, Fault::Upstream, ""),
            ReplyBudgetExceeded { .. } => (502, "ReplyTooLarge", C::UpstreamError, Fault::Proxy, ""),
            Cancelled => (499, "Cancelled", C::Cancelled, Fault::Client, CANCELLED),
            NotRun => (424, "FailedDependency.NotRun", C::Cancelled, Fault::Client, NOT_RUN),
            DependencyFailed { .. } => (424, "FailedDependency", C::Cancelled, Fault::Client, DEPENDENCY),
            ReferenceUnresolved => (424, "FailedDependency.Reference", C::Cancelled, Fault::Client, REFERENCE),
            UpstreamBatch => (502, "UpstreamBatchReply", C::UpstreamError, Fault::Upstream, UPSTREAM_BATCH),
            Internal => (500, "InternalError", C::Internal, Fault::Proxy, INTERNAL),
        };
        // These details are batchgate's own words about the client's items, never an address.
        let public_detail = matches!(self, DependencyFailed { .. } | ReferenceUnresolved | UpstreamBatch);
        Mapping { status, code, class, fault, message, public_detail }
    }
}

const TIMEOUT: &str = "the upstream did not answer in time";
const DEADLINE: &str = "the batch deadline passed before this item finished";
const CONNECT: &str = "could not connect to the upstream";
const TLS: &str = "the TLS handshake with the upstream failed";
const CONNECTION: &str = "the upstream connection failed";
const CANCELLED: &str = "the client closed the connection";
const NOT_RUN: &str = "not run: an earlier item of this sequential batch failed";
const DEPENDENCY: &str = "not run: an item it depends on did not succeed";
const REFERENCE: &str = "not run: a reference to an earlier answer could not be resolved";
const INTERNAL: &str = "internal error while running the item";
const UPSTREAM_BATCH: &str =
    "the upstream's answer to the batch this call was sent in did not answer it";

impl Failure {
    pub fn new(kind: FailureKind, sent: Sent) -> Self {
        Failure {
            kind,
            sent,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn class(&self) -> ItemClass {
        self.kind.mapping().class
    }

    pub fn fault(&self) -> Fault {
        self.kind.mapping().fault
    }

    /// Status, code and message for dialects that report one per item.
    pub fn http_error(&self) -> ItemError {
        let mapping = self.kind.mapping();
        let message = match (&self.kind, &self.detail) {
            (FailureKind::Refused(refusal), _) => refusal.message().to_string(),
            (FailureKind::ResponseTooLarge { limit }, _) => {
                format!("the upstream body exceeded {limit} bytes")
            }
            (FailureKind::ReplyBudgetExceeded { limit }, _) => {
                format!("the batch reply would exceed {limit} bytes")
            }
            (_, Some(detail)) if mapping.public_detail => format!("{}: {detail}", mapping.message),
            _ => mapping.message.to_string(),
        };
        ItemError {
            status: mapping.status,
            code: mapping.code,
            message,
        }
    }
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
    TlsError,
    UpstreamError,
    Rejected,
    Cancelled,
    /// batchgate itself failed (an item task panicked): not the upstream's doing, so not in
    /// the upstream error alert; a bug to report.
    Internal,
}

impl ItemClass {
    /// Every class, in discriminant order.
    pub const ALL: [ItemClass; 11] = [
        ItemClass::Status2xx,
        ItemClass::Status3xx,
        ItemClass::Status4xx,
        ItemClass::Status5xx,
        ItemClass::Timeout,
        ItemClass::ConnectError,
        ItemClass::TlsError,
        ItemClass::UpstreamError,
        ItemClass::Rejected,
        ItemClass::Cancelled,
        ItemClass::Internal,
    ];

    /// Whether an item of this class failed: anything but a 2xx or 3xx answer.
    pub fn is_failure(self) -> bool {
        !matches!(self, ItemClass::Status2xx | ItemClass::Status3xx)
    }

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemClass::Status2xx => "2xx",
            ItemClass::Status3xx => "3xx",
            ItemClass::Status4xx => "4xx",
            ItemClass::Status5xx => "5xx",
            ItemClass::Timeout => "timeout",
            ItemClass::ConnectError => "connect_error",
            ItemClass::TlsError => "tls_error",
            ItemClass::UpstreamError => "upstream_error",
            ItemClass::Rejected => "rejected",
            ItemClass::Cancelled => "cancelled",
            ItemClass::Internal => "internal",
        }
    }
}

impl Outcome {
    /// A failure of `kind`, with nothing more to say about it.
    pub fn failed(kind: FailureKind, sent: Sent) -> Self {
        Outcome::Failed(Failure::new(kind, sent))
    }

    /// An item refused before it was sent.
    pub fn refused(error: ItemRefusal) -> Self {
        Outcome::failed(FailureKind::Refused(error), Sent::Nothing)
    }

    pub fn class(&self) -> ItemClass {
        match self {
            Outcome::Response(r) => match r.status {
                200..=299 => ItemClass::Status2xx,
                300..=399 => ItemClass::Status3xx,
                400..=499 => ItemClass::Status4xx,
                _ => ItemClass::Status5xx,
            },
            Outcome::Failed(failure) => failure.class(),
        }
    }

    /// The item's HTTP status: the upstream's, or the one its failure maps to.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Response(r) => r.status,
            Outcome::Failed(failure) => failure.kind.mapping().status,
        }
    }

    /// Whether the item counts as a failure in a batch summary.
    pub fn is_failure(&self) -> bool {
        self.class().is_failure()
    }

    /// What went wrong, if the item has no answer.
    pub fn failure_kind(&self) -> Option<&FailureKind> {
        self.failure().map(|failure| &failure.kind)
    }

    /// The failure, if the item has no answer.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Response(_) => None,
            Outcome::Failed(failure) => Some(failure),
        }
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
    /// Admission: the queue of items waiting for permits is full.
    QueueFull,
    /// Admission: the queue ahead would not drain within `queue_budget`.
    QueueBudget,
    /// Admission: the client has `per_client_items` items outstanding.
    ClientLimit,
    /// Admission: held batch bodies would exceed `max_held_bytes`.
    MemoryBudget,
    /// The route's rate limit (`[routes.rate_limit]`): over it, or more items than its burst.
    RateLimited,
    /// The rate limit's shared store cannot be asked and the route fails closed.
    RateLimitUnavailable,
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
            RejectionKind::QueueFull => "queue_full",
            RejectionKind::QueueBudget => "queue_budget",
            RejectionKind::ClientLimit => "client_limit",
            RejectionKind::MemoryBudget => "memory",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::RateLimitUnavailable => "rate_limit_unavailable",
        }
    }

    /// Default HTTP status of a rejection of this kind.
    pub fn status(self) -> u16 {
        match self {
            RejectionKind::BodyTooLarge => 413,
            RejectionKind::UnsupportedMediaType => 415,
            RejectionKind::MethodNotAllowed => 405,
            RejectionKind::BodyTimeout => 408,
            RejectionKind::QueueFull
            | RejectionKind::QueueBudget
            | RejectionKind::MemoryBudget
            | RejectionKind::RateLimitUnavailable => 503,
            RejectionKind::ClientLimit | RejectionKind::RateLimited => 429,
            RejectionKind::NotAllowed => 403,
            _ => 400,
        }
    }
}

#[cfg(test)]
mod tests;
