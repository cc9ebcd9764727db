//! The admin listener: `/metrics`, `/healthz` and `/readyz`, never on the public listener.
//!
//! Served by pingora's `ServeHttp` app on its own service (own address, own threads), so a
//! scrape never competes with batch traffic for the proxy's accept loop.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::prometheus::{self, Encoder, TextEncoder};

/// The admin endpoints.
pub struct AdminApp;

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                let mut body = Vec::new();
                let encoder = TextEncoder::new();
                if encoder.encode(&prometheus::gather(), &mut body).is_err() {
                    return text(500, "metrics encoding failed\n");
                }
                Response::builder()
                    .status(200)
                    .header("content-type", encoder.format_type())
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            "/healthz" => text(200, "ok\n"),
            "/readyz" => text(200, "ready\n"),
            _ => text(404, "not found: try /metrics, /healthz or /readyz\n"),
        }
    }
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}
