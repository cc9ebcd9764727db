//! Batching in the other direction (`[routes.upstream_batching]` on jsonrpc routes): calls of
//! many clients, each sent on its own, are gathered into one upstream JSON-RPC array, and each
//! caller gets exactly its own answer back.
//!
//! Calls gather per `Key`: the upstream, its path and `Host`, and what the upstream sees of the
//! caller (the forwarded headers, credentials among them): calls of different identities never
//! share an upstream request. A gathering is sent when it holds `max_items` calls or
//! `max_bytes`, else `max_wait` after its first call (never later than half that call's time
//! left, so a short deadline is not spent waiting), at most `max_concurrent` of the route's at
//! once. In the array each call carries its position as its id; the answers are matched back by
//! that id (never by position) and given the caller's own id. An answer the reply lacks, or a
//! reply that is not an array, fails only the calls it does not answer (`UpstreamBatch`, 502
//! with the reason). A caller gone before its gathering is sent is left out of it.

use crate::item::{Failure, FailureKind, Outcome, Sent, SubRequest, UpstreamResponse};
use crate::metrics::RouteMetrics;
pub use crate::metrics::UpstreamFlush as Flush;
use crate::upstream::{BatchHeaders, Call as Attempt, UpstreamClient};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

pub use crate::config::upstream_batch::UpstreamBatchConfig;
use crate::config::upstream_batch::{IdListConfig, SingleConfig};

/// What calls must share to share an upstream request.
pub type Key = [u8; 32];

/// One route's gatherings.
pub struct Batcher {
    config: Arc<UpstreamBatchConfig>,
    shape: Shape,
    gathering: Mutex<HashMap<Key, Gathering>>,
    /// Upstream batches of the route in flight.
    slots: Arc<Semaphore>,
    metrics: Option<Arc<RouteMetrics>>,
    /// Numbers the gatherings, so a timer sends only the one it was set for.
    next: std::sync::atomic::AtomicU64,
}

/// Calls waiting to be sent together, and how to send them (the first call's upstream and
/// headers: the key says the others' are the same).
struct Gathering {
    number: u64,
    calls: Vec<Waiting>,
    bytes: usize,
    route: Route,
}

#[derive(Clone)]
struct Route {
    client: Arc<UpstreamClient>,
    headers: BatchHeaders,
    request: SubRequest,
}

/// One gathered call.
pub enum Call {
    /// A JSON-RPC call as the client sent it, without its `id` (kept beside it).
    Rpc { call: Map<String, Value>, id: Value },
    /// The id a single-id call asks for.
    Id(String),
}

/// A call the batcher gathers, and what besides the batch's key its gathering must share
/// (a single-id call's other query parameters).
pub struct Gatherable {
    call: Call,
    key: Option<String>,
}

/// What the gathered calls become upstream.
#[derive(Debug, Clone)]
pub enum Shape {
    /// One JSON-RPC array.
    JsonRpc,
    /// One id-list call (`[routes.id_list]`).
    IdList(Arc<IdListConfig>, Arc<SingleConfig>),
}

struct Waiting {
    call: Call,
    arrived: Instant,
    until: Instant,
    answer: oneshot::Sender<Outcome>,
}

impl AsRef<Call> for Waiting {
    fn as_ref(&self) -> &Call {
        &self.call
    }
}

impl AsRef<Call> for Call {
    fn as_ref(&self) -> &Call {
        self
    }
}

/// The caller's side of a call: the upstream and headers its batch would use.
pub struct Caller {
    pub client: Arc<UpstreamClient>,
    pub headers: BatchHeaders,
}

