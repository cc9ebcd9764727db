//! In-flight coalescing (`[routes.coalesce]`) against a real upstream: identical items in flight
//! go upstream once, within one batch and across concurrent batches; different callers never
//! share; an answer that sets a cookie is never handed to another item; an item that gives up
//! (leader or follower) does not cut the others off; only the route's methods are coalesced; every item says
//! where its answer came from.

use crate::common;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate::Gate;
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::time::Duration;

/// An upstream answering after `delay_ms`; `/v2/cookie` also sets a cookie.
async fn slow_upstream(delay_ms: u64) -> Upstream {
    Upstream::with_handler(move |req| {
        let reply = Reply::json(200, &format!(r#"{{"path":"{}"}}"#, req.target));
        let reply = if req.path == "/v2/cookie" {
            reply.with_header("Set-Cookie", "session=abc")
        } else {
            reply
        };
        reply.with_delay(delay_ms)
    })
    .await
}

async fn coalescing_gate(upstream: &Upstream, extra: &[&str]) -> Gate {
    let mut config = GateConfig::new(upstream.addr).route("concurrency = 64");
    for line in extra {
        config = config.route(line);
    }
    // A second route to the same upstream whose batches give up after 200 ms: its items
    // share flights with the first route's (the key names the upstream, not the route).
    let text = config.route("[routes.coalesce]").toml()
        + "\n[[routes]]\nname = \"short\"\npath = \"/v2/short\"\ndialect = \"envelope\"\n\
           upstream = \"api\"\nbase_path = \"/v2\"\nbatch_timeout = \"200ms\"\n[routes.coalesce]\n";
    common::gate::start(&text).await
}

/// POSTs a batch of `n` copies of `GET url` with `token` as the caller's credentials.
async fn post_copies(gate: &Gate, url: &str, n: usize, token: &str) -> Vec<Value> {
    let items = (0..n).map(|i| item(&format!("i{i}"), "GET", url)).collect();
    let resp = client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", token),
        ],
        batch(items).as_bytes(),
    )
    .await;
    responses(&resp)
}

fn sources(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| {
            r["headers"]["x-batchgate-source"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

/// The same 20 items in one batch reach the upstream once; 19 say they were coalesced, and
/// each answer keeps its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_items_of_one_batch_go_upstream_once() {
    let upstream = slow_upstream(100).await;
    let gate = coalescing_gate(&upstream, &[]).await;
    let replies = post_copies(&gate, "/file/get?b=2&a=1", 20, "Bearer a").await;
    assert_eq!(upstream.count(), 1);
    let sources = sources(&replies);
    assert_eq!(
        sources.iter().filter(|s| *s == "coalesced").count(),
        19,
        "{sources:?}"
    );
    assert_eq!(
        sources.iter().filter(|s| *s == "sent").count(),
        1,
        "{sources:?}"
    );
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["id"], format!("i{i}"));
        assert_eq!(reply["status"], 200);
        assert_eq!(reply["body"]["path"], "/v2/file/get?b=2&a=1");
    }
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value("batchgate_coalesced_items_total", &[("route", "pds")]),
        19.0
    );
}

/// 50 concurrent batches of the same item (the same caller) reach the slow upstream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_share_one_slow_request() {
    let upstream = slow_upstream(500).await;
    let gate = coalescing_gate(&upstream, &[]).await;
    let batches = (0..50).map(|_| post_copies(&gate, "/file/get?x=1", 1, "Bearer a"));
    let replies = futures_util::future::join_all(batches).await;
    assert_eq!(upstream.count(), 1);
    assert!(replies.iter().all(|r| r[0]["status"] == 200));
}

