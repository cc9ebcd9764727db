//! Validated runtime configuration: what the proxy actually runs with.
//!
//! `validate` converts the file types of `file.rs` into these types once, at start-up, and
//! collects *every* problem with its key path (`routes[1].max_items`) instead of stopping at
//! the first. Nothing here is re-checked per request.

use super::file::{FileConfig, RouteSection, ServerSection, UpstreamSection};
use crate::dialect::ErrorFormat;
use crate::guard::{HeaderGuard, UrlGuard};
use http::header::HeaderName;
use http::Method;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener: loopback only, never the public address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";
/// Worker threads for the proxy service (pingora counts threads per service).
pub const DEFAULT_THREADS: usize = 2;
/// Sub-requests in flight across all batches of the process.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Seconds pingora waits after SIGTERM before stopping runtimes (its own default is 300 s).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Seconds spawned work may keep running during shutdown.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Items per batch: the PDS page allows 1 to 100 child requests.
pub const DEFAULT_MAX_ITEMS: usize = 100;
/// Children of one batch in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Time one child may take once it has its permits.
pub const DEFAULT_ITEM_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the whole batch may take; the reply then goes out with what has finished.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest batch request body accepted (bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest upstream body accepted for one child (bytes).
pub const DEFAULT_MAX_ITEM_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest sum of child bodies held for one reply (bytes).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Upstream TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Upstream per-read and per-write timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled upstream connection may stay idle; keep it below the upstream's own
/// keep-alive timeout so we rarely pick a connection the upstream is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per upstream.
pub const DEFAULT_POOL_SIZE: usize = 128;
/// Headers copied from the batch request into every child unless the route says otherwise.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &["authorization"];
/// Child methods an envelope route allows unless configured.
pub const DEFAULT_ENVELOPE_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Upper bounds that keep a typo from turning into an outage.
const MAX_ITEMS_LIMIT: i64 = 10_000;
const MAX_CONCURRENCY_LIMIT: i64 = 10_000;
const MAX_IN_FLIGHT_LIMIT: i64 = 1_000_000;
const MAX_THREADS_LIMIT: i64 = 256;

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
}

/// Process-level settings.
#[derive(Debug)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    /// One multi-thread runtime (true) or one single-thread runtime per thread (false).
    pub work_stealing: bool,
    pub max_in_flight: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
    /// One log line per item (batch id, item index, batch size, status, duration).
    pub item_log: bool,
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
    pub protocol: UpstreamProtocol,
    /// Streams one h2c connection may carry at once.
    pub max_h2_streams: usize,
}

/// How batchgate talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: many items share one connection.
    H2c,
}

/// Concurrent streams per h2c connection unless configured.
pub const DEFAULT_MAX_H2_STREAMS: usize = 100;

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
    pub dialect: DialectConfig,
}

/// Dialect-specific settings of a route.
#[derive(Debug)]
pub enum DialectConfig {
    Envelope(EnvelopeConfig),
    JsonRpc(JsonRpcConfig),
    Fanout(super::fanout::FanoutConfig),
}

impl DialectConfig {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            DialectConfig::Envelope(_) => "envelope",
            DialectConfig::JsonRpc(_) => "jsonrpc",
            DialectConfig::Fanout(_) => "fanout",
        }
    }
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

