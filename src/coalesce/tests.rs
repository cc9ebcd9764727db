use super::*;
use crate::item::UpstreamResponse;
use bytes::Bytes;
use http::{HeaderMap, Method};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn config(public: bool) -> Arc<CoalesceConfig> {
    Arc::new(CoalesceConfig {
        methods: vec![Method::GET, Method::HEAD],
        rpc_methods: Vec::new(),
        public,
        key_headers: vec![HeaderName::from_static("accept-language")],
    })
}

fn scope(public: bool, token: &str, client: &str) -> Keys {
    let forwarded = [
        (
            http::header::AUTHORIZATION,
            HeaderValue::from_str(token).unwrap(),
        ),
        (
            HeaderName::from_static("accept-language"),
            HeaderValue::from_static("en"),
        ),
    ];
    Keys::new(
        config(public),
        None,
        "api",
        &HeaderValue::from_static("api.test"),
        &forwarded,
        client,
        1 << 20,
    )
}

fn get(path: &str) -> SubRequest {
    SubRequest {
        method: Method::GET,
        path: path.into(),
        headers: Vec::new(),
        body: None,
    }
}

#[test]
fn keys_are_scoped_to_the_caller_unless_public() {
    let a = scope(false, "Bearer a", "10.0.0.1");
    let b = scope(false, "Bearer b", "10.0.0.1");
    let c = scope(false, "Bearer a", "10.0.0.2");
    let request = get("/me?b=2&a=1");
    assert_eq!(a.key(&request), a.key(&get("/me?a=1&b=2")), "query order");
    assert_ne!(a.key(&request), a.key(&get("/me?a=1&a=2&b=2")));
    assert_ne!(a.key(&get("/me?a=1&a=2")), a.key(&get("/me?a=2&a=1")));
    assert_ne!(a.key(&request), b.key(&request), "other credentials");
    assert_ne!(a.key(&request), c.key(&request), "other client");
    let public_a = scope(true, "Bearer a", "10.0.0.1");
    let public_b = scope(true, "Bearer b", "10.0.0.2");
    assert_eq!(public_a.key(&request), public_b.key(&request));
    let mut with_header = get("/me?a=1&b=2");
    with_header
        .headers
        .push((http::header::ACCEPT, HeaderValue::from_static("text/plain")));
    assert_ne!(
        a.key(&request),
        a.key(&with_header),
        "the item's own headers"
    );
    let mut with_body = get("/me?a=1&b=2");
    with_body.body = Some(Bytes::from_static(b"{}"));
    assert_ne!(a.key(&request), a.key(&with_body), "the body");
    assert!(a.applies(&request));
    let mut post = get("/me");
    post.method = Method::POST;
    assert!(!a.applies(&post));
}

fn answer(cookie: bool) -> Outcome {
    let mut headers = HeaderMap::new();
    if cookie {
        headers.insert(http::header::SET_COOKIE, HeaderValue::from_static("s=1"));
    }
    Outcome::Response(UpstreamResponse {
        status: 200,
        headers,
        body: Bytes::from_static(b"{}"),
    })
}

/// `n` identical items at once, each answered after `delay` by a send that counts its calls.
async fn together(n: usize, cookie: bool, deadline: Duration) -> (usize, Vec<Source>) {
    let coalescer = Arc::new(Coalescer::default());
    let sent = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + deadline;
    let items = (0..n).map(|_| {
        let (coalescer, sent) = (coalescer.clone(), sent.clone());
        async move {
            let send = || {
                let sent = sent.clone();
                async move {
                    sent.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    answer(cookie)
                }
            };
            coalescer.send([7; 32], false, until, send).await.1
        }
    });
    let sources = futures_util::future::join_all(items).await;
    assert!(
        coalescer.flights.lock().unwrap().is_empty(),
        "no key left behind"
    );
    (sent.load(Ordering::SeqCst), sources)
}

#[tokio::test]
async fn identical_items_in_flight_are_sent_once() {
    let (sent, sources) = together(20, false, Duration::from_secs(5)).await;
    assert_eq!(sent, 1);
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Coalesced).count(),
        19
    );
}

