//! The batch branch of the proxy: read the body with a cap, decode with the route's dialect,
//! run the executor while watching for the client leaving, encode, write one reply.
//!
//! Whole-batch checks that every dialect shares (method, media type, size, `Expect`) happen
//! in `body.rs`, before the dialect sees a byte; what they look like on the wire is still the
//! dialect's `reject`.

mod stream;

use super::body::{read_batch, refusal};
use super::{BatchGate, RequestCtx, Route};
use crate::admission::Ticket;
use crate::cache::{ItemCache, Lookup};
use crate::coalesce::{Keys, Scope, Source, SOURCE_HEADER};
use crate::config::rate_limit::RateLimitConfig;
use crate::config::{ClientKey, Hedge};
use crate::dialect::Order;
use crate::dialect::{
    with_dialect, BatchRequest, Dialect, ItemClass, Outcome, Plan, Planned, Rejection,
    RejectionKind, Reply, SubRequest,
};
use crate::exec::{self, Limits, Observer};
use crate::item::Upstream;
use crate::metrics::{BatchResult, InFlight, RouteMetrics};
use crate::permits::ClientId;
use crate::rate_limit::Charge;
use crate::upstream::{BatchHeaders, Call, UpstreamClient};
use crate::upstream_batch::{Batcher, Caller};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Header carrying the batch's request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Longest client-supplied request id we accept; longer ones are replaced.
const MAX_REQUEST_ID_BYTES: usize = 200;

/// What the batch log line and the batch metrics report.
pub struct BatchSummary {
    route: String,
    request_id: String,
    /// The client's socket address (`None`: not an inet socket).
    client: Option<std::net::SocketAddr>,
    items: usize,
    failures: usize,
    pub(super) status: u16,
    result: BatchResult,
    rejection: Option<RejectionKind>,
    /// The first failed item's detail (the connector's words: addresses, OS errors), which
    /// replies never carry.
    detail: Option<String>,
    metrics: Option<Arc<RouteMetrics>>,
    /// One log line per item (`server.item_log`).
    item_log: bool,
    /// The format the reply was streamed in (`None`: one buffered body).
    pub(super) streamed: Option<crate::config::StreamFormat>,
    /// Items that used earlier items' answers, and those of them whose references could not
    /// be resolved.
    referring: usize,
    unresolved: usize,
    /// Counts the batch in `batchgate_batches_in_flight` until the request is done.
    _in_flight: crate::metrics::BatchInFlight,
}

/// One item as it is accounted, once, after the reply is built: its final class (after the
/// reply budget, and an answer the dialect could not use counted as `upstream_error`), its
/// status, how long it ran (`None`: never started or not finished in time) and its failure's
/// detail for the item log.
pub(super) struct Settled {
    class: ItemClass,
    status: u16,
    elapsed: Option<Duration>,
    detail: Option<String>,
}

/// The batch request as the dialect decodes it.
fn decode<D: Dialect>(
    req: &RequestHeader,
    dialect: &D,
    body: &bytes::Bytes,
) -> std::result::Result<Plan<D::Meta>, Rejection> {
    let authority = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    dialect.decode(&BatchRequest {
        method: &req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &req.headers,
        body,
        authority,
    })
}

impl BatchSummary {
    /// A batch that has just arrived: refused until it turns out otherwise.
    fn new(
        route: &Route,
        request_id: &str,
        client: Option<std::net::SocketAddr>,
        item_log: bool,
    ) -> Self {
        BatchSummary {
            _in_flight: crate::metrics::BatchInFlight::new(),
            client,
            item_log,
            streamed: None,
            referring: 0,
            unresolved: 0,
            route: route.config.name.clone(),
            request_id: request_id.to_string(),
            items: 0,
            failures: 0,
            status: 0,
            result: BatchResult::Rejected,
            rejection: None,
            detail: None,
            metrics: route.metrics.clone(),
        }
    }

    pub(super) fn item_log(&self) -> bool {
        self.item_log
    }

