//! The body deadline of an HTTP/2 request that pingora reads itself (pass-through).
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
//! passes once its answer can no longer be a 408.

use super::clock::next_read_deadline;
use super::Phase;
use crate::config::ClientLimits;
use pingora::apps::HttpServerApp;
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

/// Serves one HTTP/2 request with `app` under a `BodyWatch`. `listener`: the one its
/// connection arrived on, to count a reset.
pub(super) async fn serve_stream<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    session: ServerSession,
    shutdown: &ShutdownWatch,
    listener: SocketAddr,
) {
    let watch = Arc::new(BodyWatch::default());
    let request = WATCH.scope(watch.clone(), app.process_new_http(session, shutdown));
    tokio::select! {
        _ = request => {}
        () = watch.expired() => {
            // The request's future, its stream and its upstream connection are dropped
            // here: h2 resets the stream with CANCEL.
            crate::metrics::client_stream_timed_out(&listener.to_string(), Phase::Body.as_str());
            tracing::debug!("HTTP/2 pass-through body stalled past client_body_timeout; stream reset");
        }
    }
}