impl Batcher {
    pub fn new(
        config: Arc<UpstreamBatchConfig>,
        shape: Shape,
        metrics: Option<Arc<RouteMetrics>>,
    ) -> Batcher {
        Batcher {
            shape,
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            gathering: Mutex::new(HashMap::new()),
            metrics,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a call is gathered: a JSON-RPC call that expects an answer (a notification
    /// has nothing to match back, and goes alone), or a single-id call. `None` otherwise.
    pub fn gatherable(&self, request: &SubRequest) -> Option<Gatherable> {
        match &self.shape {
            Shape::JsonRpc => {
                let body = request.body.as_deref()?;
                let mut call: Map<String, Value> = serde_json::from_slice(body).ok()?;
                let id = call.remove("id")?;
                Some(Gatherable {
                    call: Call::Rpc { call, id },
                    key: None,
                })
            }
            Shape::IdList(_, single) => {
                let (path, query) = request
                    .path
                    .split_once('?')
                    .unwrap_or((request.path.as_str(), ""));
                let id = single.id_of(path)?.to_string();
                Some(Gatherable {
                    call: Call::Id(id),
                    key: Some(query.to_string()),
                })
            }
        }
    }

    /// The answer to one call, sent upstream with the calls gathered with it; waited for
    /// until `until`.
    pub async fn call(
        self: &Arc<Self>,
        key: Key,
        gatherable: Gatherable,
        request: &SubRequest,
        caller: Caller,
        (until, mut present): (Instant, tokio::sync::watch::Receiver<()>),
    ) -> Outcome {
        let (answer, answered) = oneshot::channel();
        let key = match &gatherable.key {
            Some(part) => mixed(key, part),
            None => key,
        };
        let now = Instant::now();
        let size = request.body.as_ref().map_or(0, Bytes::len);
        let full = {
            let mut gathering = self.gathering.lock().unwrap_or_else(|e| e.into_inner());
            let open = gathering.entry(key).or_insert_with(|| Gathering {
                number: self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                calls: Vec::new(),
                bytes: 0,
                route: Route {
                    client: caller.client,
                    headers: caller.headers,
                    request: request.clone(),
                },
            });
            open.calls.push(Waiting {
                call: gatherable.call,
                arrived: now,
                until,
                answer,
            });
            open.bytes += size;
            if open.calls.len() == 1 {
                self.set_timer(key, open.number, now, until);
            }
            let reason = if open.calls.len() >= self.config.max_items {
                Some(Flush::Size)
            } else if open.bytes >= self.config.max_bytes {
                Some(Flush::Bytes)
            } else {
                None
            };
            reason.and_then(|reason| Some((gathering.remove(&key)?, reason)))
        };
        if let Some((gathering, reason)) = full {
            tokio::spawn(self.clone().send(gathering, reason));
        }
        // The caller's client gone: this call leaves (its receiver dropped, it is not sent
        // if its gathering has not been yet).
        let gone = async move { while present.changed().await.is_ok() {} };
        tokio::select! {
            answer = tokio::time::timeout_at(until, answered) => match answer {
                Ok(Ok(outcome)) => outcome,
                // The sending task ended without answering (it cannot, short of a panic).
                Ok(Err(_)) => Outcome::failed(FailureKind::Internal, Sent::Maybe),
                Err(_) => Outcome::failed(FailureKind::Timeout, Sent::Maybe),
            },
            () = gone => Outcome::failed(FailureKind::Cancelled, Sent::Maybe),
        }
    }

    /// Sends gathering `number` of `key` when its first call has waited long enough.
    fn set_timer(self: &Arc<Self>, key: Key, number: u64, now: Instant, until: Instant) {
        let waited = now + self.config.max_wait;
        let half_left = now + until.saturating_duration_since(now) / 2;
        let (at, reason) = if half_left < waited {
            (half_left, Flush::Deadline)
        } else {
            (waited, Flush::Wait)
        };
        let batcher = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = {
                let mut gathering = batcher.gathering.lock().unwrap_or_else(|e| e.into_inner());
                match gathering.get(&key) {
                    Some(open) if open.number == number => gathering.remove(&key),
                    _ => None,
                }
            };
            if let Some(gathering) = due {
                batcher.send(gathering, reason).await;
            }
        });
    }

    /// Sends one gathering as one upstream array and answers each of its calls.
    async fn send(self: Arc<Self>, gathering: Gathering, reason: Flush) {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        // Callers that left (their deadline, their client gone) are not sent.
        let calls: Vec<Waiting> = gathering
            .calls
            .into_iter()
            .filter(|w| !w.answer.is_closed())
            .collect();
        if calls.is_empty() {
            return;
        }
        let sent_at = Instant::now();
        if let Some(metrics) = &self.metrics {
            let waits = calls.iter().map(|w| sent_at - w.arrived);
            metrics.upstream_batch(reason, calls.len(), waits);
        }
        let route = gathering.route;
        let until = calls.iter().map(|w| w.until).min().unwrap_or(sent_at);
        let request = match &self.shape {
            Shape::JsonRpc => {
                let mut request = route.request;
                request.body = Some(Bytes::from(array(&calls)));
                request
            }
            Shape::IdList(list, _) => id_list_request(list, &route.request, &calls),
        };
        let mut headers = route.headers;
        headers.max_response_bytes = headers.max_response_bytes.saturating_mul(calls.len());
        let call = Attempt {
            repeatable: false,
            hedge_after: None,
            deadline: until,
            until,
        };
        let outcome = route.client.send(&request, &headers, &call).await;
        let outcomes = match &self.shape {
            Shape::JsonRpc => split(outcome, &calls),
            Shape::IdList(list, _) => split_ids(list, outcome, &calls),
        };
        for (waiting, outcome) in calls.into_iter().zip(outcomes) {
            let _ = waiting.answer.send(outcome);
        }
    }
}

/// The calls as one JSON-RPC array, each with its position as its id.
pub fn array<C: AsRef<Call>>(calls: &[C]) -> Vec<u8> {
    let mut out = Vec::with_capacity(calls.len() * 64 + 2);
    out.push(b'[');
    for (position, waiting) in calls.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        let Call::Rpc { call, .. } = waiting.as_ref() else {
            continue;
        };
        let mut call = call.clone();
        call.insert("id".to_string(), Value::from(position));
        // A map of JSON values always serializes.
        let _ = serde_json::to_writer(&mut out, &call);
    }
    out.push(b']');
    out
}

