//! The validation driver: `validate` converts the file types of `file.rs` into the runtime
//! `Config` once, at start-up, and collects *every* problem with its key path
//! (`routes[1].max_items`) instead of stopping at the first. Nothing is re-checked per
//! request. Each section's runtime type and its checks live in the section's file:
//! `server.rs` (server, admin, upstreams), `routes.rs` (what every route has), one file per
//! dialect (`envelope.rs`, `jsonrpc.rs`, `fanout.rs`, `multipart.rs`), `resilience.rs`,
//! `admission.rs`, `tls.rs`, with `values.rs` (durations, bounds, paths, header names) and
//! `problems.rs` below them all. Only `mod.rs` imports this file.

use super::file::FileConfig;
use super::problems::{Problem, Problems};
use super::routes::{routes, RouteConfig};
use super::server::{
    admin_listen, default_upstream, server_settings, upstreams, ServerSettings, UpstreamConfig,
};
use super::tls::Findings;
use std::net::SocketAddr;
use std::sync::Arc;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub admin_listen: Option<SocketAddr>,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// The upstream pass-through traffic goes to (one of `upstreams`).
    pub default_upstream: Option<Arc<UpstreamConfig>>,
    pub routes: Vec<Arc<RouteConfig>>,
    /// `[rate_limits]`: the shared store of the routes' rate limits.
    pub rate_limits: super::rate_limit::RateLimitStore,
    /// `[tracing]`: OpenTelemetry export; `None`: off.
    pub tracing: Option<super::traces::TracingConfig>,
    /// The keys the file leaves out and the values used for them (`check --print`).
    pub filled: Vec<super::Filled>,
    /// What is valid but worth a look (`FILE:LINE:COL: key: message`): an expiring
    /// certificate, verification turned off. `check` prints them; `run` logs them.
    pub warnings: Vec<String>,
    /// SHA-256 of the file's text, hex: `check` prints it, the `batchgate_config_info` metric
    /// carries it, so an operator can tell which file a running instance loaded.
    pub sha256: String,
}

/// Two listeners of this process on one address (or one inside a wildcard on the same port)
/// cannot both be bound: the second would fail `run` after `check` passed.
fn listener_clashes(server: &ServerSettings, admin: Option<SocketAddr>, problems: &mut Problems) {
    let named = server
        .listen
        .iter()
        .map(|a| ("listen", *a))
        .chain(server.tls_listen.iter().map(|a| ("tls_listen", *a)))
        .chain(admin.map(|a| ("admin.listen", a)));
    let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
    for (key, addr) in named {
        let clash = seen.iter().find(|(_, other)| share_a_port(other, &addr));
        if let Some((other_key, other)) = clash {
            let path: Vec<&str> = if key == "admin.listen" {
                vec!["admin", "listen"]
            } else {
                vec!["server", key]
            };
            problems.push(
                &path,
                format!("{addr} is also a listener in {other_key} ({other}): each listener needs its own address and port"),
            );
        }
        seen.push((key, addr));
    }
}

/// Whether two listening addresses take one port: the same address, a wildcard and an address
/// inside it, or `[::]` (dual-stack on Linux) and any IPv4 address.
fn share_a_port(a: &SocketAddr, b: &SocketAddr) -> bool {
    let dual_stack = |x: &SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
            || dual_stack(a)
            || dual_stack(b))
}

/// Validates a parsed file, returning the runtime config or every problem found.
pub fn validate(
    file: FileConfig,
    resolve: super::Resolve,
) -> Result<(Config, Vec<Problem>), Vec<Problem>> {
    let mut problems = Problems::default();
    let mut warnings = Problems::default();
    let mut found = Findings {
        problems: &mut problems,
        warnings: &mut warnings,
    };
    let server = server_settings(&file.server, &mut found);
    let (upstreams, upstream_index) = upstreams(&file, resolve, &mut found);
    let admin_listen = admin_listen(&file, &mut problems);
    listener_clashes(&server, admin_listen, &mut problems);
    let default_upstream = default_upstream(&file, &upstream_index, &mut problems);
    let rate_limits = super::rate_limit::store(file.rate_limits.as_ref(), &mut problems);
    let tracing = super::traces::tracing_config(file.tracing.as_ref(), &mut problems);
    let routes = routes(
        &file,
        &upstream_index,
        default_upstream.as_ref(),
        &rate_limits,
        &mut problems,
    );
    if file.routes.is_empty() {
        let what = if file.upstreams.is_empty() {
            "no routes and no upstreams: every request is answered 404"
        } else {
            "no routes: nothing is unpacked, every request is passed through"
        };
        warnings.push(&["routes"], what);
    }
    if problems.0.is_empty() {
        let config = Config {
            server,
            admin_listen,
            upstreams,
            default_upstream,
            routes,
            rate_limits,
            tracing,
            filled: std::mem::take(&mut problems.1),
            warnings: Vec::new(),
            sha256: String::new(),
        };
        Ok((config, warnings.0))
    } else {
        Err(problems.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_use_brackets_for_indexes() {
        let p = Problem {
            path: vec!["routes".into(), "2".into(), "max_items".into()],
            message: String::new(),
        };
        assert_eq!(p.dotted_path(), "routes[2].max_items");
    }
}
