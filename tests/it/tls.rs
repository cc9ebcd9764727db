//! TLS on both sides, over real sockets with certificates made at test time: an HTTPS
//! upstream verified against a CA (wrong CA, wrong name, expired, mTLS), pooled TLS
//! connections reused; TLS listeners chosen by SNI, with mTLS and a minimum version,
//! answering curl over HTTP/2 and HTTP/1.1; h2c with prior knowledge; `check` on bad files.

use crate::common;

use common::prom::scrape;
use common::tls::{curl, TestCa, TlsFront, Validity};
use common::upstream::Upstream;
use serde_json::Value;

fn batch(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id":"{i}","method":"GET","url":"/file/get?n={i}"}}"#))
        .collect();
    format!(r#"{{"requests":[{}]}}"#, items.join(","))
}

fn upstream_config(front: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
# One thread: item connection pools are per thread, and reuse is what is counted here.
threads = 1

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{front}"]
tls = true
{tls}

[[routes]]
path = "/v2/batch"
dialect = "envelope"
concurrency = 4
"#
    )
}

/// `batchgate check` on `text`: (success, stdout, stderr).
fn check(text: &str) -> (bool, String, String) {
    let out = common::gate::check(text);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn statuses(reply: &Value) -> Vec<(i64, String)> {
    reply["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| {
            let code = r["body"]["code"].as_str().unwrap_or_default().to_string();
            (r["status"].as_i64().unwrap_or_default(), code)
        })
        .collect()
}

/// Items and pass-through reach an HTTPS upstream verified against the configured CA, and
/// later batches reuse the pooled TLS connections instead of handshaking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_and_its_connections_reused() {
    let ca = TestCa::new("upstream");
    let server = ca.server("upstream", &["api.test"], Validity::Current);
    let backend = Upstream::echo().await;
    let front = TlsFront::start(backend.addr, &server, None, &[b"http/1.1"]).await;
    let tls = format!(
        "sni = \"api.test\"\nca_file = \"{}\"",
        ca.ca_file().display()
    );
    let gate = common::gate::start(&upstream_config(front.addr, &tls)).await;
    for round in 0..3 {
        let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(4)).await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body_str());
        assert!(
            statuses(&reply.json()).iter().all(|(s, _)| *s == 200),
            "{}",
            reply.body_str()
        );
    }
    assert_eq!(backend.count(), 12);
    // 4 items at a time: at most 4 connections, kept for the next batches.
    assert!(
        front.handshakes() <= 4,
        "{} handshakes for 12 items",
        front.handshakes()
    );
    let passthrough = common::client::get(gate.addr, "/anything?x=1").await;
    assert_eq!(passthrough.status, 200, "{}", passthrough.body_str());
    assert!(
        passthrough.body_str().contains("/anything"),
        "{}",
        passthrough.body_str()
    );
    let metrics = scrape(gate.admin).await;
    let reused = metrics.sum(
        "batchgate_upstream_requests_total",
        &[("upstream", "api"), ("connection", "reused")],
    );
    assert!(reused >= 8.0, "reused {reused}:\n{}", metrics.text);
}

/// `protocol = "h2"` over TLS: ALPN picks HTTP/2, the items of a batch travel as streams
/// that share a few verified TLS connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_upstream_multiplexes_items() {
    use common::h2c::H2Upstream;
    let ca = TestCa::new("h2");
    let server = ca.server("upstream", &["api.test"], Validity::Current);
    let backend = H2Upstream::start(std::time::Duration::from_millis(10), true).await;
    let front = TlsFront::start(backend.addr, &server, None, &[b"h2"]).await;
    let tls = format!(
        "sni = \"api.test\"\nca_file = \"{}\"\nprotocol = \"h2\"\nmax_h2_streams = 100",
        ca.ca_file().display()
    );
    let gate = common::gate::start(&upstream_config(front.addr, &tls)).await;
    for round in 0..2 {
        let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(4)).await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body_str());
        assert!(
            statuses(&reply.json()).iter().all(|(s, _)| *s == 200),
            "{}",
            reply.body_str()
        );
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 8);
    assert!(
        requests.iter().all(|r| r.path.starts_with("/v2/file/get")),
        "{requests:?}"
    );
    assert!(
        front.handshakes() <= 4,
        "{} TLS connections for 8 items",
        front.handshakes()
    );
}

