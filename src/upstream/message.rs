//! The rules every upstream protocol shares about the messages of an item: which headers its
//! request carries and declares, which response headers it keeps, and how large a response
//! head may be.

use super::BatchHeaders;
use crate::item::SubRequest;
use http::header::{HeaderName, HeaderValue};
use http::Method;

/// Most bytes of an upstream response head (status line or pseudo-headers, and every header
/// field) accepted, by every upstream client: HTTP/1.1 items (`h1`), h2c items (the h2
/// `max_header_list_size` we advertise) and pass-through (checked on the parsed head). nginx's
/// `proxy_buffer_size` default is 4-8 KiB and Envoy's `max_response_headers_kb` 60 KiB.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The bytes a parsed response head took on the wire, near enough: every field's name and
/// value plus its `: ` and CRLF. For the clients that parse heads themselves (pingora's h2
/// and HTTP/1.1 pass-through), which bound what they buffer with their own, larger limits.
pub fn head_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Most bytes reserved for a response body before they arrive.
pub(super) const PREALLOCATE_LIMIT: usize = 64 * 1024;

/// The one rule, for every upstream protocol, of which response headers an item keeps: what
/// describes the resource. Hop-by-hop headers and `Content-Length` describe this message on
/// this connection (the body's length is known once it is read).
pub(crate) fn kept_response_header(name: &str) -> bool {
    !name.eq_ignore_ascii_case("content-length")
        && !HOP_BY_HOP_RESPONSE
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Interim (1xx) answers accepted before the final one, on every upstream protocol.
pub(crate) const MAX_INTERIM_RESPONSES: usize = 8;

/// Response headers about the connection rather than the resource.
const HOP_BY_HOP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// The one rule, for every upstream protocol, of which headers an item request carries
/// besides `Host`: the batch-wide ones (forwarded, `X-Forwarded-For`, `X-Request-Id`) unless
/// the item sets the same name itself (its own wins), then the item's own, repeats kept;
/// while tracing, the item span's trace context (`trace`: `crate::traces::current_headers`)
/// replaces any `traceparent`/`tracestate` of the batch or the item (those never go up then).
pub(crate) fn item_request_headers<'a>(
    request: &'a SubRequest,
    batch: &'a BatchHeaders,
    trace: &'a [(HeaderName, HeaderValue)],
) -> impl Iterator<Item = &'a (HeaderName, HeaderValue)> {
    let tracing = crate::traces::on();
    let ours = move |name: &HeaderName| tracing && crate::traces::TRACE_HEADERS.contains(name);
    batch
        .common
        .iter()
        .filter(|(name, _)| !request.headers.iter().any(|(n, _)| n == name))
        .chain(request.headers.iter())
        .filter(move |(name, _)| !ours(name))
        .chain(trace.iter())
}

/// The `Content-Length` an item request declares: its body's, or 0 for a bodiless POST, PUT
/// or PATCH (servers may refuse those without one); none for other bodiless methods.
pub(crate) fn item_content_length(request: &SubRequest) -> Option<usize> {
    match &request.body {
        Some(body) => Some(body.len()),
        None if matches!(request.method, Method::POST | Method::PUT | Method::PATCH) => Some(0),
        None => None,
    }
}
