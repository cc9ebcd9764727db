//! HTTP/1.1 pipelining of items (an upstream's `pipeline_depth` above 1): items that start
//! together share one connection, their requests leave in one `write` and their answers are
//! read in order (RFC 9112 section 9.3.2). Per item, one exchange otherwise costs a `write` and
//! a `read`, most of a loopback or LAN exchange's CPU; here a group of items shares them.
//!
//! Each pipelined connection is a `Pipe` driven by a task of its own (`drive`) that owns the
//! connection: it writes what was queued, reads one answer per request and hands each to its
//! item, whether or not the item still waits (an item cut off by its timeout leaves the
//! connection in step). An item joins a pipe with nothing in flight: the one still collecting
//! its next group while it has room (up to the depth), else an idle one, else a new
//! connection. It never queues behind answers already on their way, so a slow answer delays
//! only the items written with it.
//!
//! What a failed answer means for the requests written behind it:
//! * the upstream said it closes (`Connection: close`, HTTP/1.0, a body delimited by the close):
//!   it acts on no request after that answer (RFC 9112 section 9.6), so nothing of them was
//!   used and they go again whatever their method;
//! * otherwise (a reset, a malformed answer, a timeout) they may have been acted on, and go
//!   again only when the item may be sent twice (`may_send_again`), once, on a connection of
//!   their own: the stale-connection rule of `h1::send`.
//!
//! Pipelining trades latency for CPU: an upstream works through a connection's requests one
//! after another, so a request waits for the answers ahead of it. How many requests a group
//! holds follows what the upstream takes per request when nothing else delays it, measured on
//! every group (`ServiceTime`): as many as keep the
//! last one's wait within `pipeline_max_delay`, up to the depth. An unmeasured upstream gets two;
//! one too slow for two gets a group of two once a second, to be measured again.
//!
//! Pipes are kept per thread like the idle pool (`pool`), and a pipe's task runs on the thread
//! that opened it, so neither side needs a cross-thread wake-up.

use super::read::Reader;
use super::{bounded, encode_request, on_connection, resend_on_new_connection, write_counted};
use super::{H1Error, Timeouts};
use super::{READ_CHUNK, WRITING};
use crate::config::MAX_PIPELINE_DEPTH;
use crate::item::{Sent, SubRequest, UpstreamResponse};
use crate::metrics::Carried;
use crate::upstream::exchange_error::ExchangeError;
use crate::upstream::pool::{self, Conn, Pool};
use crate::upstream::BatchHeaders;
use bytes::BytesMut;
use http::Method;
use pingora::protocols::Stream;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The pipelined connections to one upstream address.
pub struct Pipes {
    shared: Arc<Shared>,
}

struct Shared {
    /// One per thread shard (`pool::home`).
    shards: Vec<Mutex<Shard>>,
    /// Most requests written together on one connection.
    depth: usize,
    /// How long a request should wait at most for the answers ahead of it.
    max_delay: Duration,
    /// What the upstream takes per pipelined request, as measured.
    per_request: ServiceTime,
    /// When a group of two last went to an upstream too slow for it (ms since `epoch`).
    probed_ms: AtomicU64,
    epoch: Instant,
    /// Pipes open or opening.
    open_pipes: AtomicUsize,
    /// Most idle pipes per shard; a pipe that goes idle beyond it closes.
    max_idle: usize,
    idle_timeout: Duration,
    timeouts: Timeouts,
}

#[derive(Default)]
struct Shard {
    /// The pipe that got its first request last: it takes more until its task writes them.
    collecting: Option<Arc<Pipe>>,
    /// Pipes with nothing queued or in flight, newest last.
    idle: Vec<Arc<Pipe>>,
}

/// One pipelined connection: what is queued for its next write, and its task's wake-up.
struct Pipe {
    state: Mutex<State>,
    wake: Notify,
    /// The shard it belongs to: its opener's thread's.
    home: usize,
}

