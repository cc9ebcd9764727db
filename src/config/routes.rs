//! Validation of `[[routes]]`: what every batch route has whatever its dialect (path, upstream,
//! limits, forwarded headers, name), uniqueness across the file, and the hand-off to the
//! dialect's own validator (`envelope.rs`, `jsonrpc.rs`, `fanout.rs`).
//!
//! Route defaults live here as named constants; a key that belongs to another dialect is an
//! error rather than a setting that silently does nothing.

use super::envelope::envelope_config;
use super::envelope::EnvelopeConfig;
use super::fanout::fanout_config;
use super::file::{FileConfig, RouteSection};
use super::jsonrpc::jsonrpc_config;
use super::jsonrpc::JsonRpcConfig;
use super::multipart::multipart_config;
use super::problems::Problems;
use super::server::{lookup_upstream, UpstreamConfig};
use super::values::{bounded, bounded_nonzero, duration, forwarded_header_names, is_route_path};
use http::header::HeaderName;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Items per batch: the PDS page allows 1 to 100 child requests.
pub const DEFAULT_MAX_ITEMS: usize = 100;
/// Children of one batch in flight at once (16).
pub const DEFAULT_CONCURRENCY: std::num::NonZeroUsize =
    std::num::NonZeroUsize::MIN.saturating_add(15);
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
/// Headers copied from the batch request into every child unless the route says otherwise.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &["authorization"];

/// Upper bounds that keep a typo from turning into an outage.
const MAX_ITEMS_LIMIT: i64 = 10_000;
const MAX_CONCURRENCY_LIMIT: i64 = 10_000;

/// What a route needs to know about the rest of the file.
struct RouteContext<'a> {
    index: &'a str,
    file: &'a FileConfig,
    upstream_index: &'a BTreeMap<String, Arc<UpstreamConfig>>,
    default_upstream: Option<&'a Arc<UpstreamConfig>>,
    batch_paths: &'a [String],
    rate_limits: &'a super::rate_limit::RateLimitStore,
}

