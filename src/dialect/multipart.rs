//! The multipart dialect: Google API HTTP batch and OData `$batch` (RFC 2046
//! `multipart/mixed`, each part an `application/http` request with a `Content-ID`).
//!
//! A part's request goes through the same guards as an envelope item: the method policy,
//! the url guard (absolute urls only on our own or a public origin; relative OData targets
//! resolved against the batch route's parent), the header guard. The batch's outer headers
//! named in `forward_headers` (`Authorization`) apply to every part that does not set its
//! own (Google's rule). The reply is `multipart/mixed` with a fresh boundary, one
//! `application/http` part per request in request order, `Content-ID: <response-ID>`, the
//! upstream's status line, kept headers and body bytes unchanged. OData change sets (nested
//! multipart, all-or-nothing) cannot be atomic through a proxy and are refused.

mod content_id;
mod parse;
mod reply;

use super::{
    allowed_method, media_type, BatchRequest, Dialect, ItemRefusal, Order, Outcome, Plan, Planned,
    Rejection, RejectionKind, Reply, SubRequest,
};
use crate::config::multipart::MultipartConfig;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::Method;
use parse::{Header, InnerRequest, PartLimits, CODE_CHANGE_SET, CODE_PART};
use std::collections::HashSet;
use std::sync::Arc;

pub use parse::{boundary, MAX_PART_HEADERS};

/// A multipart route: its settings plus its part limit.
#[derive(Debug, Clone)]
pub struct Multipart {
    pub config: Arc<MultipartConfig>,
    pub max_items: usize,
}

/// What the encoder needs per part: the request's Content-ID, without its angle brackets,
/// and whether it had them (`reply_content_id = "same"` answers in the form it came).
#[derive(Debug, Clone)]
pub struct MultipartMeta {
    pub content_id: Option<String>,
    pub bracketed: bool,
}

impl Dialect for Multipart {
    type Meta = MultipartMeta;

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<MultipartMeta>, Rejection> {
        let content_type = request
            .headers
            .get(CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let boundary = parse::boundary(content_type)?;
        let limits = PartLimits {
            max_parts: self.max_items,
            max_part_bytes: self.config.max_part_bytes,
        };
        let parts = parse::split(request.body, &boundary, limits)?;
        let mut plan = Plan {
            order: Order::default(),
            after: Vec::new(),
            meta: Vec::with_capacity(parts.len()),
            items: Vec::with_capacity(parts.len()),
        };
        let mut seen_ids = HashSet::with_capacity(parts.len());
        let mut targets = Vec::new();
        for (index, part) in parts.into_iter().enumerate() {
            let (mime, content) = parse::part_headers(part).map_err(|why| bad_part(index, &why))?;
            let (content_id, bracketed) = match self.check_mime(index, &mime, &mut seen_ids)? {
                Some((id, bracketed)) => (Some(id), bracketed),
                None => (None, false),
            };
            let head_room = self
                .config
                .max_part_head_bytes
                .saturating_sub(part.len() - content.len());
            plan.meta.push(MultipartMeta {
                content_id,
                bracketed,
            });
            let item = self
                .sub_request(request, content, head_room)
                .map(|item| {
                    if item.target.starts_with('$') {
                        targets.push((index, item.target));
                    }
                    SubRequest {
                        body: item.body.map(|b| request.body.slice_ref(b)),
                        method: item.method,
                        path: item.path,
                        headers: item.headers,
                    }
                })
                .map_err(Outcome::refused);
            plan.items.push(item.map(Planned::Ready));
        }
        content_id::refer(self, request.authority, &mut plan, targets)?;
        Ok(plan)
    }

    fn encode(&self, meta: Vec<MultipartMeta>, outcomes: Vec<Outcome>) -> Reply {
        reply::encode(&self.config, &meta, &outcomes)
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let body = self
            .config
            .error_format
            .render(rejection.code, &rejection.message);
        let mut reply = Reply::json(rejection.kind.status(), body);
        if rejection.kind == RejectionKind::MethodNotAllowed {
            reply
                .headers
                .push((http::header::ALLOW, HeaderValue::from_static("POST")));
        }
        reply
    }

    fn reply_cost(&self) -> fn(&super::UpstreamResponse) -> usize {
        reply::reply_cost
    }

    fn malformed_body(&self, message: String) -> Rejection {
        Rejection::new(RejectionKind::ParseError, parse::CODE_BODY, message)
    }

    fn accepts_content_type(&self, value: &[u8]) -> bool {
        media_type(value).is_some_and(|essence| essence == "multipart/mixed")
    }

    fn media_type_name(&self) -> &'static str {
        "multipart/mixed"
    }

    fn is_json(&self) -> bool {
        false
    }
}

/// A part refused as a whole batch: its MIME structure cannot be read.
fn bad_part(index: usize, why: &str) -> Rejection {
    Rejection::new(
        RejectionKind::InvalidItem,
        CODE_PART,
        format!("part {}: {why}", index + 1),
    )
}

/// A part's request before its body is sliced out of the batch body.
struct PartRequest<'a> {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<&'a [u8]>,
    /// The request line's target as written (an OData `$1/Orders` refers to part 1).
    target: String,
}

