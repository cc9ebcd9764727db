//! The admission rules, one at a time, on explicit numbers.

use super::*;
use crate::config::{AdmissionLimits, ClientKey};

fn limits() -> AdmissionLimits {
    AdmissionLimits {
        max_queued_items: 100,
        queue_budget: Duration::from_secs(5),
        max_held_bytes: 10_000,
        per_client_items: 150,
        client_key: ClientKey::Ip,
    }
}

fn admission(limits: AdmissionLimits) -> Arc<Admission> {
    Arc::new(Admission::new(limits, 50))
}

/// Items beyond `max_in_flight` queue up to `max_queued_items`; the batch that would go
/// beyond is refused, and one that fits after others finished is admitted.
#[test]
fn the_queue_holds_max_queued_items_beyond_the_permits() {
    let a = admission(AdmissionLimits {
        per_client_items: 0,
        ..limits()
    });
    let first = a
        .admit("a".into(), 100, 0)
        .expect("50 in flight, 50 queued");
    let _second = a.admit("b".into(), 50, 0).expect("100 queued");
    assert_eq!(a.queued(), 100);
    let refused = a.admit("c".into(), 1, 0).expect_err("the queue is full");
    assert_eq!(refused.why, Refusal::QueueFull);
    assert!(refused.retry_after >= Duration::from_secs(1));
    for _ in 0..10 {
        first.item_ended();
    }
    assert_eq!(a.queued(), 90);
    a.admit("c".into(), 10, 0).expect("room again");
}

/// A client's outstanding items are capped (429 material), others are not affected, and
/// the count goes back down as its items finish and its batch ends.
#[test]
fn a_client_is_capped_at_per_client_items() {
    let a = admission(AdmissionLimits {
        max_queued_items: 1_000,
        ..limits()
    });
    let batch = a.admit("flood".into(), 150, 0).expect("at the cap");
    let refused = a.admit("flood".into(), 1, 0).expect_err("over the cap");
    assert_eq!(refused.why, Refusal::ClientLimit);
    a.admit("light".into(), 1, 0).expect("another client");
    batch.item_ended();
    a.admit("flood".into(), 1, 0)
        .expect("one finished: one more fits");
    drop(batch);
    a.admit("flood".into(), 100, 0)
        .expect("the batch ended: its items were released");
}

/// Held batch bodies are capped by `max_held_bytes`; a batch's bytes come back when it ends.
#[test]
fn held_bodies_are_capped() {
    let a = admission(limits());
    let big = a.admit("a".into(), 1, 9_000).expect("fits");
    let refused = a
        .admit("b".into(), 1, 2_000)
        .expect_err("over the memory budget");
    assert_eq!(refused.why, Refusal::Memory);
    assert_eq!(a.held_bytes(), 9_000);
    drop(big);
    assert_eq!(a.held_bytes(), 0);
    a.admit("b".into(), 1, 2_000).expect("fits again");
}

/// Responses kept for a reply count against the same budget as bodies, from the moment each
/// item finishes until the batch's ticket is dropped (its reply written).
#[test]
fn kept_responses_count_against_the_memory_budget() {
    let a = admission(limits());
    let batch = a.admit("a".into(), 2, 1_000).expect("fits");
    {
        batch.item_ended();
        batch.hold(4_000);
    }
    {
        batch.item_ended();
        batch.hold(4_000);
    }
    assert_eq!(a.held_bytes(), 9_000);
    let refused = a
        .admit("b".into(), 1, 2_000)
        .expect_err("replies fill the budget");
    assert_eq!(refused.why, Refusal::Memory);
    drop(batch);
    assert_eq!(a.held_bytes(), 0);
    a.admit("b".into(), 1, 2_000).expect("the reply went out");
}

/// With a measured drain rate, a batch behind more queued work than drains within the
/// budget is refused, with `Retry-After` near the expected wait.
#[test]
fn a_batch_that_would_wait_past_the_budget_is_refused() {
    let a = admission(AdmissionLimits {
        max_queued_items: 10_000,
        per_client_items: 0,
        ..limits()
    });
    let running = a.admit("a".into(), 2_000, 0).expect("admitted");
    // 100 items finish over 0.3 s: about 333 items/s.
    for _ in 0..100 {
        running.item_ended();
    }
    {
        let mut state = a.lock();
        state.drain.since -= Duration::from_millis(300);
    }
    // 1,900 outstanding, 1,850 queued ahead: about 5.5 s at 333/s, over the 5 s budget.
    let refused = a.admit("b".into(), 1, 0).expect_err("over the budget");
    assert_eq!(refused.why, Refusal::QueueBudget);
    assert!(
        refused.retry_after > Duration::from_secs(5),
        "{:?}",
        refused.retry_after
    );
    drop(running);
    a.admit("b".into(), 1, 0)
        .expect("an empty queue waits for nothing");
}

/// Without a measured rate (at start), only the size limits apply.
#[test]
fn no_drain_rate_yet_means_no_budget_refusal() {
    let a = admission(AdmissionLimits {
        max_queued_items: 10_000,
        per_client_items: 0,
        ..limits()
    });
    let _held = a.admit("a".into(), 5_000, 0).expect("admitted");
    a.admit("b".into(), 10, 0)
        .expect("no rate: not refused on time");
}

/// Past half of `max_queued_items`, a client that already holds items is held to an equal
/// share with one share kept free: a lone flood stops at half the queue, a newcomer still
/// gets in, and the flood is admitted again once it holds less.
#[test]
fn past_half_the_queue_is_shared_between_clients() {
    let a = admission(AdmissionLimits {
        max_queued_items: 120,
        per_client_items: 0,
        ..limits()
    });
    // 50 in flight, then the flood queues 60 (half): all admitted while it is alone.
    let first = a.admit("flood".into(), 50, 0).expect("in flight");
    let _second = a.admit("flood".into(), 60, 0).expect("up to half queued");
    let refused = a
        .admit("flood".into(), 10, 0)
        .expect_err("past half, over its share");
    assert_eq!(refused.why, Refusal::QueueShare);
    assert_eq!(refused.why.kind(), RejectionKind::ClientLimit);
    let light = a
        .admit("light".into(), 10, 0)
        .expect("a client holding nothing gets in");
    assert_eq!(a.queued(), 70);
    drop(light);
    drop(first);
    // The flood now holds 60 of a 120 queue with 10 queued: under half, admitted again.
    a.admit("flood".into(), 10, 0).expect("room below half");
}
