//! A small builder for `batchgate` config texts used by the integration tests.
//!
//! [`GateConfig::new`] gives one upstream `api` at the given address (the default
//! upstream, so pass-through goes there), one envelope route `pds` at `/v2/batch` with
//! base path `/v2`, the listeners on the `{listen}`/`{admin}` placeholders and the pingora
//! files in `{tmp}`. Extra `key = value` lines can be added to `[server]`, to the route,
//! and further upstreams can be declared; [`GateConfig::toml`] renders the text for
//! [`super::gate::start`], and [`GateConfig::start`] does both.

use std::net::SocketAddr;

use super::gate::{self, Gate};

/// Parameters of one test config.
#[derive(Debug, Clone)]
pub struct GateConfig {
    upstreams: Vec<(String, String)>,
    server: Vec<String>,
    route: Vec<String>,
    route_upstream: String,
}

impl GateConfig {
    /// One upstream `api` at `upstream`, one envelope route `/v2/batch` using it.
    pub fn new(upstream: SocketAddr) -> GateConfig {
        GateConfig {
            upstreams: vec![("api".to_string(), upstream.to_string())],
            server: Vec::new(),
            route: Vec::new(),
            route_upstream: "api".to_string(),
        }
    }

    /// Adds a `key = value` line (TOML syntax) to `[server]`.
    pub fn server(mut self, line: &str) -> GateConfig {
        self.server.push(line.to_string());
        self
    }

    /// Adds a `key = value` line (TOML syntax) to the `/v2/batch` route.
    pub fn route(mut self, line: &str) -> GateConfig {
        self.route.push(line.to_string());
        self
    }

    /// Declares one more upstream `name` at `addr` (`api` stays the default upstream).
    pub fn upstream(mut self, name: &str, addr: SocketAddr) -> GateConfig {
        self.upstreams.push((name.to_string(), addr.to_string()));
        self
    }

    /// Makes the route send its children to upstream `name` instead of `api`.
    pub fn route_upstream(mut self, name: &str) -> GateConfig {
        self.route_upstream = name.to_string();
        self
    }

    /// Starts a gate with this config (see [`gate::start`]).
    pub async fn start(&self) -> Gate {
        gate::start(&self.toml()).await
    }

    /// The config text, with `{listen}`, `{admin}` and `{tmp}` placeholders left in.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        out.push_str("[server]\n");
        out.push_str("listen = [\"{listen}\"]\n");
        out.push_str("threads = 2\n");
        out.push_str("default_upstream = \"api\"\n");
        out.push_str("pid_file = \"{tmp}/batchgate.pid\"\n");
        out.push_str("upgrade_sock = \"{tmp}/upgrade.sock\"\n");
        out.push_str("grace_period = \"1s\"\n");
        out.push_str("graceful_shutdown_timeout = \"1s\"\n");
        for line in &self.server {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("\n[admin]\nlisten = \"{admin}\"\n");
        for (name, addr) in &self.upstreams {
            out.push_str(&format!(
                "\n[upstreams.{name}]\naddresses = [\"{addr}\"]\nconnect_timeout = \"1s\"\n"
            ));
        }
        out.push_str("\n[[routes]]\n");
        out.push_str("name = \"pds\"\n");
        out.push_str("path = \"/v2/batch\"\n");
        out.push_str("dialect = \"envelope\"\n");
        out.push_str(&format!("upstream = \"{}\"\n", self.route_upstream));
        out.push_str("base_path = \"/v2\"\n");
        for line in &self.route {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// A shipped `conf/examples/FILE` on the test's listeners (`{listen}`, `{admin}`, pingora's
/// files in `{tmp}`), its one upstream at `upstream` with a 1 s connect timeout. Panics when
/// the file no longer has the lines this replaces.
pub fn example(file: &str, upstream: &[SocketAddr]) -> String {
    let path = format!("{}/conf/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let listen = r#"listen = ["0.0.0.0:8080"]"#;
    let address = r#"addresses = ["127.0.0.1:9000"]"#;
    let admin = r#"listen = "127.0.0.1:9091""#;
    for line in [listen, address] {
        assert_eq!(
            text.matches(line).count(),
            1,
            "{file} changed shape: {line}"
        );
    }
    let addresses: Vec<String> = upstream.iter().map(|a| format!("\"{a}\"")).collect();
    let text = text
        .replace(
            listen,
            "listen = [\"{listen}\"]\nthreads = 2\npid_file = \"{tmp}/batchgate.pid\"\n\
             upgrade_sock = \"{tmp}/upgrade.sock\"\ngrace_period = \"1s\"\n\
             graceful_shutdown_timeout = \"1s\"",
        )
        .replace(
            address,
            &format!(
                "addresses = [{}]\nconnect_timeout = \"1s\"",
                addresses.join(", ")
            ),
        );
    if text.contains(admin) {
        text.replace(admin, "listen = \"{admin}\"")
    } else {
        format!("{text}\n[admin]\nlisten = \"{{admin}}\"\n")
    }
}
