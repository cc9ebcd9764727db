//! OpenTelemetry traces (`[tracing]`) as a collector sees them: batchgate exports OTLP/HTTP
//! protobuf to a receiver started here, which decodes it with the official OpenTelemetry
//! protobuf definitions (`opentelemetry-proto`). One batch of N items is one batch span with N
//! item children, chained to the client's `traceparent`, and each upstream request carries
//! its own item span's context; pass-through requests get a span of their own; a full export
//! queue drops spans (counted) and never holds a request up.

use crate::common;

use common::batch::{batch, item, BATCH_PATH};
use common::client;
use common::config::GateConfig;
use common::gate;
use common::prom::scrape_until;
use common::upstream::{RecordedRequest, Reply, Upstream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::time::{Duration, Instant};

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: answers every export with an empty (successful) response.
async fn collector(delay_ms: u64) -> Upstream {
    Upstream::with_handler(move |_req: &RecordedRequest| {
        Reply::bytes(200, "application/x-protobuf", b"").with_delay(delay_ms)
    })
    .await
}

/// Every span the collector received, with its resource's `service.name`, decoded.
fn received(collector: &Upstream) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for request in collector.requests() {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(request.body.as_slice())
            .expect("an OTLP ExportTraceServiceRequest");
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }
    spans
}

async fn spans_until(
    collector: &Upstream,
    done: impl Fn(&[(String, Span)]) -> bool,
) -> Vec<(String, Span)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received(collector);
        if done(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "spans received: {:#?}", spans);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tracing_config(api: &Upstream, collector: &Upstream, extra: &str) -> String {
    GateConfig::new(api.addr).toml()
        + &format!(
            "\n[tracing]\notlp_endpoint = \"http://{}\"\nsampling_ratio = 1.0\n{extra}",
            collector.addr
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_span_with_a_child_per_item_chained_to_the_client_and_upstream() {
    let api = Upstream::echo().await;
    let collector = collector(0).await;
    let gate = gate::start(&tracing_config(&api, &collector, "")).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let items = (0..3)
        .map(|i| item(&i.to_string(), "GET", &format!("/file/{i}")))
        .collect();
    let resp = client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
        ],
        batch(items).to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());

    let spans = spans_until(&collector, |spans| {
        spans.iter().filter(|(_, s)| s.name == "item").count() >= 3
            && spans.iter().any(|(_, s)| s.name == "batch")
    })
    .await;
    let (service, batch_span) = spans
        .iter()
        .find(|(_, s)| s.name == "batch")
        .expect("the batch span");
    assert!(service.contains("batchgate"), "{service}");
    assert_eq!(
        hex(&batch_span.trace_id),
        CLIENT_TRACE,
        "the client's trace"
    );
    assert_eq!(
        hex(&batch_span.parent_span_id),
        CLIENT_SPAN,
        "a child of the client's span"
    );
    assert_eq!(batch_span.kind, SpanKind::Server as i32);
    let items: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "item")
        .collect();
    assert_eq!(items.len(), 3, "one span per item");
    let mut item_ids: Vec<String> = items
        .iter()
        .map(|s| {
            assert_eq!(hex(&s.trace_id), CLIENT_TRACE);
            assert_eq!(
                s.parent_span_id, batch_span.span_id,
                "items are the batch's children"
            );
            assert_eq!(s.kind, SpanKind::Client as i32);
            hex(&s.span_id)
        })
        .collect();
    item_ids.sort();

    // What the upstream received: each request under its own item span.
    let mut sent: Vec<String> = api
        .requests()
        .iter()
        .map(|r| {
            let header = r.header("traceparent").expect("a traceparent upstream");
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!(parts.len(), 4, "{header}");
            assert_eq!(
                (parts[0], parts[1], parts[3]),
                ("00", CLIENT_TRACE, "01"),
                "{header}"
            );
            parts[2].to_string()
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent, item_ids,
        "each upstream request carries its item span"
    );

    // Pass-through: a span of its own, a child of the client's, whose context goes upstream.
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let resp = client::request(
        gate.addr,
        "GET",
        "/v2/hello",
        &[("traceparent", other)],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let spans = spans_until(&collector, |spans| {
        spans.iter().any(|(_, s)| s.name == "passthrough")
    })
    .await;
    let pass = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "passthrough")
        .expect("a pass-through span");
    assert_eq!(hex(&pass.trace_id), "11111111111111111111111111111111");
    assert_eq!(hex(&pass.parent_span_id), "2222222222222222");
    let upstream_saw = api
        .requests()
        .last()
        .and_then(|r| r.header("traceparent").map(str::to_string));
    assert_eq!(
        upstream_saw,
        Some(format!(
            "00-11111111111111111111111111111111-{}-01",
            hex(&pass.span_id)
        )),
        "the pass-through request carries its span, not the client's"
    );
    let metrics = scrape_until(gate.admin, Duration::from_secs(5), "spans counted", |s| {
        s.sum("batchgate_trace_spans_total", &[("result", "exported")]) >= 5.0
    })
    .await;
    assert_eq!(
        metrics.sum("batchgate_trace_spans_total", &[("result", "dropped")]),
        0.0
    );
}

