use super::*;
use crate::config::coalesce::CoalesceConfig;
use bytes::Bytes;
use http::Method;

/// A memory budget for the caches under test.
fn budget() -> Arc<Admission> {
    Arc::new(Admission::new(
        crate::config::AdmissionLimits {
            max_queued_items: 100,
            queue_budget: Duration::from_secs(5),
            max_held_bytes: 1 << 30,
            per_client_items: 100,
            client_key: crate::config::ClientKey::Ip,
        },
        16,
    ))
}

fn cache(ttl: Option<Duration>, max_bytes: u64) -> ItemCache {
    cache_in(ttl, max_bytes, budget())
}

fn cache_in(ttl: Option<Duration>, max_bytes: u64, budget: Arc<Admission>) -> ItemCache {
    let config = CacheConfig {
        key: Arc::new(CoalesceConfig {
            methods: vec![Method::GET],
            rpc_methods: Vec::new(),
            public: false,
            key_headers: Vec::new(),
        }),
        max_bytes,
        ttl,
        ttl_by_method: Default::default(),
    };
    ItemCache::new(&config, budget, || {})
}

fn get(headers: &[(&'static str, &'static str)]) -> SubRequest {
    SubRequest {
        method: Method::GET,
        path: "/me".into(),
        headers: headers
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect(),
        body: None,
    }
}

fn answer(status: u16, headers: &[(&'static str, &'static str)], body: usize) -> Outcome {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    Outcome::Response(UpstreamResponse {
        status,
        headers: map,
        body: Bytes::from(vec![b'x'; body]),
    })
}

fn kept(cache: &ItemCache, key: Key, request: &SubRequest, outcome: &Outcome) -> bool {
    cache.store(key, "api\0h\0/me", request, &[], outcome, None);
    matches!(cache.lookup(&key, request, &[]), Lookup::Hit(_))
}

#[test]
fn freshness_comes_from_the_answer_then_the_route() {
    let c = cache(None, 1 << 20);
    let request = get(&[]);
    assert!(kept(
        &c,
        [1; 32],
        &request,
        &answer(200, &[("cache-control", "max-age=60")], 10)
    ));
    assert!(kept(
        &c,
        [2; 32],
        &request,
        &answer(404, &[("cache-control", "public, s-maxage=5")], 10)
    ));
    assert!(
        !kept(&c, [3; 32], &request, &answer(200, &[], 10)),
        "no freshness, no ttl"
    );
    assert!(!kept(
        &c,
        [4; 32],
        &request,
        &answer(500, &[("cache-control", "max-age=60")], 10)
    ));
    for never in ["no-store", "no-cache", "private, max-age=60", "max-age=0"] {
        let outcome = answer(200, &[("cache-control", never)], 10);
        assert!(!kept(&c, [5; 32], &request, &outcome), "{never}");
    }
    let cookie = answer(
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        10,
    );
    assert!(
        !kept(&c, [6; 32], &request, &cookie),
        "a cookie is per caller"
    );
    let expires = answer(
        200,
        &[
            ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
            ("expires", "Mon, 07 Dec 2026 10:01:00 GMT"),
        ],
        10,
    );
    assert!(kept(&c, [7; 32], &request, &expires));
    let bad_expires = answer(200, &[("expires", "0")], 10);
    assert!(
        !kept(&c, [8; 32], &request, &bad_expires),
        "an unreadable Expires is expired"
    );
    // The route's (or a JSON-RPC method's) ttl, for answers that say nothing.
    let ttl = Some(Duration::from_secs(30));
    c.store([9; 32], "t", &request, &[], &answer(200, &[], 10), ttl);
    assert!(matches!(c.lookup(&[9; 32], &request, &[]), Lookup::Hit(_)));
    let no_store = answer(200, &[("cache-control", "no-store")], 10);
    c.store([10; 32], "t", &request, &[], &no_store, ttl);
    assert!(matches!(c.lookup(&[10; 32], &request, &[]), Lookup::Miss));
}

#[test]
fn hits_carry_age_and_the_item_can_ask_for_the_origin() {
    let c = cache(None, 1 << 20);
    let request = get(&[]);
    c.store(
        [1; 32],
        "t",
        &request,
        &[],
        &answer(200, &[("cache-control", "max-age=60")], 3),
        None,
    );
    let Lookup::Hit(Outcome::Response(hit)) = c.lookup(&[1; 32], &request, &[]) else {
        panic!("a hit");
    };
    assert_eq!(hit.headers.get(AGE).unwrap(), "0");
    assert!(matches!(
        c.lookup(&[1; 32], &get(&[("cache-control", "no-cache")]), &[]),
        Lookup::Bypass
    ));
}

