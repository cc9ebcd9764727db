//! The pingora `ProxyHttp` implementation: route lookup, the batch branch and pass-through.
//!
//! `request_filter` answers batch routes itself (see `batch.rs`) and returns `Ok(true)`;
//! every other request returns `Ok(false)` and takes pingora's normal streaming proxy path to
//! the default upstream. Metrics and the one log line per batch are recorded in `logging()`,
//! which pingora runs on success and failure alike.

mod batch;
mod body;
mod lane;
mod live;
mod passthrough;

use crate::config::Config;
use crate::dialect::{Reply, UpstreamResponse};
use crate::item::{FailureKind, Outcome, Sent};
use crate::listener::{clock_of, Phase};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use batch::{request_id, BatchSummary};
use bytes::Bytes;
use http::header::HOST;
pub use lane::{plan as lane_plan, Lane, Plan as LanePlan};
pub use live::{Live, Reconfigure, Route};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// The proxy service. Clones share everything (routes, permits, admission): one per worker.
#[derive(Clone)]
pub struct BatchGate {
    live: Arc<ArcSwap<Live>>,
    /// `server.max_in_flight` item permits, granted round-robin across clients.
    permits: Arc<crate::permits::Permits>,
    /// Whether a decoded batch may wait for permits at all.
    admission: Arc<crate::admission::Admission>,
    /// Client deadlines, for the requests whose connection clock cannot hold them (HTTP/2).
    client_limits: crate::config::ClientLimits,
    /// The public listeners, to label what HTTP/2 streams count (their connection's own
    /// clock is out of reach through pingora's HTTP/2 session).
    listeners: Arc<[std::net::SocketAddr]>,
    /// Write one log line per item (`server.item_log`).
    item_log: Arc<AtomicBool>,
    /// Write one log line per pass-through request (`server.access_log`).
    access_log: Arc<AtomicBool>,
    /// Relay plain HTTP/1.1 pass-through requests in the lane (`server.passthrough_lane`).
    passthrough_lane: Arc<AtomicBool>,
    /// A task per item only when work stealing can spread them (see `exec::Limits`).
    spawn_items: bool,
    /// Turns true shortly before the shutdown grace period ends: running batches then answer
    /// with what has finished instead of being cut off without a reply.
    stop: tokio::sync::watch::Receiver<bool>,
    /// The flights of identical items in progress, for every route that coalesces (the key
    /// names the upstream; a reload keeps them).
    coalescer: Arc<crate::coalesce::Coalescer>,
}

/// Connects a pass-through request tries before its error goes to the client.
const PASSTHROUGH_CONNECT_TRIES: usize = 3;

/// Per-request facts, filled as the request moves through pingora's phases.
pub struct RequestCtx {
    started: Instant,
    batch: Option<BatchSummary>,
    /// The routing table this request was routed with.
    live: Option<Arc<Live>>,
    /// Pass-through: the address index of the current attempt, and how many connects failed.
    passthrough_address: Option<usize>,
    /// The pass-through request's span while tracing (`traces`): its context goes upstream.
    trace_span: Option<tracing::Span>,
    passthrough_connect_failures: usize,
    /// Pass-through: the current attempt is connected, and its answer's head arrived.
    passthrough_connected: bool,
    passthrough_answered: bool,
    passthrough_tried: crate::upstream::Tried,
}

impl BatchGate {
    /// Builds the service from a validated config: one upstream client (and pool) per upstream.
    /// `stop` is the shutdown signal for running batches (see `server::ShutdownNotice`).
    pub fn new(config: &Config, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        if let Some(families) = crate::metrics::families() {
            let limit = i64::try_from(config.server.max_in_flight).unwrap_or(i64::MAX);
            families.max_in_flight.set(limit);
        }
        let admission = Arc::new(crate::admission::Admission::new(
            config.server.admission.clone(),
            config.server.max_in_flight,
        ));
        BatchGate {
            live: Arc::new(ArcSwap::from_pointee(Live::build(config, None, &admission))),
            permits: crate::permits::Permits::new(config.server.max_in_flight),
            admission,
            client_limits: config.server.client,
            listeners: config
                .server
                .listen
                .iter()
                .chain(&config.server.tls_listen)
                .copied()
                .collect(),
            item_log: Arc::new(AtomicBool::new(config.server.item_log)),
            access_log: Arc::new(AtomicBool::new(config.server.access_log)),
            passthrough_lane: Arc::new(AtomicBool::new(config.server.passthrough_lane)),
            spawn_items: config.server.work_stealing,
            stop,
            coalescer: Arc::default(),
        }
    }

    /// The pass-through lane in front of pingora for this service's HTTP/1 connections.
    pub fn lane(&self) -> Lane {
        Lane {
            live: self.live.clone(),
            access_log: self.access_log.clone(),
            enabled: self.passthrough_lane.clone(),
        }
    }

    /// The handle a reload changes this service through.
    pub fn reconfigure(&self) -> Reconfigure {
        Reconfigure {
            live: self.live.clone(),
            permits: self.permits.clone(),
            admission: self.admission.clone(),
            item_log: self.item_log.clone(),
            access_log: self.access_log.clone(),
            passthrough_lane: self.passthrough_lane.clone(),
        }
    }

