//! The load benchmark's TLS scenarios, batchgate and nginx doing the same TLS work in the
//! same run: clients over TLS (kept-alive, and one new connection per request for the
//! handshake cost), and items to a TLS upstream. Certificates come from a test CA made at
//! start (rcgen); the TLS upstream is a TLS front (in this process) before the 0 ms upstream.

#[path = "../../tests/it/common/tls.rs"]
#[allow(dead_code)]
mod pki;

use super::{
    batch_request, closed_loop_on, passthrough_call, row, Gate, Nginx, Stats, Target, ITEMS,
};
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The name batchgate's and nginx's listeners answer to, and the TLS upstream's.
const GATE_NAME: &str = "bench.test";
const UPSTREAM_NAME: &str = "api.test";

/// A TLS client that verifies the test CA.
#[derive(Clone)]
pub struct Client {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Client {
    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

/// Certificates, the TLS upstream and the client, for one run.
pub struct Setup {
    ca: pki::TestCa,
    listener: pki::Issued,
    upstream: pki::TlsFront,
    pub client: Client,
}

impl Setup {
    pub async fn new(fast: SocketAddr) -> Setup {
        let ca = pki::TestCa::new("bench");
        let listener = ca.server("gate", &[GATE_NAME], pki::Validity::Current);
        let upstream_cert = ca.server("upstream", &[UPSTREAM_NAME], pki::Validity::Current);
        let upstream = pki::TlsFront::start(fast, &upstream_cert, None, &[b"http/1.1"]).await;
        let client = Client {
            connector: ca.connector(),
            name: ServerName::try_from(GATE_NAME).expect("name"),
        };
        Setup {
            ca,
            listener,
            upstream,
            client,
        }
    }

    /// batchgate's `[server]` keys and tables for a TLS listener on `addr`, a TLS upstream
    /// and its batch route.
    pub fn gate_config(&self, addr: SocketAddr) -> (String, String) {
        let server_keys = format!("tls_listen = [\"{addr}\"]\n");
        let tables = format!(
            r#"
[server.tls]
[[server.tls.certificates]]
cert_file = "{cert}"
key_file = "{key}"

[upstreams.tlsfast]
addresses = ["{upstream}"]
pool_size = 1024
# The TLS front shares this process's two workers with the load client: a burst of
# handshakes at the start can take longer than the default 1 s.
connect_timeout = "5s"
tls = true
sni = "{UPSTREAM_NAME}"
ca_file = "{ca}"

[[routes]]
name = "tlsfast"
path = "/tlsfast/batch"
dialect = "envelope"
upstream = "tlsfast"
base_path = "/v2"
max_items = 100
concurrency = 100
"#,
            cert = self.listener.cert_file.display(),
            key = self.listener.key_file.display(),
            upstream = self.upstream.addr,
            ca = self.ca.ca_file().display(),
        );
        (server_keys, tables)
    }

