//! One HTTP/2 stream being served: its body deadline when pingora reads the body itself
//! (pass-through), and the count of a connection's open streams.
//!
//! Over HTTP/1 every read of a body passes the connection's `DeadlineStream`, whose clock
//! cuts a body that stalls. An HTTP/2 connection carries many streams, so its socket cannot
//! time one of them, and pingora reads an HTTP/2 request body with no timeout at all: a client
//! that opens a stream, sends part of a body and then nothing (while the connection stays
//! busy or just open) would hold the stream, its upstream connection and their buffers for
//! ever. Batches read their bodies with their own per-read deadline (`proxy/body.rs`); for
//! the rest, every HTTP/2 request runs under a `BodyWatch` (`serve_stream`).
//! The proxy arms it when it starts to pass the body on (`body_read_started`) and moves it
//! on with every piece (`body_received`); when its deadline passes, the request's task is
//! dropped, which resets the stream (`CANCEL`), as Envoy resets a stream whose idle timeout
//! passes once its answer can no longer be a 408. `OpenStreams` counts a connection's
//! streams being served, for its idle timeout.

use super::clock::next_read_deadline;
use super::Phase;
use crate::config::ClientLimits;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The watch of the HTTP/2 request this task serves.
    static WATCH: Arc<BodyWatch>;
}

/// One HTTP/2 request's body deadline: unarmed until its body is being passed on, then the
/// time by which the next piece must arrive. Only the request's own task touches it (the
/// proxy's filters run inside the request's poll), so it needs no waker: `serve_stream`
/// looks at it after every poll of the request.
#[derive(Default)]
struct BodyWatch {
    state: Mutex<Watched>,
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

    fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
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

/// Serves one HTTP/2 request with `app` under a `BodyWatch`. `listener`: the one its
/// connection arrived on, to count a reset; `_open` counts the stream as open until it ends.
pub(super) async fn serve_stream<A: HttpServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    session: ServerSession,
    shutdown: ShutdownWatch,
    listener: SocketAddr,
    _open: StreamGuard,
) {
    let watch = Arc::new(BodyWatch::default());
    let request = WATCH.scope(watch.clone(), app.process_new_http(session, &shutdown));
    tokio::pin!(request);
    // One timer, made only once a body is being passed on; a deadline that moved (each
    // piece moves it later) re-arms it before it is polled, so when it fires the current
    // deadline has passed.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let stalled = std::future::poll_fn(|cx| {
        if request.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        let Some(deadline) = watch.deadline() else {
            return Poll::Pending;
        };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).map(|()| true)
    })
    .await;
    if stalled {
        // The request's future, its stream and its upstream connection are dropped with
        // this function: h2 resets the stream with CANCEL.
        crate::metrics::client_stream_timed_out(&listener.to_string(), Phase::Body.as_str());
        tracing::debug!("HTTP/2 pass-through body stalled past client_body_timeout; stream reset");
    }
}

/// The connection's streams being served, to tell a busy connection from an idle one.
#[derive(Default)]
pub(super) struct OpenStreams {
    count: AtomicUsize,
    none_left: Notify,
}

/// One stream being served; the count drops with it.
pub(super) struct StreamGuard(Arc<OpenStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

impl OpenStreams {
    pub(super) fn enter(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Resolves once no stream has been open for `timeout` (cancelled, and so restarted,
    /// whenever the loop accepts one).
    pub(super) async fn idle_for(&self, timeout: Duration) {
        while self.count.load(Ordering::Acquire) != 0 {
            self.none_left.notified().await;
        }
        tokio::time::sleep(timeout).await;
    }
}
