//! What a sub-request may be: the URL and header rules that stop SSRF, smuggling and recursion.
//!
//! Guards are compiled once from the configuration and are pure: they take what a client
//! wrote for one item and return either the exact bytes to send upstream or a `GuardError`
//! saying why the item is refused. Nothing a guard refuses is ever sent. Fan-out targets are
//! built from a `PathTemplate` (`template.rs`) that encodes ids instead of checking them.

use http::header::{HeaderName, HeaderValue};
use std::borrow::Cow;

pub mod owned;
mod template;
pub use template::{PathTemplate, UnsafePathValue};

/// Why a child URL or header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("url must be an origin-form path starting with '/' (no scheme, authority or '//'), or an absolute url on this gateway's own origin under the route's base path")]
    NotOriginForm,
    #[error("url contains a control character, space or a character that must be percent-encoded (byte 0x{0:02x})")]
    InvalidCharacter(u8),
    #[error("url contains a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("url contains a '.' or '..' segment (also when percent-encoded)")]
    DotSegment,
    #[error("url contains an encoded '/', '\\\\' or control character in its path")]
    EncodedSeparator,
    #[error("url is too long ({0} bytes, at most {MAX_URL_BYTES})")]
    TooLong(usize),
    #[error("url {0:?} is outside the allowed prefixes of this route")]
    PrefixNotAllowed(String),
    #[error("url targets a batch route; batches cannot be nested")]
    BatchRoute,
    #[error("header name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("header {0:?} has a value with a control character (CR, LF, NUL, DEL, ...)")]
    BadHeaderValue(String),
    /// The header name and why it is refused (`HeaderGuard::refuses_name`).
    #[error("header {0:?} {1} and may not be sent by an item")]
    ForbiddenHeader(String, &'static str),
}

/// A guard's refusal is the item's: a well-formed URL that policy refuses is forbidden, anything
/// else is invalid, each with a stable code (PDS style).
impl From<GuardError> for crate::item::ItemRefusal {
    fn from(e: GuardError) -> Self {
        use crate::item::ItemRefusal;
        let message = e.to_string();
        match e {
            GuardError::PrefixNotAllowed(_) | GuardError::BatchRoute => ItemRefusal::Forbidden {
                code: "Forbidden.Url",
                message,
            },
            GuardError::BadHeaderName(_)
            | GuardError::BadHeaderValue(_)
            | GuardError::ForbiddenHeader(..) => {
                ItemRefusal::invalid("InvalidParameter.Headers", message)
            }
            GuardError::NotOriginForm
            | GuardError::InvalidCharacter(_)
            | GuardError::BadPercentEncoding
            | GuardError::DotSegment
            | GuardError::EncodedSeparator
            | GuardError::TooLong(_) => ItemRefusal::invalid("InvalidParameter.Url", message),
        }
    }
}

/// Longest child URL accepted; longer ones are refused rather than truncated.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Rules for child URLs of one route.
#[derive(Debug, Clone)]
pub struct UrlGuard {
    base_path: String,
    /// Allowed child URL prefixes (as written by the client, before `base_path`).
    prefixes: Option<Vec<String>>,
    /// Every batch route path, lower-cased, without a trailing '/'.
    batch_paths: Vec<String>,
    /// `public_origins`: (scheme, authority) pairs, lower-cased, an item url may start with.
    origins: Vec<(String, String)>,
}

impl UrlGuard {
    /// The first allowed prefix, if the route names any (what `batchgate demo` suggests).
    pub fn first_prefix(&self) -> Option<&str> {
        self.prefixes.as_ref()?.first().map(String::as_str)
    }

    pub fn new(base_path: String, prefixes: Option<Vec<String>>, batch_paths: Vec<String>) -> Self {
        let batch_paths = batch_paths
            .iter()
            .map(|p| normalise_for_compare(p.as_bytes()))
            .collect();
        UrlGuard {
            base_path,
            prefixes,
            batch_paths,
            origins: Vec::new(),
        }
    }

    /// Also takes item urls on these origins (`"https://api.example.com"`, validated by
    /// config) as paths: the public names of a deployment behind a load balancer.
    pub fn with_origins(mut self, origins: &[String]) -> Self {
        self.origins = origins
            .iter()
            .filter_map(|o| o.split_once("://"))
            .map(|(s, a)| (s.to_ascii_lowercase(), a.to_ascii_lowercase()))
            .collect();
        self
    }

