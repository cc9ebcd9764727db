//! Validation of Meta Graph batch routes (`dialect = "meta"`): the base path each
//! `relative_url` is joined to (by default the route path, e.g. `/v21.0`), the API version it
//! names, and the methods and url prefixes items may use.

use super::envelope::{envelope_methods, url_prefixes};
use super::file::RouteSection;
use super::problems::Problems;
use super::values::is_route_path;
use crate::guard::{HeaderGuard, UrlGuard};
use http::Method;

/// Meta's own limit of requests per batch: the default `max_items` of a meta route.
pub const META_MAX_ITEMS: usize = 50;

/// Settings of a Meta Graph batch route.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Joined in front of each `relative_url` (`me/feed` is sent as `/v21.0/me/feed`).
    pub base_path: String,
    /// The Graph API version the base path ends in (`v21.0`), if it does: a `relative_url`
    /// that starts with this version is the same path; one naming another version is refused.
    pub version: Option<String>,
    pub allowed_methods: Vec<Method>,
    pub url_guard: UrlGuard,
    pub header_guard: HeaderGuard,
}

/// `batch_paths` are every batch route of the file, which no item may target.
pub(super) fn meta_config(
    section: &RouteSection,
    i: &str,
    batch_paths: &[String],
    problems: &mut Problems,
) -> Option<MetaConfig> {
    // Graph SDKs post the batch to the version root (`POST /v21.0/`), whose items are paths
    // under it: the route path itself is the default base.
    let base_path = section
        .base_path
        .clone()
        .unwrap_or_else(|| section.path.trim_end_matches('/').to_string());
    if !base_path.is_empty() && (!is_route_path(&base_path) || base_path.ends_with('/')) {
        problems.push(
            &["routes", i, "base_path"],
            format!("{base_path:?} must be empty or an absolute path without a trailing '/'"),
        );
    }
    let version = base_path
        .rsplit('/')
        .next()
        .filter(|segment| is_graph_version(segment))
        .map(str::to_string);
    let prefixes = url_prefixes(section, i, "/me", problems);
    Some(MetaConfig {
        url_guard: UrlGuard::new(base_path.clone(), prefixes, batch_paths.to_vec()),
        base_path,
        version,
        allowed_methods: envelope_methods(section, i, problems),
        header_guard: HeaderGuard,
    })
}

/// A Graph API version segment: `v` and a dotted number (`v21.0`).
pub fn is_graph_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|number| {
        let mut parts = number.split('.');
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit())
            })
        };
        numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
    })
}