/// Validates a parsed file, returning the runtime config or every problem found.
pub fn validate(file: FileConfig) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems::default();
    let server = server_settings(&file.server, &mut problems);
    let admin_listen = admin_listen(&file, &mut problems);

    let mut upstreams = Vec::new();
    let mut upstream_index = BTreeMap::new();
    for (name, section) in &file.upstreams {
        if let Some(upstream) = upstream_config(name, section, &mut problems) {
            upstream_index.insert(name.clone(), upstreams.len());
            upstreams.push(Arc::new(upstream));
        }
    }

    let default_upstream = match &file.server.default_upstream {
        Some(name) => lookup_upstream(
            name,
            &file.upstreams,
            &upstream_index,
            &["server", "default_upstream"],
            &mut problems,
        ),
        // One upstream needs no name: it is the obvious default.
        None if upstreams.len() == 1 => Some(0),
        None => None,
    };

    let batch_paths: Vec<String> = file.routes.iter().map(|r| r.path.clone()).collect();
    let mut routes = Vec::new();
    let mut names = BTreeMap::new();
    for (i, section) in file.routes.iter().enumerate() {
        let index = i.to_string();
        let ctx = RouteContext {
            index: &index,
            file: &file,
            upstream_index: &upstream_index,
            default_upstream,
            batch_paths: &batch_paths,
        };
        if let Some(route) = route_config(section, &ctx, &mut problems) {
            if let Some(previous) = names.insert(route.name.clone(), i) {
                problems.push(
                    &["routes", &index, "name"],
                    format!(
                        "duplicate route name {:?} (also routes[{previous}])",
                        route.name
                    ),
                );
            }
            routes.push(Arc::new(route));
        }
    }
    for (i, route) in file.routes.iter().enumerate() {
        if file.routes[..i].iter().any(|r| r.path == route.path) {
            problems.push(
                &["routes", &i.to_string(), "path"],
                format!("duplicate route path {:?}", route.path),
            );
        }
    }

    if problems.0.is_empty() {
        Ok(Config {
            server,
            admin_listen,
            upstreams,
            default_upstream,
            routes,
        })
    } else {
        Err(problems.0)
    }
}

fn server_settings(section: &ServerSection, problems: &mut Problems) -> ServerSettings {
    let listen_strings = section
        .listen
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    if listen_strings.is_empty() {
        problems.push(&["server", "listen"], "at least one address is required");
    }
    let mut listen = Vec::new();
    for (i, text) in listen_strings.iter().enumerate() {
        match text.parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => problems.push(
                &["server", "listen", &i.to_string()],
                format!("{text:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")"),
            ),
        }
    }
    let log_format = match section.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.push(
                &["server", "log_format"],
                format!("{other:?} is not a log format (\"text\" or \"json\")"),
            );
            LogFormat::Text
        }
    };
    if let Some(level) = &section.log_level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            problems.push(
                &["server", "log_level"],
                format!("{level:?} is not a log filter (e.g. \"info\" or \"batchgate=debug\")"),
            );
        }
    }
    ServerSettings {
        listen,
        threads: bounded(
            section.threads,
            DEFAULT_THREADS,
            1,
            MAX_THREADS_LIMIT,
            &["server", "threads"],
            problems,
        ),
        work_stealing: section.work_stealing.unwrap_or(true),
        max_in_flight: bounded(
            section.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT,
            1,
            MAX_IN_FLIGHT_LIMIT,
            &["server", "max_in_flight"],
            problems,
        ),
        grace_period: duration(
            &section.grace_period,
            DEFAULT_GRACE_PERIOD,
            &["server", "grace_period"],
            problems,
        ),
        graceful_shutdown_timeout: duration(
            &section.graceful_shutdown_timeout,
            DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
            &["server", "graceful_shutdown_timeout"],
            problems,
        ),
        pid_file: section.pid_file.clone(),
        upgrade_sock: section.upgrade_sock.clone(),
        log_format,
        log_level: section.log_level.clone(),
        item_log: section.item_log.unwrap_or(false),
    }
}

fn admin_listen(file: &FileConfig, problems: &mut Problems) -> Option<SocketAddr> {
    if file.admin.enabled == Some(false) {
        return None;
    }
    let text = file.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                &["admin", "listen"],
                format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:9091\")"),
            );
            None
        }
    }
}