    /// Whether `host` (a `Host` value) is the authority of one of the `public_origins`.
    pub fn is_public_authority(&self, host: &str) -> bool {
        self.origins
            .iter()
            .any(|(_, a)| a.eq_ignore_ascii_case(host))
    }

    /// An absolute item url on the batch request's own origin (its `authority`, over http or
    /// https) or on a configured public origin, as its origin-form path and query (what SDKs
    /// such as Microsoft Graph's send); any other url unchanged, for `check` to judge. An
    /// authority with userinfo is never ours. An absolute url holds the whole path, base path
    /// included (`http://gate/v1.0/me` is relative `/me` under base path `/v1.0`): the base
    /// path is taken off here, for `check` to put back, and an absolute url outside it is
    /// left as it is (refused).
    pub fn origin_form<'a>(&self, url: &'a str, authority: Option<&str>) -> Cow<'a, str> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Cow::Borrowed(url);
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Cow::Borrowed(url);
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (host, path) = rest.split_at(end);
        let ours = !host.is_empty()
            && !host.contains('@')
            && (authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
                || self
                    .origins
                    .iter()
                    .any(|(s, a)| *s == scheme && a.eq_ignore_ascii_case(host)));
        if !ours {
            return Cow::Borrowed(url);
        }
        let path = if self.base_path.is_empty() {
            path
        } else {
            let (path_only, query) = path.split_at(path.find('?').unwrap_or(path.len()));
            if !has_path_prefix(path_only, &self.base_path) {
                return Cow::Borrowed(url);
            }
            let rest = &path[self.base_path.len()..];
            if self.base_path.ends_with('/') || rest.starts_with('/') {
                // With a base path ending in '/' the rest lost its leading '/': put it back.
                if rest.starts_with('/') {
                    rest
                } else {
                    return Cow::Owned(format!("/{rest}"));
                }
            } else {
                // The base path itself, maybe with a query: the root.
                return Cow::Owned(format!("/{query}"));
            }
        };
        match path.as_bytes().first() {
            Some(b'/') => Cow::Borrowed(path),
            // `https://host?x` and `https://host`: the root.
            _ => Cow::Owned(format!("/{path}")),
        }
    }

    /// Checks a child URL and returns the path-and-query to send upstream.
    pub fn check(&self, url: &str) -> Result<String, GuardError> {
        let bytes = url.as_bytes();
        if bytes.len() > MAX_URL_BYTES {
            return Err(GuardError::TooLong(bytes.len()));
        }
        if bytes.first() != Some(&b'/') || bytes.get(1) == Some(&b'/') {
            // Report a control character first: `\r\nHost:` is an attack, not a typo.
            if let Some(bad) = bytes.iter().find(|b| !is_uri_byte(**b)) {
                return Err(GuardError::InvalidCharacter(*bad));
            }
            return Err(GuardError::NotOriginForm);
        }
        if let Some(bad) = bytes.iter().find(|b| !is_uri_byte(**b)) {
            return Err(GuardError::InvalidCharacter(*bad));
        }
        let path = url.split_once('?').map_or(url, |(path, _)| path);
        check_path_segments(path.as_bytes())?;
        let full = format!("{}{}", self.base_path, url);
        let full_path = full.split_once('?').map_or(full.as_str(), |(path, _)| path);
        let target = normalise_for_compare(full_path.as_bytes());
        let child = normalise_for_compare(path.as_bytes());
        if self
            .batch_paths
            .iter()
            .any(|batch| *batch == target || *batch == child)
        {
            return Err(GuardError::BatchRoute);
        }
        if let Some(prefixes) = &self.prefixes {
            if !prefixes.iter().any(|p| has_path_prefix(path, p)) {
                return Err(GuardError::PrefixNotAllowed(url.to_string()));
            }
        }
        Ok(full)
    }
}

