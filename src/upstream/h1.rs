//! One HTTP/1.1 exchange on an upstream connection: the request written in one `write`, the
//! response read into one growing buffer and framed per RFC 9112 section 6.
//!
//! This replaces pingora's `HttpSession` for batch items, which cost two `sendto` per POST item
//! (the header is flushed before the body), a zeroed 4 KiB read buffer and a header map per
//! response, and showed as a third of batchgate's CPU per item (docs/PERFORMANCE.md). The
//! connection itself still comes from pingora's connector and goes back to its pool.
//!
//! What it accepts from an upstream is deliberately narrow: a response whose framing is
//! ambiguous (two different `Content-Length`s, `Transfer-Encoding` with `Content-Length`) is read
//! by the rule the RFC gives and the connection is not reused; anything it cannot frame is an
//! error, never a guess.

use super::attempt::may_send_again;
use super::exchange_error::ExchangeError;
use super::message::{item_content_length, item_request_headers, PREALLOCATE_LIMIT};
use super::pool::{Conn, Pool};
use super::BatchHeaders;
use crate::item::{Sent, SubRequest, UpstreamResponse};
use crate::metrics::Carried;
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use std::future::Future;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bytes read per `read` call at least; a typical JSON answer fits in one.
const READ_CHUNK: usize = 8 * 1024;
/// Most bytes of a response head (status line and headers) accepted: the one limit every
/// upstream client enforces.
const MAX_HEAD_BYTES: usize = super::MAX_RESPONSE_HEAD_BYTES;
/// Most headers in one response head.
const MAX_HEADERS: usize = 128;
/// Most bytes of one chunk-size line (size, extensions) or of the trailer section.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// A body up to this size is copied behind the head so both leave in one `write`.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, Error)]
pub enum H1Error {
    /// The connection failed or closed. `nothing_received` is true when not one byte of a
    /// response arrived: on a reused connection that usually means the upstream closed it
    /// while idle. `sent` says how much of the request left before the failure.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
        nothing_received: bool,
        sent: Sent,
    },
    /// The connection closed before the response was complete.
    #[error("the upstream closed the connection {context}")]
    Closed {
        context: &'static str,
        nothing_received: bool,
    },
    /// A read or write timeout fired; the text says which.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The response could not be framed or parsed.
    #[error("invalid response from the upstream: {0}")]
    Protocol(String),
    #[error("the response body exceeds {0} bytes")]
    TooLarge(usize),
}

impl H1Error {
    /// True when the connection failed before any byte of an answer arrived: pingora's rule
    /// for a stale pooled connection. The request may still have been acted on (the upstream
    /// could have crashed after processing it), so only idempotent requests are sent again
    /// on this ground (RFC 9112 section 9.3.1).
    pub fn nothing_received(&self) -> bool {
        matches!(
            self,
            H1Error::Io {
                nothing_received: true,
                ..
            } | H1Error::Closed {
                nothing_received: true,
                ..
            }
        )
    }

    /// True when not one byte of the request was written: safe to send again, whatever the
    /// method.
    pub fn unsent(&self) -> bool {
        self.sent() == Sent::Nothing
    }

    /// How much of the request reached the upstream: known to be all of it only once an
    /// answer began; nothing only when not a byte was written; otherwise unknown.
    pub fn sent(&self) -> Sent {
        match self {
            H1Error::Io { sent, .. } => *sent,
            H1Error::Closed {
                nothing_received: true,
                ..
            } => Sent::Maybe,
            // A timeout does not say whether the request had all left or an answer begun.
            H1Error::Timeout(_) => Sent::Maybe,
            _ => Sent::All,
        }
    }
}

impl From<H1Error> for ExchangeError {
    /// A timeout is a timeout wherever it fires: the item timeout (in the executor) or a
    /// shorter per-read or per-write one here.
    fn from(error: H1Error) -> ExchangeError {
        let sent = error.sent();
        match error {
            H1Error::TooLarge(limit) => ExchangeError::TooLarge { limit },
            H1Error::Timeout(_) => ExchangeError::Timeout {
                sent,
                detail: error.to_string(),
            },
            _ => ExchangeError::Broken {
                sent,
                detail: error.to_string(),
            },
        }
    }
}

/// One item over HTTP/1.1: on an idle pooled connection when there is one, else on a new one
/// (`connect`); the connection goes back to `pool` only when its response was read to the end
/// with its framing intact. A pooled connection that fails before any answer (the upstream
/// closed it while idle) is replaced by a new one and the request sent again when that is safe
/// (RFC 9112 section 9.3.1): a POST that may have reached the upstream gets an error rather
/// than a second try.
pub(super) async fn send<F: Future<Output = pingora::Result<pingora::protocols::Stream>>>(
    connect: impl FnOnce() -> F,
    pool: &Pool,
    request: &SubRequest,
    batch: &BatchHeaders,
    timeouts: Timeouts,
    repeatable: bool,
    count: impl Fn(Carried),
) -> Result<UpstreamResponse, ExchangeError> {
    if let Some(conn) = pool.take() {
        count(Carried::Reused);
        match on_connection(conn, pool, request, batch, timeouts).await {
            Ok(response) => return Ok(response),
            Err(error)
                if resend_on_new_connection(error.sent(), error.nothing_received(), repeatable) => {
            }
            Err(error) => return Err(error.into()),
        }
    }
    // Boxed: a connect (pingora's, TLS included) is a large future most items never run.
    let conn = match Box::pin(connect()).await {
        Ok(stream) => Conn::new(stream),
        Err(error) => return Err(ExchangeError::connect(&error)),
    };
    count(Carried::New);
    Ok(on_connection(conn, pool, request, batch, timeouts).await?)
}