    /// The client left or stalled before its body arrived: not a refusal of its batch.
    fn client_left(&mut self, e: &Error) {
        self.result = BatchResult::Cancelled;
        self.status = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => 499,
        };
    }

    /// The client left while the items ran. Refused items keep their class; every item that
    /// was to be sent counts as cancelled (whether or not it had finished, nobody received it).
    pub(super) fn cancelled(&mut self, refused: usize) {
        self.result = BatchResult::Cancelled;
        self.status = 499;
        if let Some(metrics) = &self.metrics {
            (0..refused).for_each(|_| metrics.item_class(ItemClass::Rejected));
            (refused..self.items).for_each(|_| metrics.item_class(ItemClass::Cancelled));
        }
    }

    /// Every item has its outcome and the reply is encoded: the one place items are
    /// accounted (class, duration, item log line), and the batch's result named. An item
    /// whose upstream answer the dialect could not use (`Reply::unusable`) is an
    /// `upstream_error` and a failure, whatever status the upstream gave.
    pub(super) fn completed(
        &mut self,
        mut items: Vec<Settled>,
        unusable: &[usize],
        fields_missing: usize,
    ) -> Vec<ItemClass> {
        for &index in unusable {
            if let Some(item) = items.get_mut(index) {
                if !item.class.is_failure() {
                    item.class = ItemClass::UpstreamError;
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            for item in &items {
                metrics.item_class(item.class);
                if let Some(elapsed) = item.elapsed {
                    metrics.item_duration(elapsed);
                }
            }
            metrics.fields_missing(fields_missing);
        }
        if self.item_log {
            for (index, item) in items.iter().enumerate() {
                tracing::info!(
                    target: "batchgate::item",
                    request_id = %self.request_id,
                    index,
                    batch_size = items.len(),
                    status = item.status,
                    outcome = item.class.as_str(),
                    detail = item.detail.as_deref(),
                    duration_ms = item.elapsed.map(|e| e.as_secs_f64() * 1000.0),
                    "item"
                );
            }
        }
        self.failures = items.iter().filter(|item| item.class.is_failure()).count();
        self.result = match self.failures {
            0 => BatchResult::Ok,
            n if n == self.items => BatchResult::Failed,
            _ => BatchResult::Partial,
        };
        items.into_iter().map(|item| item.class).collect()
    }

    /// What the log line and the metrics take from the final outcomes: the first failed
    /// item's detail, and how many items had references that could not be resolved.
    pub(super) fn outcomes(&mut self, outcomes: &[Outcome]) {
        self.unresolved = outcomes
            .iter()
            .filter(|o| {
                o.failure()
                    .is_some_and(|f| f.kind == crate::item::FailureKind::ReferenceUnresolved)
            })
            .count();
        self.detail = outcomes.iter().enumerate().find_map(|(index, outcome)| {
            let failure = outcome.failure()?;
            let detail = failure.detail.as_deref()?;
            Some(format!(
                "item {index}: {}: {detail}",
                failure.http_error().code
            ))
        });
    }

    /// Records the batch's metrics and writes its one log line.
    pub fn record(&self, elapsed: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.batch(self.result, self.items, elapsed);
            metrics.references(self.referring, self.unresolved);
            if let Some(kind) = self.rejection {
                metrics.rejection(kind);
            }
        }
        tracing::info!(
            target: "batchgate::batch",
            route = %self.route,
            request_id = %self.request_id,
            client = self.client.map(tracing::field::display),
            items = self.items,
            failures = self.failures,
            status = self.status,
            result = self.result.as_str(),
            streamed = self.streamed.map(crate::config::StreamFormat::name),
            referring = self.referring,
            unresolved = self.unresolved,
            reason = self.rejection.map(RejectionKind::as_str),
            detail = self.detail.as_deref(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "batch"
        );
    }
}

impl BatchGate {
    pub(super) async fn serve_route(
        &self,
        session: &mut Session,
        route: Arc<Route>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        with_dialect!(&route.dialect, d => self.serve_batch(session, &route, d, ctx).await)
    }

    async fn serve_batch<D: Dialect>(
        &self,
        session: &mut Session,
        route: &Route,
        dialect: &D,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let request_id = request_id(session.req_header());
        let limiter = (route.config.rate_limit.as_ref()).map(|_| self.live(ctx).limiter.clone());
        let item_log = self.item_log.load(std::sync::atomic::Ordering::Relaxed);
        let summary = ctx.batch.insert(BatchSummary::new(
            route,
            &request_id,
            session.client_addr().and_then(|a| a.as_inet()).copied(),
            item_log,
        ));
        let client = client_id(session, &route.client_key);
        let admission = |declared: Option<usize>| {
            self.admission
                .refuse_early(&client, declared.unwrap_or(0))
                .map(refusal)
        };
        let mut held = self.admission.body_bytes();
        let limits = &self.client_limits;
        let read = read_batch(session, route, dialect, limits, admission, &mut held)
            .await
            .inspect_err(|e| summary.client_left(e))?;
        let decoded = read.and_then(|body| {
            let plan = decode(session.req_header(), dialect, &body)?;
            let refused = plan.items.iter().filter(|item| item.is_err()).count();
            let to_send = plan.items.len() - refused;
            // The admission holds the body's bytes from here (or refuses it).
            drop(held);
            let ticket = self
                .admission
                .admit(client, to_send, body.len())
                .map_err(refusal)?;
            Ok((plan, refused, ticket))
        });
        let (plan, refused, ticket) = match decoded {
            Ok(decoded) => decoded,
            Err(rejection) => {
                tracing::debug!(route = %route.config.name, reason = rejection.kind.as_str(), "batch rejected: {}", rejection.message);
                summary.rejection = Some(rejection.kind);
                let reply = dialect
                    .reject(&rejection)
                    .with_retry_after(rejection.retry_after);
                return finish(self, session, summary, &reply, &request_id).await;
            }
        };
        let mut extra = Vec::new();
        if let (Some(limit), Some(limiter)) = (&route.config.rate_limit, &limiter) {
            let cost = rate_cost(limit, &plan.items, route.dialect.item_sharing());
            let charge = limiter
                .charge(&route.config.name, limit, ticket.client(), cost)
                .await;
            match rate_limited(charge, limit, cost) {
                Ok(headers) => extra = headers,
                Err((rejection, headers)) => {
                    tracing::debug!(route = %route.config.name, reason = rejection.kind.as_str(), "batch rejected: {}", rejection.message);
                    if let (Some(metrics), RejectionKind::RateLimited) =
                        (&route.metrics, rejection.kind)
                    {
                        metrics.rate_limited(cost);
                    }
                    summary.rejection = Some(rejection.kind);
                    let mut reply = dialect
                        .reject(&rejection)
                        .with_retry_after(rejection.retry_after);
                    reply.headers.extend(headers);
                    return finish(self, session, summary, &reply, &request_id).await;
                }
            }
        }
        summary.items = plan.items.len();
        summary.referring = plan
            .items
            .iter()
            .filter(|item| matches!(item, Ok(Planned::Deferred(_))))
            .count();
        let headers = batch_headers(session, route, &request_id);
        let span = batch_span(
            route,
            &request_id,
            plan.items.len(),
            &session.req_header().headers,
        );
        let observer = Arc::new(ItemResources {
            metrics: route.metrics.clone(),
            ticket,
        });
        let stream = stream::negotiate(&route.config.stream, session.req_header());
        let bounds = dialect.progressive_frame(&plan.meta);
        let progressive = crate::config::StreamFormat::Progressive;
        let stream = stream.filter(|f| *f != progressive || bounds.is_some());
        if let Some(format) = stream {
            let batch = stream::Streamed {
                format,
                bounds: bounds.filter(|_| format == progressive),
                headers,
                observer,
                refused,
                request_id: &request_id,
                span,
                extra,
            };
            return self
                .serve_streamed(session, route, dialect, plan, batch, summary)
                .await;
        }
        let Some(ran) = self
            .run_batch(
                session,
                route,
                (plan.items, plan.order, plan.after),
                headers,
                &observer,
                span,
            )
            .await
        else {
            summary.cancelled(refused);
            return Ok(());
        };
        summary.outcomes(&ran.outcomes);
        let settled = settled_items(&ran, item_log);
        let mut reply = dialect.encode(plan.meta, ran.outcomes);
        reply.headers.extend(extra);
        summary.completed(settled, &reply.unusable, reply.fields_missing);
        finish(self, session, summary, &reply, &request_id).await
    }

    /// Runs the items; `None` when the client went away (queued items then never start; sent
    /// ones run to their end with their permits, `exec`).
    async fn run_batch(
        &self,
        session: &mut Session,
        route: &Route,
        (items, order, after): (
            Vec<std::result::Result<Planned, Outcome>>,
            Order,
            Vec<Vec<usize>>,
        ),
        headers: BatchHeaders,
        observer: &Arc<ItemResources>,
        span: tracing::Span,
    ) -> Option<exec::Ran> {
        let client = observer.ticket.client();
        let (exec_limits, upstream, _present) = self.prepare(route, order, headers, client, None);
        let share = exec::Share {
            permits: &self.permits,
            client: observer.ticket.client(),
        };
        let settled = &mut |_: usize, _: &Outcome| {};
        let run = exec::run(
            &exec_limits,
            share,
            items,
            &after,
            &upstream,
            observer,
            settled,
        );
        watching_client(session, run.instrument(span)).await
    }

    /// The executor's limits and upstream for one batch of `route` (`streamed`: its answers
    /// leave as they settle).
    pub(super) fn prepare(
        &self,
        route: &Route,
        order: Order,
        headers: BatchHeaders,
        client: &ClientId,
        streamed: Option<exec::Unwritten>,
    ) -> (Limits, Arc<BatchUpstream>, Present) {
        let mut exec_limits = self.exec_limits(route, order);
        exec_limits.streamed = streamed;
        // What the upstream sees of the caller besides each item: the forwarded headers.
        let forwarded: Vec<(HeaderName, HeaderValue)> = headers
            .common
            .iter()
            .filter(|(name, _)| *name != REQUEST_ID && *name != X_FORWARDED_FOR)
            .cloned()
            .collect();
        let sharing = route.dialect.item_sharing();
        let keys = |config: &Arc<crate::config::coalesce::CoalesceConfig>| {
            Keys::new(
                config.clone(),
                sharing,
                &route.upstream.config.name,
                &headers.host,
                &forwarded,
                client,
                headers.max_response_bytes,
            )
        };
        let coalesce = route.config.coalesce.as_ref().map(|config| Scope {
            coalescer: self.coalescer.clone(),
            keys: keys(config),
        });
        let cache = route
            .cache
            .as_ref()
            .zip(route.config.cache.as_ref())
            .map(|(cache, config)| CacheScope {
                cache: cache.clone(),
                config: config.clone(),
                keys: keys(&config.key),
                target: format!(
                    "{}\0{}\0",
                    route.upstream.config.name,
                    headers.host.to_str().unwrap_or("")
                ),
                forwarded: forwarded.clone(),
            });
        let (present, watching) = tokio::sync::watch::channel(());
        let gather = route.batcher.as_ref().map(|batcher| Gather {
            batcher: batcher.clone(),
            key: gather_key(&route.upstream.config.name, &headers.host, &forwarded),
            present: watching,
        });
        let upstream = Arc::new(BatchUpstream {
            coalesce,
            cache,
            gather,
            sharing,
            metrics: route.metrics.clone(),
            client: route.upstream.clone(),
            headers,
            in_flight: route.metrics.as_ref().map(|m| m.in_flight.clone()),
            repeatable_methods: route.config.idempotent_methods.clone(),
            hedge_after: route.config.hedge_after,
            deadline: exec_limits.deadline,
        });
        (exec_limits, upstream, Present(present))
    }

    /// The executor's limits for one batch of `route`: its deadline starts now. A
    /// sequential batch runs one item at a time.
    fn exec_limits(&self, route: &Route, order: Order) -> Limits {
        let limits = &route.config.limits;
        let (concurrency, stop_on_failure) = match order {
            Order::Concurrent => (limits.concurrency, false),
            Order::Sequential { stop_on_failure } => (std::num::NonZeroUsize::MIN, stop_on_failure),
        };
        Limits {
            concurrency,
            stop_on_failure,
            item_timeout: limits.item_timeout,
            deadline: tokio::time::Instant::now() + limits.batch_timeout,
            max_reply_bytes: limits.max_reply_bytes,
            reply_cost: route.reply_cost,
            stop: Some(self.stop.clone()),
            spawn_items: self.spawn_items,
            streamed: None,
        }
    }
}

/// One span per batch, a child of the client's trace context when it sent one (`traces`);
/// the executor's item spans are its children.
pub(super) fn batch_span(
    route: &Route,
    request_id: &str,
    items: usize,
    client_headers: &http::HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "batch",
        route = %route.config.name,
        request_id = %request_id,
        items,
        otel.kind = "server",
    );
    crate::traces::adopt_parent(&span, client_headers);
    span
}

