//! Rate limits per client and route (`[routes.rate_limit]`), charged per item: a batch fits
//! whole or is refused whole with 429 in the route's format, `Retry-After` and the IETF
//! `RateLimit` headers. With `store = "redis"` (a real `redis-server`) two batchgate processes
//! share one count; Redis killed, restarted or stalled costs at most `redis_timeout` and the
//! route follows `on_store_error`; a flood of client keys leaves only expiring, bounded keys.

use crate::common;

use common::batch::{assert_rejected, batch, item, BATCH_PATH};
use common::client::{self, Response};
use common::config::GateConfig;
use common::gate::Gate;
use common::redis::Redis;
use common::upstream::Upstream;
use std::time::{Duration, Instant};

/// POSTs an envelope batch of `n` items as client `who`.
async fn send(addr: std::net::SocketAddr, path: &str, n: usize, who: &str) -> Response {
    let items = (0..n)
        .map(|i| item(&format!("i{i}"), "GET", &format!("/file/get?i={i}")))
        .collect();
    client::request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json"), ("X-Client", who)],
        batch(items).as_bytes(),
    )
    .await
}

/// A route limited to `limit` (TOML lines of `[routes.rate_limit]`), clients told apart by
/// `X-Client`, and `[rate_limits]` as given.
async fn limited_gate(upstream: &Upstream, limit: &str, store: &str) -> Gate {
    let text = GateConfig::new(upstream.addr)
        .route("client_key = \"header:X-Client\"")
        .route(&format!("[routes.rate_limit]\n{limit}"))
        .toml();
    common::gate::start(&format!("{text}\n[rate_limits]\n{store}\n")).await
}

/// Items are charged one by one, a batch fits whole or not at all, clients count apart, and
/// every answer says where the client stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_charged_per_client_and_a_batch_fits_whole_or_is_refused() {
    let upstream = Upstream::echo().await;
    let gate = limited_gate(&upstream, "items_per_second = 0.01\nburst = 5", "").await;
    let first = send(gate.addr, BATCH_PATH, 3, "a").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"items\";q=5;w=500")
    );
    assert!(
        first
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"items\";r=2;t=")),
        "{:?}",
        first.header("ratelimit")
    );
    let over = send(gate.addr, BATCH_PATH, 3, "a").await;
    assert_rejected(&over, 429, "TooManyRequests.RateLimit");
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=100).contains(&retry),
        "one item drains in 100 s: {retry}"
    );
    assert!(over.header("ratelimit").is_some_and(|v| v.contains("r=2")));
    assert_eq!(
        upstream.count(),
        3,
        "nothing of the refused batch went upstream"
    );
    assert_eq!(send(gate.addr, BATCH_PATH, 2, "a").await.status, 200);
    assert_eq!(
        send(gate.addr, BATCH_PATH, 5, "b").await.status,
        200,
        "b counts apart"
    );
    let huge = send(gate.addr, BATCH_PATH, 6, "c").await;
    assert_rejected(&huge, 429, "TooManyRequests.RateLimitBurst");
    assert_eq!(huge.header("retry-after"), None, "no wait makes it fit");
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value("batchgate_rate_limited_items_total", &[("route", "pds")]),
        9.0
    );
    assert_eq!(
        metrics.value(
            "batchgate_rejections_total",
            &[("route", "pds"), ("reason", "rate_limited")]
        ),
        2.0
    );
}

/// Two batchgate processes sharing one Redis admit the limit once between them, not once
/// each; the count lives in one expiring key per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_redis_admit_the_limit_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let store = format!("redis_url = \"{}\"", redis.url());
    let limit = "items_per_second = 0.01\nburst = 20\nstore = \"redis\"";
    let a = limited_gate(&upstream, limit, &store).await;
    let b = limited_gate(&upstream, limit, &store).await;
    let mut admitted = 0;
    for round in 0..20 {
        for gate in [&a, &b] {
            let resp = send(gate.addr, BATCH_PATH, 1, "shared").await;
            match resp.status {
                200 => admitted += 1,
                429 => assert_rejected(&resp, 429, "TooManyRequests.RateLimit"),
                other => panic!("round {round}: {other}"),
            }
        }
    }
    assert_eq!(admitted, 20, "the limit once across both replicas");
    let keys: Vec<String> = redis.query(&["KEYS", "*"]).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis.query(&["PTTL", &keys[0]]).await;
    assert!(ttl > 0, "the key expires: {ttl}");
}