/// Whether a request that failed on a kept connection goes once more on a new one: nothing of
/// it left, or not one byte of an answer came back (the upstream may have closed the idle
/// connection), and it is safe to send again (`may_send_again`). For pooled and pipelined
/// connections alike.
fn resend_on_new_connection(sent: Sent, nothing_received: bool, repeatable: bool) -> bool {
    (sent == Sent::Nothing || nothing_received) && may_send_again(sent, repeatable)
}

/// One exchange on `conn`, which goes back to `pool` when it may carry another request.
async fn on_connection(
    mut conn: Conn,
    pool: &Pool,
    request: &SubRequest,
    batch: &BatchHeaders,
    timeouts: Timeouts,
) -> Result<UpstreamResponse, H1Error> {
    let exchanged = exchange(&mut conn.stream, request, batch, timeouts).await?;
    if exchanged.reusable {
        pool.put(conn);
    }
    Ok(exchanged.response)
}

/// What a failure was doing when it happened while the request was being written.
const WRITING: &str = "writing the request";

/// Per-operation timeouts of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub read: Duration,
    pub write: Duration,
}

impl Timeouts {
    /// `timeout` if it can fire before `bound` (the item timeout, enforced by the executor).
    fn armed(timeout: Duration, bound: Duration) -> Option<Duration> {
        (timeout < bound).then_some(timeout)
    }
}

/// Awaits `work`, giving up after `timeout` when there is one.
async fn bounded<T>(timeout: Option<Duration>, work: impl Future<Output = T>) -> Option<T> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, work).await.ok(),
        None => Some(work.await),
    }
}

/// A complete response and whether the connection may carry another request.
#[derive(Debug)]
pub struct Exchanged {
    pub response: UpstreamResponse,
    pub reusable: bool,
    /// The upstream closes the connection after this answer and acts on nothing behind it.
    pub closing: bool,
}

/// Writes `request` and reads its response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &SubRequest,
    batch: &BatchHeaders,
    timeouts: Timeouts,
) -> Result<Exchanged, H1Error> {
    let mut written = 0usize;
    let write = write_request(stream, request, batch, &mut written);
    match bounded(Timeouts::armed(timeouts.write, batch.item_timeout), write).await {
        Some(Ok(())) => {}
        Some(Err(source)) => {
            let sent = if written == 0 {
                Sent::Nothing
            } else {
                Sent::Maybe
            };
            let nothing_received = true;
            return Err(H1Error::Io {
                context: WRITING,
                source,
                nothing_received,
                sent,
            });
        }
        None => return Err(H1Error::Timeout(WRITING)),
    }
    let mut reader = Reader {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        timeout: Timeouts::armed(timeouts.read, batch.item_timeout),
        received: false,
        chunk: READ_CHUNK,
    };
    reader
        .read_response(
            request.method == Method::HEAD,
            batch.max_response_bytes,
            false,
        )
        .await
}

/// The head, and a body of up to `COALESCE_LIMIT` bytes in the same write; `written` counts
/// what left, so a failure can tell "nothing sent" from "partly sent".
async fn write_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &SubRequest,
    batch: &BatchHeaders,
    written: &mut usize,
) -> std::io::Result<()> {
    if let Some(whole) = encode_request(request, batch) {
        write_counted(stream, &whole, written).await?;
        return stream.flush().await;
    }
    let mut head = Vec::with_capacity(256);
    encode_head(request, batch, &mut head);
    write_counted(stream, &head, written).await?;
    write_counted(stream, request.body.as_deref().unwrap_or_default(), written).await?;
    stream.flush().await
}

/// `write_all` that counts what left, so a failure can tell "nothing sent" from "partly sent".
async fn write_counted<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut bytes: &[u8],
    written: &mut usize,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = stream.write(bytes).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *written += n;
        bytes = bytes.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// The whole request (head and body) in one buffer, when its body is at most
/// `COALESCE_LIMIT` bytes; `None` for a larger body, which is written after the head.
fn encode_request(request: &SubRequest, batch: &BatchHeaders) -> Option<Vec<u8>> {
    let body = request.body.as_deref().unwrap_or_default();
    if body.len() > COALESCE_LIMIT {
        return None;
    }
    let mut whole = Vec::with_capacity(256 + body.len());
    encode_head(request, batch, &mut whole);
    whole.extend_from_slice(body);
    Some(whole)
}

/// The request line and headers. Every name and value was validated when it became a
/// `HeaderName`/`HeaderValue` (no CR, LF or NUL), and the path by the URL guard.
fn encode_head(request: &SubRequest, batch: &BatchHeaders, out: &mut Vec<u8>) {
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(batch.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let trace = crate::traces::current_headers();
    for (name, value) in item_request_headers(request, batch, &trace) {
        push_header(out, name, value);
    }
    if let Some(length) = item_content_length(request) {
        push_content_length(out, length);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_content_length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Where a message head that starts at 0 ends (just past its empty line), looking for the
/// end from `from` on; a bare LF ends lines too (RFC 9112 section 2.2).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    memchr::memchr_iter(b'\n', tail).find_map(|at| {
        let after = buf.get(from + at + 1..)?;
        if after.first() == Some(&b'\n') {
            Some(from + at + 2)
        } else if after.starts_with(b"\r\n") {
            Some(from + at + 3)
        } else {
            None
        }
    })
}

pub mod pipeline;
mod read;
pub mod relay;

use read::Reader;
#[cfg(test)]
use read::{fitted, parse_chunk_size};

#[cfg(test)]
mod tests;
