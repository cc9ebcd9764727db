//! Pass-through over batchgate's own HTTP/1.1 exchange: a client's request (its head already
//! rewritten by the proxy) written to an upstream connection with the rest of its body
//! streamed from the client, and the answer streamed back with a head rewritten by the rule
//! items use (`message::kept_response_header`) and framing chosen here: `Content-Length` when
//! the upstream gave one, otherwise chunked. Each direction holds one bounded buffer, so a
//! 1 GiB body either way holds a few pieces of at most `PIECE` bytes, never the body.
//!
//! The upstream's framing is read by the same rules as an item's answer (`read.rs`): a head
//! it cannot frame is a 502 before anything reaches the client, and a connection whose framing
//! is in doubt is not reused.

use super::read::{head_too_large, parse_chunk_size, Framing, FramingFields, Reader};
use super::{
    bounded, write_counted, H1Error, Timeouts, MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES,
    MAX_TRAILER_BYTES, WRITING,
};
use crate::item::Sent;
use crate::upstream::message::{kept_response_header, MAX_INTERIM_RESPONSES};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most bytes read at once from either side, and what the answer's pending bytes may reach
/// before they are written to the client.
pub const PIECE: usize = 64 * 1024;

/// The request as the proxy prepared it.
pub struct Outbound<'a> {
    /// The request head, followed by whatever of the body was read with it.
    pub first: &'a [u8],
    /// Body bytes still to come from the client.
    pub rest: u64,
    /// The answer ends the client connection (`Connection: close` is added to it).
    pub close: bool,
}

impl Outbound<'_> {
    /// The same request for another attempt.
    pub fn again(&self) -> Outbound<'_> {
        Outbound {
            first: self.first,
            rest: self.rest,
            close: self.close,
        }
    }
}

/// How a relay failed.
#[derive(Debug)]
pub enum RelayError {
    /// No connection could be made to any address tried.
    Connect(String),
    /// Before any byte of the answer reached the client: the proxy can still answer.
    Upstream(H1Error),
    /// The client's body could not be read: the client left, or its deadline passed.
    ClientBody(std::io::Error),
    /// The answer had begun when the relay failed: the client connection must close.
    Cut { status: u16, detail: String },
}

/// A relayed answer.
#[derive(Debug)]
pub struct Answered {
    pub status: u16,
    /// The upstream connection may carry another request.
    pub reusable: bool,
}

/// Sends `out` (and the rest of its body from `client`) on `upstream` and relays the answer.
pub async fn relay<U, C>(
    upstream: &mut U,
    client: &mut C,
    out: Outbound<'_>,
    timeouts: Timeouts,
    buffers: &mut Buffers,
) -> Result<Answered, RelayError>
where
    U: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    send(upstream, client, &out, timeouts).await?;
    buffers.upstream.clear();
    buffers.pending.clear();
    let mut reader = Reader {
        stream: upstream,
        buf: std::mem::take(&mut buffers.upstream),
        timeout: Some(timeouts.read),
        received: false,
        chunk: PIECE,
    };
    let mut sink = Sink {
        pending: std::mem::take(&mut buffers.pending),
    };
    let result = answer(&mut reader, client, &mut sink, out.close).await;
    buffers.upstream = reader.buf;
    buffers.pending = sink.pending;
    result
}

/// The buffers of one relay, kept by the caller from request to request (a client
/// connection's): what the upstream sent, and what waits to go to the client.
#[derive(Default)]
pub struct Buffers {
    upstream: BytesMut,
    pending: Vec<u8>,
}

impl Buffers {
    /// Drops buffers that grew for a large answer, so an idle connection holds little.
    pub fn trim(&mut self) {
        if self.upstream.capacity() > TRIM_ABOVE {
            self.upstream = BytesMut::new();
        }
        if self.pending.capacity() > TRIM_ABOVE {
            self.pending = Vec::new();
        }
    }
}

/// Buffers larger than this are not kept between requests.
const TRIM_ABOVE: usize = 16 * 1024;

