//! The JSON-RPC 2.0 dialect: a batch (JSON array) fanned out as one POST per element.
//!
//! Follows jsonrpc.org/specification sections 6 and 7: parse errors and empty batches get one
//! error object, invalid elements get a `-32600` reply each and are never sent, notifications
//! are sent but get no reply entry (a batch of only notifications answers 204). Each element is
//! forwarded as its exact bytes and each upstream reply object is relayed as it came. Vendor
//! differences (Limelight's limit of 3 with `-32099 Batch Error`, ...) live in the route's
//! profile. Upstream failures become the server errors of `UpstreamError`, one table.

use super::{
    BatchRequest, Dialect, ItemRefusal, Order, Outcome, Plan, Planned, Rejection, RejectionKind,
    Reply, StreamRecord, SubRequest,
};
use crate::config::{fold_case, usable_method, JsonRpcConfig, RpcError};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Method;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// A JSON-RPC route.
#[derive(Debug, Clone)]
pub struct JsonRpc {
    pub config: Arc<JsonRpcConfig>,
    pub max_items: usize,
    /// Upstream name, reported in error `data`.
    pub upstream: String,
}

/// What the encoder remembers about one element.
#[derive(Debug, Clone)]
pub struct JsonRpcMeta {
    /// The request was one object, not an array.
    single: bool,
    kind: Element,
}

#[derive(Debug, Clone)]
enum Element {
    /// A call: its reply must carry this id (the JSON text the client sent).
    Call { id: Bytes },
    /// A notification: sent, never answered.
    Notification,
    /// Refused before sending; the error object to answer with (`None`: a notification,
    /// which gets no reply even when refused).
    Refused(Option<Bytes>),
}

/// Spec error codes (section 5.1).
const PARSE_ERROR: (i64, &str) = (-32700, "Parse error");
const INVALID_REQUEST: (i64, &str) = (-32600, "Invalid Request");
const METHOD_NOT_FOUND: (i64, &str) = (-32601, "Method not found");
/// Admission refusals, in the implementation-defined server error range (after
/// `UpstreamError`'s -32000..-32006).
const OVERLOADED: (i64, &str) = (-32007, "Server overloaded");
const CLIENT_LIMIT: (i64, &str) = (-32008, "Too many requests from this client");
const RATE_LIMITED: (i64, &str) = (-32009, "Rate limit exceeded");

/// The members of a request object we look at; `id` keeps "absent" apart from `null`.
#[derive(Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// A member that is present, even as `null`, becomes `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

impl Dialect for JsonRpc {
    type Meta = JsonRpcMeta;

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<JsonRpcMeta>, Rejection> {
        let parse_error =
            |detail: String| Rejection::new(RejectionKind::ParseError, "parse_error", detail);
        let raw: &RawValue =
            serde_json::from_slice(request.body).map_err(|e| parse_error(e.to_string()))?;
        let text = raw.get();
        if !text.starts_with('[') {
            // A single call: checked like an element, then relayed as is.
            let mut plan = Plan {
                order: Order::default(),
                after: Vec::new(),
                meta: Vec::new(),
                items: Vec::new(),
            };
            self.push_element(&mut plan, request.body, raw, true);
            return Ok(plan);
        }
        let elements: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        self.check_batch(&elements)?;
        let mut plan = Plan {
            order: Order::default(),
            after: Vec::new(),
            meta: Vec::with_capacity(elements.len()),
            items: Vec::with_capacity(elements.len()),
        };
        for element in elements {
            self.push_element(&mut plan, request.body, element, false);
        }
        Ok(plan)
    }

