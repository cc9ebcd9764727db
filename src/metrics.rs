//! Every metric family batchgate exports, registered once in the default Prometheus registry.
//!
//! Labels come only from configuration (route and upstream names) and fixed outcome sets, never
//! from request data, so cardinality is bounded by the config file. Labelled handles are
//! resolved once per route at start-up (`RouteMetrics`), so the per-item hot path only calls
//! `inc()` / `observe()`. The `prometheus` crate here is the one pingora-prometheus uses (0.14),
//! so everything lands in the same default registry.

use crate::item::RejectionKind;
use crate::item::{ItemClass, Outcome};
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets in seconds: 0.5 ms to 30 s, roughly ×2.5 per step, so both a loopback
/// sub-millisecond item and a multi-second batch land in a meaningful bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Items-per-batch buckets.
pub const ITEM_COUNT_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// What became of a batch (`batchgate_batches_total{outcome}`). The discriminant indexes the
/// handles resolved per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    Ok,
    Partial,
    Rejected,
    Failed,
    Cancelled,
}

impl BatchResult {
    /// Every result, in discriminant order.
    pub const ALL: [BatchResult; 5] = [
        BatchResult::Ok,
        BatchResult::Partial,
        BatchResult::Rejected,
        BatchResult::Failed,
        BatchResult::Cancelled,
    ];

    /// The `outcome` label and the log field.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchResult::Ok => "ok",
            BatchResult::Partial => "partial",
            BatchResult::Rejected => "rejected",
            BatchResult::Failed => "failed",
            BatchResult::Cancelled => "cancelled",
        }
    }
}
/// Every rejection reason, matching `RejectionKind::as_str`.
pub const REJECTION_KINDS: &[RejectionKind] = &[
    RejectionKind::ParseError,
    RejectionKind::Empty,
    RejectionKind::TooManyItems,
    RejectionKind::DuplicateId,
    RejectionKind::InvalidItem,
    RejectionKind::InvalidParameter,
    RejectionKind::NotAllowed,
    RejectionKind::BodyTooLarge,
    RejectionKind::UnsupportedMediaType,
    RejectionKind::MethodNotAllowed,
    RejectionKind::BodyTimeout,
    RejectionKind::QueueFull,
    RejectionKind::QueueBudget,
    RejectionKind::ClientLimit,
    RejectionKind::MemoryBudget,
    RejectionKind::RateLimited,
    RejectionKind::RateLimitUnavailable,
];
/// Pass-through status classes.
pub const STATUS_CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The metric families.
pub struct Families {
    pub max_in_flight: IntGauge,
    pub admission_queued_items: IntGauge,
    pub admission_held_bytes: IntGauge,
    pub batches_in_flight: IntGauge,
    pub trace_spans: IntCounterVec,
    pub batches: IntCounterVec,
    pub batch_items: HistogramVec,
    pub batch_duration: HistogramVec,
    pub items: IntCounterVec,
    pub item_duration: HistogramVec,
    pub items_in_flight: IntGaugeVec,
    pub permit_wait: HistogramVec,
    pub rejections: IntCounterVec,
    pub reply_fields_missing: IntCounterVec,
    pub referring_items: IntCounterVec,
    pub coalesced_items: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub rate_limited_items: IntCounterVec,
    pub upstream_batch_calls: HistogramVec,
    pub upstream_batch_wait: HistogramVec,
    pub upstream_batch_flushes: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub rate_limit_degraded: IntGauge,
    pub cache_bytes: IntGaugeVec,
    pub references_unresolved: IntCounterVec,
    pub streamed_batches: IntCounterVec,
    pub stream_first_item: HistogramVec,
    pub streams_cut: IntCounterVec,
    pub client_h2_premature_resets: IntCounterVec,
    pub passthrough: IntCounterVec,
    pub passthrough_duration: HistogramVec,
    pub passthrough_upstream_requests: IntCounterVec,
    pub pool_reuse_races: IntCounter,
    pub upstream_requests: IntCounterVec,
    pub client_connections: IntGaugeVec,
    pub client_connections_refused: IntCounterVec,
    pub client_timeouts: IntCounterVec,
    pub client_heads_too_large: IntCounterVec,
    pub client_tls_handshake_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub upstream_address_up: IntGaugeVec,
    pub upstream_health_checks: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_retries_skipped: IntCounterVec,
    pub upstream_hedges: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub config_loaded: IntGauge,
}

/// The families, registered on first use. Registration only fails on a duplicate name, which
/// would be a programming error caught by every test; then metrics are simply not exported.
pub fn families() -> Option<&'static Families> {
    static FAMILIES: OnceLock<Option<Families>> = OnceLock::new();
    FAMILIES.get_or_init(|| register().ok()).as_ref()
}

fn register() -> prometheus::Result<Families> {
    let build_info = register_int_gauge_vec!(
        "batchgate_build_info",
        "Always 1; the version label says which batchgate is running.",
        &["version"]
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let families = families_registered()?;
    // Both reasons exported from the start, so a rate of errors reads 0, not "no data".
    for reason in RATE_LIMIT_STORE_ERRORS {
        families
            .rate_limit_store_errors
            .with_label_values(&[reason]);
    }
    for result in SpanResult::ALL {
        families.trace_spans.with_label_values(&[result.as_str()]);
    }
    Ok(families)
}

/// The results of `batchgate_trace_spans_total`.
#[derive(Debug, Clone, Copy)]
pub enum SpanResult {
    /// The collector took them.
    Exported,
    /// The export failed or timed out.
    Failed,
    /// The export queue was full.
    Dropped,
}

impl SpanResult {
    const ALL: [SpanResult; 3] = [
        SpanResult::Exported,
        SpanResult::Failed,
        SpanResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanResult::Exported => "exported",
            SpanResult::Failed => "failed",
            SpanResult::Dropped => "dropped",
        }
    }
}