/// With a lease, each process takes items from Redis five at a time and spends them itself:
/// the two still admit the limit once between them, with a fraction of the calls to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_items_keep_the_shared_limit_with_fewer_calls_to_redis() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let store = format!("redis_url = \"{}\"", redis.url());
    let limit = "items_per_second = 0.01\nburst = 20\nstore = \"redis\"\nlease = 5";
    let a = limited_gate(&upstream, limit, &store).await;
    let b = limited_gate(&upstream, limit, &store).await;
    let mut admitted = 0;
    for _ in 0..15 {
        for gate in [&a, &b] {
            match send(gate.addr, BATCH_PATH, 1, "shared").await.status {
                200 => admitted += 1,
                429 => {}
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!(admitted, 20, "the limit once across both replicas");
    assert_eq!(upstream.count(), 20);
    let stats: String = redis.query(&["INFO", "commandstats"]).await;
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // Four leases of five, and one refused call per refused batch (10).
    assert!(
        calls <= 16,
        "{calls} calls to Redis for 30 batches\n{stats}"
    );
}

/// A batch whose every item the dialect refuses costs nothing: it is answered with its item
/// errors, not refused by the limit, also on a shared (Redis) limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_refused_items_costs_nothing() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let store = format!("redis_url = \"{}\"", redis.url());
    let limit = "items_per_second = 0.01\nburst = 1\nstore = \"redis\"";
    let gate = limited_gate(&upstream, limit, &store).await;
    let refused = batch(vec![item("x", "GET", "//evil.example/x")]);
    for _ in 0..3 {
        let resp = client::request(
            gate.addr,
            "POST",
            BATCH_PATH,
            &[("Content-Type", "application/json"), ("X-Client", "z")],
            refused.as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(
        send(gate.addr, BATCH_PATH, 1, "z").await.status,
        200,
        "the burst is untouched"
    );
    assert_eq!(upstream.count(), 1);
}

/// Redis killed: a `fail_closed` route answers 503, a `local` one counts in the process
/// against its fraction; the degraded gauge and the error counter say so; Redis back, both
/// recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_follows_on_store_error_and_recovers() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let text = GateConfig::new(upstream.addr)
        .route("client_key = \"header:X-Client\"")
        .route("[routes.rate_limit]\nitems_per_second = 0.01\nburst = 10\nstore = \"redis\"\non_store_error = \"local\"\nlocal_fraction = 0.5")
        .toml()
        + "\n[[routes]]\nname = \"closed\"\npath = \"/v2/closed\"\ndialect = \"envelope\"\n\
           upstream = \"api\"\nbase_path = \"/v2\"\nclient_key = \"header:X-Client\"\n\
           [routes.rate_limit]\nitems_per_second = 100\nburst = 100\nstore = \"redis\"\n\
           on_store_error = \"fail_closed\"\n"
        + &format!(
            "\n[rate_limits]\nredis_url = \"{}\"\nredis_timeout = \"100ms\"\nredis_retry_interval = \"200ms\"\n",
            redis.url()
        );
    let gate = common::gate::start(&text).await;
    assert_eq!(send(gate.addr, "/v2/closed", 1, "x").await.status, 200);
    assert_eq!(send(gate.addr, BATCH_PATH, 1, "x").await.status, 200);

    redis.kill();
    let closed = send(gate.addr, "/v2/closed", 1, "x").await;
    assert_rejected(&closed, 503, "ServiceUnavailable.RateLimit");
    // Locally at half the limit: a burst of 5, fresh in this process.
    let local: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(send(gate.addr, BATCH_PATH, 1, "y").await.status);
        }
        statuses
    };
    assert_eq!(local, [200, 200, 200, 200, 200, 429, 429]);
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(metrics.value("batchgate_rate_limit_degraded", &[]), 1.0);
    assert!(
        ["error", "timeout"]
            .iter()
            .filter_map(|reason| metrics.get(
                "batchgate_rate_limit_store_errors_total",
                &[("reason", reason)]
            ))
            .sum::<f64>()
            >= 1.0
    );

    redis.restart().await;
    let addr = gate.addr;
    common::eventually_async(
        Duration::from_secs(10),
        "the closed route serves again",
        || async move { send(addr, "/v2/closed", 1, "x").await.status == 200 },
    )
    .await;
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(metrics.value("batchgate_rate_limit_degraded", &[]), 0.0);
}