    fn encode(&self, meta: Vec<JsonRpcMeta>, outcomes: Vec<Outcome>) -> Reply {
        if let (Some(first), Some(outcome), 1) = (meta.first(), outcomes.first(), meta.len()) {
            if first.single {
                return self.encode_single(&first.kind, outcome);
            }
        }
        let mut out = Vec::with_capacity(outcomes.len() * 64 + 2);
        out.push(b'[');
        let mut replies = 0;
        let mut unusable = Vec::new();
        for (index, (meta, outcome)) in meta.iter().zip(outcomes.iter()).enumerate() {
            let reply = match &meta.kind {
                Element::Notification | Element::Refused(None) => continue,
                Element::Refused(Some(error)) => error.clone(),
                Element::Call { id } => {
                    let (reply, replaced) = self.element_reply(id, outcome);
                    if replaced {
                        unusable.push(index);
                    }
                    reply
                }
            };
            if replies > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&reply);
            replies += 1;
        }
        if replies == 0 {
            return Reply::empty(204);
        }
        out.push(b']');
        let mut reply = Reply::json(200, out);
        reply.unusable = unusable;
        reply
    }

    fn progressive_frame(&self, meta: &[JsonRpcMeta]) -> Option<(&'static [u8], &'static [u8])> {
        let single = meta.first().is_some_and(|m| m.single);
        let replies = meta
            .iter()
            .any(|m| matches!(m.kind, Element::Call { .. } | Element::Refused(Some(_))));
        (!single && replies).then_some((b"[", b"]"))
    }

    fn stream_record(
        &self,
        meta: &[JsonRpcMeta],
        index: usize,
        outcome: &Outcome,
        _status_of: &dyn Fn(usize) -> Option<u16>,
    ) -> Option<StreamRecord> {
        let (json, unusable) = match &meta.get(index)?.kind {
            Element::Notification | Element::Refused(None) => return None,
            Element::Refused(Some(error)) => (error.clone(), false),
            Element::Call { id } => self.element_reply(id, outcome),
        };
        Some(StreamRecord {
            json: json.to_vec(),
            unusable,
            fields_missing: 0,
        })
    }

    fn item_sharing(&self) -> Option<crate::item::ItemSharing> {
        Some(sharing::SHARING)
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let profile = &self.config.profile;
        let (error, status, array) = match rejection.kind {
            RejectionKind::ParseError => (rpc(PARSE_ERROR), 200, false),
            RejectionKind::Empty => (profile.empty.clone(), 200, profile.batch_errors_as_array),
            RejectionKind::TooManyItems => {
                (profile.too_many.clone(), 200, profile.batch_errors_as_array)
            }
            // A batch-level content error like the two above, answered in a 200 the same way.
            RejectionKind::DuplicateId => {
                (rpc(INVALID_REQUEST), 200, profile.batch_errors_as_array)
            }
            // Overload is the server's state, not the request's fault: a server error.
            RejectionKind::QueueFull
            | RejectionKind::QueueBudget
            | RejectionKind::MemoryBudget
            | RejectionKind::RateLimitUnavailable => {
                (rpc(OVERLOADED), RejectionKind::QueueFull.status(), false)
            }
            RejectionKind::ClientLimit => (rpc(CLIENT_LIMIT), rejection.kind.status(), false),
            RejectionKind::RateLimited => (rpc(RATE_LIMITED), rejection.kind.status(), false),
            kind => (rpc(INVALID_REQUEST), kind.status(), false),
        };
        let data = match rejection.kind {
            RejectionKind::ParseError | RejectionKind::Empty | RejectionKind::TooManyItems => None,
            kind => Some(json!({"reason": kind.as_str(), "detail": rejection.message})),
        };
        let object = error_object(&error, data, b"null");
        let body = if array {
            [&b"["[..], &object, b"]"].concat()
        } else {
            object.to_vec()
        };
        let mut reply = Reply::json(status, body);
        if rejection.kind == RejectionKind::MethodNotAllowed {
            reply
                .headers
                .push((http::header::ALLOW, HeaderValue::from_static("POST")));
        }
        reply
    }

    /// `application/json` and its `+json` relatives, plus the media types of the JSON-RPC over
    /// HTTP draft that clients such as jsonrpc4j send: `application/json-rpc` and
    /// `application/jsonrequest`.
    fn accepts_content_type(&self, value: &[u8]) -> bool {
        super::is_json_content_type(value)
            || super::media_type(value).is_some_and(|essence| {
                essence == "application/json-rpc" || essence == "application/jsonrequest"
            })
    }
}

