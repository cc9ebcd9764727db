//! Validation of a route's `[routes.coalesce]`: identical items in flight at once are sent
//! upstream once (`crate::coalesce`). Which methods may be, whether the data is the same for
//! every caller (`public`), and which forwarded headers still tell answers apart then.

use super::file::{CacheSection, CoalesceSection, RouteSection};
use super::problems::Problems;
use http::{HeaderName, Method};

/// Methods coalesced unless configured: the ones whose answers do not depend on being sent
/// once per caller (RFC 9110 safe methods with a body worth sharing).
pub const DEFAULT_COALESCE_METHODS: &[&str] = &["GET", "HEAD"];

/// A route's coalescing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CoalesceConfig {
    /// HTTP methods shared (every dialect but jsonrpc).
    pub methods: Vec<Method>,
    /// JSON-RPC method names shared (jsonrpc routes, where every call is a POST): required
    /// there, since any call may write.
    pub rpc_methods: Vec<String>,
    /// The answers are the same for every caller: items of different callers share. Off,
    /// the forwarded headers (the caller's credentials) and the caller's `client_key` are part
    /// of the key, so different callers never share.
    pub public: bool,
    /// With `public`: the forwarded headers that still change the answer (`accept-language`).
    pub key_headers: Vec<HeaderName>,
}

/// `[routes.cache]`: fresh answers of identical items are served from memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Which items are identical: the same rules as coalescing.
    pub key: std::sync::Arc<CoalesceConfig>,
    /// The cache's bound: the bytes of the answers it holds (bodies and headers).
    pub max_bytes: u64,
    /// How long an answer that says nothing of its freshness stays fresh (none: such answers
    /// are not kept). Never overrides `no-store`, `no-cache` or `private`.
    pub ttl: Option<std::time::Duration>,
    /// jsonrpc routes: how long each method's results stay fresh (its answers carry no
    /// freshness of their own); a method without one is not kept.
    pub ttl_by_method: std::collections::BTreeMap<String, std::time::Duration>,
}

/// The default bound of a route's cache.
pub const DEFAULT_CACHE_BYTES: i64 = 64 << 20;

pub(super) fn coalesce_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<CoalesceConfig> {
    let coalesce: &CoalesceSection = section.coalesce.as_ref()?;
    key_rules(
        section,
        i,
        "coalesce",
        (&coalesce.methods, coalesce.public, &coalesce.key_headers),
        problems,
    )
}

pub(super) fn cache_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<CacheConfig> {
    let cache: &CacheSection = section.cache.as_ref()?;
    let key = key_rules(
        section,
        i,
        "cache",
        (&cache.methods, cache.public, &cache.key_headers),
        problems,
    )?;
    let max_bytes = super::values::bounded(
        cache.max_bytes,
        DEFAULT_CACHE_BYTES as usize,
        1024,
        1 << 40,
        &["routes", i, "cache", "max_bytes"],
        problems,
    ) as u64;
    let ttl = cache.ttl.as_ref().map(|text| {
        super::values::duration(
            &Some(text.clone()),
            std::time::Duration::ZERO,
            &["routes", i, "cache", "ttl"],
            problems,
        )
    });
    let mut ttl_by_method = std::collections::BTreeMap::new();
    for (method, text) in cache.ttl_by_method.iter().flatten() {
        let path = ["routes", i, "cache", "ttl_by_method", method.as_str()];
        if section.dialect != "jsonrpc" {
            problems.push(
                &path,
                "only for jsonrpc routes (others take freshness from Cache-Control, or ttl)",
            );
        } else if !key.rpc_methods.contains(method) {
            problems.push(&path, format!("{method:?} is not in this table's methods"));
        }
        let ttl = super::values::duration(
            &Some(text.clone()),
            std::time::Duration::ZERO,
            &path,
            problems,
        );
        ttl_by_method.insert(method.clone(), ttl);
    }
    Some(CacheConfig {
        key: std::sync::Arc::new(key),
        max_bytes,
        ttl,
        ttl_by_method,
    })
}

/// What makes two items identical, for coalescing and for the cache alike.
fn key_rules(
    section: &RouteSection,
    i: &str,
    table: &'static str,
    (methods, public, key_headers): (&Option<Vec<String>>, Option<bool>, &Option<Vec<String>>),
    problems: &mut Problems,
) -> Option<CoalesceConfig> {
    let at = |key: &'static str| ["routes", i, table, key];
    if section.dialect == "jsonrpc" {
        // Every call is a POST: the list names JSON-RPC methods, and nothing is shared unless
        // named (any call may write).
        let rpc_methods = methods.clone().unwrap_or_default();
        if rpc_methods.is_empty() {
            problems.push(
                &at("methods"),
                "jsonrpc routes name the JSON-RPC methods whose calls may share an answer (reads such as \"eth_blockNumber\")",
            );
        }
        if public.is_some() || key_headers.is_some() {
            problems.push(
                &["routes", i, table],
                "public and key_headers are not for jsonrpc routes: calls are shared per caller",
            );
        }
        return Some(CoalesceConfig {
            methods: vec![Method::POST],
            rpc_methods,
            public: false,
            key_headers: Vec::new(),
        });
    }
    let names: Vec<String> = methods.clone().unwrap_or_else(|| {
        let names: Vec<String> = DEFAULT_COALESCE_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect();
        problems.filled(&at("methods"), names.iter().collect::<toml_edit::Array>());
        names
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
    let public = super::values::flag(public, false, &at("public"), problems);
    let mut headers = Vec::new();
    for (j, name) in key_headers.iter().flatten().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => headers.push(header),
            Err(_) => problems.push(
                &["routes", i, table, "key_headers", &j.to_string()],
                format!("{name:?} is not a header name"),
            ),
        }
    }
    if !public && !headers.is_empty() {
        problems.push(
            &at("key_headers"),
            "only with public = true: otherwise every forwarded header is part of the key already",
        );
    }
    Some(CoalesceConfig {
        methods,
        rpc_methods: Vec::new(),
        public,
        key_headers: headers,
    })
}
