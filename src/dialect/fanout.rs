//! The ID-list fan-out dialect: one call carrying a list of ids (Huawei Cloud `access-urls`
//! style) becomes one upstream request per id, and the answers are merged into one list.
//!
//! Everything is declared in the route's config: where the ids and other parameters come from
//! (JSON body, or the query string as `ids=1&ids=2` or `ids=1,2`), their validation, the
//! per-id request template (values percent-encoded by `PathTemplate`), how each element is
//! built, and what a failed part does (`on_item_error`).

use super::{
    BatchRequest, Dialect, ItemError, Order, Outcome, Plan, Planned, Rejection, RejectionKind,
    Reply, StreamRecord, SubRequest,
};
use crate::config::{FanoutConfig, FieldRule, OnItemError};
use crate::guard::UnsafePathValue;
use http::header::{HeaderName, HeaderValue};
use http::Method;

use serde_json::Value;
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
            order: Order::default(),
            after: Vec::new(),
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
            plan.items.push(Ok(Planned::Ready(SubRequest {
                method: self.config.request_method.clone(),
                path,
                headers: headers.clone(),
                body: None,
            })));
            plan.meta.push(FanoutMeta { id });
        }
        Ok(plan)
    }

    fn encode(&self, meta: Vec<FanoutMeta>, outcomes: Vec<Outcome>) -> Reply {
        let mut elements = Vec::with_capacity(meta.len());
        let mut failed = 0;
        let mut unusable = Vec::new();
        let mut fields_missing = 0;
        for (index, (meta, outcome)) in meta.iter().zip(outcomes.iter()).enumerate() {
            let failure = match self.element(&meta.id, outcome) {
                Ok(element) => {
                    fields_missing += element.fields_missing;
                    elements.push(element.bytes);
                    continue;
                }
                Err(failure) => failure,
            };
            failed += 1;
            if matches!(outcome, Outcome::Response(_)) {
                unusable.push(index);
            }
            match self.config.on_item_error {
                OnItemError::Fail => {
                    let mut reply = self.failed_reply(&meta.id, &failure);
                    reply.unusable = unusable;
                    return reply;
                }
                OnItemError::Omit => {}
                OnItemError::Include => elements.push(self.error_element(&meta.id, &failure)),
            }
        }
        let mut reply = self.list_reply(&elements);
        if failed > 0 {
            if let Ok(value) = HeaderValue::from_str(&format!("{failed}/{}", meta.len())) {
                reply.headers.push((PARTIAL_HEADER, value));
            }
        }
        reply.unusable = unusable;
        reply.fields_missing = fields_missing;
        reply
    }

    /// A part's list element, or its error element; a failed part is left out only under
    /// `on_item_error = "omit"` (under `"fail"` a stream cannot take back what it sent, so the
    /// failed part's error element is the record, as under `"include"`).
    fn stream_record(
        &self,
        meta: &[FanoutMeta],
        index: usize,
        outcome: &Outcome,
        _status_of: &dyn Fn(usize) -> Option<u16>,
    ) -> Option<StreamRecord> {
        let id = &meta.get(index)?.id;
        match self.element(id, outcome) {
            Ok(element) => Some(StreamRecord {
                json: element.bytes,
                unusable: false,
                fields_missing: element.fields_missing,
            }),
            Err(_) if self.config.on_item_error == OnItemError::Omit => None,
            Err(failure) => Some(StreamRecord {
                json: self.error_element(id, &failure),
                unusable: matches!(outcome, Outcome::Response(_)),
                fields_missing: 0,
            }),
        }
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
    /// `on_item_error = "fail"`: the whole reply is the failed part's error. An error status
    /// is relayed; a 1xx/3xx part is not a status this reply can have (a 304 would lose the
    /// error body, a 302 has no Location).
    fn failed_reply(&self, id: &str, failure: &ItemError) -> Reply {
        let message = format!("id {id:?}: {}", failure.message);
        let status = match failure.status {
            400..=599 => failure.status,
            _ => 502,
        };
        Reply::json(
            status,
            self.config.error_format.render(failure.code, &message),
        )
    }

    /// `{"<list_field>":[elements...]}`.
    fn list_reply(&self, elements: &[Vec<u8>]) -> Reply {
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
        Reply::json(200, out)
    }

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
            self.check_id(&id)?;
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

    /// One id: 1 to `max_id_length` bytes, no control character, not a dot segment.
    fn check_id(&self, id: &str) -> Result<(), Rejection> {
        let (name, max) = (&self.config.ids_param, self.config.max_id_length);
        if id.is_empty() || id.len() > max {
            let message = format!("each id must be 1 to {max} bytes long");
            return Err(invalid_param(name, &message));
        }
        if id.chars().any(char::is_control) || id == "." || id == ".." {
            let message = format!("id {id:?} contains a control character or is a dot segment");
            return Err(invalid_param(name, &message));
        }
        Ok(())
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

mod params;
mod reply;

use params::Params;
#[cfg(test)]
use reply::raw_pointer;

#[cfg(test)]
mod tests;
