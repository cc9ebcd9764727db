//! The multipart reply: `multipart/mixed` with a fresh boundary that occurs in no part, one
//! `application/http` part per request in request order, each with the upstream's status
//! line, kept headers and body bytes unchanged (or the part's error as JSON), CRLF
//! throughout.

use super::super::{Outcome, Reply};
use super::MultipartMeta;
use crate::config::multipart::{ContentIdRule, MultipartConfig};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};
use memchr::memmem;
use rand::Rng;

/// What one part adds to the reply besides the upstream's headers and body: delimiter, MIME
/// headers, status line, Content-Length (an upper bound, for the reply budget and capacity).
pub(super) const PART_FRAMING: usize = 256;

pub(super) fn encode(
    config: &MultipartConfig,
    meta: &[MultipartMeta],
    outcomes: &[Outcome],
) -> Reply {
    let parts: Vec<PartAnswer<'_>> = outcomes
        .iter()
        .map(|outcome| part_answer(config, outcome))
        .collect();
    let boundary = fresh_boundary(&parts);
    let size: usize = parts
        .iter()
        .map(|part| {
            let headers: usize = part
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum();
            PART_FRAMING + part.body.len() + headers
        })
        .sum();
    let mut out = Vec::with_capacity(size + boundary.len() + 8);
    for (part, meta) in parts.iter().zip(meta) {
        let (status, headers, body) = (&part.status, &part.headers, &part.body);
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: application/http\r\n");
        if let Some(id) = &meta.content_id {
            let id = match config.content_id {
                ContentIdRule::ResponsePrefixed => format!("<response-{id}>"),
                ContentIdRule::Same if meta.bracketed => format!("<{id}>"),
                ContentIdRule::Same => id.clone(),
            };
            out.extend_from_slice(b"Content-ID: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let reason = StatusCode::from_u16(*status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
        for (name, value) in headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    let content_type = format!("multipart/mixed; boundary={boundary}");
    Reply {
        status: 200,
        content_type: Some(
            HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("multipart/mixed")),
        ),
        body: Bytes::from(out),
        headers: Vec::new(),
        unusable: Vec::new(),
        fields_missing: 0,
    }
}

/// One reply part before it is written.
struct PartAnswer<'a> {
    status: u16,
    /// (name, value), as they go on the wire.
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: Bytes,
}

/// One part's status, headers and body: the upstream's answer, or the failure rendered in
/// the route's error format.
fn part_answer<'a>(config: &MultipartConfig, outcome: &'a Outcome) -> PartAnswer<'a> {
    match outcome {
        Outcome::Response(response) => PartAnswer {
            status: response.status,
            headers: kept_headers(&response.headers),
            body: response.body.clone(),
        },
        Outcome::Failed(failure) => {
            let error = failure.http_error();
            let json: &[u8] = b"application/json; charset=UTF-8";
            PartAnswer {
                status: error.status,
                headers: vec![(b"Content-Type".as_slice(), json)],
                body: config.error_format.render(error.code, &error.message),
            }
        }
    }
}

/// The upstream's headers as they came, except the length (the part gets its own).
fn kept_headers(headers: &HeaderMap) -> Vec<(&[u8], &[u8])> {
    headers
        .iter()
        .filter(|(name, _)| *name != CONTENT_LENGTH)
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .collect()
}

/// A boundary of 32 random alphanumerics that occurs in no part (RFC 2046: it must not
/// appear in the encapsulated data). A collision is astronomically unlikely; a new one is
/// drawn if it happens.
fn fresh_boundary(parts: &[PartAnswer<'_>]) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let boundary: String = (0..32)
            .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
            .collect();
        let boundary = format!("batch_{boundary}");
        let finder = memmem::Finder::new(boundary.as_bytes());
        let collides = parts.iter().any(|part| {
            finder.find(&part.body).is_some()
                || part
                    .headers
                    .iter()
                    .any(|(n, v)| finder.find(n).is_some() || finder.find(v).is_some())
        });
        if !collides {
            return boundary;
        }
    }
}

/// What one upstream answer adds to the reply, for the reply budget (`max_reply_bytes`).
pub(super) fn reply_cost(response: &crate::item::UpstreamResponse) -> usize {
    // Each header line adds ": " and CRLF to its name and value.
    PART_FRAMING + response.raw_size() + 4 * response.headers.len()
}
