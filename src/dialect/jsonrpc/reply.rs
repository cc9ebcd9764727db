//! The reply side of the JSON-RPC dialect: an upstream answer checked before it is relayed
//! (a response object whose id is the call's), and every failure rendered as one server
//! error object (`UpstreamError`, one table of codes).

use super::super::{Failure, FailureKind, Outcome};
use super::present;
use crate::config::RpcError;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// How upstream failures appear: one server error code each (documented in docs/DIALECTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectError,
    Timeout,
    InvalidReply,
    HttpStatus,
    IdMismatch,
    ConnectionFailed,
    TooLarge,
    /// batchgate failed itself: JSON-RPC's own "Internal error".
    Internal,
}

impl UpstreamError {
    pub fn code(self) -> i64 {
        match self {
            UpstreamError::ConnectError => -32000,
            UpstreamError::Timeout => -32001,
            UpstreamError::InvalidReply => -32002,
            UpstreamError::HttpStatus => -32003,
            UpstreamError::IdMismatch => -32004,
            UpstreamError::ConnectionFailed => -32005,
            UpstreamError::TooLarge => -32006,
            UpstreamError::Internal => -32603,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            UpstreamError::ConnectError => "Upstream unavailable",
            UpstreamError::Timeout => "Upstream timeout",
            UpstreamError::InvalidReply => "Invalid upstream reply",
            UpstreamError::HttpStatus => "Upstream HTTP error",
            UpstreamError::IdMismatch => "Upstream reply id mismatch",
            UpstreamError::ConnectionFailed => "Upstream connection failed",
            UpstreamError::TooLarge => "Upstream reply too large",
            UpstreamError::Internal => "Internal error",
        }
    }
}

/// The members of an upstream reply we check before relaying it.
#[derive(Deserialize)]
struct ReplyFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

impl ReplyFields<'_> {
    /// Exactly one of `result` and `error`. A `null` beside the other member is tolerated, as
    /// JSON-RPC 1.0 servers (and older Bitcoin Core) always write both:
    /// `{"result":7,"error":null,"id":1}` is a success, `{"result":null,"error":{..}}` an error.
    fn is_response(&self) -> bool {
        let non_null = |m: Option<&RawValue>| m.is_some_and(|v| v.get() != "null");
        if non_null(self.error) {
            !non_null(self.result)
        } else {
            self.result.is_some()
        }
    }
}

/// Checks an upstream reply for the call with `id`; returns the object's bytes to relay
/// (without surrounding whitespace or a UTF-8 byte order mark, which are not part of it).
pub(super) fn check_reply<'b>(
    id: &[u8],
    status: u16,
    body: &'b [u8],
) -> Result<&'b [u8], UpstreamError> {
    let object = super::super::strip_bom(body.trim_ascii()).trim_ascii();
    let fields = std::str::from_utf8(object)
        .ok()
        .filter(|text| text.starts_with('{'))
        .and_then(|text| serde_json::from_str::<ReplyFields<'_>>(text).ok())
        .filter(ReplyFields::is_response);
    let Some(fields) = fields else {
        return Err(if (200..300).contains(&status) {
            UpstreamError::InvalidReply
        } else {
            UpstreamError::HttpStatus
        });
    };
    let same_id = fields.id.is_some_and(|reply_id| {
        match (
            serde_json::from_str::<Value>(reply_id.get()),
            serde_json::from_slice::<Value>(id),
        ) {
            (Ok(reply), Ok(sent)) => same_id(&reply, &sent),
            // An id serde cannot hold (a string with a lone surrogate escape): same text.
            _ => reply_id.get().as_bytes() == id,
        }
    });
    if same_id {
        Ok(object)
    } else {
        Err(UpstreamError::IdMismatch)
    }
}

/// Whether a reply id is the request's id. Numbers compare by value, the way the JavaScript,
/// PHP or Lua server that wrote the reply saw them: `1` and `1.0`, `0` and `-0`, `1e3` and
/// `1000` are one id. Integers that fit 64 bits compare exactly.
fn same_id(reply: &Value, sent: &Value) -> bool {
    match (reply, sent) {
        (Value::Number(a), Value::Number(b)) => {
            match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
                (Some(a), Some(b), _, _) => a == b,
                (_, _, Some(a), Some(b)) => a == b,
                _ => a.as_f64().zip(b.as_f64()).is_some_and(|(a, b)| a == b),
            }
        }
        _ => reply == sent,
    }
}

/// JSON-RPC's rendering of a failure: its server error code, and the detail for `data` (a
/// limit; never the connector's words, which name addresses and go to the logs).
pub(super) fn upstream_error(failure: &Failure) -> (UpstreamError, Option<String>) {
    match failure.kind {
        FailureKind::Timeout | FailureKind::BatchDeadline => (UpstreamError::Timeout, None),
        FailureKind::Connect | FailureKind::Tls => (UpstreamError::ConnectError, None),
        FailureKind::ResponseTooLarge { limit } | FailureKind::ReplyBudgetExceeded { limit } => (
            UpstreamError::TooLarge,
            Some(format!("limit {limit} bytes")),
        ),
        FailureKind::Connection => (UpstreamError::ConnectionFailed, None),
        FailureKind::Internal => (UpstreamError::Internal, None),
        // batchgate's own words: which part of the batch's answer was missing.
        FailureKind::UpstreamBatch => (UpstreamError::InvalidReply, failure.detail.clone()),
        FailureKind::Cancelled
        | FailureKind::NotRun
        | FailureKind::DependencyFailed { .. }
        | FailureKind::ReferenceUnresolved
        | FailureKind::Refused(_) => (UpstreamError::ConnectionFailed, None),
    }
}

pub(super) fn reason(kind: UpstreamError, outcome: &Outcome) -> &'static str {
    let deadline = outcome
        .failure()
        .is_some_and(|f| f.kind == FailureKind::BatchDeadline);
    match kind {
        _ if deadline => "batch_deadline",
        UpstreamError::Timeout => "timeout",
        UpstreamError::ConnectError => "connect_error",
        UpstreamError::InvalidReply => "invalid_reply",
        UpstreamError::HttpStatus => "http_status",
        UpstreamError::IdMismatch => "id_mismatch",
        UpstreamError::ConnectionFailed => "connection_failed",
        UpstreamError::TooLarge => "too_large",
        UpstreamError::Internal => "internal",
    }
}

/// `{"jsonrpc":"2.0","error":{"code":..,"message":..[,"data":..]},"id":<id bytes>}`.
pub(super) fn error_object(error: &RpcError, data: Option<Value>, id: &[u8]) -> Bytes {
    let mut inner = json!({"code": error.code, "message": error.message});
    if let Some(data) = data {
        inner["data"] = data;
    }
    let mut out = Vec::with_capacity(96 + id.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":");
    out.extend_from_slice(inner.to_string().as_bytes());
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id);
    out.push(b'}');
    Bytes::from(out)
}
