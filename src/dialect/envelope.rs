//! The envelope dialect: Alibaba Cloud PDS `POST /v2/batch` (the Microsoft Graph `$batch` family).
//!
//! Request `{"resource":"file","requests":[{"id","method","url","body","headers"}]}`, reply
//! `{"responses":[{"id","status","headers","body"}]}` in request order. Child bodies are
//! forwarded as the exact JSON text the client sent (sliced out of the request body, never
//! re-encoded) and upstream JSON bodies are embedded as they came. See docs/DIALECTS.md,
//! "Envelope dialect", for the body embedding rule.

use super::reference::{self, BodyKind, RawItem, Template};
use super::{
    allowed_method, is_json_content_type, is_utf8_charset, BatchRequest, Dialect, ItemRefusal,
    Order, Outcome, Plan, Planned, Rejection, RejectionKind, Reply, StreamRecord, SubRequest,
    UpstreamResponse,
};
use crate::config::EnvelopeConfig;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// An envelope route: its settings plus its item limit.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub config: Arc<EnvelopeConfig>,
    pub max_items: usize,
}

/// What the encoder needs per item: the id exactly as the client wrote it (JSON text).
#[derive(Debug, Clone)]
pub struct EnvelopeMeta {
    pub id: Bytes,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(borrow, default)]
    requests: Option<&'a RawValue>,
    /// Per-request switches over the route's `sequential` and `stop_on_failure`.
    #[serde(default)]
    sequential: Option<bool>,
    #[serde(default)]
    stop_on_failure: Option<bool>,
}

#[derive(Deserialize)]
struct ItemFields<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
    /// Microsoft Graph's ordering between items (`dependencies = "graph"`; refused otherwise,
    /// never ignored).
    #[serde(borrow, default, rename = "dependsOn")]
    depends_on: Option<&'a RawValue>,
    /// The same, as Graph's Python SDKs spell it.
    #[serde(borrow, default, rename = "depends_on")]
    depends_on_alias: Option<&'a RawValue>,
}

impl<'a> ItemFields<'a> {
    /// The item's dependency list, under either spelling (not both).
    fn dependencies(&self, index: usize) -> Result<Option<&'a RawValue>, Rejection> {
        match (self.depends_on, self.depends_on_alias) {
            (Some(_), Some(_)) => Err(Rejection::new(
                RejectionKind::InvalidParameter,
                depends::CODE_DEPENDS_ON,
                format!("requests[{index}] gives both dependsOn and depends_on; give one"),
            )),
            (one, other) => Ok(one.or(other)),
        }
    }
}

/// Headers one item may set (Envoy's default `max_headers_count`); beyond it the item is a
/// 400 here rather than an opaque failure at the upstream's own header limit.
pub const MAX_ITEM_HEADERS: usize = 100;

const CODE_BODY: &str = "InvalidParameter.Body";
const CODE_REQUESTS: &str = "InvalidParameter.Requests";
const CODE_ID: &str = "InvalidParameter.Id";
const CODE_RESOURCE: &str = "InvalidParameter.Resource";
const CODE_REFERENCE: &str = "InvalidParameter.Reference";

impl Dialect for Envelope {
    type Meta = EnvelopeMeta;

    fn decode(&self, request: &BatchRequest<'_>) -> Result<Plan<EnvelopeMeta>, Rejection> {
        let (items, order) = self.child_requests(request.body)?;
        let mut plan = Plan {
            order,
            meta: Vec::with_capacity(items.len()),
            items: Vec::with_capacity(items.len()),
            after: Vec::new(),
        };
        let mut seen_ids = HashMap::with_capacity(items.len());
        let mut dependency_lists = Vec::new();
        let mut raw_items = Vec::with_capacity(items.len());
        for (index, raw) in items.into_iter().enumerate() {
            let invalid_item = |detail: String| {
                Rejection::new(
                    RejectionKind::InvalidItem,
                    CODE_REQUESTS,
                    format!("requests[{index}] must be an object{detail}"),
                )
            };
            if !is_object(raw) {
                return Err(invalid_item(String::new()));
            }
            // An object can still fail here: a member named twice (`"url"` twice would make
            // "which url was checked" ambiguous), so say which.
            let fields: ItemFields<'_> = serde_json::from_str(raw.get())
                .map_err(|e| invalid_item(format!(" with each member once: {e}")))?;
            let id_raw = check_id(index, fields.id, &mut seen_ids)?;
            plan.meta.push(EnvelopeMeta {
                id: request.body.slice_ref(id_raw.get().as_bytes()),
            });
            let dependencies = fields.dependencies(index)?;
            if self.config.dependencies {
                dependency_lists.push(dependencies);
            }
            raw_items.push(self.raw_item(request, &fields, dependencies));
        }
        if self.config.dependencies {
            plan.after = depends::resolve(&dependency_lists, &seen_ids)?;
        }
        // With dependencies on, an item may also use an earlier item's answer (by its id).
        let mut build: Option<reference::Build> = None;
        let mut referring = Vec::new();
        for (index, raw) in raw_items.into_iter().enumerate() {
            let raw = match raw {
                Ok(raw) => raw,
                Err(refusal) => {
                    plan.items.push(Err(Outcome::refused(refusal)));
                    continue;
                }
            };
            let template = if self.config.dependencies {
                let lookup = |name: &str| depends::earlier(name, index, &seen_ids);
                Template::parse(&raw, BodyKind::Json, &lookup).map_err(|message| {
                    Rejection::new(
                        RejectionKind::InvalidParameter,
                        CODE_REFERENCE,
                        format!("requests[{index}]: {message}"),
                    )
                })?
            } else {
                None
            };
            let item = match template {
                None => self
                    .build(&raw, request.authority)
                    .map(Planned::Ready)
                    .map_err(Outcome::refused),
                Some(template) => {
                    referring.push((index, template.sources()));
                    let build = build.get_or_insert_with(|| self.builder(request.authority));
                    Ok(reference::deferred(raw, template, build))
                }
            };
            plan.items.push(item);
        }
        if !referring.is_empty() {
            plan.after = depends::with_references(plan.after, &referring, plan.items.len())?;
        }
        Ok(plan)
    }