#[tokio::test]
async fn an_answer_that_sets_a_cookie_is_not_handed_on() {
    let (sent, sources) = together(5, true, Duration::from_secs(5)).await;
    assert_eq!(sent, 5, "every follower asked for its own");
    assert!(sources.iter().all(|s| *s == Source::Sent));
}

#[tokio::test]
async fn a_follower_that_gives_up_leaves_the_leader_alone() {
    let coalescer = Arc::new(Coalescer::default());
    let finished = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (coalescer, finished) = (coalescer.clone(), finished.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(5);
            let send = || {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    answer(false)
                }
            };
            coalescer.send([1; 32], false, until, send).await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = Instant::now() + Duration::from_millis(30);
    let (outcome, source) = coalescer
        .send([1; 32], false, until, || async {
            unreachable!("a follower")
        })
        .await;
    assert_eq!(source, Source::Coalesced);
    assert!(matches!(outcome, Outcome::Failed(f) if f.kind == FailureKind::Timeout));
    let (outcome, source) = leader.await.expect("the leader");
    assert_eq!((outcome.status(), source), (200, Source::Sent));
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

/// A send that counts its starts, answers after `delay`, and counts the requests dropped
/// before they answered.
fn counted(
    delay: Duration,
    started: &Arc<AtomicUsize>,
    dropped: &Arc<AtomicUsize>,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> {
    let (started, dropped) = (started.clone(), dropped.clone());
    move || {
        started.fetch_add(1, Ordering::SeqCst);
        struct Unanswered(Arc<AtomicUsize>, bool);
        impl Drop for Unanswered {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let guard = Unanswered(dropped.clone(), false);
        Box::pin(async move {
            let mut guard = guard;
            tokio::time::sleep(delay).await;
            guard.1 = true;
            answer(false)
        })
    }
}

#[tokio::test]
async fn a_leader_that_leaves_does_not_cancel_the_request_others_wait_for() {
    let coalescer = Arc::new(Coalescer::default());
    let (started, dropped) = (Arc::default(), Arc::default());
    let until = Instant::now() + Duration::from_secs(5);
    let send = counted(Duration::from_millis(150), &started, &dropped);
    let leader = {
        let (coalescer, send) = (coalescer.clone(), send);
        tokio::spawn(async move { coalescer.send([2; 32], false, until, send).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = {
        let coalescer = coalescer.clone();
        let send = counted(Duration::from_millis(150), &started, &dropped);
        tokio::spawn(async move { coalescer.send([2; 32], false, until, send).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    let (outcome, source) = follower.await.expect("the follower");
    assert_eq!((outcome.status(), source), (200, Source::Coalesced));
    assert_eq!(started.load(Ordering::SeqCst), 1, "one request");
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "not cancelled");
}

#[tokio::test]
async fn a_request_everyone_left_is_cancelled() {
    let coalescer = Arc::new(Coalescer::default());
    let (started, dropped) = (Arc::default(), Arc::default());
    let until = Instant::now() + Duration::from_secs(5);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let coalescer = coalescer.clone();
            let send = counted(Duration::from_secs(5), &started, &dropped);
            tokio::spawn(async move { coalescer.send([3; 32], false, until, send).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    waiters.iter().for_each(|w| w.abort());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the request was dropped");
    assert!(coalescer.flights.lock().unwrap().is_empty(), "its key too");
}

#[test]
fn across_callers_private_and_varying_answers_are_not_shared() {
    let private = {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private"),
        );
        Outcome::Response(UpstreamResponse {
            status: 200,
            headers,
            body: Bytes::new(),
        })
    };
    assert!(
        shareable(&private, false),
        "one caller's items may share it"
    );
    assert!(!shareable(&private, true));
    let varying = {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::VARY,
            HeaderValue::from_static("accept-language"),
        );
        Outcome::Response(UpstreamResponse {
            status: 200,
            headers,
            body: Bytes::new(),
        })
    };
    assert!(!shareable(&varying, true));
    assert!(!shareable(&answer(true), false), "a cookie never");
}

#[test]
fn query_pairs_never_pass_for_headers() {
    let keys = scope(false, "Bearer a", "10.0.0.1");
    let mut with_header = get("/x");
    with_header.headers.push((
        HeaderName::from_static("x-foo"),
        HeaderValue::from_static("v"),
    ));
    assert_ne!(keys.key(&with_header), keys.key(&get("/x?x-foo&v")));
}
