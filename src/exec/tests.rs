//! Executor tests on an in-memory upstream with a paused clock: no sockets, exact timing.
// Plan items are `Result<SubRequest, Outcome>` by design: the Err side is an already-decided
// outcome, not an error travelling up a call stack, so its size does not matter here.
#![allow(clippy::result_large_err)]

use super::*;
use crate::item::{ItemRefusal, UpstreamResponse};
use bytes::Bytes;
use http::{HeaderMap, Method};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn client() -> ClientId {
    Arc::from("client")
}

fn share<'a>(permits: &'a Arc<Permits>, client: &'a ClientId) -> Share<'a> {
    Share { permits, client }
}

/// A fake upstream: each request's path is `/<delay ms>`; it answers 200 with the path as body
/// and records concurrency and which paths started.
#[derive(Default)]
struct Fake {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    started: Mutex<Vec<String>>,
}

impl Upstream for Fake {
    async fn send(&self, request: SubRequest, _until: Instant) -> Outcome {
        // Counted out also when the executor's item timeout drops this future.
        struct Leaving<'a>(&'a AtomicUsize);
        impl Drop for Leaving<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.started
            .lock()
            .expect("test mutex")
            .push(request.path.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _leaving = Leaving(&self.in_flight);
        self.peak.fetch_max(now, Ordering::SeqCst);
        let ms: u64 = request.path.trim_start_matches('/').parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Outcome::Response(UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from(request.path),
        })
    }
}

/// `run` without dependencies between the items.
async fn run_plain<U: Upstream, O: Observer>(
    limits: &Limits,
    global: Share<'_>,
    items: Vec<Result<SubRequest, Outcome>>,
    upstream: &Arc<U>,
    observer: &Arc<O>,
) -> Vec<Outcome> {
    run(
        limits,
        global,
        planned(items),
        &[],
        upstream,
        observer,
        &mut |_, _| {},
    )
    .await
    .outcomes
}

fn item(delay_ms: u64) -> Result<SubRequest, Outcome> {
    Ok(SubRequest {
        method: Method::GET,
        path: format!("/{delay_ms}"),
        headers: Vec::new(),
        body: None,
    })
}

fn limits(spawn_items: bool, concurrency: usize, item_ms: u64, batch_ms: u64) -> Limits {
    Limits {
        stop_on_failure: false,
        concurrency: std::num::NonZeroUsize::new(concurrency).expect("a test batch runs items"),
        item_timeout: Duration::from_millis(item_ms),
        deadline: Instant::now() + Duration::from_millis(batch_ms),
        max_reply_bytes: 1 << 20,
        reply_cost: crate::item::UpstreamResponse::raw_size,
        stop: None,
        spawn_items,
        streamed: None,
    }
}

fn body(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Response(r) => String::from_utf8_lossy(&r.body).into_owned(),
        other => format!("{other:?}"),
    }
}

/// Results come back in input order even when later items finish first.
async fn keeps_input_order_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let items = vec![item(30), item(10), item(20)];
    let out = run_plain(
        &limits(spawn, 3, 1000, 1000),
        share(&Permits::new(10), &client()),
        items,
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    let bodies: Vec<String> = out.iter().map(body).collect();
    assert_eq!(bodies, ["/30", "/10", "/20"]);
}

/// Per-batch concurrency bounds what is in flight, and items still overlap up to it.
async fn bounds_batch_concurrency_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let items = (0..10).map(|_| item(10)).collect();
    let started = Instant::now();
    run_plain(
        &limits(spawn, 3, 1000, 1000),
        share(&Permits::new(100), &client()),
        items,
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(fake.peak.load(Ordering::SeqCst), 3);
    // ceil(10 / 3) = 4 waves of 10 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(40));
}

/// The global permits caps items across simultaneous batches, and is full again afterwards.
async fn bounds_global_in_flight_across_batches_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let global = Permits::new(4);
    let me = client();
    let observer = Arc::new(NoObserver);
    let l = limits(spawn, 10, 1000, 1000);
    let batch = || {
        run_plain(
            &l,
            share(&global, &me),
            (0..10).map(|_| item(5)).collect(),
            &fake,
            &observer,
        )
    };
    let (a, b, c) = tokio::join!(batch(), batch(), batch());
    assert!([a, b, c].iter().all(|r| r.len() == 10));
    assert_eq!(fake.peak.load(Ordering::SeqCst), 4);
    assert_eq!(global.in_use(), 0);
}

