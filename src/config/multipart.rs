//! Validation of multipart routes (Google API HTTP batch and OData `$batch`, RFC 2046
//! `multipart/mixed` of `application/http` parts): where part paths go, which methods and
//! url prefixes are allowed, the part limits, and how reply parts name their request.

use super::envelope::{envelope_methods, public_origins, url_prefixes};
use super::error_format::error_format;
use super::file::RouteSection;
use super::problems::Problems;
use super::values::{bounded, is_route_path};
use super::ErrorFormat;
use crate::guard::{HeaderGuard, UrlGuard};
use http::Method;

/// Google's error shape (`{"error":{...}}`), the multipart default.
pub const GOOGLE_ERROR_FORMAT: &str = r#"{"error":{"status":"{code}","message":"{message}"}}"#;

/// MIME and HTTP head of one part together, unless configured (`max_part_head_bytes`).
pub const DEFAULT_MAX_PART_HEAD_BYTES: usize = 16 * 1024;

/// How a reply part names the request part it answers (`reply_content_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentIdRule {
    /// `Content-ID: <response-ID>` for a request's `<ID>` (Google; the default).
    #[default]
    ResponsePrefixed,
    /// The request's own `Content-ID` (OData).
    Same,
}

/// Settings of a multipart batch route.
#[derive(Debug, Clone)]
pub struct MultipartConfig {
    /// Where a relative part target (OData's `Customers('ALFKI')`) is resolved: the batch
    /// route's parent, with a trailing '/' (`/service/$batch` -> `/service/`).
    pub relative_base: String,
    pub allowed_methods: Vec<Method>,
    pub url_guard: UrlGuard,
    pub header_guard: HeaderGuard,
    pub error_format: ErrorFormat,
    /// Largest part (its MIME headers, HTTP head and body), bytes.
    pub max_part_bytes: usize,
    /// Largest MIME headers plus HTTP head of one part, bytes.
    pub max_part_head_bytes: usize,
    pub content_id: ContentIdRule,
}

/// `batch_paths` are every batch route of the file, which no part may target.
pub(super) fn multipart_config(
    section: &RouteSection,
    i: &str,
    batch_paths: &[String],
    problems: &mut Problems,
) -> Option<MultipartConfig> {
    // Google's parts carry the whole path (`/drive/v3/files/x`): nothing is joined in front
    // unless configured.
    let base_path = section.base_path.clone().unwrap_or_default();
    if !base_path.is_empty() && (!is_route_path(&base_path) || base_path.ends_with('/')) {
        problems.push(
            &["routes", i, "base_path"],
            format!("{base_path:?} must be empty or an absolute path without a trailing '/'"),
        );
    }
    let prefixes = url_prefixes(section, i, "/drive/v3/", problems);
    let origins = public_origins(section, i, problems);
    let at = |key: &'static str| vec!["routes", i, key];
    let max_part_bytes = bounded(
        section.max_part_bytes,
        usize::MAX,
        1,
        i64::MAX,
        &at("max_part_bytes"),
        problems,
    );
    let max_part_head_bytes = bounded(
        section.max_part_head_bytes,
        DEFAULT_MAX_PART_HEAD_BYTES,
        64,
        1 << 20,
        &at("max_part_head_bytes"),
        problems,
    );
    let content_id = match super::values::noted(
        section.reply_content_id.as_deref(),
        "response-prefixed",
        &at("reply_content_id"),
        problems,
    ) {
        None | Some("response-prefixed") => ContentIdRule::ResponsePrefixed,
        Some("same") => ContentIdRule::Same,
        Some(other) => {
            problems.push(
                &at("reply_content_id"),
                format!("{other:?} is not a Content-ID rule (\"response-prefixed\" or \"same\")"),
            );
            ContentIdRule::ResponsePrefixed
        }
    };
    // The url guard joins `base_path` in front of every target: a relative one is resolved
    // against the route's parent as seen from under the base path.
    let parent = section
        .path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent);
    let parent = match parent.strip_prefix(base_path.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => parent,
    };
    let relative_base = format!("{parent}/");
    Some(MultipartConfig {
        relative_base,
        allowed_methods: envelope_methods(section, i, problems),
        url_guard: UrlGuard::new(base_path, prefixes, batch_paths.to_vec()).with_origins(&origins),
        header_guard: HeaderGuard,
        error_format: error_format(section, i, GOOGLE_ERROR_FORMAT, problems),
        max_part_bytes,
        max_part_head_bytes,
        content_id,
    })
}