/// A certificate from an unknown CA, for another name, or expired, fails the handshake: the
/// items come back as the typed TLS failure (502 UpstreamTlsFailed, outcome tls_error) and
/// nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificates_are_a_typed_tls_failure() {
    let ca = TestCa::new("trusted");
    let other = TestCa::new("other");
    let backend = Upstream::echo().await;
    let good = ca.server("good", &["api.test"], Validity::Current);
    let expired = ca.server("expired", &["api.test"], Validity::Expired);
    let stranger = other.server("stranger", &["api.test"], Validity::Current);
    let cases = [
        ("unknown CA", &stranger, "api.test"),
        ("wrong name", &good, "other.test"),
        ("expired", &expired, "api.test"),
    ];
    for (case, cert, sni) in cases {
        let front = TlsFront::start(backend.addr, cert, None, &[b"http/1.1"]).await;
        let tls = format!("sni = \"{sni}\"\nca_file = \"{}\"", ca.ca_file().display());
        let gate = common::gate::start(&upstream_config(front.addr, &tls)).await;
        let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(2)).await;
        assert_eq!(reply.status, 200, "{case}: {}", reply.body_str());
        let statuses = statuses(&reply.json());
        assert!(
            statuses
                .iter()
                .all(|(s, code)| *s == 502 && code == "UpstreamTlsFailed"),
            "{case}: {statuses:?}"
        );
        let metrics = scrape(gate.admin).await;
        let tls_errors = metrics.sum("batchgate_items_total", &[("outcome", "tls_error")]);
        assert_eq!(tls_errors, 2.0, "{case}:\n{}", metrics.text);
    }
    assert_eq!(
        backend.count(),
        0,
        "nothing may reach an unverified upstream"
    );
}

/// An upstream that requires a client certificate refuses batchgate without one and accepts
/// it with the configured certificate and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_sends_the_configured_client_certificate() {
    let ca = TestCa::new("mtls");
    let server = ca.server("upstream", &["api.test"], Validity::Current);
    let client = ca.client("client");
    let backend = Upstream::echo().await;
    let front = TlsFront::start(backend.addr, &server, Some(&ca), &[b"http/1.1"]).await;
    let base = format!(
        "sni = \"api.test\"\nca_file = \"{}\"",
        ca.ca_file().display()
    );
    let without = common::gate::start(&upstream_config(front.addr, &base)).await;
    let reply = common::client::post_json(without.addr, "/v2/batch", &batch(1)).await;
    let refused = statuses(&reply.json());
    assert_eq!(refused[0].0, 502, "{refused:?}");
    drop(without);
    let with = format!(
        "{base}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        client.cert_file.display(),
        client.key_file.display()
    );
    let gate = common::gate::start(&upstream_config(front.addr, &with)).await;
    let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(2)).await;
    assert_eq!(
        statuses(&reply.json()),
        vec![(200, String::new()); 2],
        "{}",
        reply.body_str()
    );
    assert_eq!(backend.count(), 2);
}

fn listener_config(tls: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = []
tls_listen = ["{{listen}}"]
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[server.tls]
{tls}

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{upstream}"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#
    )
}

fn certificate(issued: &common::tls::Issued) -> String {
    format!(
        "[[server.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        issued.cert_file.display(),
        issued.key_file.display()
    )
}

/// Clients reach a TLS listener with curl over HTTP/2 (ALPN h2) and HTTP/1.1: batches and
/// pass-through answer the same either way; each of two certificates is served for its own
/// name (SNI), verified by curl against the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_http2_and_http1_and_picks_certificates_by_sni() {
    let ca = TestCa::new("listener");
    let a = ca.server("a", &["a.test"], Validity::Current);
    let b = ca.server("b", &["b.test", "*.b.test"], Validity::Current);
    let backend = Upstream::echo().await;
    let tls = format!("{}{}", certificate(&a), certificate(&b));
    let gate = common::gate::start(&listener_config(&tls, &backend.host_port())).await;
    let port = gate.addr.port();
    let cafile = ca.ca_file().display().to_string();
    for (name, version) in [
        ("a.test", "--http2"),
        ("b.test", "--http1.1"),
        ("x.b.test", "--http2"),
    ] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/v2/batch");
        let Some((code, out, err)) = curl(&[
            version,
            "--cacert",
            &cafile,
            "--resolve",
            &resolve,
            "-H",
            "content-type: application/json",
            "--data",
            &batch(3),
            "-w",
            "\n%{http_version} %{http_code}",
            &url,
        ]) else {
            eprintln!("curl is not installed; skipping the client side");
            return;
        };
        assert_eq!(code, 0, "{name} {version}: {err}");
        let (body, trailer) = out.rsplit_once('\n').expect("trailer");
        let expected = if version == "--http2" {
            "2 200"
        } else {
            "1.1 200"
        };
        assert_eq!(trailer, expected, "{name}: {body}");
        let json: Value = serde_json::from_str(body).expect("json reply");
        assert_eq!(statuses(&json).len(), 3, "{body}");
        let url = format!("https://{name}:{port}/plain?through=1");
        let (code, out, err) =
            curl(&[version, "--cacert", &cafile, "--resolve", &resolve, &url]).expect("curl");
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("\"path\":\"/plain\""), "{out}");
    }
    assert_eq!(backend.count(), 12);
}