/// An item over its timeout becomes `TimedOut`; the others are unaffected.
async fn item_timeout_is_per_item_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let out = run_plain(
        &limits(spawn, 2, 50, 1000),
        share(&Permits::new(10), &client()),
        vec![item(10), item(500)],
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(body(&out[0]), "/10");
    assert!(matches!(out[1].failure_kind(), Some(FailureKind::Timeout)));
}

/// At the deadline the reply is built at once: finished items kept, the rest
/// `DeadlineExceeded`, queued items never started, permits all returned.
async fn deadline_returns_partial_results_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let global = Permits::new(10);
    let me = client();
    let started = Instant::now();
    let items = vec![item(10), item(100), item(100), item(100)];
    let out = run_plain(
        &limits(spawn, 1, 1000, 150),
        share(&global, &me),
        items,
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    assert_eq!(body(&out[0]), "/10");
    assert_eq!(body(&out[1]), "/100");
    assert!(matches!(
        out[2].failure_kind(),
        Some(FailureKind::BatchDeadline)
    ));
    assert!(matches!(
        out[3].failure_kind(),
        Some(FailureKind::BatchDeadline)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.started.lock().expect("test mutex").len(),
        3,
        "item 4 must never start"
    );
    assert_eq!(global.in_use(), 0);
}

/// Dropping the batch (client gone) never starts its queued items; the two already sent keep
/// their permits until their exchanges end (so cancelled batches cannot push the upstream
/// past the global limit), then every permit is back.
async fn cancellation_stops_unstarted_items_and_frees_permits_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let global = Permits::new(8);
    let me = client();
    let items = (0..10).map(|_| item(100)).collect();
    let l = limits(spawn, 2, 1000, 10_000);
    let observer = Arc::new(NoObserver);
    let batch = run_plain(&l, share(&global, &me), items, &fake, &observer);
    let _ = tokio::time::timeout(Duration::from_millis(150), batch).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(global.in_use(), 2, "sent items keep their permits");
    assert_eq!(fake.started.lock().expect("test mutex").len(), 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(fake.started.lock().expect("test mutex").len(), 4);
    assert_eq!(global.in_use(), 0);
}

/// Refused items pass through untouched and are never sent.
async fn decided_items_are_not_sent_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let refused = Outcome::refused(ItemRefusal::MethodNotAllowed {
        message: String::new(),
    });
    let out = run_plain(
        &limits(spawn, 2, 1000, 1000),
        share(&Permits::new(10), &client()),
        vec![Err(refused), item(1)],
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert!(matches!(out[0].failure_kind(), Some(FailureKind::Refused(e)) if e.status() == 405));
    assert_eq!(fake.started.lock().expect("test mutex").as_slice(), ["/1"]);
}

/// The reply budget turns bodies past `max_reply_bytes` into `ReplyBudgetExceeded`.
async fn reply_budget_caps_total_bytes_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let mut l = limits(spawn, 1, 1000, 1000);
    l.max_reply_bytes = 5; // each body is 2-3 bytes ("/1", "/2", ...)
    let out = run_plain(
        &l,
        share(&Permits::new(10), &client()),
        vec![item(1), item(2), item(3)],
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(body(&out[0]), "/1");
    assert_eq!(body(&out[1]), "/2");
    assert!(matches!(
        out[2].failure_kind(),
        Some(FailureKind::ReplyBudgetExceeded { limit: 5 })
    ));
}

/// An item dropped for exceeding the budget is not charged: a later, smaller item still fits.
async fn dropped_items_do_not_use_up_the_budget_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let mut l = limits(spawn, 1, 1000, 10_000);
    l.max_reply_bytes = 5; // bodies are the paths: "/1" (2 bytes), "/1000" (5), "/2" (2)
    let out = run_plain(
        &l,
        share(&Permits::new(10), &client()),
        vec![item(1), item(1000), item(2)],
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(body(&out[0]), "/1");
    assert!(matches!(
        out[1].failure_kind(),
        Some(FailureKind::ReplyBudgetExceeded { limit: 5 })
    ));
    assert_eq!(body(&out[2]), "/2");
}

/// A stop signal (server shutting down) sends the reply at once, like the deadline: finished
/// items kept, the rest `DeadlineExceeded`, permits returned.
async fn stop_signal_answers_with_what_finished_in(spawn: bool) {
    let fake = Arc::new(Fake::default());
    let global = Permits::new(10);
    let me = client();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut l = limits(spawn, 1, 10_000, 60_000);
    l.stop = Some(stop_rx);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = stop.send(true);
    });
    let started = Instant::now();
    let out = run_plain(
        &l,
        share(&global, &me),
        vec![item(10), item(1000), item(1000)],
        &fake,
        &Arc::new(NoObserver),
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    assert_eq!(body(&out[0]), "/10");
    assert!(matches!(
        out[1].failure_kind(),
        Some(FailureKind::BatchDeadline)
    ));
    assert!(matches!(
        out[2].failure_kind(),
        Some(FailureKind::BatchDeadline)
    ));
    // The item already sent runs to its end with its permit; the queued one never started.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(global.in_use(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(global.in_use(), 0);
    assert_eq!(fake.started.lock().expect("test mutex").len(), 2);
}

