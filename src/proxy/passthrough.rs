//! What a pass-through request loses and gains on its way upstream: the headers the proxy
//! owns, by the same list as batch items (`guard::owned`), and the framing fixes that keep a
//! pooled upstream connection trustworthy. `X-Forwarded-For`, `Host` and the rest of the
//! client-address handling stay in `ProxyHttp::upstream_request_filter`.

use super::batch::{request_id, REQUEST_ID};
use super::body::declared_length;
use crate::guard::owned::dropped_on_passthrough;
use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::prelude::*;

/// Rewrites `upstream_request` (pingora's copy of `client_request`) before it is sent.
pub(super) fn prepare_request(
    client_request: &RequestHeader,
    upstream_request: &mut RequestHeader,
    trace: &[(HeaderName, http::HeaderValue)],
) -> Result<()> {
    // While tracing, the request carries its pass-through span's context (a child of the
    // client's), not the client's own.
    if crate::traces::on() {
        for name in &crate::traces::TRACE_HEADERS {
            upstream_request.remove_header(name);
        }
        for (name, value) in trace {
            upstream_request.append_header(name.clone(), value.clone())?;
        }
    }
    // The same upstream trusts these on batch items, where the proxy owns them; a client
    // must not be able to forge them by skipping the batch route. One list for both
    // paths (`guard::owned`), underscore spellings included.
    let dropped: Vec<HeaderName> = upstream_request
        .headers
        .keys()
        .filter(|name| dropped_on_passthrough(name.as_str()))
        .cloned()
        .collect();
    for name in &dropped {
        upstream_request.remove_header(name);
    }
    let request_id = request_id(client_request);
    upstream_request.insert_header(REQUEST_ID, request_id)?;
    // pingora accepts `Content-Length: 5, 5` (RFC 9110 lets it) but forwards it as
    // written; the upstream gets the one length pingora framed the body with.
    let listed = upstream_request
        .headers
        .get(CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes().contains(&b','));
    if listed && !upstream_request.headers.contains_key(TRANSFER_ENCODING) {
        if let Some(length) = declared_length(upstream_request) {
            upstream_request.insert_header(CONTENT_LENGTH, length)?;
        }
    }
    // A HEAD answer declares a body it does not carry; an upstream that sends it anyway,
    // late, would have it read as the next request's answer on a pooled connection.
    // pingora decides reuse from the request too: this connection is not pooled.
    if upstream_request.method == http::Method::HEAD {
        upstream_request.insert_header(CONNECTION, "close")?;
    }
    Ok(())
}
