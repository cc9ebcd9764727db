//! The body deadline of an HTTP/2 request that pingora reads itself (pass-through).
//!
//! Over HTTP/1 every read of a body passes the connection's `DeadlineStream`, whose clock
//! cuts a body that stalls. An HTTP/2 connection carries many streams, so its socket cannot
//! time one of them, and pingora reads an HTTP/2 request body with no timeout at all: a client
//! that opens a stream, sends part of a body and then nothing (while the connection stays
//! busy or just open) would hold the stream, its upstream connection and their buffers for
//! ever. Batches read their bodies with their own per-read deadline (`proxy/body.rs`); for
//! the rest, every HTTP/2 request runs inside `WatchedStreams`, which gives it a `BodyWatch`.
//! The proxy arms it when it starts to pass the body on (`body_read_started`) and moves it
//! on with every piece (`body_received`); when its deadline passes, the request's task is
//! dropped, which resets the stream (`CANCEL`), as Envoy resets a stream whose idle timeout
//! passes once its answer can no longer be a 408.

use super::clock::next_read_deadline;
use crate::config::ClientLimits;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

tokio::task_local! {
    /// The watch of the HTTP/2 request this task serves.
    static WATCH: Arc<BodyWatch>;
}

/// One HTTP/2 request's body deadline: unarmed until its body is being passed on, then the
/// time by which the next piece must arrive.
#[derive(Default)]
struct BodyWatch {
    state: Mutex<Watched>,
    armed: Notify,
}

#[derive(Default)]
struct Watched {
    limits: Option<ClientLimits>,
    started: Option<Instant>,
    bytes: u64,
    deadline: Option<Instant>,
    finished: bool,
}

impl BodyWatch {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once the deadline has passed (never while unarmed). Deadlines only move
    /// later, so a sleep that ends early is simply taken again.
    async fn expired(&self) {
        loop {
            let deadline = self.lock().deadline;
            match deadline {
                None => self.armed.notified().await,
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
            }
        }
    }
}

/// The proxy starts passing this request's body on (under `limits`): from now on each
/// piece must arrive within the body timeout of the last, and the whole body within the
/// body timeout and minimum rate. No effect outside an HTTP/2 request, once armed, or once
/// the body is complete (a retry sends what it kept).
pub fn body_read_started(limits: &ClientLimits) {
    let _ = WATCH.try_with(|watch| {
        let mut state = watch.lock();
        if state.started.is_some() || state.finished {
            return;
        }
        let now = Instant::now();
        state.limits = Some(*limits);
        state.started = Some(now);
        state.deadline = next_read_deadline(limits, now, 0, now);
        drop(state);
        watch.armed.notify_one();
    });
}

/// `bytes` more of the body were passed on; `end`: it is complete, and unwatched from here.
pub fn body_received(bytes: usize, end: bool) {
    let _ = WATCH.try_with(|watch| {
        let mut state = watch.lock();
        if end {
            state.finished = true;
            state.deadline = None;
            return;
        }
        let (Some(limits), Some(started)) = (state.limits, state.started) else {
            return;
        };
        state.bytes = state.bytes.saturating_add(bytes as u64);
        state.deadline = next_read_deadline(&limits, started, state.bytes, Instant::now());
    });
}

/// pingora's HTTP app with a `BodyWatch` around each of its HTTP/2 requests; HTTP/1
/// requests pass straight through.
pub struct WatchedStreams<A> {
    app: Arc<A>,
    /// The public listeners, to count a reset stream against the one it came on.
    listeners: Vec<SocketAddr>,
}

impl<A> WatchedStreams<A> {
    pub fn new(app: A, listeners: Vec<SocketAddr>) -> Self {
        WatchedStreams {
            app: Arc::new(app),
            listeners,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for WatchedStreams<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.is_http2() {
            return self.app.process_new_http(session, shutdown).await;
        }
        let listener = super::listener_of(&session, &self.listeners);
        let watch = Arc::new(BodyWatch::default());
        let request = WATCH.scope(watch.clone(), self.app.process_new_http(session, shutdown));
        tokio::select! {
            reuse = request => reuse,
            () = watch.expired() => {
                // The request's future, its stream and its upstream connection are dropped
                // here: h2 resets the stream with CANCEL.
                if let Some(listener) = listener {
                    crate::metrics::client_stream_timed_out(&listener.to_string(), super::Phase::Body.as_str());
                }
                tracing::debug!("HTTP/2 pass-through body stalled past client_body_timeout; stream reset");
                None
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await;
    }
}