/// Counts `n` finished spans under `result`.
pub fn trace_spans(result: SpanResult, n: usize) {
    if let Some(f) = families() {
        f.trace_spans
            .with_label_values(&[result.as_str()])
            .inc_by(n as u64);
    }
}

/// The reasons of `batchgate_rate_limit_store_errors_total`.
pub const RATE_LIMIT_STORE_ERRORS: [&str; 2] = ["timeout", "error"];

fn families_registered() -> prometheus::Result<Families> {
    Ok(Families {
        max_in_flight: register_int_gauge!(
            "batchgate_max_in_flight",
            "The server.max_in_flight limit: items in flight across all batches at most."
        )?,
        admission_queued_items: register_int_gauge!(
            "batchgate_admission_queued_items",
            "Items of admitted batches waiting for permits beyond server.max_in_flight (updated as batches are admitted and end)."
        )?,
        admission_held_bytes: register_int_gauge!(
            "batchgate_admission_held_bytes",
            "Bytes held by admitted batches: their bodies, and the item responses kept for their replies (server.admission.max_held_bytes)."
        )?,
        batches: register_int_counter_vec!(
            "batchgate_batches_total",
            "Batch requests by route and outcome (ok, partial, rejected, failed, cancelled).",
            &["route", "outcome"]
        )?,
        batch_items: register_histogram_vec!(
            "batchgate_batch_items",
            "Items per accepted batch.",
            &["route"],
            ITEM_COUNT_BUCKETS.to_vec()
        )?,
        batch_duration: register_histogram_vec!(
            "batchgate_batch_duration_seconds",
            "Time from the batch request's arrival to its reply.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        items: register_int_counter_vec!(
            "batchgate_items_total",
            "Batch items by route, upstream and outcome.",
            &["route", "upstream", "outcome"]
        )?,
        item_duration: register_histogram_vec!(
            "batchgate_item_duration_seconds",
            "Time one sent item took upstream, from holding its permits to its outcome.",
            &["route", "upstream"],
            LATENCY_BUCKETS.to_vec()
        )?,
        trace_spans: register_int_counter_vec!(
            "batchgate_trace_spans_total",
            "Finished spans of sampled traces ([tracing]) by result: exported (the collector took them), failed (the export failed), dropped (the export queue was full).",
            &["result"]
        )?,
        batches_in_flight: register_int_gauge!(
            "batchgate_batches_in_flight",
            "Batch requests on a route from their arrival until their reply is written (or they are refused)."
        )?,
        items_in_flight: register_int_gauge_vec!(
            "batchgate_items_in_flight",
            "Items currently being sent to an upstream.",
            &["upstream"]
        )?,
        permit_wait: register_histogram_vec!(
            "batchgate_permit_wait_seconds",
            "Time an item waited for its per-batch and global concurrency permits.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        rejections: register_int_counter_vec!(
            "batchgate_rejections_total",
            "Whole batches refused before anything was sent, by reason.",
            &["route", "reason"]
        )?,
        client_h2_premature_resets: register_int_counter_vec!(
            "batchgate_client_h2_premature_reset_closes_total",
            "HTTP/2 client connections closed for resetting too many streams within 1 s of opening them (server.client_h2_max_premature_resets).",
            &["listener"]
        )?,
        reply_fields_missing: register_int_counter_vec!(
            "batchgate_reply_fields_missing_total",
            "Reply fields an upstream answer lacked, written as null (fan-out missing_field = \"null\").",
            &["route"]
        )?,
        referring_items: register_int_counter_vec!(
            "batchgate_referring_items_total",
            "Items that used an earlier item's answer ({result=...}, {\"$ref\": ...}, OData $<Content-ID>).",
            &["route"]
        )?,
        coalesced_items: register_int_counter_vec!(
            "batchgate_coalesced_items_total",
            "Items answered with an identical item's answer that was in flight, instead of going upstream ([routes.coalesce]).",
            &["route"]
        )?,
        cache_lookups: register_int_counter_vec!(
            "batchgate_cache_lookups_total",
            "Items looked up in the route's item cache ([routes.cache]), by result (hit, miss).",
            &["route", "result"]
        )?,
        cache_evictions: register_int_counter_vec!(
            "batchgate_cache_evictions_total",
            "Answers dropped from the route's item cache to stay within max_bytes.",
            &["route"]
        )?,
        rate_limited_items: register_int_counter_vec!(
            "batchgate_rate_limited_items_total",
            "Items of batches refused by the route's rate limit (429), weighed as charged.",
            &["route"]
        )?,
        upstream_batch_calls: register_histogram_vec!(
            "batchgate_upstream_batch_calls",
            "Calls per upstream batch gathered from single calls ([routes.upstream_batching]).",
            &["route"],
            ITEM_COUNT_BUCKETS.to_vec()
        )?,
        upstream_batch_wait: register_histogram_vec!(
            "batchgate_upstream_batch_wait_seconds",
            "Time a call waited to be sent in an upstream batch.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        upstream_batch_flushes: register_int_counter_vec!(
            "batchgate_upstream_batch_flushes_total",
            "Upstream batches sent, by what sent them (size, bytes, wait, deadline).",
            &["route", "reason"]
        )?,
        rate_limit_store_errors: register_int_counter_vec!(
            "batchgate_rate_limit_store_errors_total",
            "Calls to the shared rate-limit store (Redis) that failed, by reason (timeout, error).",
            &["reason"]
        )?,
        rate_limit_degraded: register_int_gauge!(
            "batchgate_rate_limit_degraded",
            "1 while the shared rate-limit store (Redis) cannot be asked and routes follow on_store_error."
        )?,
        cache_bytes: register_int_gauge_vec!(
            "batchgate_cache_bytes",
            "Bytes the route's item cache holds (answers' bodies and headers, as weighed).",
            &["route"]
        )?,
        references_unresolved: register_int_counter_vec!(
            "batchgate_references_unresolved_total",
            "Items not sent because a reference to an earlier answer selected nothing (answered 424).",
            &["route"]
        )?,
        streamed_batches: register_int_counter_vec!(
            "batchgate_streamed_batches_total",
            "Batches whose reply was streamed record by record, by format (ndjson, sse, json-seq).",
            &["route", "format"]
        )?,
        stream_first_item: register_histogram_vec!(
            "batchgate_stream_first_item_seconds",
            "Time from a streamed batch's arrival to its first item record on the wire.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        streams_cut: register_int_counter_vec!(
            "batchgate_streams_cut_total",
            "Streamed replies the client left (or stopped reading) before their terminal record.",
            &["route"]
        )?,
        passthrough: register_int_counter_vec!(
            "batchgate_passthrough_requests_total",
            "Requests proxied unchanged to the default upstream, by status class.",
            &["upstream", "status_class"]
        )?,
        passthrough_duration: register_histogram_vec!(
            "batchgate_passthrough_duration_seconds",
            "Time to proxy one pass-through request.",
            &["upstream"],
            LATENCY_BUCKETS.to_vec()
        )?,
        passthrough_upstream_requests: register_int_counter_vec!(
            "batchgate_passthrough_upstream_requests_total",
            "Pass-through requests sent to an upstream, by whether the connection was reused from pingora's pool or newly opened.",
            &["upstream", "connection"]
        )?,
        pool_reuse_races: register_int_counter!(
            "batchgate_passthrough_pool_reuse_races_total",
            "Pooled pass-through connections pingora found still held by their idle watcher on another thread, closed and replaced by a new connection (pingora logs these as 'failed to acquire reusable stream').",
        )?,
        upstream_requests: register_int_counter_vec!(
            "batchgate_upstream_requests_total",
            "Item requests sent to an upstream, by connection: newly opened (new), kept from an earlier request (reused), or written behind another request still unanswered on it (pipelined, with pipeline_depth above 1).",
            &["upstream", "connection"]
        )?,
        client_connections: register_int_gauge_vec!(
            "batchgate_client_connections",
            "Client connections open on a listener.",
            &["listener"]
        )?,
        client_connections_refused: register_int_counter_vec!(
            "batchgate_client_connections_refused_total",
            "Client connections refused because the listener had server.max_client_connections open.",
            &["listener"]
        )?,
        client_timeouts: register_int_counter_vec!(
            "batchgate_client_timeouts_total",
            "Client connections cut off because a deadline passed, by phase (handshake: TLS not finished within client_header_timeout, idle between requests, head, body, send: the client read nothing).",
            &["listener", "phase"]
        )?,
        client_heads_too_large: register_int_counter_vec!(
            "batchgate_client_heads_too_large_total",
            "Client connections closed with 431 because a request head grew past server.client_max_head_bytes.",
            &["listener"]
        )?,
        client_tls_handshake_failures: register_int_counter_vec!(
            "batchgate_client_tls_handshake_failures_total",
            "Client connections closed because their TLS handshake failed (no common version or cipher, no or an untrusted client certificate under mTLS, not TLS at all).",
            &["listener"]
        )?,
        config_reloads: register_int_counter_vec!(
            "batchgate_config_reloads_total",
            "In-place config reloads (SIGHUP, batchgate reload) by result: ok (applied), error (the file was invalid or unreadable; nothing changed).",
            &["result"]
        )?,
        upstream_ejections: register_int_counter_vec!(
            "batchgate_upstream_ejections_total",
            "Upstream addresses taken out of the item choice after eject_after consecutive connection failures, or 5xx answers with eject_on_5xx (passive outlier ejection).",
            &["upstream", "address"]
        )?,
        upstream_address_up: register_int_gauge_vec!(
            "batchgate_upstream_address_up",
            "1 while an upstream address is in the item choice (passing its health checks, not ejected), 0 while it is out.",
            &["upstream", "address"]
        )?,
        upstream_health_checks: register_int_counter_vec!(
            "batchgate_upstream_health_checks_total",
            "Active health checks of upstream addresses by result (pass, fail).",
            &["upstream", "address", "result"]
        )?,
        upstream_retries: register_int_counter_vec!(
            "batchgate_upstream_retries_total",
            "Item attempts sent again, by the condition that caused it (connect, reset, timeout, or the status) and how the retry ended (success: an answer that needs no retry; failure).",
            &["upstream", "reason", "result"]
        )?,
        upstream_retries_skipped: register_int_counter_vec!(
            "batchgate_upstream_retries_skipped_total",
            "Retries an item qualified for but did not get, by why: budget (the retry budget was spent), deadline (the wait would pass the item timeout or batch deadline), retry_after (the upstream asked to wait longer than max_retry_after), attempts (all attempts used).",
            &["upstream", "reason"]
        )?,
        upstream_hedges: register_int_counter_vec!(
            "batchgate_upstream_hedges_total",
            "Hedged items (a second copy sent to another address after hedge_after) by result: won (the copy answered first), lost (the first attempt did), budget (not sent: the retry budget was spent).",
            &["upstream", "result"]
        )?,
        config_info: register_int_gauge_vec!(
            "batchgate_config_info",
            "Always 1; the sha256 label is the SHA-256 of the config file in effect (batchgate check prints it).",
            &["sha256"]
        )?,
        config_loaded: register_int_gauge!(
            "batchgate_config_loaded_timestamp_seconds",
            "Unix time at which the config in effect was loaded (start or last successful reload)."
        )?,
    })
}