    /// Counts an HTTP/2 stream cut because its client took nothing for `client_send_timeout`,
    /// under the listener its connection arrived on.
    pub(crate) fn client_send_timed_out(&self, session: &Session) {
        let listener = crate::listener::listener_of(&session.downstream_session, &self.listeners);
        if let Some(listener) = listener {
            crate::metrics::client_stream_timed_out(&listener.to_string(), "send");
        }
    }

    /// The routing table of this request: the one it was routed with, else the current one.
    fn live(&self, ctx: &mut RequestCtx) -> Arc<Live> {
        ctx.live
            .get_or_insert_with(|| self.live.load_full())
            .clone()
    }
}

#[async_trait]
impl ProxyHttp for BatchGate {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default is a response-compression module at level
    /// 0, which compresses nothing but still costs every request a context allocation and
    /// its header and body filter calls. batchgate passes bodies through as they are.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            batch: None,
            live: None,
            passthrough_address: None,
            trace_span: None,
            passthrough_connect_failures: 0,
            passthrough_connected: false,
            passthrough_answered: false,
            passthrough_tried: crate::upstream::Tried::default(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The head is in: from here the body has its own deadline, or, without a body (or
        // once upgraded to a tunnel, which has no request framing), there is none.
        let body_follows = !session.is_upgrade_req() && !session.is_body_empty();
        if let Some(clock) = clock_of(session) {
            clock.head_done(body_follows);
        }
        // An HTTP/2 write waits on the client's flow-control window, not on the socket the
        // connection's clock watches: without its own timeout, a client that grants no window
        // holds the answer, its memory and its upstream connection for ever.
        if session.downstream_session.is_http2() {
            let timeout = self.client_limits.send_timeout;
            session.downstream_session.set_write_timeout(Some(timeout));
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            if let Some(clock) = clock_of(session) {
                clock.body_done();
            }
        }
        crate::listener::body_received(body.as_ref().map_or(0, Bytes::len), end_of_stream);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // HTTP/1.1 pipelining (RFC 9112 section 9.3.2): requests sent back to back in one
        // write are answered one after the other, as nginx and Envoy do. Without this pingora
        // answers the first and closes the connection, dropping the rest.
        session.downstream_session.set_pipelining_enabled(true);
        let live = self.live(ctx);
        let header = session.req_header();
        let route = live.route_for(&header.method, header.uri.path());
        if let Some(route) = route {
            self.serve_route(session, route, ctx).await?;
            return Ok(true);
        }
        if live.passthrough.is_none() {
            let reply = Reply::json(
                404,
                Bytes::from_static(br#"{"code":"NotFound","message":"no batch route matches and no default upstream is configured"}"#),
            );
            let id = request_id(session.req_header());
            self.write_reply(session, &reply, &id).await?;
            return Ok(true);
        }
        if crate::traces::on() {
            let header = session.req_header();
            let span = tracing::info_span!(
                "passthrough",
                otel.kind = "server",
                method = %header.method,
                path = %header.uri.path(),
                status = tracing::field::Empty,
            );
            crate::traces::adopt_parent(&span, &header.headers);
            ctx.trace_span = Some(span);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let live = self.live(ctx);
        let Some(passthrough) = &live.passthrough else {
            return Error::e_explain(HTTPStatus(404), "no default upstream");
        };
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let key = passthrough
            .client
            .hash_key(target, |name| req.headers.get(name).map(|v| v.as_bytes()));
        // After a failed connect, another address (as an item's retry would).
        match passthrough.client.pick_peer(ctx.passthrough_tried, key) {
            Some((n, peer)) => {
                ctx.passthrough_address = Some(n);
                ctx.passthrough_connected = false;
                ctx.passthrough_answered = false;
                ctx.passthrough_tried = ctx.passthrough_tried.with(n);
                Ok(Box::new(peer.clone()))
            }
            None => Error::e_explain(HTTPStatus(502), "default upstream has no address"),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let trace = ctx
            .trace_span
            .as_ref()
            .map(crate::traces::headers_of)
            .unwrap_or_default();
        passthrough::prepare_request(session.req_header(), upstream_request, &trace)?;
        // An HTTP/2 body is passed on from here, on its own deadline (HTTP/1 bodies are timed
        // by their connection's clock).
        if !session.is_body_done() {
            crate::listener::body_read_started(&self.client_limits);
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        match client_ip {
            Some(ip) => upstream_request.insert_header("x-forwarded-for", ip)?,
            None => {
                upstream_request.remove_header("x-forwarded-for");
            }
        }
        let live = self.live(ctx);
        if let Some(host) = live
            .passthrough
            .as_ref()
            .and_then(|p| p.client.config.host.as_deref())
        {
            upstream_request.insert_header(HOST, host)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.passthrough_connected = true;
        let live = self.live(ctx);
        if let Some(metrics) = live.passthrough.as_ref().and_then(|p| p.metrics.as_ref()) {
            metrics.sent(reused);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let live = self.live(ctx);
        if let (Some(passthrough), Some(n)) = (&live.passthrough, ctx.passthrough_address) {
            let failed = Outcome::failed(FailureKind::Connect, Sent::Nothing);
            passthrough.client.passthrough_outcome(n, &failed);
            // Nothing was sent: another address may take it, a bounded number of times
            // (pingora's own bound, `max_retries`, is 16).
            ctx.passthrough_connect_failures += 1;
            let others = passthrough.client.config.addresses.len() > 1;
            let again = crate::upstream::may_send_again(Sent::Nothing, false);
            e.set_retry(
                again && others && ctx.passthrough_connect_failures < PASSTHROUGH_CONNECT_TRIES,
            );
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = self.live(ctx);
        if let (Some(passthrough), Some(n)) = (&live.passthrough, ctx.passthrough_address) {
            ctx.passthrough_answered = true;
            let answered = Outcome::Response(UpstreamResponse {
                status: upstream_response.status.as_u16(),
                headers: http::HeaderMap::new(),
                body: Bytes::new(),
            });
            passthrough.client.passthrough_outcome(n, &answered);
        }
        // pingora buffered the head within its own 1 MiB; the one head limit applies here
        // as on items.
        if crate::upstream::head_size(&upstream_response.headers)
            > crate::upstream::MAX_RESPONSE_HEAD_BYTES
        {
            return Error::e_explain(
                HTTPStatus(502),
                "the upstream's response head exceeds the head limit",
            );
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An HTTP/1.0 client cannot read chunked framing (RFC 9112 section 6.1): send the body
        // close-delimited and end the connection after it.
        if session.req_header().version == http::Version::HTTP_10 {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A pass-through body whose deadline passed is the client's slowness, not a malformed
        // request: 408, as nginx's client_body_timeout answers.
        let body_expired =
            clock_of(session).is_some_and(|clock| clock.expired() == Some(Phase::Body));
        // Connected, and the address failed before its answer's head: it counts against the
        // address like an item's reset or timeout (connect failures were counted already).
        let live = self.live(ctx);
        let unanswered = ctx.passthrough_connected && !ctx.passthrough_answered;
        if let (Some(passthrough), Some(n), true, ErrorSource::Upstream) = (
            &live.passthrough,
            ctx.passthrough_address,
            unanswered,
            e.esource(),
        ) {
            let kind = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailureKind::Timeout,
                _ => FailureKind::Connection,
            };
            passthrough
                .client
                .passthrough_outcome(n, &Outcome::failed(kind, Sent::Maybe));
        }
        // Otherwise pingora's own mapping: the status an error names, 502 for the upstream's
        // fault, nothing for a client that is gone, 400 for its other faults, 500 for ours.
        let code = match e.etype() {
            _ if body_expired => 408,
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            session.respond_error(code).await.unwrap_or_else(|e| {
                tracing::debug!("could not send the {code} error answer: {e}");
            });
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that left before its answer was written is not the proxy's error (nginx logs
    /// "client prematurely closed connection" at info): pingora's ERROR line for it is
    /// dropped, the request is counted with `status_class="error"` and logged at debug.
    fn suppress_error_log(&self, session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        let downstream = e.esource() == &ErrorSource::Downstream;
        if downstream && e.etype() == &ErrorType::WriteTimedout {
            self.client_send_timed_out(session);
            tracing::debug!("pass-through client took nothing for client_send_timeout: {e}");
            return true;
        }
        let client_gone = downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if client_gone {
            tracing::debug!("pass-through client left before its answer: {e}");
        }
        client_gone
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        // The answer is out; the connection now waits for its next request (if it is kept).
        if let Some(clock) = clock_of(session) {
            clock.request_done();
        }
        let elapsed = ctx.started.elapsed();
        match &ctx.batch {
            Some(batch) => batch.record(elapsed),
            None => {
                let live = self.live(ctx);
                let status = session.response_written().map(|r| r.status.as_u16());
                if let Some(metrics) = live.passthrough.as_ref().and_then(|p| p.metrics.as_ref()) {
                    metrics.request(status, elapsed);
                }
                if let Some(span) = ctx.trace_span.take() {
                    span.record("status", status.unwrap_or(0));
                }
                if self.access_log.load(std::sync::atomic::Ordering::Relaxed) {
                    let upstream = live
                        .passthrough
                        .as_ref()
                        .zip(ctx.passthrough_address)
                        .and_then(|(passthrough, n)| {
                            passthrough.client.config.addresses.get(n).copied()
                        });
                    access_line(session, status, upstream, elapsed);
                }
            }
        }
    }
}

/// The pass-through access log line (`server.access_log`) of a request pingora served.
fn access_line(
    session: &Session,
    status: Option<u16>,
    upstream: Option<std::net::SocketAddr>,
    elapsed: std::time::Duration,
) {
    let req = session.req_header();
    lane::log_access(lane::Access {
        method: req.method.as_str(),
        path: req.uri.path(),
        status,
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        upstream,
        request_id: req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        elapsed,
    });
}
