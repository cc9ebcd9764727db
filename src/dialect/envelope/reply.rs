//! The envelope reply entry of one item: `,"status":..,"headers":..,"body":..`, with the
//! body embedding rule (JSON as is, other UTF-8 text as a string, anything else base64) and
//! the exact encoded size the reply budget charges (`reply_cost`).

use super::super::{
    is_json_content_type, json_string_len, strip_bom, write_json_string, Outcome, UpstreamResponse,
};
pub use crate::config::BodyRule;
use crate::config::ErrorFormat;
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::HeaderMap;

/// Writes `,"status":..,"headers":..,"body":..` for one item. An item batchgate answers
/// itself (refused, failed, not run) has `{"code","message"}` as its body, or under Graph's
/// rule the route's `error_format` with a JSON Content-Type, as Graph's own error items.
pub(super) fn write_outcome(
    out: &mut Vec<u8>,
    outcome: &Outcome,
    rule: BodyRule,
    errors: &ErrorFormat,
) {
    match outcome {
        Outcome::Response(response) => {
            out.extend_from_slice(format!(",\"status\":{}", response.status).as_bytes());
            write_headers(out, &response.headers);
            match rule {
                BodyRule::Pds => write_body(out, &response.headers, &response.body),
                BodyRule::Graph => write_graph_body(out, &response.headers, &response.body),
            }
        }
        Outcome::Failed(failure) => {
            let error = failure.http_error();
            out.extend_from_slice(format!(",\"status\":{}", error.status).as_bytes());
            match rule {
                BodyRule::Pds => {
                    out.extend_from_slice(b",\"body\":");
                    let body = serde_json::json!({"code": error.code, "message": error.message});
                    out.extend_from_slice(body.to_string().as_bytes());
                }
                BodyRule::Graph => {
                    out.extend_from_slice(b",\"headers\":{\"content-type\":\"application/json\"}");
                    out.extend_from_slice(b",\"body\":");
                    out.extend_from_slice(&errors.render(error.code, &error.message));
                }
            }
        }
    }
}

pub(super) fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, joined)) in reply_headers(headers).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, name.as_str());
        out.push(b':');
        write_json_string(out, &joined);
    }
    out.push(b'}');
}

/// Each header name once, with its values joined by ", ", as the reply carries them. The
/// upstream client already dropped hop-by-hop headers; the body's length is the reply's
/// business, not the item's.
fn reply_headers(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, String)> {
    headers
        .keys()
        .filter(|name| *name != http::header::CONTENT_LENGTH)
        .map(|name| {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(", ");
            (name, joined)
        })
}

/// How an upstream body goes into the reply.
pub(super) enum BodyForm<'a> {
    /// Nothing to write (an empty or all-whitespace body).
    Absent,
    /// JSON embedded as is (these bytes).
    Json(&'a [u8]),
    /// UTF-8 text as a JSON string.
    Text(&'a str),
    /// Anything else, base64 with `"body_encoding":"base64"`.
    Base64,
}

/// The body rule: JSON (by Content-Type, or untyped and parsable) is embedded as is; other
/// UTF-8 text becomes a JSON string; anything else is base64. An empty body is left out.
pub(super) fn body_form<'a>(headers: &HeaderMap, body: &'a [u8]) -> BodyForm<'a> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return BodyForm::Absent;
    }
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let json_allowed = content_type.is_none_or(is_json_content_type);
    // A UTF-8 byte order mark is not part of the JSON text (RFC 8259 section 8.1 lets parsers
    // ignore it); some .NET and Windows servers send one.
    let json = strip_bom(trimmed).trim_ascii();
    // serde_json does not check UTF-8 inside strings: check it first, or invalid bytes would
    // be embedded in the reply instead of taking the base64 branch.
    let valid_json = std::str::from_utf8(json).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok();
    if json_allowed && valid_json {
        BodyForm::Json(json)
    } else if let Ok(text) = std::str::from_utf8(body) {
        BodyForm::Text(text)
    } else {
        BodyForm::Base64
    }
}

pub(super) fn write_body(out: &mut Vec<u8>, headers: &HeaderMap, body: &Bytes) {
    match body_form(headers, body) {
        BodyForm::Absent => {}
        BodyForm::Json(json) => {
            out.extend_from_slice(b",\"body\":");
            out.extend_from_slice(json);
        }
        BodyForm::Text(text) => {
            out.extend_from_slice(b",\"body\":");
            write_json_string(out, text);
        }
        BodyForm::Base64 => {
            out.extend_from_slice(b",\"body_encoding\":\"base64\",\"body\":");
            write_json_string(out, &base64::engine::general_purpose::STANDARD.encode(body));
        }
    }
}

/// Graph's rule: JSON as is, anything else (text included) one base64 string.
fn write_graph_body(out: &mut Vec<u8>, headers: &HeaderMap, body: &Bytes) {
    match body_form(headers, body) {
        BodyForm::Absent => {}
        BodyForm::Json(json) => {
            out.extend_from_slice(b",\"body\":");
            out.extend_from_slice(json);
        }
        BodyForm::Text(_) | BodyForm::Base64 => {
            out.extend_from_slice(b",\"body\":");
            write_json_string(out, &base64::engine::general_purpose::STANDARD.encode(body));
        }
    }
}

/// `reply_cost` under Graph's body rule (`write_graph_body`).
pub fn graph_reply_cost(response: &UpstreamResponse) -> usize {
    let body = match body_form(&response.headers, &response.body) {
        BodyForm::Absent => 0,
        BodyForm::Json(json) => json.len(),
        BodyForm::Text(_) | BodyForm::Base64 => response.body.len().div_ceil(3) * 4 + 2 + 8,
    };
    headers_cost(response) + body
}

fn headers_cost(response: &UpstreamResponse) -> usize {
    reply_headers(&response.headers)
        .map(|(name, joined)| json_string_len(name.as_str()) + 1 + json_string_len(&joined) + 1)
        .sum()
}

/// The bytes one response adds to an envelope reply: headers and body exactly as
/// `write_headers` and `write_body` write them (an escaped control character is 6 bytes, a
/// base64 body 4/3 of the upstream's), so `max_reply_bytes` bounds the reply, not the input.
pub fn reply_cost(response: &UpstreamResponse) -> usize {
    let headers: usize = reply_headers(&response.headers)
        .map(|(name, joined)| json_string_len(name.as_str()) + 1 + json_string_len(&joined) + 1)
        .sum();
    let body = match body_form(&response.headers, &response.body) {
        BodyForm::Absent => 0,
        BodyForm::Json(json) => json.len(),
        BodyForm::Text(text) => json_string_len(text),
        BodyForm::Base64 => response.body.len().div_ceil(3) * 4 + 2 + 24,
    };
    headers + body
}
