//! Reading batchgate's `/metrics`: a small parser for the Prometheus text format (metric
//! name, labels, value; comments and timestamps skipped) and lookups over one scrape.
//!
//! Also the helpers the Prometheus-backed tests share: finding the `prometheus` / `promtool`
//! binaries (skip locally, fail under `CI=true`) and the dashboard JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format. Panics (with the line) on a line it cannot read, so
/// a malformed exposition fails the test instead of being skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
        .collect()
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = parse_value(value_text)?;
    // An optional timestamp may follow; nothing else may.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.clone(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("bad value {text:?}: {e}")),
    }
}

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn from_text(text: String) -> Scrape {
        let samples = parse(&text);
        Scrape { text, samples }
    }

    /// The value of the sample `name` whose labels are exactly `labels`, if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], panicking with the family's samples when it is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; samples of {name}: {:?}",
                self.samples
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| (&s.labels, s.value))
                    .collect::<Vec<_>>()
            )
        })
    }

    /// Sum of the samples `name` whose labels include every pair in `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every (sample name, label set) pair: the series this scrape exposes.
    pub fn series(&self) -> BTreeSet<(String, Vec<(String, String)>)> {
        self.samples
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    /// Number of distinct label sets per sample name.
    pub fn label_sets_per_name(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (name, _) in self.series() {
            *out.entry(name).or_insert(0) += 1;
        }
        out
    }
}

/// `GET http://{admin}/metrics`; asserts a 200 with the Prometheus text content type.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let resp = client::get(admin, "/metrics").await;
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body_str());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content-type of /metrics: {ct:?}"
    );
    Scrape::from_text(resp.body_str().to_string())
}

/// Scrapes until `done` holds (every 20 ms, at most `timeout`) and returns that scrape;
/// panics with `what` and the last scrape's text otherwise. Batch metrics are recorded in
/// pingora's logging phase, just after the reply is written, so a client can see its reply
/// a moment before the counters move.
pub async fn scrape_until(
    admin: SocketAddr,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(admin).await;
        if done(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: not reached within {timeout:?}; last scrape:\n{}",
                s.text
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by relative path.
pub fn repo_file(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// Finds `name` on `PATH`; missing, `common::missing` decides (fail under CI, else skip).
pub fn require_tool(name: &str, install_hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.or_else(|| {
        super::missing(
            &format!("`{name}` on PATH"),
            &format!("install it with `{install_hint}`"),
        )
    })
}

/// The Grafana dashboard as JSON.
pub fn dashboard() -> serde_json::Value {
    let path = repo_file("conf/grafana/batchgate.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel of the dashboard, panels nested in rows included.
pub fn panels(dashboard: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
        out.push(p);
    }
    out
}
