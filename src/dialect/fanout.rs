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
use http::header::{HeaderName, HeaderValue};
use http::Method;
use serde_json::{Map, Value};
use std::collections::HashSet;
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
#[derive(Debug)]
struct Params {
    body: Option<Map<String, Value>>,
    query: Vec<(String, String)>,
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
                    return Reply::json(
                        failure.status,
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
            other => {
                return Err(other.http_error().unwrap_or(ItemError {
                    status: 502,
                    code: "UpstreamFailed",
                    message: String::new(),
                }));
            }
        };
        let body = response.body.trim_ascii();
        let invalid = || ItemError {
            status: 502,
            code: "InvalidUpstreamReply",
            message: "the upstream reply is not JSON".to_string(),
        };
        let Some(fields) = &self.config.fields else {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| invalid())?;
            return Ok(body.to_vec());
        };
        let reply: Value = serde_json::from_slice(body).map_err(|_| invalid())?;
        // Written by hand: the fields keep the order of the config file.
        let mut element = Vec::with_capacity(body.len() + 32);
        element.push(b'{');
        for (i, (name, source)) in fields.iter().enumerate() {
            if i > 0 {
                element.push(b',');
            }
            let value = match source {
                FieldSource::Id => Value::from(id),
                FieldSource::Pointer(pointer) => {
                    reply.pointer(pointer).cloned().unwrap_or(Value::Null)
                }
            };
            element.extend_from_slice(Value::from(name.as_str()).to_string().as_bytes());
            element.push(b':');
            element.extend_from_slice(value.to_string().as_bytes());
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

impl Params {
    fn read(request: &BatchRequest<'_>) -> Result<Self, Rejection> {
        let body = request.body.trim_ascii();
        let body = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => Some(map),
                _ => {
                    return Err(Rejection::new(
                        RejectionKind::ParseError,
                        "MalformedBody",
                        "the body must be a JSON object",
                    ))
                }
            }
        };
        Ok(Params {
            body,
            query: parse_query(request.query.unwrap_or("")),
        })
    }

    /// One parameter as text: a JSON string or number in the body, else the last query value.
    fn value(&self, name: &str) -> Result<Option<String>, String> {
        if let Some(value) = self.body.as_ref().and_then(|b| b.get(name)) {
            return scalar(value)
                .map(Some)
                .ok_or_else(|| "must be a string".to_string());
        }
        Ok(self
            .query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone()))
    }

    /// A list parameter: a JSON array in the body, or repeated / comma-separated query values.
    fn list(&self, name: &str) -> Result<Vec<String>, String> {
        if let Some(value) = self.body.as_ref().and_then(|b| b.get(name)) {
            return match value {
                Value::Array(items) => items
                    .iter()
                    .map(|v| scalar(v).ok_or_else(|| "must be a list of strings".to_string()))
                    .collect(),
                _ => Err("must be a list of strings".to_string()),
            };
        }
        let bracketed = format!("{name}[]");
        Ok(self
            .query
            .iter()
            .filter(|(k, _)| *k == name || *k == bracketed)
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect())
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `a=1&b=x%2Fy&c=+` → pairs, percent- and plus-decoded (form encoding).
fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// Applies a rule; `Ok(None)` when an optional value is absent.
fn check_rule(
    rule: &FieldRule,
    value: Option<String>,
    missing: &'static str,
    invalid: &'static str,
) -> Result<Option<String>, Rejection> {
    let Some(value) = value else {
        return if rule.required {
            Err(Rejection::new(
                RejectionKind::InvalidParameter,
                missing,
                format!("{} is required", rule.name),
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
