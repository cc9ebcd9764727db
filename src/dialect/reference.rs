//! References between the items of one batch: a later item uses an earlier item's answer.
//!
//! The spelling is Meta's Graph batch one, `{result=NAME:JSONPATH}`, in an item's url, header
//! values and string body fields (several selected values join with commas), and in JSON
//! bodies also `{"$ref": "NAME:JSONPATH"}`, which stands for the JSON value itself (a number
//! stays a number; several values become an array). NAME is an earlier item's name (Meta) or
//! id (envelope); the path is the subset in `path`.
//!
//! A dialect finds the references while it decodes (`Template::parse`): a malformed one, an
//! unknown name or one that is not earlier is a whole-batch refusal, and each reference is a
//! dependency of its item. The item is then `Planned::Deferred`: when its turn comes, the
//! executor hands it the answers so far, the values are substituted (`Template::resolve`),
//! each encoded for where it lands (a path segment cannot gain `/`, `?`, `#` or become `..`),
//! and the finished raw item goes through the dialect's own item builder, with every guard,
//! exactly as an item without references does (`RawItem`, `Deferred`).

pub mod path;

use crate::item::{Answers, ItemRefusal, RequestTemplate};
use crate::item::{Failure, FailureKind, Outcome, Planned, Sent, SubRequest};
use bytes::Bytes;
use path::Path;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::sync::Arc;

/// Where a reference starts in a text.
const OPEN: &str = "{result=";
/// The member that makes a JSON object a typed reference.
const REF_MEMBER: &str = "$ref";
/// References one item may hold.
pub const MAX_REFERENCES: usize = 16;
/// Values one reference may select.
pub const MAX_VALUES: usize = 1000;
/// Bytes the substituted values of one item may add up to.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024;

/// Everything but RFC 3986's unreserved characters is encoded: an inserted value is data in
/// its component, never a delimiter.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One item as the client wrote it, before the guards: what a dialect's item builder takes,
/// the same for an item sent as written and for one whose references were substituted.
#[derive(Debug, Clone, PartialEq)]
pub struct RawItem {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

/// How an item body carries values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON: references in string values, and `{"$ref": ...}` values.
    Json,
    /// `application/x-www-form-urlencoded` (Meta's item bodies): references in the text,
    /// each value form-encoded.
    Form,
}

/// A dialect's item builder: the guards every item goes through.
pub type Build = Arc<dyn Fn(&RawItem) -> Result<SubRequest, ItemRefusal> + Send + Sync>;

/// One reference: the item it reads (by index) and the path into that item's JSON answer.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    source: usize,
    /// As written (`NAME:PATH`), for messages.
    text: String,
    path: Path,
}

/// A string with references in it.
#[derive(Debug, Clone, PartialEq)]
struct Text(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Ref(usize),
}

/// A JSON body with references in it; subtrees without any are kept as they are.
#[derive(Debug, Clone, PartialEq)]
enum JsonTemplate {
    Literal(Value),
    Text(Text),
    Ref(usize),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

#[derive(Debug, Clone, PartialEq)]
enum BodyTemplate {
    Json(JsonTemplate),
    Form(Text),
}

/// The references of one item and where they stand.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    references: Vec<Reference>,
    url: Option<Text>,
    /// By position in `RawItem::headers`.
    headers: Vec<(usize, Text)>,
    body: Option<BodyTemplate>,
}

/// Finds the item a name refers to: its index, or why it cannot be referred to (not a name
/// of this batch, the item itself, a later item).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Result<usize, String>;

