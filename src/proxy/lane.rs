//! Pass-through on batchgate's own HTTP/1.1 exchange, before pingora sees the connection.
//!
//! Every HTTP/1.x client connection (cleartext or TLS) starts here (`listener::Lane`). The lane
//! reads a request head and serves it itself when it is a plain pass-through request: HTTP/1.1,
//! a common method other than HEAD, an origin-form target, one `Host`, at most one plain
//! `Content-Length` and no other framing, no `Expect`, no `Upgrade`, a `Connection` that only
//! says `keep-alive` or `close`, no batch route for its path, a default upstream spoken to over
//! HTTP/1.1, and tracing off. Anything else (batches, upgrades, chunked uploads, HTTP/1.0,
//! every malformed or unusual head) goes to pingora with the bytes read so far put back, and
//! the connection stays with pingora from there. So the lane answers no hostile head itself:
//! it either recognises a request it can relay exactly, or hands it over untouched.
//!
//! What the relayed request loses and gains is the rule of `passthrough.rs` for pingora's path:
//! the proxy-owned headers (`guard::owned`) are dropped, `X-Request-Id` and `X-Forwarded-For`
//! are set, `Host` is replaced when the upstream names one; hop-by-hop headers go.

use super::live::Live;
use crate::guard::owned::dropped_on_passthrough;
use crate::listener::{DeadlineStream, Phase};
use crate::upstream::{Outbound, RelayBuffers, RelayError, Relayed};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::GetSocketDigest;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request head the lane reads; a longer one is pingora's (with its own limits
/// and `client_max_head_bytes`).
const MAX_HEAD: usize = 16 * 1024;
/// The most header fields the lane parses; more are pingora's.
const MAX_HEADERS: usize = 64;
/// What a client gets when its request could not be relayed: pingora's error answer (without
/// its placeholder `Date` and `Server`), and the connection closes as pingora closes it.
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n";
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n";

/// The lane of one proxy: the routing table in effect and the access-log switch.
pub struct Lane {
    pub(super) live: Arc<ArcSwap<Live>>,
    pub(super) access_log: Arc<AtomicBool>,
    /// `server.passthrough_lane`: off, every request goes to pingora.
    pub(super) enabled: Arc<AtomicBool>,
}

/// One connection's buffers, kept from request to request.
struct Buffers {
    /// What was read from the client and not yet used: a head, body bytes, pipelined requests.
    client: BytesMut,
    /// The upstream request head (and the body bytes that arrived with it).
    out: Vec<u8>,
    /// The upstream answer being relayed.
    relay: RelayBuffers,
}

impl Buffers {
    /// Between requests: buffers that grew for a large request or answer are not kept, so an
    /// idle connection holds about one small read buffer.
    fn trim(&mut self) {
        self.relay.trim();
        if self.out.capacity() > TRIM_ABOVE {
            self.out = Vec::new();
        }
        if self.client.capacity() > TRIM_ABOVE {
            let mut kept = BytesMut::with_capacity(CLIENT_BUFFER.max(self.client.len()));
            kept.extend_from_slice(&self.client);
            self.client = kept;
        }
    }
}

/// The client read buffer's size while a connection waits for a request (most heads fit),
/// and how large a buffer may stay between requests.
const CLIENT_BUFFER: usize = 1024;
const TRIM_ABOVE: usize = 16 * 1024;

/// How one request ended for the connection.
enum Next {
    /// Read the next request.
    Keep,
    Close,
    /// pingora serves this request and the rest of the connection.
    Handoff,
}