#[test]
fn vary_keeps_the_varying_values() {
    let c = cache(None, 1 << 20);
    let english = get(&[("accept-language", "en")]);
    let outcome = answer(
        200,
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        3,
    );
    c.store([1; 32], "t", &english, &[], &outcome, None);
    assert!(matches!(c.lookup(&[1; 32], &english, &[]), Lookup::Hit(_)));
    let german = get(&[("accept-language", "de")]);
    assert!(matches!(c.lookup(&[1; 32], &german, &[]), Lookup::Miss));
    let star = answer(200, &[("cache-control", "max-age=60"), ("vary", "*")], 3);
    assert!(!kept(&c, [2; 32], &english, &star));
}

#[test]
fn invalidation_drops_what_is_kept_for_a_path() {
    let c = cache(None, 1 << 20);
    let request = get(&[]);
    let outcome = answer(200, &[("cache-control", "max-age=60")], 3);
    c.store([1; 32], "api\0h\0/me", &request, &[], &outcome, None);
    c.store([2; 32], "api\0h\0/other", &request, &[], &outcome, None);
    c.invalidate("api\0h\0/me");
    assert!(matches!(c.lookup(&[1; 32], &request, &[]), Lookup::Miss));
    assert!(matches!(c.lookup(&[2; 32], &request, &[]), Lookup::Hit(_)));
}

#[test]
fn the_byte_bound_holds_under_a_flood_of_keys() {
    let budget = budget();
    let c = cache_in(None, 64 * 1024, budget.clone());
    let request = get(&[]);
    let outcome = answer(200, &[("cache-control", "max-age=60")], 1000);
    for i in 0..2000u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        c.store(key, "t", &request, &[], &outcome, None);
    }
    c.entries.run_pending_tasks();
    assert!(c.entries.weighted_size() <= 64 * 1024);
    assert_eq!(
        c.bytes(),
        c.entries.weighted_size(),
        "the gauge follows every removal"
    );
    assert!(c.bytes() > 0);
}

/// On a public route an answer to a request with credentials is kept only when it says it may
/// be shared (RFC 9111 section 3.5); an upstream cache's `Age` uses up freshness.
#[test]
fn credentials_and_upstream_age_are_respected() {
    let config = CacheConfig {
        key: Arc::new(CoalesceConfig {
            methods: vec![Method::GET],
            rpc_methods: Vec::new(),
            public: true,
            key_headers: Vec::new(),
        }),
        max_bytes: 1 << 20,
        ttl: None,
        ttl_by_method: Default::default(),
    };
    let public = ItemCache::new(&config, budget(), || {});
    let signed = get(&[("authorization", "Bearer a")]);
    let private_by_default = answer(200, &[("cache-control", "max-age=60")], 3);
    assert!(!kept(&public, [1; 32], &signed, &private_by_default));
    let shared = answer(200, &[("cache-control", "public, max-age=60")], 3);
    assert!(kept(&public, [2; 32], &signed, &shared));
    let forwarded = [(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer a"),
    )];
    public.store(
        [3; 32],
        "t",
        &get(&[]),
        &forwarded,
        &private_by_default,
        None,
    );
    assert!(matches!(
        public.lookup(&[3; 32], &get(&[]), &forwarded),
        Lookup::Miss
    ));

    let c = cache(None, 1 << 20);
    let used_up = answer(200, &[("cache-control", "max-age=60"), ("age", "60")], 3);
    assert!(!kept(&c, [4; 32], &get(&[]), &used_up));
    let half = answer(200, &[("cache-control", "max-age=60"), ("age", "30")], 3);
    assert!(kept(&c, [5; 32], &get(&[]), &half));
}

/// Found by the `cache` fuzz target: a `Cache-Control` value with a byte that is not ASCII
/// still says `no-store` (it was read as no directives at all, and kept).
#[test]
fn a_stray_byte_does_not_hide_no_store() {
    let c = cache(None, 1 << 20);
    let mut headers = HeaderMap::new();
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_bytes(b"public, s-maxage=1\xda, no-store").unwrap(),
    );
    let outcome = Outcome::Response(UpstreamResponse {
        status: 200,
        headers,
        body: Bytes::from_static(b"{}"),
    });
    let ttl = Some(Duration::from_secs(60));
    c.store([1; 32], "t", &get(&[]), &[], &outcome, ttl);
    assert!(matches!(c.lookup(&[1; 32], &get(&[]), &[]), Lookup::Miss));
}