/// Bytes allowed unencoded in an origin-form request target (RFC 3986 pchar, '/', '?', '%').
fn is_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// Refuses dot segments and encoded separators anywhere in the path. A segment is also a dot
/// segment when only path parameters follow the dots (`..;x`, `.;`, `..%3B`): Tomcat, Jetty
/// and Spring drop `;params` before resolving dot segments, so `/file/..;/admin` reaches
/// `/admin` there and would step out of `allowed_url_prefixes`.
fn check_path_segments(path: &[u8]) -> Result<(), GuardError> {
    for segment in path.split(|b| *b == b'/') {
        let decoded = percent_decode(segment)?;
        let name = without_path_params(&decoded);
        if name == b"." || name == b".." {
            return Err(GuardError::DotSegment);
        }
        if decoded
            .iter()
            .any(|b| *b == b'/' || *b == b'\\' || b.is_ascii_control())
        {
            return Err(GuardError::EncodedSeparator);
        }
    }
    Ok(())
}

fn percent_decode(input: &[u8]) -> Result<Vec<u8>, GuardError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let hi = input.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = input.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(GuardError::BadPercentEncoding),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// A path segment without its `;params` (RFC 3986 section 3.3 path parameters).
fn without_path_params(segment: &[u8]) -> &[u8] {
    segment.split(|b| *b == b';').next().unwrap_or_default()
}

