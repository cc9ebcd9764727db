//! Loading and checking the configuration file.
//!
//! `Config::from_str` parses strictly (unknown keys are errors), validates into runtime types,
//! and reports every problem as `FILE:LINE:COL: key: message`, the way `nginx -t` does.
//! `from_path` only adds reading the file, so tests need no files.

mod admission;
pub mod coalesce;
mod envelope;
mod error_format;
pub mod fanout;
pub mod file;
mod jsonrpc;
pub mod meta;
pub mod multipart;
mod problems;
pub use problems::Filled;
pub mod rate_limit;
mod resilience;
mod routes;
mod server;
mod stream;
mod tls;
pub mod traces;
pub mod upstream_batch;
mod validate;
mod values;

pub use admission::{AdmissionLimits, ClientKey};
pub use envelope::{BodyRule, EnvelopeConfig, DEFAULT_ENVELOPE_METHODS};
pub use error_format::{ErrorFormat, HUAWEI_ERROR_FORMAT, PDS_ERROR_FORMAT};
pub use fanout::{FanoutConfig, FieldRule, FieldSource, HeaderRule, MissingField, OnItemError};
pub use jsonrpc::{fold_case, method_key, usable_method};
pub use jsonrpc::{JsonRpcConfig, JsonRpcProfile, RpcError};
pub use problems::Problem;
pub use resilience::{
    Balance, HashOn, HealthCheck, Hedge, RetryOn, RetryPolicy, DEFAULT_IDEMPOTENT_METHODS,
};
pub use routes::{
    DialectConfig, RouteConfig, RouteLimits, DEFAULT_BATCH_TIMEOUT, DEFAULT_CONCURRENCY,
    DEFAULT_FORWARD_HEADERS, DEFAULT_ITEM_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_ITEM_RESPONSE_BYTES, DEFAULT_MAX_REPLY_BYTES,
};
pub use server::{
    ClientLimits, LogFormat, ServerSettings, UpstreamConfig, UpstreamProtocol,
    DEFAULT_ADMIN_LISTEN, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
    DEFAULT_GRACE_PERIOD, DEFAULT_IDLE_TIMEOUT, DEFAULT_IO_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_H2_STREAMS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_THREADS, MAX_PIPELINE_DEPTH,
};
pub use stream::StreamFormat;
pub use tls::{ListenerTls, UpstreamTls};
pub use validate::Config;
pub use values::parse_duration;

use std::fmt;
use std::path::Path;

/// A problem located in the file text.
#[derive(Debug, Clone)]
pub struct LocatedProblem {
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `routes[1].max_items`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, problems))]
    Invalid {
        file: String,
        problems: Vec<LocatedProblem>,
    },
}

fn render(file: &str, problems: &[LocatedProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.key.is_empty() {
                format!("{file}:{}:{}: {}", p.line, p.column, p.message)
            } else {
                format!("{file}:{}:{}: {}: {}", p.line, p.column, p.key, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How much of the world validation looks at besides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Upstream host names are resolved (what `run` needs: an address it cannot reach is an error).
    Names,
    /// Host names are only checked for their form (`check --no-resolve`: a config for another
    /// network, such as a cluster's service names, checked where they do not resolve).
    SyntaxOnly,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::from_path_with(path, Resolve::Names)
    }

    /// Reads and validates the file at `path`, resolving host names or not.
    pub fn from_path_with(path: impl AsRef<Path>, resolve: Resolve) -> Result<Config, ConfigError> {
        let file = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path.as_ref()).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse_with(&text, &file, resolve)
    }

    /// Parses and validates configuration text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, Resolve::Names)
    }

    /// [`Config::parse`], resolving host names or not.
    pub fn parse_with(text: &str, file: &str, resolve: Resolve) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        };
        let parsed: file::FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            invalid(vec![LocatedProblem {
                line,
                column,
                key: key_at(text, line).unwrap_or_default(),
                message: did_you_mean(e.message().trim()),
            }])
        })?;
        let document = || toml_edit::ImDocument::parse(text).ok();
        let (mut config, warnings) = validate::validate(parsed, resolve)
            .map_err(|problems| invalid(locate_all(document().as_ref(), text, problems)))?;
        config.sha256 = sha256_hex(text);
        config.warnings = locate_all(document().as_ref(), text, warnings)
            .into_iter()
            .map(|w| {
                format!(
                    "{file}:{}:{}: {}: warning: {}",
                    w.line, w.column, w.key, w.message
                )
            })
            .collect();
        Ok(config)
    }
}