impl JsonRpc {
    /// The whole-batch checks: 1..=max_items elements and, with `unique_ids`, no id twice.
    fn check_batch(&self, elements: &[&RawValue]) -> Result<(), Rejection> {
        let count = elements.len();
        if count == 0 {
            return Err(Rejection::new(
                RejectionKind::Empty,
                "empty",
                "the batch is empty",
            ));
        }
        if count > self.max_items {
            let max = self.max_items;
            return Err(Rejection::new(
                RejectionKind::TooManyItems,
                "too_many_items",
                format!("the batch has {count} elements; at most {max} are allowed"),
            ));
        }
        let duplicate = self
            .config
            .profile
            .unique_ids
            .then(|| duplicate_id(elements));
        if let Some(Some(id)) = duplicate {
            // Refused whole, before anything runs: answering the first element and refusing
            // the second would give the client two answers with one id that it cannot tell
            // apart.
            return Err(Rejection::new(
                RejectionKind::DuplicateId,
                "duplicate_id",
                format!("the id {id} is used by more than one element"),
            ));
        }
        Ok(())
    }

    /// Checks one element and adds it to the plan: sent, or answered right away.
    fn push_element(
        &self,
        plan: &mut Plan<JsonRpcMeta>,
        body: &Bytes,
        raw: &RawValue,
        single: bool,
    ) {
        let (kind, item) = match self.check_element(raw) {
            Ok(kind) => {
                let request = SubRequest {
                    method: Method::POST,
                    path: self.config.upstream_path.clone(),
                    headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                    body: Some(body.slice_ref(raw.get().as_bytes())),
                };
                let kind = match kind {
                    Some(id) => Element::Call {
                        id: body.slice_ref(id.get().as_bytes()),
                    },
                    None => Element::Notification,
                };
                (kind, Ok(request))
            }
            Err(refusal) => {
                let refused =
                    Outcome::refused(ItemRefusal::invalid(refusal.reason, refusal.reason));
                (Element::Refused(refusal.reply), Err(refused))
            }
        };
        plan.meta.push(JsonRpcMeta { single, kind });
        plan.items.push(item.map(Planned::Ready));
    }

    /// `Ok(Some(id))` for a call, `Ok(None)` for a notification, `Err` when refused.
    fn check_element<'a>(&self, raw: &'a RawValue) -> Result<Option<&'a RawValue>, Refusal> {
        let (id, method) =
            request_shape(raw).map_err(|(id, reason)| invalid_request(id, reason))?;
        if !usable_method(&method) {
            return Err(invalid_request(id, "invalid_method_name"));
        }
        if !self.method_allowed(&method) {
            return Err(Refusal {
                reason: "method_not_allowed",
                // A refused notification still gets no reply (section 4.1).
                reply: id.map(|id| error_object(&rpc(METHOD_NOT_FOUND), None, id.get().as_bytes())),
            });
        }
        Ok(id)
    }

    /// The configured lists hold `method_key`s; `method` is compared in the same form.
    fn method_allowed(&self, method: &str) -> bool {
        let config = &self.config;
        if config.allowed_methods.is_none() && config.denied_methods.is_empty() {
            return true;
        }
        let method = fold_case(method);
        let method = method.as_str();
        let allowed = config
            .allowed_methods
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == method));
        allowed && !config.denied_methods.iter().any(|m| m == method)
    }

    /// The reply entry for a sent call: the upstream's object as it came, or a server error;
    /// and whether that error replaced an answer the upstream gave (one that is not a
    /// JSON-RPC response for this call, whatever its HTTP status).
    fn element_reply(&self, id: &Bytes, outcome: &Outcome) -> (Bytes, bool) {
        let failure = match outcome {
            Outcome::Response(response) => match check_reply(id, response.status, &response.body) {
                Ok(object) => return (response.body.slice_ref(object), false),
                Err(kind) => (kind, Some(response.status), None),
            },
            Outcome::Failed(failure) => {
                let (kind, detail) = upstream_error(failure);
                (kind, None, detail)
            }
        };
        let (kind, status, detail) = failure;
        let mut data = json!({"reason": reason(kind, outcome), "upstream": self.upstream});
        if let Some(status) = status {
            data["status"] = json!(status);
        }
        if let Some(detail) = detail {
            data["detail"] = json!(detail);
        }
        let object = error_object(
            &RpcError {
                code: kind.code(),
                message: kind.message().to_string(),
            },
            Some(data),
            id,
        );
        (object, status.is_some())
    }

    /// A single call: the upstream's answer as it came, or an error object with the id.
    fn encode_single(&self, kind: &Element, outcome: &Outcome) -> Reply {
        match (kind, outcome) {
            (Element::Refused(Some(error)), _) => Reply::json(200, error.clone()),
            (Element::Refused(None), _) => Reply::empty(204),
            (_, Outcome::Response(response)) => Reply {
                status: response.status,
                content_type: response.headers.get(CONTENT_TYPE).cloned(),
                body: response.body.clone(),
                headers: Vec::new(),
                unusable: Vec::new(),
                fields_missing: 0,
            },
            (kind, failure) => {
                let id = match kind {
                    Element::Call { id } => id.clone(),
                    _ => Bytes::from_static(b"null"),
                };
                let status = failure.status();
                Reply::json(status, self.element_reply(&id, failure).0)
            }
        }
    }
}

