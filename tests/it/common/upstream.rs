//! An instrumented HTTP/1.1 test upstream on tokio.
//!
//! It serves keep-alive HTTP/1.1 on `127.0.0.1`, answers every request with
//! one handler closure (default: a JSON echo), and records what it saw: the
//! request log (in arrival order, recorded as soon as a request is fully read),
//! the peak number of requests in flight, and the number of TCP connections.
//! Replies can be delayed, can close the connection, or can hang forever.
//! Dropping the [`Upstream`] stops its accept loop and all its connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::client::{content_length, is_chunked, read_chunked, read_head, take_exact, MAX_HEAD};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Raw request-target exactly as received, e.g. `/v2/file/get?x=1`.
    pub target: String,
    /// The target before the first `?`.
    pub path: String,
    /// The target after the first `?`, if there is one.
    pub query: Option<String>,
    /// Header fields in wire order; names are lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, with chunked framing removed.
    pub body: Vec<u8>,
    /// Which accepted TCP connection carried it (0-based, in accept order).
    pub conn_id: u64,
}

impl RecordedRequest {
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
                "upstream request body is not UTF-8 ({e}): {}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    /// The body parsed as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What the upstream answers to one request.
///
/// A `Content-Length` header is added automatically unless `headers` already
/// holds `content-length` or `transfer-encoding` (then the body is written
/// verbatim, which lets a test produce broken framings). 204/304 replies and
/// replies to `HEAD` carry no body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra header fields, written in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Sleep this long (after recording the request) before answering.
    pub delay: Duration,
    /// Send `Connection: close` and close the connection after the reply.
    pub close: bool,
    /// Never answer; the connection is held until the peer closes it.
    pub hang: bool,
    /// Close the connection at once without answering (an idle-timeout race).
    pub abort: bool,
}

impl Reply {
    /// A reply with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            close: false,
            abort: false,
            hang: false,
        }
    }

    /// A reply with `Content-Type: application/json` and `body`.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::bytes(status, "application/json", body.as_bytes())
    }

    /// A reply with `Content-Type: text/plain` and `body`.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::bytes(status, "text/plain", body.as_bytes())
    }

    /// A reply with the given content type and raw body bytes.
    pub fn bytes(status: u16, content_type: &str, body: &[u8]) -> Reply {
        Reply::new(status)
            .with_header("Content-Type", content_type)
            .with_body(body)
    }

    /// A reply that never comes.
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::new(200)
        }
    }

    /// Delays the answer by `ms` milliseconds.
    pub fn with_delay(mut self, ms: u64) -> Reply {
        self.delay = Duration::from_millis(ms);
        self
    }

    /// Appends a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: &[u8]) -> Reply {
        self.body = body.to_vec();
        self
    }

    /// Closes the connection without answering, as an upstream whose idle timeout fired just
    /// as the request arrived.
    pub fn abort() -> Reply {
        Reply {
            abort: true,
            ..Reply::new(200)
        }
    }

    /// Sends `Connection: close` and closes the connection after this reply.
    pub fn closing(mut self) -> Reply {
        self.close = true;
        self
    }
}

/// The handler type: maps every recorded request to a reply.
pub type Handler = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync + 'static>;

/// The default handler: 200, `application/json`,
/// `{"method": .., "path": .., "body": <request body as (lossy) string>}`.
pub fn echo(req: &RecordedRequest) -> Reply {
    let body = serde_json::json!({
        "method": req.method,
        "path": req.path,
        "body": String::from_utf8_lossy(&req.body),
    });
    Reply::json(200, &body.to_string())
}

/// Builder for an [`Upstream`].
pub struct UpstreamBuilder {
    handler: Handler,
    bind: SocketAddr,
}

