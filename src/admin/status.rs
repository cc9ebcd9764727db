//! The status page on the admin listener: `/status.json` (one snapshot of what the instance
//! is doing) and `/status` (an HTML page, no external assets, that renders that snapshot and
//! refreshes itself), like HAProxy's stats page.
//!
//! The numbers are the Prometheus registry's own (read through `prometheus::gather`, which
//! creates no series), so the page and `/metrics` never disagree; routes and upstream states
//! come from the config in effect.

use crate::config::RouteConfig;
use crate::upstream::UpstreamClient;
use prometheus::proto::MetricFamily;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The routes of the config in effect (a reload swaps them).
pub type Routes = Arc<dyn Fn() -> Vec<Arc<RouteConfig>> + Send + Sync>;

/// How often the page fetches a new snapshot.
pub const REFRESH_MS: u64 = 2000;

/// One sample: its labels and value (a histogram's: its count).
type Sample = (BTreeMap<String, String>, f64);

/// The registry's values, by family name.
struct Samples(BTreeMap<String, Vec<Sample>>);

impl Samples {
    fn gather() -> Samples {
        // Every family exists (with zero values) even before the first batch.
        let _ = crate::metrics::families();
        Samples::from(prometheus::gather())
    }

    /// Sum of `name`'s samples whose labels include every pair of `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0.get(name).map_or(0.0, |samples| {
            samples
                .iter()
                .filter(|(labels, _)| {
                    filter
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, value)| value)
                .sum()
        })
    }

    /// The first value of label `label` among `name`'s samples.
    fn label(&self, name: &str, label: &str) -> Option<String> {
        self.0
            .get(name)?
            .iter()
            .find_map(|(l, _)| l.get(label).cloned())
    }
}

impl From<Vec<MetricFamily>> for Samples {
    fn from(families: Vec<MetricFamily>) -> Samples {
        use prometheus::proto::MetricType;
        let mut out = BTreeMap::new();
        for family in families {
            let kind = family.get_field_type();
            let samples = family
                .get_metric()
                .iter()
                .map(|metric| {
                    let labels = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    let value = match kind {
                        MetricType::COUNTER => metric.get_counter().as_ref().map(|c| c.value()),
                        MetricType::GAUGE => metric.get_gauge().as_ref().map(|g| g.value()),
                        MetricType::HISTOGRAM => metric
                            .get_histogram()
                            .as_ref()
                            .map(|h| h.sample_count() as f64),
                        _ => None,
                    };
                    (labels, value.unwrap_or(0.0))
                })
                .collect();
            out.insert(family.name().to_string(), samples);
        }
        Samples(out)
    }
}

/// What an address is doing for items: in the choice, out after failures, or failing its checks.
fn address_state(healthy: bool, ejected: bool) -> &'static str {
    match (healthy, ejected) {
        (true, false) => "up",
        (_, true) => "ejected",
        (false, false) => "failing checks",
    }
}

