//! Validation of JSON-RPC 2.0 batch routes: the upstream path each element is POSTed to, the
//! allowed and denied methods, and the vendor profile of batch-level errors.

use super::file::{JsonRpcProfileSection, RouteSection};
use super::runtime::{JsonRpcConfig, JsonRpcProfile, Problems, RpcError, JSONRPC_INVALID_REQUEST};
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
        match crate::dialect::jsonrpc::method_key(name) {
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
    JsonRpcProfile {
        too_many,
        empty,
        batch_errors_as_array,
        unique_ids: profile.and_then(|p| p.unique_ids).unwrap_or(false),
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
