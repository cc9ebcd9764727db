//! The configurable shape of a whole-request error body (`error_format` on envelope and
//! fanout routes): a small JSON template, checked once when the config is loaded.

use super::file::RouteSection;
use super::problems::Problems;
use bytes::Bytes;

/// The JSON shape of a whole-request error, from a small template such as
/// `{"error_code":"{code}","error_msg":"{message}"}`. `{code}` and `{message}` are replaced
/// by the JSON-escaped text (without quotes), so the template keeps its own quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFormat {
    template: String,
}

/// PDS style, the envelope default.
pub const PDS_ERROR_FORMAT: &str = r#"{"code":"{code}","message":"{message}"}"#;
/// Huawei Cloud style, the fanout default.
pub const HUAWEI_ERROR_FORMAT: &str = r#"{"error_code":"{code}","error_msg":"{message}"}"#;

impl ErrorFormat {
    /// Checks that the template renders to a JSON object and mentions `{message}`.
    pub fn new(template: &str) -> Result<Self, String> {
        let format = ErrorFormat {
            template: template.to_string(),
        };
        if !template.contains("{message}") {
            return Err("the template must contain {message}".to_string());
        }
        let sample = format.render("Code\"\\", "a \"quoted\" message\n");
        match serde_json::from_slice::<serde_json::Value>(&sample) {
            Ok(value) if value.is_object() => Ok(format),
            _ => Err(format!(
                "the template must render to a JSON object, got {}",
                String::from_utf8_lossy(&sample)
            )),
        }
    }

    /// Renders the error body.
    pub fn render(&self, code: &str, message: &str) -> Bytes {
        let escape = |text: &str| {
            let quoted = serde_json::Value::from(text).to_string();
            quoted
                .get(1..quoted.len().saturating_sub(1))
                .unwrap_or_default()
                .to_string()
        };
        Bytes::from(
            self.template
                .replace("{code}", &escape(code))
                .replace("{message}", &escape(message)),
        )
    }
}

impl Default for ErrorFormat {
    fn default() -> Self {
        ErrorFormat {
            template: PDS_ERROR_FORMAT.to_string(),
        }
    }
}

/// A route's `error_format`, or `default`; a template that does not check is a problem.
pub(super) fn error_format(
    section: &RouteSection,
    i: &str,
    default: &str,
    problems: &mut Problems,
) -> ErrorFormat {
    let template = section.error_format.as_deref().unwrap_or(default);
    ErrorFormat::new(template).unwrap_or_else(|why| {
        problems.push(&["routes", i, "error_format"], why);
        ErrorFormat::default()
    })
}