/// Each item as it is accounted (`BatchSummary::completed`), from what the run returned.
pub(super) fn settled_items(ran: &exec::Ran, item_log: bool) -> Vec<Settled> {
    ran.outcomes
        .iter()
        .zip(&ran.elapsed)
        .map(|(outcome, elapsed)| Settled {
            class: outcome.class(),
            status: outcome.status(),
            elapsed: *elapsed,
            detail: item_log
                .then(|| outcome.failure().and_then(|f| f.detail.clone()))
                .flatten(),
        })
        .collect()
}

/// Awaits `run` while watching the client: `None` as soon as it closes or resets (the run is
/// then dropped: its queued items never start, its sent ones finish in the background).
/// Pipelined bytes are not an error (pipelining is on): they stay pending.
async fn watching_client(
    session: &mut Session,
    run: impl std::future::Future<Output = exec::Ran>,
) -> Option<exec::Ran> {
    tokio::pin!(run);
    let mut watch_client = true;
    loop {
        tokio::select! {
            outcomes = &mut run => return Some(outcomes),
            idle = session.read_body_or_idle(true), if watch_client => match idle {
                Err(_) => return None,
                Ok(_) => watch_client = false,
            },
        }
    }
}

/// What a batch's items hold while they run: the admission's count of them (released as
/// each one's work ends, also in the background after the reply) and the bytes of the answers
/// kept for the reply.
pub(super) struct ItemResources {
    metrics: Option<Arc<RouteMetrics>>,
    pub(super) ticket: Ticket,
}