/// An unknown key's message (serde's `unknown field `x`, expected one of `a`, `b``) with
/// the closest known key first, when one is close: "did you mean `max_items`?".
fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let known = expected.split('`').skip(1).step_by(2);
    let closest = known
        .map(|key| (edit_distance(unknown, key), key))
        .min()
        .filter(|(distance, key)| *distance <= (key.len() / 3).max(1));
    match closest {
        Some((_, key)) => format!("unknown field `{unknown}`: did you mean `{key}`? ({message})"),
        None => message.to_string(),
    }
}

/// Levenshtein distance, with a swap of two neighbours counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The file's text with every key it leaves out written in, with the value in effect and a
/// `# default` comment (`check --print`). The file's own keys, order and comments are kept;
/// a table the file does not have is added when one of its keys has a default.
pub fn effective_text(text: &str, filled: &[Filled]) -> String {
    let Ok(mut document) = text.parse::<toml_edit::DocumentMut>() else {
        return text.to_string();
    };
    for filled in filled {
        let Some((key, tables)) = filled.path.split_last() else {
            continue;
        };
        let Some(table) = table_at(document.as_table_mut(), tables) else {
            continue;
        };
        if table.contains_key(key) {
            continue;
        }
        let mut value = filled.value.clone();
        value.decor_mut().set_suffix(" # default");
        table.insert(key, toml_edit::Item::Value(value));
    }
    document.to_string()
}

/// The table at `path` (`["routes", "0", "cache"]`), made if absent (not through arrays).
fn table_at<'t>(
    table: &'t mut toml_edit::Table,
    path: &[String],
) -> Option<&'t mut toml_edit::Table> {
    let Some((first, rest)) = path.split_first() else {
        return Some(table);
    };
    if let Some(index) = rest.first().and_then(|i| i.parse::<usize>().ok()) {
        let tables = table.get_mut(first)?.as_array_of_tables_mut()?;
        return table_at(tables.get_mut(index)?, &rest[1..]);
    }
    let entry = table.entry(first).or_insert_with(|| {
        let mut new = toml_edit::Table::new();
        new.set_implicit(false);
        toml_edit::Item::Table(new)
    });
    match entry {
        toml_edit::Item::Table(inner) => table_at(inner, rest),
        _ => None,
    }
}

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Each problem with the line and column of the deepest part of its key in the file.
fn locate_all(
    document: Option<&toml_edit::ImDocument<&str>>,
    text: &str,
    problems: Vec<Problem>,
) -> Vec<LocatedProblem> {
    problems
        .into_iter()
        .map(|p| {
            let offset = document
                .and_then(|doc| locate(doc.as_item(), &p.path))
                .unwrap_or(0);
            let (line, column) = line_column(text, offset);
            LocatedProblem {
                line,
                column,
                key: p.dotted_path(),
                message: p.message,
            }
        })
        .collect()
}

impl std::str::FromStr for Config {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "<config>")
    }
}

/// Byte offset of the deepest item of `path` that exists in the document.
fn locate(item: &toml_edit::Item, path: &[String]) -> Option<usize> {
    use toml_edit::Item;
    let here = item.span().map(|s| s.start);
    let Some((segment, rest)) = path.split_first() else {
        return here;
    };
    let deeper = match item {
        Item::ArrayOfTables(tables) => segment
            .parse::<usize>()
            .ok()
            .and_then(|i| tables.get(i))
            .and_then(|table| locate_in_table(table, rest)),
        Item::Table(table) => table.get(segment).and_then(|child| locate(child, rest)),
        Item::Value(value) => locate_value(value, path),
        Item::None => None,
    };
    deeper.or(here)
}

fn locate_in_table(table: &toml_edit::Table, path: &[String]) -> Option<usize> {
    let here = table.span().map(|s| s.start);
    let deeper = path
        .split_first()
        .and_then(|(key, rest)| table.get(key).and_then(|child| locate(child, rest)));
    deeper.or(here)
}

fn locate_value(value: &toml_edit::Value, path: &[String]) -> Option<usize> {
    let here = value.span().map(|s| s.start);
    let Some((segment, rest)) = path.split_first() else {
        return here;
    };
    let child = match value {
        toml_edit::Value::Array(array) => segment.parse::<usize>().ok().and_then(|i| array.get(i)),
        toml_edit::Value::InlineTable(table) => table.get(segment),
        _ => None,
    };
    child.and_then(|c| locate_value(c, rest)).or(here)
}

