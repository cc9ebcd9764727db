//! Validation of a jsonrpc route's `[routes.upstream_batching]`: single calls of many
//! clients gathered into one upstream JSON-RPC array (`crate::upstream_batch`), and when it
//! is sent.

use super::file::{RouteSection, UpstreamBatchingSection};
use super::problems::Problems;
use std::time::Duration;

/// When a gathered upstream batch is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamBatchConfig {
    /// Calls at which it is sent at once.
    pub max_items: usize,
    /// Bytes of calls at which it is sent at once.
    pub max_bytes: usize,
    /// The longest the first call waits for others (zero: only what is already queued).
    pub max_wait: Duration,
    /// Upstream batches of the route in flight at once; more wait for one to finish.
    pub max_concurrent: usize,
}

pub const DEFAULT_MAX_ITEMS: i64 = 50;
pub const DEFAULT_MAX_BYTES: i64 = 256 * 1024;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(2);
pub const DEFAULT_MAX_CONCURRENT: i64 = 16;
/// A wait past this is a latency no single call should pay for batching.
const MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) fn upstream_batch_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<UpstreamBatchConfig> {
    let batching: &UpstreamBatchingSection = section.upstream_batching.as_ref()?;
    let at = |key: &'static str| ["routes", i, "upstream_batching", key];
    if section.dialect != "jsonrpc" && section.dialect != "single" {
        problems.push(
            &["routes", i, "upstream_batching"],
            "only for jsonrpc routes (calls gathered into upstream arrays) and single routes (into id-list calls)",
        );
    }
    let max_wait = match batching.max_wait.as_deref() {
        None => DEFAULT_MAX_WAIT,
        Some("0" | "0ms" | "0s") => Duration::ZERO,
        Some(_) => {
            let wait = super::values::duration(
                &batching.max_wait,
                DEFAULT_MAX_WAIT,
                &at("max_wait"),
                problems,
            );
            if wait > MAX_WAIT {
                problems.push(
                    &at("max_wait"),
                    "at most \"1s\": every lone call waits this long",
                );
            }
            wait
        }
    };
    Some(UpstreamBatchConfig {
        max_items: super::values::bounded(
            batching.max_items,
            DEFAULT_MAX_ITEMS as usize,
            2,
            10_000,
            &at("max_items"),
            problems,
        ),
        max_bytes: super::values::bounded(
            batching.max_bytes,
            DEFAULT_MAX_BYTES as usize,
            1024,
            64 << 20,
            &at("max_bytes"),
            problems,
        ),
        max_wait,
        max_concurrent: super::values::bounded(
            batching.max_concurrent,
            DEFAULT_MAX_CONCURRENT as usize,
            1,
            10_000,
            &at("max_concurrent"),
            problems,
        ),
    })
}

/// A single-id route (`dialect = "single"`): where the id is in its path, and the upstream
/// id-list call its calls are gathered into (`[routes.id_list]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SingleConfig {
    /// The route path before and after `{id}`.
    pub prefix: String,
    pub suffix: String,
    pub id_list: std::sync::Arc<IdListConfig>,
}

/// The upstream id-list call: `GET path?OTHER&IDS=1&IDS=2` (or `POST` with `{"IDS":[...]}`),
/// answered with a list of entries, each naming its id.
#[derive(Debug, Clone, PartialEq)]
pub struct IdListConfig {
    pub method: http::Method,
    pub path: String,
    /// The query parameter (GET) or body member (POST) that carries the ids.
    pub ids: String,
    /// The reply member holding the entries (empty: the reply is the list).
    pub list_field: String,
    /// The entry member holding its id.
    pub id_field: String,
    /// The single answer built from an entry: name -> JSON pointer into it (empty: the entry).
    pub answer: std::collections::BTreeMap<String, String>,
    /// The status of a call whose id the list lacks.
    pub missing_status: u16,
}

/// Longest id taken from a path.
pub const MAX_ID_BYTES: usize = 128;

impl SingleConfig {
    /// The id in `path`, if `path` is this route's with a usable id in place of `{id}`.
    pub fn id_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        let id = path
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        let usable = !id.is_empty()
            && id.len() <= MAX_ID_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        usable.then_some(id)
    }
}

pub(super) fn single_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<SingleConfig> {
    let at = |key: &'static str| ["routes", i, "id_list", key];
    let (prefix, suffix) = match section.path.split_once("{id}") {
        Some((prefix, suffix)) if !suffix.contains("{id}") && prefix.ends_with('/') => {
            (prefix.to_string(), suffix.to_string())
        }
        _ => {
            problems.push(
                &["routes", i, "path"],
                "a single route's path names its id once, as a whole segment: \"/items/{id}\" or \"/items/{id}/url\"",
            );
            return None;
        }
    };
    if section.upstream_batching.is_none() {
        problems.push(
            &["routes", i],
            "a single route gathers its calls: [routes.upstream_batching] is required",
        );
    }
    let Some(list) = section.id_list.as_ref() else {
        problems.push(
            &["routes", i, "id_list"],
            "required: the upstream id-list call",
        );
        return None;
    };
    let method = match list.method.as_deref() {
        None | Some("GET") => http::Method::GET,
        Some("POST") => http::Method::POST,
        Some(other) => {
            problems.push(
                &at("method"),
                format!("{other:?} is not \"GET\" or \"POST\""),
            );
            http::Method::GET
        }
    };
    if !super::values::is_route_path(&list.path) {
        problems.push(
            &at("path"),
            format!("{:?} must be an absolute path without a query", list.path),
        );
    }
    if list.ids.is_empty() || list.id_field.is_empty() {
        problems.push(
            &["routes", i, "id_list"],
            "ids and id_field must not be empty",
        );
    }
    let mut answer = std::collections::BTreeMap::new();
    for (name, pointer) in list.answer.iter().flatten() {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            problems.push(
                &["routes", i, "id_list", "answer", name.as_str()],
                format!("{pointer:?} is not a JSON pointer (\"/url\")"),
            );
        }
        answer.insert(name.clone(), pointer.clone());
    }
    let missing_status = super::values::bounded(
        list.missing_status,
        404,
        200,
        599,
        &at("missing_status"),
        problems,
    ) as u16;
    Some(SingleConfig {
        prefix,
        suffix,
        id_list: std::sync::Arc::new(IdListConfig {
            method,
            path: list.path.clone(),
            ids: list.ids.clone(),
            list_field: list.list_field.clone().unwrap_or_default(),
            id_field: list.id_field.clone(),
            answer,
            missing_status,
        }),
    })
}