/// Different credentials never share an answer; an answer that sets a cookie is never handed
/// on (every copy asks for its own); methods the route does not coalesce (POST) always go up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cookies_and_unsafe_methods_are_never_shared() {
    let upstream = slow_upstream(200).await;
    let gate = coalescing_gate(&upstream, &[]).await;
    let (a, b) = tokio::join!(
        post_copies(&gate, "/file/get", 3, "Bearer a"),
        post_copies(&gate, "/file/get", 3, "Bearer b"),
    );
    assert_eq!(upstream.count(), 2, "one per caller");
    assert_eq!(sources(&a).iter().filter(|s| *s == "sent").count(), 1);
    assert_eq!(sources(&b).iter().filter(|s| *s == "sent").count(), 1);
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert!(seen.contains(&"Bearer a".to_string()) && seen.contains(&"Bearer b".to_string()));

    upstream.reset();
    let cookies = post_copies(&gate, "/cookie", 4, "Bearer a").await;
    assert_eq!(upstream.count(), 4, "a cookie is per caller");
    assert!(sources(&cookies).iter().all(|s| s == "sent"));

    upstream.reset();
    let items = (0..3)
        .map(|i| item(&format!("p{i}"), "POST", "/file/create"))
        .collect();
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    assert_eq!(responses(&resp).len(), 3);
    assert_eq!(upstream.count(), 3, "POSTs are never coalesced");
}

/// A follower whose batch deadline passes answers 504 and leaves: the leader still gets its
/// answer, and the upstream was asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_gives_up_does_not_cancel_the_leader() {
    let upstream = slow_upstream(800).await;
    let leader_gate = coalescing_gate(&upstream, &[]).await;
    let leader = tokio::spawn({
        let addr = leader_gate.addr;
        async move {
            let items = vec![item("leader", "GET", "/file/slow")];
            let resp = client::request(
                addr,
                "POST",
                BATCH_PATH,
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", "Bearer a"),
                ],
                batch(items).as_bytes(),
            )
            .await;
            responses(&resp)
        }
    });
    upstream.wait_for_count(1, Duration::from_secs(5)).await;
    // The same item, from a batch with a 200 ms deadline.
    let items = vec![item("follower", "GET", "/file/slow")];
    let body = serde_json::json!({"resource": "file", "requests": items}).to_string();
    let resp = client::request(
        leader_gate.addr,
        "POST",
        "/v2/short",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer a"),
        ],
        body.as_bytes(),
    )
    .await;
    let follower = responses(&resp);
    assert_eq!(follower[0]["status"], 504, "{}", follower[0]);
    let leader = leader.await.expect("the leader's batch");
    assert_eq!(leader[0]["status"], 200, "{}", leader[0]);
    assert_eq!(upstream.count(), 1);
}

/// The reverse: the item that started the request leaves (its batch's 200 ms deadline) while
/// another batch waits for the same item: the request is not cancelled, the waiting batch gets
/// its answer, and the upstream was still asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_gives_up_does_not_cancel_the_request_others_wait_for() {
    let upstream = slow_upstream(800).await;
    let gate = coalescing_gate(&upstream, &[]).await;
    let leader = tokio::spawn({
        let addr = gate.addr;
        async move {
            let items = vec![item("leader", "GET", "/file/slow")];
            let body = serde_json::json!({"resource": "file", "requests": items}).to_string();
            let resp = client::request(
                addr,
                "POST",
                "/v2/short",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", "Bearer a"),
                ],
                body.as_bytes(),
            )
            .await;
            responses(&resp)
        }
    });
    upstream.wait_for_count(1, Duration::from_secs(5)).await;
    let follower = post_copies(&gate, "/file/slow", 1, "Bearer a").await;
    let leader = leader.await.expect("the leader's batch");
    assert_eq!(leader[0]["status"], 504, "{}", leader[0]);
    assert_eq!(follower[0]["status"], 200, "{}", follower[0]);
    assert_eq!(sources(&follower), ["coalesced"]);
    assert_eq!(upstream.count(), 1);
}

/// A route with `[routes.cache]`: the upstream says how long each answer is fresh.
async fn caching_gate(upstream: &Upstream) -> Gate {
    GateConfig::new(upstream.addr)
        .route("[routes.cache]\nmax_bytes = 1048576")
        .start()
        .await
}

