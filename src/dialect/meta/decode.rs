//! A Meta batch request into a plan: where the parameters are, the items and their names,
//! `depends_on` and references (earlier items only), and each item through the route's guards.

use super::{Meta, MetaMeta, BATCH_ERROR};
use crate::config::meta::{is_graph_version, MetaConfig};
use crate::dialect::reference::{BodyKind, RawItem, Template};
use crate::dialect::{
    allowed_method, media_type, BatchRequest, ItemRefusal, Order, Outcome, Plan, Rejection,
    RejectionKind, SubRequest,
};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Headers one item may set (as the envelope dialect).
const MAX_ITEM_HEADERS: usize = crate::dialect::envelope::MAX_ITEM_HEADERS;

/// The batch's parameters, wherever they came from.
#[derive(Default)]
struct Params {
    batch: Option<Value>,
    access_token: Option<String>,
    include_headers: Option<String>,
}

fn refuse(kind: RejectionKind, message: impl Into<String>) -> Rejection {
    Rejection::new(kind, BATCH_ERROR, message)
}

pub(super) fn decode(meta: &Meta, request: &BatchRequest<'_>) -> Result<Plan<MetaMeta>, Rejection> {
    let params = params(request)?;
    let items = items(params.batch, meta.max_items)?;
    let include_headers = !matches!(
        params.include_headers.as_deref().map(str::trim),
        Some("false" | "0")
    );
    let names = names(&items)?;
    let count = items.len();
    let mut plan = Plan {
        order: Order::Concurrent,
        meta: Vec::with_capacity(count),
        items: Vec::with_capacity(count),
        after: Vec::new(),
    };
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut referenced = vec![false; count];
    let mut keep_response = vec![false; count];
    let mut build = None;
    for (index, item) in items.iter().enumerate() {
        let Some(object) = item.as_object() else {
            return Err(refuse(
                RejectionKind::InvalidItem,
                format!("batch[{index}] must be an object"),
            ));
        };
        let earlier = |name: &str| earlier(name, index, &names);
        for name in depends_on(object, index)? {
            let source = earlier(&name).map_err(|m| refuse(RejectionKind::InvalidParameter, m))?;
            add_dependency(&mut after[index], source);
            referenced[source] = true;
        }
        keep_response[index] = object.get("omit_response_on_success") == Some(&Value::Bool(false));
        let raw = match raw_item(&meta.config, object, params.access_token.as_deref()) {
            Ok(raw) => raw,
            Err(refusal) => {
                plan.items.push(Err(Outcome::refused(refusal)));
                continue;
            }
        };
        let template = Template::parse(&raw, BodyKind::Form, &earlier).map_err(|m| {
            refuse(
                RejectionKind::InvalidParameter,
                format!("batch[{index}]: {m}"),
            )
        })?;
        if let Some(template) = &template {
            for source in template.sources() {
                add_dependency(&mut after[index], source);
                referenced[source] = true;
            }
        }
        plan.items.push(
            meta.planned(raw, template, &mut build)
                .map_err(Outcome::refused),
        );
    }
    plan.meta = (0..count)
        .map(|i| MetaMeta {
            omit_on_success: referenced[i] && !keep_response[i],
            include_headers,
        })
        .collect();
    if after.iter().any(|dependencies| !dependencies.is_empty()) {
        plan.after = after;
    }
    Ok(plan)
}

fn add_dependency(dependencies: &mut Vec<usize>, source: usize) {
    if !dependencies.contains(&source) {
        dependencies.push(source);
    }
}

/// The item named `name`, for item `index`: it must come before (Meta's rule and wording).
fn earlier(name: &str, index: usize, names: &HashMap<String, usize>) -> Result<usize, String> {
    match names.get(name) {
        Some(&source) if source < index => Ok(source),
        _ => Err(format!(
            "Request {index} cannot depend on an unresolved request with name {name}. \
             Requests can only depend on preceding requests"
        )),
    }
}

