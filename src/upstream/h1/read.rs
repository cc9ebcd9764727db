//! The response side of an HTTP/1.1 exchange: one growing buffer, the head parsed with
//! httparse and held to the head limit, interim answers skipped, and the body framed per
//! RFC 9112 section 6.3 (length, chunked with bounded lines and trailers, or until close).

use super::{
    bounded, Exchanged, H1Error, MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES, MAX_TRAILER_BYTES,
    PREALLOCATE_LIMIT,
};
use crate::item::{Sent, UpstreamResponse};
use crate::upstream::message::{kept_response_header, MAX_INTERIM_RESPONSES};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How the body of a response is delimited (RFC 9112 section 6.3).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What the header section says about framing and the connection.
pub(super) struct HeadInfo {
    status: u16,
    headers: HeaderMap,
    /// How a body, if the response has one, is delimited.
    framing: Framing,
    /// Whether the connection may carry another request after this response (version,
    /// `Connection`, and framing that leaves no doubt), whatever the body turns out to be.
    persistent: bool,
    /// Whether the head named a framing (`Content-Length` or `Transfer-Encoding`) at all.
    declared_framing: bool,
}

impl HeadInfo {
    /// Whether the head announces a body (a length above zero, or chunked).
    fn declares_body(&self) -> bool {
        match self.framing {
            Framing::Length(len) => len > 0,
            Framing::Chunked | Framing::UntilClose => self.declared_framing,
            Framing::None => false,
        }
    }
}

pub(super) struct Reader<'s, S> {
    pub stream: &'s mut S,
    pub buf: BytesMut,
    pub timeout: Option<Duration>,
    /// Whether any response byte arrived.
    pub received: bool,
    /// Room made in `buf` before a read that would have less than 1 KiB.
    pub chunk: usize,
}