/// One listener's client-connection handles.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub head_too_large: IntCounter,
    pub send_timed_out: IntCounter,
    pub h2_premature_resets: IntCounter,
    pub handshake_timed_out: IntCounter,
    pub handshake_failed: IntCounter,
    timeouts: Vec<IntCounter>,
}

impl ClientMetrics {
    /// `phases`: the labels of the read phases that have a deadline, in the order
    /// `timed_out` indexes them (the listener's `Phase`).
    pub fn new(listener: &str, phases: &[&str]) -> Option<Self> {
        let f = families()?;
        Some(ClientMetrics {
            open: f.client_connections.with_label_values(&[listener]),
            refused: f.client_connections_refused.with_label_values(&[listener]),
            head_too_large: f.client_heads_too_large.with_label_values(&[listener]),
            send_timed_out: f.client_timeouts.with_label_values(&[listener, "send"]),
            h2_premature_resets: f.client_h2_premature_resets.with_label_values(&[listener]),
            handshake_timed_out: f
                .client_timeouts
                .with_label_values(&[listener, "handshake"]),
            handshake_failed: f
                .client_tls_handshake_failures
                .with_label_values(&[listener]),
            timeouts: phases
                .iter()
                .map(|phase| f.client_timeouts.with_label_values(&[listener, phase]))
                .collect(),
        })
    }

