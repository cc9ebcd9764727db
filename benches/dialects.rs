//! Micro-benchmarks of the per-item hot paths: decode and encode for each dialect at 1, 10 and
//! 100 items with realistic bodies (the seed examples, 1 KiB child bodies), the url/header
//! guards, and metric recording. Throughput is per item, so criterion reports time per item.
//!
//! Run: `cargo bench --bench dialects` (results and machine in docs/PERFORMANCE.md).

use batchgate::config::{Config, DialectConfig};
use batchgate::dialect::envelope::Envelope;
use batchgate::dialect::fanout::Fanout;
use batchgate::dialect::jsonrpc::JsonRpc;
use batchgate::dialect::meta::Meta;
use batchgate::dialect::multipart::Multipart;
use batchgate::dialect::{BatchRequest, Dialect, Outcome, Planned, UpstreamResponse};
use batchgate::guard::{HeaderGuard, UrlGuard};
use batchgate::metrics::RouteMetrics;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use std::hint::black_box;
use std::time::Duration;

const SIZES: &[usize] = &[1, 10, 100];

fn config() -> Config {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/batchgate.toml"))
        .expect("conf/batchgate.toml");
    let text = text.replace("allowed_url_prefixes = [\"/file/\"]", "");
    text.parse().expect("valid config")
}

/// A JSON value of about 1 KiB.
fn kib_json() -> String {
    let filler = "x".repeat(1000);
    format!(r#"{{"domain_id":"1","drive_id":"1","file_id":"9520943DC264","note":"{filler}"}}"#)
}

fn envelope_body(n: usize) -> Bytes {
    let child = kib_json();
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id":"{i:016x}","method":"POST","url":"/file/get","headers":{{"Content-Type":"application/json"}},"body":{child}}}"#))
        .collect();
    Bytes::from(format!(
        r#"{{"resource":"file","requests":[{}]}}"#,
        items.join(",")
    ))
}

fn jsonrpc_body(n: usize) -> Bytes {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"jsonrpc":"2.0","params":["467e","/house{i}"],"method":"makeDir","id":{i}}}"#
            )
        })
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

fn response(body: String) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "date",
        HeaderValue::from_static("Wed, 25 Nov 2026 14:25:01 GMT"),
    );
    Outcome::Response(UpstreamResponse {
        status: 200,
        headers,
        body: Bytes::from(body),
    })
}