struct State {
    /// Requests for the next write, at most the depth.
    queue: Vec<Queued>,
    /// Requests written whose answers are not all read yet: nothing joins meanwhile.
    in_flight: bool,
    /// False once its task ended or its connection could not be made: nothing joins.
    open: bool,
    /// The connection has carried requests before: one that fails before any answer may have
    /// been closed by the upstream while idle.
    used: bool,
}

/// One item's request waiting for its write.
struct Queued {
    bytes: Vec<u8>,
    is_head: bool,
    max_response_bytes: usize,
    item_timeout: Duration,
    answer: oneshot::Sender<Answer>,
}

type Answer = Result<UpstreamResponse, Failed>;

/// Why a pipelined request got no answer, and whether any of its answer arrived.
struct Failed {
    error: ExchangeError,
    nothing_received: bool,
}

impl Failed {
    fn h1(error: H1Error) -> Self {
        Failed {
            nothing_received: error.nothing_received(),
            error: error.into(),
        }
    }

    /// Written behind an answer that failed: it may have reached the upstream.
    fn behind_failure() -> Self {
        Failed::h1(H1Error::Closed {
            context: "before an earlier pipelined answer was complete",
            nothing_received: true,
        })
    }

    /// Written behind an answer after which the upstream closed: it was not acted on.
    fn not_acted_on() -> Self {
        Failed {
            error: ExchangeError::Broken {
                sent: Sent::Nothing,
                detail: "the upstream closed the connection before this request".into(),
            },
            nothing_received: true,
        }
    }

    /// Never written: the connection ended first.
    fn unsent(detail: &str) -> Self {
        Failed {
            error: ExchangeError::Broken {
                sent: Sent::Nothing,
                detail: detail.into(),
            },
            nothing_received: true,
        }
    }
}

impl Pipes {
    pub fn new(
        depth: usize,
        max_delay: Duration,
        max_idle: usize,
        idle_timeout: Duration,
        timeouts: Timeouts,
    ) -> Self {
        Pipes {
            shared: Arc::new(Shared {
                shards: (0..pool::SHARDS).map(|_| Mutex::default()).collect(),
                depth: depth.clamp(1, MAX_PIPELINE_DEPTH),
                max_delay,
                per_request: ServiceTime::new(),
                probed_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                open_pipes: AtomicUsize::new(0),
                max_idle,
                idle_timeout,
                timeouts,
            }),
        }
    }
}

/// Whether `request` may be pipelined: a body small enough to leave with its head.
pub fn fits(request: &SubRequest) -> bool {
    request
        .body
        .as_ref()
        .is_none_or(|b| b.len() <= super::COALESCE_LIMIT)
}

/// One item over a pipelined connection; when it fails before any of its answer arrived and
/// may be sent again (see the module's rules), once more on a connection of its own.
pub(in crate::upstream) async fn send<F: Future<Output = pingora::Result<Stream>>>(
    connect: impl Fn() -> F,
    pipes: &Pipes,
    pool: &Pool,
    request: &SubRequest,
    batch: &BatchHeaders,
    repeatable: bool,
    count: impl Fn(Carried),
) -> Result<UpstreamResponse, ExchangeError> {
    let Some(bytes) = encode_request(request, batch) else {
        return Err(ExchangeError::Broken {
            sent: Sent::Nothing,
            detail: "the request body is too large to pipeline".into(),
        });
    };
    let (tx, rx) = oneshot::channel();
    let queued = Queued {
        bytes,
        is_head: request.method == Method::HEAD,
        max_response_bytes: batch.max_response_bytes,
        item_timeout: batch.item_timeout,
        answer: tx,
    };
    let failed = match pipes.shared.join(queued) {
        Joined::Queued(carried) => {
            count(carried);
            answer(rx).await
        }
        Joined::Opened(pipe) => {
            count(Carried::New);
            let opening = Opening {
                pipe: Some(pipe.clone()),
                shared: &pipes.shared,
            };
            match Box::pin(connect()).await {
                Ok(stream) => {
                    opening.connected();
                    tokio::spawn(drive(pipe, stream, pipes.shared.clone()));
                    answer(rx).await
                }
                Err(error) => {
                    opening.failed(&error);
                    return Err(ExchangeError::connect(&error));
                }
            }
        }
    };
    let failed = match failed {
        Ok(response) => return Ok(response),
        Err(failed) => failed,
    };
    // A connection that could not be made is not tried again here (as in `h1::send`).
    let connected = !matches!(failed.error, ExchangeError::Connect { .. });
    let sent = failed.error.sent();
    if !(connected && resend_on_new_connection(sent, failed.nothing_received, repeatable)) {
        return Err(failed.error);
    }
    let conn = match Box::pin(connect()).await {
        Ok(stream) => Conn::new(stream),
        Err(error) => return Err(ExchangeError::connect(&error)),
    };
    count(Carried::New);
    let timeouts = pipes.shared.timeouts;
    // Boxed: a rare path, and an exchange's future would make every item's larger.
    Ok(Box::pin(on_connection(conn, pool, request, batch, timeouts)).await?)
}

