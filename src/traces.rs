//! OpenTelemetry traces (`[tracing]`): the batch, item and pass-through spans leave the
//! process through the official OTLP/HTTP exporter, chained to the client's W3C
//! `traceparent`, and every upstream request carries its own span's context.
//!
//! Export never blocks a request: finished spans go into a bounded queue (`max_queued_spans`)
//! that a thread of its own drains in batches; a span that finds the queue full is dropped and
//! counted (`batchgate_trace_spans_total{result="dropped"}`), as are exports that fail.
//! Off (no `[tracing]`), none of this exists and requests pay one atomic load.

use crate::config::traces::TracingConfig;
use crate::metrics::{trace_spans as count, SpanResult};
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported: set once, when the subscriber is installed.
static ON: AtomicBool = AtomicBool::new(false);

/// Spans sent to the collector in one request at most.
const MAX_EXPORT_BATCH: usize = 512;
/// How long a finished span waits for companions before its batch is sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The W3C trace-context headers, which batchgate owns on upstream requests while tracing.
pub const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// The tracer provider for `config`, exporting from now on; the caller installs its layer.
pub fn provider(config: &TracingConfig) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.export_timeout)
        .with_headers(Default::default())
        .build()?;
    exporter.set_resource(&resource);
    let processor = QueueProcessor::start(exporter, config.max_queued_spans)?;
    // Deciding on the trace id alone, a batch and its items decide alike without a parent.
    let ratio = Sampler::TraceIdRatioBased(config.sampling_ratio);
    let sampler = if config.follow_client_sampling {
        Sampler::ParentBased(Box::new(ratio))
    } else {
        ratio
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    ON.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The tracing layer that turns batchgate's spans (not its events) into OpenTelemetry spans.
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("batchgate"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("batchgate")
        }))
}

/// Whether spans are exported.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Makes `span` a child of the trace context the client sent (`traceparent`, `tracestate`),
/// if it sent a valid one.
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !on() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    // A client's `tracestate` is copied onto every upstream request of the batch: one longer
    // than W3C's limits (512 bytes, 32 members) is left out, the trace kept.
    let oversized = headers
        .get_all("tracestate")
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
        > 512
        || headers
            .get_all("tracestate")
            .iter()
            .map(|v| v.as_bytes().split(|b| *b == b',').count())
            .sum::<usize>()
            > 32;
    let context = if oversized {
        use opentelemetry::trace::TraceContextExt;
        let theirs = context.span().span_context().clone();
        let kept = opentelemetry::trace::SpanContext::new(
            theirs.trace_id(),
            theirs.span_id(),
            theirs.trace_flags(),
            theirs.is_remote(),
            Default::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(kept)
    } else {
        context
    };
    use opentelemetry::trace::TraceContextExt;
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Whether the current span's trace is sampled (recorded and exported).
pub fn current_sampled() -> bool {
    use opentelemetry::trace::TraceContextExt;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .is_sampled()
}

/// The trace-context headers of the current span, for the upstream request it makes (empty
/// when tracing is off or no span is current).
pub fn current_headers() -> Vec<(HeaderName, HeaderValue)> {
    if !on() {
        return Vec::new();
    }
    headers_of(&tracing::Span::current())
}

/// The trace-context headers of `span` (without entering it: a span ends at its last exit).
pub fn headers_of(span: &tracing::Span) -> Vec<(HeaderName, HeaderValue)> {
    if !on() {
        return Vec::new();
    }
    let mut out = Out(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.0
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Out(Vec<(HeaderName, HeaderValue)>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((name, value));
        }
    }
}

/// Finished spans into a bounded queue, drained by one thread that exports them in batches.
#[derive(Debug)]
struct QueueProcessor {
    queue: SyncSender<Message>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Message {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(SyncSender<()>),
    Stop,
}

impl QueueProcessor {
    fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        bound: usize,
    ) -> anyhow::Result<QueueProcessor> {
        let (queue, spans) = sync_channel(bound);
        let worker = std::thread::Builder::new()
            .name("batchgate-traces".into())
            .spawn(move || export_loop(exporter, spans, bound.min(MAX_EXPORT_BATCH)))?;
        Ok(QueueProcessor {
            queue,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Sends a control message (waiting for room: they are rare) and waits for its answer.
    fn control(&self, message: impl FnOnce(SyncSender<()>) -> Message, timeout: Duration) {
        let (done, wait) = sync_channel(1);
        if self.queue.send(message(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                count(SpanResult::Dropped, 1)
            }
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.control(Message::Flush, Duration::from_secs(30));
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.control(Message::Flush, timeout);
        let _ = self.queue.try_send(Message::Stop);
        if let Ok(mut worker) = self.worker.lock() {
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
        Ok(())
    }
}

/// Collects spans until `batch_size` or `EXPORT_INTERVAL` after the first, exports them
/// (blocking this thread only, while the queue fills), and counts the outcome. Held at most:
/// the queue's bound, plus one batch of at most as many.
fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    spans: Receiver<Message>,
    batch_size: usize,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(batch_size);
    let mut first: Option<Instant> = None;
    let send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        match futures_executor::block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => count(SpanResult::Exported, n),
            Err(e) => {
                count(SpanResult::Failed, n);
                tracing::debug!("trace export failed: {e}");
            }
        }
    };
    loop {
        let wait = first.map_or(Duration::from_secs(3600), |t| {
            EXPORT_INTERVAL.saturating_sub(t.elapsed())
        });
        match spans.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                first.get_or_insert_with(Instant::now);
                batch.push(*span);
                if batch.len() >= batch_size {
                    send(&mut batch);
                    first = None;
                }
            }
            Ok(Message::Flush(done)) => {
                send(&mut batch);
                first = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                first = None;
            }
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                return;
            }
        }
    }
}