/// One snapshot of the instance.
pub fn snapshot(
    listeners: &[SocketAddr],
    routes: &[Arc<RouteConfig>],
    upstreams: &[Arc<UpstreamClient>],
) -> Value {
    let samples = Samples::gather();
    let count = |name: &str, filter: &[(&str, &str)]| samples.sum(name, filter) as u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = samples.sum("process_start_time_seconds", &[]);
    let loaded = samples.sum("batchgate_config_loaded_timestamp_seconds", &[]);
    let routes: Vec<Value> = routes
        .iter()
        .map(|route| {
            let name = route.name.as_str();
            let outcome = |o: &str| {
                count(
                    "batchgate_batches_total",
                    &[("route", name), ("outcome", o)],
                )
            };
            json!({
                "name": name,
                "path": route.path,
                "dialect": route.dialect.name(),
                "upstream": route.upstream.name,
                "batches": {
                    "ok": outcome("ok"),
                    "partial": outcome("partial"),
                    "failed": outcome("failed"),
                    "rejected": outcome("rejected"),
                    "cancelled": outcome("cancelled"),
                },
                "items": count("batchgate_items_total", &[("route", name)]),
            })
        })
        .collect();
    let mut upstreams: Vec<&Arc<UpstreamClient>> = upstreams.iter().collect();
    upstreams.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let upstreams: Vec<Value> = upstreams
        .iter()
        .map(|client| {
            let name = client.config.name.as_str();
            let addresses: Vec<Value> = client
                .address_states()
                .iter()
                .zip(&client.config.address_names)
                .map(|((address, healthy, ejected), written)| {
                    let address = address.to_string();
                    json!({
                        "address": address,
                        "name": written,
                        "state": address_state(*healthy, *ejected),
                        "health_checked": client.is_checked(),
                        "ejections": count("batchgate_upstream_ejections_total", &[("upstream", name), ("address", &address)]),
                    })
                })
                .collect();
            json!({
                "name": name,
                "items_in_flight": count("batchgate_items_in_flight", &[("upstream", name)]),
                "addresses": addresses,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": now,
        "uptime_seconds": if started > 0.0 { (now - started).max(0.0) } else { 0.0 },
        "config": {
            "sha256": samples.label("batchgate_config_info", "sha256"),
            "loaded_at": loaded,
            "reloads": {
                "ok": count("batchgate_config_reloads_total", &[("result", "ok")]),
                "error": count("batchgate_config_reloads_total", &[("result", "error")]),
            },
        },
        "listeners": listeners.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "client_connections": count("batchgate_client_connections", &[]),
        "in_flight": {
            "batches": count("batchgate_batches_in_flight", &[]),
            "items": count("batchgate_items_in_flight", &[]),
            "max_items": count("batchgate_max_in_flight", &[]),
        },
        "admission": {
            "queued_items": count("batchgate_admission_queued_items", &[]),
            "held_bytes": count("batchgate_admission_held_bytes", &[]),
        },
        "pass_through": {
            "requests": count("batchgate_passthrough_requests_total", &[]),
        },
        "routes": routes,
        "upstreams": upstreams,
    })
}

/// The page: markup, style and a script that fetches `/status.json` every `REFRESH_MS` and
/// fills the tables in (text only: values never become markup).
pub fn page() -> String {
    PAGE.replace("{REFRESH_MS}", &REFRESH_MS.to_string())
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>batchgate status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  .meta { color: #5a6270; }
  .cards { display: flex; flex-wrap: wrap; gap: .8em; margin-top: 1em; }
  .card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: .6em 1em; min-width: 9em; }
  .card b { display: block; font-size: 1.6em; }
  table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e7; min-width: 40em; }
  th, td { padding: .35em .8em; border-bottom: 1px solid #eceff3; text-align: left; }
  th { background: #eef1f5; font-weight: 600; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  .up { color: #11703a; font-weight: 600; }
  .ejected, .failing { color: #b3261e; font-weight: 600; }
  #error { color: #b3261e; }
</style>
</head>
<body>
<h1>batchgate <span id="version"></span></h1>
<div class="meta">config <code id="sha"></code> loaded <span id="loaded"></span>
 (reloads: <span id="reloads"></span>) · up <span id="uptime"></span> · refreshed <span id="refreshed">never</span> <span id="error"></span></div>
<div class="cards">
  <div class="card">batches in flight<b id="batches">-</b></div>
  <div class="card">items in flight<b id="items">-</b></div>
  <div class="card">max items in flight<b id="max_items">-</b></div>
  <div class="card">admission queue (items)<b id="queued">-</b></div>
  <div class="card">held bytes<b id="held">-</b></div>
  <div class="card">client connections<b id="connections">-</b></div>
  <div class="card">pass-through requests<b id="passthrough">-</b></div>
</div>
<h2>Routes</h2>
<table id="routes"><thead><tr><th>route</th><th>path</th><th>dialect</th><th>upstream</th>
<th>ok</th><th>partial</th><th>failed</th><th>rejected</th><th>cancelled</th><th>items</th></tr></thead><tbody></tbody></table>
<h2>Upstreams</h2>
<table id="upstreams"><thead><tr><th>upstream</th><th>address</th><th>state</th><th>health checks</th>
<th>ejections</th><th>items in flight</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = String(value);
  if (cls) td.className = cls;
}
function ago(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.floor(seconds / 60) + " min";
  if (seconds < 172800) return Math.floor(seconds / 3600) + " h";
  return Math.floor(seconds / 86400) + " d";
}
function render(s) {
  $("version").textContent = s.version;
  $("sha").textContent = (s.config.sha256 || "").slice(0, 12);
  $("loaded").textContent = s.config.loaded_at ? ago(s.now - s.config.loaded_at) + " ago" : "-";
  $("reloads").textContent = s.config.reloads.ok + " ok, " + s.config.reloads.error + " failed";
  $("uptime").textContent = ago(s.uptime_seconds);
  $("batches").textContent = s.in_flight.batches;
  $("items").textContent = s.in_flight.items;
  $("max_items").textContent = s.in_flight.max_items;
  $("queued").textContent = s.admission.queued_items;
  $("held").textContent = s.admission.held_bytes;
  $("connections").textContent = s.client_connections;
  $("passthrough").textContent = s.pass_through.requests;
  const routes = $("routes").tBodies[0];
  routes.replaceChildren();
  for (const r of s.routes) {
    const row = routes.insertRow();
    row.dataset.route = r.name;
    cell(row, r.name); cell(row, r.path); cell(row, r.dialect); cell(row, r.upstream);
    for (const k of ["ok", "partial", "failed", "rejected", "cancelled"]) cell(row, r.batches[k], "n");
    cell(row, r.items, "n");
  }
  const upstreams = $("upstreams").tBodies[0];
  upstreams.replaceChildren();
  for (const u of s.upstreams) {
    for (const a of u.addresses) {
      const row = upstreams.insertRow();
      row.dataset.address = a.address;
      cell(row, u.name);
      cell(row, a.name === a.address ? a.address : a.name + " (" + a.address + ")");
      cell(row, a.state, a.state === "up" ? "up" : a.state === "ejected" ? "ejected" : "failing");
      cell(row, a.health_checked ? "on" : "off");
      cell(row, a.ejections, "n");
      cell(row, u.items_in_flight, "n");
    }
  }
  $("refreshed").textContent = new Date().toLocaleTimeString();
  $("error").textContent = "";
}
async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (e) {
    $("error").textContent = "(refresh failed: " + e.message + ")";
  }
}
refresh();
setInterval(refresh, {REFRESH_MS});
</script>
</body>
</html>
"##;