    /// Counts a connection whose deadline passed in phase `phase` (an index into `phases`).
    pub fn timed_out(&self, phase: usize) {
        if let Some(counter) = self.timeouts.get(phase) {
            counter.inc();
        }
    }
}

/// Reload results, as `batchgate_config_reloads_total{result}` labels them.
pub const RELOAD_RESULTS: &[&str] = &["ok", "error"];

/// The config in effect is `sha256`, loaded now; the previous file's series goes.
pub fn config_loaded(sha256: &str) {
    if let Some(f) = families() {
        f.config_info.reset();
        f.config_info.with_label_values(&[sha256]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        f.config_loaded.set(i64::try_from(now).unwrap_or(i64::MAX));
        for result in RELOAD_RESULTS {
            f.config_reloads.with_label_values(&[result]);
        }
    }
}

/// A resilience series an upstream client writes, named for the reload rule of which ones
/// outlive a reload (`series_survives`).
enum UpstreamSeries<'a> {
    /// `address_up`, ejections and health checks of one address.
    Address(&'a std::net::SocketAddr),
    /// Retries for one reason.
    Retried(&'a crate::config::RetryOn),
    /// Retries skipped (budget, deadline, `Retry-After`, attempts).
    RetrySkipped,
    /// Hedges.
    Hedged,
}

/// Whether an upstream's `series` outlives a reload that gave the upstream the settings
/// `new` (`None`: the reload removed it): what a reload removes (`remove_upstream_series`).
fn series_survives(
    new: Option<&crate::config::UpstreamConfig>,
    series: &UpstreamSeries<'_>,
) -> bool {
    let Some(new) = new else {
        return false;
    };
    match series {
        UpstreamSeries::Address(address) => new.addresses.contains(address),
        UpstreamSeries::Retried(on) => new.retry.as_ref().is_some_and(|r| r.on.contains(on)),
        UpstreamSeries::RetrySkipped => new.retry.is_some(),
        UpstreamSeries::Hedged => true,
    }
}

/// Removes the resilience series of `old` that `new` (the same upstream after a reload, or
/// `None`: it is gone) no longer has: addresses, retry reasons, the whole upstream. A gauge
/// left behind would report a removed address out of the choice forever (and keep
/// `BatchgateUpstreamNoHealthyAddress` firing).
pub fn remove_upstream_series(
    old: &crate::config::UpstreamConfig,
    new: Option<&crate::config::UpstreamConfig>,
) {
    let Some(f) = families() else {
        return;
    };
    let upstream = old.name.as_str();
    for address in &old.addresses {
        if series_survives(new, &UpstreamSeries::Address(address)) {
            continue;
        }
        let address = address.to_string();
        let _ = f
            .upstream_ejections
            .remove_label_values(&[upstream, &address]);
        let _ = f
            .upstream_address_up
            .remove_label_values(&[upstream, &address]);
        for result in ["pass", "fail"] {
            let _ = f
                .upstream_health_checks
                .remove_label_values(&[upstream, &address, result]);
        }
    }
    for on in old.retry.iter().flat_map(|r| &r.on) {
        if series_survives(new, &UpstreamSeries::Retried(on)) {
            continue;
        }
        for result in ["success", "failure"] {
            let _ = f
                .upstream_retries
                .remove_label_values(&[upstream, &on.label(), result]);
        }
    }
    if !series_survives(new, &UpstreamSeries::RetrySkipped) {
        for reason in RetrySkipped::ALL.map(RetrySkipped::label) {
            let _ = f
                .upstream_retries_skipped
                .remove_label_values(&[upstream, reason]);
        }
    }
    if !series_survives(new, &UpstreamSeries::Hedged) {
        for result in Hedged::ALL.map(Hedged::label) {
            let _ = f.upstream_hedges.remove_label_values(&[upstream, result]);
        }
    }
}

/// Counts an HTTP/2 stream of `listener` cut for a client timeout: `send` (it stopped taking
/// its answer) or `body` (its pass-through body stalled). HTTP/1 connections count theirs in
/// their `ClientMetrics`.
pub fn client_stream_timed_out(listener: &str, phase: &str) {
    if let Some(f) = families() {
        f.client_timeouts
            .with_label_values(&[listener, phase])
            .inc();
    }
}

/// Counts one reload attempt.
pub fn config_reload(ok: bool) {
    if let Some(f) = families() {
        let result = if ok { "ok" } else { "error" };
        f.config_reloads.with_label_values(&[result]).inc();
    }
}

/// One route's handles, resolved once at start-up (and again for each reload).
#[derive(Clone)]
pub struct RouteMetrics {
    batches: Vec<IntCounter>,
    batch_items: Histogram,
    batch_duration: Histogram,
    items: Vec<IntCounter>,
    item_duration: Histogram,
    pub in_flight: IntGauge,
    permit_wait: Histogram,
    rejections: Vec<IntCounter>,
    fields_missing: IntCounter,
    referring: IntCounter,
    unresolved: IntCounter,
    coalesced: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_bytes: IntGauge,
    rate_limited: IntCounter,
    upstream_batch_calls: Histogram,
    upstream_batch_wait: Histogram,
    /// Per `Flush::ALL`.
    upstream_batch_flushes: Vec<IntCounter>,
    /// Per `StreamFormat::ALL`.
    streamed: Vec<IntCounter>,
    stream_first_item: Histogram,
    streams_cut: IntCounter,
}

impl RouteMetrics {
    /// Handles for `route` sending to `upstream`; `None` if the registry is unusable.
    pub fn new(route: &str, upstream: &str) -> Option<Self> {
        let f = families()?;
        Some(RouteMetrics {
            batches: BatchResult::ALL
                .iter()
                .map(|o| f.batches.with_label_values(&[route, o.as_str()]))
                .collect(),
            batch_items: f.batch_items.with_label_values(&[route]),
            batch_duration: f.batch_duration.with_label_values(&[route]),
            items: ItemClass::ALL
                .iter()
                .map(|c| f.items.with_label_values(&[route, upstream, c.as_str()]))
                .collect(),
            item_duration: f.item_duration.with_label_values(&[route, upstream]),
            in_flight: f.items_in_flight.with_label_values(&[upstream]),
            permit_wait: f.permit_wait.with_label_values(&[route]),
            rejections: REJECTION_KINDS
                .iter()
                .map(|k| f.rejections.with_label_values(&[route, k.as_str()]))
                .collect(),
            fields_missing: f.reply_fields_missing.with_label_values(&[route]),
            referring: f.referring_items.with_label_values(&[route]),
            unresolved: f.references_unresolved.with_label_values(&[route]),
            coalesced: f.coalesced_items.with_label_values(&[route]),
            cache_hits: f.cache_lookups.with_label_values(&[route, "hit"]),
            cache_misses: f.cache_lookups.with_label_values(&[route, "miss"]),
            cache_evictions: f.cache_evictions.with_label_values(&[route]),
            cache_bytes: f.cache_bytes.with_label_values(&[route]),
            rate_limited: f.rate_limited_items.with_label_values(&[route]),
            upstream_batch_calls: f.upstream_batch_calls.with_label_values(&[route]),
            upstream_batch_wait: f.upstream_batch_wait.with_label_values(&[route]),
            upstream_batch_flushes: UpstreamFlush::ALL
                .iter()
                .map(|r| {
                    f.upstream_batch_flushes
                        .with_label_values(&[route, r.as_str()])
                })
                .collect(),
            streamed: crate::config::StreamFormat::ALL
                .iter()
                .map(|format| {
                    f.streamed_batches
                        .with_label_values(&[route, format.name()])
                })
                .collect(),
            stream_first_item: f.stream_first_item.with_label_values(&[route]),
            streams_cut: f.streams_cut.with_label_values(&[route]),
        })
    }

    /// Removes the series of `route` sending to `upstream` (a reload moved the route to
    /// another upstream) and, with `whole_route`, every series of the route (it was removed).
    /// Call before the new routes' handles are made; batches still running on the old route
    /// count into handles that are no longer exported.
    pub fn remove(route: &str, upstream: &str, whole_route: bool) {
        let Some(f) = families() else {
            return;
        };
        for class in ItemClass::ALL {
            let _ = f
                .items
                .remove_label_values(&[route, upstream, class.as_str()]);
        }
        let _ = f.item_duration.remove_label_values(&[route, upstream]);
        if !whole_route {
            return;
        }
        for result in BatchResult::ALL {
            let _ = f.batches.remove_label_values(&[route, result.as_str()]);
        }
        let _ = f.batch_items.remove_label_values(&[route]);
        let _ = f.batch_duration.remove_label_values(&[route]);
        let _ = f.permit_wait.remove_label_values(&[route]);
        for kind in REJECTION_KINDS {
            let _ = f.rejections.remove_label_values(&[route, kind.as_str()]);
        }
        let _ = f.reply_fields_missing.remove_label_values(&[route]);
        let _ = f.referring_items.remove_label_values(&[route]);
        let _ = f.references_unresolved.remove_label_values(&[route]);
        let _ = f.coalesced_items.remove_label_values(&[route]);
        let _ = f.cache_lookups.remove_label_values(&[route, "hit"]);
        let _ = f.cache_lookups.remove_label_values(&[route, "miss"]);
        let _ = f.cache_evictions.remove_label_values(&[route]);
        let _ = f.rate_limited_items.remove_label_values(&[route]);
        let _ = f.upstream_batch_calls.remove_label_values(&[route]);
        let _ = f.upstream_batch_wait.remove_label_values(&[route]);
        for reason in UpstreamFlush::ALL {
            let _ = f
                .upstream_batch_flushes
                .remove_label_values(&[route, reason.as_str()]);
        }
        let _ = f.cache_bytes.remove_label_values(&[route]);
        for format in crate::config::StreamFormat::ALL {
            let _ = f
                .streamed_batches
                .remove_label_values(&[route, format.name()]);
        }
        let _ = f.stream_first_item.remove_label_values(&[route]);
        let _ = f.streams_cut.remove_label_values(&[route]);
    }

    /// Counts a batch whose reply was streamed in `format`, and when its first item record
    /// left (`None`: none did).
    pub fn streamed(
        &self,
        format: crate::config::StreamFormat,
        first_item: Option<Duration>,
        cut: bool,
    ) {
        let n = crate::config::StreamFormat::ALL
            .iter()
            .position(|f| *f == format);
        if let Some(counter) = n.and_then(|n| self.streamed.get(n)) {
            counter.inc();
        }
        if let Some(first) = first_item {
            self.stream_first_item.observe(first.as_secs_f64());
        }
        if cut {
            self.streams_cut.inc();
        }
    }

    /// Counts a finished batch.
    pub fn batch(&self, result: BatchResult, items: usize, elapsed: Duration) {
        if let Some(counter) = self.batches.get(result as usize) {
            counter.inc();
        }
        if result != BatchResult::Rejected {
            self.batch_items.observe(items as f64);
        }
        self.batch_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one item's final outcome.
    pub fn item(&self, outcome: &Outcome) {
        self.item_class(outcome.class());
    }

    /// Counts reply fields written as null because an upstream answer lacked them.
    pub fn fields_missing(&self, n: usize) {
        if n > 0 {
            self.fields_missing.inc_by(n as u64);
        }
    }

    /// Counts the items of a batch that used earlier answers, and those whose references
    /// could not be resolved.
    pub fn references(&self, referring: usize, unresolved: usize) {
        if referring > 0 {
            self.referring.inc_by(referring as u64);
        }
        if unresolved > 0 {
            self.unresolved.inc_by(unresolved as u64);
        }
    }

    /// Counts one item looked up in the route's cache.
    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// Counts one answer dropped from the cache for room.
    pub fn cache_evicted(&self) {
        self.cache_evictions.inc();
    }

    /// One upstream batch gathered from single calls: why it was sent, its calls, their waits.
    pub fn upstream_batch(
        &self,
        reason: UpstreamFlush,
        calls: usize,
        waits: impl Iterator<Item = Duration>,
    ) {
        if let Some(counter) = self.upstream_batch_flushes.get(reason as usize) {
            counter.inc();
        }
        self.upstream_batch_calls.observe(calls as f64);
        for wait in waits {
            self.upstream_batch_wait.observe(wait.as_secs_f64());
        }
    }

    /// Items of a batch the rate limit refused.
    pub fn rate_limited(&self, items: u64) {
        self.rate_limited.inc_by(items);
    }

    /// The bytes the route's cache holds.
    pub fn cache_bytes(&self, bytes: u64) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts one item answered with an identical item's answer.
    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    /// Counts one item by outcome class.
    pub fn item_class(&self, class: ItemClass) {
        if let Some(counter) = self.items.get(class as usize) {
            counter.inc();
        }
    }

    pub fn item_duration(&self, elapsed: Duration) {
        self.item_duration.observe(elapsed.as_secs_f64());
    }

    pub fn permit_wait(&self, waited: Duration) {
        self.permit_wait.observe(waited.as_secs_f64());
    }

    pub fn rejection(&self, kind: RejectionKind) {
        if let Some(counter) = REJECTION_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.rejections.get(i))
        {
            counter.inc();
        }
    }
}

/// One upstream client's series, resolved when the client is built and exported at their
/// start values (no ejection, every address in the choice, no retry yet: "nothing happened"
/// is a value, not a gap). Each event is then an increment, not a label lookup. A reload that
/// removes one of these series (`remove_upstream_series`) detaches its handle: a replaced
/// client's late writes (a health round or retry that ends after the reload) land nowhere
/// instead of bringing the series back, while the series that stay are shared with the new
/// client and still count them.
pub struct UpstreamMetrics {
    requests_new: IntCounter,
    requests_reused: IntCounter,
    requests_pipelined: IntCounter,
    /// Per address, in the order of the upstream's addresses.
    addresses: Vec<AddressMetrics>,
    /// Per retry reason the policy has: after a retry, success and failure.
    retries: Vec<(crate::config::RetryOn, IntCounter, IntCounter)>,
    /// Per `RetrySkipped` reason; empty without a retry policy.
    retries_skipped: Vec<IntCounter>,
    /// Per `Hedged` result.
    hedges: Vec<IntCounter>,
}

struct AddressMetrics {
    up: IntGauge,
    ejections: IntCounter,
    /// Passed and failed checks, with active health checks.
    checks: Option<(IntCounter, IntCounter)>,
}

/// Why an item that qualified for a retry did not get one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySkipped {
    Budget,
    Deadline,
    RetryAfter,
    Attempts,
}

impl RetrySkipped {
    const ALL: [RetrySkipped; 4] = [
        RetrySkipped::Budget,
        RetrySkipped::Deadline,
        RetrySkipped::RetryAfter,
        RetrySkipped::Attempts,
    ];

    fn label(self) -> &'static str {
        match self {
            RetrySkipped::Budget => "budget",
            RetrySkipped::Deadline => "deadline",
            RetrySkipped::RetryAfter => "retry_after",
            RetrySkipped::Attempts => "attempts",
        }
    }
}

