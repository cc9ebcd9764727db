//! Reading a batch request before any dialect sees it: the whole-batch checks every dialect
//! shares (method, media type, size, `Expect: 100-continue`), admission asked from the head,
//! and the body, read with a cap and counted against the memory budget.
//!
//! A refusal here is a `Rejection` value (admission's `Refused` becomes one in `refusal`);
//! what it looks like on the wire is still the dialect's `reject`. A refusal before the body
//! is read closes the connection, as the unread body would otherwise be taken for the next
//! request, except that admission drains a small declared body to keep it.

use super::Route;
use crate::admission::{BodyBytes, Refused};
use crate::config::ClientLimits;
use crate::dialect::{is_utf8_charset, Dialect, Rejection, RejectionKind};
use crate::listener::{clock_of, next_read_deadline, ClientClock, Phase};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Most bytes reserved for a batch body before any of it has arrived: a slow body holds this
/// per connection (pingora adds its own 64 KiB read buffer), and doubling up to a 1 MiB body
/// costs seven copies.
const INITIAL_BODY_CAPACITY: usize = 8 * 1024;

/// Largest declared body a refusal from the head drains to keep the connection. What is
/// drained counts toward the next request's head, so at most half of `client_max_head_bytes`.
const DRAINED_AFTER_REFUSAL: usize = 16 * 1024;

/// Checks method, media type and size, asks `admission` (given the declared length) whether
/// any batch could be admitted now, answers `Expect: 100-continue`, reads the body. `client`
/// gives the body its deadline where the connection's clock cannot (an HTTP/2 stream: its
/// connection carries other requests at the same time).
pub(super) async fn read_batch<D: Dialect>(
    session: &mut Session,
    route: &Route,
    dialect: &D,
    client: &ClientLimits,
    admission: impl FnOnce(Option<usize>) -> Option<Rejection>,
    held: &mut BodyBytes,
) -> Result<std::result::Result<Bytes, Rejection>> {
    let header = session.req_header();
    let declared = declared_length(header);
    // A request without a body (a fanout GET with a query string) needs no media type. Any
    // `Content-Length` other than a plain 0 counts as a body, whatever its spelling: pingora
    // reads `5, 5` as 5 bytes, and the media-type and size checks must see what it reads.
    let has_body = header.headers.contains_key(TRANSFER_ENCODING)
        || (header.headers.contains_key(CONTENT_LENGTH) && declared != Some(0));
    let limit = route.config.limits.max_body_bytes;
    if let Some(rejection) = check_head(header, dialect, declared, has_body, limit) {
        // A body left unread means this connection cannot carry another request; without
        // one, the connection stays open like after any other answer.
        if has_body {
            session.set_keepalive(None);
        }
        return Ok(Err(rejection));
    }
    if let Some(rejection) = admission(declared) {
        // Refused before its body is read. A small declared body is drained after the answer
        // (pingora reads and drops what is left before the next request), which keeps a
        // client's kept-alive connection: cheaper for both than a new one per refusal.
        // Anything larger, or of unknown length, closes the connection.
        let drained = DRAINED_AFTER_REFUSAL.min(client.max_head_bytes / 2);
        if has_body && declared.is_some_and(|n| n <= drained) {
            // pingora closes a connection answered before its body is in unless told.
            session
                .downstream_session
                .set_close_on_response_before_downstream_finish(false);
        } else if has_body {
            session.set_keepalive(None);
        }
        return Ok(Err(rejection));
    }
    if has_body && expects_continue(header) {
        session.write_continue_response().await?;
    }
    let own_deadline = clock_of(session).is_none().then_some(client);
    let read = read_body(session, dialect, declared, limit, own_deadline, held).await;
    // Read (or refused, and the connection then closes): no deadline while the batch runs.
    if let Some(clock) = clock_of(session) {
        clock.body_done();
    }
    let mut body = match read? {
        Ok(body) => body,
        Err(rejection) => return Ok(Err(rejection)),
    };
    // A UTF-8 byte order mark is not part of the JSON text (RFC 8259 section 8.1 lets parsers
    // ignore it); Windows PowerShell and some .NET clients send one.
    if body.starts_with(b"\xEF\xBB\xBF") {
        let _ = body.split_to(3);
    }
    Ok(Ok(body.freeze()))
}

/// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
fn expects_continue(header: &RequestHeader) -> bool {
    header
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The declared body length: every `Content-Length` field and list member must name the
/// same decimal number (RFC 9110 section 8.6 lets a recipient read `5, 5` as 5); `None`
/// without one, or when they disagree or are not numbers (then the body reader's own limit
/// still applies as bytes arrive).
pub(super) fn declared_length(header: &RequestHeader) -> Option<usize> {
    let mut length = None;
    for value in header.headers.get_all(CONTENT_LENGTH) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = std::str::from_utf8(member.trim_ascii()).ok()?;
            if member.is_empty() || !member.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // All digits: only an overflow fails, and that is too large anyway.
            let n = member.parse::<usize>().unwrap_or(usize::MAX);
            if length.is_some_and(|seen| seen != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// The refusal the request head alone decides, checked in this order: method, media type
/// (only when there is a body), declared size.
fn check_head<D: Dialect>(
    header: &RequestHeader,
    dialect: &D,
    declared: Option<usize>,
    has_body: bool,
    limit: usize,
) -> Option<Rejection> {
    if !dialect.accepts_method(&header.method) {
        let message = format!("{} is not allowed on this batch route", header.method);
        return Some(Rejection::new(
            RejectionKind::MethodNotAllowed,
            "MethodNotAllowed",
            message,
        ));
    }
    let content_type = header.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let unsupported = has_body
        .then(|| unsupported_media_type(content_type, dialect))
        .flatten();
    if let Some(message) = unsupported {
        return Some(Rejection::new(
            RejectionKind::UnsupportedMediaType,
            "UnsupportedMediaType",
            message,
        ));
    }
    declared
        .is_some_and(|len| len > limit)
        .then(|| too_large(limit))
}

/// Why the body's media type is refused, if it is.
fn unsupported_media_type<D: Dialect>(content_type: Option<&[u8]>, dialect: &D) -> Option<String> {
    match content_type {
        Some(value) if !dialect.accepts_content_type(value) => Some(format!(
            "the batch body must be sent with Content-Type: {}",
            dialect.media_type_name()
        )),
        Some(value) if dialect.is_json() && !is_utf8_charset(value) => Some(format!(
            "the batch body must be UTF-8 JSON; Content-Type {:?} names another charset",
            String::from_utf8_lossy(value)
        )),
        Some(_) => None,
        None if dialect.requires_content_type() => Some(format!(
            "the batch body must be sent with Content-Type: {}",
            dialect.media_type_name()
        )),
        None => None,
    }
}

/// Reads the body, refusing it as soon as it grows past `limit` or its bytes would take the
/// admission's held bytes past the memory budget (`held`); with `own_deadline`, also once it
/// is later than the body timeout and minimum rate allow.
async fn read_body<D: Dialect>(
    session: &mut Session,
    dialect: &D,
    declared: Option<usize>,
    limit: usize,
    own_deadline: Option<&ClientLimits>,
    held: &mut BodyBytes,
) -> Result<std::result::Result<BytesMut, Rejection>> {
    // Reserve little up front: a declared length is only a claim, and a client that
    // declares `max_body_bytes` and then sends nothing should not hold that much per connection.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY));
    let started = tokio::time::Instant::now();
    loop {
        let read = session.read_request_body();
        // The whole body within the body timeout and minimum rate, and (as over HTTP/1.1,
        // nginx's `client_body_timeout`) each read within the body timeout of the last.
        let deadline = own_deadline.and_then(|limits| {
            let now = tokio::time::Instant::now();
            next_read_deadline(limits, started, body.len() as u64, now)
        });
        let read = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(read) => read,
                Err(_) => return Ok(Err(body_timeout())),
            },
            None => read.await,
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return body_error(session, dialect, e),
        };
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(Err(too_large(limit)));
        }
        if let Err(refused) = held.grow(chunk.len()) {
            session.set_keepalive(None);
            return Ok(Err(refusal(refused)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// What a failure while reading the body becomes: nothing for a client that left, 408 for
/// one that stalled, the dialect's refusal for a malformed body.
fn body_error<D: Dialect, T>(
    session: &mut Session,
    dialect: &D,
    e: Box<Error>,
) -> Result<std::result::Result<T, Rejection>> {
    let expired = clock_of(session).and_then(ClientClock::expired);
    if expired == Some(Phase::Body) {
        // Too slow for `client_body_timeout`: 408 in the route's format, then close (the
        // rest of the body would be taken for the next request).
        session.set_keepalive(None);
        return Ok(Err(body_timeout()));
    }
    match e.etype() {
        // The client went away: nobody to answer.
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Err(e.into_down())
        }
        // The client stalled mid-body (pingora's 60 s read timeout): 408, as nginx's
        // client_body_timeout does, rather than pingora's default 500.
        ErrorType::ReadTimedout => Error::e_explain(
            ErrorType::HTTPStatus(408),
            "timed out reading the batch body",
        ),
        // A malformed chunked encoding is the client's mistake, not a 500; the framing
        // is lost, so the connection closes after the answer.
        _ => {
            session.set_keepalive(None);
            Ok(Err(dialect.malformed_body(format!(
                "the request body could not be read: {}",
                e.to_string().trim()
            ))))
        }
    }
}

fn body_timeout() -> Rejection {
    Rejection::new(
        RejectionKind::BodyTimeout,
        "RequestTimeout",
        "the batch body did not arrive within the client body timeout",
    )
}

fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        RejectionKind::BodyTooLarge,
        "RequestEntityTooLarge",
        format!("the batch body exceeds {limit} bytes"),
    )
}

/// An admission refusal (`crate::admission`) as a whole-batch rejection with its
/// `Retry-After`.
pub(super) fn refusal(refused: Refused) -> Rejection {
    let mut rejection = Rejection::new(
        refused.why.kind(),
        refused.why.code(),
        refused.why.message(),
    );
    rejection.retry_after = Some(refused.retry_after);
    rejection
}