/// Writes the head and the body, streaming what is still at the client in pieces.
async fn send<U, C>(
    upstream: &mut U,
    client: &mut C,
    out: &Outbound<'_>,
    timeouts: Timeouts,
) -> Result<(), RelayError>
where
    U: AsyncWrite + Unpin,
    C: AsyncRead + Unpin,
{
    let mut written = 0usize;
    write_upstream(upstream, out.first, timeouts, &mut written).await?;
    let mut rest = out.rest;
    if rest > 0 {
        let mut piece = vec![0u8; usize::try_from(rest).unwrap_or(PIECE).min(PIECE)];
        while rest > 0 {
            let want = usize::try_from(rest).unwrap_or(PIECE).min(piece.len());
            let Some(window) = piece.get_mut(..want) else {
                break;
            };
            let n = client.read(window).await.map_err(RelayError::ClientBody)?;
            if n == 0 {
                let eof = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed in the middle of its body",
                );
                return Err(RelayError::ClientBody(eof));
            }
            let read = piece.get(..n).unwrap_or_default();
            write_upstream(upstream, read, timeouts, &mut written).await?;
            rest -= n as u64;
        }
    }
    match bounded(Some(timeouts.write), upstream.flush()).await {
        Some(Ok(())) => Ok(()),
        Some(Err(source)) => Err(write_failed(source, written)),
        None => Err(RelayError::Upstream(H1Error::Timeout(WRITING))),
    }
}

async fn write_upstream<U: AsyncWrite + Unpin>(
    upstream: &mut U,
    bytes: &[u8],
    timeouts: Timeouts,
    written: &mut usize,
) -> Result<(), RelayError> {
    let write = write_counted(upstream, bytes, written);
    match bounded(Some(timeouts.write), write).await {
        Some(Ok(())) => Ok(()),
        Some(Err(source)) => Err(write_failed(source, *written)),
        None => Err(RelayError::Upstream(H1Error::Timeout(WRITING))),
    }
}

fn write_failed(source: std::io::Error, written: usize) -> RelayError {
    let sent = if written == 0 {
        Sent::Nothing
    } else {
        Sent::Maybe
    };
    RelayError::Upstream(H1Error::Io {
        context: WRITING,
        source,
        nothing_received: true,
        sent,
    })
}

/// How the answer's body is read from the upstream.
enum Body {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads the answer's head, writes the client's, then relays the body.
async fn answer<U, C>(
    reader: &mut Reader<'_, U>,
    client: &mut C,
    sink: &mut Sink,
    close: bool,
) -> Result<Answered, RelayError>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let head = read_head(reader, &mut sink.pending, close)
        .await
        .map_err(RelayError::Upstream)?;
    let status = head.status;
    let cut = |detail: String| RelayError::Cut { status, detail };
    let result = match head.body {
        Body::None => Ok(()),
        Body::Length(len) => relay_sized(reader, client, sink, len).await,
        Body::Chunked => relay_chunked(reader, client, sink).await,
        Body::UntilClose => relay_to_close(reader, client, sink).await,
    };
    match result {
        Ok(()) => {}
        Err(Failed::Upstream(error)) => return Err(cut(error.to_string())),
        Err(Failed::Client(error)) => return Err(cut(format!("writing to the client: {error}"))),
    }
    sink.flush(client)
        .await
        .map_err(|error| cut(format!("writing to the client: {error}")))?;
    // Bytes after the answer that nobody asked for: the framing cannot be trusted any more.
    let reusable = head.persistent && reader.buf.is_empty();
    Ok(Answered { status, reusable })
}

/// The final head, as the client gets it.
struct Head {
    status: u16,
    body: Body,
    /// The upstream connection may be kept once the body was read to its end.
    persistent: bool,
}