/// On which connection an item request went: a newly opened one, one kept from an earlier
/// request, or one where it was written behind another request still unanswered (pipelining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    New,
    Reused,
    Pipelined,
}

/// What a hedge decision came to: the copy answered first (`Won`), the first attempt did
/// (`Lost`), or the retry budget allowed no copy (`Budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedged {
    Won,
    Lost,
    Budget,
}

impl Hedged {
    const ALL: [Hedged; 3] = [Hedged::Won, Hedged::Lost, Hedged::Budget];

    fn label(self) -> &'static str {
        match self {
            Hedged::Won => "won",
            Hedged::Lost => "lost",
            Hedged::Budget => "budget",
        }
    }
}

impl UpstreamMetrics {
    pub fn new(config: &crate::config::UpstreamConfig) -> Option<Self> {
        let f = families()?;
        let upstream = config.name.as_str();
        let addresses = config
            .addresses
            .iter()
            .map(|address| {
                let address = address.to_string();
                let labels = [upstream, address.as_str()];
                let up = f.upstream_address_up.with_label_values(&labels);
                up.set(1);
                let check = |result| {
                    f.upstream_health_checks
                        .with_label_values(&[upstream, &address, result])
                };
                AddressMetrics {
                    up,
                    ejections: f.upstream_ejections.with_label_values(&labels),
                    checks: config
                        .health_check
                        .is_some()
                        .then(|| (check("pass"), check("fail"))),
                }
            })
            .collect();
        let retry = config.retry.as_ref();
        let retries = retry.map_or_else(Vec::new, |retry| {
            retry
                .on
                .iter()
                .map(|on| {
                    let counter = |result| {
                        f.upstream_retries
                            .with_label_values(&[upstream, &on.label(), result])
                    };
                    (*on, counter("success"), counter("failure"))
                })
                .collect()
        });
        let retries_skipped = match retry {
            Some(_) => RetrySkipped::ALL
                .iter()
                .map(|why| {
                    f.upstream_retries_skipped
                        .with_label_values(&[upstream, why.label()])
                })
                .collect(),
            None => Vec::new(),
        };
        Some(UpstreamMetrics {
            requests_new: f.upstream_requests.with_label_values(&[upstream, "new"]),
            requests_reused: f.upstream_requests.with_label_values(&[upstream, "reused"]),
            requests_pipelined: f
                .upstream_requests
                .with_label_values(&[upstream, "pipelined"]),
            addresses,
            retries,
            retries_skipped,
            hedges: Hedged::ALL
                .iter()
                .map(|result| {
                    f.upstream_hedges
                        .with_label_values(&[upstream, result.label()])
                })
                .collect(),
        })
    }