/// A `-32600 Invalid Request` refusal, answered with the element's id (or `null`). No
/// `data`: the specification's examples answer exactly code and message.
fn invalid_request(id: Option<&RawValue>, reason: &'static str) -> Refusal {
    let id = id.map_or(&b"null"[..], |id| id.get().as_bytes());
    Refusal {
        reason,
        reply: Some(error_object(&rpc(INVALID_REQUEST), None, id)),
    }
}

/// Why a request object is refused: the id to answer with, and the reason label.
type BadShape<'a> = (Option<&'a RawValue>, &'static str);

/// A request object's shape (section 4): an object with `"jsonrpc":"2.0"`, a string method,
/// structured params if any, and an id that is a string, a number or null. Returns the id
/// and the method, or the id to answer with and why not.
fn request_shape(raw: &RawValue) -> Result<(Option<&RawValue>, String), BadShape<'_>> {
    if !raw.get().starts_with('{') {
        return Err((None, "not_an_object"));
    }
    let fields: RequestFields<'_> =
        serde_json::from_str(raw.get()).map_err(|_| (None, "invalid_members"))?;
    let id = fields.id;
    if let Some(id) = id {
        let first = id.get().as_bytes().first().copied();
        let valid = matches!(first, Some(b'"' | b'-' | b'0'..=b'9')) || id.get() == "null";
        if !valid {
            return Err((None, "invalid_id"));
        }
    }
    if fields.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err((id, "jsonrpc_not_2.0"));
    }
    let method = fields
        .method
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let Some(method) = method else {
        return Err((id, "method_not_a_string"));
    };
    let structured = |p: &RawValue| p.get().starts_with('[') || p.get().starts_with('{');
    if fields.params.is_some_and(|p| !structured(p)) {
        return Err((id, "params_not_structured"));
    }
    Ok((id, method))
}

struct Refusal {
    reason: &'static str,
    reply: Option<Bytes>,
}

/// The first id (as written) that two elements share, under `unique_ids`'s comparison.
/// Elements that are not objects or have no usable id are left to the element checks.
fn duplicate_id(elements: &[&RawValue]) -> Option<String> {
    let mut seen = HashSet::with_capacity(elements.len());
    for element in elements {
        let Ok(fields) = serde_json::from_str::<RequestFields<'_>>(element.get()) else {
            continue;
        };
        // `null` counts too: two replies with a null id cannot be told apart either.
        let Some(id) = fields.id else {
            continue;
        };
        let canonical = serde_json::from_str::<Value>(id.get())
            .map(|v| canonical_id(&v))
            .unwrap_or_else(|_| id.get().to_string());
        if !seen.insert(canonical) {
            return Some(id.get().to_string());
        }
    }
    None
}

/// The id as `unique_ids` compares it: numbers by value (`1` and `1.0` are one id), strings
/// after unescaping.
fn canonical_id(id: &Value) -> String {
    match id {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            // An integral float within the exactly representable range is that integer.
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                format!("{}", f as i64)
            }
            _ => id.to_string(),
        },
        _ => id.to_string(),
    }
}

fn rpc((code, message): (i64, &str)) -> RpcError {
    RpcError {
        code,
        message: message.to_string(),
    }
}

mod reply;
mod sharing;

pub use reply::UpstreamError;
use reply::{check_reply, error_object, reason, upstream_error};

#[cfg(test)]
mod tests;