/// Reads the final response head (interim answers skipped) and writes the client's head into
/// `out`: status line, the headers items keep, then the framing chosen here.
async fn read_head<U: AsyncRead + Unpin>(
    reader: &mut Reader<'_, U>,
    out: &mut Vec<u8>,
    close: bool,
) -> Result<Head, H1Error> {
    for _ in 0..=MAX_INTERIM_RESPONSES {
        let len = head_length(reader).await?;
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        let head = reader.buf.get(..len).unwrap_or_default();
        if let Err(e) = parsed.parse(head) {
            return Err(H1Error::Protocol(format!("malformed response head: {e}")));
        }
        let status = parsed
            .code
            .filter(|code| (100..1000).contains(code))
            .ok_or_else(|| H1Error::Protocol("no HTTP status code".to_string()))?;
        if status == 101 {
            return Err(H1Error::Protocol(
                "the upstream switched protocols".to_string(),
            ));
        }
        if status < 200 {
            reader.buf.advance(len);
            continue;
        }
        let mut fields = FramingFields::default();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        match parsed.reason.filter(|reason| !reason.is_empty()) {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|code| code.canonical_reason())
                    .unwrap_or("Unknown")
                    .as_bytes(),
            ),
        }
        out.extend_from_slice(b"\r\n");
        for header in parsed.headers.iter() {
            fields.observe(header.name, header.value)?;
            if kept_response_header(header.name) {
                out.extend_from_slice(header.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(header.value);
                out.extend_from_slice(b"\r\n");
            }
        }
        let declared = fields.declares_framing();
        let (framing, persistent) = fields.decide(parsed.version == Some(0))?;
        // 204 and 304 carry no body whatever they declare (a HEAD never comes this way); one
        // that declares a body may send it late, into the next answer: not reused (the
        // items' rule, `read.rs`).
        let bodiless = matches!(status, 204 | 304);
        let declares_body = match framing {
            Framing::Length(len) => len > 0,
            Framing::Chunked | Framing::UntilClose => declared,
            Framing::None => false,
        };
        let body = match framing {
            _ if bodiless => Body::None,
            Framing::None => Body::None,
            Framing::Length(len) => Body::Length(len),
            Framing::Chunked => Body::Chunked,
            Framing::UntilClose => Body::UntilClose,
        };
        match body {
            Body::Length(len) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Body::Chunked | Body::UntilClose => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            Body::None => {}
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let persistent =
            persistent && !matches!(body, Body::UntilClose) && !(bodiless && declares_body);
        reader.buf.advance(len);
        return Ok(Head {
            status,
            body,
            persistent,
        });
    }
    Err(H1Error::Protocol(format!(
        "more than {MAX_INTERIM_RESPONSES} interim (1xx) answers"
    )))
}

/// Reads until the buffer holds a complete head, within the head limit; its length.
async fn head_length<U: AsyncRead + Unpin>(reader: &mut Reader<'_, U>) -> Result<usize, H1Error> {
    let mut searched = 0usize;
    loop {
        let from = searched.saturating_sub(3);
        searched = reader.buf.len();
        match super::head_end(&reader.buf, from) {
            Some(end) if end <= MAX_HEAD_BYTES => return Ok(end),
            Some(_) => return Err(head_too_large()),
            None if reader.buf.len() > MAX_HEAD_BYTES => return Err(head_too_large()),
            None => {}
        }
        // Something that is not HTTP at all is refused without waiting for more.
        if from == 0 && !reader.buf.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            if let Err(e) = parsed.parse(&reader.buf) {
                return Err(H1Error::Protocol(format!("malformed response head: {e}")));
            }
        }
        reader
            .fill_some("before the response head was complete")
            .await?;
    }
}

/// Why a body relay stopped.
enum Failed {
    Upstream(H1Error),
    Client(std::io::Error),
}

impl From<H1Error> for Failed {
    fn from(error: H1Error) -> Self {
        Failed::Upstream(error)
    }
}

/// What goes to the client next: written before every read from the upstream that may wait
/// (so a streamed answer is not held back) and whenever it reaches `PIECE` bytes.
struct Sink {
    pending: Vec<u8>,
}

impl Sink {
    async fn flush<C: AsyncWrite + Unpin>(&mut self, client: &mut C) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            client.write_all(&self.pending).await?;
            self.pending.clear();
            // The client's socket may buffer writes (pingora's does).
            client.flush().await?;
        }
        Ok(())
    }

    async fn push<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        bytes: &[u8],
    ) -> Result<(), Failed> {
        if self.pending.len() + bytes.len() > PIECE && !self.pending.is_empty() {
            self.flush(client).await.map_err(Failed::Client)?;
        }
        if bytes.len() >= PIECE {
            client.write_all(bytes).await.map_err(Failed::Client)?;
            return client.flush().await.map_err(Failed::Client);
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes what is pending, then reads more from the upstream (`Ok(0)` at its end).
    async fn refill<U: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut Reader<'_, U>,
        client: &mut C,
        context: &'static str,
    ) -> Result<usize, Failed> {
        self.flush(client).await.map_err(Failed::Client)?;
        Ok(reader.fill(context).await?)
    }
}