    /// Counts one item request (a retry counts again, on its new connection).
    pub fn request(&self, carried: Carried) {
        match carried {
            Carried::New => self.requests_new.inc(),
            Carried::Reused => self.requests_reused.inc(),
            Carried::Pipelined => self.requests_pipelined.inc(),
        }
    }

    /// Whether address `n` is in the item choice now.
    pub fn address_up(&self, n: usize, up: bool) {
        if let Some(address) = self.addresses.get(n) {
            address.up.set(i64::from(up));
        }
    }

    /// Counts an ejection of address `n` (which takes it out of the choice).
    pub fn ejected(&self, n: usize) {
        if let Some(address) = self.addresses.get(n) {
            address.ejections.inc();
            address.up.set(0);
        }
    }

    /// Counts one active health check of address `n`.
    pub fn health_checked(&self, n: usize, passed: bool) {
        if let Some((pass, fail)) = self.addresses.get(n).and_then(|a| a.checks.as_ref()) {
            if passed { pass } else { fail }.inc();
        }
    }

    /// Counts one retry for `reason` by how it ended.
    pub fn retried(&self, reason: crate::config::RetryOn, success: bool) {
        if let Some((_, ok, failed)) = self.retries.iter().find(|(on, ..)| *on == reason) {
            if success { ok } else { failed }.inc();
        }
    }