    fn encode(&self, meta: Vec<EnvelopeMeta>, outcomes: Vec<Outcome>) -> Reply {
        let size: usize = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Response(r) => r.body.len() + 64,
                _ => 128,
            })
            .sum();
        let mut out = Vec::with_capacity(size + 16);
        out.extend_from_slice(b"{\"responses\":[");
        let metas = meta;
        let status_of = |i: usize| outcomes.get(i).map(Outcome::status);
        for (i, (meta, outcome)) in metas.iter().zip(outcomes.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_item(&mut out, meta, outcome, &metas, &status_of);
        }
        out.extend_from_slice(b"]}");
        Reply::json(200, out)
    }

    fn progressive_frame(&self, _meta: &[EnvelopeMeta]) -> Option<(&'static [u8], &'static [u8])> {
        Some((b"{\"responses\":[", b"]}"))
    }

    fn stream_record(
        &self,
        metas: &[EnvelopeMeta],
        index: usize,
        outcome: &Outcome,
        status_of: &dyn Fn(usize) -> Option<u16>,
    ) -> Option<StreamRecord> {
        let mut json = Vec::with_capacity(128);
        self.write_item(&mut json, metas.get(index)?, outcome, metas, status_of);
        Some(StreamRecord {
            json,
            unusable: false,
            fields_missing: 0,
        })
    }

    fn malformed_body(&self, message: String) -> Rejection {
        Rejection::new(RejectionKind::ParseError, CODE_BODY, message)
    }

    fn reply_cost(&self) -> fn(&UpstreamResponse) -> usize {
        match self.config.body_rule {
            BodyRule::Pds => reply_cost,
            BodyRule::Graph => reply::graph_reply_cost,
        }
    }

    fn reject(&self, rejection: &Rejection) -> Reply {
        let body = self
            .config
            .error_format
            .render(rejection.code, &rejection.message);
        let mut reply = Reply::json(rejection.kind.status(), body);
        if rejection.kind == RejectionKind::MethodNotAllowed {
            reply
                .headers
                .push((http::header::ALLOW, HeaderValue::from_static("POST")));
        }
        reply
    }
}

impl Envelope {
    /// `{"id":..,"status":..,"headers":..,"body":..}` for one item, the same in a buffered
    /// reply and in a streamed record.
    fn write_item(
        &self,
        out: &mut Vec<u8>,
        meta: &EnvelopeMeta,
        outcome: &Outcome,
        metas: &[EnvelopeMeta],
        status_of: &dyn Fn(usize) -> Option<u16>,
    ) {
        let (rule, errors) = (self.config.body_rule, &self.config.error_format);
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(&meta.id);
        match depends::named(outcome, metas, status_of) {
            Some(named) => write_outcome(out, &named, rule, errors),
            None => write_outcome(out, outcome, rule, errors),
        }
        out.push(b'}');
    }