/// The upstream's 2xx answer to a gathered request, or the outcome of each of its `n` calls:
/// its failure, or an `UpstreamBatch` failure naming the HTTP status of the `what`.
fn successful(outcome: Outcome, what: &str, n: usize) -> Result<UpstreamResponse, Vec<Outcome>> {
    match outcome {
        Outcome::Failed(failure) => Err(vec![Outcome::Failed(failure); n]),
        Outcome::Response(response) if (200..300).contains(&response.status) => Ok(response),
        Outcome::Response(response) => Err(all_failed(
            format!(
                "the upstream answered the {what} with HTTP {}",
                response.status
            ),
            n,
        )),
    }
}

/// `n` calls failed alike: the upstream's answer did not answer them, for `reason`.
fn all_failed(reason: impl Into<String>, n: usize) -> Vec<Outcome> {
    let failure = Failure::new(FailureKind::UpstreamBatch, Sent::All).with_detail(reason);
    vec![Outcome::Failed(failure); n]
}

/// Each call's outcome from the upstream's answer to the array.
pub fn split<C: AsRef<Call>>(outcome: Outcome, calls: &[C]) -> Vec<Outcome> {
    let failed = |reason: String| all_failed(reason, calls.len());
    let response = match successful(outcome, "batch", calls.len()) {
        Ok(response) => response,
        Err(outcomes) => return outcomes,
    };
    let Ok(elements) = serde_json::from_slice::<Vec<&RawValue>>(&response.body) else {
        let object = serde_json::from_slice::<Map<String, Value>>(&response.body).is_ok();
        return failed(if object {
            "the upstream answered the batch with a single object, not an array".to_string()
        } else {
            "the upstream's answer to the batch is not a JSON array".to_string()
        });
    };
    let mut answers: Vec<Option<Bytes>> = vec![None; calls.len()];
    for element in elements {
        let Ok(mut answer) = serde_json::from_str::<Map<String, Value>>(element.get()) else {
            continue;
        };
        let position = answer.get("id").and_then(Value::as_u64).map(|p| p as usize);
        let Some(position) = position.filter(|p| *p < calls.len()) else {
            continue;
        };
        if answers[position].is_some() {
            continue;
        }
        let Call::Rpc { id, .. } = calls[position].as_ref() else {
            continue;
        };
        answer.insert("id".to_string(), id.clone());
        answers[position] = serde_json::to_vec(&answer).ok().map(Bytes::from);
    }
    let content_type = response.headers.get(CONTENT_TYPE).cloned();
    answers
        .into_iter()
        .map(|answer| match answer {
            Some(body) => {
                let mut headers = http::HeaderMap::new();
                if let Some(content_type) = &content_type {
                    headers.insert(CONTENT_TYPE, content_type.clone());
                }
                Outcome::Response(UpstreamResponse {
                    status: response.status,
                    headers,
                    body,
                })
            }
            None => Outcome::Failed(
                Failure::new(FailureKind::UpstreamBatch, Sent::All)
                    .with_detail("the upstream's answer to the batch has no answer for this call"),
            ),
        })
        .collect()
}

