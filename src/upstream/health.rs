//! Active health checks: every `interval`, each address of an upstream with a
//! `[health_check]` gets a connection (TCP, and TLS where configured) or a `GET path` over the
//! same client the items use; `unhealthy_after` failures in a row take it out of the choice
//! and `healthy_after` passes bring it back (as Envoy's and HAProxy's thresholds). Addresses
//! start healthy, so a restart does not wait a full round before it serves.
//!
//! The checks are driven by `HealthChecker`, one background service that walks the clients
//! of the config in effect, so a reload's new clients are checked and dropped ones are not.

use super::{BatchHeaders, UpstreamClient};
use crate::config::HealthCheck;
use crate::item::{Failure, Outcome, SubRequest};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Health state of one upstream's addresses.
#[derive(Debug)]
pub struct Health {
    pub check: Option<HealthCheck>,
    addresses: Box<[State]>,
    started: Instant,
    /// When the next round is due, in milliseconds since `started`.
    next_round_ms: AtomicU64,
}

#[derive(Debug)]
struct State {
    healthy: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
}

impl Health {
    pub fn new(addresses: usize, check: Option<HealthCheck>) -> Self {
        Health {
            check,
            addresses: (0..addresses)
                .map(|_| State {
                    healthy: AtomicBool::new(true),
                    passes: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                })
                .collect(),
            started: Instant::now(),
            next_round_ms: AtomicU64::new(0),
        }
    }

    /// Whether address `i` passes its checks (always, without checks).
    pub fn is_healthy(&self, i: usize) -> bool {
        self.addresses
            .get(i)
            .is_none_or(|a| a.healthy.load(Ordering::Relaxed))
    }

