//! Per-id request targets of fan-out routes: a path template such as
//! `/v2/items/{id}/url?group={group_id}`, compiled once from the config and rendered per item.
//!
//! The template owns the encoding of substituted values, so no id a client sends can add a
//! path segment, a query parameter or a header line.

use super::is_uri_byte;

/// A per-id request target such as `/v2/items/{id}/url?group={group_id}`, compiled once.
/// Every substituted value is percent-encoded (all but RFC 3986 unreserved characters), so
/// `x?y=1`, `a&b=c` or `%2F` stay inside one path segment or one query value. A value in the
/// path may not contain `/` or `\` at all, nor be `.` or `..` before any `;`: encoded they
/// would be `%2F`/`%5C`/`..%3B`, which upstreams that decode before routing (Apache with
/// `AllowEncodedSlashes`, many frameworks) read as separators and dot segments, so
/// `..%2Fadmin` would climb out of the template; the URL guard refuses them in envelope urls
/// for the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    /// A placeholder, and whether it is in the path (before the `?`) rather than the query.
    Value {
        name: String,
        in_path: bool,
    },
}

/// A value that cannot be substituted where its placeholder is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{placeholder} {}", UnsafePathValue::REASON)]
pub struct UnsafePathValue {
    pub placeholder: String,
}

impl UnsafePathValue {
    /// Why, as a phrase that follows the placeholder's name.
    pub const REASON: &'static str = "would be a path separator or a dot segment once an upstream decodes it ('/', '\\', or '.' or '..' before any ';')";
}

/// Whether `value` may be one path segment: encoded, it must not turn back into a separator
/// or a dot segment in an upstream that decodes before routing. `..;x` counts as `..`, as
/// Tomcat, Jetty and Spring drop `;params` (the URL guard's rule for envelope urls).
fn safe_in_path(value: &str) -> bool {
    let name = value.split(';').next().unwrap_or_default();
    !value.contains(['/', '\\']) && name != "." && name != ".."
}

impl PathTemplate {
    /// Parses a template; `known` lists the placeholder names that may appear.
    pub fn parse(template: &str, known: &[&str]) -> Result<Self, String> {
        if !template.starts_with('/') || template.starts_with("//") {
            return Err("must start with a single '/'".to_string());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                parts.push(TemplatePart::Literal(rest.to_string()));
                break;
            };
            let (literal, after) = rest.split_at(open);
            let close = after.find('}').ok_or("a '{' has no matching '}'")?;
            let name = after.get(1..close).unwrap_or_default();
            if !known.contains(&name) {
                return Err(format!("unknown placeholder {{{name}}} (known: {known:?})"));
            }
            let in_query = parts
                .iter()
                .any(|p| matches!(p, TemplatePart::Literal(t) if t.contains('?')))
                || literal.contains('?');
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(literal.to_string()));
            }
            parts.push(TemplatePart::Value {
                name: name.to_string(),
                in_path: !in_query,
            });
            rest = after.get(close + 1..).unwrap_or_default();
        }
        for part in &parts {
            if let TemplatePart::Literal(text) = part {
                if let Some(bad) = text.bytes().find(|b| !is_uri_byte(*b)) {
                    return Err(format!(
                        "byte 0x{bad:02x} is not allowed in a request target"
                    ));
                }
                if text.contains('}') {
                    return Err("a '}' has no matching '{'".to_string());
                }
            }
        }
        Ok(PathTemplate { parts })
    }

    /// Builds the target; `value` gives each placeholder's raw (unencoded) text.
    pub fn render<'a>(&self, value: impl Fn(&str) -> &'a str) -> Result<String, UnsafePathValue> {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => out.push_str(text),
                TemplatePart::Value { name, in_path } => {
                    let raw = value(name);
                    if *in_path && !safe_in_path(raw) {
                        return Err(UnsafePathValue {
                            placeholder: name.clone(),
                        });
                    }
                    out.extend(percent_encoding::utf8_percent_encode(raw, COMPONENT));
                }
            }
        }
        Ok(out)
    }

    /// Placeholder names used, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Value { name, .. } => Some(name.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }
}

/// Everything but RFC 3986 unreserved characters is encoded inside a substituted value.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile ids stay one encoded path segment and one encoded query value.
    #[test]
    fn substitutions_cannot_change_path_or_query() {
        let t = PathTemplate::parse("/v2/items/{id}/url?group={group}", &["id", "group"])
            .expect("valid");
        let cases = [
            ("%2F", "/v2/items/%252F/url?group=g%26x%3D1"),
            ("x?y=1", "/v2/items/x%3Fy%3D1/url?group=g%26x%3D1"),
            (
                "\r\nHost: x",
                "/v2/items/%0D%0AHost%3A%20x/url?group=g%26x%3D1",
            ),
        ];
        for (id, expected) in cases {
            let target = t.render(|name| if name == "id" { id } else { "g&x=1" });
            assert_eq!(target.as_deref(), Ok(expected), "{id:?}");
        }
        // A separator in a path value would be %2F / %5C, which lenient upstreams decode.
        for id in [
            "../admin",
            "a/b",
            "..\\admin",
            "..",
            ".",
            "..;",
            ".;x",
            "..;a=b",
        ] {
            let target = t.render(|name| if name == "id" { id } else { "g" });
            assert_eq!(
                target.map_err(|e| e.placeholder),
                Err("id".to_string()),
                "{id:?}"
            );
        }
        // In the query it is only a value.
        let target = t.render(|name| if name == "id" { "1" } else { "a/b\\c" });
        assert_eq!(target.as_deref(), Ok("/v2/items/1/url?group=a%2Fb%5Cc"));
    }

    #[test]
    fn templates_are_checked() {
        assert!(PathTemplate::parse("/a/{nope}", &["id"]).is_err());
        assert!(PathTemplate::parse("a/{id}", &["id"]).is_err());
        assert!(PathTemplate::parse("/a/{id", &["id"]).is_err());
        assert!(PathTemplate::parse("/a b/{id}", &["id"]).is_err());
        assert!(PathTemplate::parse("/a/{id}}", &["id"]).is_err());
    }
}
