//! Where an item's HTTP/2 stream comes from: connections to one address, opened one at a time
//! and shared by every item until their stream limit.
//!
//! pingora's h2 pool takes a connection out while it opens a stream on it and puts it back
//! after; a caller arriving in between finds no connection and opens one of its own. A batch's
//! items all arrive at once, so each burst opened dozens of connections, and a burst of
//! connects can overflow the upstream's accept queue (the kernel retries a dropped SYN after
//! 1 s: connect timeouts, failed items). Under a steady load at the stream limit the pool also
//! kept opening new connections (320-380 in 5 s in some runs of `LOAD_ONLY=h2batch0`).
//!
//! * h2c (`H2cConnections`): our own set of connections per address. An item takes a stream on
//!   the first connection with a free one; only when none has, it waits its turn to open the
//!   next connection, and the items behind it use that one. Connections found idle for longer
//!   than `idle_timeout` are dropped (closed); closed ones are forgotten.
//! * h2 over TLS (`SessionGate`): pingora's pool, which also falls back to HTTP/1.1 when the
//!   upstream's ALPN declines h2; callers take their turn at it, so a burst opens connections
//!   one after the other instead of all at once.
//!
//! In both, callers that waited behind a failed connect fail with it, rather than each trying
//! its own connect after the other (100 items x `connect_timeout`).

use pingora::connectors::http::v2::{handshake, ConnectionRef, H2HandshakeSettings};
use pingora::connectors::http::Connector;
use pingora::connectors::TransportConnector;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OkOrErr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The stream source for one item.
#[derive(Clone, Copy)]
pub(super) enum Streams<'a> {
    H2c {
        connections: &'a H2cConnections,
        transport: &'a TransportConnector,
    },
    Pingora {
        connector: &'a Connector,
        gate: &'a SessionGate,
    },
}

impl Streams<'_> {
    /// A stream, whether its connection was already open, and (h2c) that connection, to be
    /// marked going away when a stream learns it is.
    pub(super) async fn session(
        self,
        peer: &HttpPeer,
    ) -> pingora::Result<(HttpSession, bool, Option<ConnectionRef>)> {
        match self {
            Streams::H2c {
                connections,
                transport,
            } => {
                let (stream, reused, conn) = connections.stream(transport, peer).await?;
                Ok((HttpSession::H2(stream), reused, Some(conn)))
            }
            Streams::Pingora { connector, gate } => {
                let (session, reused) = gate.session(connector, peer).await?;
                Ok((session, reused, None))
            }
        }
    }

    /// Hands a finished stream back (its connection stays open for the next one).
    pub(super) async fn release(self, session: HttpSession, peer: &HttpPeer) {
        match self {
            // Dropping an h2 stream frees its slot on the connection.
            Streams::H2c { .. } => drop(session),
            Streams::Pingora { connector, .. } => {
                connector
                    .release_http_session(session, peer, peer.options.idle_timeout)
                    .await;
            }
        }
    }
}

/// Counts connect failures so that callers queued behind one fail with it.
#[derive(Default)]
struct Turns {
    turn: tokio::sync::Mutex<()>,
    failures: AtomicU64,
}

impl Turns {
    /// Runs `connect` in turn; `Err` if a connect failed while this caller waited.
    async fn take<T, F: std::future::Future<Output = pingora::Result<T>>>(
        &self,
        connect: impl FnOnce() -> F,
    ) -> pingora::Result<T> {
        let failures = self.failures.load(Ordering::Acquire);
        let _turn = self.turn.lock().await;
        if self.failures.load(Ordering::Acquire) != failures {
            return Error::e_explain(
                ErrorType::ConnectError,
                "a connection to this address failed while this item waited for one",
            );
        }
        let result = connect().await;
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Release);
        }
        result
    }
}

/// pingora's h2 pool (TLS h2 with its HTTP/1.1 fallback), one caller at a time.
#[derive(Default)]
pub(super) struct SessionGate {
    turns: Turns,
}

impl SessionGate {
    async fn session(
        &self,
        connector: &Connector,
        peer: &HttpPeer,
    ) -> pingora::Result<(HttpSession, bool)> {
        self.turns.take(|| connector.get_http_session(peer)).await
    }
}

/// The open h2c connections to one address, shared by every thread.
#[derive(Default)]
pub(super) struct H2cConnections {
    open: Mutex<Vec<Open>>,
    turns: Turns,
}

struct Open {
    conn: ConnectionRef,
    /// When a pick first found it without streams.
    idle_since: Option<Instant>,
}

/// A stream slot can be taken between the check and the stream's creation; try the next
/// connection this many times before opening one.
const PICKS: usize = 4;

impl H2cConnections {
    async fn stream(
        &self,
        transport: &TransportConnector,
        peer: &HttpPeer,
    ) -> pingora::Result<(Http2Session, bool, ConnectionRef)> {
        let idle_timeout = peer.options.idle_timeout.unwrap_or(Duration::MAX);
        if let Some((stream, conn)) = self.reuse(idle_timeout).await {
            return Ok((stream, true, conn));
        }
        self.turns
            .take(|| async {
                // Whoever had the turn before may have opened a connection with room.
                if let Some((stream, conn)) = self.reuse(idle_timeout).await {
                    return Ok((stream, true, conn));
                }
                let (stream, conn) = self.connect(transport, peer).await?;
                Ok((stream, false, conn))
            })
            .await
    }

    /// A stream on an open connection with a free slot.
    async fn reuse(&self, idle_timeout: Duration) -> Option<(Http2Session, ConnectionRef)> {
        for _ in 0..PICKS {
            let conn = self.pick(idle_timeout)?;
            match conn.spawn_stream().await {
                Ok(Some(stream)) => return Some((stream, conn)),
                // Full after all (taken meanwhile) or going away: the next one.
                Ok(None) => {}
                Err(_) => conn.mark_shutdown(),
            }
        }
        None
    }

    /// Forgets closed connections, drops long-idle ones and returns one with a free slot.
    fn pick(&self, idle_timeout: Duration) -> Option<ConnectionRef> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain_mut(|o| {
            if o.conn.is_closed() || (o.conn.is_shutting_down() && o.conn.is_idle()) {
                return false;
            }
            if !o.conn.is_idle() {
                o.idle_since = None;
                return true;
            }
            now.duration_since(*o.idle_since.get_or_insert(now)) < idle_timeout
        });
        open.iter()
            .find(|o| o.conn.more_streams_allowed())
            .map(|o| o.conn.clone())
    }

    async fn connect(
        &self,
        transport: &TransportConnector,
        peer: &HttpPeer,
    ) -> pingora::Result<(Http2Session, ConnectionRef)> {
        let tcp = transport.new_stream(peer).await?;
        let mut settings = H2HandshakeSettings::new();
        settings.max_streams = peer.options.max_h2_streams;
        let conn = handshake(tcp, settings).await?;
        let stream = conn.spawn_stream().await?.or_err(
            ErrorType::H2Error,
            "a new h2c connection has no free stream (the upstream sent GOAWAY)",
        )?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Open {
                conn: conn.clone(),
                idle_since: None,
            });
        Ok((stream, conn))
    }
}
