//! Client connections: the per-listener connection cap and the read deadlines pingora lacks.
//!
//! pingora times client reads one `read` at a time (60 s each) and waits for the next request
//! on a kept-alive connection with no timeout at all, so a client that goes quiet or sends one
//! byte every 20 s holds its connection, file descriptor and buffers forever. Here every
//! accepted connection is wrapped twice, around pingora's HTTP app and around its socket:
//!
//! * `Listener` counts open connections per listener and refuses new ones beyond
//!   `server.max_client_connections` (a 503 and a close, counted), then serves the
//!   connection right there or hands it to a per-thread worker (`workers.rs`), which
//!   re-registers its socket on its own event loop (`rehome.rs`);
//! * `DeadlineStream` gives every read of the connection a deadline from its `ClientClock`:
//!   waiting for a request (`client_idle_timeout`), the whole request head
//!   (`client_header_timeout`, from its first byte; on a new connection from the accept), and
//!   the body (`client_body_timeout`, extended by one second per `client_body_min_rate`
//!   bytes, as Apache's mod_reqtimeout does). A read past its deadline fails with `TimedOut`,
//!   and so does a write that cannot make progress for `client_send_timeout` (a client that
//!   stops reading its answer).
//!
//! The proxy moves the clock between phases (`ClientClock::head_done`, `body_done`,
//! `request_done`), reaching it through `clock_of`. While a request is being answered
//! the clock is unarmed: reads then only watch for the client leaving.

mod clock;
mod h2_conn;
mod h2_frames;
mod h2_streams;
mod rehome;
mod stream;
mod tls;
mod workers;

pub use clock::{body_deadline, next_read_deadline, ClientClock, Phase};
pub use h2_frames::{FrameWatch, Pending, MAX_REMEMBERED_STREAMS};
pub use h2_streams::{body_read_started, body_received};
pub use stream::{clock_of, clock_of_http, DeadlineStream};
pub use tls::TlsConn;
pub use workers::Workers;

use crate::config::{ClientLimits, ListenerTls};
use crate::metrics::ClientMetrics;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Peek;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stream::H2_PREFACE;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

/// What a connection over the cap is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\n\r\ntoo many connections, try again later";
/// How long writing that answer may take; a fresh socket's buffer takes it at once.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Serves what it can of an HTTP/1.x connection before pingora's app sees it
/// (`proxy::Lane`).
#[async_trait]
pub trait Lane: Send + Sync {
    /// Serves requests on `stream` until the connection ends (`None`) or a request arrives
    /// that the app serves: the stream then comes back with that request unread, and the app
    /// serves it and the rest of the connection.
    async fn serve(
        &self,
        stream: DeadlineStream,
        shutdown: &ShutdownWatch,
    ) -> Option<DeadlineStream>;
}

/// One configured listener's open connections.
struct Slot {
    addr: SocketAddr,
    /// TLS listeners terminate TLS here (see `tls.rs`).
    tls: Option<TlsAcceptor>,
    open: AtomicUsize,
    metrics: Option<ClientMetrics>,
}

/// An open connection, counted until it is dropped.
struct Open(Arc<Slot>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(metrics) = &self.0.metrics {
            metrics.open.dec();
        }
    }
}

/// Wraps pingora's HTTP app: counts and caps connections per listener and gives each one a
/// `ClientClock`; with workers, hands each connection to one (`workers.rs`).
pub struct Listener<A: Send + Sync + 'static> {
    serving: Serving<A>,
    limits: ClientLimits,
    slots: Vec<Arc<Slot>>,
    /// Cleartext connections may open with the HTTP/2 preface (`server.h2c`).
    h2c: bool,
    /// Serves HTTP/1 requests before the app does.
    lane: Option<Arc<dyn Lane>>,
}

/// The listeners one app serves: cleartext ones, and TLS ones with their settings.
pub struct Listeners<'a> {
    pub plain: &'a [SocketAddr],
    pub tls: &'a [SocketAddr],
    pub tls_settings: Option<&'a ListenerTls>,
    pub h2c: bool,
}

