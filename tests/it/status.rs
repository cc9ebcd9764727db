//! The status page on the admin listener: `/status.json` reports what the instance is doing
//! (routes and their batches, upstream addresses and their state, in-flight work, the config),
//! and `/status` renders it in a real browser (headless Chromium), refreshing itself.

use crate::common;

use common::batch::{batch, item, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::prom::{require_tool, scrape_until};
use common::upstream::{refused_addr, Upstream};
use serde_json::Value;
use std::time::Duration;

/// A gate with the usual route on a healthy upstream and a second route on an upstream with
/// one dead address, ejected after its first failure; one batch on each.
async fn busy_gate(upstream: &Upstream) -> gate::Gate {
    let dead = refused_addr().await;
    let text = GateConfig::new(upstream.addr).toml()
        + &format!(
            r#"
[upstreams.flaky]
addresses = ["{}", "{dead}"]
connect_timeout = "1s"
eject_after = 1
eject_for = "60s"

[[routes]]
name = "flaky"
path = "/v2/flaky"
dialect = "envelope"
upstream = "flaky"
base_path = "/v2"
"#,
            upstream.addr
        );
    let gate = gate::start(&text).await;
    let items = (0..3)
        .map(|i| item(&i.to_string(), "GET", "/file/x"))
        .collect();
    client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    let items = (0..6)
        .map(|i| item(&i.to_string(), "GET", "/file/y"))
        .collect();
    client::post_json(gate.addr, "/v2/flaky", &batch(items)).await;
    scrape_until(
        gate.admin,
        Duration::from_secs(5),
        "both batches counted",
        |s| s.sum("batchgate_batches_total", &[]) >= 2.0,
    )
    .await;
    gate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_routes_upstreams_and_the_config() {
    let upstream = Upstream::echo().await;
    let gate = busy_gate(&upstream).await;
    let resp = client::get(gate.admin, "/status.json").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let status: Value = serde_json::from_slice(&resp.body).expect("JSON");
    let route = |name: &str| {
        status["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("route {name}: {status}"))
    };
    let pds = route("pds");
    assert_eq!(pds["path"], "/v2/batch");
    assert_eq!(pds["dialect"], "envelope");
    assert_eq!(pds["batches"]["ok"], 1, "{pds}");
    assert_eq!(pds["items"], 3, "{pds}");
    let flaky = status["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "flaky"))
        .expect("the flaky upstream");
    let states: Vec<&str> = flaky["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a["state"].as_str().expect("a state"))
        .collect();
    assert_eq!(states, ["up", "ejected"], "{flaky}");
    assert_eq!(status["in_flight"]["batches"], 0);
    assert_eq!(status["listeners"][0], gate.addr.to_string());
    let sha = status["config"]["sha256"].as_str().expect("the config sha");
    assert_eq!(sha.len(), 64);
    assert!(status["config"]["loaded_at"].as_f64().expect("loaded_at") > 1.7e9);
}

/// Headless Chromium loads `/status`, runs its script (which fetches `/status.json`) and
/// shows the live numbers: the route's batch count, the ejected address, the config sha; the
/// screenshot is a real rendering. The page loads nothing from elsewhere (its CSP says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_live_numbers_in_headless_chromium() {
    let Some(chromium) = require_tool("chromium", "apt-get install chromium") else {
        return;
    };
    let upstream = Upstream::echo().await;
    let gate = busy_gate(&upstream).await;
    let page = client::get(gate.admin, "/status").await;
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.starts_with("default-src 'none'")));
    let status: Value =
        serde_json::from_slice(&client::get(gate.admin, "/status.json").await.body).expect("JSON");
    let sha = status["config"]["sha256"]
        .as_str()
        .expect("sha")
        .to_string();

    let dir = std::env::temp_dir().join(format!("batchgate-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("profile dir");
    let url = format!("http://{}/status", gate.admin);
    let browse = |extra: Vec<String>| {
        let dir = dir.clone();
        let chromium = chromium.clone();
        let url = url.clone();
        async move {
            let run = tokio::process::Command::new(&chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--virtual-time-budget=3000",
                    "--window-size=1280,900",
                ])
                .arg(format!("--user-data-dir={}", dir.display()))
                .args(extra)
                .arg(&url)
                .kill_on_drop(true)
                .output();
            tokio::time::timeout(Duration::from_secs(90), run)
                .await
                .expect("chromium finished within 90 s")
                .expect("chromium ran")
        }
    };
    let dom = browse(vec!["--dump-dom".into()]).await;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let row = |marker: &str| {
        let start = dom
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker}: {dom}"));
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        dom[start..end].to_string()
    };
    let pds = row(r#"data-route="pds""#);
    assert!(
        pds.contains("<td>/v2/batch</td><td>envelope</td><td>api</td><td class=\"n\">1</td>"),
        "the route's ok batches, rendered: {pds}"
    );
    assert!(pds.ends_with(r#"<td class="n">3</td>"#), "its items: {pds}");
    let dead = status["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "flaky"))
        .and_then(|u| u["addresses"][1]["address"].as_str())
        .expect("the dead address")
        .to_string();
    let ejected = row(&format!(r#"data-address="{dead}""#));
    assert!(
        ejected.contains(r#"<td class="ejected">ejected</td>"#),
        "{ejected}"
    );
    assert!(
        dom.contains(&format!(r#"<code id="sha">{}</code>"#, &sha[..12])),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span id="error"></span>"#),
        "no failed refresh: {dom}"
    );
    assert!(
        !dom.contains(r#"<span id="refreshed">never</span>"#),
        "the script ran: {dom}"
    );

    let shot = dir.join("status.png");
    let out = browse(vec![format!("--screenshot={}", shot.display())]).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a rendered page, not a blank one: {} bytes",
        png.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
