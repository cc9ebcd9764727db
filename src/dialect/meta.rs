//! The meta dialect: Meta's Graph API batch (`POST /v21.0/` with `batch=[...]`).
//!
//! The batch parameter comes form-encoded (what Meta's SDKs send), in the query string, or in
//! a JSON body (as a JSON array or the text of one), beside `access_token` and
//! `include_headers`. Each item is `{"method","relative_url","body","headers","name",
//! "depends_on","omit_response_on_success"}`; its `body` is a form-encoded string, sent
//! upstream as it is (`application/x-www-form-urlencoded`), and the batch's access token is
//! added to every item that has none of its own, as Meta does. Items refer to earlier items'
//! answers by name (`{result=NAME:$.path}`, `dialect::reference`), which also orders them.
//!
//! The reply is a JSON array in request order: `{"code","headers":[{"name","value"}],"body"}`
//! with the upstream body as a string, or `null` where Meta has one: an item a later one
//! referred to that succeeded (unless it set `"omit_response_on_success": false`), and an
//! item that timed out (Meta's "retry these"). Whole-batch errors are
//! `{"error":{"message","type":"GraphBatchException","code"}}`. See docs/DIALECTS.md, "Meta
//! dialect".

mod decode;

use super::reference::{self, RawItem, Template};
use super::{
    json_string_len, media_type, write_json_string, BatchRequest, Dialect, FailureKind,
    ItemRefusal, Outcome, Plan, Planned, Rejection, Reply, StreamRecord, UpstreamResponse,
};
use crate::config::meta::MetaConfig;
use std::sync::Arc;

/// A meta route: its settings plus its item limit.
#[derive(Debug, Clone)]
pub struct Meta {
    pub config: Arc<MetaConfig>,
    pub max_items: usize,
}

/// What the encoder needs per item.
#[derive(Debug, Clone)]
pub struct MetaMeta {
    /// Answered `null` when it succeeds: a later item refers to it (Meta's
    /// `omit_response_on_success`, on by default for those).
    omit_on_success: bool,
    /// The batch's `include_headers` (on unless `false` or `0`).
    include_headers: bool,
}

/// The `type` of every whole-batch error, as Meta names it.
const BATCH_ERROR: &str = "GraphBatchException";

impl Dialect for Meta {
    type Meta = MetaMeta;

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<MetaMeta>, Rejection> {
        decode::decode(self, request)
    }

    fn encode(&self, meta: Vec<MetaMeta>, outcomes: Vec<Outcome>) -> Reply {
        let size: usize = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Response(r) => r.body.len() + 64,
                _ => 160,
            })
            .sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'[');
        for (i, (meta, outcome)) in meta.iter().zip(&outcomes).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_element(&mut out, meta, outcome);
        }
        out.push(b']');
        Reply::json(200, out)
    }

    fn progressive_frame(&self, _meta: &[MetaMeta]) -> Option<(&'static [u8], &'static [u8])> {
        Some((b"[", b"]"))
    }

    fn stream_record(
        &self,
        meta: &[MetaMeta],
        index: usize,
        outcome: &Outcome,
        _status_of: &dyn Fn(usize) -> Option<u16>,
    ) -> Option<StreamRecord> {
        let mut json = Vec::with_capacity(128);
        write_element(&mut json, meta.get(index)?, outcome);
        Some(StreamRecord {
            json,
            unusable: false,
            fields_missing: 0,
        })
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let status = rejection.kind.status();
        let body = serde_json::json!({"error": {
            "message": rejection.message,
            "type": BATCH_ERROR,
            "code": status,
        }});
        let mut reply = Reply::json(status, body.to_string());
        if rejection.kind == super::RejectionKind::MethodNotAllowed {
            reply
                .headers
                .push((http::header::ALLOW, http::HeaderValue::from_static("POST")));
        }
        reply.with_retry_after(rejection.retry_after)
    }

    fn reply_cost(&self) -> fn(&UpstreamResponse) -> usize {
        reply_cost
    }

    fn malformed_body(&self, message: String) -> Rejection {
        Rejection::new(super::RejectionKind::ParseError, BATCH_ERROR, message)
    }

    /// A batch may come in the query string alone, with no body and no Content-Type.
    fn requires_content_type(&self) -> bool {
        false
    }

    fn accepts_content_type(&self, value: &[u8]) -> bool {
        media_type(value).is_some_and(|essence| {
            essence == "application/x-www-form-urlencoded" || super::is_json_content_type(value)
        })
    }

    fn media_type_name(&self) -> &'static str {
        "application/x-www-form-urlencoded"
    }

    /// Form bodies are read as UTF-8 by the decoder; a JSON body is checked there too.
    fn is_json(&self) -> bool {
        false
    }
}

