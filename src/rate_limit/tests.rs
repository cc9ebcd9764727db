use super::*;
use crate::config::rate_limit::{OnStoreError, StoreKind};
use std::collections::BTreeMap;

fn config(items_per_second: f64, burst: u64) -> RateLimitConfig {
    RateLimitConfig {
        items_per_second,
        burst,
        store: StoreKind::Local,
        on_store_error: OnStoreError::FailOpen,
        weights: BTreeMap::new(),
        lease: None,
    }
}

#[test]
fn gcra_allows_the_burst_then_the_rate() {
    // 10 items per second, burst 5: an interval of 100 ms.
    let policy = Policy::new(&config(10.0, 5), 1.0);
    assert_eq!(policy.interval_us, 100_000);
    let (first, tat) = gcra(policy, 0, None, 5);
    assert!(first.allowed);
    assert_eq!(first.remaining, 0);
    assert_eq!(first.reset, Duration::from_millis(500));
    let (refused, kept) = gcra(policy, 0, tat, 1);
    assert!(!refused.allowed);
    assert_eq!(kept, None, "a refusal changes nothing");
    assert_eq!(refused.retry_after, Duration::from_millis(100));
    // 250 ms later two items have drained.
    let (two, tat) = gcra(policy, 250_000, tat, 2);
    assert!(two.allowed);
    let (third, _) = gcra(policy, 250_000, tat, 1);
    assert!(!third.allowed);
    assert_eq!(third.retry_after, Duration::from_millis(50));
    // Idle for long: the bucket is empty, not negative.
    let (after, _) = gcra(policy, 100_000_000, tat, 5);
    assert!(after.allowed);
}

#[test]
fn a_charge_is_all_or_nothing() {
    let policy = Policy::new(&config(1.0, 10), 1.0);
    let (seven, tat) = gcra(policy, 0, None, 7);
    assert!(seven.allowed);
    assert_eq!(seven.remaining, 3);
    let (four, kept) = gcra(policy, 0, tat, 4);
    assert!(!four.allowed, "4 do not fit in 3");
    assert_eq!(kept, None);
    assert_eq!(four.remaining, 3, "nothing spent");
    assert!(gcra(policy, 0, tat, 3).0.allowed);
}

#[test]
fn a_fraction_shrinks_rate_and_burst() {
    let policy = Policy::new(&config(30.0, 30), 1.0 / 3.0);
    assert_eq!(policy.burst, 10);
    assert_eq!(policy.interval_us, 100_000);
}

#[tokio::test]
async fn local_counts_per_client_and_route_and_refuses_what_never_fits() {
    let limiter = Limiter::new(&store(100), |_, _| {});
    let config = config(0.001, 3);
    let a: ClientId = "a".into();
    let b: ClientId = "b".into();
    assert!(matches!(
        limiter.charge("r", &config, &a, 3).await,
        Charge::Allowed(Some(_))
    ));
    assert!(matches!(
        limiter.charge("r", &config, &a, 1).await,
        Charge::Limited(_)
    ));
    assert!(matches!(
        limiter.charge("r", &config, &b, 3).await,
        Charge::Allowed(_)
    ));
    assert!(matches!(
        limiter.charge("other", &config, &a, 3).await,
        Charge::Allowed(_)
    ));
    assert_eq!(
        limiter.charge("r", &config, &b, 4).await,
        Charge::TooLarge { cost: 4, burst: 3 }
    );
}

fn store(max_local_clients: u64) -> RateLimitStore {
    RateLimitStore {
        redis_url: None,
        redis_timeout: Duration::from_millis(50),
        redis_key_prefix: "t:".into(),
        redis_retry_interval: Duration::from_secs(1),
        max_local_clients,
    }
}

#[tokio::test]
async fn the_local_table_stays_within_its_bound_under_a_flood_of_clients() {
    let limiter = Limiter::new(&store(1000), |_, _| {});
    let config = config(0.001, 10);
    for i in 0..20_000 {
        let client: ClientId = format!("client-{i}-{}", "x".repeat(1000)).into();
        limiter.charge("r", &config, &client, 1).await;
    }
    let held = limiter.local.len();
    assert!(held <= 1000, "{held} clients held");
}

#[test]
fn headers_follow_the_ietf_draft() {
    let verdict = Verdict {
        allowed: true,
        retry_after: Duration::ZERO,
        remaining: 7,
        reset: Duration::from_millis(1500),
    };
    let [(policy_name, policy), (state_name, state)] = headers(&config(10.0, 20), &verdict);
    assert_eq!(policy_name, "ratelimit-policy");
    assert_eq!(policy, "\"items\";q=20;w=2");
    assert_eq!(state_name, "ratelimit");
    assert_eq!(state, "\"items\";r=7;t=2");
}