impl Multipart {
    /// The part's MIME headers: `application/http` content (a nested `multipart/mixed` is an
    /// OData change set, refused), a transfer encoding that leaves the bytes as they are, and
    /// a Content-ID unique in the batch (it is how the client matches answers).
    fn check_mime(
        &self,
        index: usize,
        mime: &[Header],
        seen_ids: &mut HashSet<String>,
    ) -> Result<Option<(String, bool)>, Rejection> {
        let get = |name: &str| {
            mime.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        let content_type = get("content-type").and_then(media_type);
        match content_type.as_deref() {
            Some("application/http") => {}
            Some(multipart) if multipart.starts_with("multipart/") => {
                return Err(Rejection::new(
                    RejectionKind::InvalidItem,
                    CODE_CHANGE_SET,
                    format!(
                        "part {} is a change set ({multipart}): an all-or-nothing group cannot be \
                         atomic through a proxy; send its requests as separate parts",
                        index + 1
                    ),
                ))
            }
            other => {
                let found = other.unwrap_or("none");
                return Err(bad_part(
                    index,
                    &format!("its Content-Type must be application/http, not {found}"),
                ));
            }
        }
        if let Some(encoding) = get("content-transfer-encoding") {
            let encoding = String::from_utf8_lossy(encoding)
                .trim()
                .to_ascii_lowercase();
            if !matches!(encoding.as_str(), "binary" | "8bit" | "7bit") {
                return Err(bad_part(index, &format!("Content-Transfer-Encoding {encoding} is not supported (binary, 8bit or 7bit)")));
            }
        }
        let Some(raw) = get("content-id") else {
            return Ok(None);
        };
        let text = std::str::from_utf8(raw)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .ok_or_else(|| bad_part(index, "its Content-ID is empty or not printable ASCII"))?;
        let bracketed = text.strip_prefix('<').and_then(|t| t.strip_suffix('>'));
        let id = bracketed.unwrap_or(text).to_string();
        if !seen_ids.insert(id.clone()) {
            return Err(Rejection::new(
                RejectionKind::DuplicateId,
                CODE_PART,
                format!(
                    "part {}: Content-ID {text:?} is not unique in this batch",
                    index + 1
                ),
            ));
        }
        Ok(Some((id, bracketed.is_some())))
    }

    /// The part's HTTP request through the method policy and the url and header guards;
    /// `head_room` is what is left of `max_part_head_bytes` after the MIME headers.
    fn sub_request<'b>(
        &self,
        request: &BatchRequest<'_>,
        content: &'b [u8],
        head_room: usize,
    ) -> Result<PartRequest<'b>, ItemRefusal> {
        let invalid = ItemRefusal::invalid;
        let inner: InnerRequest<'b> =
            parse::inner_request(content).map_err(|m| invalid("InvalidArgument.Request", m))?;
        if inner.head_len > head_room {
            return Err(ItemRefusal::HeadTooLarge {
                code: "InvalidArgument.HeadTooLarge",
                message: format!(
                    "the part's headers and request head exceed {} bytes",
                    self.config.max_part_head_bytes
                ),
            });
        }
        let method = self.method(&inner.method)?;
        let path = self.path(request, &inner)?;
        let mut headers = Vec::with_capacity(inner.headers.len());
        let mut content_length = None;
        for (name, value) in &inner.headers {
            match name.as_str() {
                // Frames the part; the upstream request gets its own.
                "content-length" if content_length.is_none() => {
                    content_length = Some(value.as_slice())
                }
                "content-length" => {
                    return Err(invalid(
                        "InvalidArgument.Headers",
                        "Content-Length given twice".to_string(),
                    ))
                }
                // Names the origin the part is meant for: ours, or refused.
                "host" => self.check_host(request, value)?,
                _ => headers.push(self.checked_header(name, value)?),
            }
        }
        let body = parse::body(inner.rest, content_length)
            .map_err(|m| invalid("InvalidArgument.Body", m))?;
        Ok(PartRequest {
            method,
            path,
            headers,
            body,
            target: inner.target.to_string(),
        })
    }

    fn method(&self, name: &str) -> Result<Method, ItemRefusal> {
        allowed_method(&self.config.allowed_methods, name)
    }

    fn path(
        &self,
        request: &BatchRequest<'_>,
        inner: &InnerRequest<'_>,
    ) -> Result<String, ItemRefusal> {
        target_path(&self.config, request.authority, &inner.target)
    }

    /// A part's `Host` may only name the batch request's own authority.
    fn check_host(&self, request: &BatchRequest<'_>, value: &[u8]) -> Result<(), ItemRefusal> {
        let host = String::from_utf8_lossy(value);
        let host = host.trim();
        // Behind a load balancer the client names the public origin, not ours.
        let ours = request
            .authority
            .is_some_and(|a| a.eq_ignore_ascii_case(host))
            || self.config.url_guard.is_public_authority(host);
        if ours {
            Ok(())
        } else {
            Err(ItemRefusal::invalid(
                "InvalidArgument.Host",
                format!("the part's Host {host:?} is not this batch endpoint's; parts reach only the configured upstream"),
            ))
        }
    }

    fn checked_header(
        &self,
        name: &str,
        value: &[u8],
    ) -> Result<(HeaderName, HeaderValue), ItemRefusal> {
        let text = std::str::from_utf8(value).map_err(|_| {
            ItemRefusal::invalid(
                "InvalidArgument.Headers",
                format!("header {name:?} is not UTF-8"),
            )
        })?;
        Ok(self.config.header_guard.check(name, text)?)
    }
}

/// A part's target as an origin-form path checked by the url guard: an absolute url on our
/// own (or a public) origin is its path, a relative reference (OData) is resolved against the
/// route's parent; anything else is refused by the guard as for envelopes. The same for a
/// target written by the client and one an OData reference made from an earlier answer.
fn target_path(
    config: &MultipartConfig,
    authority: Option<&str>,
    target: &str,
) -> Result<String, ItemRefusal> {
    let target = config.url_guard.origin_form(target, authority);
    let first = target.as_bytes().first().copied();
    let relative =
        first.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'$') && !target.contains("://");
    let target = if relative {
        format!("{}{target}", config.relative_base)
    } else {
        target.into_owned()
    };
    Ok(config.url_guard.check(&target)?)
}

#[cfg(test)]
mod tests;
