//! Batching in the other direction (`[routes.upstream_batching]`): single JSON-RPC calls of
//! many clients reach a real upstream as arrays; every caller gets exactly its own answer with
//! its own id, matched by id; a lone call waits at most `max_wait`, and never past half its
//! deadline; identities never share an array; a reply that misses calls fails only those.

use crate::common;

use common::client::{self, Response};
use common::upstream::{RecordedRequest, Reply, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A JSON-RPC upstream that takes arrays: each call answered with its method, params and the
/// caller's credentials, in reverse order (answers must be matched by id), after `delay_ms`;
/// a call to method "drop" gets no answer at all.
async fn array_upstream(delay_ms: u64) -> Upstream {
    Upstream::with_handler(move |req: &RecordedRequest| {
        let token = req
            .header("x-agile-authorization")
            .unwrap_or("")
            .to_string();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let answer = |call: &Value| {
            json!({"jsonrpc": "2.0", "id": call["id"],
                   "result": {"method": call["method"], "params": call["params"], "token": token}})
        };
        let reply = match &body {
            Value::Array(calls) => Value::Array(
                calls
                    .iter()
                    .rev()
                    .filter(|c| c["method"] != "drop")
                    .map(answer)
                    .collect(),
            ),
            call => answer(call),
        };
        Reply::json(200, &reply.to_string()).with_delay(delay_ms)
    })
    .await
}

/// The limelight example with `[routes.upstream_batching]` lines `batching`, and `extra`
/// lines for the route itself.
async fn gate(upstream: &Upstream, batching: &str) -> common::gate::Gate {
    let text = common::config::example("limelight.toml", &[upstream.addr])
        + &format!("\n[routes.upstream_batching]\n{batching}\n");
    common::gate::start(&text).await
}

async fn call(addr: std::net::SocketAddr, method: &str, id: Value, token: &str) -> Response {
    let body =
        json!({"jsonrpc": "2.0", "method": method, "params": [method], "id": id}).to_string();
    client::request(
        addr,
        "POST",
        "/jsonrpc2",
        &[
            ("Content-Type", "application/json"),
            ("X-Agile-Authorization", token),
        ],
        body.as_bytes(),
    )
    .await
}

/// 20 clients at once, all using id 1: five arrays of four reach the upstream, and every
/// caller gets its own answer with its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_calls_of_many_clients_reach_the_upstream_as_arrays() {
    let upstream = array_upstream(0).await;
    let gate = gate(&upstream, "max_items = 4\nmax_wait = \"200ms\"").await;
    let methods: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let calls = methods.iter().map(|m| call(gate.addr, m, json!(1), "t"));
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, 200);
        let reply = answer.json();
        assert_eq!(reply["id"], 1, "{reply}");
        assert_eq!(reply["result"]["method"], format!("m{i}"), "{reply}");
    }
    let sent = upstream.requests();
    assert_eq!(sent.len(), 5, "arrays of four");
    for request in &sent {
        assert_eq!(request.json().as_array().map(Vec::len), Some(4));
    }
    let metrics = common::prom::scrape(gate.admin).await;
    let flushes = |reason| {
        metrics.value(
            "batchgate_upstream_batch_flushes_total",
            &[("route", "limelight"), ("reason", reason)],
        )
    };
    assert_eq!(flushes("size"), 5.0);
    assert_eq!(
        metrics.value(
            "batchgate_upstream_batch_calls_count",
            &[("route", "limelight")]
        ),
        5.0
    );
}

/// A lone call waits `max_wait` for company, no longer; with a deadline shorter than twice
/// `max_wait` it waits half its time left instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_call_waits_at_most_max_wait_and_never_past_half_its_deadline() {
    let upstream = array_upstream(0).await;
    let gate = gate(&upstream, "max_wait = \"300ms\"").await;
    let started = Instant::now();
    let answer = call(gate.addr, "alone", json!("a"), "t").await;
    let took = started.elapsed();
    assert_eq!(answer.json()["id"], "a");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "{took:?}"
    );

    let text = common::config::example("limelight.toml", &[upstream.addr]).replace(
        "concurrency = 3",
        "concurrency = 3\nbatch_timeout = \"200ms\"",
    ) + "\n[routes.upstream_batching]\nmax_wait = \"1s\"\n";
    let short = common::gate::start(&text).await;
    let started = Instant::now();
    let answer = call(short.addr, "short", json!(2), "t").await;
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        200,
        "sent in time: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(took < Duration::from_millis(190), "{took:?}");
    let metrics = common::prom::scrape(short.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_upstream_batch_flushes_total",
            &[("route", "limelight"), ("reason", "deadline")]
        ),
        1.0
    );
}

