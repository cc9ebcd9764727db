//! Which address of an upstream an attempt goes to: in turn by weight (nginx's smooth
//! weighted round robin), the fewest in flight per unit of weight, or consistent hashing of a
//! key (ketama, as nginx's `hash ... consistent` and pingora-load-balancing). The caller says
//! which addresses are eligible (not ejected, healthy, not the one a retry comes from); every
//! policy then takes the first eligible one in its own order.

use crate::config::{Balance, UpstreamConfig};
use pingora_ketama::{Bucket, Continuum};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The addresses an item (or a pass-through request) was already sent to, so a retry or a
/// hedge prefers the others (Envoy's `previous_hosts` predicate); indexes past 63 are not
/// tracked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn with(self, i: usize) -> Tried {
        Tried(self.0 | bit(i))
    }

    pub fn contains(self, i: usize) -> bool {
        self.0 & bit(i) != 0
    }
}

fn bit(i: usize) -> u64 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// Points ketama puts on the ring per unit of weight (its default, from nginx).
const POINTS_PER_WEIGHT: usize = 160;

pub struct Chooser {
    balance: Balance,
    weights: Box<[u32]>,
    /// Round robin: indexes in smooth weighted order, one entry per unit of weight.
    schedule: Box<[usize]>,
    next: AtomicUsize,
    /// Hash: the ring, and the addresses to map its answers back to indexes.
    ring: Option<(Continuum, Box<[SocketAddr]>)>,
    /// Attempts in flight per address, counted only for `Balance::LeastOutstanding`.
    pub outstanding: Box<[AtomicUsize]>,
}

impl Chooser {
    pub fn new(config: &UpstreamConfig) -> Self {
        let weights: Box<[u32]> = (0..config.addresses.len())
            .map(|i| config.weights.get(i).map_or(1, |w| w.get()))
            .collect();
        let ring = matches!(config.balance, Balance::Hash(_)).then(|| {
            let buckets: Vec<Bucket> = config
                .addresses
                .iter()
                .zip(weights.iter())
                .map(|(a, w)| Bucket::new(*a, *w))
                .collect();
            (Continuum::new(&buckets), config.addresses.clone().into())
        });
        Chooser {
            balance: config.balance.clone(),
            schedule: smooth_schedule(&weights),
            outstanding: weights.iter().map(|_| AtomicUsize::new(0)).collect(),
            weights,
            next: AtomicUsize::new(0),
            ring,
        }
    }

    pub fn counts_outstanding(&self) -> bool {
        self.balance == Balance::LeastOutstanding
    }

    /// The address for the next attempt among the `eligible` ones; `key` is what
    /// `Balance::Hash` hashes (without one it goes in turn). `None` when none is eligible.
    pub fn choose(&self, key: Option<&[u8]>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.weights.len();
        if len == 0 {
            return None;
        }
        if let (Some((ring, addresses)), Some(key)) = (&self.ring, key) {
            let points =
                POINTS_PER_WEIGHT * self.weights.iter().map(|w| *w as usize).sum::<usize>();
            return ring
                .node_iter(key)
                .take(points)
                .filter_map(|a| addresses.iter().position(|b| b == a))
                .find(|&i| eligible(i));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match self.balance {
            Balance::LeastOutstanding => {
                let start = turn % len;
                (0..len)
                    .map(|k| (start + k) % len)
                    .filter(|&i| eligible(i))
                    .min_by(|&a, &b| {
                        // (in flight + 1) / weight, compared without division.
                        let load = |i: usize| {
                            u64::try_from(self.outstanding[i].load(Ordering::Relaxed))
                                .unwrap_or(u64::MAX - 1)
                                + 1
                        };
                        (load(a) * u64::from(self.weights[b]))
                            .cmp(&(load(b) * u64::from(self.weights[a])))
                    })
            }
            _ => {
                let start = self.schedule[turn % self.schedule.len()];
                (0..len).map(|k| (start + k) % len).find(|&i| eligible(i))
            }
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: weights 5, 1, 1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_schedule(weights: &[u32]) -> Box<[usize]> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let best = (0..weights.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        schedule.push(best);
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_addresses_are_a_set_and_far_ones_are_not_tracked() {
        let tried = Tried::default().with(0).with(63).with(64);
        assert!(tried.contains(0) && tried.contains(63));
        assert!(!tried.contains(1) && !tried.contains(64));
    }

    #[test]
    fn the_schedule_interleaves_by_weight() {
        assert_eq!(&*smooth_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_schedule(&[1, 1]), &[0, 1]);
        assert_eq!(&*smooth_schedule(&[]), &[0]);
    }
}