impl Template {
    /// The references in `raw`, or `None` when it has none. `Err`: a reference that is
    /// malformed or names no earlier item, in words for the client.
    pub fn parse(
        raw: &RawItem,
        body: BodyKind,
        lookup: Lookup<'_>,
    ) -> Result<Option<Self>, String> {
        let mut references = Vec::new();
        let url = parse_text(&raw.url, lookup, &mut references)?;
        let mut headers = Vec::new();
        for (position, (_, value)) in raw.headers.iter().enumerate() {
            if let Some(text) = parse_text(value, lookup, &mut references)? {
                headers.push((position, text));
            }
        }
        let body = match (&raw.body, body) {
            (None, _) => None,
            (Some(bytes), BodyKind::Form) => match std::str::from_utf8(bytes) {
                Ok(text) => parse_text(text, lookup, &mut references)?.map(BodyTemplate::Form),
                Err(_) => None,
            },
            (Some(bytes), BodyKind::Json) => {
                if !contains(bytes, OPEN.as_bytes()) && !contains(bytes, REF_MEMBER.as_bytes()) {
                    None
                } else {
                    match serde_json::from_slice::<Value>(bytes) {
                        Ok(value) => match json_template(value, lookup, &mut references)? {
                            JsonTemplate::Literal(_) => None,
                            template => Some(BodyTemplate::Json(template)),
                        },
                        // Not JSON: the builder refuses it as it would any item.
                        Err(_) => None,
                    }
                }
            }
        };
        if references.is_empty() {
            return Ok(None);
        }
        if references.len() > MAX_REFERENCES {
            return Err(format!(
                "{} references; at most {MAX_REFERENCES} are allowed per item",
                references.len()
            ));
        }
        Ok(Some(Template {
            references,
            url,
            headers,
            body,
        }))
    }

    /// The items this one reads, each once: its dependencies.
    pub fn sources(&self) -> Vec<usize> {
        let mut sources: Vec<usize> = self.references.iter().map(|r| r.source).collect();
        sources.sort_unstable();
        sources.dedup();
        sources
    }

    /// `raw` with every reference replaced by what it selects in the answers so far, or why
    /// it cannot be (in words for the client: the reference, and what is missing).
    pub fn resolve(&self, raw: &RawItem, answers: Answers<'_>) -> Result<RawItem, String> {
        // Each answer referred to is parsed once; selections borrow from it, and nothing is
        // copied before the expansion budget says it fits.
        let mut documents: Vec<(usize, Value)> = Vec::new();
        for reference in &self.references {
            if !documents.iter().any(|(s, _)| *s == reference.source) {
                documents.push((reference.source, answer_json(reference, answers)?));
            }
        }
        let mut values: Vec<Vec<&Value>> = Vec::with_capacity(self.references.len());
        for reference in &self.references {
            let Some((_, document)) = documents.iter().find(|(s, _)| *s == reference.source) else {
                continue;
            };
            let selected = reference.path.select(document, MAX_VALUES).ok_or_else(|| {
                format!(
                    "{{result={}}} selects more than {MAX_VALUES} values",
                    reference.text
                )
            })?;
            if selected.is_empty() {
                return Err(format!(
                    "{{result={}}} matched nothing in that item's answer",
                    reference.text
                ));
            }
            values.push(selected);
        }
        let mut budget = Budget(MAX_EXPANDED_BYTES);
        let mut out = raw.clone();
        if let Some(url) = &self.url {
            out.url = render_url(url, &values, &self.references, &mut budget)?;
        }
        for (position, text) in &self.headers {
            if let Some((_, value)) = out.headers.get_mut(*position) {
                *value = render(text, &values, &mut budget, |value, out| out.push_str(value))?;
            }
        }
        match &self.body {
            None => {}
            Some(BodyTemplate::Form(text)) => {
                let body = render(text, &values, &mut budget, |value, out| {
                    out.extend(utf8_percent_encode(value, COMPONENT));
                })?;
                out.body = Some(Bytes::from(body));
            }
            Some(BodyTemplate::Json(template)) => {
                let value = render_json(template, &values, &mut budget)?;
                out.body = Some(Bytes::from(value.to_string()));
            }
        }
        Ok(out)
    }
}

/// An item that waits for the answers it refers to; once they are in, its references are
/// substituted and `build` (the dialect's guards) makes the request.
pub fn deferred(raw: RawItem, template: Template, build: &Build) -> Planned {
    Planned::Deferred(Box::new(Deferred {
        sources: template.sources(),
        raw,
        template,
        build: build.clone(),
    }))
}

/// An item waiting for the answers it refers to.
struct Deferred {
    raw: RawItem,
    template: Template,
    sources: Vec<usize>,
    build: Build,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("raw", &self.raw)
            .field("sources", &self.sources)
            .finish()
    }
}

impl RequestTemplate for Deferred {
    fn sources(&self) -> &[usize] {
        &self.sources
    }