/// Callers with different credentials never share an array: each array carries one
/// caller's credentials, and every answer was fetched with its own caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_different_identities_never_share_an_upstream_batch() {
    let upstream = array_upstream(0).await;
    let gate = gate(&upstream, "max_items = 100\nmax_wait = \"100ms\"").await;
    let calls = (0..12).map(|i| {
        let token = if i % 2 == 0 { "alice" } else { "bob" };
        async move { (token, call(gate.addr, "whoami", json!(i), token).await) }
    });
    for (token, answer) in futures_util::future::join_all(calls).await {
        assert_eq!(answer.json()["result"]["token"], token);
    }
    let sent = upstream.requests();
    assert_eq!(sent.len(), 2, "one array per identity");
    let mut tokens: Vec<&str> = sent
        .iter()
        .filter_map(|r| r.header("x-agile-authorization"))
        .collect();
    tokens.sort();
    assert_eq!(tokens, ["alice", "bob"]);
}

/// An array whose reply lacks a call's answer fails that call alone: 502 and a JSON-RPC
/// error saying why, with the caller's id; the others get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_misses_a_call_fails_only_that_caller() {
    let upstream = array_upstream(0).await;
    let gate = gate(&upstream, "max_items = 3\nmax_wait = \"500ms\"").await;
    let calls = ["keep", "drop", "keep"]
        .iter()
        .enumerate()
        .map(|(i, method)| call(gate.addr, method, json!(i), "t"));
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(upstream.count(), 1);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[2].status, 200);
    assert_eq!(answers[1].status, 502);
    let error = answers[1].json();
    assert_eq!(error["id"], 1, "{error}");
    assert_eq!(error["error"]["data"]["reason"], "invalid_reply", "{error}");
    assert!(
        error["error"]["data"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no answer for this call")),
        "{error}"
    );
}

/// At most `max_concurrent` arrays of the route are in flight; the others wait their turn,
/// and every caller is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_arrays_in_flight_stay_within_max_concurrent() {
    let upstream = array_upstream(150).await;
    let gate = gate(
        &upstream,
        "max_items = 2\nmax_wait = \"0\"\nmax_concurrent = 1",
    )
    .await;
    let calls = (0..6).map(|i| call(gate.addr, "slow", json!(i), "t"));
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer.json()["id"],
            i,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert_eq!(upstream.peak(), 1, "one array at a time");
    assert!(
        upstream.count() >= 3,
        "arrays of at most two: {}",
        upstream.count()
    );
}

/// A caller that goes away before its array is sent is left out of it: the upstream sees
/// only the calls of callers still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_before_the_send_is_left_out() {
    use tokio::io::AsyncWriteExt;
    let upstream = array_upstream(0).await;
    let gate = gate(&upstream, "max_items = 10\nmax_wait = \"400ms\"").await;
    let body = json!({"jsonrpc": "2.0", "method": "gone", "params": [], "id": 1}).to_string();
    let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let head = format!(
        "POST /jsonrpc2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-Agile-Authorization: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = call(gate.addr, "stays", json!(2), "t").await;
    assert_eq!(answer.json()["result"]["method"], "stays");
    let sent = upstream.requests();
    let bodies: Vec<&str> = sent.iter().map(|r| r.body_str()).collect();
    assert_eq!(sent.len(), 1, "{bodies:?}");
    let array = sent[0].json();
    assert_eq!(array.as_array().map(Vec::len), Some(1), "{array}");
    assert_eq!(array[0]["method"], "stays");
}

