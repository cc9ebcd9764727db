//! The JSONPath subset a reference may use: `$`, `.name`, `['name']` (or `["name"]`), `[n]`,
//! and `[*]` or `.*`. No filters, no scripts, no recursive descent, no slices: what is left
//! selects values by position only, so evaluating it is a walk bounded by the document.

use serde_json::Value;

/// The longest path accepted, in bytes, and the most steps in one.
pub const MAX_PATH_BYTES: usize = 256;
pub const MAX_STEPS: usize = 32;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Member(String),
    /// An array element.
    Index(usize),
    /// Every member of an object or element of an array, in order.
    Wildcard,
}

/// A parsed path: the steps after `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<Step>);

impl Path {
    /// Parses `$...`; the error says what is wrong, in words for the client.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.len() > MAX_PATH_BYTES {
            return Err(format!("a path is at most {MAX_PATH_BYTES} bytes"));
        }
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("the path {text:?} must start with $"))?;
        let mut steps = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if steps.len() == MAX_STEPS {
                return Err(format!("a path has at most {MAX_STEPS} steps"));
            }
            if rest.starts_with("..") {
                return Err(format!(
                    "{text:?}: recursive descent (..) is not supported: only $, .name, ['name'], [n] and [*]"
                ));
            }
            let (step, after) = if let Some(after) = rest.strip_prefix(".*") {
                (Step::Wildcard, after)
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() || !name.chars().all(is_name_char) {
                    return Err(format!(
                        "{text:?}: a .name step takes letters, digits, _ and - (use ['name'] for others)"
                    ));
                }
                (Step::Member(name.to_string()), &after[end..])
            } else if let Some(after) = rest.strip_prefix('[') {
                bracket(after).ok_or_else(|| {
                    format!("{text:?}: a [...] step is [n], [*], ['name'] or [\"name\"]")
                })?
            } else {
                return Err(format!(
                    "{text:?}: only $, .name, ['name'], [n] and [*] are supported"
                ));
            };
            steps.push(step);
            rest = after;
        }
        Ok(Path(steps))
    }

    /// The values the path selects in `document`, in document order, at most `limit` of them
    /// (`None` past it).
    pub fn select<'v>(&self, document: &'v Value, limit: usize) -> Option<Vec<&'v Value>> {
        let mut current = vec![document];
        for step in &self.0 {
            let mut next = Vec::new();
            for value in current {
                match (step, value) {
                    (Step::Member(name), Value::Object(map)) => next.extend(map.get(name)),
                    (Step::Index(n), Value::Array(items)) => next.extend(items.get(*n)),
                    (Step::Wildcard, Value::Array(items)) => next.extend(items.iter()),
                    (Step::Wildcard, Value::Object(map)) => next.extend(map.values()),
                    _ => {}
                }
                if next.len() > limit {
                    return None;
                }
            }
            current = next;
        }
        Some(current)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The step inside `[...]` and what follows the `]`.
fn bracket(after: &str) -> Option<(Step, &str)> {
    if let Some(rest) = after.strip_prefix("*]") {
        return Some((Step::Wildcard, rest));
    }
    if let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let inner = &after[1..];
        let end = inner.find(quote)?;
        let rest = inner[end + 1..].strip_prefix(']')?;
        return Some((Step::Member(inner[..end].to_string()), rest));
    }
    let end = after.find(']')?;
    let digits = &after[..end];
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Step::Index(digits.parse().ok()?), &after[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(path: &str, document: &Value) -> Vec<Value> {
        Path::parse(path)
            .unwrap()
            .select(document, 100)
            .unwrap()
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn the_subset_selects_by_position() {
        let doc = json!({"id": "7", "data": [{"id": 1}, {"id": 2}, {"name": "x"}], "a b": true});
        assert_eq!(select("$", &doc), std::slice::from_ref(&doc));
        assert_eq!(select("$.id", &doc), [json!("7")]);
        assert_eq!(select("$.data.*.id", &doc), [json!(1), json!(2)]);
        assert_eq!(select("$.data[*].id", &doc), [json!(1), json!(2)]);
        assert_eq!(select("$.data[1].id", &doc), [json!(2)]);
        assert_eq!(select("$['a b']", &doc), [json!(true)]);
        assert_eq!(select("$[\"data\"][0]", &doc), [json!({"id": 1})]);
        assert!(select("$.missing", &doc).is_empty());
        assert!(select("$.id.deeper", &doc).is_empty());
        assert!(select("$.data[9]", &doc).is_empty());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "id",
            "$..id",
            "$.data[?(@.id)]",
            "$.data[0:2]",
            "$.data[-1]",
            "$.",
            "$[",
            "$['x'",
            "$.a b",
            "$.data[1",
            "$x",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
        assert!(Path::parse(&format!("${}", ".a".repeat(MAX_STEPS + 1))).is_err());
        assert!(Path::parse(&format!("$.{}", "a".repeat(MAX_PATH_BYTES))).is_err());
    }

    #[test]
    fn selection_is_bounded() {
        let doc = json!({"data": (0..50).collect::<Vec<_>>()});
        let path = Path::parse("$.data.*").unwrap();
        assert_eq!(path.select(&doc, 50).unwrap().len(), 50);
        assert!(path.select(&doc, 49).is_none());
    }
}