impl Observer for ItemResources {
    fn started(&self, waited: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.permit_wait(waited);
        }
    }

    fn ended(&self) {
        self.ticket.item_ended();
    }

    fn kept(&self, bytes: usize) {
        self.ticket.hold(bytes);
    }
}

async fn finish(
    gate: &BatchGate,
    session: &mut Session,
    summary: &mut BatchSummary,
    reply: &Reply,
    request_id: &str,
) -> Result<()> {
    summary.status = reply.status;
    gate.write_reply(session, reply, request_id).await
}

/// Headers every child of this batch carries.
fn batch_headers(session: &Session, route: &Route, request_id: &str) -> BatchHeaders {
    let req = session.req_header();
    let mut common = Vec::with_capacity(route.config.forward_headers.len() + 2);
    for name in &route.config.forward_headers {
        for value in req.headers.get_all(name) {
            common.push((name.clone(), value.clone()));
        }
    }
    if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
        if let Ok(value) = HeaderValue::from_str(&addr.ip().to_string()) {
            common.push((X_FORWARDED_FOR, value));
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        common.push((REQUEST_ID, value));
    }
    let host = route
        .upstream
        .config
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
        .or_else(|| req.headers.get(HOST).cloned())
        .unwrap_or_else(|| HeaderValue::from_static("localhost"));
    BatchHeaders {
        host,
        common,
        max_response_bytes: route.config.limits.max_item_response_bytes,
        item_timeout: route.config.limits.item_timeout,
    }
}

