//! The one list of header names the proxy owns, and how a name is compared with it.
//!
//! Items (the header guard, `forward_headers`, fan-out header rules) and pass-through requests
//! read this list and nothing else, so the two paths cannot drift apart. Names are compared
//! after lower-casing and turning `_` into `-`: CGI, WSGI, Rack, PHP and many frameworks map
//! `X_Real_IP`, `x-real-ip` and `X-REAL-IP` to one variable (`HTTP_X_REAL_IP`), so an
//! underscore spelling is the same header to the upstream. (nginx and Apache drop names with
//! `_` outright by default; batchgate keeps other underscore names working and refuses only
//! the spellings of what it owns.)

/// Why the proxy owns a header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Frames or routes the message on this connection (hop-by-hop, smuggling).
    Framing,
    /// Meant for a proxy (`Proxy-*`).
    ProxyControl,
    /// Says who the client is or where the request came from; the upstream trusts the proxy's
    /// value (CVE-2022-24112: a batch plugin let items forge `X-Real-IP`).
    ProxySet,
    /// Makes the upstream serve another path or method than the one batchgate checked.
    Override,
}

impl Ownership {
    /// A phrase that follows the header name in an error message.
    pub fn reason(self) -> &'static str {
        match self {
            Ownership::Framing => "frames or routes the HTTP message",
            Ownership::ProxyControl => "is meant for a proxy",
            Ownership::ProxySet => "is set by the proxy",
            Ownership::Override => "overrides the request path or method",
        }
    }
}

/// Frame or route the message (RFC 9110 section 7.6.1 connection options, RFC 9112 framing).
const FRAMING: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "expect",
    "http2-settings",
];

/// Client-address and request-origin headers that upstreams, their frameworks and CDNs
/// read as the proxy's word: the standard ones, the de-facto `X-Forwarded-*` family (also
/// matched as a prefix), and the vendor spellings (Akamai, Cloudflare, Fastly, Azure, Envoy,
/// Google App Engine, WebLogic, Rackspace, Microsoft Exchange).
const PROXY_SET: &[&str] = &[
    "forwarded",
    "x-forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-request-id",
    "via",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "akamai-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-client-addr",
    "remote-addr",
    "x-proxyuser-ip",
    "wl-proxy-client-ip",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-appengine-user-ip",
    "x-host",
    "x-original-host",
    "x-http-host-override",
];

/// Prefixes of proxy-set names: every `X-Forwarded-*` (For, Host, Proto, Port, Server,
/// Prefix, Ssl, ...) and Envoy's internal `X-Envoy-*` headers, which an Envoy-fronted upstream
/// trusts (`x-envoy-external-address`, `x-envoy-internal`, ...).
const PROXY_SET_PREFIXES: &[&str] = &["x-forwarded-", "x-envoy-"];

/// Path and method overrides (IIS/Symfony/Zend `X-Original-URL`, `X-Rewrite-URL`; Rails,
/// Spring, Express and friends honour the method overrides), which route around
/// `allowed_url_prefixes`, `allowed_methods` and the nested-batch guard.
const OVERRIDES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Longest name compared; longer names are compared on a copy, which is fine off the hot path.
const INLINE_NAME: usize = 64;

/// Whether the proxy owns `name`, compared case-insensitively and with `_` read as `-`.
pub fn ownership(name: &str) -> Option<Ownership> {
    let mut inline = [0u8; INLINE_NAME];
    let heap;
    let normalised: &[u8] = if name.len() <= INLINE_NAME {
        let slot = &mut inline[..name.len()];
        for (out, byte) in slot.iter_mut().zip(name.bytes()) {
            *out = normalise(byte);
        }
        slot
    } else {
        heap = name.bytes().map(normalise).collect::<Vec<u8>>();
        &heap
    };
    let is = |list: &[&str]| list.iter().any(|n| n.as_bytes() == normalised);
    if is(FRAMING) {
        Some(Ownership::Framing)
    } else if normalised.starts_with(b"proxy-") {
        Some(Ownership::ProxyControl)
    } else if is(PROXY_SET)
        || PROXY_SET_PREFIXES
            .iter()
            .any(|p| normalised.starts_with(p.as_bytes()))
    {
        Some(Ownership::ProxySet)
    } else if is(OVERRIDES) {
        Some(Ownership::Override)
    } else {
        None
    }
}

/// Whether a pass-through request loses this header before it goes upstream: everything the
/// proxy sets (it sets its own `X-Forwarded-For` and `X-Request-Id` after), and underscore
/// spellings of the framing and proxy names, which pingora frames and strips by their real
/// spelling only. Overrides pass: pass-through has no path or method policy to route around.
pub fn dropped_on_passthrough(name: &str) -> bool {
    match ownership(name) {
        Some(Ownership::ProxySet) => true,
        Some(Ownership::Framing | Ownership::ProxyControl) => name.contains('_'),
        Some(Ownership::Override) | None => false,
    }
}

fn normalise(byte: u8) -> u8 {
    match byte {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling an upstream framework folds into one variable is the same header.
    #[test]
    fn underscore_and_case_spellings_are_one_name() {
        for name in [
            "X-Real-IP",
            "x_real_ip",
            "X_Real-Ip",
            "X-FORWARDED-FOR",
            "x_forwarded_for",
            "X_Forwarded_Proto",
            "Client-IP",
            "client_ip",
            "X-Originating-IP",
            "Fastly-Client-IP",
            "X-Envoy-External-Address",
            "x_envoy_internal",
            "X-Forwarded",
            "X-Host",
            "X-Original-Host",
            "x_request_id",
        ] {
            assert_eq!(ownership(name), Some(Ownership::ProxySet), "{name}");
        }
        assert_eq!(ownership("Transfer_Encoding"), Some(Ownership::Framing));
        assert_eq!(ownership("Content_Length"), Some(Ownership::Framing));
        assert_eq!(
            ownership("proxy_authorization"),
            Some(Ownership::ProxyControl)
        );
        assert_eq!(
            ownership("X_HTTP_Method_Override"),
            Some(Ownership::Override)
        );
        assert_eq!(ownership("x_original_url"), Some(Ownership::Override));
    }

    #[test]
    fn passthrough_drops_proxy_set_names_and_underscore_framing() {
        for name in [
            "X-Forwarded-Proto",
            "x_real_ip",
            "Via",
            "Content_Length",
            "Proxy_Foo",
        ] {
            assert!(dropped_on_passthrough(name), "{name}");
        }
        for name in [
            "Content-Length",
            "Connection",
            "X-HTTP-Method-Override",
            "Accept",
        ] {
            assert!(!dropped_on_passthrough(name), "{name}");
        }
    }

    #[test]
    fn other_names_are_not_owned() {
        for name in [
            "Authorization",
            "X_Custom_Token",
            "X-Original-Host-Id",
            "X-Client",
            "X-Method",
            "X-Forwarder",
            "Accept",
            &"x".repeat(200),
        ] {
            assert_eq!(ownership(name), None, "{name}");
        }
        assert_eq!(
            ownership(&format!("x-forwarded-{}", "a".repeat(100))),
            Some(Ownership::ProxySet)
        );
    }
}
