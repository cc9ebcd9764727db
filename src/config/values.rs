//! Checks for single values shared by every section: bounded integers, durations, paths and
//! header names.
//!
//! Each check reports its own problem under the key path it is given and returns a usable
//! default, so validation keeps going and the operator sees every mistake at once.

use super::problems::Problems;
use crate::guard::HeaderGuard;
use http::header::HeaderName;
use std::time::Duration;

/// `value` if it lies in `min..=max`, else `default` and a problem naming the range.
/// `bounded` for a value where zero is meaningless: at least 1 by its type.
pub(super) fn bounded_nonzero(
    value: Option<i64>,
    default: std::num::NonZeroUsize,
    max: i64,
    path: &[&str],
    problems: &mut Problems,
) -> std::num::NonZeroUsize {
    let n = bounded(value, default.get(), 1, max, path, problems);
    std::num::NonZeroUsize::new(n).unwrap_or(default)
}

pub(super) fn bounded(
    value: Option<i64>,
    default: usize,
    min: i64,
    max: i64,
    path: &[&str],
    problems: &mut Problems,
) -> usize {
    match value {
        None => {
            problems.filled(path, i64::try_from(default).unwrap_or(i64::MAX));
            default
        }
        Some(v) if (min..=max).contains(&v) => usize::try_from(v).unwrap_or(default),
        Some(v) => {
            let range = if max == i64::MAX {
                format!("{min}..")
            } else {
                format!("{min}..={max}")
            };
            problems.push(path, format!("{v} is not allowed ({range})"));
            default
        }
    }
}

/// `value`; when it is absent, `default` is recorded as what stands for it (`check --print`).
pub(super) fn noted<T>(
    value: Option<T>,
    default: impl Into<toml_edit::Value>,
    path: &[&str],
    problems: &mut Problems,
) -> Option<T> {
    if value.is_none() {
        problems.filled(path, default);
    }
    value
}

/// A switch: `value`, else `default` (recorded for `check --print`).
pub(super) fn flag(
    value: Option<bool>,
    default: bool,
    path: &[&str],
    problems: &mut Problems,
) -> bool {
    value.unwrap_or_else(|| {
        problems.filled(path, default);
        default
    })
}

/// HTTP methods written in upper case (`"GET"`), each wrong one a problem at `path[j]`.
pub(super) fn upper_case_methods(
    names: &[String],
    path: &[&str],
    problems: &mut Problems,
) -> Vec<http::Method> {
    let mut methods = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match http::Method::from_bytes(name.as_bytes()) {
            Ok(m) if name.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(m),
            _ => {
                let j = j.to_string();
                let mut at = path.to_vec();
                at.push(&j);
                problems.push(&at, format!("{name:?} is not an upper-case HTTP method"));
            }
        }
    }
    methods
}

/// Longest duration any key accepts. Deadlines are `Instant + duration`, which panics on
/// overflow, so an absurd value (`"3000000000000000h"`) must fail `check`, not every batch.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A positive duration of at most `MAX_DURATION` such as `"250ms"`, or `default` when the
/// key is absent.
pub(super) fn duration(
    value: &Option<String>,
    default: Duration,
    path: &[&str],
    problems: &mut Problems,
) -> Duration {
    let Some(text) = value else {
        problems.filled(path, duration_text(default));
        return default;
    };
    match parse_seconds(text) {
        Some(seconds) if seconds > MAX_DURATION.as_secs_f64() => {
            problems.push(path, format!("{text:?} is too long (at most \"24h\")"));
            default
        }
        Some(seconds) => match Duration::try_from_secs_f64(seconds) {
            Ok(d) if !d.is_zero() => d,
            _ => not_positive(text, path, problems, default),
        },
        None => not_positive(text, path, problems, default),
    }
}

fn not_positive(text: &str, path: &[&str], problems: &mut Problems, default: Duration) -> Duration {
    problems.push(
        path,
        format!("{text:?} is not a positive duration (e.g. \"250ms\", \"10s\", \"2m\")"),
    );
    default
}

/// A `duration` in whole seconds (`"1s"`, `"2m"`; not `"500ms"` or `"1.5s"`), for the
/// settings pingora takes as a number of seconds, which would silently truncate the rest.
pub(super) fn whole_seconds(
    value: &Option<String>,
    default: Duration,
    path: &[&str],
    problems: &mut Problems,
) -> Duration {
    let before = problems.0.len();
    let d = duration(value, default, path, problems);
    if problems.0.len() == before && d.subsec_nanos() != 0 {
        let text = value.as_deref().unwrap_or_default();
        problems.push(
            path,
            format!("{text:?} must be whole seconds, e.g. \"1s\" (pingora counts this setting in seconds)"),
        );
        return default;
    }
    d
}