#[async_trait]
impl crate::listener::Lane for Lane {
    async fn serve(
        &self,
        mut stream: DeadlineStream,
        shutdown: &ShutdownWatch,
    ) -> Option<DeadlineStream> {
        let client = stream
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet().copied()));
        let client = client.map(|addr| Client {
            ip: addr.ip().to_string(),
            addr,
        });
        let mut buffers = Buffers {
            client: BytesMut::with_capacity(CLIENT_BUFFER),
            out: Vec::new(),
            relay: RelayBuffers::default(),
        };
        let mut stop = shutdown.clone();
        let mut served = false;
        loop {
            let idle = served.then_some(&mut stop);
            let head_len = match read_head(&mut stream, &mut buffers.client, idle).await {
                Some(Some(len)) => len,
                Some(None) => {
                    stream.unread(&buffers.client);
                    return Some(stream);
                }
                None => return None,
            };
            let stopping = *shutdown.borrow();
            match self
                .serve_one(
                    &mut stream,
                    &mut buffers,
                    head_len,
                    client.as_ref(),
                    stopping,
                )
                .await
            {
                Next::Keep => {
                    served = true;
                    buffers.trim();
                }
                Next::Close => return None,
                Next::Handoff => {
                    stream.unread(&buffers.client);
                    return Some(stream);
                }
            }
        }
    }
}

