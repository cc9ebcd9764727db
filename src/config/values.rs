//! Checks for single values shared by every section: bounded integers, durations, paths and
//! header names.
//!
//! Each check reports its own problem under the key path it is given and returns a usable
//! default, so validation keeps going and the operator sees every mistake at once.

use super::runtime::Problems;
use http::header::HeaderName;
use std::time::Duration;

/// `value` if it lies in `min..=max`, else `default` and a problem naming the range.
pub(super) fn bounded(
    value: Option<i64>,
    default: usize,
    min: i64,
    max: i64,
    path: &[&str],
    problems: &mut Problems,
) -> usize {
    match value {
        None => default,
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

/// A positive duration such as `"250ms"`, or `default` when the key is absent.
pub(super) fn duration(
    value: &Option<String>,
    default: Duration,
    path: &[&str],
    problems: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(text) => match parse_duration(text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                problems.push(
                    path,
                    format!(
                        "{text:?} is not a positive duration (e.g. \"250ms\", \"10s\", \"2m\")"
                    ),
                );
                default
            }
        },
    }
}

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
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
    Duration::try_from_secs_f64(seconds).ok()
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

/// `names` (or `default` when the key is absent) as header names; each invalid one is a
/// problem at `path[index]`.
pub(super) fn header_names(
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
        None => default.to_vec(),
    };
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => {
                let mut p: Vec<&str> = path.to_vec();
                let j = j.to_string();
                p.push(&j);
                problems.push(&p, format!("{name:?} is not a header name"));
            }
        }
    }
    out
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
}