/// The valid routes; names and paths must be unique across the file.
pub(super) fn routes(
    file: &FileConfig,
    upstream_index: &BTreeMap<String, Arc<UpstreamConfig>>,
    default_upstream: Option<&Arc<UpstreamConfig>>,
    rate_limits: &super::rate_limit::RateLimitStore,
    problems: &mut Problems,
) -> Vec<Arc<RouteConfig>> {
    let batch_paths: Vec<String> = file.routes.iter().map(|r| r.path.clone()).collect();
    let mut routes = Vec::new();
    let mut names = BTreeMap::new();
    for (i, section) in file.routes.iter().enumerate() {
        let index = i.to_string();
        let ctx = RouteContext {
            index: &index,
            file,
            upstream_index,
            default_upstream,
            batch_paths: &batch_paths,
            rate_limits,
        };
        if let Some(route) = route_config(section, &ctx, problems) {
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
    routes
}

fn route_config(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<RouteConfig> {
    let before = problems.0.len();
    let i = ctx.index;
    if !is_route_path(&section.path) {
        problems.push(
            &["routes", i, "path"],
            format!(
                "{:?} must be an absolute path such as \"/v2/batch\" (no query, no spaces)",
                section.path
            ),
        );
    }
    let upstream = route_upstream(section, ctx, problems);
    let limits = route_limits(section, i, problems);
    let forward_headers = forwarded_header_names(
        section.forward_headers.as_deref(),
        DEFAULT_FORWARD_HEADERS,
        &["routes", i, "forward_headers"],
        problems,
    );
    let client_key = super::admission::client_key(
        section.client_key.as_deref(),
        &["routes", i, "client_key"],
        problems,
    );
    let idempotent_methods = super::resilience::idempotent_methods(section, i, problems);
    let hedge_after = super::resilience::hedge_after(section, i, problems);
    let stream = super::stream::stream_formats(section, i, problems);
    let coalesce = super::coalesce::coalesce_config(section, i, problems);
    let cache = super::coalesce::cache_config(section, i, problems);
    let rate_limit = super::rate_limit::rate_limit_config(section, i, ctx.rate_limits, problems);
    let upstream_batching = super::upstream_batch::upstream_batch_config(section, i, problems);
    let dialect = dialect_config(section, ctx, problems);
    check_dialect_keys(section, i, problems);
    let name = route_name(section, i, problems);
    if problems.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name,
        path: section.path.clone(),
        upstream: upstream?,
        limits,
        forward_headers,
        client_key,
        idempotent_methods: idempotent_methods.into(),
        hedge_after,
        stream,
        coalesce: coalesce.map(Arc::new),
        cache: cache.map(Arc::new),
        rate_limit: rate_limit.map(Arc::new),
        upstream_batching: upstream_batching.map(Arc::new),
        dialect: dialect?,
    })
}

/// The named upstream, else the file's default one.
fn route_upstream(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<Arc<UpstreamConfig>> {
    let path = ["routes", ctx.index, "upstream"];
    match &section.upstream {
        Some(name) => lookup_upstream(
            name,
            &ctx.file.upstreams,
            ctx.upstream_index,
            &path,
            problems,
        ),
        None => {
            // A default upstream that is named but invalid has its own problems reported;
            // saying there is none would be a second, false one.
            let default_named =
                ctx.file.server.default_upstream.is_some() || ctx.file.upstreams.len() == 1;
            if ctx.default_upstream.is_none() && !default_named {
                problems.push(
                    &path,
                    "no upstream named and no server.default_upstream to fall back to",
                );
            }
            if let Some(upstream) = ctx.default_upstream {
                problems.filled(&path, upstream.name.as_str());
            }
            ctx.default_upstream.cloned()
        }
    }
}

fn route_limits(section: &RouteSection, i: &str, problems: &mut Problems) -> RouteLimits {
    let at = |key: &'static str| ["routes", i, key];
    RouteLimits {
        max_items: bounded(
            section.max_items,
            match section.dialect.as_str() {
                "meta" => super::meta::META_MAX_ITEMS,
                _ => DEFAULT_MAX_ITEMS,
            },
            1,
            MAX_ITEMS_LIMIT,
            &at("max_items"),
            problems,
        ),
        concurrency: bounded_nonzero(
            section.concurrency,
            DEFAULT_CONCURRENCY,
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
    }
}

fn dialect_config(
    section: &RouteSection,
    ctx: &RouteContext<'_>,
    problems: &mut Problems,
) -> Option<DialectConfig> {
    match section.dialect.as_str() {
        "envelope" => envelope_config(section, ctx.index, ctx.batch_paths, problems)
            .map(|config| DialectConfig::Envelope(Arc::new(config))),
        "jsonrpc" => jsonrpc_config(section, ctx.index, problems)
            .map(|config| DialectConfig::JsonRpc(Arc::new(config))),
        "fanout" => fanout_config(section, ctx.index, problems)
            .map(|config| DialectConfig::Fanout(Arc::new(config))),
        "multipart" => multipart_config(section, ctx.index, ctx.batch_paths, problems)
            .map(|config| DialectConfig::Multipart(Arc::new(config))),
        "meta" => super::meta::meta_config(section, ctx.index, ctx.batch_paths, problems)
            .map(|config| DialectConfig::Meta(Arc::new(config))),
        "single" => super::upstream_batch::single_config(section, ctx.index, problems)
            .map(|config| DialectConfig::Single(Arc::new(config))),
        other => {
            problems.push(
                &["routes", ctx.index, "dialect"],
                format!("{other:?} is not a dialect (\"envelope\", \"jsonrpc\", \"fanout\", \"multipart\", \"meta\" or \"single\")"),
            );
            None
        }
    }
}

/// The configured name, else one derived from the path; it becomes a metric label.
fn route_name(section: &RouteSection, i: &str, problems: &mut Problems) -> String {
    let name = section.name.clone().unwrap_or_else(|| {
        let derived = section.path.trim_start_matches('/').replace('/', "_");
        problems.filled(&["routes", i, "name"], derived.as_str());
        derived
    });
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(
            &["routes", i, "name"],
            format!("{name:?} must be non-empty visible ASCII (it becomes a metric label)"),
        );
    }
    name
}

/// Keys that only mean something for one dialect are errors on the others, so a key copied
/// from the wrong example does not silently do nothing.
#[rustfmt::skip] // a table: one line per key
fn check_dialect_keys(section: &RouteSection, i: &str, problems: &mut Problems) {
    const ENVELOPE: &[&str] = &["envelope"];
    const JSONRPC: &[&str] = &["jsonrpc"];
    const FANOUT: &[&str] = &["fanout"];
    const MULTIPART: &[&str] = &["multipart"];
    const ITEM_URLS: &[&str] = &["envelope", "multipart", "meta"];
    let s = section;
    let present: [(&str, bool, &[&str]); 24] = [
        ("id_list", s.id_list.is_some(), &["single"]),
        ("error_format", s.error_format.is_some(), &["envelope", "fanout", "multipart"]),
        ("base_path", s.base_path.is_some(), ITEM_URLS),
        ("allowed_resources", s.allowed_resources.is_some(), ENVELOPE),
        ("allowed_url_prefixes", s.allowed_url_prefixes.is_some(), ITEM_URLS),
        ("public_origins", s.public_origins.is_some(), &["envelope", "multipart"]),
        ("max_part_bytes", s.max_part_bytes.is_some(), MULTIPART),
        ("max_part_head_bytes", s.max_part_head_bytes.is_some(), MULTIPART),
        ("reply_content_id", s.reply_content_id.is_some(), MULTIPART),
        ("reply_body", s.reply_body.is_some(), ENVELOPE),
        ("sequential", s.sequential.is_some(), ENVELOPE),
        ("stop_on_failure", s.stop_on_failure.is_some(), ENVELOPE),
        ("dependencies", s.dependencies.is_some(), ENVELOPE),
        ("allowed_methods", s.allowed_methods.is_some(), &["envelope", "jsonrpc", "multipart", "meta"]),
        ("upstream_path", s.upstream_path.is_some(), JSONRPC),
        ("denied_methods", s.denied_methods.is_some(), JSONRPC),
        ("profile", s.profile.is_some(), JSONRPC),
        ("methods", s.methods.is_some(), FANOUT),
        ("ids", s.ids.is_some(), FANOUT),
        ("params", s.params.is_some(), FANOUT),
        ("headers", s.headers.is_some(), FANOUT),
        ("request", s.request.is_some(), FANOUT),
        ("reply", s.reply.is_some(), FANOUT),
        ("on_item_error", s.on_item_error.is_some(), FANOUT),
    ];
    for (key, is_set, dialects) in present {
        if is_set && !dialects.contains(&section.dialect.as_str()) {
            let only = dialects.join(", ");
            let message = format!("{key} is not a setting of dialect {:?} (only of {only})", section.dialect);
            problems.push(&["routes", i, key], message);
        }
    }
}

/// Limits every batch route has, whatever its dialect.
#[derive(Debug, Clone)]
pub struct RouteLimits {
    pub max_items: usize,
    pub concurrency: std::num::NonZeroUsize,
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
    /// The upstream its items go to.
    pub upstream: Arc<UpstreamConfig>,
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
    /// The formats its replies may be streamed in, by `Accept` (none: always buffered).
    pub stream: Vec<super::StreamFormat>,
    /// Identical items in flight at once are sent once (`[routes.coalesce]`; none: off).
    pub coalesce: Option<Arc<super::coalesce::CoalesceConfig>>,
    /// Fresh answers of identical items are served from memory (`[routes.cache]`; none: off).
    pub cache: Option<Arc<super::coalesce::CacheConfig>>,
    /// Items per second per client (`[routes.rate_limit]`; none: unlimited).
    pub rate_limit: Option<Arc<super::rate_limit::RateLimitConfig>>,
    /// Calls gathered into upstream arrays (`[routes.upstream_batching]`; none: off).
    pub upstream_batching: Option<Arc<super::upstream_batch::UpstreamBatchConfig>>,
    pub dialect: DialectConfig,
}

/// Dialect-specific settings of a route, shared with the route's dialect as they are.
#[derive(Debug)]
pub enum DialectConfig {
    Envelope(Arc<EnvelopeConfig>),
    JsonRpc(Arc<JsonRpcConfig>),
    Fanout(Arc<super::fanout::FanoutConfig>),
    Multipart(Arc<super::multipart::MultipartConfig>),
    Meta(Arc<super::meta::MetaConfig>),
    Single(Arc<super::upstream_batch::SingleConfig>),
}

impl DialectConfig {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            DialectConfig::Envelope(_) => "envelope",
            DialectConfig::JsonRpc(_) => "jsonrpc",
            DialectConfig::Fanout(_) => "fanout",
            DialectConfig::Multipart(_) => "multipart",
            DialectConfig::Meta(_) => "meta",
            DialectConfig::Single(_) => "single",
        }
    }
}