    /// The body's `requests`, each a raw JSON value, after the whole-batch checks: an object
    /// body, an allowed `resource`, 1 to `max_items` child requests.
    fn child_requests<'b>(&self, body: &'b Bytes) -> Result<(Vec<&'b RawValue>, Order), Rejection> {
        let parsed = outer_object(body)?;
        let order = if parsed.sequential.unwrap_or(self.config.sequential) {
            Order::Sequential {
                stop_on_failure: parsed
                    .stop_on_failure
                    .unwrap_or(self.config.stop_on_failure),
            }
        } else {
            Order::Concurrent
        };
        self.check_resource(parsed.resource)?;
        let requests_error = |kind, message: String| Rejection::new(kind, CODE_REQUESTS, message);
        let requests = parsed.requests.ok_or_else(|| {
            requests_error(RejectionKind::Empty, "requests is missing".to_string())
        })?;
        let items: Vec<&RawValue> = serde_json::from_str(requests.get()).map_err(|_| {
            requests_error(
                RejectionKind::InvalidParameter,
                "requests must be an array of objects".to_string(),
            )
        })?;
        let max = self.max_items;
        match items.len() {
            0 => Err(requests_error(
                RejectionKind::Empty,
                format!("requests is empty; send 1 to {max} child requests"),
            )),
            n if n > max => Err(requests_error(
                RejectionKind::TooManyItems,
                format!("requests has {n} child requests; at most {max} are allowed"),
            )),
            _ => Ok((items, order)),
        }
    }

    fn check_resource(&self, resource: Option<&RawValue>) -> Result<(), Rejection> {
        let Some(allowed) = &self.config.allowed_resources else {
            return Ok(());
        };
        let refuse = |message: String| {
            Rejection::new(RejectionKind::InvalidParameter, CODE_RESOURCE, message)
        };
        let Some(raw) = resource else {
            return Err(refuse(format!("resource is required (one of {allowed:?})")));
        };
        let name: String = serde_json::from_str(raw.get())
            .map_err(|_| refuse("resource must be a string".to_string()))?;
        if allowed.contains(&name) {
            Ok(())
        } else {
            Err(refuse(format!(
                "resource {name:?} is not allowed (one of {allowed:?})"
            )))
        }
    }

    /// An item's members as the client wrote them, each of the right JSON type.
    fn raw_item(
        &self,
        request: &BatchRequest<'_>,
        fields: &ItemFields<'_>,
        dependencies: Option<&RawValue>,
    ) -> Result<RawItem, ItemRefusal> {
        if !self.config.dependencies && depends::names_any(dependencies) {
            // Items run concurrently; silently dropping an ordering the client asked for
            // would reorder its writes.
            return Err(ItemRefusal::invalid(
                depends::CODE_DEPENDS_ON,
                "dependsOn is not enabled on this route (dependencies = \"graph\"): \
                          items of a batch run independently",
            ));
        }
        let method = string_field(fields.method, "method", "InvalidParameter.Method")?;
        let url = string_field(fields.url, "url", "InvalidParameter.Url")?;
        let headers = match fields.headers.filter(|r| r.get() != "null") {
            Some(raw) => header_pairs(raw)?,
            None => Vec::new(),
        };
        let body = match fields.body {
            Some(raw) if raw.get() != "null" => Some(request.body.slice_ref(raw.get().as_bytes())),
            _ => None,
        };
        Ok(RawItem {
            method,
            url,
            headers,
            body,
        })
    }

    /// The item as it goes upstream, through the route's guards: the same for an item as
    /// written and for one whose references were substituted.
    fn build(&self, raw: &RawItem, authority: Option<&str>) -> Result<SubRequest, ItemRefusal> {
        let method = allowed_method(&self.config.allowed_methods, &raw.method)?;
        let url = self.config.url_guard.origin_form(&raw.url, authority);
        let path = self.config.url_guard.check(&url)?;
        let mut headers = self.headers(&raw.headers)?;
        if raw.body.is_some() && !headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        Ok(SubRequest {
            method,
            path,
            headers,
            body: raw.body.clone(),
        })
    }

    /// `build` for items finished later, from the answers they refer to.
    fn builder(&self, authority: Option<&str>) -> reference::Build {
        let envelope = self.clone();
        let authority = authority.map(str::to_string);
        Arc::new(move |raw: &RawItem| envelope.build(raw, authority.as_deref()))
    }

    fn headers(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(http::HeaderName, HeaderValue)>, ItemRefusal> {
        let mut headers: Vec<(http::HeaderName, HeaderValue)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let (name, value) = self.checked_header(name, value)?;
            // `{"X-A":"1","x-a":"2"}` names one header twice; sending only one of them (or
            // both, for a singleton header) would guess what the client meant.
            // A scan, not a set: at most MAX_ITEM_HEADERS, usually one or two.
            if headers.iter().any(|(seen, _)| *seen == name) {
                return Err(bad_headers(format!(
                    "header {:?} is given more than once (header names are case-insensitive)",
                    name.as_str()
                )));
            }
            headers.push((name, value));
        }
        Ok(headers)
    }

    /// One item header through the route's header guard; a child Content-Type must be
    /// UTF-8 JSON, since the child body is a slice of the UTF-8 batch body.
    fn checked_header(
        &self,
        name: &str,
        value: &str,
    ) -> Result<(http::HeaderName, HeaderValue), ItemRefusal> {
        let (name, value) = self.config.header_guard.check(name, value)?;
        let bytes = value.as_bytes();
        if name == CONTENT_TYPE && !(is_json_content_type(bytes) && is_utf8_charset(bytes)) {
            return Err(ItemRefusal::invalid(
                "InvalidParameter.ContentType",
                format!(
                    "a child Content-Type can only be application/json (UTF-8), not {:?}",
                    value.to_str().unwrap_or("<binary>")
                ),
            ));
        }
        Ok((name, value))
    }
}

