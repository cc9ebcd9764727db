//! Validation of a route's `[routes.coalesce]`: identical items in flight at once are sent
//! upstream once (`crate::coalesce`). Which methods may be, whether the data is the same for
//! every caller (`public`), and which forwarded headers still tell answers apart then.

use super::file::{CoalesceSection, RouteSection};
use super::problems::Problems;
use http::{HeaderName, Method};

/// Methods coalesced unless configured: the ones whose answers do not depend on being sent
/// once per caller (RFC 9110 safe methods with a body worth sharing).
pub const DEFAULT_COALESCE_METHODS: &[&str] = &["GET", "HEAD"];

/// A route's coalescing settings.
#[derive(Debug, Clone)]
pub struct CoalesceConfig {
    pub methods: Vec<Method>,
    /// The answers are the same for every caller: items of different callers share. Off,
    /// the forwarded headers (the caller's credentials) and the caller's `client_key` are part
    /// of the key, so different callers never share.
    pub public: bool,
    /// With `public`: the forwarded headers that still change the answer (`accept-language`).
    pub key_headers: Vec<HeaderName>,
}

pub(super) fn coalesce_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<CoalesceConfig> {
    let coalesce: &CoalesceSection = section.coalesce.as_ref()?;
    let at = |key: &'static str| ["routes", i, "coalesce", key];
    if section.dialect == "jsonrpc" {
        problems.push(
            &["routes", i, "coalesce"],
            "not for jsonrpc routes: a JSON-RPC answer carries its call's id, so one answer cannot serve two calls",
        );
        return None;
    }
    let names: Vec<String> = coalesce.methods.clone().unwrap_or_else(|| {
        DEFAULT_COALESCE_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect()
    });
    let methods = super::values::upper_case_methods(&names, &at("methods"), problems);
    for method in &methods {
        if !method.is_safe() {
            problems.push(
                &at("methods"),
                format!("{method} is not a safe method: two callers' {method}s are two requests, never one"),
            );
        }
    }
    let public = coalesce.public.unwrap_or(false);
    let mut key_headers = Vec::new();
    for (j, name) in coalesce.key_headers.iter().flatten().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => key_headers.push(header),
            Err(_) => problems.push(
                &["routes", i, "coalesce", "key_headers", &j.to_string()],
                format!("{name:?} is not a header name"),
            ),
        }
    }
    if !public && !key_headers.is_empty() {
        problems.push(
            &at("key_headers"),
            "only with public = true: otherwise every forwarded header is part of the key already",
        );
    }
    Some(CoalesceConfig {
        methods,
        public,
        key_headers,
    })
}
