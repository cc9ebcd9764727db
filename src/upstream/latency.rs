//! Recent answer latency of an upstream, for hedging on a quantile (`hedge_after = "p95"`):
//! a histogram of the last 10 to 20 seconds in √2-spaced buckets from 0.25 ms, lock-free (two
//! 10-second generations, the older one reset when its turn comes round), so recording costs
//! one atomic add per answer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets: 0.25 ms × √2^k, k = 0..BUCKETS (the last one reaches past 4 minutes).
const BUCKETS: usize = 42;
const GENERATION: Duration = Duration::from_secs(10);
/// Fewer answers than this in the window give no quantile (and no hedge): a quantile of a
/// handful of samples says little.
const MIN_SAMPLES: u64 = 20;

#[derive(Debug)]
pub struct Latency {
    started: Instant,
    generations: [Generation; 2],
}

#[derive(Debug)]
struct Generation {
    /// Which 10-second period (plus one: 0 is never used) the counts belong to.
    period: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            period: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Upper bound of bucket `k`.
fn bound(k: usize) -> Duration {
    let micros = 250.0 * std::f64::consts::SQRT_2.powi(i32::try_from(k).unwrap_or(i32::MAX));
    Duration::from_secs_f64(micros / 1e6)
}

fn bucket(elapsed: Duration) -> usize {
    (0..BUCKETS)
        .find(|&k| elapsed <= bound(k))
        .unwrap_or(BUCKETS - 1)
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            started: Instant::now(),
            generations: Default::default(),
        }
    }
}

impl Latency {
    fn period(&self) -> u64 {
        self.started.elapsed().as_secs() / GENERATION.as_secs() + 1
    }

    /// An answer that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let period = self.period();
        let generation = &self.generations[usize::from(period % 2 == 1)];
        let was = generation.period.load(Ordering::Relaxed);
        if was != period
            && generation
                .period
                .compare_exchange(was, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            for count in &generation.counts {
                count.store(0, Ordering::Relaxed);
            }
        }
        generation.counts[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0 < q < 1) of the recent answers, rounded up to its bucket's bound;
    /// `None` with too few of them.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let now = self.period();
        let mut counts = [0u64; BUCKETS];
        for generation in &self.generations {
            let period = generation.period.load(Ordering::Relaxed);
            if period != 0 && period + 1 >= now {
                for (sum, count) in counts.iter_mut().zip(&generation.counts) {
                    *sum += u64::from(count.load(Ordering::Relaxed));
                }
            }
        }
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (k, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bound(k));
            }
        }
        Some(bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_comes_from_the_recent_answers() {
        let latency = Latency::default();
        assert_eq!(latency.quantile(0.9), None, "no samples");
        for _ in 0..90 {
            latency.record(Duration::from_millis(2));
        }
        for _ in 0..10 {
            latency.record(Duration::from_millis(200));
        }
        let p50 = latency.quantile(0.5).expect("enough samples");
        assert!(
            p50 >= Duration::from_millis(2) && p50 < Duration::from_millis(3),
            "{p50:?}"
        );
        let p99 = latency.quantile(0.99).expect("enough samples");
        assert!(
            p99 >= Duration::from_millis(200) && p99 < Duration::from_millis(290),
            "{p99:?}"
        );
        assert!(bound(BUCKETS - 1) > Duration::from_secs(240));
    }
}