/// A Redis that stalls (`DEBUG SLEEP`) costs a batch at most `redis_timeout`; the route
/// fails open as configured; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_at_most_the_store_timeout() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let limit =
        "items_per_second = 100\nburst = 100\nstore = \"redis\"\non_store_error = \"fail_open\"";
    let store = format!("redis_url = \"{}\"\nredis_timeout = \"100ms\"", redis.url());
    let gate = limited_gate(&upstream, limit, &store).await;
    assert_eq!(send(gate.addr, BATCH_PATH, 1, "x").await.status, 200);
    let url = redis.url();
    let sleeper = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: Result<String, _> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("2")
            .query_async(&mut connection)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let resp = send(gate.addr, BATCH_PATH, 1, "x").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "fail_open");
    assert!(
        took < Duration::from_millis(900),
        "took {took:?} with Redis asleep for 2 s"
    );
    assert_eq!(
        resp.header("ratelimit"),
        None,
        "an uncounted batch claims no quota state"
    );
    sleeper.await.unwrap();
}

/// Many distinct, huge client keys: Redis holds one short key per client, each expiring; the
/// client keys themselves are never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_keys_leave_only_short_expiring_keys() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let upstream = Upstream::echo().await;
    let store = format!("redis_url = \"{}\"", redis.url());
    // A slow rate, so no key expires while the 200 batches are sent (each key's life is
    // what one item costs: 100 s here), yet each does expire.
    let limit = "items_per_second = 0.01\nburst = 5\nstore = \"redis\"";
    let gate = limited_gate(&upstream, limit, &store).await;
    for i in 0..200 {
        let who = format!("{i}-{}", "k".repeat(4000));
        assert_eq!(send(gate.addr, BATCH_PATH, 1, &who).await.status, 200);
    }
    let keys: Vec<String> = redis.query(&["KEYS", "*"]).await;
    assert_eq!(keys.len(), 200);
    for key in &keys {
        assert!(key.len() <= "batchgate:rl:".len() + 32, "{key}");
        let ttl: i64 = redis.query(&["PTTL", key]).await;
        assert!(
            (1..=100_100).contains(&ttl),
            "one item at 0.01/s expires within 100 s: {ttl}"
        );
    }
}

/// Redis that comes up after batchgate: batches follow `on_store_error` until it answers,
/// then the shared count applies; nothing needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_started_after_batchgate_is_used_once_it_answers() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    redis.kill();
    let upstream = Upstream::echo().await;
    let limit =
        "items_per_second = 0.01\nburst = 3\nstore = \"redis\"\non_store_error = \"fail_closed\"";
    let store = format!(
        "redis_url = \"{}\"\nredis_timeout = \"100ms\"\nredis_retry_interval = \"100ms\"",
        redis.url()
    );
    let gate = limited_gate(&upstream, limit, &store).await;
    let refused = send(gate.addr, BATCH_PATH, 1, "x").await;
    assert_rejected(&refused, 503, "ServiceUnavailable.RateLimit");
    redis.restart().await;
    let addr = gate.addr;
    common::eventually_async(Duration::from_secs(10), "Redis is used", || async move {
        send(addr, BATCH_PATH, 1, "x").await.status == 200
    })
    .await;
    // The shared count: one item spent, two left of the burst of three.
    assert_eq!(send(gate.addr, BATCH_PATH, 2, "x").await.status, 200);
    let over = send(gate.addr, BATCH_PATH, 1, "x").await;
    assert_rejected(&over, 429, "TooManyRequests.RateLimit");
}

/// A JSON-RPC route weighs calls by method (`weights`), and refuses in JSON-RPC's own
/// format: error -32009 with HTTP 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_calls_are_weighed_by_method_and_refused_in_json_rpc() {
    let upstream = Upstream::echo().await;
    let text = common::config::example("limelight.toml", &[upstream.addr])
        + "\n[routes.rate_limit]\nitems_per_second = 0.01\nburst = 4\nweights = { heavy = 3 }\n";
    let gate = common::gate::start(&text).await;
    let call = |method: &str, id: u32| serde_json::json!({"jsonrpc": "2.0", "method": method, "params": [], "id": id});
    let post = |calls: Vec<serde_json::Value>| {
        let body = serde_json::Value::Array(calls).to_string();
        async move { client::post(gate.addr, "/jsonrpc2", "application/json", body.as_bytes()).await }
    };
    let first = post(vec![call("heavy", 1), call("light", 2)]).await;
    assert_eq!(first.status, 200, "3 + 1 fit a burst of 4");
    assert!(first.header("ratelimit").is_some_and(|v| v.contains("r=0")));
    let over = post(vec![call("light", 3)]).await;
    assert_eq!(over.status, 429);
    assert!(over.header("retry-after").is_some());
    let reply = over.json();
    let error = if reply.is_array() {
        &reply[0]["error"]
    } else {
        &reply["error"]
    };
    assert_eq!(error["code"], -32009, "{reply}");
    assert_eq!(upstream.count(), 2);
}