async fn relay_sized<U: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    reader: &mut Reader<'_, U>,
    client: &mut C,
    sink: &mut Sink,
    len: usize,
) -> Result<(), Failed> {
    let mut remaining = len;
    loop {
        let take = remaining.min(reader.buf.len());
        sink.push(client, reader.buf.get(..take).unwrap_or_default())
            .await?;
        reader.buf.advance(take);
        remaining -= take;
        if remaining == 0 {
            return Ok(());
        }
        let context = "in the middle of the response body";
        if sink.refill(reader, client, context).await? == 0 {
            return Err(closed(context));
        }
    }
}

async fn relay_to_close<U: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    reader: &mut Reader<'_, U>,
    client: &mut C,
    sink: &mut Sink,
) -> Result<(), Failed> {
    loop {
        if !reader.buf.is_empty() {
            chunk(sink, client, &reader.buf).await?;
            reader.buf.clear();
        }
        let context = "in the middle of the response body";
        if sink.refill(reader, client, context).await? == 0 {
            return sink.push(client, b"0\r\n\r\n").await;
        }
    }
}

/// Decodes the upstream's chunks (RFC 9112 section 7.1) and writes each as a chunk of the
/// client's answer; extensions and trailers are dropped, as items drop them.
async fn relay_chunked<U: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    reader: &mut Reader<'_, U>,
    client: &mut C,
    sink: &mut Sink,
) -> Result<(), Failed> {
    loop {
        let line = next_line(reader, client, sink, MAX_CHUNK_LINE, "in a chunk size").await?;
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            break;
        }
        let mut remaining = size;
        while remaining > 0 {
            if reader.buf.is_empty() {
                let context = "in the middle of a chunk";
                if sink.refill(reader, client, context).await? == 0 {
                    return Err(closed(context));
                }
            }
            let take = remaining.min(reader.buf.len());
            chunk(sink, client, reader.buf.get(..take).unwrap_or_default()).await?;
            reader.buf.advance(take);
            remaining -= take;
        }
        let end = next_line(reader, client, sink, 2, "after a chunk").await?;
        if !end.is_empty() {
            let why = "a chunk is longer than its size".to_string();
            return Err(Failed::Upstream(H1Error::Protocol(why)));
        }
    }
    let mut trailer_bytes = 0usize;
    loop {
        let line = next_line(reader, client, sink, MAX_TRAILER_BYTES, "in the trailers").await?;
        if line.is_empty() {
            return sink.push(client, b"0\r\n\r\n").await;
        }
        trailer_bytes += line.len() + 2;
        if trailer_bytes > MAX_TRAILER_BYTES {
            let why = format!("the trailers exceed {MAX_TRAILER_BYTES} bytes");
            return Err(Failed::Upstream(H1Error::Protocol(why)));
        }
    }
}

/// One line from the upstream, what is pending for the client written first if the line
/// is not all in yet.
async fn next_line<U: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    reader: &mut Reader<'_, U>,
    client: &mut C,
    sink: &mut Sink,
    max: usize,
    context: &'static str,
) -> Result<BytesMut, Failed> {
    if memchr::memchr(b'\n', &reader.buf).is_none() {
        sink.flush(client).await.map_err(Failed::Client)?;
    }
    Ok(reader.read_line(max, context).await?)
}

/// `bytes` as one chunk of the client's answer.
async fn chunk<C: AsyncWrite + Unpin>(
    sink: &mut Sink,
    client: &mut C,
    bytes: &[u8],
) -> Result<(), Failed> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut size = [0u8; 20];
    let size_line = hex_line(bytes.len(), &mut size);
    sink.push(client, size_line).await?;
    sink.push(client, bytes).await?;
    sink.push(client, b"\r\n").await
}

/// A chunk-size line (`n` in hexadecimal, then CRLF), written into `buf`.
fn hex_line(n: usize, buf: &mut [u8; 20]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut end = buf.len() - 2;
    buf[end] = b'\r';
    buf[end + 1] = b'\n';
    let mut n = n;
    loop {
        end -= 1;
        buf[end] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.get(end..).unwrap_or_default()
}

fn closed(context: &'static str) -> Failed {
    Failed::Upstream(H1Error::Closed {
        context,
        nothing_received: false,
    })
}

#[cfg(test)]
mod tests;
