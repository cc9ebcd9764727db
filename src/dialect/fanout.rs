//! The ID-list fan-out dialect: one call carrying a list of ids (Huawei Cloud `access-urls`
//! style) becomes one upstream request per id, and the answers are merged into one list.
//!
//! Everything is declared in the route's config: where the ids and other parameters come from
//! (JSON body, or the query string as `ids=1&ids=2` or `ids=1,2`), their validation, the
//! per-id request template (values percent-encoded by `PathTemplate`), how each element is
//! built, and what a failed part does (`on_item_error`).

use super::{
    BatchRequest, Dialect, ItemError, Outcome, Plan, Rejection, RejectionKind, Reply, SubRequest,
};
use crate::config::{FanoutConfig, FieldRule, FieldSource, OnItemError};
use crate::guard::UnsafePathValue;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Response header flagging a merged reply that lacks some parts: `<failed>/<total>`.
pub const PARTIAL_HEADER: HeaderName = HeaderName::from_static("x-batch-partial");

/// A fanout route.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub config: Arc<FanoutConfig>,
    pub max_items: usize,
}

/// The id of one part, as text.
#[derive(Debug, Clone)]
pub struct FanoutMeta {
    id: String,
}

/// The outer request's parameters: JSON body members first, then the query string.
/// Body members are kept as their JSON text, so a numeric id keeps the spelling the client
/// wrote (`12345678901234567890123` must not become `1.2345678901234568e22`).
#[derive(Debug)]
struct Params<'a> {
    body: Option<HashMap<String, &'a RawValue>>,
    /// Percent-decoded pairs; `None` for a value that is not UTF-8 once decoded.
    query: Vec<(String, Option<String>)>,
}

impl Dialect for Fanout {
    type Meta = FanoutMeta;

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<FanoutMeta>, Rejection> {
        let params = Params::read(request)?;
        let ids = self.ids(&params)?;
        let mut values = Vec::with_capacity(self.config.params.len());
        for rule in &self.config.params {
            let value = params
                .value(&rule.name)
                .map_err(|m| invalid_param(&rule.name, &m))?;
            values.push((
                rule.name.as_str(),
                check_rule(rule, value, "MissingParameter", "InvalidParameter")?,
            ));
        }
        let headers = self.headers(request)?;
        let mut plan = Plan {
            meta: Vec::with_capacity(ids.len()),
            items: Vec::with_capacity(ids.len()),
        };
        for id in ids {
            let path = self.config.target.render(|name| {
                if name == "id" {
                    id.as_str()
                } else {
                    values
                        .iter()
                        .find(|(n, _)| *n == name)
                        .and_then(|(_, v)| v.as_deref())
                        .unwrap_or("")
                }
            });
            let path = path.map_err(|e| invalid_param(&e.placeholder, UnsafePathValue::REASON))?;
            plan.items.push(Ok(SubRequest {
                method: self.config.request_method.clone(),
                path,
                headers: headers.clone(),
                body: None,
            }));
            plan.meta.push(FanoutMeta { id });
        }
        Ok(plan)
    }