/// The item's answer from the pipe's task.
async fn answer(rx: oneshot::Receiver<Answer>) -> Answer {
    rx.await
        .unwrap_or_else(|_| Err(Failed::unsent("the pipelined connection ended")))
}

enum Joined {
    /// Queued on a pipe that exists: reused (idle) or pipelined (behind another request).
    Queued(Carried),
    /// First on a new pipe, which waits for this item's connection.
    Opened(Arc<Pipe>),
}

impl Shared {
    fn shard(&self, home: usize) -> Option<MutexGuard<'_, Shard>> {
        let shard = self.shards.get(home)?;
        Some(
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Queues `queued` on this thread's collecting pipe while it has room, else on its newest
    /// idle pipe, else on a new one; each a constant-time step.
    fn join(&self, queued: Queued) -> Joined {
        let home = pool::home();
        let Some(mut shard) = self.shard(home) else {
            return Joined::Opened(Pipe::opening(queued, home));
        };
        let depth = self.depth_now();
        if let Some(pipe) = &shard.collecting {
            let state = pipe.lock();
            let room = !state.queue.is_empty() && state.queue.len() < depth;
            if state.open && !state.in_flight && room {
                return Joined::Queued(pipe.push(state, queued));
            }
        }
        while let Some(pipe) = shard.idle.pop() {
            let state = pipe.lock();
            if !state.open || state.in_flight || !state.queue.is_empty() {
                continue;
            }
            let carried = pipe.push(state, queued);
            pipe.wake.notify_one();
            shard.collecting = Some(pipe);
            return Joined::Queued(carried);
        }
        let pipe = Pipe::opening(queued, home);
        self.open_pipes.fetch_add(1, Ordering::Relaxed);
        shard.collecting = Some(pipe.clone());
        Joined::Opened(pipe)
    }

    /// Puts `pipe`, all of whose answers are read, among its shard's idle pipes; false when
    /// the shard keeps `max_idle` of them already (the pipe closes).
    fn park(&self, pipe: &Arc<Pipe>) -> bool {
        let Some(mut shard) = self.shard(pipe.home) else {
            return false;
        };
        if shard.idle.len() >= self.max_idle {
            return false;
        }
        shard.idle.push(pipe.clone());
        true
    }

    /// Takes `pipe`, which is closing, out of its shard.
    fn forget(&self, pipe: &Arc<Pipe>) {
        if let Some(mut shard) = self.shard(pipe.home) {
            shard.idle.retain(|p| !Arc::ptr_eq(p, pipe));
            if shard
                .collecting
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, pipe))
            {
                shard.collecting = None;
            }
        }
        self.open_pipes.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many requests a group may hold now: as many as keep the last one's wait for the
    /// answers ahead of it within `max_delay`, at the upstream's measured time per request,
    /// up to the depth. An upstream too slow for two gets a group of two once a second, so
    /// that it is measured again.
    fn depth_now(&self) -> usize {
        let per_request = self.per_request.get();
        if per_request == UNMEASURED {
            return 2.min(self.depth);
        }
        let per_request = per_request.max(1);
        let within = usize::try_from(nanos(self.max_delay) / per_request).unwrap_or(usize::MAX);
        let depth = within.saturating_add(1).min(self.depth);
        if depth >= 2 {
            return depth;
        }
        let now = self.now_ms();
        let last = self.probed_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64;
        let probe = due
            && self
                .probed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if probe {
            2.min(self.depth)
        } else {
            1
        }
    }