/// The client's `X-Request-Id` when it is sane, otherwise a fresh random one.
pub fn request_id(req: &RequestHeader) -> String {
    request_id_of(req.headers.get(REQUEST_ID).map(|v| v.as_bytes()))
}

/// The request id for a client's `X-Request-Id` value (`request_id`'s rule).
pub fn request_id_of(client: Option<&[u8]>) -> String {
    client
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID_BYTES && v.iter().all(u8::is_ascii_graphic)
        })
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// Largest piece of a reply body handed to an HTTP/2 stream at once: its write timeout then
/// measures a stall (no window granted), not the time a large reply takes.
pub(super) const H2_REPLY_PIECE: usize = 64 * 1024;

impl BatchGate {
    /// Writes a complete reply with `Content-Length` (keep-alive survives) and `X-Request-Id`.
    pub(crate) async fn write_reply(
        &self,
        session: &mut Session,
        reply: &Reply,
        request_id: &str,
    ) -> Result<()> {
        let h2 = session.downstream_session.is_http2();
        let mut header = ResponseHeader::build(reply.status, Some(4 + reply.headers.len()))?;
        if let Some(content_type) = &reply.content_type {
            header.insert_header(CONTENT_TYPE, content_type)?;
        }
        if reply.status != 204 {
            header.insert_header(CONTENT_LENGTH, reply.body.len())?;
        }
        header.insert_header(REQUEST_ID, request_id)?;
        for (name, value) in &reply.headers {
            header.insert_header(name, value)?;
        }
        let has_body = !reply.body.is_empty();
        let mut written = session
            .write_response_header(Box::new(header), !has_body)
            .await;
        let piece = if h2 {
            H2_REPLY_PIECE
        } else {
            reply.body.len().max(1)
        };
        let mut at = 0;
        while has_body && written.is_ok() && at < reply.body.len() {
            let end = (at + piece).min(reply.body.len());
            let last = end == reply.body.len();
            written = session
                .write_response_body(Some(reply.body.slice(at..end)), last)
                .await;
            at = end;
        }
        if let Err(e) = written {
            // The client went away (or stopped reading) before its reply was out: nothing is
            // wrong with the proxy, so no error for pingora to log as one; the connection, with
            // part of a reply on it, is not kept.
            session.set_keepalive(None);
            if h2 && e.etype() == &ErrorType::WriteTimedout {
                // The stream goes now, with the reply it holds; its connection and the
                // client's other streams stay.
                session
                    .downstream_session
                    .shutdown_with_reason(h2::Reason::CANCEL);
                self.client_send_timed_out(session);
            }
            tracing::debug!(
                request_id,
                "the reply could not be written to the client: {e}"
            );
        }
        Ok(())
    }
}

/// Longest header value (or forwarded address) that tells clients apart; longer ones are cut.
const MAX_CLIENT_KEY_BYTES: usize = 256;

