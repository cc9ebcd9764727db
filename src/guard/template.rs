//! Per-id request targets of fan-out routes: a path template such as
//! `/v2/items/{id}/url?group={group_id}`, compiled once from the config and rendered per item.
//!
//! The template owns the encoding of substituted values, so no id a client sends can add a
//! path segment, a query parameter or a header line.

use super::is_uri_byte;

/// A per-id request target such as `/v2/items/{id}/url?group={group_id}`, compiled once.
/// Every substituted value is percent-encoded for its position (all but RFC 3986 unreserved
/// characters), so `../admin`, `a/b`, `%2F` or `x?y=1` stay inside one path segment or one
/// query value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    /// A placeholder; path and query positions get the same (strictest) encoding.
    Value(String),
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
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(literal.to_string()));
            }
            parts.push(TemplatePart::Value(name.to_string()));
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
    pub fn render<'a>(&self, value: impl Fn(&str) -> &'a str) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => out.push_str(text),
                TemplatePart::Value(name) => {
                    out.extend(percent_encoding::utf8_percent_encode(
                        value(name),
                        COMPONENT,
                    ));
                }
            }
        }
        out
    }

    /// Placeholder names used, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Value(name) => Some(name.as_str()),
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
            ("../admin", "/v2/items/..%2Fadmin/url?group=g%26x%3D1"),
            ("a/b", "/v2/items/a%2Fb/url?group=g%26x%3D1"),
            ("%2F", "/v2/items/%252F/url?group=g%26x%3D1"),
            ("x?y=1", "/v2/items/x%3Fy%3D1/url?group=g%26x%3D1"),
            (
                "\r\nHost: x",
                "/v2/items/%0D%0AHost%3A%20x/url?group=g%26x%3D1",
            ),
        ];
        for (id, expected) in cases {
            let target = t.render(|name| if name == "id" { id } else { "g&x=1" });
            assert_eq!(target, expected, "{id:?}");
        }
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
