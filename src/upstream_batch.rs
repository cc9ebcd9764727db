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
use crate::upstream::{BatchHeaders, Call, UpstreamClient};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

pub use crate::config::upstream_batch::UpstreamBatchConfig;

/// What calls must share to share an upstream request.
pub type Key = [u8; 32];

/// One route's gatherings.
pub struct Batcher {
    config: Arc<UpstreamBatchConfig>,
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

struct Waiting {
    /// The call as the client sent it (an object with an `id`).
    call: Map<String, Value>,
    id: Value,
    arrived: Instant,
    until: Instant,
    answer: oneshot::Sender<Outcome>,
}

/// The caller's side of a call: the upstream and headers its batch would use.
pub struct Caller {
    pub client: Arc<UpstreamClient>,
    pub headers: BatchHeaders,
}

impl Batcher {
    pub fn new(config: Arc<UpstreamBatchConfig>, metrics: Option<Arc<RouteMetrics>>) -> Batcher {
        Batcher {
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            gathering: Mutex::new(HashMap::new()),
            metrics,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a call is gathered: one that expects an answer (a notification has nothing to
    /// match back, and goes alone). `None` otherwise.
    pub fn gatherable(request: &SubRequest) -> Option<(Map<String, Value>, Value)> {
        let mut call: Map<String, Value> = serde_json::from_slice(request.body.as_deref()?).ok()?;
        let id = call.remove("id")?;
        Some((call, id))
    }

    /// The answer to one call, sent upstream with the calls gathered with it; waited for
    /// until `until`.
    pub async fn call(
        self: &Arc<Self>,
        key: Key,
        (call, id): (Map<String, Value>, Value),
        request: &SubRequest,
        caller: Caller,
        (until, mut present): (Instant, tokio::sync::watch::Receiver<()>),
    ) -> Outcome {
        let (answer, answered) = oneshot::channel();
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
                call,
                id,
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
        let mut request = route.request;
        request.body = Some(Bytes::from(array(&calls)));
        let mut headers = route.headers;
        headers.max_response_bytes = headers.max_response_bytes.saturating_mul(calls.len());
        let call = Call {
            repeatable: false,
            hedge_after: None,
            deadline: until,
            until,
        };
        let outcome = route.client.send(&request, &headers, &call).await;
        let outcomes = split(outcome, &calls);
        for (waiting, outcome) in calls.into_iter().zip(outcomes) {
            let _ = waiting.answer.send(outcome);
        }
    }
}

/// The calls as one JSON-RPC array, each with its position as its id.
fn array(calls: &[Waiting]) -> Vec<u8> {
    let mut out = Vec::with_capacity(calls.len() * 64 + 2);
    out.push(b'[');
    for (position, waiting) in calls.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        let mut call = waiting.call.clone();
        call.insert("id".to_string(), Value::from(position));
        // A map of JSON values always serializes.
        let _ = serde_json::to_writer(&mut out, &call);
    }
    out.push(b']');
    out
}

/// Each call's outcome from the upstream's answer to the array.
fn split(outcome: Outcome, calls: &[Waiting]) -> Vec<Outcome> {
    let failed = |reason: String| {
        let failure = Failure::new(FailureKind::UpstreamBatch, Sent::All).with_detail(reason);
        vec![Outcome::Failed(failure); calls.len()]
    };
    let response = match outcome {
        Outcome::Failed(failure) => return vec![Outcome::Failed(failure); calls.len()],
        Outcome::Response(response) => response,
    };
    if !(200..300).contains(&response.status) {
        return failed(format!(
            "the upstream answered the batch with HTTP {}",
            response.status
        ));
    }
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
        answer.insert("id".to_string(), calls[position].id.clone());
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

#[cfg(test)]
mod tests;
