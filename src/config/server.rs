//! Validation of the process-wide tables: `[server]`, `[admin]` and `[upstreams.NAME]`, with
//! their defaults.
//!
//! Upstream addresses are resolved here, once, because pingora's `HttpPeer::new` panics on an
//! address it cannot resolve; a route only ever refers to an upstream by index afterwards.

use super::admission::admission_limits;
use super::file::{FileConfig, ServerSection, UpstreamSection};
use super::problems::Problems;
use super::resilience::Balance;
use super::tls::UpstreamTls;
use super::tls::{listener_tls, upstream_tls, Findings, ListenerTls};
use super::values::{bounded, duration, whole_seconds};
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
/// It and `graceful_shutdown_timeout` must be whole seconds: pingora takes them as a count
/// of seconds.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Seconds spawned work may keep running during shutdown.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Upstream per-read and per-write timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled upstream connection may stay idle; keep it below the upstream's own
/// keep-alive timeout so we rarely pick a connection the upstream is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections a pool may keep per address and thread.
const MAX_POOL_SIZE: i64 = 100_000;
/// Concurrent streams per h2c connection unless configured.
pub const DEFAULT_MAX_H2_STREAMS: usize = 100;
/// Streams an HTTP/2 client may reset right after opening them before its connection closes
/// (Envoy closes at half of 500 streams; the ratio rule keeps a client that cancels now and
/// then, a browser leaving a page, far from it).
pub const DEFAULT_H2_MAX_PREMATURE_RESETS: usize = 100;

/// How long a kept-alive client connection may wait for its next request (nginx's
/// `keepalive_timeout` is 75 s, Envoy's HTTP `idle_timeout` 1 h; an idle connection costs a
/// file descriptor and its buffers, so less).
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole request head (HAProxy's common `timeout http-request 10s`; a real client sends
/// its head in one round trip, a slowloris one byte at a time).
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The request body's base deadline, extended by `DEFAULT_CLIENT_BODY_MIN_RATE` (Apache
/// mod_reqtimeout's `body=20,MinRate=500` model): a steady upload of any size passes, a body
/// trickled a byte at a time is cut off.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per second of body that buy one more second.
pub const DEFAULT_CLIENT_BODY_MIN_RATE: usize = 1024;
/// Open client connections per listener. Each holds a file descriptor and up to a few hundred
/// KiB of buffers (docs/RELIABILITY.md); nginx's default is 512 per worker.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 4096;
/// How long a write to a client may make no progress: nginx's `send_timeout` (60 s), the time
/// between two successive writes, so a slow reader passes and one that stops does not.
pub const DEFAULT_CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of one request head (request line and headers). pingora buffers up to 1 MiB per
/// head, which times `max_client_connections` is gigabytes; Envoy's default is 60 KiB,
/// nginx's `large_client_header_buffers` 4 × 8 KiB.
pub const DEFAULT_CLIENT_MAX_HEAD_BYTES: usize = 64 * 1024;

/// Upper bounds that keep a typo from turning into an outage.
const MAX_IN_FLIGHT_LIMIT: i64 = 1_000_000;
const MAX_THREADS_LIMIT: i64 = 256;
const MAX_CLIENT_CONNECTIONS_LIMIT: i64 = 10_000_000;

pub(super) fn server_settings(section: &ServerSection, found: &mut Findings<'_>) -> ServerSettings {
    let problems = &mut *found.problems;
    let listen = listen(section, problems);
    let max_in_flight = bounded(
        section.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        1,
        MAX_IN_FLIGHT_LIMIT,
        &["server", "max_in_flight"],
        problems,
    );
    let tls_listen = addresses_at(
        section.tls_listen.as_deref().unwrap_or_default(),
        "tls_listen",
        problems,
    );
    let log_format = log_format(section, problems);
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
        // One event loop per thread, each connection and its batch's items staying on the
        // thread that accepted it (nginx's and Envoy's model): 11% less CPU per item and 7%
        // less per pass-through request than work stealing, at the same batch latency
        // (docs/PERFORMANCE.md).
        work_stealing: super::values::flag(
            section.work_stealing,
            false,
            &["server", "work_stealing"],
            problems,
        ),
        max_in_flight,
        admission: admission_limits(section.admission.as_ref(), max_in_flight, problems),
        grace_period: whole_seconds(
            &section.grace_period,
            DEFAULT_GRACE_PERIOD,
            &["server", "grace_period"],
            problems,
        ),
        graceful_shutdown_timeout: whole_seconds(
            &section.graceful_shutdown_timeout,
            DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
            &["server", "graceful_shutdown_timeout"],
            problems,
        ),
        pid_file: section.pid_file.clone(),
        upgrade_sock: section.upgrade_sock.clone(),
        log_format,
        log_level: section.log_level.clone(),
        item_log: super::values::flag(section.item_log, false, &["server", "item_log"], problems),
        access_log: super::values::flag(
            section.access_log,
            false,
            &["server", "access_log"],
            problems,
        ),
        passthrough_lane: super::values::flag(
            section.passthrough_lane,
            true,
            &["server", "passthrough_lane"],
            problems,
        ),
        client: client_limits(section, problems),
        h2c: super::values::flag(section.h2c, false, &["server", "h2c"], problems),
        tls: listener_tls_settings(section, &tls_listen, found),
        tls_source: format!("{:?}", section.tls),
        tls_listen,
    }
}

