//! The Grafana dashboard `conf/grafana/batchgate.json`: it type-checks against Grafana's
//! published TypeScript types (`@grafana/schema`, via `conf/grafana/schema-check`), that
//! check really rejects broken copies, and in Rust: importable anywhere (data source only
//! through the `${datasource}` variable), every panel queries batchgate's metrics through the
//! job / instance / route variables, and the layout is sound.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use common::prom::{dashboard, panels, repo_file, require_tool};
use serde_json::{json, Value};

/// The two tsc tests share `dashboard.gen.ts`; run them one at a time.
static TSC: Mutex<()> = Mutex::new(());

/// Metric families the dashboard may use, and whether each has a `route` label.
const METRICS: &[(&str, bool)] = &[
    ("batchgate_batches_total", true),
    ("batchgate_batch_items", true),
    ("batchgate_batch_duration_seconds", true),
    ("batchgate_items_total", true),
    ("batchgate_item_duration_seconds", true),
    ("batchgate_items_in_flight", false),
    ("batchgate_batches_in_flight", false),
    ("batchgate_trace_spans_total", false),
    ("batchgate_max_in_flight", false),
    ("batchgate_permit_wait_seconds", true),
    ("batchgate_rejections_total", true),
    ("batchgate_reply_fields_missing_total", true),
    ("batchgate_referring_items_total", true),
    ("batchgate_coalesced_items_total", true),
    ("batchgate_cache_lookups_total", true),
    ("batchgate_cache_evictions_total", true),
    ("batchgate_cache_bytes", true),
    ("batchgate_rate_limited_items_total", true),
    ("batchgate_rate_limit_store_errors_total", false),
    ("batchgate_rate_limit_degraded", false),
    ("batchgate_upstream_batch_calls", true),
    ("batchgate_upstream_batch_wait_seconds", true),
    ("batchgate_upstream_batch_flushes_total", true),
    ("batchgate_references_unresolved_total", true),
    ("batchgate_streamed_batches_total", true),
    ("batchgate_stream_first_item_seconds", true),
    ("batchgate_streams_cut_total", true),
    ("batchgate_passthrough_requests_total", false),
    ("batchgate_passthrough_duration_seconds", false),
    ("batchgate_passthrough_upstream_requests_total", false),
    ("batchgate_passthrough_pool_reuse_races_total", false),
    ("batchgate_upstream_requests_total", false),
    ("batchgate_client_connections", false),
    ("batchgate_client_connections_refused_total", false),
    ("batchgate_client_timeouts_total", false),
    ("batchgate_client_heads_too_large_total", false),
    ("batchgate_client_tls_handshake_failures_total", false),
    ("batchgate_client_h2_premature_reset_closes_total", false),
    ("batchgate_admission_queued_items", false),
    ("batchgate_admission_held_bytes", false),
    ("batchgate_config_reloads_total", false),
    ("batchgate_upstream_ejections_total", false),
    ("batchgate_upstream_address_up", false),
    ("batchgate_upstream_health_checks_total", false),
    ("batchgate_upstream_retries_total", false),
    ("batchgate_upstream_retries_skipped_total", false),
    ("batchgate_upstream_hedges_total", false),
    ("batchgate_config_info", false),
    ("batchgate_config_loaded_timestamp_seconds", false),
    ("batchgate_build_info", false),
    ("process_cpu_seconds_total", false),
    ("process_resident_memory_bytes", false),
    ("process_virtual_memory_bytes", false),
    ("process_open_fds", false),
    ("process_max_fds", false),
    ("process_start_time_seconds", false),
    ("up", false),
];