impl Meta {
    /// `build` for items finished later, from the answers they refer to.
    fn builder(&self) -> reference::Build {
        let meta = self.clone();
        Arc::new(move |raw: &RawItem| decode::build(&meta.config, raw))
    }

    /// The item for the executor: built now, or when the answers it refers to are in.
    fn planned(
        &self,
        raw: RawItem,
        template: Option<Template>,
        build: &mut Option<reference::Build>,
    ) -> Result<Planned, ItemRefusal> {
        match template {
            None => decode::build(&self.config, &raw).map(Planned::Ready),
            Some(template) => {
                let build = build.get_or_insert_with(|| self.builder());
                Ok(reference::deferred(raw, template, build))
            }
        }
    }
}

/// One element of the reply array.
fn write_element(out: &mut Vec<u8>, meta: &MetaMeta, outcome: &Outcome) {
    match outcome {
        Outcome::Response(response) => {
            if meta.omit_on_success && (200..300).contains(&response.status) {
                out.extend_from_slice(b"null");
                return;
            }
            let headers = response
                .headers
                .iter()
                .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
                .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())));
            let body = String::from_utf8_lossy(&response.body);
            write_object(out, response.status, meta.include_headers, headers, &body);
        }
        Outcome::Failed(failure) => match failure.kind {
            // Meta answers `null` for what did not complete in time: clients retry those.
            FailureKind::Timeout | FailureKind::BatchDeadline => {
                out.extend_from_slice(b"null");
            }
            _ => {
                let error = failure.http_error();
                let body = serde_json::json!({"error": {
                    "message": error.message,
                    "type": error.code,
                    "code": error.status,
                }})
                .to_string();
                let content_type = [("content-type", "application/json; charset=UTF-8".into())];
                write_object(
                    out,
                    error.status,
                    meta.include_headers,
                    content_type.into_iter(),
                    &body,
                );
            }
        },
    }
}

/// `{"code":STATUS,"headers":[{"name":..,"value":..}],"body":"..."}`.
fn write_object<'h>(
    out: &mut Vec<u8>,
    status: u16,
    include_headers: bool,
    headers: impl Iterator<Item = (&'h str, std::borrow::Cow<'h, str>)>,
    body: &str,
) {
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(status.to_string().as_bytes());
    if include_headers {
        out.extend_from_slice(b",\"headers\":[");
        for (i, (name, value)) in headers.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            write_json_string(out, name);
            out.extend_from_slice(b",\"value\":");
            write_json_string(out, &value);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"body\":");
    write_json_string(out, body);
    out.push(b'}');
}

/// What one answer adds to the reply: its body and headers as JSON strings, with the
/// element's own members.
pub fn reply_cost(response: &UpstreamResponse) -> usize {
    let headers: usize = response
        .headers
        .iter()
        .map(|(name, value)| {
            json_string_len(name.as_str())
                + json_string_len(&String::from_utf8_lossy(value.as_bytes()))
                + 20
        })
        .sum();
    32 + headers + json_string_len(&String::from_utf8_lossy(&response.body))
}

#[cfg(test)]
mod tests;