/// An upstream whose `/v2/fresh` answers are fresh for a minute, `/v2/nostore` ones never kept.
async fn cacheable_upstream() -> Upstream {
    Upstream::with_handler(|req| {
        let reply = Reply::json(200, &format!(r#"{{"n":"{}"}}"#, req.target));
        match req.path.as_str() {
            "/v2/fresh" => reply.with_header("Cache-Control", "max-age=60"),
            "/v2/nostore" => reply.with_header("Cache-Control", "no-store"),
            _ => reply,
        }
    })
    .await
}

/// Fresh answers come from the cache (with `Age`, source `cache`), per caller; `no-store`
/// answers are never kept; a successful PUT to the same path drops what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_answers_come_from_the_cache_per_caller() {
    let upstream = cacheable_upstream().await;
    let gate = caching_gate(&upstream).await;
    let first = post_copies(&gate, "/fresh", 1, "Bearer a").await;
    assert_eq!(sources(&first), ["sent"]);
    let second = post_copies(&gate, "/fresh", 3, "Bearer a").await;
    assert_eq!(sources(&second), ["cache", "cache", "cache"]);
    assert!(second[0]["headers"]["age"].is_string(), "{}", second[0]);
    assert_eq!(second[0]["body"], first[0]["body"]);
    assert_eq!(upstream.count(), 1);

    let other = post_copies(&gate, "/fresh", 1, "Bearer b").await;
    assert_eq!(
        sources(&other),
        ["sent"],
        "another caller's answer is not theirs"
    );
    assert_eq!(upstream.count(), 2);

    post_copies(&gate, "/nostore", 1, "Bearer a").await;
    let again = post_copies(&gate, "/nostore", 1, "Bearer a").await;
    assert_eq!(sources(&again), ["sent"]);
    assert_eq!(upstream.count(), 4);

    let put = vec![item("put", "PUT", "/fresh")];
    let resp = client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer a"),
        ],
        batch(put).as_bytes(),
    )
    .await;
    assert_eq!(responses(&resp)[0]["status"], 200);
    let after = post_copies(&gate, "/fresh", 1, "Bearer a").await;
    assert_eq!(sources(&after), ["sent"], "the PUT invalidated it");
    assert_eq!(upstream.count(), 6);

    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_cache_lookups_total",
            &[("route", "pds"), ("result", "hit")]
        ),
        3.0
    );
    assert!(metrics.value("batchgate_cache_bytes", &[("route", "pds")]) > 0.0);
}

/// A jsonrpc route sharing `eth_blockNumber` (coalesced, and cached for 60 s): identical calls
/// with different ids go upstream once and each gets its own id back; calls the route does not
/// name (`eth_sendTransaction`) always go up (and, all being POSTs to one path, invalidate
/// nothing); the next batch is served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_reads_are_shared_by_method_and_params_each_with_its_id() {
    let upstream = Upstream::with_handler(|req| {
        let call: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let answer = serde_json::json!({"jsonrpc": "2.0", "result": "0x10", "id": call["id"]});
        Reply::json(200, &answer.to_string()).with_delay(200)
    })
    .await;
    let text = GateConfig::new(upstream.addr).toml()
        + "\n[[routes]]\nname = \"rpc\"\npath = \"/rpc\"\ndialect = \"jsonrpc\"\nupstream = \"api\"\n\
           upstream_path = \"/rpc\"\n[routes.coalesce]\nmethods = [\"eth_blockNumber\"]\n\
           [routes.cache]\nmethods = [\"eth_blockNumber\"]\nttl_by_method = { eth_blockNumber = \"60s\" }\n";
    let gate = common::gate::start(&text).await;
    let body = r#"[{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1},
                   {"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":"two"},
                   {"jsonrpc":"2.0","method":"eth_sendTransaction","params":["0xab"],"id":3},
                   {"jsonrpc":"2.0","method":"eth_sendTransaction","params":["0xab"],"id":4}]"#;
    let reply = client::post_json(gate.addr, "/rpc", body).await.json();
    let ids: Vec<Value> = reply
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [serde_json::json!(1), "two".into(), 3.into(), 4.into()]
    );
    assert!(
        reply
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "0x10"),
        "{reply}"
    );
    assert_eq!(upstream.count(), 3, "one eth_blockNumber, two sends");

    let again = r#"[{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":"later"}]"#;
    let reply = client::post_json(gate.addr, "/rpc", again).await.json();
    assert_eq!(reply[0]["id"], "later");
    assert_eq!(reply[0]["result"], "0x10");
    assert_eq!(upstream.count(), 3, "from the cache");
}
