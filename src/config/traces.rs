//! Validation of `[tracing]`: where finished spans are exported (OTLP/HTTP), which share of
//! new traces is recorded, and the bound of the export queue.

use super::file::TracingSection;
use super::problems::Problems;
use std::time::Duration;

/// `[tracing]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The full OTLP/HTTP traces URL (`.../v1/traces`).
    pub endpoint: String,
    /// Share of new traces recorded (a remote parent's decision is followed).
    pub sampling_ratio: f64,
    /// A client's sampled flag decides for its batch (`false`: `sampling_ratio` decides for
    /// every trace, so clients cannot make batchgate record theirs).
    pub follow_client_sampling: bool,
    pub service_name: String,
    /// Finished spans waiting for export at most.
    pub max_queued_spans: usize,
    pub export_timeout: Duration,
}

const DEFAULT_MAX_QUEUED_SPANS: usize = 2048;
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn tracing_config(
    section: Option<&TracingSection>,
    problems: &mut Problems,
) -> Option<TracingConfig> {
    let section = section?;
    let at = |key: &'static str| ["tracing", key];
    let endpoint = match endpoint(&section.otlp_endpoint) {
        Ok(endpoint) => endpoint,
        Err(why) => {
            problems.push(&at("otlp_endpoint"), why);
            String::new()
        }
    };
    let sampling_ratio = section.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        problems.push(
            &at("sampling_ratio"),
            format!("{sampling_ratio} is not between 0 and 1"),
        );
    }
    let service_name = section
        .service_name
        .clone()
        .unwrap_or_else(|| "batchgate".to_string());
    if service_name.is_empty() || service_name.len() > 128 {
        problems.push(&at("service_name"), "must be 1 to 128 characters");
    }
    let max_queued_spans = super::values::bounded(
        section.max_queued_spans,
        DEFAULT_MAX_QUEUED_SPANS,
        1,
        1_000_000,
        &at("max_queued_spans"),
        problems,
    );
    let export_timeout = super::values::duration(
        &section.export_timeout,
        DEFAULT_EXPORT_TIMEOUT,
        &at("export_timeout"),
        problems,
    );
    if export_timeout > Duration::from_secs(60) {
        problems.push(&at("export_timeout"), "at most \"60s\"");
    }
    let follow_client_sampling = super::values::flag(
        section.follow_client_sampling,
        true,
        &at("follow_client_sampling"),
        problems,
    );
    Some(TracingConfig {
        endpoint,
        sampling_ratio,
        follow_client_sampling,
        service_name,
        max_queued_spans,
        export_timeout,
    })
}

/// The traces URL: `http://HOST:PORT` gets OTLP's `/v1/traces`; a URL with a path is kept.
/// Plain HTTP only: the exporter carries no TLS (a local collector forwards with TLS).
fn endpoint(text: &str) -> Result<String, String> {
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(if text.starts_with("https://") {
            format!("{text:?}: https is not supported; export to a collector on this host or network over http (it forwards with TLS)")
        } else {
            format!("{text:?} is not an http:// URL (e.g. \"http://127.0.0.1:4318\")")
        });
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let usable = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if !usable {
        return Err(format!("{text:?} is not an http://HOST:PORT[/PATH] URL"));
    }
    Ok(if path.is_empty() {
        format!("http://{authority}/v1/traces")
    } else {
        text.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_get_the_traces_path_unless_they_have_one() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            endpoint("http://c/otlp/v1/traces").unwrap(),
            "http://c/otlp/v1/traces"
        );
        for bad in [
            "https://c:4318",
            "c:4318",
            "http://",
            "http://a b",
            "http://c/x?y",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
