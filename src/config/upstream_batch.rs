//! Validation of a jsonrpc route's `[routes.upstream_batching]`: single calls of many
//! clients gathered into one upstream JSON-RPC array (`crate::upstream_batch`), and when it
//! is sent.

use super::file::{RouteSection, UpstreamBatchingSection};
use super::problems::Problems;
use std::time::Duration;

/// When a gathered upstream batch is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamBatchConfig {
    /// Calls at which it is sent at once.
    pub max_items: usize,
    /// Bytes of calls at which it is sent at once.
    pub max_bytes: usize,
    /// The longest the first call waits for others (zero: only what is already queued).
    pub max_wait: Duration,
    /// Upstream batches of the route in flight at once; more wait for one to finish.
    pub max_concurrent: usize,
}

pub const DEFAULT_MAX_ITEMS: i64 = 50;
pub const DEFAULT_MAX_BYTES: i64 = 256 * 1024;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(2);
pub const DEFAULT_MAX_CONCURRENT: i64 = 16;
/// A wait past this is a latency no single call should pay for batching.
const MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) fn upstream_batch_config(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<UpstreamBatchConfig> {
    let batching: &UpstreamBatchingSection = section.upstream_batching.as_ref()?;
    let at = |key: &'static str| ["routes", i, "upstream_batching", key];
    if section.dialect != "jsonrpc" {
        problems.push(
            &["routes", i, "upstream_batching"],
            "only for jsonrpc routes (single calls gathered into upstream arrays)",
        );
    }
    let max_wait = match batching.max_wait.as_deref() {
        None => DEFAULT_MAX_WAIT,
        Some("0" | "0ms" | "0s") => Duration::ZERO,
        Some(_) => {
            let wait = super::values::duration(
                &batching.max_wait,
                DEFAULT_MAX_WAIT,
                &at("max_wait"),
                problems,
            );
            if wait > MAX_WAIT {
                problems.push(
                    &at("max_wait"),
                    "at most \"1s\": every lone call waits this long",
                );
            }
            wait
        }
    };
    Some(UpstreamBatchConfig {
        max_items: super::values::bounded(
            batching.max_items,
            DEFAULT_MAX_ITEMS as usize,
            2,
            10_000,
            &at("max_items"),
            problems,
        ),
        max_bytes: super::values::bounded(
            batching.max_bytes,
            DEFAULT_MAX_BYTES as usize,
            1024,
            64 << 20,
            &at("max_bytes"),
            problems,
        ),
        max_wait,
        max_concurrent: super::values::bounded(
            batching.max_concurrent,
            DEFAULT_MAX_CONCURRENT as usize,
            1,
            10_000,
            &at("max_concurrent"),
            problems,
        ),
    })
}