/// Python's `ssl` and `http.client` (another TLS stack: OpenSSL) verify the listener
/// against the CA and send two batches over one kept-alive TLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_client_batches_over_one_tls_connection() {
    let ca = TestCa::new("python");
    let server = ca.server("server", &["gate.test"], Validity::Current);
    let backend = Upstream::echo().await;
    let gate = common::gate::start(&listener_config(
        &certificate(&server),
        &backend.host_port(),
    ))
    .await;
    let script = r#"
import http.client, json, socket, ssl, sys
port, cafile, body = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=cafile)
conn = http.client.HTTPSConnection("gate.test", port, context=context)
conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="gate.test")
for _ in range(2):
    conn.request("POST", "/v2/batch", body=body, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = json.loads(reply.read())
    print(reply.status, len(data["responses"]), conn.sock.version())
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(gate.addr.port().to_string())
        .arg(ca.ca_file())
        .arg(batch(3))
        .output();
    let Ok(output) = output else {
        eprintln!("python3 is not installed; skipping");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["200 3 TLSv1.3", "200 3 TLSv1.3"],
        "{stdout}"
    );
    // http.client would reconnect to "gate.test" after a close, which does not resolve:
    // two answers mean one connection carried both.
    assert_eq!(backend.count(), 6);
}

/// With `client_ca_file`, a client without a certificate is refused at the handshake (and
/// counted); one with a certificate from that CA is served. `min_version = "1.3"` refuses a
/// TLS 1.2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_requires_client_certificates_and_the_minimum_version() {
    let ca = TestCa::new("clients");
    let server = ca.server("server", &["gate.test"], Validity::Current);
    let client = ca.client("client");
    let backend = Upstream::echo().await;
    let tls = format!(
        "min_version = \"1.3\"\nclient_ca_file = \"{}\"\n{}",
        ca.ca_file().display(),
        certificate(&server)
    );
    let gate = common::gate::start(&listener_config(&tls, &backend.host_port())).await;
    let port = gate.addr.port();
    let resolve = format!("gate.test:{port}:127.0.0.1");
    let url = format!("https://gate.test:{port}/ping");
    let cafile = ca.ca_file().display().to_string();
    let Some((code, _, _)) = curl(&["--cacert", &cafile, "--resolve", &resolve, &url]) else {
        eprintln!("curl is not installed; skipping");
        return;
    };
    assert_ne!(code, 0, "a client without a certificate must be refused");
    let (cert, key) = (
        client.cert_file.display().to_string(),
        client.key_file.display().to_string(),
    );
    let with_cert = [
        "--cacert",
        &cafile,
        "--resolve",
        &resolve,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let (code, out, err) = curl(&[&with_cert[..], &[url.as_str()]].concat()).expect("curl");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/ping"), "{out}");
    let (code, _, _) =
        curl(&[&with_cert[..], &["--tls-max", "1.2", url.as_str()]].concat()).expect("curl");
    assert_ne!(code, 0, "TLS 1.2 is below min_version");
    let metrics = scrape(gate.admin).await;
    let failures = metrics.sum("batchgate_client_tls_handshake_failures_total", &[]);
    assert!(failures >= 2.0, "{}", metrics.text);
}

/// A cleartext listener with `h2c = true` takes HTTP/2 with prior knowledge (service meshes)
/// and still serves HTTP/1.1 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_takes_prior_knowledge_and_http1() {
    let backend = Upstream::echo().await;
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
h2c = true
pid_file = "{{tmp}}/batchgate.pid"
upgrade_sock = "{{tmp}}/upgrade.sock"

[admin]
listen = "{{admin}}"