    /// A group's answers came `spread` apart from first to last, over `behind` requests
    /// after the first.
    fn measured(&self, spread: Duration, behind: usize) {
        let Some(behind) = u64::try_from(behind).ok().filter(|&b| b > 0) else {
            return;
        };
        self.per_request
            .record(nanos(spread) / behind, self.now_ms());
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Pipe {
    /// A pipe whose connection is being made, with `queued` first in its queue.
    fn opening(queued: Queued, home: usize) -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(State {
                queue: vec![queued],
                in_flight: false,
                open: true,
                used: false,
            }),
            wake: Notify::new(),
            home,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in the critical sections can panic, but a poisoned pipe is still a pipe.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `queued`; how its request is carried.
    fn push(&self, mut state: MutexGuard<'_, State>, queued: Queued) -> Carried {
        let carried = if state.queue.is_empty() {
            Carried::Reused
        } else {
            Carried::Pipelined
        };
        state.queue.push(queued);
        carried
    }

    /// Closes the pipe to newcomers and answers what is queued with `failed`.
    fn close(&self, failed: impl Fn() -> Failed) {
        let queue = {
            let mut state = self.lock();
            state.open = false;
            std::mem::take(&mut state.queue)
        };
        for queued in queue {
            let _ = queued.answer.send(Err(failed()));
        }
    }
}

/// What an upstream takes per pipelined request when nothing else delays it, in nanoseconds:
/// the least time per request between a group's first and last answers over the current and
/// the previous `WINDOW` (a moving minimum, as BBR keeps the least round trip). On a busy
/// upstream a request also waits for other connections' requests, which raises some samples
/// and not the minimum, and is a wait that pipelining does not add; an upstream that waits on
/// something for each request (a database, a disk) shows it in every sample.
struct ServiceTime {
    current: AtomicU64,
    previous: AtomicU64,
    /// When the current window began (ms since `Shared::epoch`).
    window_ms: AtomicU64,
}

/// How long one window of `ServiceTime` lasts: an upstream that turned slow stops being
/// pipelined after one to two of them.
const WINDOW: Duration = Duration::from_secs(10);

/// `ServiceTime` before the first group of two or more was answered.
const UNMEASURED: u64 = u64::MAX;

impl ServiceTime {
    fn new() -> Self {
        ServiceTime {
            current: AtomicU64::new(UNMEASURED),
            previous: AtomicU64::new(UNMEASURED),
            window_ms: AtomicU64::new(0),
        }
    }

    fn get(&self) -> u64 {
        let current = self.current.load(Ordering::Relaxed);
        current.min(self.previous.load(Ordering::Relaxed))
    }

    fn record(&self, sample: u64, now_ms: u64) {
        let started = self.window_ms.load(Ordering::Relaxed);
        let ended = now_ms.saturating_sub(started) >= WINDOW.as_millis() as u64;
        if ended
            && self
                .window_ms
                .compare_exchange(started, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let last = self.current.swap(sample, Ordering::Relaxed);
            self.previous.store(last, Ordering::Relaxed);
            return;
        }
        self.current.fetch_min(sample, Ordering::Relaxed);
    }
}

/// How often an upstream too slow for pipelining gets a group of two, to be measured again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A new pipe while its first item connects: dropped unfinished (the item was cut off), it
/// closes, and the items queued on it go elsewhere.
struct Opening<'a> {
    pipe: Option<Arc<Pipe>>,
    shared: &'a Shared,
}

impl Opening<'_> {
    fn connected(mut self) {
        self.pipe = None;
    }