/// The dotted path of the `key = value` on 1-based `line`, from the table headers above it
/// (`routes[1].max_itemz`), so serde's "unknown field" errors name the table as well.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    for (number, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if number + 1 == line {
            let key = trimmed.split_once('=')?.0.trim().trim_matches('"');
            if key.is_empty() || trimmed.starts_with('[') {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|t| t.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let count = array_counts.entry(name.to_string()).or_insert(0);
            table = format!("{name}[{count}]");
            *count += 1;
        } else if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|t| t.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            // `[routes.profile]` belongs to the latest `[[routes]]` entry.
            table = match name.split_once('.') {
                Some((parent, child)) => match array_counts.get(parent) {
                    Some(count) => format!("{parent}[{}].{child}", count.saturating_sub(1)),
                    None => name.to_string(),
                },
                None => name.to_string(),
            };
        }
    }
    None
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

impl fmt::Display for LocatedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.key, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[upstreams.api]
addresses = ["127.0.0.1:9000"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
"#;

    #[test]
    fn minimal_config_gets_pds_defaults() {
        let config: Config = MINIMAL.parse().expect("valid");
        let route = &config.routes[0];
        assert_eq!(route.limits.max_items, 100);
        let DialectConfig::Envelope(envelope) = &route.dialect else {
            panic!("envelope route expected");
        };
        assert_eq!(envelope.base_path, "/v2");
        let default = config.default_upstream.as_ref().map(|u| u.name.as_str());
        assert_eq!(default, Some(config.upstreams[0].name.as_str()));
        assert!(std::sync::Arc::ptr_eq(
            &route.upstream,
            &config.upstreams[0]
        ));
    }

    /// Idle connections kept follow what can be in flight unless `pool_size` says otherwise.
    #[test]
    fn pool_size_defaults_to_max_in_flight() {
        let config: Config = MINIMAL.parse().expect("valid");
        assert_eq!(config.upstreams[0].pool_size, config.server.max_in_flight);
        assert_eq!(config.upstreams[0].pool_size, 1024);
        let text = format!("[server]\nmax_in_flight = 300\n{MINIMAL}");
        let config: Config = text.parse().expect("valid");
        assert_eq!(config.upstreams[0].pool_size, 300);
        let text = text.replace(
            "addresses = [\"127.0.0.1:9000\"]",
            "addresses = [\"127.0.0.1:9000\"]\npool_size = 16",
        );
        let config: Config = text.parse().expect("valid");
        assert_eq!(config.upstreams[0].pool_size, 16);
    }

    /// `pipeline_depth`: off (1) unless set, bounded, and only on HTTP/1.1 upstreams.
    #[test]
    fn pipeline_depth_is_bounded_and_only_for_http1() {
        let config: Config = MINIMAL.parse().expect("valid");
        assert_eq!(config.upstreams[0].pipeline_depth, 1);
        let with = |extra: &str| {
            MINIMAL.replace(
                "addresses = [\"127.0.0.1:9000\"]",
                &format!("addresses = [\"127.0.0.1:9000\"]\n{extra}"),
            )
        };
        let config: Config = with("pipeline_depth = 16").parse().expect("valid");
        assert_eq!(config.upstreams[0].pipeline_depth, 16);
        assert_eq!(config.upstreams[0].pipeline_max_delay.as_micros(), 1000);
        let config: Config = with("pipeline_max_delay = \"0.25ms\"")
            .parse()
            .expect("valid");
        assert_eq!(config.upstreams[0].pipeline_max_delay.as_micros(), 250);
        for extra in [
            "pipeline_depth = 0",
            "pipeline_depth = 65",
            "pipeline_depth = 8\nprotocol = \"h2c\"",
            "pipeline_max_delay = \"0ms\"",
        ] {
            let err = Config::parse(&with(extra), "x.toml")
                .expect_err(extra)
                .to_string();
            assert!(err.contains("pipeline_"), "{extra}: {err}");
        }
    }

    /// `[routes.rate_limit]` and `[rate_limits]`: defaults, and each mistake named by its key.
    #[test]
    fn rate_limits_are_checked_key_by_key() {
        let text = format!("{MINIMAL}[routes.rate_limit]\nitems_per_second = 50\n");
        let config: Config = text.parse().expect("valid");
        let limit = config.routes[0].rate_limit.as_ref().expect("a limit");
        assert_eq!(limit.burst, 50, "a second's worth by default");
        assert_eq!(limit.store, rate_limit::StoreKind::Local);
        for (extra, key) in [
            ("items_per_second = -1", "rate_limit.items_per_second"),
            ("items_per_second = 0.0001", "rate_limit.items_per_second"),
            (
                "items_per_second = 1\nstore = \"redis\"",
                "rate_limit.store",
            ),
            (
                "items_per_second = 1\nstore = \"memcached\"",
                "rate_limit.store",
            ),
            ("items_per_second = 1\nburst = 0", "rate_limit.burst"),
            (
                "items_per_second = 1\non_store_error = \"fail_open\"",
                "rate_limit",
            ),
            (
                "items_per_second = 10\nweights = { GET = 11 }",
                "rate_limit.weights.GET",
            ),
            ("items_per_second = 10\nlease = 5", "rate_limit.lease"),
        ] {
            let text = format!("{MINIMAL}[routes.rate_limit]\n{extra}\n");
            let err = Config::parse(&text, "x.toml").expect_err(extra).to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let text = format!(
            "{MINIMAL}[routes.rate_limit]\nitems_per_second = 1\nstore = \"redis\"\n\
             [rate_limits]\nredis_url = \"rediss://r:6379\"\n"
        );
        let err = Config::parse(&text, "x.toml").expect_err("tls").to_string();
        assert!(err.contains("rate_limits.redis_url"), "{err}");
    }

    /// `[routes.upstream_batching]`: jsonrpc routes only, `max_wait = "0"` allowed, bounds.
    #[test]
    fn upstream_batching_is_checked_key_by_key() {
        let text = format!("{MINIMAL}[routes.upstream_batching]\n");
        let err = Config::parse(&text, "x.toml")
            .expect_err("envelope")
            .to_string();
        assert!(err.contains("routes[0].upstream_batching"), "{err}");
        let rpc = "[upstreams.u]\naddresses = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/rpc\"\n\
                   dialect = \"jsonrpc\"\nupstream = \"u\"\nupstream_path = \"/rpc\"\n\
                   [routes.upstream_batching]\n";
        let config: Config = format!("{rpc}max_wait = \"0\"\n").parse().expect("valid");
        let batching = config.routes[0].upstream_batching.as_ref().expect("on");
        assert_eq!(batching.max_wait, std::time::Duration::ZERO);
        assert_eq!(batching.max_items, 50);
        for (extra, key) in [
            ("max_wait = \"2s\"", "upstream_batching.max_wait"),
            ("max_items = 1", "upstream_batching.max_items"),
            ("max_concurrent = 0", "upstream_batching.max_concurrent"),
        ] {
            let err = Config::parse(&format!("{rpc}{extra}\n"), "x.toml").expect_err(extra);
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
    }

    /// A single route: `{id}` once as a whole segment, `[routes.id_list]` and
    /// `[routes.upstream_batching]` required, `id_list` refused elsewhere.
    #[test]
    fn host_names_are_checked_for_their_form_without_resolving() {
        let text = |address: &str| {
            format!("[server]\nlisten = [\"127.0.0.1:1\"]\n[upstreams.u]\naddresses = [\"{address}\"]\n")
        };
        for address in [
            "api:80",
            "api.svc.cluster.local:8080",
            "10.0.0.1:80",
            "[::1]:80",
        ] {
            let config = Config::parse_with(&text(address), "x.toml", Resolve::SyntaxOnly)
                .unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(config.upstreams[0].address_names, [address]);
        }
        for address in [
            "api",
            "api:",
            "api:99999",
            ":80",
            "a..b:80",
            "a b:80",
            "a_b:80",
        ] {
            let err = Config::parse_with(&text(address), "x.toml", Resolve::SyntaxOnly)
                .expect_err(address)
                .to_string();
            assert!(
                err.contains("upstreams.u.addresses[0]") && err.contains("is not a host:port"),
                "{err}"
            );
        }
    }

    #[test]
    fn single_routes_are_checked() {
        let route = |path: &str, extra: &str| {
            format!(
                "[upstreams.u]\naddresses = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"{path}\"\n\
                 dialect = \"single\"\nupstream = \"u\"\n{extra}"
            )
        };
        let tables = "[routes.upstream_batching]\n[routes.id_list]\npath = \"/l\"\nids = \"ids\"\nid_field = \"id\"\n";
        let config: Config = route("/items/{id}", tables).parse().expect("valid");
        let DialectConfig::Single(single) = &config.routes[0].dialect else {
            panic!("a single route");
        };
        assert_eq!(single.id_of("/items/a-1"), Some("a-1"));
        assert_eq!(single.id_of("/items/a/b"), None);
        assert_eq!(single.id_of("/items/"), None);
        for (text, key) in [
            (route("/items/x{id}", tables), "routes[0].path"),
            (
                route("/items/{id}", "[routes.upstream_batching]\n"),
                "routes[0].id_list",
            ),
            (
                route(
                    "/items/{id}",
                    &tables.replace("[routes.upstream_batching]\n", ""),
                ),
                "routes[0]",
            ),
            (
                format!(
                    "{MINIMAL}[routes.id_list]\npath = \"/l\"\nids = \"i\"\nid_field = \"id\"\n"
                ),
                "routes[0].id_list",
            ),
        ] {
            let err = Config::parse(&text, "x.toml").expect_err(&text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = format!("{MINIMAL}max_itemz = 5\n");
        let err = Config::parse(&text, "x.toml").expect_err("unknown key");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "x.toml:8:1: routes[0].max_itemz: unknown field `max_itemz`: did you mean `max_items`?"
            ),
            "{message}"
        );
        let far = format!("{MINIMAL}colour = 5\n");
        let message = Config::parse(&far, "x.toml")
            .expect_err("unknown key")
            .to_string();
        assert!(!message.contains("did you mean"), "{message}");
        assert_eq!(edit_distance("max_in_flihgt", "max_in_flight"), 1);
    }

    /// `stream` takes the known formats once each; `progressive` is not for fan-out routes,
    /// whose reply needs every part first.
    #[test]
    fn stream_formats_are_checked() {
        let ok = format!("{MINIMAL}stream = [\"ndjson\", \"progressive\"]\n");
        let config: Config = ok.parse().expect("valid");
        assert_eq!(
            config.routes[0].stream,
            [StreamFormat::Ndjson, StreamFormat::Progressive]
        );
        let bad = format!("{MINIMAL}stream = [\"ndjson\", \"xml\", \"ndjson\"]\n");
        let message = Config::parse(&bad, "x.toml")
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("routes[0].stream: \"xml\" is not a stream format"),
            "{message}"
        );
        assert!(message.contains("\"ndjson\" is listed twice"), "{message}");
    }

    /// A meta route joins items under its own path by default, allows 50 of them, offers only
    /// the progressive reply, and refuses keys of other dialects.
    #[test]
    fn meta_routes_have_meta_defaults() {
        let text = "[upstreams.api]\naddresses = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/v21.0/\"\ndialect = \"meta\"\nstream = [\"progressive\"]\n";
        let config: Config = text.parse().expect("valid");
        let DialectConfig::Meta(meta) = &config.routes[0].dialect else {
            panic!("a meta route");
        };
        assert_eq!(meta.base_path, "/v21.0");
        assert_eq!(meta.version.as_deref(), Some("v21.0"));
        assert_eq!(config.routes[0].limits.max_items, 50);
        let bad = text.replace(
            "[\"progressive\"]",
            "[\"ndjson\"]\ndependencies = \"graph\"",
        );
        let message = Config::parse(&bad, "x.toml")
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("\"ndjson\" is not for meta routes"),
            "{message}"
        );
        assert!(
            message.contains("dependencies is not a setting of dialect \"meta\""),
            "{message}"
        );
    }

    /// `[routes.coalesce]`: GET and HEAD by default; unsafe methods and key_headers without
    /// public are refused; jsonrpc routes name JSON-RPC methods (and may give them a ttl).
    #[test]
    fn coalescing_is_checked() {
        let ok = format!("{MINIMAL}[routes.coalesce]\n");
        let config: Config = ok.parse().expect("valid");
        let coalesce = config.routes[0].coalesce.as_ref().expect("on");
        assert_eq!(coalesce.methods, [http::Method::GET, http::Method::HEAD]);
        assert!(!coalesce.public);
        let bad = format!("{MINIMAL}[routes.coalesce]\nmethods = [\"GET\", \"POST\"]\nkey_headers = [\"accept-language\"]\n");
        let message = Config::parse(&bad, "x.toml")
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("POST is not a safe method"), "{message}");
        assert!(message.contains("only with public = true"), "{message}");
        let rpc = "[upstreams.api]\naddresses = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/rpc\"\ndialect = \"jsonrpc\"\nupstream_path = \"/rpc\"\n[routes.coalesce]\n";
        let message = Config::parse(rpc, "x.toml")
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("jsonrpc routes name the JSON-RPC methods"),
            "{message}"
        );
        let named = rpc.replace(
            "[routes.coalesce]\n",
            "[routes.coalesce]\nmethods = [\"eth_blockNumber\"]\n[routes.cache]\nmethods = [\"eth_blockNumber\"]\nttl_by_method = { eth_blockNumber = \"2s\", eth_call = \"1s\" }\n",
        );
        let message = Config::parse(&named, "x.toml")
            .expect_err("invalid")
            .to_string();
        assert!(
            message.contains("\"eth_call\" is not in this table's methods"),
            "{message}"
        );
        let good = named.replace(", eth_call = \"1s\"", "");
        let config: Config = good.parse().expect("valid");
        let coalesce = config.routes[0].coalesce.as_ref().expect("on");
        assert_eq!(coalesce.rpc_methods, ["eth_blockNumber"]);
    }

    #[test]
    fn invalid_value_names_line_and_key_path() {
        let text = format!("{MINIMAL}max_items = 0\nconcurrency = -1\n");
        let err = Config::parse(&text, "x.toml").expect_err("invalid");
        let message = err.to_string();
        assert!(
            message.contains("x.toml:8:13: routes[0].max_items: 0 is not allowed (1..=10000)"),
            "{message}"
        );
        assert!(
            message.contains("x.toml:9:15: routes[0].concurrency"),
            "{message}"
        );
    }

    /// A route may tell its clients apart its own way; a bad key names the line and the
    /// forms there are, and a route without one falls back to the server's.
    #[test]
    fn client_keys_per_route() {
        let text = format!("{MINIMAL}client_key = \"header:X-Api-Key\"\n");
        let config: Config = text.parse().expect("valid");
        assert_eq!(
            config.routes[0].client_key,
            Some(ClientKey::Header(http::HeaderName::from_static(
                "x-api-key"
            )))
        );
        let config: Config = MINIMAL.parse().expect("valid");
        assert_eq!(config.routes[0].client_key, None);
        assert_eq!(config.server.admission.client_key, ClientKey::Ip);
        let text = format!("[server.admission]\nclient_key = \"forwarded\"\n{MINIMAL}");
        let config: Config = text.parse().expect("valid");
        assert_eq!(config.server.admission.client_key, ClientKey::Forwarded);
        let text = format!("{MINIMAL}client_key = \"cookie:session\"\n");
        let message = Config::parse(&text, "x.toml").expect_err("bad").to_string();
        assert!(
            message.contains(r#"x.toml:8:14: routes[0].client_key: "cookie:session" is not a client key ("ip", "forwarded" or "header:NAME")"#),
            "{message}"
        );
    }

    #[test]
    fn unresolvable_upstream_is_reported_not_panicked() {
        let text = MINIMAL.replace("127.0.0.1:9000", "no port here");
        let err = Config::parse(&text, "x.toml").expect_err("invalid");
        assert!(
            err.to_string().contains("upstreams.api.addresses[0]"),
            "{err}"
        );
    }

    /// A forwarded client header must not be one the item header guard refuses: the client's
    /// `X-Forwarded-For` would go out before batchgate's own, a `Content-Length` would break
    /// every body-less child.
    #[test]
    fn forward_headers_refuse_guarded_names() {
        let text = format!(
            "{MINIMAL}forward_headers = [\"authorization\", \"x-forwarded-for\", \"Content-Length\", \"X-HTTP-Method-Override\", \"true-client-ip\", \"proxy-authorization\", \"x-pds-device-id\"]\n"
        );
        let message = Config::parse(&text, "x.toml")
            .expect_err("forbidden names")
            .to_string();
        let expected = [
            r#"x.toml:8:37: routes[0].forward_headers[1]: "x-forwarded-for" is set by the proxy and cannot be forwarded"#,
            r#"x.toml:8:56: routes[0].forward_headers[2]: "Content-Length" frames or routes the HTTP message and cannot be forwarded"#,
            r#"routes[0].forward_headers[3]: "X-HTTP-Method-Override" overrides the request path or method and cannot be forwarded"#,
            r#"routes[0].forward_headers[4]: "true-client-ip" is set by the proxy and cannot be forwarded"#,
            r#"routes[0].forward_headers[5]: "proxy-authorization" is meant for a proxy and cannot be forwarded"#,
        ];
        for line in expected {
            assert!(message.contains(line), "{line}\nin:\n{message}");
        }
        assert_eq!(message.lines().count(), expected.len(), "{message}");
    }

    const FANOUT: &str = r#"
[upstreams.api]
addresses = ["127.0.0.1:9000"]

[[routes]]
path = "/users/batch-get"
dialect = "fanout"

[routes.ids]
param = "ids"

[routes.request]
path = "/users/{id}"

[routes.reply]
list_field = "users"
"#;

    /// A fan-out header rule that forwards the client's value is held to the same list; a
    /// validate-only rule (`forward = false`) is not, as nothing is copied.
    #[test]
    fn forwarded_fanout_header_rules_refuse_guarded_names() {
        let rule = |name: &str, forward: &str| {
            format!("\n[[routes.headers]]\nname = \"{name}\"\n{forward}\n")
        };
        let text = format!(
            "{FANOUT}{}{}{}{}",
            rule("X-Auth-Token", ""),
            rule("X-Real-IP", ""),
            rule("Host", "forward = true"),
            rule("X-Forwarded-For", "forward = false"),
        );
        let message = Config::parse(&text, "x.toml")
            .expect_err("forbidden names")
            .to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(
            lines[0].ends_with(r#"routes[0].headers[1].name: "X-Real-IP" is set by the proxy and cannot be forwarded (with forward = false it is only validated)"#),
            "{message}"
        );
        assert!(
            lines[1].contains(r#"routes[0].headers[2].name: "Host" frames or routes"#),
            "{message}"
        );

        let text = format!(
            "{FANOUT}{}{}",
            rule("X-Auth-Token", ""),
            rule("X-Forwarded-For", "forward = false")
        );
        let config: Config = text.parse().expect("validate-only rules may name anything");
        let DialectConfig::Fanout(fanout) = &config.routes[0].dialect else {
            panic!("fanout route expected");
        };
        assert_eq!(fanout.headers.len(), 2);
        assert!(fanout.headers[0].forward && !fanout.headers[1].forward);
    }

    /// `Instant + batch_timeout` panics on overflow: a huge duration is a located problem.
    #[test]
    fn durations_above_a_day_are_refused() {
        let text =
            format!("{MINIMAL}batch_timeout = \"3000000000000000h\"\nitem_timeout = \"24h\"\n");
        let message = Config::parse(&text, "x.toml")
            .expect_err("too long")
            .to_string();
        assert_eq!(
            message,
            r#"x.toml:8:17: routes[0].batch_timeout: "3000000000000000h" is too long (at most "24h")"#
        );
        let text = MINIMAL.replace("[[routes]]", "idle_timeout = \"25h\"\n\n[[routes]]");
        let message = Config::parse(&text, "x.toml")
            .expect_err("too long")
            .to_string();
        assert!(
            message.contains("upstreams.api.idle_timeout: \"25h\" is too long"),
            "{message}"
        );
    }

    /// pingora takes the shutdown timings in whole seconds (`.as_secs()` turned "500ms"
    /// into 0): fractions are refused rather than truncated.
    #[test]
    fn shutdown_timings_are_whole_seconds() {
        let text = format!(
            "[server]\ngrace_period = \"500ms\"\ngraceful_shutdown_timeout = \"1.5s\"\n{MINIMAL}"
        );
        let message = Config::parse(&text, "x.toml")
            .expect_err("fractions")
            .to_string();
        assert!(
            message.contains(
                r#"x.toml:2:16: server.grace_period: "500ms" must be whole seconds, e.g. "1s""#
            ),
            "{message}"
        );
        assert!(
            message.contains(
                r#"x.toml:3:29: server.graceful_shutdown_timeout: "1.5s" must be whole seconds"#
            ),
            "{message}"
        );
        let text = format!(
            "[server]\ngrace_period = \"2000ms\"\ngraceful_shutdown_timeout = \"1m\"\n{MINIMAL}"
        );
        let config: Config = text.parse().expect("whole seconds");
        assert_eq!(config.server.grace_period.as_secs(), 2);
        assert_eq!(config.server.graceful_shutdown_timeout.as_secs(), 60);
    }
}