[upstreams.api]
addresses = ["{}"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#,
        backend.host_port()
    );
    let gate = common::gate::start(&config).await;
    let url = format!("http://{}/v2/batch", gate.addr);
    let Some((code, out, err)) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/json",
        "--data",
        &batch(2),
        "-w",
        "\n%{http_version}",
        &url,
    ]) else {
        eprintln!("curl is not installed; skipping");
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n2"), "{out}");
    let reply = common::client::post_json(gate.addr, "/v2/batch", &batch(2)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(backend.count(), 4);
}

/// `check` loads every TLS file: a missing file, a key that belongs to another certificate
/// and a file that is not PEM are errors with their config key; an expired certificate and
/// turned-off verification are warnings.
#[test]
fn check_reports_bad_tls_files_with_their_keys() {
    let ca = TestCa::new("check");
    let a = ca.server("a", &["a.test"], Validity::Current);
    let b = ca.server("b", &["b.test"], Validity::Current);
    let expired = ca.server("old", &["old.test"], Validity::Expired);
    let garbage = ca.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let mismatched = format!(
        "[[server.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        a.cert_file.display(),
        b.key_file.display()
    );
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:8080"]
tls_listen = ["127.0.0.1:8443"]

[server.tls]
client_ca_file = "{garbage}"
{mismatched}
[[server.tls.certificates]]
cert_file = "/nonexistent/cert.pem"
key_file = "/nonexistent/key.pem"

[upstreams.api]
addresses = ["127.0.0.1:9000"]
tls = true
sni = "api.test"
insecure_skip_verify = true

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#,
        garbage = garbage.display()
    );
    let (ok, _, stderr) = check(&text);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("server.tls.client_ca_file") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("server.tls.certificates[0]") && stderr.contains("does not match"),
        "{stderr}"
    );
    assert!(
        stderr.contains("server.tls.certificates[1]") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let warned = format!(
        r#"
[server]
tls_listen = ["127.0.0.1:8443"]

[server.tls]
[[server.tls.certificates]]
cert_file = "{}"
key_file = "{}"

[upstreams.api]
addresses = ["127.0.0.1:9000"]
tls = true
sni = "api.test"
insecure_skip_verify = true

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#,
        expired.cert_file.display(),
        expired.key_file.display()
    );
    let (ok, stdout, stderr) = check(&warned);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("NOT VERIFIED"), "{stdout}");
    assert!(
        stderr.contains("warning") && stderr.contains("expired on"),
        "{stderr}"
    );
    assert!(
        stderr.contains("upstreams.api.insecure_skip_verify"),
        "{stderr}"
    );
}

/// A process stopped when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The certificate a TLS listener presents to a client that trusts `ca` and names `name`.
async fn presented_certificate(addr: std::net::SocketAddr, ca: &TestCa, name: &str) -> Vec<u8> {
    let connector = ca.connector();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("certificates")[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("pem")
        .to_vec()
}

/// Certificates are renewed with the zero-downtime upgrade: new files in place, a second
/// process started with `-u`, SIGQUIT to the first. Requests sent all through the hand-off
/// are answered, and new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_by_the_zero_downtime_upgrade() {
    let ca = TestCa::new("renew");
    let old = ca.server("old", &["gate.test"], Validity::Current);
    let new = ca.server("new", &["gate.test"], Validity::Current);
    let (cert_file, key_file) = (ca.dir().join("live.pem"), ca.dir().join("live.key"));
    std::fs::write(&cert_file, &old.cert_pem).expect("cert");
    std::fs::write(&key_file, &old.key_pem).expect("key");
    let backend = Upstream::echo().await;
    let tls = format!(
        "[[server.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let mut gate = common::gate::start(&listener_config(&tls, &backend.host_port())).await;
    assert_eq!(
        presented_certificate(gate.addr, &ca, "gate.test").await,
        pem_der(&old.cert_pem)
    );

    // Load while the sockets change hands: every request must be answered.
    let addr = gate.addr;
    let ca_file = ca.ca_file().display().to_string();
    let load = tokio::task::spawn_blocking(move || {
        let resolve = format!("gate.test:{}:127.0.0.1", addr.port());
        let url = format!("https://gate.test:{}/ping", addr.port());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
        let (mut ok, mut failed) = (0, Vec::new());
        while std::time::Instant::now() < deadline {
            match curl(&["--cacert", &ca_file, "--resolve", &resolve, &url]) {
                Some((0, _, _)) => ok += 1,
                Some((code, _, err)) => failed.push(format!("{code}: {err}")),
                None => return None,
            }
        }
        Some((ok, failed))
    });
    std::fs::write(&cert_file, &new.cert_pem).expect("cert");
    std::fs::write(&key_file, &new.key_pem).expect("key");
    let successor = std::process::Command::new(common::gate::bin())
        .args(["run", "-u", "-c"])
        .arg(gate.config_path())
        .current_dir(gate.dir())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the successor");
    let _successor = KillOnDrop(successor);
    // The successor listens on the upgrade socket for the listeners the old process sends
    // when it is told to quit.
    let upgrade_sock = gate.dir().join("upgrade.sock");
    let within = std::time::Duration::from_secs(10);
    common::eventually(within, "the successor's upgrade socket", || {
        upgrade_sock.exists()
    })
    .await;
    gate.signal("QUIT");
    let exited = gate.wait_exit(std::time::Duration::from_secs(15)).await;
    assert!(exited.is_some(), "the old process drains and exits");
    assert_eq!(
        presented_certificate(addr, &ca, "gate.test").await,
        pem_der(&new.cert_pem)
    );
    let result = load.await.expect("load task");
    let Some((ok, failed)) = result else {
        eprintln!("curl is not installed; the hand-off was not loaded");
        return;
    };
    assert!(failed.is_empty(), "{} answered, failed: {failed:?}", ok);
    assert!(ok > 10, "{ok} requests during the hand-off");
}

/// A TLS client that connects and never finishes its handshake is cut off at
/// `client_header_timeout`, inside the connection cap, and counted as a handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_cut_off_at_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new("stall");
    let server = ca.server("server", &["gate.test"], Validity::Current);
    let backend = Upstream::echo().await;
    let config = listener_config(&certificate(&server), &backend.host_port()).replace(
        "tls_listen = [\"{listen}\"]",
        "tls_listen = [\"{listen}\"]\nclient_header_timeout = \"1s\"",
    );
    let gate = common::gate::start(&config).await;
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await;
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection closes: {read:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
    let metrics = scrape(gate.admin).await;
    let timeouts = metrics.sum("batchgate_client_timeouts_total", &[("phase", "handshake")]);
    assert_eq!(timeouts, 1.0, "{}", metrics.text);
}

/// A client that completes the TLS handshake choosing h2 (ALPN) and then sends nothing, not
/// even the HTTP/2 preface, is cut at `client_header_timeout` like one that sends no request
/// head (pingora's h2 handshake has no timeout of its own), counted as a `head` timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_sends_no_preface_is_cut_at_the_header_timeout() {
    let ca = TestCa::new("silent-h2");
    let server = ca.server("a", &["a.test"], Validity::Current);
    let backend = Upstream::echo().await;
    let config = listener_config(&certificate(&server), &backend.host_port()).replace(
        "graceful_shutdown_timeout = \"1s\"",
        "graceful_shutdown_timeout = \"1s\"\nclient_header_timeout = \"1s\"",
    );
    let gate = common::gate::start(&config).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).expect("test CA");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = std::time::Instant::now();
    common::client::assert_cut_at_a_one_second_head_timeout(&mut tls, started, gate.admin).await;
}