/// A duration as the file writes it, in the largest unit that holds it whole: `"250ms"`,
/// `"10s"`, `"2m"`, `"1h"` (`parse_duration` reads it back exactly).
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => format!("{}ms", ms.max(1)),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(parse_seconds(text)?).ok()
}

/// The seconds `"250ms"`, `"10s"`, `"1.5s"`, `"2m"` or `"1h"` stands for, however large.
fn parse_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    seconds.is_finite().then_some(seconds)
}

/// An absolute path, optionally with a query: visible ASCII, no fragment.
pub(super) fn is_target(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    is_route_path(path) && !target.contains('#')
}

/// An absolute path with only visible ASCII and no query or fragment.
pub(super) fn is_route_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'\\')
}

/// `names` (or `default` when the key is absent) as names of headers copied from the client's
/// request into every sub-request; each invalid one, and each the item header guard refuses
/// (framing, proxy-owned, overrides: `HeaderGuard::refuses_name`), is a problem at
/// `path[index]`.
pub(super) fn forwarded_header_names(
    names: Option<&[String]>,
    default: &[&str],
    path: &[&str],
    problems: &mut Problems,
) -> Vec<HeaderName> {
    let owned: Vec<String>;
    let names: Vec<&str> = match names {
        Some(list) => {
            owned = list.to_vec();
            owned.iter().map(String::as_str).collect()
        }
        None => {
            problems.filled(path, default.iter().copied().collect::<toml_edit::Array>());
            default.to_vec()
        }
    };
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let mut p: Vec<&str> = path.to_vec();
        let j = j.to_string();
        p.push(&j);
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if let Some(why) = unforwardable(name, &h) {
                    problems.push(&p, why);
                } else {
                    out.push(h);
                }
            }
            Err(_) => problems.push(&p, format!("{name:?} is not a header name")),
        }
    }
    out
}

/// Why the client's value of header `name` may not be copied upstream, as a config message
/// (`"x-forwarded-for" is set by the proxy and cannot be forwarded`); `None` when it may.
pub(super) fn unforwardable(name: &str, header: &HeaderName) -> Option<String> {
    HeaderGuard::refuses_name(header).map(|why| format!("{name:?} {why} and cannot be forwarded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    fn check(
        f: fn(&Option<String>, Duration, &[&str], &mut Problems) -> Duration,
        text: &str,
    ) -> Result<Duration, String> {
        let mut problems = Problems::default();
        let d = f(
            &Some(text.to_string()),
            Duration::from_secs(7),
            &["k"],
            &mut problems,
        );
        match problems.0.as_slice() {
            [] => Ok(d),
            [p] => {
                assert_eq!(p.path, ["k"]);
                assert_eq!(
                    d,
                    Duration::from_secs(7),
                    "a refused value gives the default"
                );
                Err(p.message.clone())
            }
            more => panic!("{more:?}"),
        }
    }

    /// `Instant + duration` panics on overflow: absurd durations are config problems.
    #[test]
    fn durations_are_capped_at_a_day() {
        assert_eq!(check(duration, "24h"), Ok(MAX_DURATION));
        assert_eq!(check(duration, "1440m"), Ok(MAX_DURATION));
        assert_eq!(check(duration, "250ms"), Ok(Duration::from_millis(250)));
        for text in [
            "24.001h",
            "86401s",
            "3000000000000000h",
            "99999999999999999999999999999999h",
        ] {
            let message = check(duration, text).expect_err(text);
            assert!(
                message.contains("too long (at most \"24h\")"),
                "{text}: {message}"
            );
        }
        for text in ["0s", "0ms", "soon", "", "1e3s"] {
            let message = check(duration, text).expect_err(text);
            assert!(
                message.contains("not a positive duration"),
                "{text}: {message}"
            );
        }
    }

    /// pingora takes the grace periods in seconds: `.as_secs()` would turn "500ms" into 0.
    #[test]
    fn whole_seconds_refuses_fractions() {
        assert_eq!(check(whole_seconds, "1s"), Ok(Duration::from_secs(1)));
        assert_eq!(check(whole_seconds, "2000ms"), Ok(Duration::from_secs(2)));
        assert_eq!(check(whole_seconds, "0.5m"), Ok(Duration::from_secs(30)));
        for text in ["500ms", "1.5s", "1001ms"] {
            let message = check(whole_seconds, text).expect_err(text);
            assert!(
                message.contains("whole seconds, e.g. \"1s\""),
                "{text}: {message}"
            );
        }
        let message = check(whole_seconds, "25h").expect_err("too long");
        assert!(message.contains("too long"), "{message}");
    }
}