/// Coalescing and gathering together: a call whose client leaves while another client waits
/// for the same call (a coalesced follower) is still sent, and the follower gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_call_is_not_dropped_with_its_first_caller() {
    use tokio::io::AsyncWriteExt;
    let upstream = array_upstream(0).await;
    let text = common::config::example("limelight.toml", &[upstream.addr])
        + "\n[routes.coalesce]\nmethods = [\"same\"]\n\
           \n[routes.upstream_batching]\nmax_wait = \"300ms\"\n";
    let gate = common::gate::start(&text).await;
    let body = json!({"jsonrpc": "2.0", "method": "same", "params": ["same"], "id": 1}).to_string();
    let mut first = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let head = format!(
        "POST /jsonrpc2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-Agile-Authorization: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    let follower = tokio::spawn({
        let addr = gate.addr;
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            call(addr, "same", json!(2), "t").await
        }
    });
    tokio::time::sleep(Duration::from_millis(80)).await;
    drop(first);
    let answer = follower.await.unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let reply = answer.json();
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(reply["result"]["method"], "same", "{reply}");
    assert_eq!(upstream.count(), 1, "one array, one call in it");
}

/// `max_bytes` sends an array before `max_items` or `max_wait` when its calls are large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_calls_send_an_array_at_max_bytes() {
    let upstream = array_upstream(0).await;
    let gate = gate(
        &upstream,
        "max_items = 100\nmax_bytes = 2048\nmax_wait = \"500ms\"",
    )
    .await;
    let large = "x".repeat(900);
    let started = Instant::now();
    let calls = (0..3).map(|i| call(gate.addr, &large, json!(i), "t"));
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let metrics = common::prom::scrape(gate.admin).await;
    assert_eq!(
        metrics.value(
            "batchgate_upstream_batch_flushes_total",
            &[("route", "limelight"), ("reason", "bytes")]
        ),
        1.0,
        "three calls of ~1 KB pass 2 KiB"
    );
    let first = upstream.requests()[0].json();
    assert!(first.as_array().is_some_and(|a| a.len() >= 2), "{first}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The Huawei id-list contract as the upstream: `GET .../access-urls?group_id=G&accessory_ids=..`
/// answers `{"accessory_urls":[{"accessory_url":..,"accessory_id":..}]}`, in reverse order, with
/// no entry for id 404.
async fn id_list_upstream() -> Upstream {
    Upstream::with_handler(|req: &RecordedRequest| {
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let group = pairs.iter().find(|(k, _)| k == "group_id").map_or("", |(_, v)| v.as_str());
        let entries: Vec<Value> = pairs
            .iter()
            .rev()
            .filter(|(k, v)| k == "accessory_ids" && v != "404")
            .map(|(_, id)| json!({"accessory_url": format!("https://files/{group}/{id}"), "accessory_id": id}))
            .collect();
        Reply::json(200, &json!({ "accessory_urls": entries }).to_string())
    })
    .await
}

async fn single_gate(upstream: &Upstream) -> common::gate::Gate {
    let text = common::config::GateConfig::new(upstream.addr).toml()
        + r#"
[[routes]]
name = "access_url"
path = "/v2/servicerequest/accessorys/{id}/access-url"
dialect = "single"
upstream = "api"
forward_headers = ["x-auth-token"]

[routes.upstream_batching]
max_items = 10
max_wait = "150ms"

[routes.id_list]
path = "/v2/servicerequest/accessorys/access-urls"
ids = "accessory_ids"
list_field = "accessory_urls"
id_field = "accessory_id"
answer = { url = "/accessory_url" }
"#;
    common::gate::start(&text).await
}

async fn get_url(addr: std::net::SocketAddr, id: &str, group: &str) -> Response {
    let path = format!("/v2/servicerequest/accessorys/{id}/access-url?group_id={group}");
    client::request(addr, "GET", &path, &[("X-Auth-Token", "t")], b"").await
}

/// Single-id GETs of many clients become one id-list call per set of other parameters: each
/// id once, every caller answered with its own entry (by id, not position), a missing id 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_id_calls_are_gathered_into_id_list_calls() {
    let upstream = id_list_upstream().await;
    let gate = single_gate(&upstream).await;
    let asks = [
        ("1", "1"),
        ("2", "1"),
        ("3", "1"),
        ("2", "1"),
        ("404", "1"),
        ("7", "2"),
    ];
    let calls = asks.iter().map(|(id, group)| get_url(gate.addr, id, group));
    let answers = futures_util::future::join_all(calls).await;
    for ((id, group), answer) in asks.iter().zip(&answers) {
        if *id == "404" {
            assert_eq!(
                answer.status,
                404,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            assert_eq!(answer.json()["code"], "NotFound");
            continue;
        }
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer.json(),
            json!({"url": format!("https://files/{group}/{id}")})
        );
    }
    let mut sent: Vec<(String, Vec<String>)> = upstream
        .requests()
        .iter()
        .map(|r| {
            let (path, query) = r.target.split_once('?').expect("a query");
            assert_eq!(path, "/v2/servicerequest/accessorys/access-urls");
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let group = pairs
                .iter()
                .find(|(k, _)| k == "group_id")
                .expect("group_id")
                .1
                .clone();
            let mut ids: Vec<String> = pairs
                .into_iter()
                .filter(|(k, _)| k == "accessory_ids")
                .map(|(_, v)| v)
                .collect();
            ids.sort();
            (group, ids)
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (
                "1".to_string(),
                vec!["1".to_string(), "2".into(), "3".into(), "404".into()]
            ),
            ("2".to_string(), vec!["7".to_string()]),
        ],
        "one call per group, each id once"
    );
}