/// `[server.tls]` when there are `tls_listen` addresses; each needs the other.
fn listener_tls_settings(
    section: &ServerSection,
    tls_listen: &[SocketAddr],
    found: &mut Findings<'_>,
) -> Option<ListenerTls> {
    match (&section.tls, tls_listen.is_empty()) {
        (Some(tls), false) => listener_tls(tls, found),
        (Some(_), true) => {
            found.problems.push(
                &["server", "tls"],
                "no listener uses it: add server.tls_listen",
            );
            None
        }
        (None, false) => {
            found.problems.push(
                &["server", "tls_listen"],
                "TLS listeners need [server.tls] with a certificate",
            );
            None
        }
        (None, true) => None,
    }
}

fn client_limits(section: &ServerSection, problems: &mut Problems) -> ClientLimits {
    ClientLimits {
        idle_timeout: duration(
            &section.client_idle_timeout,
            DEFAULT_CLIENT_IDLE_TIMEOUT,
            &["server", "client_idle_timeout"],
            problems,
        ),
        header_timeout: duration(
            &section.client_header_timeout,
            DEFAULT_CLIENT_HEADER_TIMEOUT,
            &["server", "client_header_timeout"],
            problems,
        ),
        body_timeout: duration(
            &section.client_body_timeout,
            DEFAULT_CLIENT_BODY_TIMEOUT,
            &["server", "client_body_timeout"],
            problems,
        ),
        body_min_rate: bounded(
            section.client_body_min_rate,
            DEFAULT_CLIENT_BODY_MIN_RATE,
            0,
            i64::from(u32::MAX),
            &["server", "client_body_min_rate"],
            problems,
        ) as u64,
        max_connections: bounded(
            section.max_client_connections,
            DEFAULT_MAX_CLIENT_CONNECTIONS,
            1,
            MAX_CLIENT_CONNECTIONS_LIMIT,
            &["server", "max_client_connections"],
            problems,
        ),
        send_timeout: duration(
            &section.client_send_timeout,
            DEFAULT_CLIENT_SEND_TIMEOUT,
            &["server", "client_send_timeout"],
            problems,
        ),
        max_head_bytes: bounded(
            section.client_max_head_bytes,
            DEFAULT_CLIENT_MAX_HEAD_BYTES,
            1024,
            1 << 20,
            &["server", "client_max_head_bytes"],
            problems,
        ),
        // nginx's http2_max_concurrent_streams is 128, pingora's default 100.
        max_h2_streams: bounded(
            section.client_max_h2_streams,
            100,
            1,
            10_000,
            &["server", "client_max_h2_streams"],
            problems,
        ),
        max_h2_premature_resets: bounded(
            section.client_h2_max_premature_resets,
            DEFAULT_H2_MAX_PREMATURE_RESETS,
            1,
            1_000_000,
            &["server", "client_h2_max_premature_resets"],
            problems,
        ) as u64,
    }
}