/// Who a batch counts against (per-client cap, turns at the permits): the peer address, the
/// last `X-Forwarded-For` entry, or `NAME=value` of a header, by the route's key. The header
/// form keeps its name, so a header value can never pass for an address (and borrow an
/// address's share). A request without the header counts by its peer address.
fn client_id(session: &Session, key: &ClientKey) -> ClientId {
    let headers = &session.req_header().headers;
    let capped = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes.get(..MAX_CLIENT_KEY_BYTES).unwrap_or(bytes)).into_owned()
    };
    match key {
        ClientKey::Header(name) => {
            if let Some(value) = headers.get(name) {
                return ClientId::from(format!("{name}={}", capped(value.as_bytes())));
            }
        }
        ClientKey::Forwarded => {
            let last = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .next_back()
                .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
                .map(|hop| hop.trim_ascii())
                .filter(|hop| !hop.is_empty());
            if let Some(hop) = last {
                return ClientId::from(capped(hop));
            }
        }
        ClientKey::Ip => {}
    }
    session.client_addr().and_then(|a| a.as_inet()).map_or_else(
        || ClientId::from(""),
        |addr| ClientId::from(addr.ip().to_string()),
    )
}

/// What a batch costs under its route's rate limit: each item to be sent by its method's
/// weight (JSON-RPC method on jsonrpc routes, HTTP method elsewhere; 1 unless named). Items
/// the dialect refused are not charged; an item waiting on another's answer costs 1.
fn rate_cost(
    limit: &RateLimitConfig,
    items: &[std::result::Result<Planned, Outcome>],
    sharing: Option<crate::item::ItemSharing>,
) -> u64 {
    let weight = |request: &SubRequest| {
        let method = match sharing {
            Some(sharing) => (sharing.method)(request),
            None => Some(request.method.as_str().to_string()),
        };
        method
            .and_then(|m| limit.weights.get(&m).copied())
            .unwrap_or(1)
    };
    items
        .iter()
        .filter_map(|item| item.as_ref().ok())
        .map(|planned| planned.ready().map_or(1, weight))
        .fold(0u64, u64::saturating_add)
}

type Headers = Vec<(HeaderName, HeaderValue)>;

/// The headers a charged batch's reply carries, or the rejection (and its headers) when the
/// rate limit refuses it; the one place a `Charge` becomes what the client sees.
fn rate_limited(
    charge: Charge,
    limit: &RateLimitConfig,
    cost: u64,
) -> std::result::Result<Headers, (Rejection, Headers)> {
    let refused = |kind, code, message: String, retry_after| {
        let mut rejection = Rejection::new(kind, code, message);
        rejection.retry_after = retry_after;
        rejection
    };
    match charge {
        Charge::Allowed(verdict) => Ok(verdict.map_or_else(Vec::new, |v| {
            crate::rate_limit::headers(limit, &v).to_vec()
        })),
        Charge::Limited(verdict) => Err((
            refused(
                RejectionKind::RateLimited,
                "TooManyRequests.RateLimit",
                format!(
                    "this client is over the route's rate limit ({} items per second, {} at once); this batch costs {cost}",
                    limit.items_per_second, limit.burst
                ),
                Some(verdict.retry_after),
            ),
            crate::rate_limit::headers(limit, &verdict).to_vec(),
        )),
        Charge::TooLarge { cost, burst } => Err((
            refused(
                RejectionKind::RateLimited,
                "TooManyRequests.RateLimitBurst",
                format!("this batch costs {cost} items; the route's rate limit lets a client send at most {burst} at once: split it"),
                None,
            ),
            Vec::new(),
        )),
        Charge::StoreUnavailable => Err((
            refused(
                RejectionKind::RateLimitUnavailable,
                "ServiceUnavailable.RateLimit",
                "the rate limit cannot be checked right now; retry later".to_string(),
                Some(Duration::from_secs(1)),
            ),
            Vec::new(),
        )),
    }
}

/// One batch's view of its route's upstream client: what the executor sends items through
/// (the client knows no batch).
pub struct BatchUpstream {
    pub client: Arc<UpstreamClient>,
    /// Identical items in flight are sent once (`[routes.coalesce]`).
    pub coalesce: Option<Scope>,
    /// Fresh answers are served from memory (`[routes.cache]`).
    pub cache: Option<CacheScope>,
    /// Calls are gathered into upstream batches (`[routes.upstream_batching]`).
    pub gather: Option<Gather>,
    /// How another item's answer is made this item's (the route's dialect's rule).
    pub sharing: Option<crate::item::ItemSharing>,
    pub metrics: Option<Arc<RouteMetrics>>,
    pub headers: BatchHeaders,
    /// The upstream's in-flight gauge, raised while an item is being sent.
    pub in_flight: Option<IntGauge>,
    /// The route's `idempotent_methods`.
    pub repeatable_methods: Arc<[Method]>,
    pub hedge_after: Option<Hedge>,
    pub deadline: Instant,
}