    fn encode(&self, meta: Vec<FanoutMeta>, outcomes: Vec<Outcome>) -> Reply {
        let mut elements = Vec::with_capacity(meta.len());
        let mut failed = 0;
        for (meta, outcome) in meta.iter().zip(outcomes.iter()) {
            let failure = match self.element(&meta.id, outcome) {
                Ok(element) => {
                    elements.push(element);
                    continue;
                }
                Err(failure) => failure,
            };
            failed += 1;
            match self.config.on_item_error {
                OnItemError::Fail => {
                    let message = format!("id {:?}: {}", meta.id, failure.message);
                    // An error status is relayed; a 1xx/3xx part is not a status this reply
                    // can have (a 304 would lose the error body, a 302 has no Location).
                    let status = if (400..600).contains(&failure.status) {
                        failure.status
                    } else {
                        502
                    };
                    return Reply::json(
                        status,
                        self.config.error_format.render(failure.code, &message),
                    );
                }
                OnItemError::Omit => {}
                OnItemError::Include => elements.push(self.error_element(&meta.id, &failure)),
            }
        }
        let mut out = Vec::with_capacity(elements.iter().map(Vec::len).sum::<usize>() + 32);
        out.push(b'{');
        out.extend_from_slice(
            Value::from(self.config.list_field.as_str())
                .to_string()
                .as_bytes(),
        );
        out.extend_from_slice(b":[");
        for (i, element) in elements.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(element);
        }
        out.extend_from_slice(b"]}");
        let mut reply = Reply::json(200, out);
        if failed > 0 {
            if let Ok(value) = HeaderValue::from_str(&format!("{failed}/{}", meta.len())) {
                reply.headers.push((PARTIAL_HEADER, value));
            }
        }
        reply
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let mut reply = Reply::json(
            rejection.kind.status(),
            self.config
                .error_format
                .render(rejection.code, &rejection.message),
        );
        if rejection.kind == RejectionKind::MethodNotAllowed {
            let allow: Vec<&str> = self.config.methods.iter().map(Method::as_str).collect();
            if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                reply.headers.push((http::header::ALLOW, value));
            }
        }
        reply
    }

    fn accepts_method(&self, method: &Method) -> bool {
        self.config.methods.contains(method)
    }

    fn requires_content_type(&self) -> bool {
        false
    }
}

impl Fanout {
    /// The id list: validated, duplicates collapsed when configured, within `max_items`.
    fn ids(&self, params: &Params) -> Result<Vec<String>, Rejection> {
        let name = &self.config.ids_param;
        let raw = params.list(name).map_err(|m| invalid_param(name, &m))?;
        if raw.is_empty() {
            return Err(Rejection::new(
                RejectionKind::Empty,
                "MissingParameter",
                format!("{name} is missing or empty"),
            ));
        }
        let mut seen = HashSet::new();
        let mut ids = Vec::with_capacity(raw.len());
        for id in raw {
            if id.is_empty() || id.len() > self.config.max_id_length {
                return Err(invalid_param(
                    name,
                    &format!(
                        "each id must be 1 to {} bytes long",
                        self.config.max_id_length
                    ),
                ));
            }
            if id.chars().any(char::is_control) || id == "." || id == ".." {
                return Err(invalid_param(
                    name,
                    &format!("id {id:?} contains a control character or is a dot segment"),
                ));
            }
            if !self.config.collapse_duplicates || seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        if ids.len() > self.max_items {
            return Err(Rejection::new(
                RejectionKind::TooManyItems,
                "TooManyIds",
                format!(
                    "{name} has {} ids; at most {} are allowed",
                    ids.len(),
                    self.max_items
                ),
            ));
        }
        Ok(ids)
    }

    /// Validated headers; those marked `forward` travel to every part.
    fn headers(
        &self,
        request: &BatchRequest<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let mut forwarded = Vec::new();
        for rule in &self.config.headers {
            let value = request.headers.get(&rule.header);
            let text = match value.map(|v| v.to_str()) {
                Some(Ok(text)) => Some(text.to_string()),
                Some(Err(_)) => {
                    return Err(Rejection::new(
                        RejectionKind::InvalidParameter,
                        "InvalidHeader",
                        format!("header {} is not visible ASCII", rule.rule.name),
                    ));
                }
                None => None,
            };
            check_rule(&rule.rule, text, "MissingHeader", "InvalidHeader")?;
            if let (true, Some(value)) = (rule.forward, value) {
                forwarded.push((rule.header.clone(), value.clone()));
            }
        }
        Ok(forwarded)
    }

    /// The element for a successful part, or why the part failed.
    fn element(&self, id: &str, outcome: &Outcome) -> Result<Vec<u8>, ItemError> {
        let response = match outcome {
            Outcome::Response(r) if (200..300).contains(&r.status) => r,
            Outcome::Response(r) => {
                let detail =
                    String::from_utf8_lossy(r.body.get(..200).unwrap_or(&r.body)).into_owned();
                return Err(ItemError {
                    status: r.status,
                    code: "UpstreamStatus",
                    message: format!("the upstream answered {}: {detail}", r.status),
                });
            }
            Outcome::Failed(failure) => return Err(failure.http_error()),
        };
        let body = response.body.trim_ascii();
        let invalid = || ItemError {
            status: 502,
            code: "InvalidUpstreamReply",
            message: "the upstream reply is not JSON".to_string(),
        };
        let body = super::strip_bom(body).trim_ascii();
        // The JSON check below does not look inside strings (`{"a":"\xff"}` passes it), and
        // the body is embedded as is: a reply that is not UTF-8 would make ours invalid.
        std::str::from_utf8(body).map_err(|_| invalid())?;
        let Some(fields) = &self.config.fields else {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| invalid())?;
            return Ok(body.to_vec());
        };
        let reply: &RawValue = serde_json::from_slice(body).map_err(|_| invalid())?;
        // Written by hand: the fields keep the order of the config file, and each value is
        // the upstream's JSON text (number spelling and key order survive).
        let mut element = Vec::with_capacity(body.len() + 32);
        element.push(b'{');
        for (i, (name, source)) in fields.iter().enumerate() {
            if i > 0 {
                element.push(b',');
            }
            element.extend_from_slice(Value::from(name.as_str()).to_string().as_bytes());
            element.push(b':');
            match source {
                FieldSource::Id => {
                    element.extend_from_slice(Value::from(id).to_string().as_bytes())
                }
                FieldSource::Pointer(pointer) => element.extend_from_slice(
                    raw_pointer(reply, pointer)
                        .map_or("null", RawValue::get)
                        .as_bytes(),
                ),
            }
        }
        element.push(b'}');
        Ok(element)
    }

