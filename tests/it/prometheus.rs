//! Against a real Prometheus (Debian package `prometheus`: /usr/bin/prometheus and promtool):
//! Prometheus scrapes batchgate's admin listener and loads conf/prometheus/alerts.yml, and
//! every query of every panel of conf/grafana/batchgate.json returns data; promtool accepts
//! the `/metrics` output, the rules, their unit tests and the example scrape config.
//!
//! Without the binaries these tests print a skip message, except under `CI=true`, where they
//! fail and say how to install them.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::batch::{batch, item, BATCH_PATH};
use common::client::{self, build_request, send_raw, Response};
use common::config::GateConfig;
use common::gate::{self, Gate};
use common::prom::{dashboard, panels, repo_file, require_tool, scrape, scrape_until};
use common::upstream::{echo, free_port, refused_addr, Reply, Upstream};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

const INSTALL: &str = "apt-get install -y prometheus";
/// The second batch route, whose upstream refuses connections.
const DEAD_PATH: &str = "/v2/deadbatch";
/// How long the load runs.
const LOAD_FOR: Duration = Duration::from_secs(4);
/// What `$__rate_interval` / `$__interval` become in the panel queries.
const RATE_INTERVAL: &str = "1m";
const ALERTS: &[&str] = &[
    "BatchgateItemErrorRatioHigh",
    "BatchgateBatchLatencyHigh",
    "BatchgateSaturated",
    "BatchgateRejectionSpike",
    "BatchgateOverloaded",
    "BatchgateConfigReloadFailed",
    "BatchgateUpstreamNoHealthyAddress",
    "BatchgateRetryBudgetExhausted",
    "BatchgateInternalError",
    "BatchgateRateLimitStoreDegraded",
    "BatchgateDown",
];