    /// Counts one retry an item qualified for but did not get.
    pub fn retry_skipped(&self, why: RetrySkipped) {
        let n = RetrySkipped::ALL.iter().position(|w| *w == why);
        if let Some(counter) = n.and_then(|n| self.retries_skipped.get(n)) {
            counter.inc();
        }
    }

    /// Counts one hedge decision.
    pub fn hedged(&self, result: Hedged) {
        let n = Hedged::ALL.iter().position(|r| *r == result);
        if let Some(counter) = n.and_then(|n| self.hedges.get(n)) {
            counter.inc();
        }
    }
}

/// Pass-through handles for one upstream.
#[derive(Clone)]
pub struct PassthroughMetrics {
    requests: Vec<IntCounter>,
    duration: Histogram,
    new_connection: IntCounter,
    reused_connection: IntCounter,
}

impl PassthroughMetrics {
    pub fn new(upstream: &str) -> Option<Self> {
        let f = families()?;
        Some(PassthroughMetrics {
            requests: STATUS_CLASSES
                .iter()
                .map(|c| f.passthrough.with_label_values(&[upstream, c]))
                .collect(),
            duration: f.passthrough_duration.with_label_values(&[upstream]),
            new_connection: f
                .passthrough_upstream_requests
                .with_label_values(&[upstream, "new"]),
            reused_connection: f
                .passthrough_upstream_requests
                .with_label_values(&[upstream, "reused"]),
        })
    }