/// Families every deployment needs a panel for (the issue's list).
const MUST_SHOW: &[&str] = &[
    "batchgate_batches_total",
    "batchgate_items_total",
    "batchgate_batch_duration_seconds",
    "batchgate_item_duration_seconds",
    "batchgate_batch_items",
    "batchgate_items_in_flight",
    "batchgate_batches_in_flight",
    "batchgate_permit_wait_seconds",
    "batchgate_rejections_total",
    "batchgate_streamed_batches_total",
    "batchgate_stream_first_item_seconds",
    "batchgate_streams_cut_total",
    "batchgate_referring_items_total",
    "batchgate_references_unresolved_total",
    "batchgate_coalesced_items_total",
    "batchgate_cache_lookups_total",
    "batchgate_cache_evictions_total",
    "batchgate_cache_bytes",
    "batchgate_rate_limited_items_total",
    "batchgate_rate_limit_store_errors_total",
    "batchgate_rate_limit_degraded",
    "batchgate_upstream_batch_calls",
    "batchgate_upstream_batch_wait_seconds",
    "batchgate_upstream_batch_flushes_total",
    "batchgate_passthrough_requests_total",
    "batchgate_passthrough_duration_seconds",
    "batchgate_passthrough_upstream_requests_total",
    "batchgate_passthrough_pool_reuse_races_total",
    "batchgate_upstream_requests_total",
    "batchgate_client_connections",
    "batchgate_client_connections_refused_total",
    "batchgate_client_timeouts_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

fn schema_dir() -> PathBuf {
    repo_file("conf/grafana/schema-check")
}

/// `node` and the installed `node_modules`, or `None` (skip) outside CI; panics under CI.
fn schema_tools() -> Option<()> {
    require_tool("node", "apt-get install -y nodejs npm")?;
    require_tool("npx", "apt-get install -y nodejs npm")?;
    let modules = schema_dir().join("node_modules");
    let installed = ["@grafana/schema/package.json", "typescript/bin/tsc"]
        .iter()
        .all(|p| modules.join(p).is_file());
    if !installed {
        return common::missing(
            &modules.display().to_string(),
            "run `cd conf/grafana/schema-check && npm ci`",
        );
    }
    Some(())
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(schema_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `node gen.mjs [IN OUT]`; asserts it succeeded.
fn generate(args: &[&Path]) {
    let out = run(Command::new("node").arg("gen.mjs").args(args));
    assert!(
        out.status.success(),
        "node gen.mjs {args:?}: {}",
        text(&out)
    );
}

/// Proves `conf/grafana/batchgate.json` type-checks against Grafana's published `Dashboard`
/// type (panel options and field config against the timeseries / stat plugin types):
/// `node gen.mjs && npx --no-install tsc -p conf/grafana/schema-check` exits 0.
#[test]
fn dashboard_satisfies_grafanas_published_types() {
    if schema_tools().is_none() {
        return;
    }
    let _one = TSC.lock().unwrap_or_else(|e| e.into_inner());
    generate(&[]);
    let out = run(Command::new("npx").args(["--no-install", "tsc", "-p", "."]));
    assert!(
        out.status.success(),
        "the dashboard does not satisfy Grafana's Dashboard type: {}",
        text(&out)
    );
}

/// Removes the files of one mutant run, also when the test fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The first panel of `kind`.
fn first_panel<'a>(d: &'a mut Value, kind: &str) -> &'a mut Value {
    d["panels"]
        .as_array_mut()
        .and_then(|ps| ps.iter_mut().find(|p| p["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} panel"))
}

fn rename_key(obj: &mut Value, from: &str, to: &str) {
    let map = obj.as_object_mut().expect("an object");
    let v = map
        .remove(from)
        .unwrap_or_else(|| panic!("no key {from:?} to rename"));
    map.insert(to.to_string(), v);
}

/// Proves the schema check is not a rubber stamp: broken copies of the dashboard (a
/// misspelled key at several depths, values outside an enum, a wrong type, a missing
/// required key) are each rejected by tsc, while an unbroken copy in the same run is not.
#[test]
fn schema_check_rejects_broken_dashboards() {
    if schema_tools().is_none() {
        return;
    }
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: &[Mutation] = &[
        ("unbroken copy", |_| {}),
        ("misspelled top-level key", |d| {
            rename_key(d, "refresh", "refesh")
        }),
        ("misspelled panel key", |d| {
            rename_key(first_panel(d, "timeseries"), "gridPos", "gridpos")
        }),
        ("misspelled timeseries option", |d| {
            rename_key(
                &mut first_panel(d, "timeseries")["options"]["legend"],
                "displayMode",
                "displaymode",
            )
        }),
        ("misspelled timeseries field config", |d| {
            rename_key(
                &mut first_panel(d, "timeseries")["fieldConfig"]["defaults"]["custom"],
                "fillOpacity",
                "fillOpactiy",
            )
        }),
        ("misspelled target key", |d| {
            rename_key(
                &mut first_panel(d, "stat")["targets"][0],
                "legendFormat",
                "legendformat",
            )
        }),
        ("color mode outside the enum", |d| {
            first_panel(d, "timeseries")["fieldConfig"]["defaults"]["color"]["mode"] =
                json!("palette-clasic")
        }),
        ("stat text mode outside the enum", |d| {
            first_panel(d, "stat")["options"]["textMode"] = json!("automatic")
        }),
        ("tooltip sort outside the enum", |d| {
            first_panel(d, "timeseries")["options"]["tooltip"]["sort"] = json!("descending")
        }),
        ("variable type outside the enum", |d| {
            d["templating"]["list"][1]["type"] = json!("qurey")
        }),
        ("graphTooltip outside the numeric enum", |d| {
            d["graphTooltip"] = json!(7)
        }),
        ("gridPos width as a string", |d| {
            first_panel(d, "stat")["gridPos"]["w"] = json!("4")
        }),
        ("schemaVersion missing", |d| {
            d.as_object_mut().expect("object").remove("schemaVersion");
        }),
    ];

    let dir = schema_dir();
    let pid = std::process::id();
    let tmp = std::env::temp_dir();
    let mut cleanup = Cleanup(Vec::new());
    let mut files = Vec::new();
    for (n, (_, mutate)) in mutations.iter().enumerate() {
        let mut d = dashboard();
        mutate(&mut d);
        let input = tmp.join(format!("batchgate-dashboard-mutant-{pid}-{n}.json"));
        let output = dir.join(format!("mutant-{pid}-{n}.gen.ts"));
        std::fs::write(&input, serde_json::to_string_pretty(&d).expect("serialize"))
            .expect("write mutant JSON");
        cleanup.0.push(input.clone());
        cleanup.0.push(output.clone());
        generate(&[&input, &output]);
        files.push(
            output
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    let tsconfig = dir.join(format!("tsconfig.mutants-{pid}.json"));
    let mut listed = vec!["check.ts".to_string(), "dashboard.gen.ts".to_string()];
    listed.extend(files.iter().cloned());
    std::fs::write(
        &tsconfig,
        json!({"extends": "./tsconfig.json", "files": listed}).to_string(),
    )
    .expect("write mutant tsconfig");
    cleanup.0.push(tsconfig.clone());

    let _one = TSC.lock().unwrap_or_else(|e| e.into_inner());
    generate(&[]);
    let out = run(Command::new("npx")
        .args(["--no-install", "tsc", "-p"])
        .arg(&tsconfig));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "tsc accepted every mutant: {}",
        text(&out)
    );
    for ((what, _), file) in mutations.iter().zip(&files) {
        let rejected = stdout
            .lines()
            .any(|l| l.starts_with(&format!("{file}(")) && l.contains("error TS"));
        if *what == "unbroken copy" {
            assert!(!rejected, "the unbroken copy was rejected: {}", text(&out));
        } else {
            assert!(
                rejected,
                "{what}: not rejected by the schema check: {}",
                text(&out)
            );
        }
    }
    for line in stdout.lines().filter(|l| l.contains("error TS")) {
        assert!(
            line.starts_with("mutant-"),
            "an error outside the mutants: {line}"
        );
    }
}

/// Collects every `datasource` value anywhere in `v`.
fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "datasource" {
                    out.push(child);
                }
                datasources(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| datasources(c, out)),
        _ => {}
    }
}

/// Proves the dashboard is importable into any Grafana: no `__inputs`/`${DS_...}`, every
/// data source reference is `{"type":"prometheus","uid":"${datasource}"}`, `${datasource}`
/// is a data source variable of type prometheus, and the job / instance / route query
/// variables exist and read batchgate's own series.
#[test]
fn dashboard_is_portable_and_has_its_variables() {
    let d = dashboard();
    let raw = serde_json::to_string(&d).expect("serialize");
    assert!(
        !raw.contains("DS_"),
        "uses an __inputs data source placeholder"
    );
    assert!(d.get("__inputs").is_none() && d.get("__requires").is_none());
    assert!(
        d["id"].is_null(),
        "id must be null so import creates a new dashboard"
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let version = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&version), "schemaVersion {version}");

    let mut refs = Vec::new();
    datasources(&d, &mut refs);
    assert!(
        refs.len() > 20,
        "only {} data source references",
        refs.len()
    );
    for r in refs {
        assert_eq!(
            r,
            &json!({"type": "prometheus", "uid": "${datasource}"}),
            "hard-coded data source"
        );
    }

    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    let ds = vars.get("datasource").expect("variable datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for (name, label, metric) in [
        ("job", "job", "batchgate_build_info"),
        ("instance", "instance", "batchgate_build_info"),
        ("route", "route", "batchgate_batches_total"),
    ] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("variable {name} missing"));
        assert_eq!(v["type"], "query", "{name}");
        let query = v["query"].as_str().expect("query string");
        assert!(
            query.starts_with(&format!("label_values({metric}"))
                && query.ends_with(&format!(", {label})")),
            "{name}: {query}"
        );
        if v["includeAll"] == true {
            assert_eq!(v["allValue"], ".*", "{name}: All must be a regex");
        }
    }
    assert_eq!(vars["instance"]["multi"], true);
    assert_eq!(vars["route"]["multi"], true);
}

