//! `multipart/mixed` (RFC 2046 section 5.1.1) cut into parts, each part's MIME headers, and
//! the `application/http` request inside it. Bare LF is accepted wherever CRLF is due, as
//! real clients send it. Nothing here allocates per byte: parts are slices of the body.
//! Header lines are read by `httparse` (the same parser pingora uses), not by hand.

use super::super::{Rejection, RejectionKind};
use memchr::memmem;

/// RFC 2046: a boundary is 1 to 70 of these characters, not ending in a space.
const BOUNDARY_CHARS: &[u8] = b"'()+_,-./:=? ";

/// Most header lines in a part's MIME headers or its HTTP head (Envoy's default
/// `max_headers_count`, as for envelope items).
pub const MAX_PART_HEADERS: usize = 100;

/// Whole-batch refusal codes.
pub const CODE_BOUNDARY: &str = "InvalidArgument.Boundary";
pub const CODE_BODY: &str = "InvalidArgument.Body";
pub const CODE_PART: &str = "InvalidArgument.Part";
pub const CODE_CHANGE_SET: &str = "Unsupported.ChangeSet";

fn refuse(kind: RejectionKind, code: &'static str, message: String) -> Rejection {
    Rejection::new(kind, code, message)
}

/// The `boundary` parameter of a `multipart/mixed` Content-Type (token or quoted string),
/// checked against RFC 2046's grammar.
pub fn boundary(content_type: &[u8]) -> Result<String, Rejection> {
    let bad = |message: String| refuse(RejectionKind::InvalidParameter, CODE_BOUNDARY, message);
    let text = std::str::from_utf8(content_type)
        .map_err(|_| bad("the Content-Type is not ASCII".to_string()))?;
    let mut rest = text.split_once(';').map_or("", |(_, params)| params);
    let mut found = None;
    while !rest.trim().is_empty() {
        let (name, after) = rest.split_once('=').ok_or_else(|| {
            bad(format!(
                "the Content-Type parameter {:?} has no value",
                rest.trim()
            ))
        })?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            unquote(quoted).ok_or_else(|| {
                bad("an unterminated quoted parameter in the Content-Type".to_string())
            })?
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim_end().to_string(), &after[end..])
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            if found.is_some() {
                return Err(bad("the Content-Type names boundary twice".to_string()));
            }
            found = Some(value);
        }
        rest = next.strip_prefix(';').unwrap_or(next);
        if !next.is_empty() && !next.starts_with(';') {
            return Err(bad("text after a quoted Content-Type parameter".to_string()));
        }
    }
    let boundary = found.ok_or_else(|| {
        bad("the multipart/mixed Content-Type has no boundary parameter".to_string())
    })?;
    let valid = (1..=70).contains(&boundary.len())
        && !boundary.ends_with(' ')
        && boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || BOUNDARY_CHARS.contains(&b));
    if valid {
        Ok(boundary)
    } else {
        Err(bad(format!(
            "boundary {boundary:?} is not 1 to 70 of the characters RFC 2046 allows"
        )))
    }
}

/// A quoted string's value (after its opening quote) and the text after its closing quote.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, text[i + 1..].trim_start())),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// Part limits of one route.
#[derive(Debug, Clone, Copy)]
pub struct PartLimits {
    pub max_parts: usize,
    pub max_part_bytes: usize,
}

/// The body cut at its boundaries: each part's bytes (MIME headers, blank line, content)
/// without the line break that belongs to the next delimiter. Preamble and epilogue are
/// ignored (RFC 2046); a body without its closing delimiter is refused, since a truncated
/// batch must not run as a shorter one.
pub fn split<'b>(
    body: &'b [u8],
    boundary: &str,
    limits: PartLimits,
) -> Result<Vec<&'b [u8]>, Rejection> {
    let bad = |message: String| refuse(RejectionKind::ParseError, CODE_BODY, message);
    let delimiter = format!("--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut at = next_delimiter(body, 0, &finder, delimiter.len())
        .ok_or_else(|| bad(format!("the body has no boundary line \"--{boundary}\"")))?;
    let mut parts = Vec::new();
    loop {
        let after = at + delimiter.len();
        if body[after..].starts_with(b"--") {
            return match parts.len() {
                0 => Err(refuse(
                    RejectionKind::Empty,
                    CODE_BODY,
                    "the batch has no parts".to_string(),
                )),
                _ => Ok(parts),
            };
        }
        let start = line_end(body, after).ok_or_else(|| {
            bad(format!(
                "text after the boundary of part {}",
                parts.len() + 1
            ))
        })?;
        let next = next_delimiter(body, start, &finder, delimiter.len()).ok_or_else(|| {
            bad(format!(
                "the body ends before the closing boundary \"--{boundary}--\" (part {} unterminated)",
                parts.len() + 1
            ))
        })?;
        // The line break before a delimiter is the delimiter's (RFC 2046 section 5.1.1).
        let mut end = next.saturating_sub(1).max(start);
        if end > start && body[end - 1] == b'\r' {
            end -= 1;
        }
        let part = &body[start..end];
        if parts.len() == limits.max_parts {
            return Err(refuse(
                RejectionKind::TooManyItems,
                CODE_PART,
                format!("the batch has more than {} parts", limits.max_parts),
            ));
        }
        if part.len() > limits.max_part_bytes {
            return Err(refuse(
                RejectionKind::InvalidItem,
                CODE_PART,
                format!(
                    "part {} is {} bytes; at most {} are allowed",
                    parts.len() + 1,
                    part.len(),
                    limits.max_part_bytes
                ),
            ));
        }
        parts.push(part);
        at = next;
    }
}

