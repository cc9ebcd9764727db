//! `stream`: the formats a route may stream its batch replies in, record by record, to a
//! client that asks for one by `Accept`, and `progressive`: the ordinary reply written as its
//! finished prefix grows, for every client (off by default: every reply is one buffered
//! body).

use super::file::RouteSection;
use super::problems::Problems;

/// A streamed reply's framing. Each record is the dialect's own item answer, on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// JSON Lines (`application/x-ndjson`, also asked for as `application/jsonl`).
    Ndjson,
    /// Server-sent events (`text/event-stream`): each record a `data:` event.
    Sse,
    /// RFC 7464 JSON text sequences (`application/json-seq`): each record after an RS byte.
    JsonSeq,
    /// The dialect's ordinary reply, byte for byte, written in request order as its finished
    /// prefix grows (no client change: asked for by nothing, given to every client).
    Progressive,
}

impl StreamFormat {
    pub const ALL: [StreamFormat; 4] = [
        StreamFormat::Ndjson,
        StreamFormat::Sse,
        StreamFormat::JsonSeq,
        StreamFormat::Progressive,
    ];

    /// The config spelling and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            StreamFormat::Ndjson => "ndjson",
            StreamFormat::Sse => "sse",
            StreamFormat::JsonSeq => "json-seq",
            StreamFormat::Progressive => "progressive",
        }
    }

    /// The reply's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            StreamFormat::Ndjson => "application/x-ndjson",
            StreamFormat::Sse => "text/event-stream",
            StreamFormat::JsonSeq => "application/json-seq",
            StreamFormat::Progressive => "application/json",
        }
    }

    /// The media types in `Accept` that ask for this format.
    pub fn media_types(self) -> &'static [&'static str] {
        match self {
            StreamFormat::Ndjson => &["application/x-ndjson", "application/jsonl"],
            StreamFormat::Sse => &["text/event-stream"],
            StreamFormat::JsonSeq => &["application/json-seq"],
            StreamFormat::Progressive => &[],
        }
    }
}

/// The dialects whose replies are a list of item answers a record can carry one by one.
const STREAMING_DIALECTS: &[&str] = &["envelope", "jsonrpc", "fanout", "meta"];

/// `stream = ["ndjson", "sse", "json-seq", "progressive"]`: the formats offered, none by
/// default; `progressive` only for the dialects whose reply is one list (envelope, jsonrpc,
/// meta), and only `progressive` for meta.
pub(super) fn stream_formats(
    section: &RouteSection,
    i: &str,
    problems: &mut Problems,
) -> Vec<StreamFormat> {
    let Some(names) = &section.stream else {
        return Vec::new();
    };
    let path = ["routes", i, "stream"];
    if !STREAMING_DIALECTS.contains(&section.dialect.as_str()) {
        problems.push(
            &path,
            format!(
                "dialect {:?} cannot stream its replies (only {})",
                section.dialect,
                STREAMING_DIALECTS.join(", ")
            ),
        );
        return Vec::new();
    }
    let mut formats = Vec::new();
    for name in names {
        match StreamFormat::ALL.into_iter().find(|f| f.name() == name) {
            Some(format) if formats.contains(&format) => {
                problems.push(&path, format!("{name:?} is listed twice"));
            }
            Some(StreamFormat::Progressive) if section.dialect == "fanout" => problems.push(
                &path,
                "\"progressive\" is not for fanout routes: the reply's X-Batch-Partial header and on_item_error = \"fail\" need every part first",
            ),
            Some(format) if section.dialect == "meta" && format != StreamFormat::Progressive => {
                problems.push(
                    &path,
                    format!("{name:?} is not for meta routes: Meta's answers carry no name to pair them by; only \"progressive\""),
                );
            }
            Some(format) => formats.push(format),
            None => problems.push(
                &path,
                format!("{name:?} is not a stream format (ndjson, sse, json-seq, progressive)"),
            ),
        }
    }
    formats
}