/// `(metric, selector text)` for every `name{...}` in a PromQL expression; panics on a known
/// metric used without a selector (it would ignore the dashboard's variables).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let is_metric =
                word.starts_with("batchgate_") || word.starts_with("process_") || word == "up";
            if is_metric {
                assert!(
                    chars.get(i) == Some(&'{'),
                    "{word} without a label selector in {expr}"
                );
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map(|p| i + p)
                    .unwrap_or_else(|| panic!("unclosed selector in {expr}"));
                out.push((word, chars[i + 1..end].iter().collect()));
                i = end;
            }
        }
        i += 1;
    }
    out
}

/// The family of a sample name (`_bucket`, `_sum`, `_count` removed for histograms).
fn family(name: &str) -> Option<(&'static str, bool)> {
    METRICS.iter().copied().find(|(f, _)| {
        name == *f
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(f))
    })
}

/// Proves every panel is a timeseries, stat or row panel with a unique id and a title, each
/// query panel has targets with a non-empty `expr` and unique refIds, every metric it reads
/// is one batchgate exports and is filtered by `$job` and `$instance` (and `$route` where the
/// metric has that label), and every family the issue lists is shown.
#[test]
fn every_panel_queries_batchgate_metrics_through_the_variables() {
    let d = dashboard();
    let all = panels(&d);
    let mut ids = BTreeSet::new();
    let mut shown = BTreeSet::new();
    let mut queries = 0;
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel without title: {p}");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} repeated");
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(
            ["timeseries", "stat", "row"].contains(&kind),
            "{title}: panel type {kind}"
        );
        if kind == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            assert!(
                ref_ids.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId repeated"
            );
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: target without expr");
            queries += 1;
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: reads no known metric: {expr}");
            for (metric, selector) in found {
                let (fam, has_route) = family(&metric)
                    .unwrap_or_else(|| panic!("{title}: {metric} is not a batchgate metric"));
                shown.insert(fam);
                assert!(
                    selector.contains(r#"job=~"$job""#)
                        && selector.contains(r#"instance=~"$instance""#),
                    "{title}: {metric}{{{selector}}} ignores $job or $instance"
                );
                assert_eq!(
                    selector.contains(r#"route=~"$route""#),
                    has_route,
                    "{title}: {metric}{{{selector}}}: $route filter must be used exactly on route-labelled metrics"
                );
            }
            if expr.contains('[') {
                assert!(
                    expr.contains("[$__rate_interval]"),
                    "{title}: range selectors use $__rate_interval: {expr}"
                );
            }
        }
    }
    assert!(queries >= 30, "only {queries} queries");
    for fam in MUST_SHOW {
        assert!(shown.contains(fam), "no panel shows {fam}");
    }
}

/// Proves every panel has a gridPos inside the 24-column grid and no two panels overlap.
#[test]
fn panels_are_laid_out_without_overlap() {
    let d = dashboard();
    let top = d["panels"].as_array().expect("panels");
    let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for p in top {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        let g = &p["gridPos"];
        let n = |k: &str| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} missing or not a number"))
        };
        let (x, y, w, h) = (n("x"), n("y"), n("w"), n("h"));
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for (other, ox, oy, ow, oh) in &boxes {
            let apart = x + w <= *ox || *ox + *ow <= x || y + h <= *oy || *oy + *oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, x, y, w, h));
    }
}
