//! The fan-out's reply: one list element per successful part (the upstream's JSON as is, or
//! the configured fields picked out of it by JSON pointer, in config order), and for
//! `on_item_error = "include"` an error element per failed part.

use super::super::{ItemError, Outcome};
use super::Fanout;
use crate::config::{FieldSource, MissingField};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;

/// One part's list element, and how many of its fields the part's reply lacked (written as
/// `null`).
pub(super) struct Element {
    pub bytes: Vec<u8>,
    pub fields_missing: usize,
}

/// Why an answered part makes no element: the one place its status and code are decided.
enum Unusable<'a> {
    /// The upstream answered with a status other than 2xx (and the start of its body).
    Status(u16, String),
    /// The answer is not UTF-8 JSON.
    NotJson,
    /// A configured field is missing (`missing_field = "error"`), at this pointer.
    FieldMissing(&'a str),
}

impl Unusable<'_> {
    fn shown(self) -> ItemError {
        let (status, code, message) = match self {
            Unusable::Status(status, detail) => (
                status,
                "UpstreamStatus",
                format!("the upstream answered {status}: {detail}"),
            ),
            Unusable::NotJson => (
                502,
                "InvalidUpstreamReply",
                "the upstream reply is not JSON".to_string(),
            ),
            Unusable::FieldMissing(pointer) => (
                502,
                "UpstreamReplyFieldMissing",
                format!("the upstream reply has nothing at {pointer:?}"),
            ),
        };
        ItemError {
            status,
            code,
            message,
        }
    }
}

impl Fanout {
    /// The element for a successful part, or why the part failed.
    pub(super) fn element(&self, id: &str, outcome: &Outcome) -> Result<Element, ItemError> {
        let response = match outcome {
            Outcome::Response(r) if (200..300).contains(&r.status) => r,
            Outcome::Response(r) => {
                let detail =
                    String::from_utf8_lossy(r.body.get(..200).unwrap_or(&r.body)).into_owned();
                return Err(Unusable::Status(r.status, detail).shown());
            }
            Outcome::Failed(failure) => return Err(failure.http_error()),
        };
        let body = response.body.trim_ascii();
        let invalid = || Unusable::NotJson.shown();
        let body = super::super::strip_bom(body).trim_ascii();
        // The JSON check below does not look inside strings (`{"a":"\xff"}` passes it), and
        // the body is embedded as is: a reply that is not UTF-8 would make ours invalid.
        std::str::from_utf8(body).map_err(|_| invalid())?;
        let Some(fields) = &self.config.fields else {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| invalid())?;
            return Ok(Element {
                bytes: body.to_vec(),
                fields_missing: 0,
            });
        };
        let reply: &RawValue = serde_json::from_slice(body).map_err(|_| invalid())?;
        match picked_fields(fields, id, reply, body.len()) {
            Ok(element) => Ok(element),
            Err(partial) if self.config.missing_field == MissingField::Error => {
                Err(Unusable::FieldMissing(partial.pointer).shown())
            }
            Err(partial) => Ok(partial.element),
        }
    }

    /// `{"<id field>": id, "error": {"status","code","message"}}` for `on_item_error = "include"`.
    pub(super) fn error_element(&self, id: &str, failure: &ItemError) -> Vec<u8> {
        let id_field = self
            .config
            .fields
            .iter()
            .flatten()
            .find(|(_, source)| *source == FieldSource::Id)
            .map_or("id", |(name, _)| name.as_str());
        let error = serde_json::json!({"status": failure.status, "code": failure.code, "message": failure.message});
        format!(
            "{{{}:{},\"error\":{error}}}",
            Value::from(id_field),
            Value::from(id)
        )
        .into_bytes()
    }
}

/// An element with at least one field its reply lacked (written as `null`), and the first
/// such field's pointer.
struct Partial<'f> {
    element: Element,
    pointer: &'f str,
}

/// The configured fields of one element, written by hand: the fields keep the order of the
/// config file, and each value is the upstream's JSON text (number spelling and key order
/// survive). `Err` when a pointer named nothing (its field is `null` in the element).
fn picked_fields<'f>(
    fields: &'f [(String, FieldSource)],
    id: &str,
    reply: &RawValue,
    size: usize,
) -> Result<Element, Partial<'f>> {
    let mut bytes = Vec::with_capacity(size + 32);
    let mut missing: Option<&'f str> = None;
    let mut fields_missing = 0;
    bytes.push(b'{');
    for (i, (name, source)) in fields.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(Value::from(name.as_str()).to_string().as_bytes());
        bytes.push(b':');
        let value = match source {
            FieldSource::Id => Value::from(id).to_string(),
            FieldSource::Pointer(pointer) => match raw_pointer(reply, pointer) {
                Some(value) => value.get().to_string(),
                None => {
                    fields_missing += 1;
                    missing.get_or_insert(pointer);
                    "null".to_string()
                }
            },
        };
        bytes.extend_from_slice(value.as_bytes());
    }
    bytes.push(b'}');
    let element = Element {
        bytes,
        fields_missing,
    };
    match missing {
        None => Ok(element),
        Some(pointer) => Err(Partial { element, pointer }),
    }
}

/// RFC 6901 JSON pointer lookup on JSON text (`""` is the whole value); `None` when a token
/// names nothing. Like `serde_json::Value::pointer`, but the result is the original text.
pub(super) fn raw_pointer<'a>(value: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current.get().as_bytes().first() {
            Some(b'{') => {
                let members: HashMap<String, &'a RawValue> =
                    serde_json::from_str(current.get()).ok()?;
                members.get(&token).copied()?
            }
            Some(b'[') => {
                // RFC 6901: an array index is 0 or digits without a leading zero.
                if token.is_empty()
                    || (token.len() > 1 && token.starts_with('0'))
                    || !token.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let index: usize = token.parse().ok()?;
                let items: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
                items.get(index).copied()?
            }
            _ => return None,
        };
    }
    Some(current)
}