fn upstream_config(
    name: &str,
    section: &UpstreamSection,
    problems: &mut Problems,
) -> Option<UpstreamConfig> {
    let before = problems.0.len();
    let at = |key: &'static str| ["upstreams", name, key];
    if section.addresses.is_empty() {
        problems.push(&at("addresses"), "at least one host:port is required");
    }
    let mut addresses = Vec::new();
    for (i, text) in section.addresses.iter().enumerate() {
        // Resolve now: pingora's HttpPeer::new panics on an unresolvable address.
        match text.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => addresses.push(addr),
            _ => problems.push(
                &["upstreams", name, "addresses", &i.to_string()],
                format!("{text:?} is not a resolvable host:port"),
            ),
        }
    }
    if let Some(host) = &section.host {
        if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic()) {
            problems.push(&at("host"), format!("{host:?} is not a valid Host value"));
        }
    }
    let upstream = UpstreamConfig {
        name: name.to_string(),
        addresses,
        host: section.host.clone(),
        connect_timeout: duration(
            &section.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            &at("connect_timeout"),
            problems,
        ),
        read_timeout: duration(
            &section.read_timeout,
            DEFAULT_IO_TIMEOUT,
            &at("read_timeout"),
            problems,
        ),
        write_timeout: duration(
            &section.write_timeout,
            DEFAULT_IO_TIMEOUT,
            &at("write_timeout"),
            problems,
        ),
        idle_timeout: duration(
            &section.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            &at("idle_timeout"),
            problems,
        ),
        pool_size: bounded(
            section.pool_size,
            DEFAULT_POOL_SIZE,
            0,
            100_000,
            &at("pool_size"),
            problems,
        ),
        protocol: match section.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                problems.push(
                    &at("protocol"),
                    format!("{other:?} is not an upstream protocol (\"http1\" or \"h2c\")"),
                );
                UpstreamProtocol::Http1
            }
        },
        max_h2_streams: bounded(
            section.max_h2_streams,
            DEFAULT_MAX_H2_STREAMS,
            1,
            10_000,
            &at("max_h2_streams"),
            problems,
        ),
    };
    (problems.0.len() == before).then_some(upstream)
}

/// What a route needs to know about the rest of the file.
pub(super) struct RouteContext<'a> {
    pub(super) index: &'a str,
    file: &'a FileConfig,
    upstream_index: &'a BTreeMap<String, usize>,
    default_upstream: Option<usize>,
    batch_paths: &'a [String],
}