/// The next `--boundary` at or after `from` that starts a line (the body's start, or after a
/// LF) and is a delimiter: followed by `--`, transport padding or a line end, not by more
/// boundary-like text.
fn next_delimiter(
    body: &[u8],
    mut from: usize,
    finder: &memmem::Finder<'_>,
    len: usize,
) -> Option<usize> {
    while let Some(found) = finder.find(&body[from..]) {
        let at = from + found;
        let line_start = at == 0 || body[at - 1] == b'\n';
        let next = body.get(at + len).copied();
        let ends = matches!(next, None | Some(b'-' | b' ' | b'\t' | b'\r' | b'\n'));
        if line_start && ends {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// After optional transport padding (spaces and tabs), the index after a CRLF or LF.
fn line_end(body: &[u8], mut at: usize) -> Option<usize> {
    while matches!(body.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    match (body.get(at), body.get(at + 1)) {
        (Some(b'\n'), _) => Some(at + 1),
        (Some(b'\r'), Some(b'\n')) => Some(at + 2),
        _ => None,
    }
}

/// One header line, owned.
pub type Header = (String, Vec<u8>);

/// A part's MIME headers and its content after the blank line.
pub fn part_headers(part: &[u8]) -> Result<(Vec<Header>, &[u8]), String> {
    // A part without headers starts with its blank line.
    if let Some(content) = part
        .strip_prefix(b"\r\n")
        .or_else(|| part.strip_prefix(b"\n"))
    {
        return Ok((Vec::new(), content));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    match httparse::parse_headers(part, &mut headers) {
        Ok(httparse::Status::Complete((used, parsed))) => Ok((owned(parsed), &part[used..])),
        Ok(httparse::Status::Partial) => {
            Err("its MIME headers do not end with a blank line".to_string())
        }
        Err(httparse::Error::TooManyHeaders) => {
            Err(format!("more than {MAX_PART_HEADERS} MIME headers"))
        }
        Err(e) => Err(format!("malformed MIME headers ({e})")),
    }
}

fn owned(headers: &[httparse::Header<'_>]) -> Vec<Header> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// The HTTP request inside an `application/http` part.
#[derive(Debug)]
pub struct InnerRequest<'a> {
    pub method: String,
    pub target: String,
    pub headers: Vec<Header>,
    /// Bytes after the head, before the part's end (see `body` for `Content-Length`).
    pub rest: &'a [u8],
    /// Length of the request line and headers, for the head limit.
    pub head_len: usize,
}

/// Reads the request line and headers of a part's content. A head that runs to the end of
/// the part without its blank line is complete (a bodiless request whose final line break
/// went with the delimiter).
pub fn inner_request(content: &[u8]) -> Result<InnerRequest<'_>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = match request.parse(content) {
        Ok(httparse::Status::Complete(used)) => (used, &content[used..]),
        Ok(httparse::Status::Partial) => return inner_request_closed(content),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_PART_HEADERS} headers"))
        }
        Err(e) => {
            return Err(format!(
                "not an HTTP request ({e}): \"METHOD /path HTTP/1.1\" and headers"
            ))
        }
    };
    Ok(InnerRequest {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        headers: owned(request.headers),
        rest: parsed.1,
        head_len: parsed.0,
    })
}

/// `inner_request` for a head that ends with the part: parsed with its blank line added.
fn inner_request_closed(content: &[u8]) -> Result<InnerRequest<'_>, String> {
    let mut closed = content.to_vec();
    closed.extend_from_slice(if content.ends_with(b"\n") {
        b"\r\n"
    } else {
        b"\r\n\r\n"
    });
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&closed) {
        Ok(httparse::Status::Complete(_)) => Ok(InnerRequest {
            method: request.method.unwrap_or_default().to_string(),
            target: request.path.unwrap_or_default().to_string(),
            headers: owned(request.headers),
            rest: &content[content.len()..],
            head_len: content.len(),
        }),
        Ok(httparse::Status::Partial) => Err("an incomplete HTTP request head".to_string()),
        Err(httparse::Error::TooManyHeaders) => {
            Err(format!("more than {MAX_PART_HEADERS} headers"))
        }
        Err(e) => Err(format!(
            "not an HTTP request ({e}): \"METHOD /path HTTP/1.1\" and headers"
        )),
    }
}

/// The request body: exactly `Content-Length` bytes when declared (what follows may only be
/// line breaks), else everything up to the part's end; a rest of nothing but line breaks is
/// no body.
pub fn body<'a>(rest: &'a [u8], content_length: Option<&[u8]>) -> Result<Option<&'a [u8]>, String> {
    let Some(declared) = content_length else {
        let blank = rest.iter().all(|b| matches!(b, b'\r' | b'\n'));
        return Ok((!blank).then_some(rest));
    };
    let length: usize = std::str::from_utf8(declared)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            format!(
                "Content-Length {:?} is not a number",
                String::from_utf8_lossy(declared)
            )
        })?;
    if rest.len() < length {
        return Err(format!(
            "Content-Length {length} but the part holds {} body bytes",
            rest.len()
        ));
    }
    let (body, after) = rest.split_at(length);
    if !after.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return Err(format!(
            "{} bytes after the body's Content-Length {length}",
            after.len()
        ));
    }
    Ok((length > 0).then_some(body))
}