impl<S: AsyncRead + Unpin> Reader<'_, S> {
    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    pub(super) async fn fill(&mut self, context: &'static str) -> Result<usize, H1Error> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.chunk);
        }
        match bounded(self.timeout, self.stream.read_buf(&mut self.buf)).await {
            Some(Ok(n)) => {
                self.received |= n > 0;
                Ok(n)
            }
            Some(Err(source)) => Err(H1Error::Io {
                context,
                source,
                nothing_received: !self.received,
                sent: if self.received {
                    Sent::All
                } else {
                    Sent::Maybe
                },
            }),
            None => Err(H1Error::Timeout(context)),
        }
    }

    /// Like `fill`, but the end of the stream is an error.
    pub(super) async fn fill_some(&mut self, context: &'static str) -> Result<(), H1Error> {
        if self.fill(context).await? == 0 {
            return Err(H1Error::Closed {
                context,
                nothing_received: !self.received,
            });
        }
        Ok(())
    }

    /// One response; `followed`: more pipelined answers come behind it on this connection, so
    /// bytes after it are the next one's, not stray.
    pub(super) async fn read_response(
        &mut self,
        is_head: bool,
        limit: usize,
        followed: bool,
    ) -> Result<Exchanged, H1Error> {
        let head = self.read_final_head().await?;
        // HEAD, 204 and 304 declare the representation's length but carry no body, and
        // need no length to keep the connection (a 204 must not even send one).
        let bodiless = is_head || matches!(head.status, 204 | 304);
        let declares_body = head.declares_body();
        let framing = if bodiless {
            Framing::None
        } else {
            head.framing
        };
        // A bodiless answer that still declares a body leaves room for bytes the upstream may
        // send anyway, later: the next item on this connection, another client's, would read
        // them as its own answer. Such a connection is not reused (nginx keeps it; the cost
        // is one new connection).
        let mut reusable =
            head.persistent && framing != Framing::UntilClose && !(bodiless && declares_body);
        let body = match framing {
            Framing::None => Bytes::new(),
            Framing::Length(len) => self.read_sized(len, limit).await?,
            Framing::Chunked => self.read_chunked(limit).await?,
            Framing::UntilClose => self.read_to_close(limit).await?,
        };
        // Bytes after the response that nobody asked for: the connection's framing cannot be
        // trusted any more.
        reusable &= followed || self.buf.is_empty();
        // The upstream said it closes the connection (or must, to end the body): it acts on
        // no request after this one (RFC 9112 section 9.6).
        let closing = !head.persistent || framing == Framing::UntilClose;
        let (status, headers) = (head.status, head.headers);
        let response = UpstreamResponse {
            status,
            headers,
            body,
        };
        Ok(Exchanged {
            response,
            reusable,
            closing,
        })
    }

    /// The final response head, past interim answers (100 Continue, 103 Early Hints) a
    /// client skips; 101 would switch the connection to a protocol an item cannot use.
    async fn read_final_head(&mut self) -> Result<HeadInfo, H1Error> {
        for _ in 0..=MAX_INTERIM_RESPONSES {
            let head = self.read_head().await?;
            match head.status {
                101 => {
                    let why = "the upstream switched protocols".to_string();
                    return Err(H1Error::Protocol(why));
                }
                100..=199 => continue,
                _ => return Ok(head),
            }
        }
        Err(H1Error::Protocol(format!(
            "more than {MAX_INTERIM_RESPONSES} interim (1xx) answers"
        )))
    }

    /// Reads and parses one response head, consuming it from the buffer.
    async fn read_head(&mut self) -> Result<HeadInfo, H1Error> {
        // Where to look for the end of the head next: parsing again from the start after
        // every read would be quadratic in a head that trickles in.
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(3);
            searched = self.buf.len();
            let complete = super::head_end(&self.buf, from).is_some();
            // Checked before anything else, on every pass: a head that never ends and a
            // complete head that arrived in one huge read are refused alike, and nothing
            // more is buffered once the limit is crossed.
            if self.buf.len() > MAX_HEAD_BYTES && !complete {
                return Err(head_too_large());
            }
            // The first bytes are parsed at once too, so something that is not HTTP at all
            // is refused without waiting for more.
            let first_look = from == 0 && !self.buf.is_empty();
            if complete || first_look {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut slots);
                match parsed.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
                        return Err(head_too_large())
                    }
                    Ok(httparse::Status::Complete(len)) => {
                        let info = head_info(&parsed)?;
                        self.buf.advance(len);
                        return Ok(info);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(H1Error::Protocol(format!("malformed response head: {e}")))
                    }
                }
            }
            self.fill_some("before the response head was complete")
                .await?;
        }
    }

    async fn read_sized(&mut self, len: usize, limit: usize) -> Result<Bytes, H1Error> {
        if len > limit {
            return Err(H1Error::TooLarge(limit));
        }
        // The common case: the whole body arrived with the head. Copy it out so the body does
        // not keep the read buffer alive (one buffer per held item adds up with 100k items).
        if self.buf.len() >= len {
            return Ok(Bytes::copy_from_slice(&self.buf.split_to(len)));
        }
        let mut body = BytesMut::with_capacity(len.min(PREALLOCATE_LIMIT));
        body.extend_from_slice(&self.buf.split());
        while body.len() < len {
            self.fill_some("in the middle of the response body").await?;
            let take = (len - body.len()).min(self.buf.len());
            body.extend_from_slice(&self.buf.split_to(take));
        }
        Ok(fitted(body))
    }

    async fn read_to_close(&mut self, limit: usize) -> Result<Bytes, H1Error> {
        let mut body = BytesMut::new();
        loop {
            if body.len() + self.buf.len() > limit {
                return Err(H1Error::TooLarge(limit));
            }
            body.extend_from_slice(&self.buf.split());
            if self.fill("in the middle of the response body").await? == 0 {
                return Ok(fitted(body));
            }
        }
    }

    /// Decodes a chunked body (RFC 9112 section 7.1); extensions and trailers are dropped.
    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, H1Error> {
        let mut body = BytesMut::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, "in a chunk size").await?;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if body.len().saturating_add(size) > limit {
                return Err(H1Error::TooLarge(limit));
            }
            body.reserve(size.min(PREALLOCATE_LIMIT));
            let mut remaining = size;
            while remaining > 0 {
                if self.buf.is_empty() {
                    self.fill_some("in the middle of a chunk").await?;
                }
                let take = remaining.min(self.buf.len());
                body.extend_from_slice(&self.buf.split_to(take));
                remaining -= take;
            }
            let end = self.read_line(2, "after a chunk").await?;
            if !end.is_empty() {
                return Err(H1Error::Protocol(
                    "a chunk is longer than its size".to_string(),
                ));
            }
        }
        // Trailer fields, up to the empty line.
        let mut trailer_bytes = 0usize;
        loop {
            let line = self.read_line(MAX_TRAILER_BYTES, "in the trailers").await?;
            if line.is_empty() {
                return Ok(fitted(body));
            }
            trailer_bytes += line.len() + 2;
            if trailer_bytes > MAX_TRAILER_BYTES {
                return Err(H1Error::Protocol(format!(
                    "the trailers exceed {MAX_TRAILER_BYTES} bytes"
                )));
            }
        }
    }

    /// One CRLF-terminated line without its CRLF, at most `max` bytes long.
    pub(super) async fn read_line(
        &mut self,
        max: usize,
        context: &'static str,
    ) -> Result<BytesMut, H1Error> {
        let mut searched = 0;
        loop {
            // The first CRLF (a bare LF does not end these lines).
            let crlf = self.buf.get(searched..).and_then(|rest| {
                memchr::memchr_iter(b'\n', rest)
                    .find(|&at| at > 0 && rest.get(at - 1) == Some(&b'\r'))
                    .map(|at| at - 1)
            });
            if let Some(at) = crlf {
                if searched + at > max {
                    return Err(H1Error::Protocol(format!(
                        "a line {context} exceeds {max} bytes"
                    )));
                }
                let line = self.buf.split_to(searched + at);
                self.buf.advance(2);
                return Ok(line);
            }
            searched = self.buf.len().saturating_sub(1);
            if self.buf.len() > max {
                return Err(H1Error::Protocol(format!(
                    "a line {context} exceeds {max} bytes"
                )));
            }
            self.fill_some(context).await?;
        }
    }
}