    fn finish(&self, answers: Answers<'_>) -> Result<SubRequest, Failure> {
        let raw = self
            .template
            .resolve(&self.raw, answers)
            .map_err(|detail| {
                Failure::new(FailureKind::ReferenceUnresolved, Sent::Nothing).with_detail(detail)
            })?;
        (self.build)(&raw)
            .map_err(|refusal| Failure::new(FailureKind::Refused(refusal), Sent::Nothing))
    }
}

/// What is left of an item's expansion budget.
struct Budget(usize);

impl Budget {
    /// Whether `bytes` more would still fit, before they are made.
    fn fits(&self, bytes: usize) -> Result<(), String> {
        if bytes > self.0 {
            return Err(format!(
                "the references expand past {MAX_EXPANDED_BYTES} bytes"
            ));
        }
        Ok(())
    }

    fn spend(&mut self, bytes: usize) -> Result<(), String> {
        self.0 = self
            .0
            .checked_sub(bytes)
            .ok_or_else(|| format!("the references expand past {MAX_EXPANDED_BYTES} bytes"))?;
        Ok(())
    }
}

/// The referenced item's answer as JSON.
fn answer_json(reference: &Reference, answers: Answers<'_>) -> Result<Value, String> {
    match answers(reference.source) {
        Some(Outcome::Response(response)) if (200..300).contains(&response.status) => {
            serde_json::from_slice(&response.body).map_err(|_| {
                format!(
                    "{{result={}}}: that item's answer is not JSON",
                    reference.text
                )
            })
        }
        _ => Err(format!(
            "{{result={}}}: that item did not succeed",
            reference.text
        )),
    }
}

/// A value's size as compact JSON, counted without writing it out.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A selected value as text: a string as it is, anything else as compact JSON.
fn as_text(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// `text` with each reference's values, joined by commas, written by `write`.
fn render(
    text: &Text,
    values: &[Vec<&Value>],
    budget: &mut Budget,
    mut write: impl FnMut(&str, &mut String),
) -> Result<String, String> {
    let mut out = String::new();
    for part in &text.0 {
        match part {
            Part::Literal(literal) => out.push_str(literal),
            Part::Ref(n) => {
                for (i, value) in values.get(*n).into_iter().flatten().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    budget.fits(json_len(value))?;
                    let before = out.len();
                    write(&as_text(value), &mut out);
                    budget.spend(out.len() - before)?;
                }
            }
        }
    }
    Ok(out)
}

