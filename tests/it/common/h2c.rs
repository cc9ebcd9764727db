//! A cleartext HTTP/2 (prior knowledge) test upstream on the `h2` crate: answers every stream
//! with a small JSON body after an optional delay and records what it saw. Also used by
//! `benches/load.rs` as the h2c upstream.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The reply body of every stream.
pub const H2_BODY: &[u8] = br#"{"domain_id":"1","drive_id":"1","file_id":"9520943DC264"}"#;

/// A request as the h2c upstream received it.
#[derive(Debug, Clone)]
pub struct H2Request {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    /// `host` header fields beside `:authority` (nginx answers 400 to a request with both).
    pub host_headers: usize,
    pub body: Vec<u8>,
}

/// A running h2c upstream; stops accepting when dropped.
pub struct H2Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    log: Option<Arc<Mutex<Vec<H2Request>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl H2Upstream {
    /// Starts on 127.0.0.1:0; `record` keeps every request (tests), off for benchmarks.
    pub async fn start(delay: Duration, record: bool) -> H2Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2c upstream");
        let addr = listener.local_addr().expect("h2c upstream address");
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let log = record.then(|| Arc::new(Mutex::new(Vec::new())));
        let (c, r, l) = (connections.clone(), requests.clone(), log.clone());
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(socket, delay, r.clone(), l.clone()));
            }
        });
        H2Upstream {
            addr,
            connections,
            requests,
            log,
            accept,
        }
    }

    /// Every request so far, in arrival order (empty unless started with `record`).
    pub fn requests(&self) -> Vec<H2Request> {
        self.log
            .as_ref()
            .map(|l| l.lock().expect("h2c log").clone())
            .unwrap_or_default()
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    delay: Duration,
    requests: Arc<AtomicU64>,
    log: Option<Arc<Mutex<Vec<H2Request>>>>,
) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let log = log.clone();
        requests.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let mut bytes = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            if let Some(log) = log {
                log.lock().expect("h2c log").push(H2Request {
                    method: parts.method.to_string(),
                    path: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    authority: parts.uri.authority().map(|a| a.to_string()),
                    host_headers: parts.headers.get_all(http::header::HOST).iter().count(),
                    body: bytes,
                });
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let Ok(response) = http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", H2_BODY.len())
                .body(())
            else {
                return;
            };
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(Bytes::from_static(H2_BODY), true);
            }
        });
    }
}
