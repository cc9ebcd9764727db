//! `[server.admission]`: how many items may wait for permits, for how long, how much batch
//! body memory admitted batches may hold, and each client's share (see `crate::admission`).

use super::file::AdmissionSection;
use super::problems::Problems;
use super::values::{bounded, duration};
use http::header::HeaderName;
use std::time::Duration;

/// Validated admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    /// Items that may wait for permits beyond `max_in_flight`.
    pub max_queued_items: usize,
    /// A batch is refused when the queue ahead of it would take longer than this to drain.
    pub queue_budget: Duration,
    /// Bytes of batch bodies admitted batches may hold at once.
    pub max_held_bytes: usize,
    /// Items one client may have outstanding (in flight and waiting); 0: no per-client cap.
    pub per_client_items: usize,
    pub client_key: ClientKey,
}

/// What tells clients apart, for `per_client_items` and for taking turns at the permits;
/// `[server.admission] client_key`, or a route's own `client_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// The connection's peer address (without the port).
    Ip,
    /// A request header such as an API key or an identity set by an authenticating proxy;
    /// requests without it count by address.
    Header(HeaderName),
    /// The last `X-Forwarded-For` address: the client as the load balancer in front saw it.
    /// Only behind a proxy that appends it (a direct client could name anyone); requests
    /// without it count by address.
    Forwarded,
}

/// The defaults refuse only real overload: a queue of 16 x `max_in_flight` items (at least
/// 4,096) and 5 s of measured drain time, so bursts a deployment handled before still queue.
/// The per-client cap is off by default, as nginx's `limit_conn` and Envoy's admission
/// control are opt-in: a single client (a backend batching for its users) may use it all
/// (docs/RELIABILITY.md, "Overload").
const DEFAULT_QUEUE_BUDGET: Duration = Duration::from_secs(5);
const DEFAULT_MIN_QUEUED_ITEMS: usize = 4096;
const DEFAULT_MAX_HELD_BYTES: usize = 256 * 1024 * 1024;

pub(super) fn admission_limits(
    section: Option<&AdmissionSection>,
    max_in_flight: usize,
    problems: &mut Problems,
) -> AdmissionLimits {
    let empty = AdmissionSection::default();
    let section = section.unwrap_or(&empty);
    let at = |key: &'static str| ["server", "admission", key];
    AdmissionLimits {
        max_queued_items: bounded(
            section.max_queued_items,
            (16 * max_in_flight).max(DEFAULT_MIN_QUEUED_ITEMS),
            0,
            10_000_000,
            &at("max_queued_items"),
            problems,
        ),
        queue_budget: duration(
            &section.queue_budget,
            DEFAULT_QUEUE_BUDGET,
            &at("queue_budget"),
            problems,
        ),
        max_held_bytes: bounded(
            section.max_held_bytes,
            DEFAULT_MAX_HELD_BYTES,
            1024,
            1 << 40,
            &at("max_held_bytes"),
            problems,
        ),
        per_client_items: bounded(
            section.per_client_items,
            0,
            0,
            10_000_000,
            &at("per_client_items"),
            problems,
        ),
        client_key: client_key(
            super::values::noted(
                section.client_key.as_deref(),
                "ip",
                &at("client_key"),
                problems,
            ),
            &at("client_key"),
            problems,
        )
        .unwrap_or(ClientKey::Ip),
    }
}

/// `"ip"`, `"forwarded"` or `"header:NAME"`; `None` when not set or not valid (reported).
pub(super) fn client_key(
    text: Option<&str>,
    at: &[&str],
    problems: &mut Problems,
) -> Option<ClientKey> {
    match text? {
        "ip" => Some(ClientKey::Ip),
        "forwarded" => Some(ClientKey::Forwarded),
        other => match other.strip_prefix("header:").map(HeaderName::try_from) {
            Some(Ok(name)) => Some(ClientKey::Header(name)),
            _ => {
                let message = format!(
                    "{other:?} is not a client key (\"ip\", \"forwarded\" or \"header:NAME\")"
                );
                problems.push(at, message);
                None
            }
        },
    }
}