    /// Counts one request sent upstream (a retry counts again, on its new connection).
    pub fn sent(&self, reused: bool) {
        if reused {
            self.reused_connection.inc();
        } else {
            self.new_connection.inc();
        }
    }

    /// Counts one proxied request; `status` is `None` when no response was sent.
    pub fn request(&self, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(100..=199) => 0,
            Some(200..=299) => 1,
            Some(300..=399) => 2,
            Some(400..=499) => 3,
            Some(500..=599) => 4,
            _ => 5,
        };
        if let Some(counter) = self.requests.get(class) {
            counter.inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Keeps an upstream's in-flight gauge raised while alive; dropping it (also when the item's
/// task is aborted) lowers it again.
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why an upstream batch of gathered calls was sent (`crate::upstream_batch`): a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFlush {
    Size,
    Bytes,
    Wait,
    Deadline,
}

impl UpstreamFlush {
    pub const ALL: [UpstreamFlush; 4] = [
        UpstreamFlush::Size,
        UpstreamFlush::Bytes,
        UpstreamFlush::Wait,
        UpstreamFlush::Deadline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFlush::Size => "size",
            UpstreamFlush::Bytes => "bytes",
            UpstreamFlush::Wait => "wait",
            UpstreamFlush::Deadline => "deadline",
        }
    }
}

/// The shared rate-limit store's state: an error (by reason) and whether routes are degraded.
pub fn rate_limit_store(error: Option<&str>, degraded: bool) {
    let Some(f) = families() else {
        return;
    };
    if let Some(reason) = error {
        f.rate_limit_store_errors.with_label_values(&[reason]).inc();
    }
    f.rate_limit_degraded.set(i64::from(degraded));
}

/// Keeps `batchgate_batches_in_flight` raised while a batch request is being served.
pub struct BatchInFlight(());

impl BatchInFlight {
    pub fn new() -> BatchInFlight {
        if let Some(f) = families() {
            f.batches_in_flight.inc();
        }
        BatchInFlight(())
    }
}

impl Default for BatchInFlight {
    fn default() -> Self {
        BatchInFlight::new()
    }
}

impl Drop for BatchInFlight {
    fn drop(&mut self) {
        if let Some(f) = families() {
            f.batches_in_flight.dec();
        }
    }
}

#[cfg(test)]
mod survival_tests {
    use super::{series_survives, UpstreamSeries};
    use crate::config::{Config, RetryOn, UpstreamConfig};
    use std::sync::Arc;

    fn upstream(addresses: &str, retry: &str) -> Arc<UpstreamConfig> {
        let text = format!(
            "[upstreams.api]\naddresses = [{addresses}]\nread_timeout = \"2s\"\n{retry}\n[[routes]]\npath = \"/v2/batch\"\ndialect = \"envelope\"\n"
        );
        let config: Config = text.parse().expect("valid");
        config.upstreams[0].clone()
    }

    /// What a replaced client may still write is what the reload kept: the same addresses
    /// and retry reasons of the same upstream, nothing of a removed one.
    #[test]
    fn a_reload_keeps_exactly_the_series_the_new_settings_still_have() {
        let old = upstream(
            r#""127.0.0.1:9000", "127.0.0.1:9001""#,
            "[upstreams.api.retry]\non = [\"connect\", 503]\n",
        );
        let new = upstream(
            r#""127.0.0.1:9000""#,
            "[upstreams.api.retry]\non = [\"connect\"]\n",
        );
        let kept = &old.addresses[0];
        let removed = &old.addresses[1];
        let on = old.retry.as_ref().expect("retry").on.clone();
        let (connect, status) = (&on[0], &on[1]);
        assert!(matches!(connect, RetryOn::Connect), "{connect:?}");
        let new = Some(&*new);
        assert!(series_survives(new, &UpstreamSeries::Address(kept)));
        assert!(!series_survives(new, &UpstreamSeries::Address(removed)));
        assert!(series_survives(new, &UpstreamSeries::Retried(connect)));
        assert!(!series_survives(new, &UpstreamSeries::Retried(status)));
        assert!(series_survives(new, &UpstreamSeries::RetrySkipped));
        assert!(series_survives(new, &UpstreamSeries::Hedged));

        let without_retry = upstream(r#""127.0.0.1:9000""#, "");
        let without_retry = Some(&*without_retry);
        assert!(!series_survives(
            without_retry,
            &UpstreamSeries::Retried(connect)
        ));
        assert!(!series_survives(
            without_retry,
            &UpstreamSeries::RetrySkipped
        ));

        for series in [
            UpstreamSeries::Address(kept),
            UpstreamSeries::Retried(connect),
            UpstreamSeries::RetrySkipped,
            UpstreamSeries::Hedged,
        ] {
            assert!(!series_survives(None, &series), "the upstream is gone");
        }
    }
}
