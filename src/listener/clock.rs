//! One client connection's read deadlines: which phase it is in (waiting for a request,
//! receiving a head or a body, being answered) and when that phase must end. Shared by the
//! socket wrapper (`stream.rs`), which enforces it, and the proxy's filters, which move it
//! from phase to phase.

use super::h2_frames::Pending;
use crate::config::ClientLimits;
use crate::metrics::ClientMetrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

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

/// When a body that began at `started` and has `bytes` so far must be complete: the body
/// timeout plus one whole second per `client_body_min_rate` bytes (as Apache's
/// mod_reqtimeout); saturating, so no body size can overflow a clock.
pub fn body_deadline(limits: &ClientLimits, started: Instant, bytes: u64) -> Option<Instant> {
    let earned = std::num::NonZeroU64::new(limits.body_min_rate).map_or(Duration::ZERO, |rate| {
        Duration::from_secs(bytes / rate.get())
    });
    started.checked_add(limits.body_timeout.saturating_add(earned))
}

/// When the next read of a body that began at `started`, with `bytes` so far, must deliver
/// (asked at `now`, just after the last read): within the body timeout of that read (nginx's
/// `client_body_timeout`), and no later than the whole body's `body_deadline`. Bodies read
/// outside a connection's clock (HTTP/2 streams) take their deadline from here.
pub fn next_read_deadline(
    limits: &ClientLimits,
    started: Instant,
    bytes: u64,
    now: Instant,
) -> Option<Instant> {
    let whole = body_deadline(limits, started, bytes)?;
    Some(
        now.checked_add(limits.body_timeout)
            .map_or(whole, |next| whole.min(next)),
    )
}

/// One connection's read deadlines, shared by its socket wrapper and the proxy's filters
/// (both run on the connection's task, so the lock is never contended).
#[derive(Debug)]
pub struct ClientClock {
    pub(super) limits: ClientLimits,
    state: Mutex<ClockState>,
    pub(super) metrics: Option<ClientMetrics>,
    /// The connection speaks HTTP/2: its frames set the deadlines (`h2_frames.rs`). Outside
    /// the lock: every read asks, and it is set once.
    multiplexed: AtomicBool,
    /// Set when an HTTP/2 client resets too many streams right after opening them: its
    /// connection's loop (`h2_conn.rs`) then sends GOAWAY. Set while that loop polls the
    /// connection (h2 reads the socket only there), so the loop looks after each poll.
    calm: Arc<AtomicBool>,
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
    pub(super) fn new(limits: ClientLimits, metrics: Option<ClientMetrics>) -> Self {
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
            multiplexed: AtomicBool::new(false),
            calm: Arc::new(AtomicBool::new(false)),
            metrics,
        }
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

    /// The connection speaks HTTP/2: its requests are streams that share it, so no one
    /// request's phase is the connection's. From here its frames set the read deadline
    /// (`frames_pending`): the preface and a half-received frame or header block have the
    /// header timeout (a DATA frame the body timeout); its loop's `h2_idle_timeout` (set to
    /// `client_idle_timeout`) closes it when no stream is open, and the send timeout holds.
    pub fn multiplexed(&self) {
        let mut state = self.lock();
        // Until the client's preface and first frames are in: a TLS client that picked h2
        // and then sends nothing is cut like one that sends no request head.
        state.phase = Phase::Head;
        state.deadline = Some(Instant::now() + self.limits.header_timeout);
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// An HTTP/2 connection's deadline after its latest frames: none while nothing is half
    /// received.
    pub(super) fn frames_pending(&self, pending: Pending) {
        let mut state = self.lock();
        let (phase, deadline) = match pending {
            Pending::Nothing => (Phase::Answering, None),
            Pending::Head(since) => (Phase::Head, Some(since + self.limits.header_timeout)),
            Pending::Body(since) => (Phase::Body, Some(since + self.limits.body_timeout)),
        };
        state.phase = phase;
        state.deadline = deadline;
    }

    /// The HTTP/2 client reset too many streams right after opening them: counted, and its
    /// connection told to send GOAWAY and close.
    pub(super) fn premature_resets(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.h2_premature_resets.inc();
        }
        self.calm.store(true, Ordering::Relaxed);
    }

    /// Raised once the client has reset too many streams right after opening them.
    pub(super) fn calm_requested(&self) -> Arc<AtomicBool> {
        self.calm.clone()
    }

    /// The TLS handshake failed (counted; the connection is dropped).
    pub fn handshake_failed(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.handshake_failed.inc();
        }
    }

    /// The TLS handshake did not finish within the header timeout.
    pub fn handshake_timed_out(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.handshake_timed_out.inc();
        }
    }

    /// The phase whose deadline passed, if one did.
    pub fn expired(&self) -> Option<Phase> {
        self.lock().expired
    }

    /// `n` bytes were read: a request starts, a head grows (false once it is over the head
    /// limit), or a body moves its deadline on.
    pub(super) fn on_read(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        // HTTP/2 frames set their own deadlines (`frames_pending`); no head limit applies
        // to a connection's stream of frames (pingora bounds each header block).
        if self.is_multiplexed() {
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
                if let Some(deadline) =
                    body_deadline(&self.limits, state.body_started, state.body_bytes)
                {
                    state.deadline = Some(deadline);
                }
            }
            Phase::Answering => {}
        }
        !(state.phase == Phase::Head && state.head_bytes > self.limits.max_head_bytes)
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    pub(super) fn expire(&self) {
        let phase = {
            let mut state = self.lock();
            state.expired = Some(state.phase);
            state.deadline = None;
            state.phase
        };
        if let Some(metrics) = &self.metrics {
            metrics.timed_out(phase as usize);
        }
    }
}