/// The members of a JSON object in the order written, repeated names included.
struct Members(Vec<(String, serde_json::Value)>);

fn bad_headers(message: String) -> ItemRefusal {
    ItemRefusal::invalid("InvalidParameter.Headers", message)
}

/// An item's `headers` object as name/value pairs, in order: read as pairs, not a map, since
/// a map would silently keep one of `{"X-A":"1","X-A":"2"}`.
fn header_pairs(raw: &RawValue) -> Result<Vec<(String, String)>, ItemRefusal> {
    let pairs: Vec<(String, String)> = serde_json::from_str::<Members>(raw.get())
        .map_err(|_| bad_headers("headers must be an object of strings".to_string()))?
        .0
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            _ => Err(bad_headers(format!(
                "header {k:?} must have a string value"
            ))),
        })
        .collect::<Result<_, _>>()?;
    if pairs.len() > MAX_ITEM_HEADERS {
        return Err(bad_headers(format!(
            "{} headers; at most {MAX_ITEM_HEADERS} are allowed per item",
            pairs.len()
        )));
    }
    Ok(pairs)
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Whether a JSON value is an object (RawValue text has no leading whitespace).
/// The batch body as a JSON object, its members kept as raw slices (one pass). serde would
/// also accept a struct written as an array; the contract is an object. Anything else is
/// first parsed as any JSON value, so broken JSON gets serde's precise error and valid JSON
/// of another type gets "another JSON type".
fn outer_object(body: &Bytes) -> Result<Body<'_>, Rejection> {
    let not_object = |detail: String| {
        Rejection::new(
            RejectionKind::ParseError,
            CODE_BODY,
            format!("the body is not a JSON object: {detail}"),
        )
    };
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        let _: &RawValue = serde_json::from_slice(body).map_err(|e| not_object(e.to_string()))?;
        return Err(not_object("found another JSON type".to_string()));
    }
    serde_json::from_slice(body).map_err(|e| not_object(e.to_string()))
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// The item's id, checked (a non-empty string, unique in the batch) and recorded in `seen`
/// with the item's index.
fn check_id<'a>(
    index: usize,
    raw: Option<&'a RawValue>,
    seen: &mut HashMap<String, usize>,
) -> Result<&'a RawValue, Rejection> {
    let refuse = |kind, message: String| Rejection::new(kind, CODE_ID, message);
    let Some(raw) = raw else {
        return Err(refuse(
            RejectionKind::InvalidItem,
            format!("requests[{index}].id is missing"),
        ));
    };
    let id: String = serde_json::from_str(raw.get()).map_err(|_| {
        let detail = if raw.get().starts_with('"') {
            // A string serde cannot decode: a lone surrogate escape such as "\ud800".
            " of valid Unicode (no lone surrogate escapes)"
        } else {
            ""
        };
        refuse(
            RejectionKind::InvalidItem,
            format!("requests[{index}].id must be a string{detail}"),
        )
    })?;
    if id.is_empty() {
        return Err(refuse(
            RejectionKind::InvalidItem,
            format!("requests[{index}].id is empty"),
        ));
    }
    if seen.insert(id.clone(), index).is_some() {
        return Err(refuse(
            RejectionKind::DuplicateId,
            format!("requests[{index}].id {id:?} is not unique in this batch"),
        ));
    }
    Ok(raw)
}

fn string_field(
    raw: Option<&RawValue>,
    name: &str,
    code: &'static str,
) -> Result<String, ItemRefusal> {
    let bad = |message: String| ItemRefusal::invalid(code, message);
    let raw = raw.ok_or_else(|| bad(format!("{name} is required")))?;
    serde_json::from_str(raw.get()).map_err(|_| {
        if raw.get().starts_with('"') {
            bad(format!(
                "{name} must be a string of valid Unicode (no lone surrogate escapes)"
            ))
        } else {
            bad(format!("{name} must be a string"))
        }
    })
}

mod depends;
mod reply;

use reply::write_outcome;
#[cfg(test)]
use reply::{body_form, write_body, write_headers, BodyForm};
pub use reply::{reply_cost, BodyRule};

#[cfg(test)]
mod tests;
