//! Validated runtime configuration: what the proxy actually runs with.
//!
//! `validate` converts the file types of `file.rs` into these types once, at start-up, and
//! collects *every* problem with its key path (`routes[1].max_items`) instead of stopping at
//! the first. Nothing here is re-checked per request. The checks themselves live by section:
//! `server.rs` (server, admin, upstreams), `routes.rs` (what every route has), one file per
//! dialect (`envelope.rs`, `jsonrpc.rs`, `fanout.rs`) and `values.rs` (durations, bounds,
//! paths, header names).

use super::error_format::ErrorFormat;
use super::file::FileConfig;
use super::routes::routes;
use super::server::{admin_listen, default_upstream, server_settings, upstreams};
use super::tls::Findings;
pub use super::tls::{ListenerTls, UpstreamTls};
use crate::guard::{HeaderGuard, UrlGuard};
use http::header::HeaderName;
use http::Method;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

// Defaults are declared next to the checks that apply them, and re-exported here where they
// have always been public.
pub use super::envelope::DEFAULT_ENVELOPE_METHODS;
pub use super::routes::{
    DEFAULT_BATCH_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_FORWARD_HEADERS, DEFAULT_ITEM_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS, DEFAULT_MAX_ITEM_RESPONSE_BYTES,
    DEFAULT_MAX_REPLY_BYTES,
};
pub use super::server::{
    DEFAULT_ADMIN_LISTEN, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
    DEFAULT_GRACE_PERIOD, DEFAULT_IDLE_TIMEOUT, DEFAULT_IO_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_H2_STREAMS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_THREADS,
};
pub use super::values::parse_duration;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub admin_listen: Option<SocketAddr>,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// Index into `upstreams` used for pass-through traffic.
    pub default_upstream: Option<usize>,
    pub routes: Vec<Arc<RouteConfig>>,
    /// What is valid but worth a look (`FILE:LINE:COL: key: message`): an expiring
    /// certificate, verification turned off. `check` prints them; `run` logs them.
    pub warnings: Vec<String>,
    /// SHA-256 of the file's text, hex: `check` prints it, the `batchgate_config_info` metric
    /// carries it, so an operator can tell which file a running instance loaded.
    pub sha256: String,
}

/// Process-level settings.
#[derive(Debug)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    /// One multi-thread runtime (true) or one single-thread runtime per thread (false).
    pub work_stealing: bool,
    pub max_in_flight: usize,
    /// The bounded queue in front of the permits (`[server.admission]`).
    pub admission: super::admission::AdmissionLimits,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
    /// One log line per item (batch id, item index, batch size, status, duration).
    pub item_log: bool,
    /// Deadlines and the connection cap for client connections.
    pub client: ClientLimits,
    /// Listeners that speak TLS (with `tls`), besides the cleartext `listen` ones.
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<ListenerTls>,
    /// `[server.tls]` as written: tells a reload whether it changed (`crate::reload`).
    pub tls_source: String,
    /// Cleartext listeners also take HTTP/2 with prior knowledge (h2c).
    pub h2c: bool,
}

/// What a client connection may hold the proxy for (`listener.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Waiting for the next request on a kept-alive connection.
    pub idle_timeout: Duration,
    /// The whole request head, from its first byte (on a new connection: from the accept).
    pub header_timeout: Duration,
    /// The request body: this long, plus one second per `body_min_rate` bytes received.
    pub body_timeout: Duration,
    /// Bytes per second that extend the body deadline; 0 makes it a fixed deadline.
    pub body_min_rate: u64,
    /// Open connections per listener; beyond it new connections are refused.
    pub max_connections: usize,
    /// Bytes a request head may take (pingora's own limit is 1 MiB per head).
    pub max_head_bytes: usize,
    /// How long a write to the client may make no progress (the client reads nothing).
    pub send_timeout: Duration,
    /// Requests one HTTP/2 client connection may have open at once (its SETTINGS).
    pub max_h2_streams: usize,
    /// Streams an HTTP/2 client may reset within 1 s of opening them before its connection
    /// is closed (once they are also half of its streams).
    pub max_h2_premature_resets: u64,
}

/// One upstream API.
#[derive(Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub addresses: Vec<SocketAddr>,
    /// `Host` sent upstream; `None` keeps the client's.
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_size: usize,
    /// How an item picks one of `addresses`.
    pub balance: Balance,
    /// One per address (1 when not configured): its share of the choice.
    pub weights: Vec<u32>,
    /// Consecutive connection failures that take an address out of the choice; 0: never.
    pub eject_after: u32,
    /// How long the first ejection lasts; each further one lasts once more.
    pub eject_for: Duration,
    /// 5xx answers count in the ejection streak too (Envoy's `consecutive_5xx`).
    pub eject_on_5xx: bool,
    /// Retries per item; `None`: none.
    pub retry: Option<super::RetryPolicy>,
    /// Active checks of every address; `None`: none (only passive ejection).
    pub health_check: Option<super::HealthCheck>,
    pub protocol: UpstreamProtocol,
    /// Streams one HTTP/2 connection may carry at once.
    pub max_h2_streams: usize,
    /// TLS to this upstream; `None` is cleartext.
    pub tls: Option<UpstreamTls>,
}

/// How an item picks one of an upstream's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// In turn, by weight (the default).
    RoundRobin,
    /// The address with the fewest items in flight from this process per unit of weight
    /// (ties in turn): a slow address gets fewer items while it is slow.
    LeastOutstanding,
    /// Consistent hashing (ketama, by weight) of a key of each request: the same key goes to
    /// the same address while it is in the choice.
    Hash(HashOn),
}