/// Where accepted connections are served.
enum Serving<A: Send + Sync + 'static> {
    /// Right here, on the accepting service's threads (with work stealing).
    Inline(Arc<A>),
    /// On the least busy per-thread worker, for the connection's whole life.
    Workers(Arc<Workers<A>>),
}

impl<A: Send + Sync + 'static> Listener<A> {
    /// Serves connections on the accepting service's own threads.
    pub fn new(app: A, limits: ClientLimits, listeners: Listeners<'_>) -> Self {
        Self::serving(Serving::Inline(Arc::new(app)), limits, listeners)
    }

    /// Hands every connection to one of `workers`.
    pub fn with_workers(
        workers: Arc<Workers<A>>,
        limits: ClientLimits,
        listeners: Listeners<'_>,
    ) -> Self {
        Self::serving(Serving::Workers(workers), limits, listeners)
    }

    fn serving(serving: Serving<A>, limits: ClientLimits, listeners: Listeners<'_>) -> Self {
        let acceptor = listeners
            .tls_settings
            .map(|tls| TlsAcceptor::from(tls.config.clone()));
        let slot = |addr: &SocketAddr, tls: Option<TlsAcceptor>| {
            Arc::new(Slot {
                addr: *addr,
                tls,
                open: AtomicUsize::new(0),
                metrics: ClientMetrics::new(
                    &addr.to_string(),
                    &Phase::WITH_DEADLINE.map(Phase::as_str),
                ),
            })
        };
        let plain = listeners.plain.iter().map(|addr| slot(addr, None));
        let tls = listeners
            .tls
            .iter()
            .map(|addr| slot(addr, acceptor.clone()));
        Listener {
            serving,
            limits,
            slots: plain.chain(tls).collect(),
            h2c: listeners.h2c,
            lane: None,
        }
    }

    /// Every HTTP/1 connection goes through `lane` first.
    pub fn with_lane(mut self, lane: Arc<dyn Lane>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// The configured listener a connection arrived on.
    fn slot(&self, stream: &Stream) -> Option<&Arc<Slot>> {
        let local = stream
            .get_socket_digest()
            .and_then(|digest| digest.local_addr().and_then(|a| a.as_inet().copied()));
        let matches = |slot: &&Arc<Slot>| local.is_some_and(|local| accepted_on(slot.addr, local));
        self.slots.iter().find(matches).or(self.slots.first())
    }

    /// Counts a new connection in, or `None` when the listener is full.
    fn enter(&self, slot: &Arc<Slot>) -> Option<Open> {
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
        Some(Open(slot.clone()))
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Listener<A> {
    /// Serves one counted connection with `app`: its clock, its TLS handshake or h2c
    /// preface, then every request on it.
    async fn serve(
        &self,
        app: &Arc<A>,
        slot: &Slot,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let clock = ClientClock::new(self.limits, slot.metrics.clone());
        let stream = match &slot.tls {
            Some(acceptor) => {
                // Boxed, as the HTTP/2 loop below: a state only some connections reach, and
                // only for a while, is not carried by every connection's task.
                let tls = Box::pin(self.accept_tls(acceptor, stream, &clock)).await?;
                DeadlineStream::new(tls, clock)
            }
            None => {
                let mut plain = DeadlineStream::new(stream, clock);
                if self.h2c {
                    sniff_h2c(&mut plain).await?;
                }
                plain
            }
        };
        // HTTP/2 connections are served by batchgate's own loop; HTTP/1 ones by pingora's
        // app, which serves every request of the connection before it returns.
        if stream.clock().is_multiplexed() {
            Box::pin(h2_conn::serve(app, stream, shutdown, slot.addr)).await;
            return None;
        }
        let stream = match &self.lane {
            Some(lane) => lane.serve(stream, shutdown).await?,
            None => stream,
        };
        ServerApp::process_new(app, Box::new(stream), shutdown).await
    }

    /// The TLS handshake, within the header timeout: a client that opens connections and
    /// never finishes a handshake holds each one no longer than one that never sends a head.
    async fn accept_tls(
        &self,
        acceptor: &TlsAcceptor,
        stream: Stream,
        clock: &ClientClock,
    ) -> Option<Stream> {
        // The handshake future owns the socket: it is dropped (and the client sees the close)
        // only after the timeout is counted, so a scrape that follows the close sees it.
        let handshake = acceptor.accept(stream);
        tokio::pin!(handshake);
        let tls = tokio::select! {
            result = &mut handshake => match result {
                Ok(tls) => TlsConn::new(tls),
                Err(error) => {
                    clock.handshake_failed();
                    tracing::debug!("client TLS handshake failed: {error}");
                    return None;
                }
            },
            () = tokio::time::sleep(self.limits.header_timeout) => {
                clock.handshake_timed_out();
                return None;
            }
        };
        if tls.alpn() == Some(&pingora::protocols::ALPN::H2) {
            clock.multiplexed();
        }
        Some(Box::new(tls))
    }
}

/// Whether a connection whose local address is `local` arrived on the listener configured as
/// `listener`: same port, and the same address or a wildcard one (`0.0.0.0:8080` accepts on
/// `127.0.0.1:8080`).
pub fn accepted_on(listener: SocketAddr, local: SocketAddr) -> bool {
    listener.port() == local.port()
        && (listener.ip() == local.ip() || listener.ip().is_unspecified())
}

/// Which of `listeners` an HTTP session's connection arrived on (HTTP/2 streams, whose
/// connection's `ClientClock` they cannot reach, count their timeouts against it).
pub fn listener_of(
    session: &pingora::protocols::http::ServerSession,
    listeners: &[SocketAddr],
) -> Option<SocketAddr> {
    let local = session
        .digest()
        .and_then(|d| d.socket_digest.as_ref())
        .and_then(|s| s.local_addr().and_then(|a| a.as_inet().copied()))?;
    listeners
        .iter()
        .copied()
        .find(|listener| accepted_on(*listener, local))
}

/// With `h2c`, a cleartext connection that opens with the HTTP/2 preface is multiplexed
/// (pingora peeks the same bytes, which the stream keeps, to choose its h2 server). `None`:
/// the client sent nothing before its header deadline, or left.
async fn sniff_h2c(stream: &mut DeadlineStream) -> Option<()> {
    let mut preface = [0u8; H2_PREFACE.len()];
    stream.try_peek(&mut preface).await.ok()?;
    if preface == H2_PREFACE {
        stream.clock().multiplexed();
    }
    Some(())
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Listener<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = self.slot(&stream)?.clone();
        let Some(open) = self.enter(&slot) else {
            // Over the cap: say so, then close. The answer fits a fresh socket's buffer, so
            // the write does not wait; the connection never reaches pingora.
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(REFUSED)).await;
            return None;
        };
        let workers = match &self.serving {
            Serving::Inline(app) => {
                let reuse = self.serve(app, &slot, stream, shutdown).await;
                drop(open);
                return reuse;
            }
            Serving::Workers(workers) => workers,
        };
        let on = workers.assign();
        let app = on.worker().app.clone();
        let Some(handle) = on.worker().handle().cloned() else {
            // Only before the worker's runtime started (the acceptor waits for them all).
            let reuse = self.serve(&app, &slot, stream, shutdown).await;
            drop((open, on));
            return reuse;
        };
        let this = self.clone();
        let shutdown = shutdown.clone();
        // The connection now lives on the worker: this accept task is done.
        handle.spawn(async move {
            let stream = rehome::rehome(stream);
            let mut reuse = this.serve(&app, &slot, stream, &shutdown).await;
            while let Some(stream) = reuse {
                reuse = ServerApp::process_new(&app, stream, &shutdown).await;
            }
            drop((open, on));
        });
        None
    }

    async fn cleanup(&self) {
        // pingora wakes parked keep-alive reads here at shutdown.
        match &self.serving {
            Serving::Inline(app) => app.cleanup().await,
            Serving::Workers(workers) => {
                for app in workers.apps() {
                    app.cleanup().await;
                }
            }
        }
    }
}