fn route_config(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<RouteConfig> {
    let before = problems.0.len();
    let i = ctx.index;
    let at = |key: &'static str| ["routes", i, key];
    if !is_route_path(&section.path) {
        problems.push(
            &at("path"),
            format!(
                "{:?} must be an absolute path such as \"/v2/batch\" (no query, no spaces)",
                section.path
            ),
        );
    }
    let upstream = match &section.upstream {
        Some(name) => lookup_upstream(
            name,
            &ctx.file.upstreams,
            ctx.upstream_index,
            &at("upstream"),
            problems,
        ),
        None => {
            if ctx.default_upstream.is_none() {
                problems.push(
                    &at("upstream"),
                    "no upstream named and no server.default_upstream to fall back to",
                );
            }
            ctx.default_upstream
        }
    };
    let limits = RouteLimits {
        max_items: bounded(
            section.max_items,
            DEFAULT_MAX_ITEMS,
            1,
            MAX_ITEMS_LIMIT,
            &at("max_items"),
            problems,
        ),
        concurrency: bounded(
            section.concurrency,
            DEFAULT_CONCURRENCY,
            1,
            MAX_CONCURRENCY_LIMIT,
            &at("concurrency"),
            problems,
        ),
        item_timeout: duration(
            &section.item_timeout,
            DEFAULT_ITEM_TIMEOUT,
            &at("item_timeout"),
            problems,
        ),
        batch_timeout: duration(
            &section.batch_timeout,
            DEFAULT_BATCH_TIMEOUT,
            &at("batch_timeout"),
            problems,
        ),
        max_body_bytes: bounded(
            section.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1,
            i64::MAX,
            &at("max_body_bytes"),
            problems,
        ),
        max_item_response_bytes: bounded(
            section.max_item_response_bytes,
            DEFAULT_MAX_ITEM_RESPONSE_BYTES,
            0,
            i64::MAX,
            &at("max_item_response_bytes"),
            problems,
        ),
        max_reply_bytes: bounded(
            section.max_reply_bytes,
            DEFAULT_MAX_REPLY_BYTES,
            1,
            i64::MAX,
            &at("max_reply_bytes"),
            problems,
        ),
    };
    let forward_headers = header_names(
        section.forward_headers.as_deref(),
        DEFAULT_FORWARD_HEADERS,
        &at("forward_headers"),
        problems,
    );
    let dialect = match section.dialect.as_str() {
        "envelope" => envelope_config(section, ctx, problems).map(DialectConfig::Envelope),
        "jsonrpc" => jsonrpc_config(section, ctx, problems).map(DialectConfig::JsonRpc),
        "fanout" => {
            super::fanout::fanout_config(section, ctx.index, problems).map(DialectConfig::Fanout)
        }
        other => {
            problems.push(
                &at("dialect"),
                format!("{other:?} is not a dialect (\"envelope\", \"jsonrpc\" or \"fanout\")"),
            );
            None
        }
    };
    check_dialect_keys(section, i, problems);
    let name = section
        .name
        .clone()
        .unwrap_or_else(|| section.path.trim_start_matches('/').replace('/', "_"));
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(
            &at("name"),
            format!("{name:?} must be non-empty visible ASCII (it becomes a metric label)"),
        );
    }
    if problems.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name,
        path: section.path.clone(),
        upstream: upstream?,
        limits,
        forward_headers,
        dialect: dialect?,
    })
}

