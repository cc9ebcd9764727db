//! The upstream resilience settings (issue 15): how an address is chosen (`balance`,
//! `hash_on`, `weights`), `[upstreams.NAME.retry]`,
//! `[upstreams.NAME.health_check]`, and the route keys that say which items may be sent twice
//! (`idempotent_methods`) and whether slow ones are hedged (`hedge_after`).

use super::file::{HealthCheckSection, RetryOnValue, RetrySection, RouteSection, UpstreamSection};
use super::problems::Problems;
use super::values::{bounded, bounded_nonzero, duration};
use http::Method;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Methods whose items may be sent twice by default: RFC 9110 section 9.2.2's idempotent ones.
pub const DEFAULT_IDEMPOTENT_METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

/// What a failed attempt may be retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// No connection (or no TLS session) could be made: nothing was sent, so any method.
    Connect,
    /// The connection failed before an answer: any method when nothing of the request was
    /// written, idempotent ones otherwise.
    Reset,
    /// A read or write timeout shorter than the item timeout fired (idempotent only).
    Timeout,
    /// The upstream answered with this status (idempotent only).
    Status(u16),
}

impl RetryOn {
    /// The metric label and config spelling.
    pub fn label(self) -> String {
        match self {
            RetryOn::Connect => "connect".into(),
            RetryOn::Reset => "reset".into(),
            RetryOn::Timeout => "timeout".into(),
            RetryOn::Status(code) => code.to_string(),
        }
    }
}

