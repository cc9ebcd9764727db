//! A tiny raw HTTP/1.1 client for tests.
//!
//! Tests need exact control over the bytes put on the wire (odd framings,
//! duplicate headers, raw request targets), so this client sends whatever
//! bytes it is given and only parses the response. It also holds the small
//! buffered-wire helpers (head, line, exact-length and chunked readers) that
//! the test upstream in [`super::upstream`] shares.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whole-exchange timeout for every client call.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response (or request) head the harness accepts.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in wire order; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed).
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as UTF-8 text; panics (showing the lossy text) if it is not UTF-8.
    pub fn body_str(&self) -> &str {
        match std::str::from_utf8(&self.body) {
            Ok(s) => s,
            Err(e) => panic!(
                "response body is not UTF-8 ({e}): {}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    /// The body parsed as JSON; panics with status and body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Buffered wire helpers (shared with the upstream).
// ---------------------------------------------------------------------------

/// Reads more bytes from `s` onto the end of `buf`; returns how many (0 = EOF).
pub(crate) async fn read_more<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    s.read_buf(buf).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Buffers until `buf` holds a complete head (ending in CRLFCRLF) and returns
/// its length including the blank line. Returns `Ok(None)` on a clean EOF
/// before any byte of a new head; EOF mid-head or an oversized head is an error.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<usize>> {
    let mut scanned = 0;
    loop {
        if let Some(pos) = find(&buf[scanned..], b"\r\n\r\n") {
            return Ok(Some(scanned + pos + 4));
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("head larger than {limit} bytes"),
            ));
        }
        if read_more(s, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF inside head: {:?}", String::from_utf8_lossy(buf)),
                ))
            };
        }
    }
}

/// Removes and returns exactly `n` bytes from the front of `buf`, reading more as needed.
pub(crate) async fn take_exact<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<Vec<u8>> {
    while buf.len() < n {
        if read_more(s, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {} of {n} body bytes", buf.len()),
            ));
        }
    }
    Ok(buf.drain(..n).collect())
}

/// Removes and returns one CRLF-terminated line (without the CRLF) from `buf`.
pub(crate) async fn take_line<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Vec<u8>> {
    loop {
        if let Some(pos) = find(buf, b"\r\n") {
            let line = buf[..pos].to_vec();
            buf.drain(..pos + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk line too long",
            ));
        }
        if read_more(s, buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF inside chunked body",
            ));
        }
    }
}

/// Reads a chunked body (chunk extensions and trailers are skipped) and returns it decoded.
pub(crate) async fn read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = take_line(s, buf).await?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line {text:?}: {e}"),
            )
        })?;
        if size == 0 {
            // Trailer section: lines until an empty one.
            while !take_line(s, buf).await?.is_empty() {}
            return Ok(body);
        }
        body.extend_from_slice(&take_exact(s, buf, size).await?);
        let crlf = take_exact(s, buf, 2).await?;
        if crlf != b"\r\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk data not followed by CRLF",
            ));
        }
    }
}

/// Whether a header list says the body is chunked (last transfer-coding is `chunked`).
pub(crate) fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .and_then(|(_, v)| v.split(',').next_back())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

/// The parsed `Content-Length`, if any; an unparsable value is an error.
pub(crate) fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(None),
        Some((_, v)) => v.trim().parse::<usize>().map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad Content-Length {v:?}: {e}"),
            )
        }),
    }
}

/// Reads one response from `s` (skipping interim 1xx responses other than 101).
/// `head_request` suppresses the body, as do 101/204/304.
pub(crate) async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> io::Result<Response> {
    loop {
        let head_end = read_head(s, buf, MAX_HEAD).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let (status, headers) = {
            let mut slots = [httparse::EMPTY_HEADER; 256];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&buf[..head_end]) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "incomplete response head",
                    ))
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "bad response head ({e}): {:?}",
                            String::from_utf8_lossy(&buf[..head_end])
                        ),
                    ))
                }
            }
            let status = resp.code.unwrap_or(0);
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            (status, headers)
        };
        buf.drain(..head_end);
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if head_request || status == 101 || status == 204 || status == 304 {
            Vec::new()
        } else if is_chunked(&headers) {
            read_chunked(s, buf).await?
        } else if let Some(n) = content_length(&headers)? {
            take_exact(s, buf, n).await?
        } else {
            while read_more(s, buf).await? != 0 {}
            std::mem::take(buf)
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} timed out after {TIMEOUT:?}"),
    )
}

fn is_head(raw: &[u8]) -> bool {
    raw.starts_with(b"HEAD ")
}

// ---------------------------------------------------------------------------
// One-shot requests.
// ---------------------------------------------------------------------------