/// The key `Balance::Hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The item's (or pass-through request's) path and query.
    Path,
    /// This header's value: the item's own, else the batch request's; requests without it
    /// go round robin.
    Header(http::HeaderName),
}

/// How batchgate talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: many items share one connection.
    H2c,
    /// HTTP/2 over TLS, offered through ALPN (HTTP/1.1 if the upstream declines).
    H2,
}

/// Limits every batch route has, whatever its dialect.
#[derive(Debug, Clone)]
pub struct RouteLimits {
    pub max_items: usize,
    pub concurrency: usize,
    pub item_timeout: Duration,
    pub batch_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_item_response_bytes: usize,
    pub max_reply_bytes: usize,
}

/// One batch route.
#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    pub upstream: usize,
    pub limits: RouteLimits,
    /// Outer request headers copied into every child.
    pub forward_headers: Vec<HeaderName>,
    /// What tells this route's clients apart; `None`: `[server.admission] client_key`.
    pub client_key: Option<super::ClientKey>,
    /// Methods whose items may be sent twice (retried after they may have reached the
    /// upstream, or hedged).
    pub idempotent_methods: std::sync::Arc<[http::Method]>,
    /// A second copy of a slow idempotent item goes to another address after this long.
    pub hedge_after: Option<super::Hedge>,
    pub dialect: DialectConfig,
}

/// Dialect-specific settings of a route, shared with the route's dialect as they are.
#[derive(Debug)]
pub enum DialectConfig {
    Envelope(Arc<EnvelopeConfig>),
    JsonRpc(Arc<JsonRpcConfig>),
    Fanout(Arc<super::fanout::FanoutConfig>),
    Multipart(Arc<super::multipart::MultipartConfig>),
}

impl DialectConfig {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            DialectConfig::Envelope(_) => "envelope",
            DialectConfig::JsonRpc(_) => "jsonrpc",
            DialectConfig::Fanout(_) => "fanout",
            DialectConfig::Multipart(_) => "multipart",
        }
    }
}

/// How bodies that are not JSON go into the reply (`routes[].reply_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyRule {
    /// Text as a JSON string, other bytes base64 with `"body_encoding":"base64"`.
    #[default]
    Pds,
    /// Microsoft Graph's: every body that is not JSON is a base64 string (the Graph SDKs
    /// decode it by the item's `Content-Type`).
    Graph,
}

/// Settings of an envelope (`POST /v2/batch`) route.
#[derive(Debug, Clone)]
pub struct EnvelopeConfig {
    /// Prefix joined to each child `url` (PDS: `/file/get` is served at `/v2/file/get`).
    pub base_path: String,
    pub allowed_methods: Vec<Method>,
    /// `None` accepts any `resource` (and a missing one).
    pub allowed_resources: Option<Vec<String>>,
    pub url_guard: UrlGuard,
    /// How bodies that are not JSON go into replies (`reply_body`).
    pub body_rule: BodyRule,
    /// Items run one after another unless a request says `"sequential": false`.
    pub sequential: bool,
    /// A sequential batch stops at its first failure unless a request says otherwise.
    pub stop_on_failure: bool,
    /// Whether items' `dependsOn` / `depends_on` order the batch (`dependencies = "graph"`);
    /// off, an item naming dependencies is refused (400), never run out of order.
    pub dependencies: bool,
    pub header_guard: HeaderGuard,
    pub error_format: ErrorFormat,
}

/// Settings of a JSON-RPC 2.0 batch route.
#[derive(Debug, Clone)]
pub struct JsonRpcConfig {
    /// Path each element is POSTed to upstream.
    pub upstream_path: String,
    /// `None` allows every method not denied.
    pub allowed_methods: Option<Vec<String>>,
    pub denied_methods: Vec<String>,
    pub profile: JsonRpcProfile,
}

/// A JSON-RPC error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

/// Where a vendor's JSON-RPC batch handling differs from the specification.
#[derive(Debug, Clone)]
pub struct JsonRpcProfile {
    /// Answer to a batch with more than `max_items` elements.
    pub too_many: RpcError,
    /// Answer to an empty array.
    pub empty: RpcError,
    /// Wrap batch-level errors in a one-element array (some clients need an array back
    /// whenever they sent one).
    pub batch_errors_as_array: bool,
    /// Refuse an element whose id repeats an earlier one.
    pub unique_ids: bool,
}

/// Specification defaults: `-32600 Invalid Request` for an empty batch (section 6) and, as
/// the specification sets no limit, the same for an oversized one.
pub const JSONRPC_INVALID_REQUEST: i64 = -32600;

/// One problem found while validating, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path segments, e.g. `["routes", "1", "max_items"]`.
    pub path: Vec<String>,
    pub message: String,
}

impl Problem {
    /// The key path in the `routes[1].max_items` form.
    pub fn dotted_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            if segment.parse::<usize>().is_ok() {
                out.push_str(&format!("[{segment}]"));
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(segment);
            }
        }
        out
    }
}

/// Collects problems under a key path prefix.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push(Problem {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        });
    }
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
pub fn validate(file: FileConfig) -> Result<(Config, Vec<Problem>), Vec<Problem>> {
    let mut problems = Problems::default();
    let mut warnings = Problems::default();
    let mut found = Findings {
        problems: &mut problems,
        warnings: &mut warnings,
    };
    let server = server_settings(&file.server, &mut found);
    let (upstreams, upstream_index) = upstreams(&file, &mut found);
    let admin_listen = admin_listen(&file, &mut problems);
    listener_clashes(&server, admin_listen, &mut problems);
    let default_upstream = default_upstream(&file, &upstream_index, &mut problems);
    let routes = routes(&file, &upstream_index, default_upstream, &mut problems);
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