/// `[upstreams.NAME.retry]`: retries of one item, within its item timeout and the batch
/// deadline, under a budget shared by the upstream's items.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries per item, the first included (2: one retry).
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Backoff before retry n: uniform in [0, min(max_backoff, backoff × 2^(n-1))].
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` up to this is waited for; a longer one ends the retries (the answer
    /// goes back with its `Retry-After`).
    pub max_retry_after: Duration,
    /// Retries (and hedges) at most this share of the requests of the last 10 s ...
    pub budget: f64,
    /// ... or this many per second, whichever is more (so a quiet upstream can still retry).
    pub min_retries_per_second: u32,
}

/// `[upstreams.NAME.health_check]`: an active check of every address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `GET path` expecting a status in `expect_status`; `None`: a connection (and TLS
    /// handshake) is the check.
    pub path: Option<String>,
    pub expect_status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a failed address back.
    pub healthy_after: u32,
    /// Consecutive failures that take an address out.
    pub unhealthy_after: u32,
}

const DEFAULT_RETRY_ON: &[RetryOn] = &[
    RetryOn::Connect,
    RetryOn::Reset,
    RetryOn::Status(502),
    RetryOn::Status(503),
    RetryOn::Status(504),
];

pub(super) fn retry_policy(
    name: &str,
    section: Option<&RetrySection>,
    problems: &mut Problems,
) -> Option<RetryPolicy> {
    let section = section?;
    let at = |key: &'static str| ["upstreams", name, "retry", key];
    let on = match &section.on {
        None => DEFAULT_RETRY_ON.to_vec(),
        Some(values) => {
            let mut on = Vec::new();
            for (j, value) in values.iter().enumerate() {
                let parsed = retry_on(value);
                match parsed {
                    Some(condition) if !on.contains(&condition) => on.push(condition),
                    Some(_) => {}
                    None => problems.push(
                        &["upstreams", name, "retry", "on", &j.to_string()],
                        format!(
                            "{} is not a retry condition (\"connect\", \"reset\", \"timeout\", or a status 400-599)",
                            value.shown()
                        ),
                    ),
                }
            }
            on
        }
    };
    let backoff = duration(
        &section.backoff,
        Duration::from_millis(25),
        &at("backoff"),
        problems,
    );
    let budget = match section.budget {
        None => 0.2,
        Some(share) if (0.0..=1.0).contains(&share) => share,
        Some(share) => {
            problems.push(
                &at("budget"),
                format!("{share} is not a share of requests (0.0 to 1.0)"),
            );
            0.2
        }
    };
    Some(RetryPolicy {
        attempts: u32::try_from(bounded(
            section.attempts,
            2,
            1,
            10,
            &at("attempts"),
            problems,
        ))
        .unwrap_or(2),
        on,
        backoff,
        max_backoff: duration(
            &section.max_backoff,
            backoff.saturating_mul(10),
            &at("max_backoff"),
            problems,
        ),
        max_retry_after: duration(
            &section.max_retry_after,
            Duration::from_secs(1),
            &at("max_retry_after"),
            problems,
        ),
        budget,
        min_retries_per_second: u32::try_from(bounded(
            section.min_retries_per_second,
            10,
            0,
            100_000,
            &at("min_retries_per_second"),
            problems,
        ))
        .unwrap_or(10),
    })
}

fn retry_on(value: &RetryOnValue) -> Option<RetryOn> {
    match value {
        RetryOnValue::Name(name) => match name.as_str() {
            "connect" => Some(RetryOn::Connect),
            "reset" => Some(RetryOn::Reset),
            "timeout" => Some(RetryOn::Timeout),
            code => code.parse::<i64>().ok().and_then(retry_status),
        },
        RetryOnValue::Status(code) => retry_status(*code),
    }
}

fn retry_status(code: i64) -> Option<RetryOn> {
    u16::try_from(code)
        .ok()
        .filter(|c| (400..=599).contains(c))
        .map(RetryOn::Status)
}

pub(super) fn health_check(
    name: &str,
    section: Option<&HealthCheckSection>,
    problems: &mut Problems,
) -> Option<HealthCheck> {
    let section = section?;
    let at = |key: &'static str| ["upstreams", name, "health_check", key];
    if let Some(path) = &section.path {
        if !super::values::is_target(path) {
            problems.push(
                &at("path"),
                format!("{path:?} must be an absolute path such as \"/healthz\""),
            );
        }
    }
    let expect_status = match section.expect_status.as_deref() {
        None => (200, 399),
        Some(text) => status_range(text).unwrap_or_else(|| {
            problems.push(
                &at("expect_status"),
                format!("{text:?} is not a status or a range such as \"200-399\""),
            );
            (200, 399)
        }),
    };
    let interval = duration(
        &section.interval,
        Duration::from_secs(5),
        &at("interval"),
        problems,
    );
    let timeout = duration(
        &section.timeout,
        Duration::from_secs(1),
        &at("timeout"),
        problems,
    );
    if timeout > interval {
        problems.push(
            &at("timeout"),
            format!("{timeout:?} is longer than the interval ({interval:?})"),
        );
    }
    let threshold = |value, key, problems: &mut Problems| {
        u32::try_from(bounded(value, 2, 1, 100, &at(key), problems)).unwrap_or(2)
    };
    Some(HealthCheck {
        path: section.path.clone(),
        expect_status,
        interval,
        timeout,
        healthy_after: threshold(section.healthy_after, "healthy_after", problems),
        unhealthy_after: threshold(section.unhealthy_after, "unhealthy_after", problems),
    })
}

/// `"200"` or `"200-399"`, within 100-599.
fn status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u16 = low.trim().parse().ok()?;
    let high: u16 = high.trim().parse().ok()?;
    ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some((low, high))
}

/// The methods a route's items may be sent twice with (retries and hedges).
pub(super) fn idempotent_methods(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Vec<Method> {
    let Some(names) = &section.idempotent_methods else {
        return DEFAULT_IDEMPOTENT_METHODS.to_vec();
    };
    super::values::upper_case_methods(names, &["routes", i, "idempotent_methods"], problems)
}

/// When a second copy of a slow idempotent item goes to another address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// After this long.
    After(Duration),
    /// After the upstream's recent answers' quantile (0.5 to 0.999) of latency: only the
    /// slowest items get a copy, whatever the upstream's usual speed.
    Quantile(f64),
}

/// `hedge_after`: a duration (`"50ms"`) or a quantile of recent latency (`"p95"`).
pub(super) fn hedge_after(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Option<Hedge> {
    let text = section.hedge_after.as_ref()?;
    let at = ["routes", i, "hedge_after"];
    if let Some(percent) = text.strip_prefix('p') {
        return match percent.parse::<f64>() {
            Ok(p) if (50.0..=99.9).contains(&p) => Some(Hedge::Quantile(p / 100.0)),
            _ => {
                problems.push(
                    &at,
                    format!("{text:?} is not a latency quantile from \"p50\" to \"p99.9\""),
                );
                None
            }
        };
    }
    Some(Hedge::After(duration(
        &section.hedge_after,
        Duration::ZERO,
        &at,
        problems,
    )))
}

/// `balance` and, for `"hash"`, `hash_on`.
pub(super) fn balance(name: &str, section: &UpstreamSection, problems: &mut Problems) -> Balance {
    let at = |key: &'static str| ["upstreams", name, key];
    let balance = match super::values::noted(
        section.balance.as_deref(),
        "round_robin",
        &at("balance"),
        problems,
    ) {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_outstanding") => Balance::LeastOutstanding,
        Some("hash") => Balance::Hash(hash_on(
            section.hash_on.as_deref(),
            &at("hash_on"),
            problems,
        )),
        Some(other) => {
            problems.push(
                &at("balance"),
                format!(
                    "{other:?} is not a balance (\"round_robin\", \"least_outstanding\" or \"hash\")"
                ),
            );
            Balance::RoundRobin
        }
    };
    if section.hash_on.is_some() && !matches!(balance, Balance::Hash(_)) {
        problems.push(&at("hash_on"), "only with balance = \"hash\"");
    }
    balance
}

fn hash_on(text: Option<&str>, at: &[&str], problems: &mut Problems) -> HashOn {
    match text {
        None | Some("path") => HashOn::Path,
        Some(other) => match other
            .strip_prefix("header:")
            .and_then(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).ok())
        {
            Some(header) => HashOn::Header(header),
            None => {
                problems.push(
                    at,
                    format!("{other:?} is not a hash key (\"path\" or \"header:NAME\")"),
                );
                HashOn::Path
            }
        },
    }
}

/// `weights`: one per address, 1 to 100; all 1 when absent.
pub(super) fn weights(
    name: &str,
    section: &UpstreamSection,
    problems: &mut Problems,
) -> Vec<NonZeroU32> {
    let Some(weights) = &section.weights else {
        return vec![NonZeroU32::MIN; section.addresses.len()];
    };
    if weights.len() != section.addresses.len() {
        problems.push(
            &["upstreams", name, "weights"],
            format!(
                "{} weights for {} addresses: give one per address",
                weights.len(),
                section.addresses.len()
            ),
        );
    }
    weights
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let at = ["upstreams", name, "weights", &j.to_string()];
            let weight = bounded_nonzero(Some(*w), NonZeroUsize::MIN, 100, &at, problems);
            NonZeroU32::try_from(weight).unwrap_or(NonZeroU32::MIN)
        })
        .collect()
}

/// How an item picks one of an upstream's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// In turn, by weight (the default).
    RoundRobin,
    /// The address with the fewest items in flight from this process per unit of weight
    /// (ties in turn): a slow address gets fewer items while it is slow.
    LeastOutstanding,
    /// Consistent hashing (ketama, by weight) of a key of each request: the same key goes to
    /// the same address while it is in the choice.
    Hash(HashOn),
}

/// The key `Balance::Hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The item's (or pass-through request's) path and query.
    Path,
    /// This header's value: the item's own, else the batch request's; requests without it
    /// go round robin.
    Header(http::HeaderName),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_within_bounds() {
        assert_eq!(status_range("200-399"), Some((200, 399)));
        assert_eq!(status_range("204"), Some((204, 204)));
        for bad in ["", "99", "600", "300-200", "2xx", "200-"] {
            assert_eq!(status_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_conditions_are_names_or_error_statuses() {
        let name = |s: &str| retry_on(&RetryOnValue::Name(s.into()));
        assert_eq!(name("connect"), Some(RetryOn::Connect));
        assert_eq!(name("503"), Some(RetryOn::Status(503)));
        assert_eq!(
            retry_on(&RetryOnValue::Status(429)),
            Some(RetryOn::Status(429))
        );
        assert_eq!(name("200"), None);
        assert_eq!(retry_on(&RetryOnValue::Status(70000)), None);
        assert_eq!(name("5xx"), None);
    }
}
