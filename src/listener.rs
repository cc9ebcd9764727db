//! Client connections: the per-listener connection cap and the read deadlines pingora lacks.
//!
//! pingora times client reads one `read` at a time (60 s each) and waits for the next request
//! on a kept-alive connection with no timeout at all, so a client that goes quiet or sends one
//! byte every 20 s holds its connection, file descriptor and buffers forever. Here every
//! accepted connection is wrapped twice, around pingora's HTTP app and around its socket:
//!
//! * `Listener` counts open connections per listener and refuses new ones beyond
//!   `server.max_client_connections` (a 503 and a close, counted);
//! * `DeadlineStream` gives every read of the connection a deadline from its `ClientClock`:
//!   waiting for a request (`client_idle_timeout`), the whole request head
//!   (`client_header_timeout`, from its first byte; on a new connection from the accept), and
//!   the body (`client_body_timeout`, extended by one second per `client_body_min_rate`
//!   bytes, as Apache's mod_reqtimeout does). A read past its deadline fails with `TimedOut`,
//!   and so does a write that cannot make progress for `client_send_timeout` (a client that
//!   stops reading its answer).
//!
//! The proxy moves the clock between phases (`ClientClock::head_done`, `body_done`,
//! `request_done`), reaching it through `ClientClock::of`. While a request is being answered
//! the clock is unarmed: reads then only watch for the client leaving.

use crate::config::ClientLimits;
use crate::metrics::ClientMetrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a connection over the cap is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\n\r\ntoo many connections, try again later";
/// What a client whose request head grows past `client_max_head_bytes` is told, once, before
/// the connection closes.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// How long writing that answer may take; a fresh socket's buffer takes it at once.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Which read deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first byte of the next request on a kept-alive connection.
    Idle,
    /// Receiving a request head.
    Head,
    /// Receiving a request body.
    Body,
    /// The request is being answered: no deadline.
    Answering,
}

impl Phase {
    /// The phases that have a read deadline, in discriminant order (metric handles are
    /// indexed by it).
    pub const WITH_DEADLINE: [Phase; 3] = [Phase::Idle, Phase::Head, Phase::Body];

    /// Metric label of a deadline that passed in this phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Head => "head",
            Phase::Body => "body",
            Phase::Answering => "answering",
        }
    }
}

/// One connection's read deadlines, shared by its socket wrapper and the proxy's filters
/// (both run on the connection's task, so the lock is never contended).
#[derive(Debug)]
pub struct ClientClock {
    limits: ClientLimits,
    state: Mutex<ClockState>,
    metrics: Option<ClientMetrics>,
}

#[derive(Debug)]
struct ClockState {
    phase: Phase,
    deadline: Option<Instant>,
    /// Body phase: when it began and how many bytes arrived since.
    body_started: Instant,
    body_bytes: u64,
    /// Head phase: bytes read since the head began.
    head_bytes: usize,
    /// The phase whose deadline passed, once one has.
    expired: Option<Phase>,
}

impl ClientClock {
    /// A new connection: its first request head must arrive within the header timeout.
    fn new(limits: ClientLimits, metrics: Option<ClientMetrics>) -> Self {
        let now = Instant::now();
        ClientClock {
            limits,
            state: Mutex::new(ClockState {
                phase: Phase::Head,
                deadline: Some(now + limits.header_timeout),
                body_started: now,
                body_bytes: 0,
                head_bytes: 0,
                expired: None,
            }),
            metrics,
        }
    }

