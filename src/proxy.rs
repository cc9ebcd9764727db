//! The pingora `ProxyHttp` implementation: route lookup, the batch branch and pass-through.
//!
//! `request_filter` answers batch routes itself (read the body with a cap, decode with the
//! route's dialect, run the executor, encode, write the reply) and returns `Ok(true)`; every
//! other request returns `Ok(false)` and takes pingora's normal streaming proxy path to the
//! default upstream. One structured log line per batch is written in `logging()`.

use crate::config::{Config, DialectConfig, RouteConfig};
use crate::dialect::envelope::Envelope;
use crate::dialect::fanout::Fanout;
use crate::dialect::jsonrpc::JsonRpc;
use crate::dialect::{
    is_json_content_type, BatchRequest, Dialect, Outcome, Rejection, RejectionKind, Reply,
};
use crate::exec::{self, Limits, NoObserver};
use crate::upstream::{peer, BatchHeaders, BatchUpstream, UpstreamClient};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, TRANSFER_ENCODING,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Header carrying the batch's request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Longest client-supplied request id we accept; longer ones are replaced.
const MAX_REQUEST_ID_BYTES: usize = 200;

/// A batch route ready to serve.
pub struct Route {
    pub config: Arc<RouteConfig>,
    pub dialect: RouteDialect,
    pub upstream: Arc<UpstreamClient>,
}

/// The closed set of dialects: static dispatch, exhaustive matches.
pub enum RouteDialect {
    Envelope(Envelope),
    JsonRpc(JsonRpc),
    Fanout(Fanout),
}

/// The pass-through target.
struct Passthrough {
    client: Arc<UpstreamClient>,
    peers: Vec<HttpPeer>,
    next: AtomicUsize,
}

/// The proxy service.
pub struct BatchGate {
    routes: HashMap<String, Arc<Route>>,
    passthrough: Option<Passthrough>,
    global_permits: Arc<Semaphore>,
}

/// Per-request facts, filled as the request moves through pingora's phases.
#[derive(Default)]
pub struct RequestCtx {
    batch: Option<BatchSummary>,
}

/// What the batch log line reports.
struct BatchSummary {
    route: String,
    request_id: String,
    started: Instant,
    items: usize,
    failures: usize,
    status: u16,
    result: &'static str,
}