fn envelope_config(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<EnvelopeConfig> {
    let i = ctx.index;
    let at = |key: &'static str| ["routes", i, key];
    // Default base path: the route's parent, so `/v2/batch` children `/file/get` reach
    // `/v2/file/get` (PDS) and `/v1.0/$batch` children `/me` reach `/v1.0/me` (Graph).
    let base_path = section.base_path.clone().unwrap_or_else(|| {
        section
            .path
            .rsplit_once('/')
            .map(|(parent, _)| parent.to_string())
            .unwrap_or_default()
    });
    if !base_path.is_empty() && (!is_route_path(&base_path) || base_path.ends_with('/')) {
        problems.push(
            &at("base_path"),
            format!("{base_path:?} must be empty or an absolute path without a trailing '/'"),
        );
    }
    let method_names: Vec<String> = section.allowed_methods.clone().unwrap_or_else(|| {
        DEFAULT_ENVELOPE_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect()
    });
    let mut allowed_methods = Vec::new();
    for (j, name) in method_names.iter().enumerate() {
        match Method::from_bytes(name.as_bytes()) {
            Ok(m) if name.bytes().all(|b| b.is_ascii_uppercase()) => allowed_methods.push(m),
            _ => problems.push(
                &["routes", i, "allowed_methods", &j.to_string()],
                format!("{name:?} is not an upper-case HTTP method"),
            ),
        }
    }
    let prefixes = section.allowed_url_prefixes.clone();
    for (j, prefix) in prefixes.iter().flatten().enumerate() {
        if !is_route_path(prefix) {
            problems.push(
                &["routes", i, "allowed_url_prefixes", &j.to_string()],
                format!("{prefix:?} must be an absolute path such as \"/file/\""),
            );
        }
    }
    if section
        .allowed_resources
        .as_ref()
        .is_some_and(Vec::is_empty)
    {
        problems.push(
            &at("allowed_resources"),
            "an empty list would refuse every batch; leave the key out to allow any",
        );
    }
    let error_format = error_format(section, i, crate::dialect::PDS_ERROR_FORMAT, problems);
    Some(EnvelopeConfig {
        error_format,
        url_guard: UrlGuard::new(base_path.clone(), prefixes, ctx.batch_paths.to_vec()),
        base_path,
        allowed_methods,
        allowed_resources: section.allowed_resources.clone(),
        header_guard: HeaderGuard,
    })
}

/// The route's `error_format`, or `default`.
pub(super) fn error_format(
    section: &RouteSection,
    i: &str,
    default: &str,
    problems: &mut Problems,
) -> ErrorFormat {
    let template = section.error_format.as_deref().unwrap_or(default);
    ErrorFormat::new(template).unwrap_or_else(|why| {
        problems.push(&["routes", i, "error_format"], why);
        ErrorFormat::default()
    })
}

/// Keys that only mean something for one dialect are errors on the others, so a key copied
/// from the wrong example does not silently do nothing.
fn check_dialect_keys(section: &RouteSection, i: &str, problems: &mut Problems) {
    let present: [(&str, bool, &[&str]); 15] = [
        (
            "error_format",
            section.error_format.is_some(),
            &["envelope", "fanout"],
        ),
        ("base_path", section.base_path.is_some(), &["envelope"]),
        (
            "allowed_resources",
            section.allowed_resources.is_some(),
            &["envelope"],
        ),
        (
            "allowed_url_prefixes",
            section.allowed_url_prefixes.is_some(),
            &["envelope"],
        ),
        (
            "allowed_methods",
            section.allowed_methods.is_some(),
            &["envelope", "jsonrpc"],
        ),
        (
            "upstream_path",
            section.upstream_path.is_some(),
            &["jsonrpc"],
        ),
        (
            "denied_methods",
            section.denied_methods.is_some(),
            &["jsonrpc"],
        ),
        ("profile", section.profile.is_some(), &["jsonrpc"]),
        ("methods", section.methods.is_some(), &["fanout"]),
        ("ids", section.ids.is_some(), &["fanout"]),
        ("params", section.params.is_some(), &["fanout"]),
        ("headers", section.headers.is_some(), &["fanout"]),
        ("request", section.request.is_some(), &["fanout"]),
        ("reply", section.reply.is_some(), &["fanout"]),
        (
            "on_item_error",
            section.on_item_error.is_some(),
            &["fanout"],
        ),
    ];
    for (key, is_set, dialects) in present {
        if is_set && !dialects.contains(&section.dialect.as_str()) {
            problems.push(
                &["routes", i, key],
                format!(
                    "{key} is not a setting of dialect {:?} (only of {})",
                    section.dialect,
                    dialects.join(", ")
                ),
            );
        }
    }
}

fn jsonrpc_config(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<JsonRpcConfig> {
    let i = ctx.index;
    let upstream_path = section
        .upstream_path
        .clone()
        .unwrap_or_else(|| section.path.clone());
    if !is_target(&upstream_path) {
        problems.push(
            &["routes", i, "upstream_path"],
            format!("{upstream_path:?} must be an absolute path such as \"/jsonrpc2\""),
        );
    }
    let method_list = |list: &Option<Vec<String>>, key: &str, problems: &mut Problems| {
        for (j, name) in list.iter().flatten().enumerate() {
            if name.is_empty() {
                problems.push(
                    &["routes", i, key, &j.to_string()],
                    "a method name cannot be empty",
                );
            }
        }
        list.clone()
    };
    let allowed_methods = method_list(&section.allowed_methods, "allowed_methods", problems);
    let denied_methods =
        method_list(&section.denied_methods, "denied_methods", problems).unwrap_or_default();
    let profile = section.profile.as_ref();
    let rpc_error =
        |code: Option<i64>, message: Option<&String>, key: &str, problems: &mut Problems| {
            let code = code.unwrap_or(JSONRPC_INVALID_REQUEST);
            if !(-32768..=-32000).contains(&code) {
                problems.push(
                    &["routes", i, "profile", key],
                    format!("{code} is not a JSON-RPC server error code (-32768..=-32000)"),
                );
            }
            RpcError {
                code,
                message: message
                    .cloned()
                    .unwrap_or_else(|| "Invalid Request".to_string()),
            }
        };
    let too_many = rpc_error(
        profile.and_then(|p| p.too_many_code),
        profile.and_then(|p| p.too_many_message.as_ref()),
        "too_many_code",
        problems,
    );
    let empty = rpc_error(
        profile.and_then(|p| p.empty_code),
        profile.and_then(|p| p.empty_message.as_ref()),
        "empty_code",
        problems,
    );
    let batch_errors_as_array = match profile.and_then(|p| p.batch_errors.as_deref()) {
        None | Some("object") => false,
        Some("array") => true,
        Some(other) => {
            problems.push(
                &["routes", i, "profile", "batch_errors"],
                format!("{other:?} is not \"object\" or \"array\""),
            );
            false
        }
    };
    Some(JsonRpcConfig {
        upstream_path,
        allowed_methods,
        denied_methods,
        profile: JsonRpcProfile {
            too_many,
            empty,
            batch_errors_as_array,
            unique_ids: profile.and_then(|p| p.unique_ids).unwrap_or(false),
        },
    })
}

fn lookup_upstream(
    name: &str,
    sections: &BTreeMap<String, UpstreamSection>,
    index: &BTreeMap<String, usize>,
    path: &[&str],
    problems: &mut Problems,
) -> Option<usize> {
    match index.get(name) {
        Some(i) => Some(*i),
        // Declared but invalid: its own problems are already reported.
        None if sections.contains_key(name) => None,
        None => {
            let known: Vec<&str> = sections.keys().map(String::as_str).collect();
            problems.push(
                path,
                format!("no upstream named {name:?} (declared: {known:?})"),
            );
            None
        }
    }
}

fn header_names(
    names: Option<&[String]>,
    default: &[&str],
    path: &[&str],
    problems: &mut Problems,
) -> Vec<HeaderName> {
    let owned: Vec<String>;
    let names: Vec<&str> = match names {
        Some(list) => {
            owned = list.to_vec();
            owned.iter().map(String::as_str).collect()
        }
        None => default.to_vec(),
    };
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => {
                let mut p: Vec<&str> = path.to_vec();
                let j = j.to_string();
                p.push(&j);
                problems.push(&p, format!("{name:?} is not a header name"));
            }
        }
    }
    out
}