/// A collector slower than the spans arrive: the queue (one span here) fills, the rest are
/// dropped and counted, and the batch is answered as fast as without tracing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_queue_drops_and_counts_instead_of_waiting() {
    let api = Upstream::echo().await;
    let collector = collector(1500).await;
    let gate = gate::start(&tracing_config(&api, &collector, "max_queued_spans = 1\n")).await;
    let items = (0..20)
        .map(|i| item(&i.to_string(), "GET", &format!("/file/{i}")))
        .collect();
    let started = Instant::now();
    let resp = client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    assert_eq!(resp.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let metrics = scrape_until(gate.admin, Duration::from_secs(5), "drops counted", |s| {
        s.sum("batchgate_trace_spans_total", &[("result", "dropped")]) >= 1.0
    })
    .await;
    assert!(metrics.sum("batchgate_trace_spans_total", &[("result", "dropped")]) <= 21.0);
}

/// Without `[tracing]` nothing changes: the client's trace context passes through as it came
/// and items carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_trace_context_is_left_alone() {
    let api = Upstream::echo().await;
    let gate = gate::start(&GateConfig::new(api.addr).toml()).await;
    let theirs = "00-11111111111111111111111111111111-2222222222222222-01";
    client::request(
        gate.addr,
        "GET",
        "/v2/hello",
        &[("traceparent", theirs)],
        b"",
    )
    .await;
    assert_eq!(api.requests()[0].header("traceparent"), Some(theirs));
    client::post_json(
        gate.addr,
        BATCH_PATH,
        &batch(vec![item("a", "GET", "/file/a")]),
    )
    .await;
    assert_eq!(api.requests()[1].header("traceparent"), None);
}

/// `sampling_ratio = 0`: a new trace is not recorded (no spans, no item spans made), but its
/// context still goes upstream, marked not sampled; a client's sampled `traceparent` is
/// followed (parent-based), so that batch is recorded all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_traces_cost_no_spans_and_a_sampled_client_is_followed() {
    let api = Upstream::echo().await;
    let collector = collector(0).await;
    let config = tracing_config(&api, &collector, "")
        .replace("sampling_ratio = 1.0", "sampling_ratio = 0.0");
    let gate = gate::start(&config).await;
    let items = (0..2)
        .map(|i| item(&i.to_string(), "GET", "/file/x"))
        .collect();
    client::post_json(gate.addr, BATCH_PATH, &batch(items)).await;
    for request in api.requests() {
        let header = request
            .header("traceparent")
            .expect("context goes upstream");
        assert!(
            header.starts_with("00-") && header.ends_with("-00"),
            "not sampled: {header}"
        );
    }
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let items = (0..2)
        .map(|i| item(&i.to_string(), "GET", "/file/y"))
        .collect();
    client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
        ],
        batch(items).to_string().as_bytes(),
    )
    .await;
    let spans = spans_until(&collector, |spans| {
        spans.iter().filter(|(_, s)| s.name == "item").count() >= 2
    })
    .await;
    assert!(
        spans.iter().all(|(_, s)| hex(&s.trace_id) == CLIENT_TRACE),
        "only the client's sampled trace is recorded: {spans:#?}"
    );
    assert_eq!(spans.len(), 3, "its batch span and 2 items");
}

/// `follow_client_sampling = false`: a client's sampled flag does not make batchgate record
/// (the ratio, 0 here, decides), yet its trace id still goes upstream; an oversized
/// `tracestate` is not passed on, and an empty one is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_force_recording_or_inflate_tracestate_when_told_so() {
    let api = Upstream::echo().await;
    let collector = collector(0).await;
    let config = tracing_config(&api, &collector, "follow_client_sampling = false\n")
        .replace("sampling_ratio = 1.0", "sampling_ratio = 0.0");
    let gate = gate::start(&config).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let state = (0..40)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let items = (0..2)
        .map(|i| item(&i.to_string(), "GET", "/file/x"))
        .collect();
    client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", &state),
        ],
        batch(items).to_string().as_bytes(),
    )
    .await;
    for request in api.requests() {
        let header = request
            .header("traceparent")
            .expect("context goes upstream");
        assert!(
            header.starts_with(&format!("00-{CLIENT_TRACE}-")),
            "{header}"
        );
        assert!(header.ends_with("-00"), "not recorded: {header}");
        assert_eq!(
            request.header("tracestate"),
            None,
            "40 members are not passed on"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(received(&collector).is_empty(), "nothing recorded");
}

/// With `work_stealing` each item runs on a task of its own: an unsampled batch's items still
/// carry its trace context upstream (and no client-set trace header gets through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_on_their_own_tasks_keep_the_batch_context() {
    let api = Upstream::echo().await;
    let collector = collector(0).await;
    let config = tracing_config(&api, &collector, "")
        .replace("sampling_ratio = 1.0", "sampling_ratio = 0.0")
        .replacen("[server]\n", "[server]\nwork_stealing = true\n", 1);
    let gate = gate::start(&config).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let items = vec![serde_json::json!({
        "id": "1", "method": "GET", "url": "/file/x",
        "headers": {"traceparent": "00-99999999999999999999999999999999-9999999999999999-01"}
    })];
    client::request(
        gate.addr,
        "POST",
        BATCH_PATH,
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
        ],
        batch(items).to_string().as_bytes(),
    )
    .await;
    let sent = api.requests();
    let header = sent[0]
        .header("traceparent")
        .expect("context goes upstream");
    assert!(
        header.starts_with(&format!("00-{CLIENT_TRACE}-")),
        "{header}"
    );
    assert_eq!(
        sent[0].header_all("traceparent").len(),
        1,
        "only batchgate's"
    );
}