/// Reads until `buf` holds a whole request head: its length; `Some(None)` when the head is
/// longer than the lane reads; `None` when the client left, sent nothing more or its deadline
/// passed (the connection closes, as pingora closes it).
async fn read_head(
    stream: &mut DeadlineStream,
    buf: &mut BytesMut,
    stop: Option<&mut ShutdownWatch>,
) -> Option<Option<usize>> {
    // Between requests on a kept connection, a shutdown closes it at once (pingora wakes its
    // parked keep-alive reads the same way); a new connection's first request is served.
    let mut stop = stop.filter(|_| buf.is_empty());
    let mut searched = 0usize;
    loop {
        let from = searched.saturating_sub(3);
        if let Some(end) = crate::upstream::head_end(buf, from) {
            // Lines ended by a bare LF are pingora's to read.
            let crlf = end >= 4 && buf.get(end - 4..end) == Some(&b"\r\n\r\n"[..]);
            return Some(crlf.then_some(end));
        }
        searched = buf.len();
        if buf.len() > MAX_HEAD {
            return Some(None);
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(4 * CLIENT_BUFFER);
        }
        let read = match stop.as_deref_mut().filter(|_| buf.is_empty()) {
            Some(stop) => tokio::select! {
                read = stream.read_buf(buf) => read,
                _ = stop.wait_for(|stopping| *stopping) => return None,
            },
            None => stream.read_buf(buf).await,
        };
        match read {
            Ok(0) if buf.is_empty() => return None,
            // A partial head and then the end: pingora's to answer (it closes).
            Ok(0) => return Some(None),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The client of a connection: its address, and its IP as `X-Forwarded-For` writes it.
struct Client {
    addr: SocketAddr,
    ip: String,
}

/// A request the lane relays, as read from its head.
#[derive(Debug)]
pub struct Plan {
    pub method: http::Method,
    /// The body's length (`Content-Length`, 0 without one).
    pub length: u64,
    /// The client asked to close the connection after the answer.
    pub close: bool,
    pub request_id: String,
}

impl Lane {
    async fn serve_one(
        &self,
        stream: &mut DeadlineStream,
        buffers: &mut Buffers,
        head_len: usize,
        client: Option<&Client>,
        stopping: bool,
    ) -> Next {
        if !self.enabled.load(Ordering::Relaxed) {
            return Next::Handoff;
        }
        let started = Instant::now();
        let live = self.live.load_full();
        let Some(passthrough) = live.passthrough.as_ref().filter(|p| p.client.relays()) else {
            return Next::Handoff;
        };
        if crate::traces::on() {
            return Next::Handoff;
        }
        let head = buffers.client.get(..head_len).unwrap_or_default();
        let host = passthrough.client.config.host.as_deref();
        buffers.out.clear();
        let is_route = |method: &http::Method, path: &str| live.route_for(method, path).is_some();
        let client_ip = client.map(|c| c.ip.as_str());
        let Some(plan) = plan(head, is_route, host, client_ip, &mut buffers.out) else {
            return Next::Handoff;
        };
        // What `balance = "hash"` hashes, taken before the head leaves the buffer.
        let key: Option<Vec<u8>> = passthrough
            .client
            .hash_key(target_of(&buffers.out), |name| {
                header_in(head, name.as_str())
            })
            .map(<[u8]>::to_vec);
        let close = plan.close || stopping;
        let in_hand = (buffers.client.len() - head_len).min(plan.length as usize);
        let body = buffers
            .client
            .get(head_len..head_len + in_hand)
            .unwrap_or_default();
        buffers.out.extend_from_slice(body);
        buffers.client.advance(head_len + in_hand);
        let rest = plan.length - in_hand as u64;
        stream.clock().head_done(rest > 0);
        let out = Outbound {
            first: &buffers.out,
            rest,
            close,
        };
        let metrics = passthrough.metrics.as_ref();
        // Boxed: the relay's state (a connect, a body's streaming) lives only while a request
        // does, so an idle connection's task stays small.
        let relay = passthrough.client.relay(
            stream,
            out,
            plan.method.is_idempotent(),
            key.as_deref(),
            &mut buffers.relay,
            |reused| {
                if let Some(metrics) = metrics {
                    metrics.sent(reused);
                }
            },
        );
        let Relayed { address, result } = Box::pin(relay).await;
        let upstream = address.and_then(|n| passthrough.client.config.addresses.get(n).copied());
        let (status, next) = match result {
            Ok(answered) if close => (Some(answered.status), Next::Close),
            Ok(answered) => (Some(answered.status), Next::Keep),
            Err(RelayError::ClientBody(error)) => {
                if stream.clock().expired() == Some(Phase::Body) {
                    let _ = say(stream, REQUEST_TIMEOUT).await;
                    linger(stream).await;
                    (Some(408), Next::Close)
                } else {
                    tracing::debug!("pass-through client left in the middle of its body: {error}");
                    (None, Next::Close)
                }
            }
            Err(RelayError::Connect(detail)) => {
                tracing::error!(upstream = ?upstream, "Fail to proxy: cannot connect: {detail}");
                let written = say(stream, BAD_GATEWAY).await.is_ok();
                if written && rest > 0 {
                    linger(stream).await;
                }
                (written.then_some(502), Next::Close)
            }
            Err(RelayError::Upstream(error)) => {
                tracing::error!(upstream = ?upstream, "Fail to proxy: {error}");
                let written = say(stream, BAD_GATEWAY).await.is_ok();
                if written && rest > 0 {
                    linger(stream).await;
                }
                (written.then_some(502), Next::Close)
            }
            Err(RelayError::Cut { status, detail }) => {
                tracing::debug!(upstream = ?upstream, "pass-through answer cut short: {detail}");
                (Some(status), Next::Close)
            }
        };
        stream.clock().request_done();
        let elapsed = started.elapsed();
        if let Some(metrics) = metrics {
            metrics.request(status, elapsed);
        }
        if self.access_log.load(Ordering::Relaxed) {
            let target = target_of(&buffers.out);
            log_access(Access {
                method: plan.method.as_str(),
                path: target.split('?').next().unwrap_or(target),
                status,
                client: client.map(|c| c.addr),
                upstream,
                request_id: Some(&plan.request_id),
                elapsed,
            });
        }
        next
    }
}

/// Writes a whole answer of the lane's own.
async fn say(stream: &mut DeadlineStream, answer: &[u8]) -> std::io::Result<()> {
    stream.write_all(answer).await?;
    stream.flush().await
}

/// How long a connection closing after an error answer keeps reading what its client still
/// sends (nginx's `lingering_timeout` is 5 s, its `lingering_time` 30 s).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// After an error answer that closes the connection while the client may still be sending its
/// body (`DeadlineStream::linger`).
async fn linger(stream: &mut DeadlineStream) {
    stream.linger(LINGER).await;
}

/// Reads `head` (a whole request head) and writes the upstream's request head into `out`;
/// `None` when the request is not one the lane relays. `is_route`: whether a method and path
/// are a batch route's; `host`: the upstream's own `Host`, when it names one.
pub fn plan(
    head: &[u8],
    is_route: impl Fn(&http::Method, &str) -> bool,
    host: Option<&str>,
    client_ip: Option<&str>,
    out: &mut Vec<u8>,
) -> Option<Plan> {
    // Every line ends with CRLF (httparse also takes a bare LF, which pingora reads its way).
    let bare_lf = memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r');
    if bare_lf {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        _ => return None,
    }
    if parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => http::Method::GET,
        "POST" => http::Method::POST,
        "PUT" => http::Method::PUT,
        "DELETE" => http::Method::DELETE,
        "PATCH" => http::Method::PATCH,
        "OPTIONS" => http::Method::OPTIONS,
        _ => return None,
    };
    let target = parsed.path?;
    // The target pingora would accept, and its path is no batch route's.
    let uri: http::uri::PathAndQuery = target.parse().ok()?;
    if !target.starts_with('/') || is_route(&method, uri.path()) {
        return None;
    }
    let mut length: Option<u64> = None;
    let mut hosts = 0;
    let mut close = false;
    let mut request_id = None;
    for header in parsed.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() || value.is_empty() || value.len() > 18 {
                return None;
            }
            if !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = std::str::from_utf8(value).ok()?.parse().ok();
            length?;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = Some(value);
        } else if HANDED_OFF.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return None;
        }
    }
    if hosts != 1 {
        return None;
    }
    let request_id = super::batch::request_id_of(request_id);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for header in parsed.headers.iter() {
        let name = header.name;
        let replaced = (host.is_some() && name.eq_ignore_ascii_case("host"))
            || NOT_FORWARDED.iter().any(|h| name.eq_ignore_ascii_case(h))
            || dropped_on_passthrough(name);
        if !replaced {
            push_header(out, name.as_bytes(), header.value);
        }
    }
    if let Some(host) = host {
        push_header(out, b"Host", host.as_bytes());
    }
    push_header(out, b"X-Request-Id", request_id.as_bytes());
    if let Some(ip) = client_ip {
        push_header(out, b"X-Forwarded-For", ip.as_bytes());
    }
    if let Some(length) = length {
        push_header(
            out,
            b"Content-Length",
            itoa::Buffer::new().format(length).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    Some(Plan {
        method,
        length: length.unwrap_or(0),
        close,
        request_id,
    })
}

/// Request headers whose request pingora serves: other framing, a protocol switch, an
/// interim answer the client waits for.
const HANDED_OFF: &[&str] = &[
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "http2-settings",
];

/// Request headers not forwarded as the client sent them, besides the ones the proxy owns
/// (`dropped_on_passthrough`): hop-by-hop ones, and the length the lane writes itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "content-length",
];

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The value of the first header field `name` (lowercase) in a parsed request head.
fn header_in<'h>(head: &'h [u8], name: &str) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (field, value) = line.split_at(colon);
        field
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| value.get(1..).unwrap_or_default().trim_ascii())
    })
}

/// The request target in an upstream request head (`METHOD SP target SP`).
fn target_of(head: &[u8]) -> &str {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let target = parts.nth(1).unwrap_or_default();
    std::str::from_utf8(target).unwrap_or("/")
}

/// One pass-through request, as its access log line names it.
pub(super) struct Access<'a> {
    pub method: &'a str,
    /// Without its query: queries carry tokens.
    pub path: &'a str,
    /// `None` when no answer was written (logged as 0).
    pub status: Option<u16>,
    pub client: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub request_id: Option<&'a str>,
    pub elapsed: std::time::Duration,
}

/// The pass-through access log line (`server.access_log`), for both paths.
pub(super) fn log_access(access: Access<'_>) {
    tracing::info!(
        target: "batchgate::access",
        method = %access.method,
        path = %access.path,
        status = access.status.unwrap_or(0),
        client = access.client.map(tracing::field::display),
        upstream = access.upstream.map(tracing::field::display),
        request_id = access.request_id.map(tracing::field::display),
        duration_ms = access.elapsed.as_secs_f64() * 1000.0,
        "pass-through"
    );
}

#[cfg(test)]
mod tests;
