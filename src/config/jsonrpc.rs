//! Validation of JSON-RPC 2.0 batch routes: the upstream path each element is POSTed to, the
//! allowed and denied methods, and the vendor profile of batch-level errors; and the one
//! rule for comparing method names (`method_key`), which the dialect applies to calls.

use super::file::{JsonRpcProfileSection, RouteSection};
use super::problems::Problems;
use super::values::is_target;

pub(super) fn jsonrpc_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<JsonRpcConfig> {
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
    let allowed_methods = method_list(&section.allowed_methods, i, "allowed_methods", problems);
    let denied_methods =
        method_list(&section.denied_methods, i, "denied_methods", problems).unwrap_or_default();
    Some(JsonRpcConfig {
        upstream_path,
        allowed_methods,
        denied_methods,
        profile: jsonrpc_profile(section.profile.as_ref(), i, problems),
    })
}

/// A JSON-RPC method list; names are compared verbatim, so only an empty one is refused.
fn method_list(
    list: &Option<Vec<String>>,
    i: &str,
    key: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let mut normalised = Vec::new();
    for (j, name) in list.iter().flatten().enumerate() {
        match method_key(name) {
            Some(key) => normalised.push(key),
            None => problems.push(
                &["routes", i, key, &j.to_string()],
                "a method name must be non-empty, without surrounding whitespace or control characters",
            ),
        }
    }
    // Kept in the form calls are compared in (`method_key`): case variants are one method.
    list.as_ref().map(|_| normalised)
}

fn jsonrpc_profile(
    profile: Option<&JsonRpcProfileSection>,
    i: &str,
    problems: &mut Problems,
) -> JsonRpcProfile {
    let too_many = rpc_error(
        profile.and_then(|p| p.too_many_code),
        profile.and_then(|p| p.too_many_message.as_ref()),
        &["routes", i, "profile", "too_many_code"],
        problems,
    );
    let empty = rpc_error(
        profile.and_then(|p| p.empty_code),
        profile.and_then(|p| p.empty_message.as_ref()),
        &["routes", i, "profile", "empty_code"],
        problems,
    );
    let batch_errors = profile.and_then(|p| p.batch_errors.as_deref());
    let at = ["routes", i, "profile", "batch_errors"];
    let batch_errors_as_array = match super::values::noted(batch_errors, "object", &at, problems) {
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
    JsonRpcProfile {
        too_many,
        empty,
        batch_errors_as_array,
        unique_ids: super::values::flag(
            profile.and_then(|p| p.unique_ids),
            false,
            &["routes", i, "profile", "unique_ids"],
            problems,
        ),
    }
}

/// A batch-level error answer; the code must lie in the range JSON-RPC reserves for errors
/// (-32768..=-32000).
fn rpc_error(
    code: Option<i64>,
    message: Option<&String>,
    path: &[&str],
    problems: &mut Problems,
) -> RpcError {
    let code = code.unwrap_or(JSONRPC_INVALID_REQUEST);
    if !(-32768..=-32000).contains(&code) {
        problems.push(
            path,
            format!("{code} is not a JSON-RPC server error code (-32768..=-32000)"),
        );
    }
    RpcError {
        code,
        message: message
            .cloned()
            .unwrap_or_else(|| "Invalid Request".to_string()),
    }
}

/// A method name as the method policy compares it: case-folded, since dispatchers that look
/// methods up case-insensitively would otherwise run a denied `Admin.Delete`. `None` for a
/// name no dispatcher should see: empty, with surrounding whitespace, or with a control or
/// invisible formatting character anywhere (`"delete\u0000"`, a zero-width space), which
/// lenient dispatchers trim or ignore.
pub fn method_key(name: &str) -> Option<String> {
    usable_method(name).then(|| fold_case(name))
}

/// Lower-cases `name` the way the most lenient case-insensitive comparison would: a
/// character whose lower- or upper-case form is ASCII becomes that ASCII letter, so `İ`
/// (dotted capital I), `ı` (dotless i), `ſ` (long s) and `K` (Kelvin sign) fold to `i`, `i`,
/// `s` and `k`, as Java's `equalsIgnoreCase` and .NET's invariant comparisons match them.
pub fn fold_case(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii() {
                return c.to_ascii_lowercase();
            }
            let lower = c.to_lowercase().next().unwrap_or(c);
            let upper = c.to_uppercase().next().unwrap_or(c);
            if lower.is_ascii() {
                lower
            } else if upper.is_ascii() {
                upper.to_ascii_lowercase()
            } else {
                lower
            }
        })
        .collect()
}

/// Whether a called method name may go upstream at all (see `method_key`).
pub fn usable_method(name: &str) -> bool {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    };
    !name.is_empty() && name.trim() == name && !name.chars().any(invisible)
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
