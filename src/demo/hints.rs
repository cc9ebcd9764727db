//! What `batchgate demo` suggests to paste: one working `curl` line per route of the config
//! it runs, built from the route's own path, dialect and rules (allowed methods and prefixes,
//! required parameters and headers), and one pass-through call. The demo upstream answers
//! each of them (`tests/it/demo.rs` runs every line for every shipped config).

use crate::config::{Config, DialectConfig, RouteConfig};
use http::Method;

/// One suggestion: what it shows, and the command.
pub struct Hint {
    pub what: String,
    pub command: String,
}

/// Suggestions for every route of `config`, then a pass-through call, against `listen`.
pub fn hints(config: &Config, listen: &str) -> Vec<Hint> {
    let mut out: Vec<Hint> = config
        .routes
        .iter()
        .map(|route| route_hint(route, listen))
        .collect();
    out.push(Hint {
        what: "a pass-through call (not a batch route: proxied unchanged)".into(),
        command: format!("curl -s {}", quoted(&format!("http://{listen}/v2/hello"))),
    });
    out
}

/// A shell single-quoted word.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn route_hint(route: &RouteConfig, listen: &str) -> Hint {
    let url = quoted(&format!("http://{listen}{}", route.path));
    let json = "-H 'Content-Type: application/json'";
    let what = format!("route {} ({} dialect)", route.name, route.dialect.name());
    let command = match &route.dialect {
        DialectConfig::Envelope(envelope) => {
            let method = preferred(&envelope.allowed_methods);
            // Without a prefix rule, the demo API's own files (`/v2/file/get` under PDS's
            // base path, an echo elsewhere).
            let prefix = envelope.url_guard.first_prefix().unwrap_or("/file/");
            let item = |id: &str, leaf: &str| {
                let mut item = serde_json::json!({"id": id, "method": method.as_str(), "url": format!("{prefix}{leaf}")});
                if method != Method::GET {
                    item["body"] = serde_json::json!({"drive_id": "1"});
                }
                item
            };
            let mut body = serde_json::json!({"requests": [item("1", "get"), item("2", "list")]});
            if let Some(resource) = envelope.allowed_resources.as_ref().and_then(|r| r.first()) {
                body["resource"] = resource.as_str().into();
            }
            format!("curl -s {url} {json} -d {}", quoted(&body.to_string()))
        }
        DialectConfig::JsonRpc(rpc) => {
            let method = rpc
                .allowed_methods
                .as_ref()
                .and_then(|m| m.first().cloned())
                .unwrap_or_else(|| "sum".into());
            let body = serde_json::json!([
                {"jsonrpc": "2.0", "method": method, "params": [1, 2, 4], "id": "1"},
                {"jsonrpc": "2.0", "method": method, "params": [42, 23], "id": 2},
            ]);
            format!("curl -s {url} {json} -d {}", quoted(&body.to_string()))
        }
        DialectConfig::Fanout(fanout) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair(&fanout.ids_param, "1,2");
            for param in fanout.params.iter().filter(|p| p.required) {
                query.append_pair(&param.name, "1");
            }
            let target = format!("http://{listen}{}?{}", route.path, query.finish());
            let mut command = format!("curl -s {}", quoted(&target));
            for header in fanout.headers.iter().filter(|h| h.rule.required) {
                command.push_str(&format!(
                    " -H {}",
                    quoted(&format!("{}: demo", header.rule.name))
                ));
            }
            if !fanout.methods.contains(&Method::GET) {
                command.push_str(&format!(" {json} -d '{{}}'"));
            }
            command
        }
        DialectConfig::Multipart(multipart) => {
            let method = if multipart.allowed_methods.contains(&Method::GET) {
                Method::GET
            } else {
                preferred(&multipart.allowed_methods)
            };
            // A printf format: the prefix's backslashes and `%` escaped, then the whole quoted.
            let prefix = multipart
                .url_guard
                .first_prefix()
                .unwrap_or("/")
                .replace('\\', "\\\\")
                .replace('%', "%%");
            let part = |n: u32| {
                format!(
                    "--demo\\r\\nContent-Type: application/http\\r\\nContent-ID: <item{n}>\\r\\n\\r\\n{method} {prefix}files/{n} HTTP/1.1\\r\\n\\r\\n"
                )
            };
            let format = format!("{}{}--demo--\\r\\n", part(1), part(2));
            format!(
                "printf -- {} | curl -s {url} -H 'Content-Type: multipart/mixed; boundary=demo' --data-binary @-",
                quoted(&format)
            )
        }
        DialectConfig::Meta(meta) => {
            let method = if meta.allowed_methods.contains(&Method::GET) {
                Method::GET
            } else {
                preferred(&meta.allowed_methods)
            };
            let batch = serde_json::json!([
                {"method": method.as_str(), "relative_url": "me", "name": "me"},
                {"method": method.as_str(), "relative_url": "me/friends?limit=2"},
            ]);
            format!(
                "curl -s {url} --data-urlencode {}",
                quoted(&format!("batch={batch}"))
            )
        }
        DialectConfig::Single(_) => {
            let path = route.path.replacen("{id}", "1", 1);
            format!("curl -s {}", quoted(&format!("http://{listen}{path}")))
        }
    };
    Hint { what, command }
}

/// The method a suggested item uses: `POST` if allowed (it carries a body), else `GET`, else
/// the first allowed.
fn preferred(allowed: &[Method]) -> Method {
    [Method::POST, Method::GET]
        .into_iter()
        .find(|m| allowed.contains(m))
        .or_else(|| allowed.first().cloned())
        .unwrap_or(Method::GET)
}