/// Callers with different credentials never share an id-list call; an id-list reply that is
/// not a list fails each of its callers with its own 502; other methods on a single route's
/// path, and ids it cannot carry, are the upstream's to answer (passed through unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_list_calls_keep_identities_apart_and_a_bad_reply_fails_each_caller() {
    let upstream = Upstream::with_handler(|req: &RecordedRequest| {
        if req.header("x-auth-token") == Some("broken") {
            return Reply::json(200, r#"{"error":"quota"}"#);
        }
        if req.path != "/v2/servicerequest/accessorys/access-urls" {
            return Reply::json(200, r#"{"passed":true}"#);
        }
        let query = req.query.as_deref().unwrap_or("");
        let entries: Vec<Value> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "accessory_ids")
            .map(|(_, id)| json!({"accessory_url": format!("u/{id}"), "accessory_id": id}))
            .collect();
        Reply::json(200, &json!({ "accessory_urls": entries }).to_string())
    })
    .await;
    let gate = single_gate(&upstream).await;
    let ask = |id: &'static str, token: &'static str| {
        let path = format!("/v2/servicerequest/accessorys/{id}/access-url");
        async move { client::request(gate.addr, "GET", &path, &[("X-Auth-Token", token)], b"").await }
    };
    let answers = futures_util::future::join_all([
        ask("1", "alice"),
        ask("2", "bob"),
        ask("3", "broken"),
        ask("4", "broken"),
    ])
    .await;
    assert_eq!(answers[0].json(), json!({"url": "u/1"}));
    assert_eq!(answers[1].json(), json!({"url": "u/2"}));
    for answer in &answers[2..] {
        assert_eq!(
            answer.status,
            502,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.json()["code"], "UpstreamBatchReply");
    }
    let mut tokens: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| {
            let query = r.query.as_deref().unwrap_or("");
            let mut ids: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .map(|(_, id)| id.into_owned())
                .collect();
            ids.sort();
            format!(
                "{} {}",
                r.header("x-auth-token").unwrap_or(""),
                ids.join(",")
            )
        })
        .collect();
    tokens.sort();
    assert_eq!(
        tokens,
        ["alice 1", "bob 2", "broken 3,4"],
        "one call per identity"
    );
    for (method, id) in [("PUT", "5"), ("GET", "a%20b"), ("GET", "x/y")] {
        let path = format!("/v2/servicerequest/accessorys/{id}/access-url");
        let answer =
            client::request(gate.addr, method, &path, &[("X-Auth-Token", "alice")], b"").await;
        assert_eq!(answer.json(), json!({"passed": true}), "{method} {id}");
        let seen = upstream.requests().last().cloned().expect("passed through");
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, path.as_str())
        );
    }
}