/// Cleartext listeners: the default one unless `listen` or `tls_listen` is set.
fn listen(section: &ServerSection, problems: &mut Problems) -> Vec<SocketAddr> {
    let listen_strings = match (&section.listen, &section.tls_listen) {
        (Some(listen), _) => listen.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => vec![DEFAULT_LISTEN.to_string()],
    };
    let tls_count = section.tls_listen.as_ref().map_or(0, Vec::len);
    if listen_strings.is_empty() && tls_count == 0 {
        problems.push(&["server", "listen"], "at least one address is required");
    }
    addresses_at(&listen_strings, "listen", problems)
}

fn addresses_at(texts: &[String], key: &str, problems: &mut Problems) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match text.parse::<SocketAddr>() {
            Ok(addr) => addresses.push(addr),
            Err(_) => problems.push(
                &["server", key, &i.to_string()],
                format!("{text:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")"),
            ),
        }
    }
    addresses
}

/// The log format; the log level is only checked here, as `main` hands it to the subscriber.
fn log_format(section: &ServerSection, problems: &mut Problems) -> LogFormat {
    let log_format = match section.log_format.as_deref() {
        None => {
            problems.filled(&["server", "log_format"], "text");
            LogFormat::Text
        }
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.push(
                &["server", "log_format"],
                format!("{other:?} is not a log format (\"text\" or \"json\")"),
            );
            LogFormat::Text
        }
    };
    if section.log_level.is_none() {
        problems.filled(&["server", "log_level"], "info");
    }
    if let Some(level) = &section.log_level {
        if !is_log_filter(level) {
            problems.push(
                &["server", "log_level"],
                format!("{level:?} is not a log filter (e.g. \"info\" or \"batchgate=debug\")"),
            );
        }
    }
    log_format
}

/// Level names a log filter directive may end in.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A filter `tracing` reads as meant: comma-separated directives, each a level (`info`) or
/// `target=level`. A bare word that is no level (`verbose`) is a valid `tracing` directive
/// that enables only a target of that name, which turns every other line off: refused.
fn is_log_filter(filter: &str) -> bool {
    let directives_are_levels = filter
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .all(|directive| {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        });
    directives_are_levels && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
}