#[allow(clippy::too_many_arguments)] // a bench table row: each argument is one column
fn bench_dialect<D: Dialect>(
    c: &mut Criterion,
    name: &str,
    content_type: &'static str,
    dialect: &D,
    body: impl Fn(usize) -> Bytes,
    query: impl Fn(usize) -> Option<String>,
    reply: impl Fn(usize) -> String,
) {
    let mut group = c.benchmark_group(name);
    let mut headers = HeaderMap::new();
    headers.insert("x-auth-token", HeaderValue::from_static("token"));
    headers.insert("content-type", HeaderValue::from_static(content_type));
    for &n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let body = body(n);
        let query = query(n);
        let request = BatchRequest {
            path: "/",
            authority: None,
            method: &Method::POST,
            query: query.as_deref(),
            headers: &headers,
            body: &body,
        };
        group.bench_with_input(BenchmarkId::new("decode", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    dialect
                        .decode(black_box(&request))
                        .map(|p| p.items.len())
                        .unwrap_or(0),
                )
            })
        });
        let outcomes: Vec<Outcome> = (0..n).map(|i| response(reply(i))).collect();
        group.bench_with_input(BenchmarkId::new("encode", n), &n, |b, _| {
            b.iter_batched(
                || {
                    (
                        dialect.decode(&request).map(|p| p.meta).unwrap_or_default(),
                        outcomes.clone(),
                    )
                },
                |(meta, outcomes)| black_box(dialect.encode(meta, outcomes).body.len()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn dialects(c: &mut Criterion) {
    let config = config();
    for route in &config.routes {
        match &route.dialect {
            DialectConfig::Envelope(e) => {
                let d = Envelope {
                    config: e.clone(),
                    max_items: 1000,
                };
                let child = kib_json();
                bench_dialect(
                    c,
                    "envelope",
                    "application/json",
                    &d,
                    envelope_body,
                    |_| None,
                    |_| child.clone(),
                );
            }
            DialectConfig::JsonRpc(j) => {
                let d = JsonRpc {
                    config: j.clone(),
                    max_items: 1000,
                    upstream: "api".into(),
                };
                bench_dialect(
                    c,
                    "jsonrpc",
                    "application/json",
                    &d,
                    jsonrpc_body,
                    |_| None,
                    |i| format!(r#"{{"jsonrpc":"2.0","result":0,"id":{i}}}"#),
                );
            }
            DialectConfig::Fanout(f) => {
                let d = Fanout {
                    config: f.clone(),
                    max_items: 1000,
                };
                let ids = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
                bench_dialect(
                    c,
                    "fanout",
                    "application/json",
                    &d,
                    |_| Bytes::new(),
                    move |n| Some(format!("group_id=1&accessory_ids={}", ids(n))),
                    |i| format!(r#"{{"url":"https://files.example/1/{i}"}}"#),
                );
            }
            // Not in conf/batchgate.toml; benched from conf/examples below.
            DialectConfig::Multipart(_) | DialectConfig::Meta(_) | DialectConfig::Single(_) => {}
        }
    }
    multipart(c);
    meta(c);
}

/// The Meta route of conf/examples/meta.toml: 50 form-encoded items, plain and with 10 of
/// them referring to the first item's answer (`{result=first:$.id}` in the url): decode,
/// finish every item against the answers (what the executor does when an item's turn
/// comes), encode. The pair is issue 29's "references cost within 15 % per item".
fn meta(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/meta.toml"
    ))
    .expect("conf/examples/meta.toml");
    let config: Config = text.parse().expect("valid config");
    let Some(DialectConfig::Meta(m)) = config.routes.first().map(|r| &r.dialect) else {
        panic!("meta.toml has a meta route first");
    };
    let d = Meta {
        config: m.clone(),
        max_items: 50,
    };
    let batch = |references: usize| {
        let items: Vec<String> = (0..50)
            .map(|i| match i {
                0 => r#"{"method":"GET","relative_url":"me?fields=id,name","name":"first"}"#
                    .to_string(),
                i if i <= references => format!(
                    r#"{{"method":"GET","relative_url":"{{result=first:$.id}}/feed?limit={i}"}}"#
                ),
                i => format!(r#"{{"method":"GET","relative_url":"4/feed?limit={i}"}}"#),
            })
            .collect();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", "EAAB-token")
            .append_pair("batch", &format!("[{}]", items.join(",")))
            .finish();
        Bytes::from(form)
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let outcomes: Vec<Outcome> = (0..50)
        .map(|i| response(format!(r#"{{"id":"4","name":"Ann","data":[{{"n":{i}}}]}}"#)))
        .collect();
    let mut group = c.benchmark_group("meta");
    group.throughput(Throughput::Elements(50));
    for (name, references) in [("plain", 0), ("references", 10)] {
        let body = batch(references);
        let request = BatchRequest {
            path: "/",
            authority: None,
            method: &Method::POST,
            query: None,
            headers: &headers,
            body: &body,
        };
        group.bench_function(BenchmarkId::new("batch_of_50", name), |b| {
            b.iter(|| {
                let plan = d.decode(black_box(&request)).expect("valid");
                let mut sent = 0;
                for item in &plan.items {
                    match item {
                        Ok(Planned::Ready(request)) => sent += request.path.len(),
                        Ok(Planned::Deferred(template)) => {
                            let finished = template.finish(&|i| outcomes.get(i));
                            sent += finished.map(|r| r.path.len()).unwrap_or(0);
                        }
                        Err(_) => {}
                    }
                }
                black_box(sent);
                black_box(d.encode(plan.meta, outcomes.clone()).body.len())
            })
        });
    }
    group.finish();
}

/// The Google batch route of conf/examples/google.toml: parts of a GET each, as
/// `BatchHttpRequest` writes them, answered with a small JSON body.
fn multipart(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/google.toml"
    ))
    .expect("conf/examples/google.toml");
    let config: Config = text.parse().expect("valid config");
    let Some(DialectConfig::Multipart(m)) = config.routes.first().map(|r| &r.dialect) else {
        panic!("google.toml has a multipart route first");
    };
    let d = Multipart {
        config: m.clone(),
        max_items: 1000,
    };
    let body = |n: usize| {
        let parts: String = (0..n)
            .map(|i| format!("--BOUNDARY\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nMIME-Version: 1.0\r\nContent-ID: <9f3c+{i}>\r\n\r\nGET /drive/v3/files/{i:016x}?fields=id%2Cname&alt=json HTTP/1.1\r\nContent-Type: application/json\r\nMIME-Version: 1.0\r\naccept: application/json\r\naccept-encoding: gzip, deflate\r\nuser-agent: (gzip)\r\nx-goog-api-client: gdcl/2.150.0 gl-python/3.11.2\r\n\r\n\r\n"))
            .collect();
        Bytes::from(format!("{parts}--BOUNDARY--\r\n"))
    };
    bench_dialect(
        c,
        "multipart",
        "multipart/mixed; boundary=BOUNDARY",
        &d,
        body,
        |_| None,
        |i| format!(r#"{{"id":"{i:016x}","name":"file {i}","kind":"drive#file"}}"#),
    );
}

fn guards(c: &mut Criterion) {
    let url = UrlGuard::new(
        "/v2".into(),
        Some(vec!["/file/".into()]),
        vec!["/v2/batch".into()],
    );
    let header = HeaderGuard;
    let mut group = c.benchmark_group("guard");
    group.throughput(Throughput::Elements(1));
    group.bench_function("url", |b| {
        b.iter(|| black_box(url.check(black_box("/file/get?drive_id=1&x=%20y")).is_ok()))
    });
    group.bench_function("header", |b| {
        b.iter(|| {
            black_box(
                header
                    .check(black_box("Content-Type"), black_box("application/json"))
                    .is_ok(),
            )
        })
    });
    group.finish();
}

fn metrics(c: &mut Criterion) {
    let Some(metrics) = RouteMetrics::new("bench", "api") else {
        return;
    };
    let outcome = response(String::new());
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record_item", |b| {
        b.iter(|| {
            metrics.permit_wait(Duration::from_micros(3));
            metrics.item_duration(Duration::from_micros(250));
            metrics.item(black_box(&outcome));
        })
    });
    group.finish();
}

/// One batch's charge against a local rate limit (the in-process table), for one client and
/// for a client among 10,000.
fn rate_limit(c: &mut Criterion) {
    use batchgate::config::rate_limit::{OnStoreError, RateLimitConfig, RateLimitStore, StoreKind};
    use batchgate::rate_limit::Limiter;
    let settings = RateLimitStore {
        redis_url: None,
        redis_timeout: Duration::from_millis(50),
        redis_key_prefix: "b:".into(),
        redis_retry_interval: Duration::from_secs(1),
        max_local_clients: 100_000,
    };
    let limiter = Limiter::new(&settings, |_, _| {});
    let config = RateLimitConfig {
        items_per_second: 1e6,
        burst: 1_000_000,
        store: StoreKind::Local,
        on_store_error: OnStoreError::FailOpen,
        weights: Default::default(),
        lease: None,
    };
    let clients: Vec<batchgate::permits::ClientId> = (0..10_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256).into())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("rate_limit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("local_charge_one_client", |b| {
        b.iter(|| runtime.block_on(limiter.charge("r", &config, &clients[0], black_box(10))))
    });
    let mut next = 0;
    group.bench_function("local_charge_10000_clients", |b| {
        b.iter(|| {
            next = (next + 1) % clients.len();
            runtime.block_on(limiter.charge("r", &config, &clients[next], black_box(10)))
        })
    });
    group.finish();
}

criterion_group!(benches, dialects, guards, metrics, rate_limit);
criterion_main!(benches);
