//! Passive outlier ejection: an address whose connections fail `eject_after` times in a row
//! is left out of the choice for `eject_for` × its number of ejections (capped at
//! `MAX_EJECTION`), as Envoy's outlier detection does with consecutive gateway failures. At
//! most half of an upstream's addresses are out at once, so its own failures never empty it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest an address stays out, however often it was ejected.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Ejection state of one upstream's addresses.
#[derive(Debug)]
pub struct Ejections {
    /// Consecutive connection failures that eject; 0: never.
    after: u32,
    base: Duration,
    started: Instant,
    addresses: Box<[Address]>,
    /// Serialises ejecting, so the share is never exceeded by a race.
    ejecting: Mutex<()>,
}

#[derive(Debug, Default)]
struct Address {
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Until when it is out, in milliseconds since `started` (0: in).
    out_until_ms: AtomicU64,
}

impl Ejections {
    pub fn new(addresses: usize, after: u32, base: Duration) -> Self {
        Ejections {
            after,
            base,
            started: Instant::now(),
            addresses: (0..addresses).map(|_| Address::default()).collect(),
            ejecting: Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether address `i` is out of the choice now.
    pub fn is_out(&self, i: usize) -> bool {
        self.after > 0
            && self
                .addresses
                .get(i)
                .is_some_and(|a| a.out_until_ms.load(Ordering::Relaxed) > self.now_ms())
    }

    /// An item reached address `i` (any answer): its failure streak ends.
    pub fn succeeded(&self, i: usize) {
        if let Some(address) = self.addresses.get(i) {
            if address.consecutive_failures.load(Ordering::Relaxed) != 0 {
                address.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A connection to address `i` failed; true when this ejected it.
    pub fn failed(&self, i: usize) -> bool {
        let Some(address) = self.addresses.get(i) else {
            return false;
        };
        if self.after == 0 {
            return false;
        }
        let streak = address.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.after {
            return false;
        }
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now_ms();
        if address.out_until_ms.load(Ordering::Relaxed) > now {
            return false;
        }
        let out = self
            .addresses
            .iter()
            .filter(|a| a.out_until_ms.load(Ordering::Relaxed) > now)
            .count();
        if (out + 1) * 2 > self.addresses.len() {
            return false;
        }
        let ejections = address.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = self.base.saturating_mul(ejections).min(MAX_EJECTION);
        let until = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        address.out_until_ms.store(until, Ordering::Relaxed);
        address.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_within_the_share() {
        let e = Ejections::new(3, 2, Duration::from_millis(100));
        assert!(!e.failed(0));
        e.succeeded(0);
        assert!(!e.failed(0), "a success ends the streak");
        assert!(e.failed(0), "two in a row eject");
        assert!(e.is_out(0));
        assert!(
            !e.failed(1) && !e.failed(1),
            "a second address would be more than half out"
        );
        assert!(!e.is_out(1));
        std::thread::sleep(Duration::from_millis(120));
        assert!(!e.is_out(0), "back after eject_for");
        assert!(!e.failed(0) && e.failed(0));
        std::thread::sleep(Duration::from_millis(120));
        assert!(e.is_out(0), "the second ejection lasts twice as long");
    }

    #[test]
    fn off_and_single_address_upstreams_never_eject() {
        let off = Ejections::new(2, 0, Duration::from_secs(1));
        assert!(!off.failed(0) && !off.failed(0) && !off.is_out(0));
        let single = Ejections::new(1, 1, Duration::from_secs(1));
        assert!(!single.failed(0) && !single.is_out(0));
    }
}