/// A running `prometheus` with its own config and storage in a temp dir; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `bin` scraping `target` (job `batchgate`, every second) with the project's
    /// alerting rules, on a free loopback port; waits until `/-/ready` answers 200.
    async fn start(bin: &Path, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "batchgate-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create prometheus temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: batchgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = repo_file("conf/prometheus/alerts.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("create log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut prom = Prometheus { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if try_get(addr, "/-/ready")
                .await
                .is_some_and(|r| r.status == 200)
            {
                return prom;
            }
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API; asserts a JSON body with `"status":"success"`, returns `data`.
    async fn api(&self, path: &str) -> Value {
        let resp = client::get(self.addr, path).await;
        let json = resp.json();
        assert_eq!(
            json["status"], "success",
            "GET {path}: HTTP {} {json}",
            resp.status
        );
        json["data"].clone()
    }

    /// An instant query; returns the result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", enc(promql)))
            .await;
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a one-element query result, if there is one.
    async fn scalar(&self, promql: &str) -> Option<f64> {
        self.query(promql).await.first().and_then(sample_value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}\n--- end ---", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

async fn try_get(addr: SocketAddr, path: &str) -> Option<Response> {
    send_raw(addr, &build_request("GET", path, &[], b""))
        .await
        .ok()
}

/// The number in a `{"metric":..,"value":[ts,"v"]}` result element.
fn sample_value(result: &Value) -> Option<f64> {
    result["value"][1].as_str().and_then(|v| match v {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    })
}

/// Upstream: `/v2/file/fail` 500, `/v2/file/slow` after 1 s, `/v2/missing` 404, else echo.
async fn scripted_upstream() -> Upstream {
    Upstream::with_handler(|req| match req.path.as_str() {
        "/v2/file/fail" => Reply::json(500, r#"{"code":"InternalError"}"#),
        "/v2/file/slow" => Reply::json(200, "{}").with_delay(1000),
        "/v2/missing" => Reply::json(404, r#"{"code":"NotFound"}"#),
        _ => echo(req),
    })
    .await
}

/// Route `pds` (max 5 items, 200 ms item timeout, replies streamed as JSON Lines when asked,
/// references between items, coalescing and a 60 s item cache) plus route `dead` whose
/// upstream refuses.
async fn start_gate(upstream: &Upstream) -> Gate {
    let dead = refused_addr().await;
    let mut text = GateConfig::new(upstream.addr)
        .upstream("dead", dead)
        .route("max_items = 5")
        .route(r#"item_timeout = "200ms""#)
        .route(r#"stream = ["ndjson"]"#)
        .route(r#"dependencies = "graph""#)
        .route("[routes.coalesce]")
        .route("[routes.cache]\nttl = \"60s\"")
        .toml()
        .replace(
            "\n[[routes]]\n",
            "\n[upstreams.dead.retry]\n[upstreams.dead.health_check]\ninterval = \"1s\"\nunhealthy_after = 1\n\n[[routes]]\n",
        );
    text.push_str(&format!(
        "\n[[routes]]\nname = \"dead\"\npath = \"{DEAD_PATH}\"\ndialect = \"envelope\"\nupstream = \"dead\"\nbase_path = \"/v2\"\n"
    ));
    let mut gate = gate::start(&text).await;
    gate.wait_admin().await;
    gate
}

/// One round of mixed traffic: ok, partial (500 + refused item), timed-out and
/// refused-upstream batches, two rejections and two pass-through requests, concurrently.
async fn one_round(addr: SocketAddr, round: usize) {
    // `d` uses `a`'s answer (an echo: its method); `e` refers to what it does not have. From
    // the second round on, `a` and `c` are cache hits.
    let ok = batch(vec![
        item("a", "GET", "/file/a"),
        item("b", "POST", "/file/b"),
        item("c", "GET", "/file/c"),
        item("d", "GET", "/file/{result=a:$.method}"),
        item("e", "GET", "/file/{result=a:$.nothing}"),
    ]);
    let partial = batch(vec![
        item("ok", "GET", "/file/ok"),
        item("fail", "GET", "/file/fail"),
        item("evil", "GET", "//evil.example/x"),
    ]);
    let slow = batch(vec![
        item("fast", "GET", "/file/f"),
        item("slow", "GET", "/file/slow"),
    ]);
    let dead = batch(vec![item("x", "GET", "/file/x")]);
    let too_many = batch(
        (0..6)
            .map(|i| item(&format!("i{i}"), "GET", "/file/a"))
            .collect(),
    );
    let hello = format!("/v2/hello/{round}");
    let streamed = [
        ("content-type", "application/json"),
        ("accept", "application/x-ndjson"),
    ];
    let (r1, r2, r3, r4, r5, r6, r7, r8) = tokio::join!(
        client::request(addr, "POST", BATCH_PATH, &streamed, ok.as_bytes()),
        client::post_json(addr, BATCH_PATH, &partial),
        client::post_json(addr, BATCH_PATH, &slow),
        client::post_json(addr, DEAD_PATH, &dead),
        client::post_json(addr, BATCH_PATH, "{not json"),
        client::post_json(addr, BATCH_PATH, &too_many),
        client::get(addr, &hello),
        client::get(addr, "/v2/missing"),
    );
    let statuses = [
        r1.status, r2.status, r3.status, r4.status, r5.status, r6.status, r7.status, r8.status,
    ];
    assert_eq!(statuses, [200, 200, 200, 200, 400, 400, 200, 404]);
}

/// Replaces the Grafana variables of a panel query: `$__rate_interval` / `$__interval` by
/// [`RATE_INTERVAL`], `$job`, `$instance`, `$route` by the given regexes.
fn substitute(expr: &str, job: &str, instance: &str, route: &str) -> String {
    let mut out = expr.to_string();
    for (name, value) in [
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", RATE_INTERVAL),
        ("instance", instance),
        ("route", route),
        ("job", job),
    ] {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

/// Proves a real Prometheus scraping batchgate's admin listener during bounded mixed load
/// answers every query of every panel of the Grafana dashboard with data (status success, a
/// non-empty result with at least one finite value), both with the variables on "All" and
/// on the real job / instance / route; the template variables' label_values queries find
/// the real values; the alerting rules load and evaluate without error, and the error-ratio
/// and rejection alerts go pending for this failing traffic while BatchgateDown does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_every_dashboard_query() {
    let Some(bin) = require_tool("prometheus", INSTALL) else {
        return;
    };
    let started = Instant::now();
    let upstream = scripted_upstream().await;
    let gate = start_gate(&upstream).await;
    let prom = Prometheus::start(&bin, gate.admin).await;
    // Prometheus hands new targets to the scraper only every 5 s: wait for the first
    // scrape, so that the load below spans several scrapes and rate() sees it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.scalar(r#"up{job="batchgate"}"#).await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "no successful scrape of {} within 20 s",
            gate.admin
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bounded load: rounds of mixed traffic for LOAD_FOR, at most 100 rounds.
    let load_end = Instant::now() + LOAD_FOR;
    let mut rounds = 0;
    while Instant::now() < load_end && rounds < 100 {
        one_round(gate.addr, rounds).await;
        rounds += 1;
    }
    assert!(rounds >= 3, "only {rounds} rounds of load");

    // Wait until Prometheus holds several scrapes and the final counters.
    let own = scrape_until(gate.admin, Duration::from_secs(5), "load recorded", |s| {
        s.sum("batchgate_batch_duration_seconds_count", &[]) == (rounds * 6) as f64
    })
    .await;
    let final_batches = own.sum("batchgate_batch_duration_seconds_count", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrapes = prom
            .scalar(r#"count_over_time(up{job="batchgate"}[1m])"#)
            .await
            .unwrap_or(0.0);
        let up = prom.scalar(r#"up{job="batchgate"}"#).await.unwrap_or(0.0);
        let seen = prom
            .scalar(r#"sum(batchgate_batch_duration_seconds_count{job="batchgate"})"#)
            .await
            .unwrap_or(0.0);
        if scrapes >= 5.0 && up == 1.0 && seen == final_batches {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has {scrapes} scrapes, up = {up}, batches {seen} of {final_batches}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every query of every panel, with the variables on All and on real values.
    let d = dashboard();
    let instance = gate.admin.to_string();
    let mut checked = 0;
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let expr = target["expr"].as_str().expect("expr");
            for (job, inst, route) in [(".*", ".*", ".*"), ("batchgate", instance.as_str(), "pds")]
            {
                let q = substitute(expr, job, inst, route);
                let result = prom.query(&q).await;
                assert!(!result.is_empty(), "{title}: no data for {q}");
                assert!(
                    result.iter().filter_map(sample_value).any(f64::is_finite),
                    "{title}: only NaN/Inf for {q}: {result:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "only {checked} queries checked");

    // The template variables' label_values() queries.
    for var in d["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"].as_str().expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a label_values query: {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), "batchgate", &instance, ".*");
        let values = prom
            .api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                enc(&selector)
            ))
            .await;
        let expected = match var["name"].as_str() {
            Some("job") => "batchgate",
            Some("instance") => instance.as_str(),
            Some("route") => "pds",
            other => panic!("unexpected query variable {other:?}"),
        };
        assert!(
            values
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == expected)),
            "variable {}: {query} gave {values}, expected {expected} among them",
            var["name"]
        );
    }

    // The alerting rules: all loaded, evaluated without error; the ones this traffic
    // provokes are pending (their `for` is minutes long), BatchgateDown is not.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let groups = prom.api("/api/v1/rules?type=alert").await;
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            names,
            ALERTS.iter().copied().collect(),
            "alert rules loaded"
        );
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} fails to evaluate: {r}",
                r["name"]
            );
        }
        let healthy = rules.iter().all(|r| r["health"] == "ok");
        let alerts = prom.api("/api/v1/alerts").await;
        let active: BTreeSet<(String, String, String)> = alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["labels"]["route"]),
                    s(&a["state"]),
                )
            })
            .collect();
        assert!(
            !active.iter().any(|(name, _, _)| name == "BatchgateDown"),
            "BatchgateDown is active while batchgate is up: {active:?}"
        );
        let want = [
            ("BatchgateItemErrorRatioHigh", "dead"),
            ("BatchgateItemErrorRatioHigh", "pds"),
            ("BatchgateRejectionSpike", "pds"),
            // The dead upstream fails its health checks (no route label).
            ("BatchgateUpstreamNoHealthyAddress", ""),
        ];
        let provoked = want.iter().all(|(name, route)| {
            active.contains(&(name.to_string(), route.to_string(), "pending".to_string()))
        });
        if healthy && provoked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules healthy: {healthy}; active alerts {active:?}, expected pending {want:?}; rules: {rules:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "prometheus test: {rounds} rounds, {checked} panel queries, {:?} in all",
        started.elapsed()
    );
}

fn promtool(bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(repo_file(""))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool {args:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin");
        pipe.write_all(input).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Proves `promtool check metrics` accepts batchgate's `/metrics` output (exit 0) after
/// traffic has filled every family, histograms included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_output() {
    let Some(bin) = require_tool("promtool", INSTALL) else {
        return;
    };
    let upstream = scripted_upstream().await;
    let gate = start_gate(&upstream).await;
    one_round(gate.addr, 0).await;
    scrape_until(gate.admin, Duration::from_secs(5), "round recorded", |s| {
        s.sum("batchgate_batch_duration_seconds_count", &[]) == 6.0
    })
    .await;
    let text = scrape(gate.admin).await.text;
    let out = promtool(&bin, &["check", "metrics"], Some(text.as_bytes()));
    let lint =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !lint.trim().is_empty() {
        eprintln!("promtool check metrics says:\n{lint}");
    }
}

/// Proves `promtool check rules` accepts conf/prometheus/alerts.yml and `promtool test
/// rules` passes conf/prometheus/alerts_test.yml, whose cases cover every alert firing and
/// not firing.
#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let Some(bin) = require_tool("promtool", INSTALL) else {
        return;
    };
    let out = promtool(
        &bin,
        &["check", "rules", "conf/prometheus/alerts.yml"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 11 rules found"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    promtool(
        &bin,
        &["test", "rules", "conf/prometheus/alerts_test.yml"],
        None,
    );

    // Every alert has a firing case and a not-firing case in the unit tests.
    let tests = std::fs::read_to_string(repo_file("conf/prometheus/alerts_test.yml"))
        .expect("read alerts_test.yml");
    for alert in ALERTS {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no not-firing case"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no firing case"
        );
    }
}

/// Proves `promtool check config` accepts the example conf/prometheus/prometheus.yml (and
/// the rule file it references).
#[test]
fn promtool_accepts_the_example_scrape_config() {
    let Some(bin) = require_tool("promtool", INSTALL) else {
        return;
    };
    promtool(
        &bin,
        &["check", "config", "conf/prometheus/prometheus.yml"],
        None,
    );
    let text = std::fs::read_to_string(repo_file("conf/prometheus/prometheus.yml"))
        .expect("read prometheus.yml");
    assert!(text.contains("job_name: batchgate"));
    assert!(text.contains("127.0.0.1:9091"));
}