/// The `batch`, `access_token` and `include_headers` parameters: from a JSON or form body,
/// then the query string for any the body did not give. A parameter given twice in one place
/// is refused rather than guessed.
fn params(request: &BatchRequest<'_>) -> Result<Params, Rejection> {
    let mut params = Params::default();
    let content_type = request
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| media_type(v.as_bytes()));
    let is_json = request
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| crate::dialect::is_json_content_type(v.as_bytes()));
    if is_json {
        let body: Map<String, Value> =
            serde_json::from_slice(crate::dialect::strip_bom(request.body)).map_err(|e| {
                refuse(
                    RejectionKind::ParseError,
                    format!("the body is not a JSON object: {e}"),
                )
            })?;
        for (name, value) in body {
            let text = |value: Value| match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            match name.as_str() {
                "batch" => params.batch = Some(value),
                "access_token" => params.access_token = Some(text(value)),
                "include_headers" => params.include_headers = Some(text(value)),
                _ => {}
            }
        }
    } else if !request.body.is_empty() || content_type.is_some() {
        if std::str::from_utf8(request.body).is_err() {
            return Err(refuse(
                RejectionKind::ParseError,
                "the form body is not UTF-8",
            ));
        }
        form_params(request.body, &mut params, "body")?;
    }
    if let Some(query) = request.query {
        let mut from_query = Params::default();
        form_params(query.as_bytes(), &mut from_query, "query string")?;
        params.batch = params.batch.or(from_query.batch);
        params.access_token = params.access_token.or(from_query.access_token);
        params.include_headers = params.include_headers.or(from_query.include_headers);
    }
    Ok(params)
}

fn form_params(form: &[u8], params: &mut Params, place: &str) -> Result<(), Rejection> {
    for (name, value) in form_urlencoded::parse(form) {
        let slot = match name.as_ref() {
            "batch" => {
                if params.batch.is_some() {
                    return Err(twice("batch", place));
                }
                params.batch = Some(Value::String(value.into_owned()));
                continue;
            }
            "access_token" => &mut params.access_token,
            "include_headers" => &mut params.include_headers,
            _ => continue,
        };
        if slot.is_some() {
            return Err(twice(&name, place));
        }
        *slot = Some(value.into_owned());
    }
    Ok(())
}

fn twice(name: &str, place: &str) -> Rejection {
    refuse(
        RejectionKind::InvalidParameter,
        format!("{name} is given more than once in the {place}"),
    )
}

/// The batch's items: `batch` as a JSON array (or the text of one), 1 to `max` of them.
fn items(batch: Option<Value>, max: usize) -> Result<Vec<Value>, Rejection> {
    let not_array = || {
        refuse(
            RejectionKind::ParseError,
            "batch parameter must be a JSON array",
        )
    };
    let items = match batch {
        None => {
            return Err(refuse(
                RejectionKind::Empty,
                "the batch parameter is required",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => items,
            _ => return Err(not_array()),
        },
        Some(_) => return Err(not_array()),
    };
    match items.len() {
        0 => Err(refuse(
            RejectionKind::Empty,
            format!("the batch is empty; send 1 to {max} requests"),
        )),
        n if n > max => Err(refuse(
            RejectionKind::TooManyItems,
            format!("Too many requests in batch message. Maximum batch size is {max}"),
        )),
        _ => Ok(items),
    }
}

/// Each item's `name`, unique in the batch.
fn names(items: &[Value]) -> Result<HashMap<String, usize>, Rejection> {
    let mut names = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        match item.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if !name.is_empty() => {
                if names.insert(name.clone(), index).is_some() {
                    return Err(refuse(
                        RejectionKind::DuplicateId,
                        format!("batch[{index}].name {name:?} is not unique in this batch"),
                    ));
                }
            }
            Some(_) => {
                return Err(refuse(
                    RejectionKind::InvalidItem,
                    format!("batch[{index}].name must be a non-empty string"),
                ))
            }
        }
    }
    Ok(names)
}

/// The names an item's `depends_on` lists: one name, or an array of them.
fn depends_on(object: &Map<String, Value>, index: usize) -> Result<Vec<String>, Rejection> {
    let bad = || {
        refuse(
            RejectionKind::InvalidParameter,
            format!("batch[{index}].depends_on must be a name or an array of names"),
        )
    };
    match object.get("depends_on") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(name)) => Ok(vec![name.clone()]),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn invalid(message: impl Into<String>) -> ItemRefusal {
    ItemRefusal::invalid("InvalidParameter", message)
}

