//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the status page (`/status`,
//! `/status.json`, in `status.rs`), never on the public listener.
//!
//! Served by pingora's `ServeHttp` app on its own service (own address, own thread), so a
//! scrape never competes with batch traffic for the proxy's accept loop.

pub mod status;

use crate::upstream::UpstreamClients;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long `/readyz` waits for a TCP connect to the default upstream.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The admin endpoints.
pub struct AdminApp {
    /// The public listeners (reported by `/readyz`).
    pub listeners: Vec<SocketAddr>,
    /// Name and addresses of the default upstream, probed by `/readyz`; a reload
    /// replaces it (`crate::reload`).
    pub default_upstream: ReadinessTarget,
    /// The upstream clients in effect: `/readyz` needs an address in the choice for each.
    pub upstreams: UpstreamClients,
    /// The routes in effect, for the status page.
    pub routes: status::Routes,
}

/// What `/readyz` probes, shared with the reloader.
pub type ReadinessTarget = Arc<ArcSwapOption<(String, Vec<SocketAddr>)>>;

/// The default upstream's name and addresses in `config`.
pub fn readiness_target(config: &crate::config::Config) -> Option<(String, Vec<SocketAddr>)> {
    config
        .default_upstream
        .as_ref()
        .map(|u| (u.name.clone(), u.addresses.clone()))
}

/// A TCP connect to `addr` within `READY_CONNECT_TIMEOUT`, for an upstream whose client is
/// not (yet) in effect.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(READY_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {READY_CONNECT_TIMEOUT:?}")),
    }
}

/// `/readyz?exclude=upstreams` (the form Kubernetes' own API server takes): readiness of this
/// instance alone, for a load balancer's or Kubernetes' probe. An upstream blip then turns
/// no pod unready (which would drain every pod at once and turn a blip into an outage);
/// `/readyz` with the upstreams stays for dashboards and alerts.
fn excludes_upstreams(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "exclude=upstreams" || pair == "exclude=upstream")
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Health checkers often speak HTTP/1.0 and read until the server closes; others
        // pipeline their probes. Answer both the way the public listener does.
        // The head is in and admin requests carry no body worth a deadline of its own: from
        // here the connection waits for its next request under the idle timeout.
        if let Some(clock) = crate::listener::clock_of_http(session) {
            clock.request_done();
        }
        if session.req_header().version == http::Version::HTTP_10 {
            session.set_keepalive(None);
        } else {
            session.set_pipelining_enabled(true);
        }
        match session.req_header().uri.path() {
            "/metrics" => metrics(),
            "/healthz" => text(200, "ok\n"),
            "/readyz" if excludes_upstreams(session.req_header().uri.query()) => {
                self.listeners_ready()
            }
            "/readyz" => self.readiness().await,
            "/status.json" => {
                let snapshot =
                    status::snapshot(&self.listeners, &(self.routes)(), &(self.upstreams)());
                let mut response =
                    respond(200, "application/json", snapshot.to_string().into_bytes());
                no_store(&mut response);
                response
            }
            "/status" => {
                let mut response =
                    respond(200, "text/html; charset=utf-8", status::page().into_bytes());
                no_store(&mut response);
                // Its own inline script and style, and fetches from this listener only.
                response.headers_mut().insert(
                    "content-security-policy",
                    http::HeaderValue::from_static("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"),
                );
                response
            }
            _ => text(
                404,
                "not found: try /metrics, /healthz, /readyz, /status or /status.json\n",
            ),
        }
    }
}

impl AdminApp {
    /// Every upstream's addresses: health, ejection, and whether one is in the choice. An
    /// upstream with active checks and none passing makes the instance not ready.
    fn upstream_states(&self) -> (bool, Vec<serde_json::Value>) {
        let mut ready = true;
        let mut clients = (self.upstreams)();
        clients.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let states = clients
            .iter()
            .map(|client| {
                let addresses = client.address_states();
                let in_choice = addresses.iter().any(|(_, healthy, out)| *healthy && !out);
                if client.is_checked() && !in_choice {
                    ready = false;
                }
                json!({
                    "name": client.config.name,
                    "health_checked": client.is_checked(),
                    "ready": in_choice,
                    "addresses": addresses.iter().map(|(a, healthy, out)| json!({
                        "address": a.to_string(), "healthy": healthy, "ejected": out,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        (ready, states)
    }

    /// 200: the config is loaded and every listener is bound (the process exits when one
    /// cannot be), so an instance that answers is ready to take traffic.
    fn listeners_ready(&self) -> Response<Vec<u8>> {
        let listeners: Vec<String> = self.listeners.iter().map(|a| a.to_string()).collect();
        let body = json!({"ready": true, "config": "loaded", "listeners": listeners, "upstreams": "excluded"});
        respond(200, "application/json", body.to_string().into_bytes())
    }

    /// 200 when the default upstream accepts a connection, its TLS handshake included (or
    /// none is configured), and
    /// every upstream with health checks has an address passing them, 503 otherwise; the
    /// JSON body says which. Liveness belongs to `/healthz`.
    async fn readiness(&self) -> Response<Vec<u8>> {
        let listeners: Vec<String> = self.listeners.iter().map(|a| a.to_string()).collect();
        let (upstreams_ready, upstreams) = self.upstream_states();
        let target = self.default_upstream.load_full();
        let Some((name, addresses)) = target.as_deref() else {
            let body = json!({"ready": upstreams_ready, "config": "loaded", "listeners": listeners, "default_upstream": null, "upstreams": upstreams});
            let status = if upstreams_ready { 200 } else { 503 };
            return respond(status, "application/json", body.to_string().into_bytes());
        };
        // Every address at once, through the upstream's own connector (TLS included): ready
        // when one accepts; the report names the first that did, or the first address and
        // why it did not.
        let clients = (self.upstreams)();
        let client = clients.iter().find(|c| c.config.name == *name);
        let addresses = client.map_or(addresses.as_slice(), |c| c.config.addresses.as_slice());
        let probes = futures_util::future::join_all(addresses.iter().enumerate().map(
            |(n, addr)| async move {
                match client {
                    Some(client) => client.reach(n, READY_CONNECT_TIMEOUT).await,
                    None => probe(*addr).await,
                }
            },
        ))
        .await;
        let reached = addresses.iter().zip(&probes).find(|(_, p)| p.is_ok());
        let reachable = reached.is_some();
        let addr = reached.map_or_else(|| addresses.first().copied(), |(a, _)| Some(*a));
        let error = probes
            .iter()
            .find_map(|p| p.clone().err())
            .filter(|_| !reachable);
        let addr = addr.map(|a| a.to_string());
        let ready = reachable && upstreams_ready;
        let body = json!({
            "ready": ready,
            "config": "loaded",
            "listeners": listeners,
            "default_upstream": {"name": name, "address": addr, "reachable": reachable, "error": error},
            "upstreams": upstreams,
        });
        respond(
            if ready { 200 } else { 503 },
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}

fn metrics() -> Response<Vec<u8>> {
    // Make sure every family exists (with its HELP) even before the first batch.
    let _ = crate::metrics::families();
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if encoder.encode(&prometheus::gather(), &mut body).is_err() {
        return text(500, "metrics encoding failed\n");
    }
    respond(200, encoder.format_type(), body)
}

/// Live numbers: never from a cache; and never sniffed into another type.
fn no_store(response: &mut Response<Vec<u8>>) {
    let headers = response.headers_mut();
    headers.insert("cache-control", http::HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}
