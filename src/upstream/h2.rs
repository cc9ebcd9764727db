//! Items over HTTP/2 (h2c, and h2 over TLS) on pingora's HTTP/2 session: one stream per item,
//! the request head and body written, the final response head read past interim answers and
//! held to the one head limit, the body read with the item's cap; a stream the upstream did
//! not process goes again (`send`). Failures say how much was sent.

use super::attempt::may_send_again;
use super::exchange_error::ExchangeError;
use super::h2_streams::Streams;
use super::message::{
    head_size, item_content_length, item_request_headers, kept_response_header,
    MAX_INTERIM_RESPONSES, MAX_RESPONSE_HEAD_BYTES, PREALLOCATE_LIMIT,
};
use super::BatchHeaders;
use crate::item::{Sent, SubRequest, UpstreamResponse};
use crate::metrics::Carried;
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::Method;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::ErrorType;

/// One item over HTTP/2, on a stream from `streams`. An error pingora marks retryable (a
/// pooled connection the upstream had closed, a refused stream) is tried once more on another
/// connection. A stream the upstream refused unprocessed (`refused_unprocessed`) goes on to
/// the next connection until it is answered, fails otherwise, or runs out of
/// `UNPROCESSED_ATTEMPTS` (an upstream that takes one stream per connection needs one round per
/// item in flight).
pub(super) async fn send(
    streams: Streams<'_>,
    peer: &HttpPeer,
    request: &SubRequest,
    batch: &BatchHeaders,
    repeatable: bool,
    count: impl Fn(Carried),
) -> Result<UpstreamResponse, ExchangeError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match exchange(streams, peer, request, batch, &count).await {
            Ok(response) => return Ok(response),
            Err(H2Error::Pingora {
                mut error,
                reused,
                sent,
            }) => {
                // pingora's rule: `ReusedOnly` errors are retryable only on a reused pooled
                // connection, i.e. the upstream closed it while idle and saw nothing.
                error.retry.decide_reuse(reused);
                let trigger = match attempts {
                    1 => error.retry(),
                    n => n < UNPROCESSED_ATTEMPTS && refused_unprocessed(&error),
                };
                // What pingora marks retryable the upstream did not process (a stream it
                // refused, a connection it had closed): as good as nothing sent.
                let sent = if error.retry() { Sent::Nothing } else { sent };
                if !(trigger && may_send_again(sent, repeatable)) {
                    return Err(pingora_error(&error, sent));
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
}

/// Attempts of one HTTP/2 item whose stream the upstream refused unprocessed, before the
/// refusal is its answer. Each round opens at most one connection per address, shared by
/// every item waiting (`h2_streams.rs`).
const UNPROCESSED_ATTEMPTS: u32 = 32;

/// One item as an HTTP/2 stream from `streams`; `count` is told whether it went on a
/// connection that was already open.
async fn exchange(
    streams: Streams<'_>,
    peer: &HttpPeer,
    request: &SubRequest,
    batch: &BatchHeaders,
    count: &impl Fn(Carried),
) -> Result<UpstreamResponse, H2Error> {
    let (mut session, reused, conn) = streams.session(peer).await.map_err(H2Error::Connect)?;
    count(if reused {
        Carried::Reused
    } else {
        Carried::New
    });
    let result = on_stream(&mut session, reused, peer, request, batch).await;
    if let (Err(H2Error::Pingora { error, .. }), Some(conn)) = (&result, &conn) {
        if going_away(error) {
            // Its other streams and the retry must not be opened on it.
            conn.mark_shutdown();
        }
    }
    if result.is_ok() {
        streams.release(session, peer).await;
    }
    result
}

/// Whether the upstream refused the stream before processing any of it: a graceful GOAWAY
/// (NO_ERROR) whose last stream id is below it, or REFUSED_STREAM (RFC 9113 sections 6.8 and
/// 8.7). Such a stream may go again whatever its method, on another connection.
fn refused_unprocessed(error: &pingora::Error) -> bool {
    error
        .root_cause()
        .downcast_ref::<h2::Error>()
        .is_some_and(|e| {
            e.is_remote()
                && match e.reason() {
                    Some(h2::Reason::NO_ERROR) => e.is_go_away(),
                    Some(h2::Reason::REFUSED_STREAM) => e.is_reset(),
                    _ => false,
                }
        })
}

/// Whether an error says the upstream is closing the connection (GOAWAY).
fn going_away(error: &pingora::Error) -> bool {
    error
        .root_cause()
        .downcast_ref::<h2::Error>()
        .is_some_and(h2::Error::is_go_away)
}

/// The exchange on one stream.
async fn on_stream(
    session: &mut HttpSession,
    reused: bool,
    peer: &HttpPeer,
    request: &SubRequest,
    batch: &BatchHeaders,
) -> Result<UpstreamResponse, H2Error> {
    let failed = |sent| {
        move |error| H2Error::Pingora {
            error,
            reused,
            sent,
        }
    };
    let written = write_request(session, request, batch, peer.tls(), &failed).await;
    let head_read = match written {
        Ok(()) => false,
        Err(write_failed) => answered_anyway(session, write_failed).await?,
    };
    let (status, headers) = read_final_header(session, head_read, &failed(Sent::Maybe)).await?;
    // HEAD, 204 and 304 declare the representation's length but carry no body.
    let has_body = request.method != Method::HEAD && !matches!(status, 204 | 304);
    let limit = batch.max_response_bytes;
    let body = read_body(session, &headers, has_body, limit, &failed(Sent::All)).await?;
    Ok(UpstreamResponse {
        status,
        headers,
        body: body.freeze(),
    })
}

/// After a failed write, whether the upstream answered anyway (`Ok(true)`: its head is read).
/// A server may send a complete response before it has the whole body and then reset the
/// stream with NO_ERROR (RFC 9113 section 8.1; nginx does so for every location that does not
/// read the body); the body write then fails with "cannot reserve capacity", and the answer
/// is the item's. A stream refused unprocessed (a GOAWAY whose last stream id is below it,
/// which nginx sends after `keepalive_requests` streams, or REFUSED_STREAM) reads as an error
/// pingora marks retryable (sections 6.8 and 8.7), so the item is sent again on another
/// connection. A write timeout stays a timeout.
async fn answered_anyway(
    session: &mut HttpSession,
    write_failed: H2Error,
) -> Result<bool, H2Error> {
    if let H2Error::Pingora { error, .. } = &write_failed {
        if matches!(error.etype(), ErrorType::WriteTimedout) {
            return Err(write_failed);
        }
    }
    match session.read_response_header().await {
        Ok(()) => Ok(true),
        Err(error) if error.retry.retry() => Err(H2Error::Pingora {
            error,
            reused: true,
            sent: Sent::Maybe,
        }),
        Err(_) => Err(write_failed),
    }
}

/// The request head and body, with how much may have left when a write fails.
async fn write_request<F: Fn(Box<pingora::Error>) -> H2Error>(
    session: &mut HttpSession,
    request: &SubRequest,
    batch: &BatchHeaders,
    tls: bool,
    failed: &impl Fn(Sent) -> F,
) -> Result<(), H2Error> {
    let mut header = request_header(request, batch, tls).map_err(failed(Sent::Nothing))?;
    if matches!(session, HttpSession::H1(_)) {
        // `protocol = "h2"` whose upstream declined h2 in ALPN: HTTP/1.1 needs its Host.
        header
            .insert_header(HOST, batch.host.clone())
            .map_err(failed(Sent::Nothing))?;
    }
    session
        .write_request_header(Box::new(header))
        .await
        .map_err(failed(Sent::Maybe))?;
    if let Some(body) = &request.body {
        session
            .write_request_body(body.clone(), true)
            .await
            .map_err(failed(Sent::Maybe))?;
    }
    session
        .finish_request_body()
        .await
        .map_err(failed(Sent::Maybe))
}

/// The response body, at most `limit` bytes.
async fn read_body(
    session: &mut HttpSession,
    headers: &http::HeaderMap,
    has_body: bool,
    limit: usize,
    fail: &impl Fn(Box<pingora::Error>) -> H2Error,
) -> Result<BytesMut, H2Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if has_body && declared.is_some_and(|len| len > limit) {
        // Not read, so the connection is dropped rather than pooled.
        return Err(H2Error::TooLarge(limit));
    }
    // Reserve from the declared length only up to a bound: the upstream's word is not
    // memory we should commit before the bytes arrive.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(PREALLOCATE_LIMIT));
    while let Some(chunk) = session.read_response_body().await.map_err(fail)? {
        if body.len() + chunk.len() > limit {
            return Err(H2Error::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads response headers until the final one: informational 1xx answers (100 Continue,
/// 103 Early Hints) are skipped, as a client must; 101 would switch the connection to another
/// protocol, which an item cannot use.
async fn read_final_header(
    session: &mut HttpSession,
    mut head_read: bool,
    fail: &impl Fn(Box<pingora::Error>) -> H2Error,
) -> Result<(u16, http::HeaderMap), H2Error> {
    let mut interim = 0;
    loop {
        if !std::mem::take(&mut head_read) {
            session.read_response_header().await.map_err(fail)?;
        }
        let Some(header) = session.response_header() else {
            return Err(H2Error::Protocol("no response header".to_string()));
        };
        match header.status.as_u16() {
            101 => {
                return Err(H2Error::Protocol(
                    "the upstream switched protocols".to_string(),
                ))
            }
            100..=199 if interim < MAX_INTERIM_RESPONSES => interim += 1,
            100..=199 => {
                return Err(H2Error::Protocol(format!(
                    "more than {MAX_INTERIM_RESPONSES} interim (1xx) answers"
                )))
            }
            // pingora's h2 client buffers up to h2's 16 MiB header list; what is kept is
            // held to the one head limit.
            _ if head_size(&header.headers) > MAX_RESPONSE_HEAD_BYTES => {
                return Err(H2Error::Protocol(format!(
                    "the response head exceeds {MAX_RESPONSE_HEAD_BYTES} bytes"
                )))
            }
            status => return Ok((status, compact_headers(&header.headers))),
        }
    }
}

/// The response headers worth keeping, copied out of pingora's read buffer. pingora's parsed
/// header values are slices of the connection's 4 KiB read buffer, so keeping a clone keeps
/// the whole buffer alive: with 1,000 simultaneous 100-item batches that was ~3.6 KiB per held
/// item and most of the peak heap (valgrind massif, docs/PERFORMANCE.md). Only what
/// `kept_response_header` keeps is copied.
fn compact_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut compact = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !kept_response_header(name.as_str()) {
            continue;
        }
        let owned_name = HeaderName::from_bytes(name.as_str().as_bytes());
        let owned_value = HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (owned_name, owned_value) {
            compact.append(name, value);
        }
    }
    compact
}

/// The item's head. The authority travels as `:authority` only: pingora would send a `host`
/// header beside it, which nginx (1.22) answers 400 "client sent duplicate host header", and
/// RFC 9113 section 8.3.1 has clients use `:authority` instead.
fn request_header(
    request: &SubRequest,
    batch: &BatchHeaders,
    tls: bool,
) -> pingora::Result<RequestHeader> {
    let mut header = RequestHeader::build(
        request.method.clone(),
        request.path.as_bytes(),
        Some(request.headers.len() + batch.common.len() + 1),
    )?;
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(batch.host.as_bytes())
        .path_and_query(request.path.as_str())
        .build()
        .map_err(|e| {
            pingora::Error::because(ErrorType::InvalidHTTPHeader, "item authority or path", e)
        })?;
    header.set_uri(uri);
    let trace = crate::traces::current_headers();
    for (name, value) in item_request_headers(request, batch, &trace) {
        header.append_header(name.clone(), value.clone())?;
    }
    if let Some(length) = item_content_length(request) {
        header.insert_header(CONTENT_LENGTH, length)?;
    }
    Ok(header)
}

/// Why an HTTP/2 exchange failed, before it becomes an `ExchangeError`.
pub(super) enum H2Error {
    Connect(Box<pingora::Error>),
    Pingora {
        error: Box<pingora::Error>,
        reused: bool,
        sent: Sent,
    },
    /// An unusable answer: the request was sent in full.
    Protocol(String),
    TooLarge(usize),
}

impl From<H2Error> for ExchangeError {
    fn from(error: H2Error) -> ExchangeError {
        match error {
            H2Error::Connect(error) => ExchangeError::connect(&error),
            H2Error::Pingora { error, sent, .. } => pingora_error(&error, sent),
            H2Error::Protocol(detail) => ExchangeError::Broken {
                sent: Sent::All,
                detail,
            },
            H2Error::TooLarge(limit) => ExchangeError::TooLarge { limit },
        }
    }
}

/// What an error from pingora's h2 session becomes (a timeout is a timeout, as in `h1`).
fn pingora_error(error: &pingora::Error, sent: Sent) -> ExchangeError {
    let detail = error.to_string();
    match error.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            ExchangeError::Timeout { sent, detail }
        }
        _ => ExchangeError::Broken { sent, detail },
    }
}