/// The body as kept until the batch reply is written. A buffer that grew by doubling can hold
/// up to twice its bytes; with many large items waiting for their batch that slack adds up,
/// so a loosely fitting buffer is copied into an exact one.
pub(super) fn fitted(body: BytesMut) -> Bytes {
    let slack = body.capacity() - body.len();
    if slack > 4096 && slack > body.len() / 8 {
        Bytes::copy_from_slice(&body)
    } else {
        body.freeze()
    }
}

/// The hexadecimal size at the start of a chunk-size line; extensions after `;` are ignored.
pub(super) fn parse_chunk_size(line: &[u8]) -> Result<usize, H1Error> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || H1Error::Protocol("invalid chunk size".to_string());
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid());
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid())?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    usize::from_str_radix(text, 16).map_err(|_| invalid())
}

pub(super) fn head_too_large() -> H1Error {
    H1Error::Protocol(format!("the response head exceeds {MAX_HEAD_BYTES} bytes"))
}

/// Status, kept headers, framing and persistence from a parsed head.
pub(super) fn head_info(parsed: &httparse::Response<'_, '_>) -> Result<HeadInfo, H1Error> {
    let status = parsed
        .code
        .ok_or_else(|| H1Error::Protocol("no status code".to_string()))?;
    if status < 100 {
        return Err(H1Error::Protocol(format!(
            "status code {status} is not an HTTP status"
        )));
    }
    // Every kept header is held until the batch reply is written: sized exactly.
    let mut headers = HeaderMap::with_capacity(
        parsed
            .headers
            .iter()
            .filter(|h| kept_response_header(h.name))
            .count(),
    );
    let mut fields = FramingFields::default();
    for header in parsed.headers.iter() {
        fields.observe(header.name, header.value)?;
        if !kept_response_header(header.name) {
            continue;
        }
        let owned_name = HeaderName::from_bytes(header.name.as_bytes());
        let owned_value = HeaderValue::from_bytes(header.value);
        if let (Ok(name), Ok(value)) = (owned_name, owned_value) {
            headers.append(name, value);
        }
    }
    let declared_framing = fields.has_transfer_encoding || fields.content_length.is_some();
    let (framing, persistent) = fields.decide(parsed.version == Some(0))?;
    Ok(HeadInfo {
        status,
        headers,
        framing,
        persistent,
        declared_framing,
    })
}

/// What the framing and connection headers of a response head say, gathered line by line.
#[derive(Default)]
pub(super) struct FramingFields {
    content_length: Option<usize>,
    conflicting_length: bool,
    has_transfer_encoding: bool,
    /// The last transfer coding over all `Transfer-Encoding` lines, in order (one list).
    last_coding_chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    pub(super) fn observe(&mut self, name: &str, value: &[u8]) -> Result<(), H1Error> {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name.eq_ignore_ascii_case("content-length") {
            for part in tokens() {
                let len = parse_length(part)?;
                match self.content_length {
                    Some(seen) if seen != len => self.conflicting_length = true,
                    _ => self.content_length = Some(len),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.has_transfer_encoding = true;
            for coding in tokens().filter(|coding| !coding.is_empty()) {
                self.last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens() {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// Whether the head named a framing (`Content-Length` or `Transfer-Encoding`) at all.
    pub(super) fn declares_framing(&self) -> bool {
        self.has_transfer_encoding || self.content_length.is_some()
    }

    /// How the body is delimited, and whether the connection may carry another request.
    pub(super) fn decide(self, http10: bool) -> Result<(Framing, bool), H1Error> {
        if self.conflicting_length && !self.has_transfer_encoding {
            return Err(H1Error::Protocol(
                "conflicting Content-Length values".to_string(),
            ));
        }
        let persistent = if http10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        if !self.has_transfer_encoding {
            let framing = self
                .content_length
                .map_or(Framing::UntilClose, Framing::Length);
            return Ok((framing, persistent));
        }
        // Transfer-Encoding overrides Content-Length, and a message with both may be an
        // attempt at smuggling: read it by the RFC's rule, then close (RFC 9112 6.3 item 3).
        // HTTP/1.0 has no Transfer-Encoding: such a message is faulty framing (6.1).
        let persistent = persistent && self.content_length.is_none() && !http10;
        let framing = if self.last_coding_chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
        Ok((framing, persistent))
    }
}

pub(super) fn parse_length(value: &[u8]) -> Result<usize, H1Error> {
    let invalid = || H1Error::Protocol("invalid Content-Length".to_string());
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(invalid)
}