    /// nginx's TLS server block: a TLS listener proxying to `up` (cleartext), and
    /// `/tlsup/` to the TLS upstream, verified, with kept-alive TLS connections.
    pub fn nginx_config(&self, addr: SocketAddr) -> String {
        format!(
            "upstream tlsup {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}\n\
             server {{ listen {addr} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; ssl_session_cache off; ssl_session_tickets off;\n\
             location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
             location /tlsup/ {{ proxy_pass https://tlsup/v2/; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name {UPSTREAM_NAME}; proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }}\n",
            upstream = self.upstream.addr,
            cert = self.listener.cert_file.display(),
            key = self.listener.key_file.display(),
            ca = self.ca.ca_file().display(),
        )
    }

    pub fn upstream_handshakes(&self) -> usize {
        self.upstream.handshakes()
    }
}

/// One measured scenario: its stats and the CPU seconds the proxy spent on it.
struct Measured {
    stats: Stats,
    cpu: f64,
}

impl Measured {
    fn per_request_us(&self) -> f64 {
        self.cpu / (self.stats.ok as f64).max(1.0) * 1e6
    }
}

async fn measure(
    cpu: impl Fn() -> f64,
    target: Target,
    clients: usize,
    load_time: Duration,
    fresh: bool,
    call: impl Fn(usize) -> super::Call,
) -> Measured {
    let before = cpu();
    let stats = closed_loop_on(target, clients, load_time, None, fresh, call).await;
    Measured {
        stats,
        cpu: cpu() - before,
    }
}

/// Runs the TLS scenarios and prints their rows and ratios.
pub async fn run(setup: &Setup, gate: &Gate, nginx: Option<&Nginx>, load_time: Duration) {
    let gate_tls = Target::Tls(gate.tls_addr, setup.client.clone());
    let gate_cpu = || gate.cpu_seconds();
    // Warm the pools and the code paths first: the TLS upstream's connections (as many as
    // the measured run keeps in flight) and the TLS listener.
    let warm_up = |target, path: &'static str| {
        closed_loop_on(
            target,
            4,
            Duration::from_millis(500),
            Some(10),
            false,
            move |_| batch_request(path),
        )
    };
    let _ = warm_up(Target::Plain(gate.addr), "/tlsfast/batch").await;
    let _ = warm_up(gate_tls.clone(), "/fast/batch").await;
    let pass = measure(gate_cpu, gate_tls.clone(), 32, load_time, false, |_| {
        passthrough_call()
    })
    .await;
    let fresh = measure(gate_cpu, gate_tls.clone(), 8, load_time / 2, true, |_| {
        passthrough_call()
    })
    .await;
    let batch = measure(gate_cpu, gate_tls.clone(), 4, load_time, false, |_| {
        batch_request("/fast/batch")
    })
    .await;
    let plain = Target::Plain(gate.addr);
    let upstream_tls = measure(gate_cpu, plain, 4, load_time, false, |_| {
        batch_request("/tlsfast/batch")
    })
    .await;
    let nginx_runs = match nginx {
        Some(nginx) => {
            let target = Target::Tls(nginx.tls_addr, setup.client.clone());
            let cpu = || nginx.cpu_seconds();
            let _ = closed_loop_on(
                target.clone(),
                8,
                Duration::from_millis(300),
                Some(50),
                false,
                |_| passthrough_call(),
            )
            .await;
            let pass = measure(cpu, target.clone(), 32, load_time, false, |_| {
                passthrough_call()
            })
            .await;
            let fresh = measure(cpu, target, 8, load_time / 2, true, |_| passthrough_call()).await;
            let plain = Target::Plain(nginx.addr);
            let upstream_tls = measure(cpu, plain, 32, load_time, false, |_| {
                nginx_tls_upstream_call()
            })
            .await;
            Some((pass, fresh, upstream_tls))
        }
        None => None,
    };

    println!();
    println!("TLS (TLS 1.3, rustls client; batchgate: rustls; nginx: OpenSSL):");
    println!("| scenario | upstream | clients | requests/s | items/s | p50 ms | p99 ms | proxy CPU s / 1k items |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    row(
        "pass-through via batchgate, TLS client, kept-alive",
        "0 ms",
        32,
        &pass.stats,
        1,
        Some(pass.cpu),
    );
    row(
        "pass-through via batchgate, TLS client, new connection each",
        "0 ms",
        8,
        &fresh.stats,
        1,
        Some(fresh.cpu),
    );
    row(
        "batch of 100 via batchgate, TLS client",
        "0 ms",
        4,
        &batch.stats,
        ITEMS,
        Some(batch.cpu),
    );
    row(
        "batch of 100 via batchgate, TLS upstream",
        "0 ms TLS",
        4,
        &upstream_tls.stats,
        ITEMS,
        Some(upstream_tls.cpu),
    );
    if let Some((pass, fresh, upstream)) = &nginx_runs {
        row(
            "pass-through via nginx, TLS client, kept-alive (reference)",
            "0 ms",
            32,
            &pass.stats,
            1,
            Some(pass.cpu),
        );
        row(
            "pass-through via nginx, TLS client, new connection each (reference)",
            "0 ms",
            8,
            &fresh.stats,
            1,
            Some(fresh.cpu),
        );
        row(
            "pass-through via nginx, TLS upstream (reference)",
            "0 ms TLS",
            32,
            &upstream.stats,
            1,
            Some(upstream.cpu),
        );
    }
    let handshake_us = fresh.per_request_us() - pass.per_request_us();
    let item_us = batch.cpu / (batch.stats.ok as f64 * ITEMS as f64).max(1.0) * 1e6;
    let upstream_item_us =
        upstream_tls.cpu / (upstream_tls.stats.ok as f64 * ITEMS as f64).max(1.0) * 1e6;
    println!();
    println!(
        "batchgate over TLS: CPU per kept-alive pass-through request {:.2} us, per handshake (new connection minus kept-alive) {:.1} us, per item of a batch from a TLS client {:.2} us, per item to a TLS upstream {:.2} us; TLS upstream connections opened: {} for {} items",
        pass.per_request_us(),
        handshake_us,
        item_us,
        upstream_item_us,
        setup.upstream_handshakes(),
        upstream_tls.stats.ok as usize * ITEMS
    );
    if let Some((nginx_pass, nginx_fresh, nginx_upstream)) = &nginx_runs {
        let nginx_handshake_us = nginx_fresh.per_request_us() - nginx_pass.per_request_us();
        println!(
            "nginx over TLS (same run): CPU per kept-alive pass-through request {:.2} us, per handshake {:.1} us, per request to the TLS upstream {:.2} us; batchgate / nginx: kept-alive request {:.3}, handshake {:.3}, TLS-upstream item / nginx TLS-upstream request {:.3}",
            nginx_pass.per_request_us(),
            nginx_handshake_us,
            nginx_upstream.per_request_us(),
            pass.per_request_us() / nginx_pass.per_request_us(),
            handshake_us / nginx_handshake_us,
            upstream_item_us / nginx_upstream.per_request_us()
        );
    }
}

/// The upstream call through nginx's `/tlsup/` location (to the TLS upstream).
fn nginx_tls_upstream_call() -> super::Call {
    super::Call {
        raw: b"POST /tlsup/file/get HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"domain_id\":\"1\",\"drive_id\":\"1\"}".to_vec(),
        check: |status, _| status == 200,
    }
}
