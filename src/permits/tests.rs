use super::*;
use std::time::Duration;

fn client(name: &str) -> ClientId {
    Arc::from(name)
}

/// Polls `future` once: whether it is ready now.
async fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    tokio::time::timeout(Duration::from_millis(20), future)
        .await
        .ok()
}

#[tokio::test]
async fn free_permits_are_granted_at_once_and_come_back_on_drop() {
    let permits = Permits::new(2);
    let a = client("a");
    let first = permits.acquire(&a).await;
    let second = permits.acquire(&a).await;
    assert!(first.is_some() && second.is_some());
    assert_eq!(permits.in_use(), 2);
    assert!(
        ready_now(permits.acquire(&a)).await.is_none(),
        "a third waits"
    );
    assert_eq!(permits.waiting(), 0, "the timed-out wait gave its place up");
    drop(first);
    assert_eq!(permits.in_use(), 1);
    drop(second);
    assert_eq!(permits.in_use(), 0);
}

/// A flood of one client's waiters does not keep another client's waiter behind all of it:
/// grants alternate between waiting clients.
#[tokio::test]
async fn freed_permits_go_round_robin_across_clients() {
    let permits = Permits::new(1);
    let held = permits.acquire(&client("flood")).await;
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let queue = [
        ("flood", 0),
        ("flood", 1),
        ("flood", 2),
        ("light", 0),
        ("light", 1),
    ];
    for (who, n) in queue {
        let permits = permits.clone();
        let id = client(who);
        let order_tx = order_tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire(&id).await;
            order_tx.send(format!("{who}{n}")).ok();
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(permit);
        }));
        // Queue them in this order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(permits.waiting(), 5);
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    let mut granted = Vec::new();
    while let Ok(name) = order.try_recv() {
        granted.push(name);
    }
    assert_eq!(granted, ["flood0", "light0", "flood1", "light1", "flood2"]);
    assert_eq!((permits.in_use(), permits.waiting()), (0, 0));
}

/// A waiter cancelled while queued leaves no trace, and the next one still gets the permit.
#[tokio::test]
async fn a_cancelled_waiter_gives_its_place_up() {
    let permits = Permits::new(1);
    let (a, b) = (client("a"), client("b"));
    let held = permits.acquire(&a).await;
    let cancelled = tokio::spawn({
        let permits = permits.clone();
        let b = b.clone();
        async move { permits.acquire(&b).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(permits.waiting(), 1);
    cancelled.abort();
    let _ = cancelled.await;
    assert_eq!(permits.waiting(), 0);
    let next = tokio::spawn({
        let permits = permits.clone();
        async move { permits.acquire(&a).await.is_some() }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held);
    assert!(next.await.unwrap());
    assert_eq!(permits.in_use(), 0);
}

/// A grant that reaches a waiter which is dropped before it runs is handed back, not lost.
#[tokio::test]
async fn a_grant_to_a_dropped_waiter_comes_back() {
    let permits = Permits::new(1);
    let a = client("a");
    let held = permits.acquire(&a).await;
    let mut waiting = Box::pin(permits.acquire(&a));
    assert!(ready_now(&mut waiting).await.is_none());
    drop(held);
    // Granted under the lock, but never polled since: dropping it must give the permit back.
    assert_eq!(permits.in_use(), 1);
    drop(waiting);
    assert_eq!(permits.in_use(), 0);
    assert!(permits.acquire(&a).await.is_some());
}

#[tokio::test]
async fn resizing_grants_more_at_once_and_fewer_as_permits_return() {
    let permits = Permits::new(1);
    let a = client("a");
    let first = permits.acquire(&a).await;
    let waiter = tokio::spawn({
        let permits = permits.clone();
        let a = a.clone();
        async move { permits.acquire(&a).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    permits.resize(2);
    let second = waiter.await.unwrap();
    assert_eq!(permits.in_use(), 2);
    permits.resize(1);
    drop(first);
    assert_eq!(permits.in_use(), 1, "no permit is revoked");
    assert!(
        ready_now(permits.acquire(&a)).await.is_none(),
        "the lower total holds"
    );
    drop(second);
    assert!(permits.acquire(&a).await.is_some());
}