/// An absolute path, optionally with a query: visible ASCII, no fragment.
fn is_target(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    is_route_path(path) && !target.contains('#')
}

/// An absolute path with only visible ASCII and no query or fragment.
pub(super) fn is_route_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'\\')
}

pub(super) fn bounded(
    value: Option<i64>,
    default: usize,
    min: i64,
    max: i64,
    path: &[&str],
    problems: &mut Problems,
) -> usize {
    match value {
        None => default,
        Some(v) if (min..=max).contains(&v) => usize::try_from(v).unwrap_or(default),
        Some(v) => {
            let range = if max == i64::MAX {
                format!("{min}..")
            } else {
                format!("{min}..={max}")
            };
            problems.push(path, format!("{v} is not allowed ({range})"));
            default
        }
    }
}

pub(super) fn duration(
    value: &Option<String>,
    default: Duration,
    path: &[&str],
    problems: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(text) => match parse_duration(text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                problems.push(
                    path,
                    format!(
                        "{text:?} is not a positive duration (e.g. \"250ms\", \"10s\", \"2m\")"
                    ),
                );
                default
            }
        },
    }
}

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn dotted_paths_use_brackets_for_indexes() {
        let p = Problem {
            path: vec!["routes".into(), "2".into(), "max_items".into()],
            message: String::new(),
        };
        assert_eq!(p.dotted_path(), "routes[2].max_items");
    }
}