/// Decoded, lower-cased, without `;params`, empty segments and trailing '/': how a lenient
/// upstream might see a path. Tomcat, Jetty and Spring drop `;params` and merge `//`, so
/// `/v2/;/batch` and `/v2//batch` are served as `/v2/batch` there.
fn normalise_for_compare(path: &[u8]) -> String {
    let decoded = percent_decode(path).unwrap_or_else(|_| path.to_vec());
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for segment in decoded
        .split(|b| *b == b'/')
        .map(without_path_params)
        .filter(|segment| !segment.is_empty())
    {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() {
        return "/".to_string();
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// `/file` allows `/file` and `/file/get` but not `/filesystem`; `/file/` allows `/file/...`.
fn has_path_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Rules for headers an item sets itself.
#[derive(Debug, Clone, Default)]
pub struct HeaderGuard;

impl HeaderGuard {
    /// Why no client value of header `name` may reach the upstream, as a phrase that follows
    /// the name (`"x-real-ip" is set by the proxy`); `None` when it may. The item guard
    /// refuses these names and the config refuses them in `forward_headers` and in
    /// forwarded fan-out header rules.
    pub fn refuses_name(name: &HeaderName) -> Option<&'static str> {
        owned::ownership(name.as_str()).map(owned::Ownership::reason)
    }

    /// Checks one item header and returns it ready to send.
    pub fn check(&self, name: &str, value: &str) -> Result<(HeaderName, HeaderValue), GuardError> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| GuardError::BadHeaderName(name.to_string()))?;
        if let Some(reason) = Self::refuses_name(&header) {
            return Err(GuardError::ForbiddenHeader(name.to_string(), reason));
        }
        // HeaderValue::from_str refuses CR, LF, NUL and other controls except tab.
        let value = HeaderValue::from_str(value)
            .map_err(|_| GuardError::BadHeaderValue(name.to_string()))?;
        Ok((header, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_or_configured_origins_become_paths() {
        let g = UrlGuard::new("/v1.0".into(), None, vec![])
            .with_origins(&["https://API.example.com".to_string()]);
        let ours = Some("gate.local:8080");
        assert_eq!(g.origin_form("http://gate.local:8080/v1.0/me", ours), "/me");
        assert_eq!(
            g.origin_form("HTTPS://Gate.Local:8080/v1.0/me?x=1", ours),
            "/me?x=1"
        );
        assert_eq!(g.origin_form("http://gate.local:8080/v1.0", ours), "/");
        assert_eq!(g.origin_form("http://gate.local:8080/v1.0?a", ours), "/?a");
        assert_eq!(
            g.origin_form("https://api.example.com/v1.0/me", ours),
            "/me"
        );
        // Without a base path the url's path is the item's.
        let bare = UrlGuard::new(String::new(), None, vec![]);
        assert_eq!(bare.origin_form("http://gate.local:8080/me", ours), "/me");
        assert_eq!(bare.origin_form("http://gate.local:8080", ours), "/");
        assert_eq!(bare.origin_form("http://gate.local:8080?a", ours), "/?a");
        let slash = UrlGuard::new("/v1.0/".into(), None, vec![]);
        assert_eq!(
            slash.origin_form("http://gate.local:8080/v1.0/me", ours),
            "/me"
        );
        for foreign in [
            // Our origin, but outside the base path: not this route's to map.
            "http://gate.local:8080/me",
            "http://gate.local:8080/v1.00/me",
            "http://gate.local:8080",
            "http://api.example.com/me",
            "http://gate.local/me",
            "http://evil.example/me",
            "http://user@gate.local:8080/me",
            "ftp://gate.local:8080/me",
            "//gate.local:8080/me",
            "/me",
        ] {
            assert_eq!(g.origin_form(foreign, ours), foreign, "{foreign}");
        }
        assert_eq!(
            g.origin_form("http://gate.local:8080/me", None),
            "http://gate.local:8080/me"
        );
    }

    fn guard() -> UrlGuard {
        UrlGuard::new(
            "/v2".into(),
            Some(vec!["/file/".into()]),
            vec!["/v2/batch".into()],
        )
    }

    #[test]
    fn accepts_origin_form_and_prefixes_base_path() {
        assert_eq!(
            guard().check("/file/get?x=1&y=%20").as_deref(),
            Ok("/v2/file/get?x=1&y=%20")
        );
    }

    #[test]
    fn refuses_every_hostile_url_form() {
        let g = guard();
        let cases: &[(&str, GuardError)] = &[
            ("//evil.example/x", GuardError::NotOriginForm),
            ("http://evil.example/x", GuardError::NotOriginForm),
            ("file/get", GuardError::NotOriginForm),
            ("/file/../admin", GuardError::DotSegment),
            ("/file/%2e%2e/admin", GuardError::DotSegment),
            ("/file/%2E/x", GuardError::DotSegment),
            ("/file/a%2fb", GuardError::EncodedSeparator),
            ("/file/a%5cb", GuardError::EncodedSeparator),
            ("/file/a%0d%0aHost:x", GuardError::EncodedSeparator),
            (
                "/file/get\r\nHost: evil",
                GuardError::InvalidCharacter(b'\r'),
            ),
            ("/file/get x", GuardError::InvalidCharacter(b' ')),
            ("/file\\..\\admin", GuardError::InvalidCharacter(b'\\')),
            ("/file/%zz", GuardError::BadPercentEncoding),
            ("/file/get#frag", GuardError::InvalidCharacter(b'#')),
            ("/admin", GuardError::PrefixNotAllowed("/admin".into())),
            (
                "/filesystem",
                GuardError::PrefixNotAllowed("/filesystem".into()),
            ),
            ("/batch", GuardError::BatchRoute),
            ("/BATCH/", GuardError::BatchRoute),
            ("/%62atch", GuardError::BatchRoute),
            // Path parameters: Tomcat/Jetty/Spring resolve `..;` as `..`.
            ("/file/..;/admin", GuardError::DotSegment),
            ("/file/..;x=1/admin", GuardError::DotSegment),
            ("/file/.;/get", GuardError::DotSegment),
            ("/file/..%3b/admin", GuardError::DotSegment),
            ("/file/%2e%2e;/admin", GuardError::DotSegment),
            ("/batch;x", GuardError::BatchRoute),
            ("/BATCH;jsessionid=1/", GuardError::BatchRoute),
            // Empty segments: Tomcat/Jetty/Spring drop `;params` and merge `//`, so
            // `/v2/;/batch` is served as `/v2/batch`.
            ("/;/batch", GuardError::BatchRoute),
            ("/;x=1/batch", GuardError::BatchRoute),
            ("/;/;/BATCH;a/;", GuardError::BatchRoute),
            ("/%3b/batch", GuardError::BatchRoute),
            ("/batch//", GuardError::BatchRoute),
            ("/batch/;", GuardError::BatchRoute),
        ];
        for (url, expected) in cases {
            assert_eq!(g.check(url).as_ref(), Err(expected), "{url:?}");
        }
    }

    #[test]
    fn path_parameters_that_are_not_dot_segments_pass() {
        let g = guard();
        assert_eq!(g.check("/file/get;v=2").as_deref(), Ok("/v2/file/get;v=2"));
        assert_eq!(
            g.check("/file/...;x/get").as_deref(),
            Ok("/v2/file/...;x/get")
        );
        assert_eq!(g.check("/file/a..;b").as_deref(), Ok("/v2/file/a..;b"));
    }

    /// Batch routes are compared the way a lenient upstream sees paths: decoded, lower-cased,
    /// without `;params`, empty segments or a trailing '/', on both sides.
    #[test]
    fn batch_routes_are_compared_without_empty_segments() {
        assert_eq!(normalise_for_compare(b"/v2/;/batch"), "/v2/batch");
        assert_eq!(normalise_for_compare(b"//v2//;x//Batch;y//"), "/v2/batch");
        assert_eq!(normalise_for_compare(b"/;/"), "/");
        assert_eq!(normalise_for_compare(b""), "/");
        // No prefix restriction: only the batch-route check stands in the way.
        let open = UrlGuard::new("/v2".into(), None, vec!["/v2//Batch/".into()]);
        for url in ["/;/batch", "/batch", "/;a/;b/batch;c", "/%3B/batch"] {
            assert_eq!(open.check(url), Err(GuardError::BatchRoute), "{url:?}");
        }
        assert_eq!(open.check("/;/batches").as_deref(), Ok("/v2/;/batches"));
        assert_eq!(open.check("/a/;/batch").as_deref(), Ok("/v2/a/;/batch"));
    }

    #[test]
    fn refuses_non_ascii_urls() {
        assert!(matches!(
            guard().check("/file/é"),
            Err(GuardError::InvalidCharacter(_))
        ));
    }

    #[test]
    fn header_guard_refuses_framing_and_trust_headers() {
        let g = HeaderGuard;
        for name in [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "TE",
            "Connection",
            "Upgrade",
            "Keep-Alive",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "Forwarded",
            "X-Real-IP",
            "X-Request-Id",
        ] {
            assert!(
                matches!(g.check(name, "x"), Err(GuardError::ForbiddenHeader(ref n, _)) if n == name),
                "{name}"
            );
        }
        assert!(matches!(
            g.check("X-Ok", "a\r\nHost: evil"),
            Err(GuardError::BadHeaderValue(_))
        ));
        assert!(matches!(
            g.check("Bad Name", "x"),
            Err(GuardError::BadHeaderName(_))
        ));
        assert!(g.check("Authorization", "Bearer t").is_ok());
    }

    /// Path and method overrides route around `allowed_url_prefixes`, `allowed_methods` and
    /// the nested-batch guard; client-IP headers are forged as easily as X-Real-IP.
    #[test]
    fn header_guard_refuses_overrides_and_client_ip_headers() {
        let g = HeaderGuard;
        let cases = [
            ("X-Original-URL", "overrides the request path or method"),
            ("x-rewrite-url", "overrides the request path or method"),
            (
                "X-HTTP-Method-Override",
                "overrides the request path or method",
            ),
            ("X-HTTP-Method", "overrides the request path or method"),
            ("X-Method-Override", "overrides the request path or method"),
            ("True-Client-IP", "is set by the proxy"),
            ("X-Client-IP", "is set by the proxy"),
            ("X-Cluster-Client-IP", "is set by the proxy"),
            ("CF-Connecting-IP", "is set by the proxy"),
            ("x-real-ip", "is set by the proxy"),
            ("Content-Length", "frames or routes the HTTP message"),
            ("Proxy-Authorization", "is meant for a proxy"),
        ];
        for (name, reason) in cases {
            assert_eq!(
                g.check(name, "/admin").map(|_| ()),
                Err(GuardError::ForbiddenHeader(name.into(), reason)),
                "{name}"
            );
            let header = HeaderName::from_bytes(name.as_bytes()).expect("valid name");
            assert_eq!(HeaderGuard::refuses_name(&header), Some(reason), "{name}");
        }
        let message = g
            .check("X-HTTP-Method-Override", "DELETE")
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "header \"X-HTTP-Method-Override\" overrides the request path or method and may not be sent by an item"
        );
        for name in [
            "Authorization",
            "X-Original-Host-Id",
            "X-Client",
            "X-Method",
        ] {
            let header = HeaderName::from_bytes(name.as_bytes()).expect("valid name");
            assert_eq!(HeaderGuard::refuses_name(&header), None, "{name}");
            assert!(g.check(name, "x").is_ok(), "{name}");
        }
    }
}