    /// The connection could not be made: every item queued on the pipe fails as this one.
    fn failed(mut self, error: &pingora::Error) {
        if let Some(pipe) = self.pipe.take() {
            self.shared.forget(&pipe);
            pipe.close(|| Failed {
                error: ExchangeError::connect(error),
                nothing_received: true,
            });
        }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.shared.forget(&pipe);
            pipe.close(|| Failed::unsent("the connection was abandoned before it was made"));
        }
    }
}

/// A pipe's task: writes each group queued on it in one go and reads its answers, until the
/// connection fails, the upstream closes it, or it is idle for `idle_timeout` (or beyond the
/// shard's idle pipes).
async fn drive(pipe: Arc<Pipe>, mut stream: Stream, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::new();
    loop {
        let group = {
            let mut state = pipe.lock();
            let take = state.queue.len().min(shared.depth);
            let group: Vec<Queued> = state.queue.drain(..take).collect();
            state.in_flight = !group.is_empty();
            group
        };
        if group.is_empty() {
            if !wait_for_work(&pipe, &mut stream, &mut buf, &shared).await {
                break;
            }
            continue;
        }
        let used = std::mem::replace(&mut pipe.lock().used, true);
        if !exchange_group(group, &mut stream, &mut buf, &mut out, &shared, used).await {
            break;
        }
        pipe.lock().in_flight = false;
    }
    shared.forget(&pipe);
    pipe.close(|| Failed::unsent("the pipelined connection closed before this request"));
}