/// `key` narrowed by what else a gathering must share.
fn mixed(key: Key, part: &str) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&key);
    context.update(part.as_bytes());
    let mut mixed = [0; 32];
    mixed.copy_from_slice(context.finish().as_ref());
    mixed
}

/// The id-list call for these calls: each id once, in the order first asked; the single
/// calls' other query parameters (the same for all: they are part of the key) kept, except
/// any named like the ids parameter (the ids asked are the callers' path ids, nothing else).
pub fn id_list_request<C: AsRef<Call>>(
    list: &IdListConfig,
    single: &SubRequest,
    calls: &[C],
) -> SubRequest {
    let mut ids: Vec<&str> = Vec::with_capacity(calls.len());
    for waiting in calls {
        if let Call::Id(id) = waiting.as_ref() {
            if !ids.contains(&id.as_str()) {
                ids.push(id);
            }
        }
    }
    let query = single.path.split_once('?').map_or("", |(_, q)| q);
    let query = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !pair.is_empty()
                && form_urlencoded::parse(name.as_bytes())
                    .next()
                    .is_none_or(|(name, _)| name != list.ids.as_str())
        })
        .collect::<Vec<_>>()
        .join("&");
    let mut path = list.path.clone();
    if list.method == http::Method::GET {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        for id in &ids {
            pairs.append_pair(&list.ids, id);
        }
        let pairs = pairs.finish();
        path.push('?');
        if !query.is_empty() {
            path.push_str(&query);
            path.push('&');
        }
        path.push_str(&pairs);
        return SubRequest {
            method: http::Method::GET,
            path,
            headers: Vec::new(),
            body: None,
        };
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    let body = serde_json::json!({ list.ids.as_str(): ids });
    SubRequest {
        method: http::Method::POST,
        path,
        headers: vec![(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body: Some(Bytes::from(body.to_string())),
    }
}

/// Each call's answer from the id list: the entry naming its id (as the route's `answer`
/// shapes it), or `missing_status` when the list has none; matched by id, never by position.
pub fn split_ids<C: AsRef<Call>>(
    list: &IdListConfig,
    outcome: Outcome,
    calls: &[C],
) -> Vec<Outcome> {
    let failed = |reason: &str| all_failed(reason, calls.len());
    let response = match successful(outcome, "id list", calls.len()) {
        Ok(response) => response,
        Err(outcomes) => return outcomes,
    };
    let Ok(reply) = serde_json::from_slice::<Value>(&response.body) else {
        return failed("the upstream's answer to the id list is not JSON");
    };
    let entries = if list.list_field.is_empty() {
        reply.as_array()
    } else {
        reply.get(&list.list_field).and_then(Value::as_array)
    };
    let Some(entries) = entries else {
        return failed("the upstream's answer to the id list has no list of entries");
    };
    let id_of = |entry: &Value| match entry.get(&list.id_field)? {
        Value::String(id) => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    };
    // The first entry naming each id, so a long list is read once, not once per caller.
    let mut by_id: HashMap<String, &Value> = HashMap::with_capacity(entries.len().min(calls.len()));
    for entry in entries {
        if let Some(id) = id_of(entry) {
            by_id.entry(id).or_insert(entry);
        }
    }
    calls
        .iter()
        .map(|waiting| {
            let Call::Id(id) = waiting.as_ref() else {
                return Outcome::failed(FailureKind::Internal, Sent::All);
            };
            let entry = by_id.get(id.as_str()).copied();
            let (status, body) = match entry {
                Some(entry) if list.answer.is_empty() => (response.status, entry.clone()),
                Some(entry) => {
                    let answer: Map<String, Value> = list
                        .answer
                        .iter()
                        .map(|(name, pointer)| {
                            let value = entry.pointer(pointer).cloned().unwrap_or(Value::Null);
                            (name.clone(), value)
                        })
                        .collect();
                    (response.status, Value::Object(answer))
                }
                None => (
                    list.missing_status,
                    serde_json::json!({"code": "NotFound", "message": "the upstream's id list has no entry for this id"}),
                ),
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Outcome::Response(UpstreamResponse {
                status,
                headers,
                body: Bytes::from(body.to_string()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
