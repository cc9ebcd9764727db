//! Metrics and health endpoints on the admin listener: every counter and histogram moves by
//! exactly what the traffic implies, label sets stay bounded whatever paths and ids clients
//! send, and `/healthz` / `/readyz` answer as documented.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::batch::{assert_rejected, batch, item, responses, BATCH_PATH};
use common::client::{self, Conn};
use common::config::GateConfig;
use common::gate;
use common::prom::{scrape, scrape_until, Scrape};
use common::upstream::{echo, refused_addr, Reply, Upstream};
use serde_json::Value;

/// The second batch route, whose upstream refuses connections.
const DEAD_PATH: &str = "/v2/deadbatch";

/// How long to wait for counters recorded in pingora's logging phase.
const SETTLE: Duration = Duration::from_secs(5);

/// Upstream: `/v2/file/fail` answers 500, `/v2/file/slow` answers after 1 s, `/v2/missing`
/// answers 404, everything else is echoed with 200.
async fn scripted_upstream() -> Upstream {
    Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/file/fail" => Reply::json(500, r#"{"code":"InternalError"}"#),
        "/v2/file/slow" => Reply::json(200, "{}").with_delay(1000),
        "/v2/missing" => Reply::json(404, r#"{"code":"NotFound"}"#),
        _ => echo(req),
    })
    .await
}