/// Connects to `addr`, writes `raw` verbatim and reads one response
/// (body by Content-Length, chunked, or until EOF). A request starting with
/// `HEAD ` gets no body read. The whole exchange times out after 30 s.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(raw).await?;
        stream.flush().await?;
        let mut buf = Vec::new();
        read_response(&mut stream, &mut buf, is_head(raw)).await
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| timed_out("send_raw"))?
}

/// Builds the bytes of a request: adds `Host: 127.0.0.1`, `Content-Length`
/// (when the body is non-empty or the method is POST/PUT/PATCH) and
/// `Connection: close`, each only if not already present in `headers`.
pub fn build_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    build(method, target, headers, body, true)
}

fn build(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    if !has("host") {
        out.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let needs_len = !body.is_empty()
        || matches!(
            method.to_ascii_uppercase().as_str(),
            "POST" | "PUT" | "PATCH"
        );
    if needs_len && !has("content-length") && !has("transfer-encoding") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close && !has("connection") {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// General request (see [`build_request`] for the headers added); panics on I/O error.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let raw = build_request(method, target, headers, body);
    send_raw(addr, &raw)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} to {addr} failed: {e}"))
}

/// `POST path` with the given content type and body; panics on I/O error.
pub async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Response {
    request(addr, "POST", path, &[("Content-Type", content_type)], body).await
}

/// `POST path` with `Content-Type: application/json`; panics on I/O error.
pub async fn post_json(addr: SocketAddr, path: &str, json: &str) -> Response {
    post(addr, path, "application/json", json.as_bytes()).await
}

/// `GET path_and_query`; panics on I/O error.
pub async fn get(addr: SocketAddr, path_and_query: &str) -> Response {
    request(addr, "GET", path_and_query, &[], b"").await
}

// ---------------------------------------------------------------------------
// Keep-alive connection.
// ---------------------------------------------------------------------------

/// A persistent connection: each [`Conn::send`] writes bytes and reads exactly
/// one response, keeping any extra bytes buffered for the next call.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`; panics if the connection fails.
    pub async fn connect(addr: SocketAddr) -> Conn {
        Self::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} failed: {e}"))
    }

    /// Connects to `addr`, returning the I/O error instead of panicking.
    pub async fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `raw` verbatim and reads one response; panics on I/O error.
    pub async fn send(&mut self, raw: &[u8]) -> Response {
        self.try_send(raw).await.unwrap_or_else(|e| {
            panic!(
                "keep-alive exchange failed: {e}; request: {}",
                String::from_utf8_lossy(raw)
            )
        })
    }

    /// Writes `raw` verbatim and reads one response (30 s timeout).
    pub async fn try_send(&mut self, raw: &[u8]) -> io::Result<Response> {
        let head = is_head(raw);
        let fut = async {
            self.stream.write_all(raw).await?;
            self.stream.flush().await?;
            read_response(&mut self.stream, &mut self.buf, head).await
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| timed_out("Conn::send"))?
    }

    /// Like [`request`] but without `Connection: close`, over this connection.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let raw = build(method, target, headers, body, false);
        self.send(&raw).await
    }

    /// Writes bytes without reading anything (e.g. to pipeline or send a partial request).
    pub async fn write(&mut self, raw: &[u8]) {
        self.stream
            .write_all(raw)
            .await
            .expect("write to keep-alive connection");
        self.stream
            .flush()
            .await
            .expect("flush keep-alive connection");
    }

    /// Reads one response without writing anything first; panics on I/O error.
    pub async fn read_response(&mut self) -> Response {
        tokio::time::timeout(
            TIMEOUT,
            read_response(&mut self.stream, &mut self.buf, false),
        )
        .await
        .map_err(|_| timed_out("Conn::read_response"))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("reading response failed: {e}"))
    }

    /// Waits up to `wait` for the peer to close the connection. Returns true on
    /// EOF or reset; false if the wait elapsed or data arrived (data is kept buffered).
    pub async fn is_closed(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match tokio::time::timeout(wait, read_more(&mut self.stream, &mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

/// Reads `conn` until the gate closes it; asserts that happened 0.9 to 3 s after `started`
/// (a 1 s `client_header_timeout`) and that the gate at `admin` counted it, once, as a `head`
/// timeout.
pub async fn assert_cut_at_a_one_second_head_timeout(
    conn: &mut (impl AsyncRead + Unpin),
    started: std::time::Instant,
    admin: SocketAddr,
) {
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the connection is closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let head = [("phase", "head")];
    let metrics = super::prom::scrape_until(admin, Duration::from_secs(5), "counted", |s| {
        s.sum("batchgate_client_timeouts_total", &head) >= 1.0
    })
    .await;
    assert_eq!(metrics.sum("batchgate_client_timeouts_total", &head), 1.0);
}