impl BatchGate {
    /// Builds the service from a validated config: one upstream client (and pool) per upstream.
    pub fn new(config: &Config) -> Self {
        let clients: Vec<Arc<UpstreamClient>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(UpstreamClient::new(u.clone())))
            .collect();
        let mut routes = HashMap::new();
        for route in &config.routes {
            let Some(upstream) = clients.get(route.upstream).cloned() else {
                continue; // validation guarantees the index; skip rather than panic
            };
            let dialect = match &route.dialect {
                DialectConfig::Envelope(envelope) => RouteDialect::Envelope(Envelope {
                    config: Arc::new(envelope.clone()),
                    max_items: route.limits.max_items,
                }),
                DialectConfig::JsonRpc(jsonrpc) => RouteDialect::JsonRpc(JsonRpc {
                    config: Arc::new(jsonrpc.clone()),
                    max_items: route.limits.max_items,
                    upstream: upstream.config.name.clone(),
                }),
                DialectConfig::Fanout(fanout) => RouteDialect::Fanout(Fanout {
                    config: Arc::new(fanout.clone()),
                    max_items: route.limits.max_items,
                }),
            };
            routes.insert(
                route.path.clone(),
                Arc::new(Route {
                    config: route.clone(),
                    dialect,
                    upstream,
                }),
            );
        }
        let passthrough = config
            .default_upstream
            .and_then(|i| clients.get(i).cloned())
            .map(|client| Passthrough {
                peers: client
                    .config
                    .addresses
                    .iter()
                    .map(|addr| peer(&client.config, *addr))
                    .collect(),
                client,
                next: AtomicUsize::new(0),
            });
        BatchGate {
            routes,
            passthrough,
            global_permits: Arc::new(Semaphore::new(config.server.max_in_flight)),
        }
    }

    async fn serve_route(
        &self,
        session: &mut Session,
        route: &Route,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match &route.dialect {
            RouteDialect::Envelope(dialect) => self.serve_batch(session, route, dialect, ctx).await,
            RouteDialect::JsonRpc(dialect) => self.serve_batch(session, route, dialect, ctx).await,
            RouteDialect::Fanout(dialect) => self.serve_batch(session, route, dialect, ctx).await,
        }
    }

    async fn serve_batch<D: Dialect>(
        &self,
        session: &mut Session,
        route: &Route,
        dialect: &D,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let request_id = request_id(session.req_header());
        let mut summary = BatchSummary {
            route: route.config.name.clone(),
            request_id: request_id.clone(),
            started: Instant::now(),
            items: 0,
            failures: 0,
            status: 0,
            result: "rejected",
        };
        let reply = match self.read_batch(session, route, dialect).await? {
            Err(rejection) => {
                tracing::debug!(route = %route.config.name, reason = rejection.kind.as_str(), "batch rejected: {}", rejection.message);
                dialect.reject(&rejection)
            }
            Ok(body) => {
                let req = session.req_header();
                let batch_request = BatchRequest {
                    method: &req.method,
                    query: req.uri.query(),
                    headers: &req.headers,
                    body: &body,
                };
                match dialect.decode(&batch_request) {
                    Err(rejection) => dialect.reject(&rejection),
                    Ok(plan) => {
                        summary.items = plan.items.len();
                        let headers = self.batch_headers(session, route, &request_id);
                        let Some(outcomes) =
                            self.run_batch(session, route, plan.items, headers).await
                        else {
                            summary.result = "cancelled";
                            summary.status = 499;
                            ctx.batch = Some(summary);
                            return Ok(());
                        };
                        summary.failures = outcomes.iter().filter(|o| o.is_failure()).count();
                        summary.result = if summary.failures == 0 {
                            "ok"
                        } else {
                            "partial"
                        };
                        dialect.encode(plan.meta, outcomes)
                    }
                }
            }
        };
        summary.status = reply.status;
        ctx.batch = Some(summary);
        write_reply(session, &reply, &request_id).await
    }

    /// Checks method, media type and size, answers `Expect: 100-continue`, reads the body.
    async fn read_batch<D: Dialect>(
        &self,
        session: &mut Session,
        route: &Route,
        dialect: &D,
    ) -> Result<std::result::Result<Bytes, Rejection>> {
        let header = session.req_header();
        if !dialect.accepts_method(&header.method) {
            return Ok(Err(Rejection::new(
                RejectionKind::MethodNotAllowed,
                "MethodNotAllowed",
                format!(
                    "{} is not allowed on a batch route; use POST",
                    header.method
                ),
            )));
        }
        let content_type = header.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
        // A request without a body (a fanout GET with a query string) needs no media type.
        let has_body = header.headers.contains_key(TRANSFER_ENCODING)
            || header
                .headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body && !content_type.is_some_and(is_json_content_type) {
            session.set_keepalive(None);
            return Ok(Err(Rejection::new(
                RejectionKind::UnsupportedMediaType,
                "UnsupportedMediaType",
                "the batch body must be sent with Content-Type: application/json",
            )));
        }
        let limit = route.config.limits.max_body_bytes;
        let declared = header
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            // The body is left unread, so this connection cannot carry another request.
            session.set_keepalive(None);
            return Ok(Err(too_large(limit)));
        }
        let expects_continue = header
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.write_continue_response().await?;
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                session.set_keepalive(None);
                return Ok(Err(too_large(limit)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Ok(body.freeze()))
    }

    /// Runs the items; `None` when the client went away (every item task is then aborted).
    async fn run_batch(
        &self,
        session: &mut Session,
        route: &Route,
        items: Vec<std::result::Result<crate::dialect::SubRequest, Outcome>>,
        headers: BatchHeaders,
    ) -> Option<Vec<Outcome>> {
        let limits = &route.config.limits;
        let exec_limits = Limits {
            concurrency: limits.concurrency,
            item_timeout: limits.item_timeout,
            deadline: tokio::time::Instant::now() + limits.batch_timeout,
            max_reply_bytes: limits.max_reply_bytes,
        };
        let upstream = Arc::new(BatchUpstream {
            client: route.upstream.clone(),
            headers,
        });
        let observer = Arc::new(NoObserver);
        let run = exec::run(
            &exec_limits,
            &self.global_permits,
            items,
            &upstream,
            &observer,
        );
        tokio::pin!(run);
        let mut watch_client = true;
        loop {
            tokio::select! {
                outcomes = &mut run => return Some(outcomes),
                idle = session.read_body_or_idle(true), if watch_client => match idle {
                    Err(e) if e.etype() == &ErrorType::ConnectionClosed => return None,
                    // Anything else (pipelined bytes, ...) says nothing about the client leaving.
                    _ => watch_client = false,
                },
            }
        }
    }

    /// Headers every child of this batch carries.
    fn batch_headers(&self, session: &Session, route: &Route, request_id: &str) -> BatchHeaders {
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
        }
    }
}

fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        RejectionKind::BodyTooLarge,
        "RequestEntityTooLarge",
        format!("the batch body exceeds {limit} bytes"),
    )
}

/// The client's `X-Request-Id` when it is sane, otherwise a fresh random one.
fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_BYTES
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

async fn write_reply(session: &mut Session, reply: &Reply, request_id: &str) -> Result<()> {
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
    session
        .write_response_header(Box::new(header), !has_body)
        .await?;
    if has_body {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for BatchGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let route = self.routes.get(session.req_header().uri.path()).cloned();
        if let Some(route) = route {
            self.serve_route(session, &route, ctx).await?;
            return Ok(true);
        }
        if self.passthrough.is_none() {
            let reply = Reply::json(404, Bytes::from_static(br#"{"code":"NotFound","message":"no batch route matches and no default upstream is configured"}"#));
            let id = request_id(session.req_header());
            write_reply(session, &reply, &id).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(passthrough) = &self.passthrough else {
            return Error::e_explain(HTTPStatus(404), "no default upstream");
        };
        let n = passthrough.next.fetch_add(1, Ordering::Relaxed);
        match passthrough.peers.get(n % passthrough.peers.len().max(1)) {
            Some(peer) => Ok(Box::new(peer.clone())),
            None => Error::e_explain(HTTPStatus(502), "default upstream has no address"),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(host) = self
            .passthrough
            .as_ref()
            .and_then(|p| p.client.config.host.as_deref())
        {
            upstream_request.insert_header(HOST, host)?;
        }
        Ok(())
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        if let Some(batch) = &ctx.batch {
            tracing::info!(
                target: "batchgate::batch",
                route = %batch.route,
                request_id = %batch.request_id,
                items = batch.items,
                failures = batch.failures,
                status = batch.status,
                result = batch.result,
                duration_ms = batch.started.elapsed().as_secs_f64() * 1000.0,
                "batch"
            );
        }
    }
}