/// The certificate recipes of docs/CONFIGURATION.md ("Certificates"), run as written with the
/// real openssl, make certificates that `check` accepts and the listener serves: curl verifies
/// them (against the self-signed certificate, or the recipe's CA) over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_certificate_recipes_work_with_rustls() {
    let Some(openssl) = common::prom::require_tool("openssl", "apt-get install openssl") else {
        return;
    };
    let docs = std::fs::read_to_string(common::prom::repo_file("docs/CONFIGURATION.md"))
        .expect("docs/CONFIGURATION.md");
    let section = docs
        .split("### Certificates")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("a Certificates section");
    let recipes: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    assert_eq!(recipes.len(), 2, "{section}");
    let backend = Upstream::echo().await;
    for (n, recipe) in recipes.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("batchgate-recipe-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = std::process::Command::new("sh")
            .args(["-e", "-c", recipe])
            .current_dir(&dir)
            .env(
                "PATH",
                std::env::join_paths([openssl.parent().expect("dir")]).expect("PATH"),
            )
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "recipe {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = format!(
            "[[server.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("gateway.pem").display(),
            dir.join("gateway.key").display()
        );
        let gate = common::gate::start(&listener_config(&tls, &backend.host_port())).await;
        let port = gate.addr.port();
        let trusted = if dir.join("ca.pem").exists() {
            "ca.pem"
        } else {
            "gateway.pem"
        };
        let cafile = dir.join(trusted).display().to_string();
        let resolve = format!("localhost:{port}:127.0.0.1");
        let url = format!("https://localhost:{port}/plain");
        let Some((code, out, err)) = curl(&[
            "--http2",
            "--cacert",
            &cafile,
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version}",
            &url,
        ]) else {
            eprintln!("curl is not installed; skipping the client side");
            return;
        };
        assert_eq!(code, 0, "recipe {n}: {err}");
        assert!(out.ends_with("\n2"), "recipe {n}: {out}");
        let by_ip = format!("https://127.0.0.1:{port}/plain");
        let (code, _, err) = curl(&["--cacert", &cafile, &by_ip]).expect("curl");
        assert_eq!(code, 0, "recipe {n}, by address: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