/// Route `pds` (max 5 items, 300 ms item timeout) on `upstream`, plus route `dead` at
/// [`DEAD_PATH`] whose upstream `dead` refuses connections.
fn two_route_config(upstream: SocketAddr, dead: SocketAddr) -> String {
    let mut text = GateConfig::new(upstream)
        .upstream("dead", dead)
        .route("max_items = 5")
        .route(r#"item_timeout = "300ms""#)
        .toml();
    text.push_str(&format!(
        "\n[[routes]]\nname = \"dead\"\npath = \"{DEAD_PATH}\"\ndialect = \"envelope\"\nupstream = \"dead\"\nbase_path = \"/v2\"\n"
    ));
    text
}

/// `value(after) - value(before)` for one series; the series must exist in both scrapes.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// Asserts the delta of every listed `label = value` series of `name`, where `fixed` labels
/// are shared and `key` ranges over `expected` (a missing entry expects 0).
fn assert_deltas(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    fixed: &[(&str, &str)],
    key: &str,
    all: &[&str],
    expected: &[(&str, f64)],
) {
    let expected: BTreeMap<&str, f64> = expected.iter().copied().collect();
    for value in all {
        let mut labels = fixed.to_vec();
        labels.push((key, value));
        let got = delta(before, after, name, &labels);
        let want = expected.get(value).copied().unwrap_or(0.0);
        assert_eq!(
            got, want,
            "{name}{labels:?} moved by {got}, expected {want}"
        );
    }
}

const BATCH_OUTCOMES: &[&str] = &["ok", "partial", "failed", "rejected", "cancelled"];
const ITEM_OUTCOMES: &[&str] = &[
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "timeout",
    "connect_error",
    "tls_error",
    "upstream_error",
    "rejected",
    "cancelled",
];
const REASONS: &[&str] = &[
    "parse_error",
    "empty",
    "too_many_items",
    "duplicate_id",
    "invalid_item",
    "invalid_parameter",
    "not_allowed",
    "body_too_large",
    "unsupported_media_type",
    "method_not_allowed",
];
const STATUS_CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
const LATENCY_LE: &[&str] = &[
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "+Inf",
];
const ITEMS_LE: &[&str] = &[
    "1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "+Inf",
];

/// Asserts a histogram series is well formed (buckets exactly `les`, cumulative, `+Inf` ==
/// `_count`) and that `_count` moved by `count`; returns the bucket deltas by `le`.
fn assert_histogram(
    before: &Scrape,
    after: &Scrape,
    family: &str,
    labels: &[(&str, &str)],
    les: &[&str],
    count: f64,
) -> BTreeMap<String, f64> {
    let count_name = format!("{family}_count");
    let got = delta(before, after, &count_name, labels);
    assert_eq!(got, count, "{count_name}{labels:?} moved by {got}");
    let bucket_name = format!("{family}_bucket");
    let present: Vec<String> = after
        .samples
        .iter()
        .filter(|s| s.name == bucket_name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .filter(|s| s.labels.len() == labels.len() + 1)
        .filter_map(|s| s.labels.get("le").cloned())
        .collect();
    assert_eq!(present, les, "buckets of {bucket_name}{labels:?}");
    let mut out = BTreeMap::new();
    let mut previous = 0.0;
    for le in les {
        let mut with_le = labels.to_vec();
        with_le.push(("le", le));
        let cumulative = after.value(&bucket_name, &with_le);
        assert!(
            cumulative >= previous,
            "{bucket_name}{with_le:?} = {cumulative} is below the previous bucket {previous}"
        );
        previous = cumulative;
        out.insert(le.to_string(), delta(before, after, &bucket_name, &with_le));
    }
    assert_eq!(
        previous,
        after.value(&count_name, labels),
        "{bucket_name}{{le=\"+Inf\"}} must equal {count_name}"
    );
    out
}

/// Proves every counter, histogram and gauge moves by exactly what ok, partial, timed-out,
/// refused-upstream and rejected batches and pass-through requests imply, per route,
/// upstream, outcome and reason; `build_info` is 1 and the process metrics are present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_exactly_as_the_traffic_implies() {
    let upstream = scripted_upstream().await;
    let dead = refused_addr().await;
    let mut gate = gate::start(&two_route_config(upstream.addr, dead)).await;
    gate.wait_admin().await;
    let before = scrape(gate.admin).await;

    // ok: three 200s.
    let resp = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![
            item("a", "GET", "/file/a"),
            item("b", "GET", "/file/b"),
            item("c", "GET", "/file/c"),
        ]),
    )
    .await;
    let replies = responses(&resp);
    assert!(replies.iter().all(|r| r["status"] == 200), "{replies:?}");

    // partial: a 200, an upstream 500 and an item refused by batchgate (never sent).
    let resp = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![
            item("ok", "GET", "/file/ok"),
            item("fail", "GET", "/file/fail"),
            item("evil", "GET", "//evil.example/x"),
        ]),
    )
    .await;
    let statuses: Vec<Value> = responses(&resp)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [200, 500, 400]);

    // failed: the only item times out.
    let resp = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![item("slow", "GET", "/file/slow")]),
    )
    .await;
    assert_eq!(responses(&resp)[0]["status"], 504);

    // failed: both items meet a refused upstream.
    let resp = client::post_json(
        gate.addr,
        DEAD_PATH,
        &batch(vec![
            item("x", "GET", "/file/x"),
            item("y", "GET", "/file/y"),
        ]),
    )
    .await;
    let replies = responses(&resp);
    assert!(replies.iter().all(|r| r["status"] == 502), "{replies:?}");

    // rejected, four ways: bad JSON, too many items, wrong media type, wrong method.
    let resp = client::post_json(gate.addr, BATCH_PATH, "{not json").await;
    assert_rejected(&resp, 400, "InvalidParameter.Body");
    let six: Vec<Value> = (0..6)
        .map(|i| item(&format!("i{i}"), "GET", "/file/a"))
        .collect();
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(six)).await;
    assert_rejected(&resp, 400, "InvalidParameter.Requests");
    let resp = client::post(gate.addr, BATCH_PATH, "text/plain", b"{}").await;
    assert_rejected(&resp, 415, "UnsupportedMediaType");
    let resp = client::get(gate.addr, BATCH_PATH).await;
    assert_eq!(resp.status, 405);

    // pass-through: a 200 and a 404 from the default upstream.
    assert_eq!(client::get(gate.addr, "/v2/hello").await.status, 200);
    assert_eq!(client::get(gate.addr, "/v2/missing").await.status, 404);

    let after = scrape_until(
        gate.admin,
        SETTLE,
        "all batches and requests recorded",
        |s| {
            // Every series the assertions below read, not one family standing for the rest:
            // a scrape between two families' updates must not pass for the settled state.
            let passed = |class| {
                s.sum(
                    "batchgate_passthrough_requests_total",
                    &[("upstream", "api"), ("status_class", class)],
                )
            };
            s.sum("batchgate_batch_duration_seconds_count", &[]) == 8.0
                && s.sum("batchgate_batches_total", &[]) == 8.0
                && s.sum("batchgate_passthrough_duration_seconds_count", &[]) == 2.0
                && passed("2xx") == 1.0
                && passed("4xx") == 1.0
        },
    )
    .await;

    let pds = [("route", "pds")];
    let dead_route = [("route", "dead")];
    assert_deltas(
        &before,
        &after,
        "batchgate_batches_total",
        &pds,
        "outcome",
        BATCH_OUTCOMES,
        &[
            ("ok", 1.0),
            ("partial", 1.0),
            ("failed", 1.0),
            ("rejected", 4.0),
        ],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_batches_total",
        &dead_route,
        "outcome",
        BATCH_OUTCOMES,
        &[("failed", 1.0)],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_items_total",
        &[("route", "pds"), ("upstream", "api")],
        "outcome",
        ITEM_OUTCOMES,
        &[
            ("2xx", 4.0),
            ("5xx", 1.0),
            ("timeout", 1.0),
            ("rejected", 1.0),
        ],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_items_total",
        &[("route", "dead"), ("upstream", "dead")],
        "outcome",
        ITEM_OUTCOMES,
        &[("connect_error", 2.0)],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_rejections_total",
        &pds,
        "reason",
        REASONS,
        &[
            ("parse_error", 1.0),
            ("too_many_items", 1.0),
            ("unsupported_media_type", 1.0),
            ("method_not_allowed", 1.0),
        ],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_rejections_total",
        &dead_route,
        "reason",
        REASONS,
        &[],
    );
    assert_deltas(
        &before,
        &after,
        "batchgate_passthrough_requests_total",
        &[("upstream", "api")],
        "status_class",
        STATUS_CLASSES,
        &[("2xx", 1.0), ("4xx", 1.0)],
    );
    assert_eq!(
        after.sum(
            "batchgate_passthrough_requests_total",
            &[("upstream", "dead")]
        ),
        0.0,
        "only the default upstream has pass-through series"
    );
    // Each pass-through request went upstream once, on a new or a reused connection (the
    // items' idle connections to the same upstream serve pass-through too).
    let sent = |connection| {
        let labels = [("upstream", "api"), ("connection", connection)];
        after.sum("batchgate_passthrough_upstream_requests_total", &labels)
            - before.sum("batchgate_passthrough_upstream_requests_total", &labels)
    };
    assert_eq!(sent("new") + sent("reused"), 2.0);

    // Histograms: every batch is timed (rejected ones too); item counts only for accepted
    // batches; item duration and permit wait only for items that were sent.
    let batch_buckets = assert_histogram(
        &before,
        &after,
        "batchgate_batch_duration_seconds",
        &pds,
        LATENCY_LE,
        7.0,
    );
    assert!(
        batch_buckets["+Inf"] - batch_buckets["0.25"] >= 1.0,
        "the timed-out batch took at least 300 ms: {batch_buckets:?}"
    );
    assert_histogram(
        &before,
        &after,
        "batchgate_batch_duration_seconds",
        &dead_route,
        LATENCY_LE,
        1.0,
    );
    let sizes = assert_histogram(
        &before,
        &after,
        "batchgate_batch_items",
        &pds,
        ITEMS_LE,
        3.0,
    );
    assert_eq!(
        (sizes["1"], sizes["2"], sizes["5"]),
        (1.0, 1.0, 3.0),
        "batches of 3, 3 and 1 items: {sizes:?}"
    );
    assert_eq!(
        delta(&before, &after, "batchgate_batch_items_sum", &pds),
        7.0
    );
    assert_histogram(
        &before,
        &after,
        "batchgate_batch_items",
        &dead_route,
        ITEMS_LE,
        1.0,
    );
    assert_eq!(
        delta(&before, &after, "batchgate_batch_items_sum", &dead_route),
        2.0
    );
    let item_buckets = assert_histogram(
        &before,
        &after,
        "batchgate_item_duration_seconds",
        &[("route", "pds"), ("upstream", "api")],
        LATENCY_LE,
        6.0,
    );
    // Durations are in seconds: the timed-out item (~300 ms) lands above 0.25, loopback
    // items far below 0.1.
    assert!(
        item_buckets["+Inf"] - item_buckets["0.25"] >= 1.0 && item_buckets["0.1"] >= 1.0,
        "one item above 250 ms (the timed-out one), others under 100 ms: {item_buckets:?}"
    );
    let sum = delta(
        &before,
        &after,
        "batchgate_item_duration_seconds_sum",
        &[("route", "pds"), ("upstream", "api")],
    );
    assert!((0.3..5.0).contains(&sum), "item duration sum {sum} s");
    assert_histogram(
        &before,
        &after,
        "batchgate_item_duration_seconds",
        &[("route", "dead"), ("upstream", "dead")],
        LATENCY_LE,
        2.0,
    );
    assert_histogram(
        &before,
        &after,
        "batchgate_permit_wait_seconds",
        &pds,
        LATENCY_LE,
        6.0,
    );
    assert_histogram(
        &before,
        &after,
        "batchgate_permit_wait_seconds",
        &dead_route,
        LATENCY_LE,
        2.0,
    );
    assert_histogram(
        &before,
        &after,
        "batchgate_passthrough_duration_seconds",
        &[("upstream", "api")],
        LATENCY_LE,
        2.0,
    );

    // Gauges and process metrics.
    assert_eq!(
        after.value("batchgate_items_in_flight", &[("upstream", "api")]),
        0.0
    );
    assert_eq!(
        after.value("batchgate_items_in_flight", &[("upstream", "dead")]),
        0.0
    );
    assert_eq!(
        after.value(
            "batchgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        after.sum("batchgate_build_info", &[]),
        1.0,
        "one build_info series"
    );
    // The default server.max_in_flight (1024), exported so saturation is in-flight / limit.
    assert_eq!(after.value("batchgate_max_in_flight", &[]), 1024.0);
    assert!(after.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.value("process_virtual_memory_bytes", &[]) > 0.0);
    assert!(after.value("process_open_fds", &[]) > 0.0);
    assert!(after.value("process_max_fds", &[]) > 0.0);
    assert!(after.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(after.value("process_start_time_seconds", &[]) > 1.6e9);
}

/// Proves label sets stay bounded: 1,000 pass-through requests to distinct paths and 1,000
/// batch items with distinct ids and urls create no new series, and no label value carries
/// a request path or id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_stay_bounded_under_distinct_paths_and_ids() {
    let upstream = Upstream::echo().await;
    let mut gate = GateConfig::new(upstream.addr).start().await;
    gate.wait_admin().await;
    let before = scrape(gate.admin).await;
    let families_before = before.label_sets_per_name();

    // 1,000 pass-through GETs to distinct paths, over 4 keep-alive connections.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let addr = gate.addr;
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await;
            for i in 0..250 {
                let path = format!("/v2/uniqpath-{worker}-{i}?q=uniqquery-{i}");
                let resp = conn.request("GET", &path, &[], b"").await;
                assert_eq!(resp.status, 200, "GET {path}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("pass-through worker panicked");
    }
    // 10 batches of 100 items with distinct ids and urls.
    for b in 0..10 {
        let items: Vec<Value> = (0..100)
            .map(|i| {
                item(
                    &format!("uniqid-{b}-{i}"),
                    "GET",
                    &format!("/file/uniqurl-{b}-{i}"),
                )
            })
            .collect();
        let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
        let replies = responses(&resp);
        assert_eq!(replies.len(), 100);
        assert!(replies.iter().all(|r| r["status"] == 200));
    }
    // And a rejected batch carrying a distinct id.
    let resp = client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![
            item("uniqdup", "GET", "/file/a"),
            item("uniqdup", "GET", "/file/b"),
        ]),
    )
    .await;
    assert_rejected(&resp, 400, "InvalidParameter.Id");

    let after = scrape_until(gate.admin, SETTLE, "1,011 requests recorded", |s| {
        s.sum("batchgate_passthrough_duration_seconds_count", &[]) == 1000.0
            && s.sum("batchgate_batch_duration_seconds_count", &[]) == 11.0
    })
    .await;
    assert_eq!(
        after.value(
            "batchgate_passthrough_requests_total",
            &[("upstream", "api"), ("status_class", "2xx")]
        ),
        1000.0
    );
    assert_eq!(
        after.value(
            "batchgate_items_total",
            &[("route", "pds"), ("upstream", "api"), ("outcome", "2xx")]
        ),
        1000.0
    );
    assert_eq!(
        after.value(
            "batchgate_rejections_total",
            &[("route", "pds"), ("reason", "duplicate_id")]
        ),
        1.0
    );

    assert_eq!(
        after.label_sets_per_name(),
        families_before,
        "distinct label sets per metric changed"
    );
    assert_eq!(after.series(), before.series(), "the set of series changed");
    for sample in &after.samples {
        for (key, value) in &sample.labels {
            assert!(
                !value.contains("uniq") && !value.contains('/') && !value.contains('?'),
                "{}{{{key}={value:?}}} carries request data",
                sample.name
            );
        }
    }
}