/// Every scenario above, run both ways: items polled inside the batch's task (the default,
/// without work stealing) and one task per item (with work stealing).
macro_rules! both_ways {
    ($($name:ident => $inner:ident),* $(,)?) => {
        mod in_task {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$inner(false).await;
                }
            )*
        }
        mod spawned {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$inner(true).await;
                }
            )*
        }
    };
}

both_ways! {
    keeps_input_order => keeps_input_order_in,
    bounds_batch_concurrency => bounds_batch_concurrency_in,
    bounds_global_in_flight_across_batches => bounds_global_in_flight_across_batches_in,
    item_timeout_is_per_item => item_timeout_is_per_item_in,
    deadline_returns_partial_results => deadline_returns_partial_results_in,
    cancellation_stops_unstarted_items_and_frees_permits => cancellation_stops_unstarted_items_and_frees_permits_in,
    decided_items_are_not_sent => decided_items_are_not_sent_in,
    reply_budget_caps_total_bytes => reply_budget_caps_total_bytes_in,
    dropped_items_do_not_use_up_the_budget => dropped_items_do_not_use_up_the_budget_in,
    stop_signal_answers_with_what_finished => stop_signal_answers_with_what_finished_in,
}

/// A fake whose `/fail<ms>` paths answer 500 after the delay; everything else as [`Fake`].
#[derive(Default)]
struct Failing(Fake);

impl Upstream for Failing {
    async fn send(&self, request: SubRequest, until: Instant) -> Outcome {
        let fails = request.path.starts_with("/fail");
        let request = SubRequest {
            path: request.path.replace("/fail", "/"),
            ..request
        };
        match self.0.send(request, until).await {
            Outcome::Response(mut r) if fails => {
                r.status = 500;
                Outcome::Response(r)
            }
            other => other,
        }
    }
}

fn path_item(path: &str) -> Result<SubRequest, Outcome> {
    Ok(SubRequest {
        method: Method::GET,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    })
}