pub(super) fn admin_listen(file: &FileConfig, problems: &mut Problems) -> Option<SocketAddr> {
    if file.admin.enabled == Some(false) {
        return None;
    }
    let text = file.admin.listen.as_deref().unwrap_or_else(|| {
        problems.filled(&["admin", "listen"], DEFAULT_ADMIN_LISTEN);
        DEFAULT_ADMIN_LISTEN
    });
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

/// The valid upstreams, and each by name for routes to refer to.
pub(super) fn upstreams(
    file: &FileConfig,
    resolve: super::Resolve,
    found: &mut Findings<'_>,
) -> (
    Vec<Arc<UpstreamConfig>>,
    BTreeMap<String, Arc<UpstreamConfig>>,
) {
    let mut upstreams = Vec::new();
    let mut upstream_index = BTreeMap::new();
    // Idle connections per address and thread unless `pool_size` says otherwise: as many as
    // the process may have items in flight, since each holds one connection and one thread
    // may run them all. A smaller pool closes connections that the next batch opens again
    // (17% of items were new connections at 128 with four clients of 100-item batches); idle
    // ones cost a socket each and age out after `idle_timeout`.
    let default_pool_size = file
        .server
        .max_in_flight
        .filter(|n| *n >= 1)
        .and_then(|n| usize::try_from(n.min(MAX_POOL_SIZE)).ok())
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    for (name, section) in &file.upstreams {
        if let Some(upstream) = upstream_config(name, section, default_pool_size, resolve, found) {
            let upstream = Arc::new(upstream);
            upstream_index.insert(name.clone(), upstream.clone());
            upstreams.push(upstream);
        }
    }
    (upstreams, upstream_index)
}

/// The upstream that pass-through traffic and routes without an `upstream` key use.
pub(super) fn default_upstream(
    file: &FileConfig,
    upstream_index: &BTreeMap<String, Arc<UpstreamConfig>>,
    problems: &mut Problems,
) -> Option<Arc<UpstreamConfig>> {
    match &file.server.default_upstream {
        Some(name) => lookup_upstream(
            name,
            &file.upstreams,
            upstream_index,
            &["server", "default_upstream"],
            problems,
        ),
        // One upstream needs no name: it is the obvious default.
        None if upstream_index.len() == 1 => upstream_index.values().next().cloned(),
        None => None,
    }
}

fn upstream_config(
    name: &str,
    section: &UpstreamSection,
    default_pool_size: usize,
    resolve: super::Resolve,
    found: &mut Findings<'_>,
) -> Option<UpstreamConfig> {
    let before = found.problems.0.len();
    let tls = upstream_tls(name, section, found);
    let problems = &mut *found.problems;
    let at = |key: &'static str| ["upstreams", name, key];
    let addresses = addresses(name, section, resolve, problems);
    if let Some(host) = &section.host {
        if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic()) {
            problems.push(&at("host"), format!("{host:?} is not a valid Host value"));
        }
    }
    let upstream = UpstreamConfig {
        name: name.to_string(),
        address_names: section.addresses.clone(),
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
            default_pool_size,
            0,
            MAX_POOL_SIZE,
            &at("pool_size"),
            problems,
        ),
        balance: super::resilience::balance(name, section, problems),
        weights: super::resilience::weights(name, section, problems),
        eject_after: u32::try_from(bounded(
            section.eject_after,
            0,
            0,
            1000,
            &at("eject_after"),
            problems,
        ))
        .unwrap_or(0),
        eject_for: duration(
            &section.eject_for,
            Duration::from_secs(10),
            &at("eject_for"),
            problems,
        ),
        eject_on_5xx: super::values::flag(
            section.eject_on_5xx,
            false,
            &at("eject_on_5xx"),
            problems,
        ),
        retry: super::resilience::retry_policy(name, section.retry.as_ref(), problems),
        health_check: super::resilience::health_check(
            name,
            section.health_check.as_ref(),
            problems,
        ),
        protocol: protocol(name, section, tls.is_some(), problems),
        max_h2_streams: bounded(
            section.max_h2_streams,
            DEFAULT_MAX_H2_STREAMS,
            1,
            10_000,
            &at("max_h2_streams"),
            problems,
        ),
        pipeline_depth: pipeline_depth(name, section, problems),
        pipeline_max_delay: duration(
            &section.pipeline_max_delay,
            DEFAULT_PIPELINE_MAX_DELAY,
            &at("pipeline_max_delay"),
            problems,
        ),
        tls,
    };
    (problems.0.len() == before).then_some(upstream)
}

/// Most item requests one HTTP/1.1 connection may carry at once (`pipeline_depth`).
pub const MAX_PIPELINE_DEPTH: usize = 64;

/// How long a pipelined request should wait for the answers ahead of it unless configured: on
/// an upstream answering in tens of microseconds that is a full group, on one taking a
/// millisecond or more no pipelining.
const DEFAULT_PIPELINE_MAX_DELAY: Duration = Duration::from_millis(1);

/// `pipeline_depth`: 1 (none) unless set, at most `MAX_PIPELINE_DEPTH`, and only where items
/// speak HTTP/1.1 (HTTP/2 multiplexes streams instead).
fn pipeline_depth(name: &str, section: &UpstreamSection, problems: &mut Problems) -> usize {
    let at = ["upstreams", name, "pipeline_depth"];
    let max = MAX_PIPELINE_DEPTH as i64;
    let depth = bounded(section.pipeline_depth, 1, 1, max, &at, problems);
    let http1 = matches!(section.protocol.as_deref(), None | Some("http1"));
    if depth > 1 && !http1 {
        problems.push(
            &at,
            "pipelining is for HTTP/1.1 upstreams: HTTP/2 carries items as streams",
        );
    }
    depth
}