    /// Records one check of address `i`; `Some(healthy)` when its state changed.
    pub fn record(&self, i: usize, passed: bool) -> Option<bool> {
        let check = self.check.as_ref()?;
        let address = self.addresses.get(i)?;
        let healthy = address.healthy.load(Ordering::Relaxed);
        if passed {
            address.failures.store(0, Ordering::Relaxed);
            let passes = address.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !healthy && passes >= check.healthy_after {
                address.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            address.passes.store(0, Ordering::Relaxed);
            let failures = address.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if healthy && failures >= check.unhealthy_after {
                address.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// True (once) when a round of checks is due; the next one is then an interval away.
    fn take_round(&self) -> bool {
        let Some(check) = &self.check else {
            return false;
        };
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_round_ms.load(Ordering::Relaxed);
        let next = now.saturating_add(u64::try_from(check.interval.as_millis()).unwrap_or(0));
        now >= due
            && self
                .next_round_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl UpstreamClient {
    /// One check of address `n`: a new connection, or `GET path` answered within
    /// `expect_status`, all within `timeout`.
    async fn check_address(&self, n: usize, check: &HealthCheck) -> Result<(), String> {
        let Some(path) = &check.path else {
            return self.reach(n, check.timeout).await;
        };
        let request = SubRequest {
            method: http::Method::GET,
            path: path.clone(),
            headers: Vec::new(),
            body: None,
        };
        let batch = BatchHeaders {
            host: self.health_host(n),
            common: vec![(
                http::header::USER_AGENT,
                http::HeaderValue::from_static("batchgate-health-check"),
            )],
            max_response_bytes: 64 * 1024,
            item_timeout: check.timeout,
        };
        let exchange = self.exchange(n, &request, &batch, true);
        match tokio::time::timeout(check.timeout, exchange).await {
            Ok(Outcome::Response(r))
                if (check.expect_status.0..=check.expect_status.1).contains(&r.status) =>
            {
                Ok(())
            }
            Ok(Outcome::Response(r)) => Err(format!("status {}", r.status)),
            Ok(Outcome::Failed(f)) => Err(f.detail.unwrap_or_else(|| format!("{:?}", f.kind))),
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        }
    }

    /// A connection to address `n` within `timeout`, its TLS handshake included when the
    /// upstream speaks TLS (an address that accepts TCP but fails every handshake is not
    /// reachable for items either); closed at once.
    pub async fn reach(&self, n: usize, timeout: std::time::Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.transport.reach(n)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::from(e).detail.unwrap_or_default()),
            Err(_) => Err(format!("no connection within {timeout:?}")),
        }
    }

    /// The `Host` of a check: the upstream's configured one, else the address.
    fn health_host(&self, n: usize) -> http::HeaderValue {
        self.config
            .host
            .clone()
            .or_else(|| self.config.addresses.get(n).map(ToString::to_string))
            .and_then(|h| http::HeaderValue::from_str(&h).ok())
            .unwrap_or_else(|| http::HeaderValue::from_static("localhost"))
    }

    /// Checks every address once, concurrently, and records the results.
    async fn check_round(self: Arc<Self>) {
        let Some(check) = self.health.check.clone() else {
            return;
        };
        let checks = (0..self.config.addresses.len()).map(|n| {
            let check = &check;
            let client = &self;
            async move { (n, client.check_address(n, check).await) }
        });
        for (n, result) in futures_util::future::join_all(checks).await {
            let Some(socket) = self.config.addresses.get(n) else {
                continue;
            };
            let address = socket.to_string();
            self.count(|m| m.health_checked(n, result.is_ok()));
            match (self.health.record(n, result.is_ok()), &result) {
                (Some(false), Err(why)) => {
                    tracing::warn!(upstream = %self.config.name, %address, "address failed its health check {} times in a row, out of the choice: {why}", check.unhealthy_after);
                }
                (Some(true), _) => {
                    tracing::info!(upstream = %self.config.name, %address, "address passed its health check {} times in a row, back in the choice", check.healthy_after);
                }
                _ => {}
            }
        }
        // The gauges are the checker's to publish (next tick), for the clients in effect
        // only; a round that ends after a reload removed its address writes to a detached
        // series (`metrics::UpstreamMetrics`).
    }

    /// Each address with whether it passes its checks and whether it is ejected.
    pub fn address_states(&self) -> Vec<(std::net::SocketAddr, bool, bool)> {
        self.config
            .addresses
            .iter()
            .enumerate()
            .map(|(n, a)| (*a, self.health.is_healthy(n), self.ejections.is_out(n)))
            .collect()
    }

    /// Whether this upstream has active checks.
    pub fn is_checked(&self) -> bool {
        self.health.check.is_some()
    }

    /// Sets the per-address "in the choice" gauge from the health and ejection state.
    pub fn publish_state(&self) {
        for n in 0..self.config.addresses.len() {
            let up = self.health.is_healthy(n) && !self.ejections.is_out(n);
            self.count(|m| m.address_up(n, up));
        }
    }
}

/// How often the checker looks for due rounds and publishes the state gauges.
const TICK: Duration = Duration::from_millis(100);

/// The background service that runs the due rounds of checks of the clients in effect.
pub struct HealthChecker {
    pub clients: super::UpstreamClients,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            for client in (self.clients)() {
                if client.health.take_round() {
                    // A round lasts at most its timeout; rounds of one client do not overlap
                    // as long as the timeout is below the interval (config validation).
                    tokio::spawn(client.clone().check_round());
                }
                // Checks and ejections change the state, and ejections end by time.
                client.publish_state();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy_after: u32, unhealthy_after: u32) -> HealthCheck {
        HealthCheck {
            path: None,
            expect_status: (200, 399),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            healthy_after,
            unhealthy_after,
        }
    }

    #[test]
    fn thresholds_take_an_address_out_and_bring_it_back() {
        let h = Health::new(2, Some(check(2, 3)));
        assert!(h.is_healthy(0), "addresses start healthy");
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, true), None, "a pass ends the failure streak");
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, false), Some(false), "three in a row");
        assert!(!h.is_healthy(0) && h.is_healthy(1));
        assert_eq!(h.record(0, true), None);
        assert_eq!(h.record(0, true), Some(true), "two passes bring it back");
        assert!(h.is_healthy(0));
    }

    #[test]
    fn a_round_is_due_once_per_interval_and_never_without_checks() {
        let h = Health::new(1, Some(check(1, 1)));
        assert!(h.take_round(), "the first round is due at once");
        assert!(!h.take_round());
        assert!(!Health::new(1, None).take_round());
    }
}