/// Dependent items start only after what they depend on finished, independent items run
/// alongside, and a failed dependency answers 424 at once, transitively, without sending.
async fn dependencies_order_and_block_in(spawn: bool) {
    let fake = Arc::new(Failing::default());
    // 0 (30 ms) <- 1 (10 ms); 2 (fails after 10 ms, sent as /10) <- 3 <- 4; 5 independent (20 ms).
    let items = vec![
        path_item("/30"),
        path_item("/10"),
        path_item("/fail10"),
        path_item("/5"),
        path_item("/5"),
        path_item("/20"),
    ];
    let after = [vec![], vec![0], vec![], vec![2], vec![3], vec![]];
    let started = Instant::now();
    let out = run(
        &limits(spawn, 4, 1000, 1000),
        share(&Permits::new(10), &client()),
        planned(items),
        &after,
        &fake,
        &Arc::new(NoObserver),
        &mut |_, _| {},
    )
    .await
    .outcomes;
    // 0 then 1: 40 ms, while 2 and 5 ran beside them.
    assert_eq!(started.elapsed(), Duration::from_millis(40));
    assert_eq!(out[1].status(), 200);
    assert_eq!(out[2].status(), 500);
    for (index, dependency) in [(3, 2), (4, 3)] {
        assert!(
            matches!(&out[index], Outcome::Failed(f) if f.kind == FailureKind::DependencyFailed { dependency }),
            "{:?}",
            out[index]
        );
    }
    let started = fake.0.started.lock().expect("test mutex").clone();
    assert_eq!(started, ["/30", "/10", "/20", "/10"], "3 and 4 never sent");
    assert_eq!(fake.0.peak.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn dependencies_order_and_block_polled() {
    dependencies_order_and_block_in(false).await;
}

#[tokio::test(start_paused = true)]
async fn dependencies_order_and_block_spawned() {
    dependencies_order_and_block_in(true).await;
}

/// A dependency chain longer than the deadline: what did not start answers BatchDeadline.
#[tokio::test(start_paused = true)]
async fn dependencies_keep_the_batch_deadline() {
    let fake = Arc::new(Fake::default());
    let items = vec![item(30), item(30), item(30)];
    let after = [vec![], vec![0], vec![1]];
    let started = Instant::now();
    let out = run(
        &limits(false, 3, 1000, 50),
        share(&Permits::new(10), &client()),
        planned(items),
        &after,
        &fake,
        &Arc::new(NoObserver),
        &mut |_, _| {},
    )
    .await;
    assert_eq!(out.elapsed, [Some(Duration::from_millis(30)), None, None]);
    let out = out.outcomes;
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(out[0].status(), 200);
    for late in &out[1..] {
        assert!(
            matches!(late, Outcome::Failed(f) if f.kind == FailureKind::BatchDeadline),
            "{late:?}"
        );
    }
    assert_eq!(fake.started.lock().expect("test mutex").len(), 2);
}

/// Records what the executor reports of its items' resources.
#[derive(Default)]
struct Resources {
    started: AtomicUsize,
    ended: AtomicUsize,
    kept: AtomicUsize,
}

impl Observer for Resources {
    fn started(&self, _waited: Duration) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn ended(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
    fn kept(&self, bytes: usize) {
        self.kept.fetch_add(bytes, Ordering::SeqCst);
    }
}

/// Only answers that stay in the reply are held (one over the reply budget is not), refused
/// items never start, and every started item ends, also one still running at the deadline.
#[tokio::test(start_paused = true)]
async fn the_observer_sees_starts_ends_and_only_kept_answers() {
    let fake = Arc::new(Fake::default());
    let refused = Outcome::refused(ItemRefusal::MethodNotAllowed {
        message: String::new(),
    });
    // Each answer's body is its path: "/10" and "/20" are 3 bytes, "/500" is 4.
    let items = vec![item(10), Err(refused), item(20), item(500)];
    let mut l = limits(false, 4, 1000, 100);
    let size = |path: &str| {
        UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from(path.to_string()),
        }
        .raw_size()
    };
    l.max_reply_bytes = size("/10") + 1;
    let observer = Arc::new(Resources::default());
    let mut settled = Vec::new();
    let out = run(
        &l,
        share(&Permits::new(10), &client()),
        planned(items),
        &[],
        &fake,
        &observer,
        &mut |index, outcome| settled.push((index, outcome.status())),
    )
    .await;
    // Settled once each, as they became final: the refused item first, the budget's verdict
    // on "/20", and the item the deadline cut off last.
    assert_eq!(settled, [(1, 405), (0, 200), (2, 502), (3, 504)]);
    assert_eq!(observer.started.load(Ordering::SeqCst), 3);
    assert_eq!(observer.kept.load(Ordering::SeqCst), size("/10"));
    assert!(matches!(
        out.outcomes[2].failure_kind(),
        Some(FailureKind::ReplyBudgetExceeded { .. })
    ));
    assert_eq!(out.elapsed[1], None, "refused: never ran");
    assert_eq!(out.elapsed[3], None, "cut off by the deadline");
    // The item cut off at the deadline runs on in the background and then ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(observer.ended.load(Ordering::SeqCst), 3);
}

/// Items as the executor takes them: each ready to send, or decided.
fn planned(items: Vec<Result<SubRequest, Outcome>>) -> Vec<Result<Planned, Outcome>> {
    items
        .into_iter()
        .map(|item| item.map(Planned::Ready))
        .collect()
}