    /// The clock of the connection a request came on (`None` for connections that were not
    /// accepted through a `Listener`, which only tests build).
    pub fn of(session: &pingora::proxy::Session) -> Option<&ClientClock> {
        let stream = session.downstream_session.stream()?;
        let wrapped = (**stream).as_any().downcast_ref::<DeadlineStream>()?;
        Some(&wrapped.clock)
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The head was parsed: the body's deadline starts now if one follows, else none.
    pub fn head_done(&self, body_follows: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        if body_follows {
            state.phase = Phase::Body;
            state.body_started = now;
            state.body_bytes = 0;
            state.deadline = Some(now + self.limits.body_timeout);
        } else {
            state.phase = Phase::Answering;
            state.deadline = None;
        }
    }

    /// The body has been read (or the connection was upgraded): no deadline while answering.
    pub fn body_done(&self) {
        let mut state = self.lock();
        state.phase = Phase::Answering;
        state.deadline = None;
    }

    /// The answer went out: the connection now waits for its next request.
    pub fn request_done(&self) {
        let mut state = self.lock();
        state.phase = Phase::Idle;
        state.deadline = Some(Instant::now() + self.limits.idle_timeout);
    }

    /// The phase whose deadline passed, if one did.
    pub fn expired(&self) -> Option<Phase> {
        self.lock().expired
    }

    /// `n` bytes were read: a request starts, a head grows (false once it is over the head
    /// limit), or a body moves its deadline on.
    fn on_read(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let mut state = self.lock();
        match state.phase {
            Phase::Idle => {
                state.phase = Phase::Head;
                state.head_bytes = n;
                state.deadline = Some(Instant::now() + self.limits.header_timeout);
            }
            // What was read before pingora parsed the head: the head and at most one read's
            // worth of what follows it; checked below.
            Phase::Head => state.head_bytes = state.head_bytes.saturating_add(n),
            Phase::Body => {
                state.body_bytes = state.body_bytes.saturating_add(n as u64);
                if let Some(rate) = std::num::NonZeroU64::new(self.limits.body_min_rate) {
                    // Whole seconds earned; saturating, so no body size can overflow a clock.
                    let earned = Duration::from_secs(state.body_bytes / rate.get());
                    let allowed = self.limits.body_timeout.saturating_add(earned);
                    if let Some(deadline) = state.body_started.checked_add(allowed) {
                        state.deadline = Some(deadline);
                    }
                }
            }
            Phase::Answering => {}
        }
        !(state.phase == Phase::Head && state.head_bytes > self.limits.max_head_bytes)
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    fn expire(&self) {
        let phase = {
            let mut state = self.lock();
            state.expired = Some(state.phase);
            state.deadline = None;
            state.phase
        };
        if let Some(metrics) = &self.metrics {
            metrics.timed_out(phase);
        }
    }
}

/// A client socket whose reads fail with `TimedOut` once its clock's deadline passes.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    clock: ClientClock,
    /// The timer for the current deadline, made when a read first has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Started when a write first cannot make progress, dropped when one does.
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.clock.on_read(buf.filled().len() - before) {
                    return Poll::Ready(Ok(()));
                }
                // Over the head limit: say so if the socket takes it at once, then fail the
                // read so pingora closes the connection without buffering more.
                if let Some(metrics) = &this.clock.metrics {
                    metrics.head_too_large.inc();
                }
                let _ = Pin::new(&mut this.inner).poll_write(cx, HEAD_TOO_LARGE);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the request head exceeds client_max_head_bytes",
                )))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.clock.deadline() else {
                    this.timer = None;
                    return Poll::Pending;
                };
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    this.clock.expire();
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client deadline passed",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl DeadlineStream {
    /// A write that cannot make progress for `client_send_timeout` fails (nginx's
    /// `send_timeout`: the time between two successive writes), so a client that stops
    /// reading its answer cannot hold the connection and the unsent reply for ever.
    fn bound_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if written.is_ready() {
            self.write_timer = None;
            return written;
        }
        let timeout = self.clock.limits.send_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.write_timer = None;
            if let Some(metrics) = &self.clock.metrics {
                metrics.send_timed_out.inc();
            }
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the send timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound_write(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// One configured listener's open connections.
struct Slot {
    addr: SocketAddr,
    open: AtomicUsize,
    metrics: Option<ClientMetrics>,
}

/// An open connection, counted until it is dropped.
struct Open<'a>(&'a Slot);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(metrics) = &self.0.metrics {
            metrics.open.dec();
        }
    }
}

/// Wraps pingora's HTTP app: counts and caps connections per listener and gives each one a
/// `ClientClock`.
pub struct Listener<A> {
    app: Arc<A>,
    limits: ClientLimits,
    slots: Vec<Slot>,
}

impl<A> Listener<A> {
    pub fn new(app: A, limits: ClientLimits, listen: &[SocketAddr]) -> Self {
        let slots = listen
            .iter()
            .map(|addr| Slot {
                addr: *addr,
                open: AtomicUsize::new(0),
                metrics: ClientMetrics::new(&addr.to_string()),
            })
            .collect();
        Listener {
            app: Arc::new(app),
            limits,
            slots,
        }
    }

    /// The configured listener a connection arrived on: same port, and the same address or a
    /// wildcard one (`0.0.0.0:8080` accepts on `127.0.0.1:8080`).
    fn slot(&self, stream: &Stream) -> Option<&Slot> {
        let local = stream
            .get_socket_digest()
            .and_then(|digest| digest.local_addr().and_then(|a| a.as_inet().copied()));
        let matches = |slot: &&Slot| match local {
            Some(local) => {
                slot.addr.port() == local.port()
                    && (slot.addr.ip() == local.ip() || slot.addr.ip().is_unspecified())
            }
            None => false,
        };
        self.slots.iter().find(matches).or(self.slots.first())
    }

    /// Counts a new connection in, or `None` when the listener is full.
    fn enter<'s>(&self, slot: &'s Slot) -> Option<Open<'s>> {
        if slot.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            slot.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(metrics) = &slot.metrics {
                metrics.refused.inc();
            }
            return None;
        }
        if let Some(metrics) = &slot.metrics {
            metrics.open.inc();
        }
        Some(Open(slot))
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Listener<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = self.slot(&stream)?;
        let Some(_open) = self.enter(slot) else {
            // Over the cap: say so, then close. The answer fits a fresh socket's buffer, so
            // the write does not wait; the connection never reaches pingora.
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(REFUSED)).await;
            return None;
        };
        let stream: Stream = Box::new(DeadlineStream {
            inner: stream,
            clock: ClientClock::new(self.limits, slot.metrics.clone()),
            timer: None,
            write_timer: None,
        });
        // pingora's HTTP app serves every request of the connection before it returns.
        ServerApp::process_new(&self.app, stream, shutdown).await
    }

    async fn cleanup(&self) {
        // pingora wakes parked keep-alive reads here at shutdown.
        self.app.cleanup().await
    }
}