/// Proves `/healthz` is 200, `/readyz` is 200 with the default upstream reachable and 503
/// (JSON `reachable: false`) when it refuses connections, `/metrics` is Prometheus text,
/// other admin paths are 404, and the public listener does not serve the admin endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_endpoints() {
    let upstream = Upstream::echo().await;
    let mut gate = GateConfig::new(upstream.addr).start().await;
    gate.wait_admin().await;

    let health = client::get(gate.admin, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body_str(), "ok\n");
    let ready = client::get(gate.admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body_str());
    let json = ready.json();
    assert_eq!(json["ready"], true, "{json}");
    assert_eq!(json["default_upstream"]["name"], "api", "{json}");
    assert_eq!(json["default_upstream"]["reachable"], true, "{json}");
    assert_eq!(
        json["default_upstream"]["address"],
        upstream.addr.to_string(),
        "{json}"
    );
    assert_eq!(json["listeners"][0], gate.addr.to_string(), "{json}");
    let scrape = scrape(gate.admin).await;
    assert!(scrape
        .get(
            "batchgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some());
    assert_eq!(client::get(gate.admin, "/nope").await.status, 404);

    // The public listener proxies /metrics like any other path: the upstream answers it.
    let public = client::get(gate.addr, "/metrics").await;
    assert_eq!(public.status, 200);
    assert!(!public.body_str().contains("batchgate_build_info"));
    assert_eq!(public.json()["path"], "/metrics");

    // Default upstream refusing connections: not ready, still alive.
    let dead = refused_addr().await;
    let mut down = GateConfig::new(dead).start().await;
    down.wait_admin().await;
    let ready = client::get(down.admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body_str());
    let json = ready.json();
    assert_eq!(json["ready"], false, "{json}");
    assert_eq!(json["default_upstream"]["reachable"], false, "{json}");
    assert_eq!(
        json["default_upstream"]["address"],
        dead.to_string(),
        "{json}"
    );
    assert!(
        json["default_upstream"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{json}"
    );
    assert_eq!(client::get(down.admin, "/healthz").await.status, 200);
    // The probe a load balancer or Kubernetes uses leaves the upstreams out: a down API turns
    // no instance unready (which would drain them all at once).
    let own = client::get(down.admin, "/readyz?exclude=upstreams").await;
    assert_eq!(own.status, 200, "{}", own.body_str());
    assert_eq!(own.json()["listeners"][0], down.addr.to_string());

    // A TLS upstream that accepts TCP but fails every handshake is not ready: readiness
    // includes the handshake, as items need it.
    let plain = Upstream::echo().await;
    let tls = GateConfig::new(plain.addr).toml().replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\ntls = true\nsni = \"api.test\"",
    );
    let mut tls = common::gate::start(&tls).await;
    tls.wait_admin().await;
    let ready = client::get(tls.admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body_str());
    assert_eq!(ready.json()["default_upstream"]["reachable"], false);
}

/// docs/MONITORING.md's metric table names every metric family src/metrics.rs registers and
/// nothing else, and every family a live instance exports after traffic is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_table_matches_the_registry() {
    let documented: std::collections::BTreeSet<String> =
        std::fs::read_to_string(common::prom::repo_file("docs/MONITORING.md"))
            .expect("docs/MONITORING.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `batchgate_"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| format!("batchgate_{name}"))
            .collect();
    let source =
        std::fs::read_to_string(common::prom::repo_file("src/metrics.rs")).expect("src/metrics.rs");
    let registered: std::collections::BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("batchgate_")
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/MONITORING.md: undocumented {undocumented:?}, not registered {stale:?}"
    );

    let upstream = scripted_upstream().await;
    let gate = gate::start(&GateConfig::new(upstream.addr).toml()).await;
    let items = vec![
        item("a", "GET", "/v2/file/a"),
        item("f", "GET", "/v2/file/fail"),
    ];
    client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    client::get(gate.addr, "/v2/missing").await;
    let scrape = scrape_until(gate.admin, SETTLE, "the batch counted", |s| {
        s.sum("batchgate_batches_total", &[]) >= 1.0
    })
    .await;
    for (name, _) in scrape.series() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| documented.contains(*base))
            .unwrap_or(&name);
        if family.starts_with("batchgate_") {
            assert!(
                documented.contains(family),
                "{family} is exported but not documented"
            );
        }
    }
}
