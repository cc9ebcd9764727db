//! Envelope dependencies (`dependencies = "graph"`): Microsoft Graph's `dependsOn` and the
//! SDKs' `depends_on` order the items of a batch against a real upstream; a dependency that
//! did not answer 2xx makes its dependents 424 without sending them; a bad graph is refused
//! before anything is sent.

use crate::common;

use common::batch::{responses, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::upstream::{Reply, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `/v2/slow` answers after 150 ms, `/v2/missing` 404, everything else 200 at once.
async fn upstream() -> Upstream {
    Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/slow" => Reply::json(200, r#"{"slow":true}"#).with_delay(150),
        "/v2/missing" => Reply::json(404, r#"{"code":"NotFound"}"#),
        _ => Reply::json(200, "{}"),
    })
    .await
}

fn by_id(reply: &client::Response) -> std::collections::BTreeMap<String, Value> {
    responses(reply)
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or_default().to_string(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_wait_and_failed_dependencies_answer_424() {
    let upstream = upstream().await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"dependencies = "graph""#)
        .start()
        .await;
    // a (slow) <- b; c (404) <- d <- e; f on its own; g after a and f.
    let body = r#"{"requests":[
        {"id":"a","method":"GET","url":"/slow"},
        {"id":"b","method":"GET","url":"/after-a","dependsOn":["a"]},
        {"id":"c","method":"GET","url":"/missing"},
        {"id":"d","method":"GET","url":"/after-c","depends_on":["c"]},
        {"id":"e","method":"GET","url":"/after-d","dependsOn":["d"]},
        {"id":"f","method":"GET","url":"/alone"},
        {"id":"g","method":"GET","url":"/after-a-f","dependsOn":["f","a"]}
    ]}"#;
    let started = Instant::now();
    let reply = client::post_json(gate.addr, BATCH_PATH, body).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let items = by_id(&reply);
    for (id, status) in [
        ("a", 200),
        ("b", 200),
        ("c", 404),
        ("d", 424),
        ("e", 424),
        ("f", 200),
        ("g", 200),
    ] {
        assert_eq!(items[id]["status"], status, "{id}: {}", reply.body_str());
    }
    assert_eq!(items["d"]["body"]["code"], "FailedDependency");
    let message = items["d"]["body"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(r#"dependency "c" answered 404"#),
        "{message}"
    );
    let message = items["e"]["body"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(r#"dependency "d" answered 424"#),
        "{message}"
    );

    // Nothing of d or e reached the upstream; b and g only after a had answered.
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 5, "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("after-c") || p.contains("after-d")),
        "{paths:?}"
    );
    let position = |p: &str| paths.iter().position(|x| x == p).expect(p);
    assert!(position("/v2/after-a") > position("/v2/slow"), "{paths:?}");
    assert!(
        position("/v2/after-a-f") > position("/v2/alone"),
        "{paths:?}"
    );
    assert!(
        paths[..3].contains(&"/v2/missing".to_string())
            && paths[..3].contains(&"/v2/alone".to_string()),
        "independent items start at once, beside a: {paths:?}"
    );
    // One slow item on the critical path, not two or three of them in a row.
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_graphs_are_refused_before_anything_is_sent() {
    let upstream = upstream().await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"dependencies = "graph""#)
        .start()
        .await;
    for (body, says) in [
        (
            r#"{"requests":[{"id":"1","method":"GET","url":"/x","dependsOn":["2"]},{"id":"2","method":"GET","url":"/y","dependsOn":["1"]}]}"#,
            "cycle",
        ),
        (
            r#"{"requests":[{"id":"1","method":"GET","url":"/x","dependsOn":["nope"]}]}"#,
            "not an id",
        ),
        (
            r#"{"requests":[{"id":"1","method":"GET","url":"/x","dependsOn":["1"]}]}"#,
            "its own id",
        ),
    ] {
        let reply = client::post_json(gate.addr, BATCH_PATH, body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body_str());
        let json = reply.json();
        assert_eq!(json["code"], "InvalidParameter.DependsOn", "{json}");
        assert!(
            json["message"].as_str().unwrap_or_default().contains(says),
            "{json}"
        );
    }
    assert!(upstream.requests().is_empty());
}

/// Sequential and dependencies together: one item at a time, dependencies still honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_batches_keep_their_dependencies() {
    let upstream = upstream().await;
    let gate = GateConfig::new(upstream.addr)
        .route(r#"dependencies = "graph""#)
        .start()
        .await;
    // b waits for c, which comes later in the array.
    let body = r#"{"sequential":true,"requests":[
        {"id":"a","method":"GET","url":"/one"},
        {"id":"b","method":"GET","url":"/two","dependsOn":["c"]},
        {"id":"c","method":"GET","url":"/slow"}
    ]}"#;
    let reply = client::post_json(gate.addr, BATCH_PATH, body).await;
    let items = by_id(&reply);
    assert!(
        ["a", "b", "c"].iter().all(|id| items[*id]["status"] == 200),
        "{}",
        reply.body_str()
    );
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v2/one", "/v2/slow", "/v2/two"]);
}
