//! Validation of fanout routes: the id list, parameter and header rules, the per-id request
//! template and the reply mapping, all declared in the config file.

use super::error_format::{error_format, ErrorFormat, HUAWEI_ERROR_FORMAT};
use super::file::{
    FanoutIdsSection, FanoutReplySection, FanoutRequestSection, FieldRuleSection, RouteSection,
};
use super::problems::Problems;
use super::values::unforwardable;
use crate::guard::PathTemplate;
use http::header::HeaderName;
use http::Method;

/// Longest id accepted unless the route says otherwise.
pub const DEFAULT_MAX_ID_LENGTH: usize = 256;
/// Outer methods a fanout route accepts by default (Huawei sends a GET with a JSON body).
pub const DEFAULT_FANOUT_METHODS: &[Method] = &[Method::GET, Method::POST];

/// A validated fanout route.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub methods: Vec<Method>,
    pub ids_param: String,
    pub collapse_duplicates: bool,
    pub max_id_length: usize,
    pub params: Vec<FieldRule>,
    pub headers: Vec<HeaderRule>,
    pub request_method: Method,
    pub target: PathTemplate,
    pub list_field: String,
    /// `None`: each element is the per-id reply as it came.
    pub fields: Option<Vec<(String, FieldSource)>>,
    pub on_item_error: OnItemError,
    pub missing_field: MissingField,
    pub error_format: ErrorFormat,
}

/// What a field whose JSON pointer names nothing in a part's reply becomes. Either way it is
/// counted (`batchgate_reply_fields_missing_total`, or the part as `upstream_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingField {
    /// `null` in the element.
    Null,
    /// The part fails: an upstream that leaves out a field the reply promises is broken.
    Error,
}

/// Length rules for one parameter or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub name: String,
    pub required: bool,
    pub min_length: usize,
    pub max_length: usize,
}

/// A validated header with whether it travels to every part.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    pub rule: FieldRule,
    pub header: HeaderName,
    pub forward: bool,
}

/// Where an element field comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource {
    /// The id as the client sent it.
    Id,
    /// A JSON pointer into the per-id reply (`""` is the whole reply).
    Pointer(String),
}

/// What a failed part does to the merged reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnItemError {
    /// The whole reply is an error.
    Fail,
    /// The element is left out; the reply is flagged partial.
    Omit,
    /// The element carries the id and an `error` object; the reply is flagged partial.
    Include,
}

/// A table a fanout route cannot do without (`[routes.KEY]` with its `needs` key); a
/// problem naming both when it is missing.
fn required<'a, T>(
    table: &'a Option<T>,
    i: &str,
    key: &str,
    needs: &str,
    problems: &mut Problems,
) -> Option<&'a T> {
    if table.is_none() {
        let message = format!("a fanout route needs [routes.{key}] with `{needs}`");
        problems.push(&["routes", i, key], message);
    }
    table.as_ref()
}

pub(super) fn fanout_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<FanoutConfig> {
    let before = problems.0.len();
    let methods = methods(section.methods.as_deref(), i, problems);
    let ids = required(&section.ids, i, "ids", "param", problems)?;
    let params = rules(section.params.as_deref(), i, "params", problems);
    let headers = header_rules(section, i, problems);
    let request = required(&section.request, i, "request", "path", problems)?;
    let target = target(request, &params, i, problems);
    let request_method = request_method(request, i, problems);
    let reply = required(&section.reply, i, "reply", "list_field", problems)?;
    let fields = reply_fields(reply, i, problems);
    let on_item_error = on_item_error(section, i, problems);
    let missing_field = missing_field(reply, i, problems);
    let max_id_length = max_id_length(ids, i, problems);
    let error_format = error_format(section, i, HUAWEI_ERROR_FORMAT, problems);
    if problems.0.len() != before {
        return None;
    }
    Some(FanoutConfig {
        methods,
        ids_param: ids.param.clone(),
        collapse_duplicates: super::values::flag(
            ids.collapse_duplicates,
            true,
            &["routes", i, "ids", "collapse_duplicates"],
            problems,
        ),
        max_id_length,
        params,
        headers,
        request_method,
        target: target?,
        list_field: reply.list_field.clone(),
        fields,
        on_item_error,
        missing_field,
        error_format,
    })
}

/// The `[[routes.headers]]` rules, each also a valid header name. A rule that forwards the
/// client's value (`forward`, the default) may not name a header the item header guard
/// refuses (framing, proxy-owned, overrides); a validate-only rule may.
fn header_rules(section: &RouteSection, i: &str, problems: &mut Problems) -> Vec<HeaderRule> {
    rules(section.headers.as_deref(), i, "headers", problems)
        .into_iter()
        .zip(section.headers.iter().flatten())
        .enumerate()
        .filter_map(|(j, (rule, raw))| {
            let j = j.to_string();
            let at = ["routes", i, "headers", j.as_str(), "name"];
            let Ok(header) = HeaderName::from_bytes(rule.name.as_bytes()) else {
                problems.push(&at, "not a header name");
                return None;
            };
            let forward = raw.forward.unwrap_or(true);
            if forward {
                if let Some(why) = unforwardable(&rule.name, &header) {
                    problems.push(
                        &at,
                        format!("{why} (with forward = false it is only validated)"),
                    );
                    return None;
                }
            }
            Some(HeaderRule {
                rule,
                header,
                forward,
            })
        })
        .collect()
}