impl Upstream for BatchUpstream {
    async fn send(&self, request: SubRequest, until: Instant) -> Outcome {
        if self.coalesce.is_none() && self.cache.is_none() {
            return self.send_one(&request, until).await;
        }
        // Boxed, as every path most items do not take: an item's future is copied a few
        // times on its way into the executor, at its full size (docs/PERFORMANCE.md).
        Box::pin(self.send_shared(request, until)).await
    }
}

impl BatchUpstream {
    /// `send` on a route that coalesces or caches.
    async fn send_shared(&self, request: SubRequest, until: Instant) -> Outcome {
        let cache = self.cache.as_ref().filter(|c| c.keys.applies(&request));
        let cache_key = cache.map(|c| c.keys.key(&request));
        let mut store = None;
        let mut hit = None;
        if let (Some(cache), Some(key)) = (cache, cache_key) {
            if let Some(metrics) = &self.metrics {
                metrics.cache_bytes(cache.cache.bytes());
            }
            match cache.cache.lookup(&key, &request, &cache.forwarded) {
                Lookup::Hit(outcome) => {
                    self.count_cache(true);
                    hit = Some(outcome);
                }
                Lookup::Miss => {
                    self.count_cache(false);
                    store = Some(key);
                }
                Lookup::Bypass => {}
            }
        }
        let coalesce = self.coalesce.as_ref().filter(|s| s.keys.applies(&request));
        let (outcome, source) = match (hit, coalesce) {
            (Some(outcome), _) => (outcome, Source::Cache),
            (None, Some(scope)) => {
                // Keyed alike (the usual case): the cache's key is this one too.
                let key = match (cache, cache_key) {
                    (Some(cache), Some(key)) if cache.keys.same_as(&scope.keys) => key,
                    _ => scope.keys.key(&request),
                };
                // The flight outlives this item's batch: a gathered call inside it must not
                // leave with this batch's client, only when every waiter has.
                let send = || self.send_detached(&request, until, Presence::Flight);
                let across_callers = scope.keys.config.public;
                scope.coalescer.send(key, across_callers, until, send).await
            }
            (None, None) => (self.send_one(&request, until).await, Source::Sent),
        };
        // A follower that gave up was answered by nobody.
        let answered = matches!(outcome, Outcome::Response(_));
        if source == Source::Coalesced && answered {
            if let Some(metrics) = &self.metrics {
                metrics.coalesced();
            }
        }
        if let Some(cache) = &self.cache {
            if let (Some(key), Source::Sent) = (store, source) {
                let target = cache.target(&request);
                let ttl = cache.ttl_for(&request);
                if cache.storable(&outcome) {
                    cache
                        .cache
                        .store(key, &target, &request, &cache.forwarded, &outcome, ttl);
                }
                if let Some(metrics) = &self.metrics {
                    metrics.cache_bytes(cache.cache.bytes());
                }
            }
            // RFC 9111 section 4.4: a successful unsafe request drops what is kept for it. Not
            // where every call is a POST to one path (JSON-RPC): there, freshness is the
            // method's ttl alone.
            let succeeded = matches!(&outcome, Outcome::Response(r) if r.status < 400);
            if !request.method.is_safe() && succeeded && self.sharing.is_none() {
                cache.cache.invalidate(&cache.target(&request));
            }
        }
        let outcome = match (source, self.sharing) {
            // Another item's answer, made this item's own (its JSON-RPC id).
            (Source::Coalesced | Source::Cache, Some(sharing)) => {
                (sharing.answer_for)(&request, outcome)
            }
            _ => outcome,
        };
        marked(outcome, source)
    }
}

/// An answer on a route that coalesces or caches, saying where it came from.
fn marked(mut outcome: Outcome, source: Source) -> Outcome {
    if let Outcome::Response(response) = &mut outcome {
        response
            .headers
            .insert(SOURCE_HEADER, HeaderValue::from_static(source.as_str()));
    }
    outcome
}

/// One batch's way into its route's upstream batches: the batcher, and the key its calls
/// gather under.
#[derive(Clone)]
pub struct Gather {
    pub batcher: Arc<Batcher>,
    pub key: crate::upstream_batch::Key,
    /// Closed when the batch's client is gone (`Present` dropped): a call still waiting to
    /// be sent leaves its gathering then, though items already sent run to their end.
    pub present: tokio::sync::watch::Receiver<()>,
}