/// An item's members as the client wrote them: the url joined under the route (its version
/// prefix, if it repeats the route's, taken off) and the batch's access token added unless
/// the item has its own.
fn raw_item(
    config: &MetaConfig,
    object: &Map<String, Value>,
    access_token: Option<&str>,
) -> Result<RawItem, ItemRefusal> {
    if object.contains_key("attached_files") {
        return Err(invalid(
            "attached_files is not supported: send files in their own requests",
        ));
    }
    let method = match object.get("method") {
        Some(Value::String(method)) => method.clone(),
        None => return Err(invalid("method is required")),
        Some(_) => return Err(invalid("method must be a string")),
    };
    let relative_url = match object.get("relative_url") {
        Some(Value::String(url)) => url.as_str(),
        None => return Err(invalid("relative_url is required")),
        Some(_) => return Err(invalid("relative_url must be a string")),
    };
    let body = match object.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(body)) => Some(body.clone()),
        // A JSON body's members form-encoded, as Meta's clients send them.
        Some(Value::Object(members)) => Some(encode_form(members)),
        Some(_) => return Err(invalid("body must be a form-encoded string")),
    };
    let mut url = item_url(config, relative_url)?;
    if let Some(token) = access_token {
        let in_body = body
            .as_deref()
            .is_some_and(|b| has_param(b, "access_token"));
        let in_url = url
            .split_once('?')
            .is_some_and(|(_, query)| has_param(query, "access_token"));
        if !in_body && !in_url {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .append_pair("access_token", token)
                    .finish(),
            );
        }
    }
    Ok(RawItem {
        method,
        url,
        headers: headers(object.get("headers"))?,
        body: body.map(Bytes::from),
    })
}

/// `relative_url` as a path from the route's base: a leading `/` is optional, and a version
/// segment that repeats the route's is the same path; another version is refused.
fn item_url(config: &MetaConfig, relative_url: &str) -> Result<String, ItemRefusal> {
    let url = relative_url.strip_prefix('/').unwrap_or(relative_url);
    let first = url.split(['/', '?']).next().unwrap_or_default();
    let url = match (&config.version, is_graph_version(first)) {
        (Some(version), true) if version == first => &url[first.len()..],
        (Some(version), true) => {
            return Err(invalid(format!(
                "relative_url names API version {first}; this batch serves {version}"
            )))
        }
        _ => url,
    };
    let url = url.strip_prefix('/').unwrap_or(url);
    Ok(format!("/{url}"))
}

fn has_param(form: &str, name: &str) -> bool {
    form_urlencoded::parse(form.as_bytes()).any(|(n, _)| n == name)
}

fn encode_form(members: &Map<String, Value>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in members {
        match value {
            Value::String(s) => form.append_pair(name, s),
            other => form.append_pair(name, &other.to_string()),
        };
    }
    form.finish()
}

/// An item's `headers`: `["Name: value", ...]` (Meta's PHP SDK) or `[{"name","value"}, ...]`
/// (its Python and Java SDKs).
fn headers(raw: Option<&Value>) -> Result<Vec<(String, String)>, ItemRefusal> {
    let list = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("headers must be an array")),
    };
    if list.len() > MAX_ITEM_HEADERS {
        return Err(invalid(format!(
            "{} headers; at most {MAX_ITEM_HEADERS} are allowed per item",
            list.len()
        )));
    }
    list.iter()
        .map(|header| match header {
            Value::String(line) => line
                .split_once(':')
                .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                .ok_or_else(|| invalid(format!("header {line:?} is not \"Name: value\""))),
            Value::Object(pair) => match (pair.get("name"), pair.get("value")) {
                (Some(Value::String(name)), Some(Value::String(value))) => {
                    Ok((name.clone(), value.clone()))
                }
                _ => Err(invalid(
                    "a header object is {\"name\": string, \"value\": string}",
                )),
            },
            _ => Err(invalid(
                "each header is \"Name: value\" or {\"name\",\"value\"}",
            )),
        })
        .collect()
}

/// The item as it goes upstream, through the route's guards: the same for an item as
/// written and for one whose references were substituted.
pub(super) fn build(config: &MetaConfig, raw: &RawItem) -> Result<SubRequest, ItemRefusal> {
    let method = allowed_method(&config.allowed_methods, &raw.method)?;
    let path = config.url_guard.check(&raw.url)?;
    let mut headers: Vec<(http::HeaderName, HeaderValue)> = Vec::with_capacity(raw.headers.len());
    for (name, value) in &raw.headers {
        let (name, value) = config.header_guard.check(name, value)?;
        if headers.iter().any(|(seen, _)| *seen == name) {
            return Err(invalid(format!(
                "header {:?} is given more than once",
                name.as_str()
            )));
        }
        headers.push((name, value));
    }
    if raw.body.is_some() && !headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
        headers.push((
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        ));
    }
    Ok(SubRequest {
        method,
        path,
        headers,
        body: raw.body.clone(),
    })
}