    /// `{"<id field>": id, "error": {"status","code","message"}}` for `on_item_error = "include"`.
    fn error_element(&self, id: &str, failure: &ItemError) -> Vec<u8> {
        let id_field = self
            .config
            .fields
            .iter()
            .flatten()
            .find(|(_, source)| *source == FieldSource::Id)
            .map_or("id", |(name, _)| name.as_str());
        let error = serde_json::json!({"status": failure.status, "code": failure.code, "message": failure.message});
        format!(
            "{{{}:{},\"error\":{error}}}",
            Value::from(id_field),
            Value::from(id)
        )
        .into_bytes()
    }
}

const NOT_UTF8: &str = "must be UTF-8 once percent-decoded";

impl<'a> Params<'a> {
    fn read(request: &BatchRequest<'a>) -> Result<Self, Rejection> {
        let body = super::strip_bom(request.body.trim_ascii()).trim_ascii();
        let body = if body.is_empty() {
            None
        } else {
            let malformed = |detail: String| {
                Rejection::new(
                    RejectionKind::ParseError,
                    "MalformedBody",
                    format!("the body must be a JSON object{detail}"),
                )
            };
            if !body.starts_with(b"{") {
                return Err(malformed(String::new()));
            }
            let members: HashMap<String, &'a RawValue> =
                serde_json::from_slice(body).map_err(|e| malformed(format!(": {e}")))?;
            Some(members)
        };
        Ok(Params {
            body,
            query: parse_query(request.query.unwrap_or("")),
        })
    }