/// Whose going away makes a gathered call leave before it is sent.
#[derive(Clone, Copy)]
enum Presence {
    /// The batch's client (`Present`).
    Batch,
    /// Nobody's: the call runs inside a coalesced flight, dropped when its waiters are gone.
    Flight,
}

/// Held while a batch's client may still read its reply; dropped when the batch is done or
/// its client went away.
pub(super) struct Present(#[allow(dead_code)] tokio::sync::watch::Sender<()>);

/// What calls must share to share an upstream batch: the upstream and `Host`, and what the
/// upstream sees of the caller (the forwarded headers, credentials among them; not
/// `X-Forwarded-For` or the request id, which every client has its own of).
fn gather_key(
    upstream: &str,
    host: &HeaderValue,
    forwarded: &[(HeaderName, HeaderValue)],
) -> crate::upstream_batch::Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    field(upstream.as_bytes());
    field(host.as_bytes());
    for (name, value) in forwarded {
        field(name.as_str().as_bytes());
        field(value.as_bytes());
    }
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// One batch's view of its route's cache.
pub struct CacheScope {
    pub cache: Arc<ItemCache>,
    pub config: Arc<crate::config::coalesce::CacheConfig>,
    pub keys: Keys,
    /// The upstream and `Host`, in front of each item's path for invalidation.
    target: String,
    /// The forwarded headers, which an answer may vary by.
    forwarded: Vec<(HeaderName, HeaderValue)>,
}

impl CacheScope {
    /// How long an answer that says nothing of its freshness stays fresh: the route's `ttl`,
    /// or on jsonrpc routes the method's own (`ttl_by_method`; none: not kept).
    fn ttl_for(&self, request: &SubRequest) -> Option<Duration> {
        match self.keys.sharing {
            None => self.config.ttl,
            Some(sharing) => {
                let method = (sharing.method)(request)?;
                self.config.ttl_by_method.get(&method).copied()
            }
        }
    }

    /// Whether the dialect lets this answer be kept (a JSON-RPC result, not an error).
    fn storable(&self, outcome: &Outcome) -> bool {
        match (outcome, self.keys.sharing) {
            (Outcome::Response(response), Some(sharing)) => (sharing.storable)(response),
            _ => true,
        }
    }

    /// What a successful unsafe item on the same path invalidates: upstream, `Host`, path.
    fn target(&self, request: &SubRequest) -> String {
        let path = request.path.split('?').next().unwrap_or_default();
        format!("{}{path}", self.target)
    }
}

impl BatchUpstream {
    fn count_cache(&self, hit: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.cache_lookup(hit);
        }
    }

    /// One item sent upstream.
    async fn send_one(&self, request: &SubRequest, until: Instant) -> Outcome {
        if self.gather.is_some() {
            return Box::pin(self.send_detached(request, until, Presence::Batch)).await;
        }
        let _in_flight = self.in_flight.as_ref().map(InFlight::enter);
        let call = self.call(request, until);
        self.client.send(request, &self.headers, &call).await
    }

    /// One item sent upstream by a future that owns what it needs, so that it can outlive
    /// the item (a coalesced request others still wait for).
    fn send_detached(
        &self,
        request: &SubRequest,
        until: Instant,
        presence: Presence,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let call = self.call(request, until);
        let (client, headers) = (self.client.clone(), self.headers.clone());
        let (request, in_flight) = (request.clone(), self.in_flight.clone());
        let gather = self.gather.clone();
        // A gathered call waits for company within what is left of both its own and its
        // batch's deadline.
        let gather_until = until.min(self.deadline);
        // For a coalesced flight: a watch that closes only with this future.
        let (kept, own) = tokio::sync::watch::channel(());
        let present = match (presence, &gather) {
            (Presence::Batch, Some(gather)) => gather.present.clone(),
            _ => own,
        };
        async move {
            let _kept = kept;
            let _in_flight = in_flight.as_ref().map(InFlight::enter);
            let gathered = gather.and_then(|g| Some((g.batcher.gatherable(&request)?, g)));
            match gathered {
                Some((parts, gather)) => {
                    let caller = Caller { client, headers };
                    let waiting = (gather_until, present);
                    let batcher = &gather.batcher;
                    batcher
                        .call(gather.key, parts, &request, caller, waiting)
                        .await
                }
                None => client.send(&request, &headers, &call).await,
            }
        }
    }

    fn call(&self, request: &SubRequest, until: Instant) -> Call {
        Call {
            repeatable: self.repeatable_methods.contains(&request.method),
            hedge_after: self.hedge_after,
            deadline: self.deadline,
            until,
        }
    }
}
