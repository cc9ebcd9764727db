//! The fan-out's inputs: the outer request's parameters, JSON body members first, then the
//! percent-decoded query string.

use super::super::{BatchRequest, Rejection, RejectionKind};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The outer request's parameters: JSON body members first, then the query string.
/// Body members are kept as their JSON text, so a numeric id keeps the spelling the client
/// wrote (`12345678901234567890123` must not become `1.2345678901234568e22`).
#[derive(Debug)]
pub(super) struct Params<'a> {
    body: Option<HashMap<String, &'a RawValue>>,
    /// Percent-decoded pairs; `None` for a value that is not UTF-8 once decoded.
    query: Vec<(String, Option<String>)>,
}

const NOT_UTF8: &str = "must be UTF-8 once percent-decoded";

impl<'a> Params<'a> {
    pub(super) fn read(request: &BatchRequest<'a>) -> Result<Self, Rejection> {
        let body = super::super::strip_bom(request.body.trim_ascii()).trim_ascii();
        let body = if body.is_empty() {
            None
        } else {
            let malformed = |detail: String| {
                Rejection::new(
                    RejectionKind::ParseError,
                    "MalformedBody",
                    format!("the body must be a JSON object{detail}"),
                )
            };
            if !body.starts_with(b"{") {
                return Err(malformed(String::new()));
            }
            let members: HashMap<String, &'a RawValue> =
                serde_json::from_slice(body).map_err(|e| malformed(format!(": {e}")))?;
            Some(members)
        };
        Ok(Params {
            body,
            query: parse_query(request.query.unwrap_or("")),
        })
    }

    /// A body member, unless absent or `null` (Jackson, Newtonsoft and friends write unset
    /// optional fields as `null`; that means "not given", not "invalid").
    pub(super) fn member(&self, name: &str) -> Option<&'a RawValue> {
        self.body
            .as_ref()
            .and_then(|b| b.get(name).copied())
            .filter(|raw| raw.get() != "null")
    }

    /// One parameter as text: a JSON string or number in the body, else the last query value.
    pub(super) fn value(&self, name: &str) -> Result<Option<String>, String> {
        if let Some(raw) = self.member(name) {
            return scalar(raw)
                .map(Some)
                .ok_or_else(|| "must be a string".to_string());
        }
        match self.query.iter().rev().find(|(k, _)| k == name) {
            Some((_, Some(value))) => Ok(Some(value.clone())),
            Some((_, None)) => Err(NOT_UTF8.to_string()),
            None => Ok(None),
        }
    }

    /// A list parameter: a JSON array in the body, or repeated / comma-separated query values.
    pub(super) fn list(&self, name: &str) -> Result<Vec<String>, String> {
        if let Some(raw) = self.member(name) {
            let not_list = || "must be a list of strings".to_string();
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| not_list())?;
            return items
                .into_iter()
                .map(|item| scalar(item).ok_or_else(not_list))
                .collect();
        }
        let bracketed = format!("{name}[]");
        let mut ids = Vec::new();
        for (_, value) in self
            .query
            .iter()
            .filter(|(k, _)| *k == name || *k == bracketed)
        {
            let value = value.as_deref().ok_or_else(|| NOT_UTF8.to_string())?;
            ids.extend(
                value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(ids)
    }
}

/// A JSON string (unescaped) or number (exactly as written) as text.
fn scalar(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str(text).ok(),
        Some(b'-' | b'0'..=b'9') => Some(text.to_string()),
        _ => None,
    }
}

/// `a=1&b=x%2Fy&c=+` → pairs, percent- and plus-decoded (form encoding). A value that is not
/// UTF-8 once decoded is kept as `None` rather than patched with U+FFFD, which would
/// silently turn `%FF` into a different id; it is refused only if the route reads it.
fn parse_query(query: &str) -> Vec<(String, Option<String>)> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|text| text.into_owned())
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).unwrap_or_else(|| key.to_string());
            (key, decode(value))
        })
        .collect()
}