/// Parks the pipe among the idle ones and waits until something is queued (true), or until
/// it should close (false): idle for `idle_timeout`, as many idle pipes as the shard keeps
/// already, or the upstream closed the connection (or sent bytes nobody asked for).
async fn wait_for_work(
    pipe: &Arc<Pipe>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> bool {
    if !shared.park(pipe) {
        return false;
    }
    buf.clear();
    tokio::select! {
        () = pipe.wake.notified() => true,
        () = tokio::time::sleep(shared.idle_timeout) => false,
        _ = stream.read_buf(buf) => false,
    }
}

/// Writes `group`'s requests in one go and hands each item its answer; false when the
/// connection cannot carry more.
async fn exchange_group<S: AsyncRead + AsyncWrite + Unpin>(
    group: Vec<Queued>,
    stream: &mut S,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    shared: &Shared,
    used: bool,
) -> bool {
    out.clear();
    let mut starts = Vec::with_capacity(group.len());
    for queued in &group {
        starts.push(out.len());
        out.extend_from_slice(&queued.bytes);
    }
    let item_timeout = group
        .iter()
        .map(|q| q.item_timeout)
        .max()
        .unwrap_or_default();
    let mut written = 0;
    let write = async {
        write_counted(stream, out, &mut written).await?;
        stream.flush().await
    };
    // Always bounded: no item's future can cut this write off, as it would its own.
    let timeout = Timeouts::armed(shared.timeouts.write, item_timeout).unwrap_or(item_timeout);
    let wrote = bounded(Some(timeout), write).await;
    if !matches!(wrote, Some(Ok(()))) {
        for (queued, start) in group.into_iter().zip(starts) {
            let sent = if written <= start {
                Sent::Nothing
            } else {
                Sent::Maybe
            };
            let failed = match &wrote {
                None => Failed::h1(H1Error::Timeout(WRITING)),
                _ => Failed {
                    error: ExchangeError::Broken {
                        sent,
                        detail: format!("{WRITING}: the connection failed"),
                    },
                    nothing_received: true,
                },
            };
            let _ = queued.answer.send(Err(failed));
        }
        return false;
    }
    // Nobody waits past the last item's timeout; the connection closes then.
    let deadline = Instant::now() + item_timeout;
    let mut reader = Reader {
        stream,
        buf: std::mem::take(buf),
        timeout: Timeouts::armed(shared.timeouts.read, item_timeout),
        received: false,
        chunk: READ_CHUNK,
    };
    let requests = group.len();
    let mut rest = group.into_iter();
    let mut going = true;
    // When the first and the last answers were complete, for `Shared::measured`.
    let (mut first_at, mut last_at) = (None, None);
    // Whether the connection carried an answer before the one being read.
    let mut used = used;
    while let Some(queued) = rest.next() {
        let followed = rest.len() > 0;
        reader.received = !reader.buf.is_empty();
        let read = reader.read_response(queued.is_head, queued.max_response_bytes, followed);
        let (answer, next): (Answer, Option<fn() -> Failed>) =
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(exchanged)) if exchanged.reusable => (Ok(exchanged.response), None),
                Ok(Ok(exchanged)) => {
                    let behind = if exchanged.closing {
                        Failed::not_acted_on
                    } else {
                        Failed::behind_failure
                    };
                    (Ok(exchanged.response), Some(behind))
                }
                Ok(Err(error)) => {
                    let mut failed = Failed::h1(error);
                    // Only a connection that carried requests before can have gone stale.
                    failed.nothing_received &= used;
                    (Err(failed), Some(Failed::behind_failure))
                }
                Err(_) => {
                    let failed = Failed::h1(H1Error::Timeout("waiting for a pipelined answer"));
                    (Err(failed), Some(Failed::behind_failure))
                }
            };
        if answer.is_ok() {
            let now = Instant::now();
            first_at.get_or_insert(now);
            last_at = Some(now);
        }
        let _ = queued.answer.send(answer);
        used = true;
        if let Some(behind) = next {
            for queued in rest.by_ref() {
                let _ = queued.answer.send(Err(behind()));
            }
            going = false;
        }
    }
    if let (true, Some(first), Some(last)) = (going, first_at, last_at) {
        shared.measured(last - first, requests - 1);
    }
    *buf = reader.buf;
    // Large requests' and answers' buffers are not kept for the connection's idle life.
    if buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
    if out.capacity() > super::COALESCE_LIMIT {
        *out = Vec::new();
    }
    going
}

/// What a pipe's task hands out for `requests` (each: its bytes, and whether it is a HEAD)
/// written as one group on `stream`: per request in order, its answer, or why it has none
/// (`None`: it got no result at all, which must never happen). For the fuzz target.
#[doc(hidden)]
pub async fn exchange_once<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    requests: Vec<(Vec<u8>, bool)>,
    max_response_bytes: usize,
) -> Vec<Option<Result<UpstreamResponse, (Sent, bool)>>> {
    let long = Duration::from_secs(60);
    let mut receivers = Vec::new();
    let group = requests
        .into_iter()
        .map(|(bytes, is_head)| {
            let (answer, rx) = oneshot::channel();
            receivers.push(rx);
            Queued {
                bytes,
                is_head,
                max_response_bytes,
                item_timeout: long,
                answer,
            }
        })
        .collect();
    let timeouts = Timeouts {
        read: long,
        write: long,
    };
    let shared = Shared {
        shards: Vec::new(),
        depth: MAX_PIPELINE_DEPTH,
        max_delay: long,
        per_request: ServiceTime::new(),
        probed_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        open_pipes: AtomicUsize::new(0),
        max_idle: 0,
        idle_timeout: long,
        timeouts,
    };
    let (mut buf, mut out) = (BytesMut::new(), Vec::new());
    exchange_group(group, stream, &mut buf, &mut out, &shared, true).await;
    receivers
        .into_iter()
        .map(|mut rx| {
            let answer = rx.try_recv().ok()?;
            Some(answer.map_err(|failed| (failed.error.sent(), failed.nothing_received)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