/// A url with each value encoded as data of the component it lands in (before the first
/// literal `?`: a path segment; after: the query; after `#`: refused). A value that would make
/// a whole path segment `.` or `..` is refused.
fn render_url(
    text: &Text,
    values: &[Vec<&Value>],
    references: &[Reference],
    budget: &mut Budget,
) -> Result<String, String> {
    let mut out = String::new();
    let mut in_query = false;
    for (i, part) in text.0.iter().enumerate() {
        match part {
            Part::Literal(literal) => {
                in_query |= literal.contains('?');
                if literal.contains('#') {
                    return Err("an item url with references cannot have a fragment".to_string());
                }
                out.push_str(literal);
            }
            Part::Ref(n) => {
                let before = out.len();
                let selected = values.get(*n).map(Vec::as_slice).unwrap_or_default();
                budget.fits(selected.iter().map(|v| json_len(v)).sum())?;
                let joined = selected
                    .iter()
                    .map(|v| utf8_percent_encode(&as_text(v), COMPONENT).to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let segment_alone = !in_query
                    && out.ends_with('/')
                    && match text.0.get(i + 1) {
                        None => true,
                        Some(Part::Literal(next)) => next.starts_with(['/', '?']),
                        Some(Part::Ref(_)) => false,
                    };
                if segment_alone && (joined == "." || joined == ".." || joined.is_empty()) {
                    let name = references.get(*n).map_or("", |r| r.text.as_str());
                    return Err(format!(
                        "{{result={name}}} would make the path segment {joined:?}"
                    ));
                }
                out.push_str(&joined);
                budget.spend(out.len() - before)?;
            }
        }
    }
    Ok(out)
}

fn render_json(
    template: &JsonTemplate,
    values: &[Vec<&Value>],
    budget: &mut Budget,
) -> Result<Value, String> {
    Ok(match template {
        JsonTemplate::Literal(value) => value.clone(),
        JsonTemplate::Text(text) => Value::String(render(text, values, budget, |value, out| {
            out.push_str(value)
        })?),
        JsonTemplate::Ref(n) => {
            let selected = values.get(*n).map(Vec::as_slice).unwrap_or_default();
            let size: usize = selected.iter().map(|v| json_len(v) + 1).sum();
            budget.spend(size)?;
            match selected {
                [one] => (*one).clone(),
                many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
            }
        }
        JsonTemplate::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_json(item, values, budget))
                .collect::<Result<_, _>>()?,
        ),
        JsonTemplate::Object(members) => Value::Object(
            members
                .iter()
                .map(|(name, item)| Ok((name.clone(), render_json(item, values, budget)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

fn json_template(
    value: Value,
    lookup: Lookup<'_>,
    references: &mut Vec<Reference>,
) -> Result<JsonTemplate, String> {
    Ok(match value {
        Value::String(s) => match parse_text(&s, lookup, references)? {
            Some(text) => JsonTemplate::Text(text),
            None => JsonTemplate::Literal(Value::String(s)),
        },
        Value::Object(map) if map.len() == 1 && map.contains_key(REF_MEMBER) => {
            let Some(Value::String(spec)) = map.get(REF_MEMBER) else {
                return Err(format!(
                    "{{\"{REF_MEMBER}\": ...}} takes a string NAME:PATH"
                ));
            };
            references.push(reference(spec, lookup)?);
            JsonTemplate::Ref(references.len() - 1)
        }
        Value::Array(items) => {
            let items = items
                .into_iter()
                .map(|item| json_template(item, lookup, references))
                .collect::<Result<Vec<_>, _>>()?;
            if items.iter().all(|i| matches!(i, JsonTemplate::Literal(_))) {
                JsonTemplate::Literal(Value::Array(items.into_iter().map(literal).collect()))
            } else {
                JsonTemplate::Array(items)
            }
        }
        Value::Object(map) => {
            let members = map
                .into_iter()
                .map(|(name, item)| Ok((name, json_template(item, lookup, references)?)))
                .collect::<Result<Vec<_>, String>>()?;
            if members
                .iter()
                .all(|(_, i)| matches!(i, JsonTemplate::Literal(_)))
            {
                JsonTemplate::Literal(Value::Object(
                    members.into_iter().map(|(n, i)| (n, literal(i))).collect(),
                ))
            } else {
                JsonTemplate::Object(members)
            }
        }
        other => JsonTemplate::Literal(other),
    })
}

fn literal(template: JsonTemplate) -> Value {
    match template {
        JsonTemplate::Literal(value) => value,
        _ => Value::Null,
    }
}

/// The references in `text`, or `None` when it has none.
fn parse_text(
    text: &str,
    lookup: Lookup<'_>,
    references: &mut Vec<Reference>,
) -> Result<Option<Text>, String> {
    if !text.contains(OPEN) {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            parts.push(Part::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + OPEN.len()..];
        let end = closing_brace(after)
            .ok_or_else(|| format!("{OPEN}... is not closed by }} in {text:?}"))?;
        references.push(reference(&after[..end], lookup)?);
        if references.len() > MAX_REFERENCES {
            return Err(format!(
                "at most {MAX_REFERENCES} references are allowed per item"
            ));
        }
        parts.push(Part::Ref(references.len() - 1));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(Some(Text(parts)))
}

/// The `}` that closes a reference: the first one outside a quoted path step.
fn closing_brace(text: &str) -> Option<usize> {
    let mut quote = None;
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '}') => return Some(at),
            _ => {}
        }
    }
    None
}

/// `NAME:PATH`, its name looked up.
fn reference(spec: &str, lookup: Lookup<'_>) -> Result<Reference, String> {
    let (name, path) = spec
        .split_once(':')
        .ok_or_else(|| format!("the reference {spec:?} must be NAME:JSONPATH"))?;
    let source = lookup(name)?;
    let path = Path::parse(path)?;
    Ok(Reference {
        source,
        text: spec.to_string(),
        path,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests;
