//! The log subscriber: level filter, text or JSON lines on stderr, and the one library line
//! that is counted instead of logged.
//!
//! pingora logs "failed to acquire reusable stream" at ERROR when a pooled pass-through
//! connection is still held by its idle watcher, a task pingora placed on another worker
//! thread that has been told to let go but has not run yet. Nothing fails: pingora closes
//! that connection and opens a new one for the request. With one event loop per thread
//! (`work_stealing = false`) it happens about once per 500 reuses under load, so the ERROR
//! lines would drown real ones; each is counted in
//! `batchgate_passthrough_pool_reuse_races_total` and the new connection in
//! `batchgate_passthrough_upstream_requests_total{connection="new"}`.

use crate::config::{Config, LogFormat};
use std::fmt::Debug;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber: log lines filtered by `RUST_LOG` if set, else
/// `server.log_level`; and with `[tracing]`, batchgate's spans exported to OpenTelemetry
/// (filtered on their own: an item span is exported though the log level hides it).
pub fn init(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value)?,
        _ => EnvFilter::try_new(config.server.log_level.as_deref().unwrap_or("info"))?,
    };
    // Colour only on a terminal: a file or journald would keep the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let Some(tracing) = &config.tracing else {
        // No spans to export: the plain subscriber, its filter global (a span the log level
        // hides is never built).
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        let result = match config.server.log_format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .finish()
                .with(CountedLines)
                .try_init(),
            LogFormat::Text => builder.finish().with(CountedLines).try_init(),
        };
        return result.map_err(|e| anyhow::anyhow!(e));
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let lines = match config.server.log_format {
        LogFormat::Json => lines.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => lines.with_filter(filter).boxed(),
    };
    let provider = crate::traces::provider(tracing)?;
    let spans = crate::traces::layer(&provider);
    // Kept for the process's life: dropping the provider would stop the export.
    std::mem::forget(provider);
    tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .with(CountedLines)
        .try_init()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Drops the library lines that are counted instead (see the module comment).
pub struct CountedLines;

/// pingora's module and message for its pool's hand-over race.
const REUSE_RACE_TARGET: &str = "pingora_core::connectors";
const REUSE_RACE_MESSAGE: &str = "failed to acquire reusable stream";

impl<S: Subscriber> Layer<S> for CountedLines {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        if *event.metadata().level() != Level::ERROR || !is_reuse_race(event) {
            return true;
        }
        if let Some(f) = crate::metrics::families() {
            f.pool_reuse_races.inc();
        }
        false
    }
}

/// Whether `event` is pingora's reuse-race line, sent through `log` (pingora's own macros:
/// the target is then the `log.target` field) or through `tracing`.
fn is_reuse_race(event: &Event<'_>) -> bool {
    let mut seen = Seen::default();
    event.record(&mut seen);
    let target = seen
        .log_target
        .as_deref()
        .unwrap_or(event.metadata().target());
    target == REUSE_RACE_TARGET && seen.message_matches
}

#[derive(Default)]
struct Seen {
    log_target: Option<String>,
    message_matches: bool,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.log_target = Some(value.to_string()),
            "message" => self.message_matches = value == REUSE_RACE_MESSAGE,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            // `format_args!` debug-prints as its text; only a line this short can match.
            "message" => {
                let text = format!("{value:?}");
                self.message_matches = text == REUSE_RACE_MESSAGE;
            }
            "log.target" => self.log_target = Some(format!("{value:?}").trim_matches('"').into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps the message of every event that reaches it.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Kept {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut seen = Message::default();
            event.record(&mut seen);
            self.0.lock().unwrap().push(seen.0);
        }
    }

    #[derive(Default)]
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    /// An ERROR line of the `log` crate (what pingora uses), dispatched as `LogTracer` does.
    fn log_line(target: &str, message: &str) {
        tracing_log::format_trace(
            &log::Record::builder()
                .level(log::Level::Error)
                .target(target)
                .args(format_args!("{message}"))
                .build(),
        )
        .expect("dispatched");
    }

    fn races() -> u64 {
        crate::metrics::families().map_or(0, |f| f.pool_reuse_races.get())
    }

    #[test]
    fn pingoras_reuse_race_is_counted_not_logged() {
        let kept = Kept::default();
        let subscriber = tracing_subscriber::registry()
            .with(CountedLines)
            .with(kept.clone());
        let before = races();
        tracing::subscriber::with_default(subscriber, || {
            // As pingora's `log::error!` arrives through tracing-log.
            log_line(REUSE_RACE_TARGET, "failed to acquire reusable stream");
            // As a tracing event from that module.
            tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream");
            // Everything else passes: other messages, other modules, other levels.
            tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream twice");
            tracing::error!(target: "batchgate::proxy", "failed to acquire reusable stream");
            tracing::warn!(target: "pingora_core::connectors", "failed to acquire reusable stream");
            log_line("pingora_core::other", "failed to acquire reusable stream");
        });
        let kept = kept.0.lock().unwrap().clone();
        assert_eq!(kept.len(), 4, "{kept:?}");
        assert_eq!(races() - before, 2);
    }
}