    /// A body member, unless absent or `null` (Jackson, Newtonsoft and friends write unset
    /// optional fields as `null`; that means "not given", not "invalid").
    fn member(&self, name: &str) -> Option<&'a RawValue> {
        self.body
            .as_ref()
            .and_then(|b| b.get(name).copied())
            .filter(|raw| raw.get() != "null")
    }

    /// One parameter as text: a JSON string or number in the body, else the last query value.
    fn value(&self, name: &str) -> Result<Option<String>, String> {
        if let Some(raw) = self.member(name) {
            return scalar(raw)
                .map(Some)
                .ok_or_else(|| "must be a string".to_string());
        }
        match self.query.iter().rev().find(|(k, _)| k == name) {
            Some((_, Some(value))) => Ok(Some(value.clone())),
            Some((_, None)) => Err(NOT_UTF8.to_string()),
            None => Ok(None),
        }
    }

    /// A list parameter: a JSON array in the body, or repeated / comma-separated query values.
    fn list(&self, name: &str) -> Result<Vec<String>, String> {
        if let Some(raw) = self.member(name) {
            let not_list = || "must be a list of strings".to_string();
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| not_list())?;
            return items
                .into_iter()
                .map(|item| scalar(item).ok_or_else(not_list))
                .collect();
        }
        let bracketed = format!("{name}[]");
        let mut ids = Vec::new();
        for (_, value) in self
            .query
            .iter()
            .filter(|(k, _)| *k == name || *k == bracketed)
        {
            let value = value.as_deref().ok_or_else(|| NOT_UTF8.to_string())?;
            ids.extend(
                value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(ids)
    }
}

/// A JSON string (unescaped) or number (exactly as written) as text.
fn scalar(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str(text).ok(),
        Some(b'-' | b'0'..=b'9') => Some(text.to_string()),
        _ => None,
    }
}

/// `a=1&b=x%2Fy&c=+` → pairs, percent- and plus-decoded (form encoding). A value that is not
/// UTF-8 once decoded is kept as `None` rather than patched with U+FFFD, which would
/// silently turn `%FF` into a different id; it is refused only if the route reads it.
fn parse_query(query: &str) -> Vec<(String, Option<String>)> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|text| text.into_owned())
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).unwrap_or_else(|| key.to_string());
            (key, decode(value))
        })
        .collect()
}

/// RFC 6901 JSON pointer lookup on JSON text (`""` is the whole value); `None` when a token
/// names nothing. Like `serde_json::Value::pointer`, but the result is the original text.
fn raw_pointer<'a>(value: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current.get().as_bytes().first() {
            Some(b'{') => {
                let members: HashMap<String, &'a RawValue> =
                    serde_json::from_str(current.get()).ok()?;
                members.get(&token).copied()?
            }
            Some(b'[') => {
                // RFC 6901: an array index is 0 or digits without a leading zero.
                if token.is_empty()
                    || (token.len() > 1 && token.starts_with('0'))
                    || !token.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let index: usize = token.parse().ok()?;
                let items: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
                items.get(index).copied()?
            }
            _ => return None,
        };
    }
    Some(current)
}

/// Applies a rule; `Ok(None)` when an optional value is absent. An empty value of a
/// required parameter or header counts as missing (`missing`), whatever `min_length` says.
fn check_rule(
    rule: &FieldRule,
    value: Option<String>,
    missing: &'static str,
    invalid: &'static str,
) -> Result<Option<String>, Rejection> {
    let value = value.filter(|v| !(rule.required && v.is_empty()));
    let Some(value) = value else {
        return if rule.required {
            Err(Rejection::new(
                RejectionKind::InvalidParameter,
                missing,
                format!("{} is required (missing or empty)", rule.name),
            ))
        } else {
            Ok(None)
        };
    };
    let length = value.chars().count();
    if length < rule.min_length || length > rule.max_length {
        let max = if rule.max_length == usize::MAX {
            "any".to_string()
        } else {
            rule.max_length.to_string()
        };
        return Err(Rejection::new(
            RejectionKind::InvalidParameter,
            invalid,
            format!(
                "{} must be {} to {max} characters long (got {length})",
                rule.name, rule.min_length
            ),
        ));
    }
    Ok(Some(value))
}

fn invalid_param(name: &str, message: &str) -> Rejection {
    Rejection::new(
        RejectionKind::InvalidParameter,
        "InvalidParameter",
        format!("{name} {message}"),
    )
}

#[cfg(test)]
mod tests;