fn addresses(
    name: &str,
    section: &UpstreamSection,
    resolve: super::Resolve,
    problems: &mut Problems,
) -> Vec<SocketAddr> {
    if section.addresses.is_empty() {
        problems.push(
            &["upstreams", name, "addresses"],
            "at least one host:port is required",
        );
    }
    let mut addresses = Vec::new();
    for (i, text) in section.addresses.iter().enumerate() {
        if resolve == super::Resolve::SyntaxOnly {
            match unresolved(text) {
                Some(addr) => addresses.push(addr),
                None => problems.push(
                    &["upstreams", name, "addresses", &i.to_string()],
                    format!("{text:?} is not a host:port (e.g. \"api.internal:8080\")"),
                ),
            }
            continue;
        }
        // Resolve now: pingora's HttpPeer::new panics on an unresolvable address.
        match text.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => addresses.push(addr),
            _ => problems.push(
                &["upstreams", name, "addresses", &i.to_string()],
                format!("{text:?} is not a resolvable host:port"),
            ),
        }
    }
    addresses
}

/// A `host:port` checked for its form only: an IP address as itself, a host name (letters,
/// digits, `-` and `.`) as the unspecified address with its port, a stand-in never served.
fn unresolved(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    name.then(|| SocketAddr::from(([0, 0, 0, 0], port)))
}

/// `http1`, `h2c` (cleartext, prior knowledge) or `h2` (over TLS, chosen by ALPN).
fn protocol(
    name: &str,
    section: &UpstreamSection,
    tls: bool,
    problems: &mut Problems,
) -> UpstreamProtocol {
    let at = ["upstreams", name, "protocol"];
    match (section.protocol.as_deref(), tls) {
        (None | Some("http1"), _) => UpstreamProtocol::Http1,
        (Some("h2c"), false) => UpstreamProtocol::H2c,
        (Some("h2"), true) => UpstreamProtocol::H2,
        (Some("h2c"), true) => {
            problems.push(&at, "h2c is cleartext HTTP/2: over TLS use \"h2\"");
            UpstreamProtocol::Http1
        }
        (Some("h2"), false) => {
            problems.push(
                &at,
                "\"h2\" is HTTP/2 over TLS: set tls = true, or use \"h2c\"",
            );
            UpstreamProtocol::Http1
        }
        (Some(other), _) => {
            problems.push(
                &at,
                format!("{other:?} is not an upstream protocol (\"http1\", \"h2\" or \"h2c\")"),
            );
            UpstreamProtocol::Http1
        }
    }
}

/// The index of upstream `name`; a problem at `path` if no such upstream is declared.
pub(super) fn lookup_upstream(
    name: &str,
    sections: &BTreeMap<String, UpstreamSection>,
    index: &BTreeMap<String, Arc<UpstreamConfig>>,
    path: &[&str],
    problems: &mut Problems,
) -> Option<Arc<UpstreamConfig>> {
    match index.get(name) {
        Some(upstream) => Some(upstream.clone()),
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

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// One log line per pass-through request (method, path without its query, status,
    /// client, upstream address, duration).
    pub access_log: bool,
    /// Plain HTTP/1.1 pass-through requests are relayed by batchgate's own exchange
    /// (`proxy/lane.rs`); false: every request takes pingora's path.
    pub passthrough_lane: bool,
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
    /// `addresses` as the file writes them (host names before resolution), for people.
    pub address_names: Vec<String>,
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
    pub weights: Vec<std::num::NonZeroU32>,
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
    /// Item requests written together on one HTTP/1.1 connection (pipelining); 1: none.
    pub pipeline_depth: usize,
    /// How long a pipelined request should wait at most for the answers ahead of it.
    pub pipeline_max_delay: Duration,
    /// TLS to this upstream; `None` is cleartext.
    pub tls: Option<UpstreamTls>,
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
