//! Validation of envelope routes (`POST /v2/batch`): the base path children are joined to,
//! the child methods, resources and URL prefixes allowed, and the error format.
//!
//! The URL and header guards are compiled here, once, from those settings.

use super::error_format::{error_format, ErrorFormat};
use super::file::RouteSection;
use super::problems::Problems;
use super::values::is_route_path;
use crate::guard::{HeaderGuard, UrlGuard};
use http::Method;

/// Child methods an envelope route allows unless configured.
pub const DEFAULT_ENVELOPE_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// `batch_paths` are every batch route of the file, which no child may target.
pub(super) fn envelope_config(
    section: &RouteSection,
    i: &str,
    batch_paths: &[String],
    problems: &mut Problems,
) -> Option<EnvelopeConfig> {
    let base_path = base_path(section, i, problems);
    let allowed_methods = envelope_methods(section, i, problems);
    let prefixes = url_prefixes(section, i, "/file/", problems);
    if section
        .allowed_resources
        .as_ref()
        .is_some_and(Vec::is_empty)
    {
        problems.push(
            &["routes", i, "allowed_resources"],
            "an empty list would refuse every batch; leave the key out to allow any",
        );
    }
    let origins = public_origins(section, i, problems);
    let error_format = error_format(section, i, super::error_format::PDS_ERROR_FORMAT, problems);
    Some(EnvelopeConfig {
        error_format,
        url_guard: UrlGuard::new(base_path.clone(), prefixes, batch_paths.to_vec())
            .with_origins(&origins),
        sequential: super::values::flag(
            section.sequential,
            false,
            &["routes", i, "sequential"],
            problems,
        ),
        stop_on_failure: super::values::flag(
            section.stop_on_failure,
            false,
            &["routes", i, "stop_on_failure"],
            problems,
        ),
        dependencies: match section.dependencies.as_deref() {
            None => {
                problems.filled(&["routes", i, "dependencies"], "off");
                false
            }
            Some("off") => false,
            Some("graph") => true,
            Some(other) => {
                problems.push(
                    &["routes", i, "dependencies"],
                    format!("{other:?} is not a dependency rule (\"off\" or \"graph\")"),
                );
                false
            }
        },
        body_rule: match section.reply_body.as_deref() {
            None => {
                problems.filled(&["routes", i, "reply_body"], "pds");
                BodyRule::Pds
            }
            Some("pds") => BodyRule::Pds,
            Some("graph") => BodyRule::Graph,
            Some(other) => {
                problems.push(
                    &["routes", i, "reply_body"],
                    format!("{other:?} is not a body rule (\"pds\" or \"graph\")"),
                );
                BodyRule::Pds
            }
        },
        base_path,
        allowed_methods,
        allowed_resources: section.allowed_resources.clone(),
        header_guard: HeaderGuard,
    })
}

/// `http://` or `https://` and a host[:port] of visible characters, nothing after it.
/// `allowed_url_prefixes`, each an absolute path (`example` shows one in the error).
pub(super) fn url_prefixes(
    section: &RouteSection,
    i: &str,
    example: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let prefixes = section.allowed_url_prefixes.clone();
    for (j, prefix) in prefixes.iter().flatten().enumerate() {
        if !is_route_path(prefix) {
            problems.push(
                &["routes", i, "allowed_url_prefixes", &j.to_string()],
                format!("{prefix:?} must be an absolute path such as {example:?}"),
            );
        }
    }
    prefixes
}

/// `public_origins`, each an origin.
pub(super) fn public_origins(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Vec<String> {
    let origins = section.public_origins.clone().unwrap_or_default();
    for (j, origin) in origins.iter().enumerate() {
        if !is_origin(origin) {
            problems.push(
                &["routes", i, "public_origins", &j.to_string()],
                format!("{origin:?} must be an origin such as \"https://api.example.com\" (scheme and host[:port], no path)"),
            );
        }
    }
    origins
}

fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

pub(super) fn base_path(section: &RouteSection, i: &str, problems: &mut Problems) -> String {
    // Default base path: the route's parent, so `/v2/batch` children `/file/get` reach
    // `/v2/file/get` (PDS) and `/v1.0/$batch` children `/me` reach `/v1.0/me` (Graph).
    let base_path = section.base_path.clone().unwrap_or_else(|| {
        let parent = section
            .path
            .rsplit_once('/')
            .map(|(parent, _)| parent.to_string())
            .unwrap_or_default();
        problems.filled(&["routes", i, "base_path"], parent.as_str());
        parent
    });
    if !base_path.is_empty() && (!is_route_path(&base_path) || base_path.ends_with('/')) {
        problems.push(
            &["routes", i, "base_path"],
            format!("{base_path:?} must be empty or an absolute path without a trailing '/'"),
        );
    }
    base_path
}

pub(super) fn envelope_methods(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Vec<Method> {
    let method_names: Vec<String> = section.allowed_methods.clone().unwrap_or_else(|| {
        let names: Vec<String> = DEFAULT_ENVELOPE_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect();
        problems.filled(
            &["routes", i, "allowed_methods"],
            names.iter().collect::<toml_edit::Array>(),
        );
        names
    });
    super::values::upper_case_methods(&method_names, &["routes", i, "allowed_methods"], problems)
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