impl Default for UpstreamBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamBuilder {
    /// An echo upstream on `127.0.0.1:0`.
    pub fn new() -> UpstreamBuilder {
        UpstreamBuilder {
            handler: Arc::new(echo),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Sets the handler that answers every request.
    pub fn handler<F>(mut self, f: F) -> UpstreamBuilder
    where
        F: Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    {
        self.handler = Arc::new(f);
        self
    }

    /// Binds a specific address instead of `127.0.0.1:0` (e.g. to restart on a known port).
    pub fn bind(mut self, addr: SocketAddr) -> UpstreamBuilder {
        self.bind = addr;
        self
    }

    /// Binds (backlog 1024) and starts serving; returns once the socket listens.
    pub async fn start(self) -> Upstream {
        let socket = if self.bind.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("create upstream socket");
        socket
            .set_reuseaddr(true)
            .expect("set SO_REUSEADDR on upstream socket");
        socket
            .bind(self.bind)
            .unwrap_or_else(|e| panic!("bind test upstream to {}: {e}", self.bind));
        let listener = socket.listen(1024).expect("listen on upstream socket");
        let addr = listener.local_addr().expect("upstream local_addr");

        let shared = Arc::new(Shared {
            handler: self.handler,
            log: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            conns: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting this task aborts them all.
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_id = accept_shared.conns.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve_conn(stream, conn_id, accept_shared.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Upstream { addr, shared, task }
    }
}

struct Shared {
    handler: Handler,
    log: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    conns: AtomicU64,
    open: AtomicUsize,
}

/// A running test upstream. Dropping it stops the server.
pub struct Upstream {
    /// The address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts a default (echo) upstream.
    pub async fn echo() -> Upstream {
        UpstreamBuilder::new().start().await
    }

    /// Starts an upstream answering with `f`.
    pub async fn with_handler<F>(f: F) -> Upstream
    where
        F: Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    {
        UpstreamBuilder::new().handler(f).start().await
    }

    /// `"127.0.0.1:PORT"`, handy for config texts.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A clone of the request log, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .log
            .lock()
            .expect("upstream log mutex poisoned")
            .clone()
    }

    /// Number of requests recorded.
    pub fn count(&self) -> usize {
        self.shared
            .log
            .lock()
            .expect("upstream log mutex poisoned")
            .len()
    }

    /// Requests currently read but not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Maximum of [`Upstream::in_flight`] ever seen (since the last reset).
    pub fn peak(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Number of TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Clears the log and resets the peak to the current in-flight count.
    pub fn reset(&self) {
        self.shared
            .log
            .lock()
            .expect("upstream log mutex poisoned")
            .clear();
        self.shared.peak.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Waits (polling every 5 ms) until at least `n` requests have been
    /// recorded and returns the log; panics after `timeout`.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.requests();
            if log.len() >= n {
                return log;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "upstream {} saw {} requests, expected at least {n} within {timeout:?}: {:?}",
                    self.addr,
                    log.len(),
                    log.iter()
                        .map(|r| format!("{} {}", r.method, r.target))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Decrements `in_flight` when dropped (also when the task is aborted).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_conn(mut stream: TcpStream, conn_id: u64, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    // I/O errors just end the connection; the peer sees a reset/EOF.
    let _ = serve_conn_inner(&mut stream, conn_id, &shared).await;
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

struct Head {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, String)>,
}

fn parse_head(raw: &[u8]) -> std::io::Result<Head> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(_)) => Ok(Head {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        }),
        Ok(httparse::Status::Partial) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "incomplete request head",
        )),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad request head: {e}"),
        )),
    }
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

async fn serve_conn_inner(
    stream: &mut TcpStream,
    conn_id: u64,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_head(stream, &mut buf, MAX_HEAD).await? else {
            return Ok(());
        };
        let head = match parse_head(&buf[..head_end]) {
            Ok(h) => h,
            Err(e) => {
                let msg = e.to_string();
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                    msg.len()
                );
                stream.write_all(resp.as_bytes()).await?;
                return Ok(());
            }
        };
        buf.drain(..head_end);

        if has_token(&head.headers, "expect", "100-continue") {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = if is_chunked(&head.headers) {
            read_chunked(stream, &mut buf).await?
        } else if let Some(n) = content_length(&head.headers)? {
            take_exact(stream, &mut buf, n).await?
        } else {
            Vec::new()
        };

        let client_close = has_token(&head.headers, "connection", "close")
            || (head.version == 0 && !has_token(&head.headers, "connection", "keep-alive"));
        let is_head = head.method.eq_ignore_ascii_case("HEAD");
        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (head.target.clone(), None),
        };
        let req = RecordedRequest {
            method: head.method,
            target: head.target,
            path,
            query,
            headers: head.headers,
            body,
            conn_id,
        };
        shared
            .log
            .lock()
            .expect("upstream log mutex poisoned")
            .push(req.clone());
        let guard = InFlight::enter(shared);

        let reply = (shared.handler)(&req);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if reply.abort {
            return Ok(());
        }
        if reply.hang {
            // Hold the connection until the peer gives up.
            let mut sink = [0u8; 1024];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
        }

        let close = reply.close || client_close;
        // Leave the count before the reply is written: once the proxy has read it, it may
        // send the next request at once, and that one must not be counted beside this one.
        drop(guard);
        stream
            .write_all(&encode_reply(&reply, is_head, close))
            .await?;
        stream.flush().await?;
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

fn encode_reply(reply: &Reply, is_head: bool, close: bool) -> Vec<u8> {
    let has = |name: &str| {
        reply
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let no_body = reply.status == 204 || reply.status == 304 || (100..200).contains(&reply.status);
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if !no_body && !has("content-length") && !has("transfer-encoding") {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close && !has("connection") {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !no_body && !is_head {
        bytes.extend_from_slice(&reply.body);
    }
    bytes
}

/// Reason phrase for common status codes.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A `127.0.0.1` address that refuses connections: a held port (`free_port`) nothing
/// listens on.
pub async fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A port on `127.0.0.1` held for this test process until it exits: bound with
/// `SO_REUSEADDR` but not listening. No other process can bind it (nor get it from a bind to
/// port 0) between now and its use, a connection to it is refused until something listens
/// on it, and a server that binds it with `SO_REUSEADDR` and listens (batchgate's and
/// pingora's listeners, tokio's, Prometheus) takes it over.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a socket to hold a port");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(&any.into()).expect("bind a port to hold");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("the held port");
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(socket);
    port
}