/// The per-id request path; it may use `{id}` (required) and the declared parameters.
fn target(
    request: &FanoutRequestSection,
    params: &[FieldRule],
    i: &str,
    problems: &mut Problems,
) -> Option<PathTemplate> {
    let mut known: Vec<&str> = vec!["id"];
    known.extend(params.iter().map(|p| p.name.as_str()));
    let target = PathTemplate::parse(&request.path, &known)
        .map_err(|why| problems.push(&["routes", i, "request", "path"], why))
        .ok();
    if let Some(t) = &target {
        if !t.placeholders().any(|name| name == "id") {
            problems.push(
                &["routes", i, "request", "path"],
                "the path must contain {id}",
            );
        }
    }
    target
}

fn request_method(request: &FanoutRequestSection, i: &str, problems: &mut Problems) -> Method {
    match Method::from_bytes(request.method.as_deref().unwrap_or("GET").as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            problems.push(&["routes", i, "request", "method"], "not an HTTP method");
            Method::GET
        }
    }
}

/// The element fields of the merged reply, each the id or a JSON pointer into a part.
fn reply_fields(
    reply: &FanoutReplySection,
    i: &str,
    problems: &mut Problems,
) -> Option<Vec<(String, FieldSource)>> {
    reply.fields.as_ref().map(|table| {
        table
            .iter()
            .filter_map(|(name, source)| match source.as_str() {
                Some("$id") => Some((name.clone(), FieldSource::Id)),
                Some(pointer) if pointer.is_empty() || pointer.starts_with('/') => {
                    Some((name.clone(), FieldSource::Pointer(pointer.to_string())))
                }
                _ => {
                    problems.push(
                        &["routes", i, "reply", "fields", name],
                        "must be \"$id\" or a JSON pointer such as \"/url\" (\"\" is the whole reply)",
                    );
                    None
                }
            })
            .collect()
    })
}

fn on_item_error(section: &RouteSection, i: &str, problems: &mut Problems) -> OnItemError {
    let at = ["routes", i, "on_item_error"];
    match super::values::noted(section.on_item_error.as_deref(), "include", &at, problems) {
        None | Some("include") => OnItemError::Include,
        Some("omit") => OnItemError::Omit,
        Some("fail") => OnItemError::Fail,
        Some(other) => {
            problems.push(
                &["routes", i, "on_item_error"],
                format!("{other:?} is not \"fail\", \"omit\" or \"include\""),
            );
            OnItemError::Include
        }
    }
}

fn missing_field(reply: &FanoutReplySection, i: &str, problems: &mut Problems) -> MissingField {
    let at = ["routes", i, "reply", "missing_field"];
    match super::values::noted(reply.missing_field.as_deref(), "null", &at, problems) {
        None | Some("null") => MissingField::Null,
        Some("error") => MissingField::Error,
        Some(other) => {
            problems.push(
                &["routes", i, "reply", "missing_field"],
                format!("{other:?} is not \"null\" or \"error\""),
            );
            MissingField::Null
        }
    }
}

fn max_id_length(ids: &FanoutIdsSection, i: &str, problems: &mut Problems) -> usize {
    ids.max_length.map_or(DEFAULT_MAX_ID_LENGTH, |n| {
        usize::try_from(n)
            .ok()
            .filter(|n| (1..=8192).contains(n))
            .unwrap_or_else(|| {
                problems.push(
                    &["routes", i, "ids", "max_length"],
                    format!("{n} is not allowed (1..=8192)"),
                );
                DEFAULT_MAX_ID_LENGTH
            })
    })
}

fn methods(names: Option<&[String]>, i: &str, problems: &mut Problems) -> Vec<Method> {
    let Some(names) = names else {
        return DEFAULT_FANOUT_METHODS.to_vec();
    };
    names
        .iter()
        .enumerate()
        .filter_map(|(j, name)| match Method::from_bytes(name.as_bytes()) {
            Ok(m) if name.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
            _ => {
                problems.push(
                    &["routes", i, "methods", &j.to_string()],
                    format!("{name:?} is not an upper-case HTTP method"),
                );
                None
            }
        })
        .collect()
}

fn rules(
    sections: Option<&[FieldRuleSection]>,
    i: &str,
    key: &str,
    problems: &mut Problems,
) -> Vec<FieldRule> {
    let mut out = Vec::new();
    for (j, rule) in sections.unwrap_or_default().iter().enumerate() {
        let j = j.to_string();
        let length = |value: Option<i64>, default: usize, field: &str, problems: &mut Problems| {
            value.map_or(default, |n| {
                usize::try_from(n).unwrap_or_else(|_| {
                    problems.push(
                        &["routes", i, key, &j, field],
                        format!("{n} is not allowed (0..)"),
                    );
                    default
                })
            })
        };
        let min_length = length(rule.min_length, 0, "min_length", problems);
        let max_length = length(rule.max_length, usize::MAX, "max_length", problems);
        if min_length > max_length {
            problems.push(
                &["routes", i, key, &j, "min_length"],
                "min_length is above max_length",
            );
        }
        if rule.name.is_empty() || rule.name == "id" {
            problems.push(
                &["routes", i, key, &j, "name"],
                "the name must be non-empty and not \"id\"",
            );
        }
        out.push(FieldRule {
            name: rule.name.clone(),
            required: rule.required.unwrap_or(false),
            min_length,
            max_length,
        });
    }
    out
}
