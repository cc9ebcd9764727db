//! Multipart decode/encode tests on bytes only.

use super::*;
use crate::config::multipart::{ContentIdRule, GOOGLE_ERROR_FORMAT};
use crate::config::ErrorFormat;
use crate::guard::{HeaderGuard, UrlGuard};
use bytes::Bytes;
use http::HeaderMap;

fn multipart() -> Multipart {
    Multipart {
        config: Arc::new(MultipartConfig {
            relative_base: "/odata/".into(),
            allowed_methods: vec![Method::GET, Method::POST, Method::PATCH, Method::DELETE],
            url_guard: UrlGuard::new(String::new(), None, vec!["/batch".into()]),
            header_guard: HeaderGuard,
            error_format: ErrorFormat::new(GOOGLE_ERROR_FORMAT).expect("valid"),
            max_part_bytes: 4096,
            max_part_head_bytes: 1024,
            content_id: ContentIdRule::ResponsePrefixed,
        }),
        max_items: 3,
    }
}

fn decode_as(
    m: &Multipart,
    content_type: &str,
    body: &str,
) -> Result<Plan<MultipartMeta>, Rejection> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("header"),
    );
    let body = Bytes::copy_from_slice(body.as_bytes());
    m.decode(&BatchRequest {
        path: "/",
        authority: Some("gate.test:8080"),
        method: &Method::POST,
        query: None,
        headers: &headers,
        body: &body,
    })
}

fn decode(body: &str) -> Result<Plan<MultipartMeta>, Rejection> {
    decode_as(&multipart(), "multipart/mixed; boundary=b0", body)
}

/// Google's batch, as `BatchHttpRequest` writes it (CRLF).
const GOOGLE: &str = "--b0\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nMIME-Version: 1.0\r\nContent-ID: <abc+1>\r\n\r\nGET /drive/v3/files/a?alt=json HTTP/1.1\r\nContent-Type: application/json\r\nMIME-Version: 1.0\r\naccept: application/json\r\n\r\n\r\n--b0\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nMIME-Version: 1.0\r\nContent-ID: <abc+2>\r\n\r\nPOST /drive/v3/files?alt=json HTTP/1.1\r\nContent-Type: application/json\r\ncontent-length: 13\r\n\r\n{\"name\":\"x\"}\n\r\n--b0--\r\n";

fn ok_items(plan: &Plan<MultipartMeta>) -> Vec<&SubRequest> {
    plan.items
        .iter()
        .map(|i| i.as_ref().ok().and_then(Planned::ready).expect("sent"))
        .collect()
}

#[test]
fn google_batch_parts_become_requests() {
    let plan = decode(GOOGLE).expect("valid");
    let items = ok_items(&plan);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].method, Method::GET);
    assert_eq!(items[0].path, "/drive/v3/files/a?alt=json");
    assert!(items[0].body.is_none());
    assert_eq!(items[1].method, Method::POST);
    assert_eq!(items[1].body.as_deref(), Some(&b"{\"name\":\"x\"}\n"[..]));
    assert!(
        !items[1]
            .headers
            .iter()
            .any(|(n, _)| n == http::header::CONTENT_LENGTH),
        "the part's length frames the part, it is not forwarded"
    );
    assert_eq!(plan.meta[0].content_id.as_deref(), Some("abc+1"));
}

#[test]
fn bare_lf_preamble_epilogue_and_quoted_boundary() {
    let body = "preamble text\n--b 0\nContent-Type: application/http\nContent-ID: 7\n\nDELETE /files/7 HTTP/1.1\n\n--b 0--\nepilogue";
    let plan = decode_as(&multipart(), "multipart/mixed; boundary=\"b 0\"", body).expect("valid");
    let items = ok_items(&plan);
    assert_eq!(items[0].method, Method::DELETE);
    assert_eq!(items[0].path, "/files/7");
    assert_eq!(plan.meta[0].content_id.as_deref(), Some("7"));
}

#[test]
fn odata_relative_and_absolute_targets() {
    let body = "--b0\r\nContent-Type: application/http\r\n\r\nGET Customers('ALFKI') HTTP/1.1\r\n\r\n--b0\r\nContent-Type: application/http\r\n\r\nGET http://gate.test:8080/odata/Orders HTTP/1.1\r\n\r\n--b0\r\nContent-Type: application/http\r\n\r\nGET /odata/People HTTP/1.1\r\nHost: gate.test:8080\r\n\r\n--b0--";
    let plan = decode(body).expect("valid");
    let paths: Vec<&str> = ok_items(&plan).iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/odata/Customers('ALFKI')",
            "/odata/Orders",
            "/odata/People"
        ]
    );
}

#[test]
fn hostile_parts_are_refused_per_part() {
    let part =
        |request: &str| format!("--b0\r\nContent-Type: application/http\r\n\r\n{request}\r\n");
    let body = [
        part("GET http://evil.example/x HTTP/1.1\r\n"),
        part("GET /x HTTP/1.1\r\nHost: evil.example\r\n"),
        part("GET /x HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n"),
    ]
    .concat()
        + "--b0--";
    let plan = decode(&body).expect("the batch itself is valid");
    let codes: Vec<&str> = plan
        .items
        .iter()
        .map(|i| match i {
            Err(Outcome::Failed(f)) => f.http_error().code,
            other => panic!("sent: {other:?}"),
        })
        .collect();
    assert_eq!(codes[1], "InvalidArgument.Host");
    assert_eq!(codes.len(), 3);
    let m = multipart();
    let more = [
        part("CONNECT /x HTTP/1.1\r\n"),
        part("GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"),
        part("not a request"),
    ]
    .concat()
        + "--b0--";
    let plan = decode_as(&m, "multipart/mixed; boundary=b0", &more).expect("valid batch");
    let statuses: Vec<u16> = plan
        .items
        .iter()
        .map(|i| i.as_ref().err().map_or(0, Outcome::status))
        .collect();
    assert_eq!(statuses, [405, 400, 400]);
}

#[test]
fn whole_batch_errors() {
    let refused = |content_type: &str, body: &str| {
        decode_as(&multipart(), content_type, body)
            .err()
            .map(|r| (r.kind, r.code))
            .expect("refused")
    };
    let part = "--b0\r\nContent-Type: application/http\r\n\r\nGET /a HTTP/1.1\r\n\r\n";
    assert_eq!(refused("multipart/mixed", "").1, "InvalidArgument.Boundary");
    assert_eq!(
        refused("multipart/mixed; boundary=\"\"", "").1,
        "InvalidArgument.Boundary"
    );
    assert_eq!(
        refused(&format!("multipart/mixed; boundary={}", "x".repeat(71)), "").1,
        "InvalidArgument.Boundary"
    );
    let (kind, code) = refused("multipart/mixed; boundary=b0", part);
    assert_eq!(
        (kind, code),
        (RejectionKind::ParseError, "InvalidArgument.Body"),
        "no closing delimiter"
    );
    assert_eq!(
        refused("multipart/mixed; boundary=b0", "--b0--").0,
        RejectionKind::Empty
    );
    let four = format!("{}--b0--", part.repeat(4));
    assert_eq!(
        refused("multipart/mixed; boundary=b0", &four).0,
        RejectionKind::TooManyItems
    );
    let change_set =
        "--b0\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n--cs--\r\n--b0--";
    assert_eq!(
        refused("multipart/mixed; boundary=b0", change_set).1,
        "Unsupported.ChangeSet"
    );
    let twice = format!("{0}Content-ID: 1\r\n\r\nGET /a HTTP/1.1\r\n\r\n{0}Content-ID: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n--b0--", "--b0\r\nContent-Type: application/http\r\n");
    assert_eq!(
        refused("multipart/mixed; boundary=b0", &twice).0,
        RejectionKind::DuplicateId
    );
    let base64 = "--b0\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\nR0VU\r\n--b0--";
    assert_eq!(
        refused("multipart/mixed; boundary=b0", base64).1,
        "InvalidArgument.Part"
    );
    let big = format!(
        "--b0\r\nContent-Type: application/http\r\n\r\nPOST /a HTTP/1.1\r\n\r\n{}\r\n--b0--",
        "x".repeat(5000)
    );
    assert_eq!(
        refused("multipart/mixed; boundary=b0", &big).1,
        "InvalidArgument.Part"
    );
}

#[test]
fn a_boundary_prefix_inside_a_body_is_not_a_delimiter() {
    let body = "--b0\r\nContent-Type: application/http\r\n\r\nPOST /a HTTP/1.1\r\n\r\n--b0x is data\r\n--b0--";
    let plan = decode(body).expect("valid");
    assert_eq!(
        ok_items(&plan)[0].body.as_deref(),
        Some(&b"--b0x is data"[..])
    );
}

#[test]
fn head_limit_is_enforced_per_part() {
    let long = format!(
        "--b0\r\nContent-Type: application/http\r\n\r\nGET /a HTTP/1.1\r\nX-Big: {}\r\n\r\n--b0--",
        "v".repeat(1100)
    );
    let plan = decode(&long).expect("the batch is valid");
    assert_eq!(plan.items[0].as_ref().err().map(Outcome::status), Some(431));
}

#[test]
fn reply_is_multipart_with_response_ids_and_bytes_unchanged() {
    let m = multipart();
    let plan = decode(GOOGLE).expect("valid");
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    headers.insert("etag", HeaderValue::from_static("\"v1\""));
    let body = Bytes::from_static(b"{\"id\": \"a\"}\xff");
    let outcomes = vec![
        Outcome::Response(crate::item::UpstreamResponse {
            status: 404,
            headers,
            body: body.clone(),
        }),
        Outcome::failed(crate::item::FailureKind::Timeout, crate::item::Sent::Maybe),
    ];
    let reply = m.encode(plan.meta, outcomes);
    let content_type = reply.content_type.expect("typed");
    let boundary = parse::boundary(content_type.as_bytes()).expect("boundary");
    // The reply parses back with our own splitter into two parts.
    let parts = parse::split(
        &reply.body,
        &boundary,
        PartLimits {
            max_parts: 10,
            max_part_bytes: 1 << 20,
        },
    )
    .expect("splits");
    assert_eq!(parts.len(), 2);
    let (mime, content) = parse::part_headers(parts[0]).expect("headers");
    assert!(
        mime.contains(&("content-id".to_string(), b"<response-abc+1>".to_vec())),
        "{mime:?}"
    );
    let text = String::from_utf8_lossy(content);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert!(text.contains("etag: \"v1\"\r\n"), "{text}");
    assert!(
        content.ends_with(b"Content-Length: 12\r\n\r\n{\"id\": \"a\"}\xff"),
        "{text}"
    );
    let second = String::from_utf8_lossy(parts[1]);
    assert!(
        second.contains("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{second}"
    );
    assert!(second.contains("\"status\":\"GatewayTimeout\""), "{second}");
    assert!(reply
        .body
        .ends_with(format!("--{boundary}--\r\n").as_bytes()));
}

/// Behind a load balancer a part names the public origin in its `Host` (and urls): taken as
/// ours when it is one of `public_origins`; any other host is still refused.
#[test]
fn a_public_origin_host_is_ours() {
    let mut m = multipart();
    let mut config = (*m.config).clone();
    config.url_guard = config
        .url_guard
        .with_origins(&["https://api.example.com".to_string()]);
    m.config = Arc::new(config);
    let body = "--b0\r\nContent-Type: application/http\r\n\r\nGET /odata/a HTTP/1.1\r\nHost: API.example.com\r\n\r\n--b0\r\nContent-Type: application/http\r\n\r\nGET /odata/b HTTP/1.1\r\nHost: other.example.com\r\n\r\n--b0--";
    let plan = decode_as(&m, "multipart/mixed; boundary=b0", body).expect("valid batch");
    assert_eq!(
        plan.items[0]
            .as_ref()
            .ok()
            .and_then(Planned::ready)
            .expect("sent")
            .path,
        "/odata/a"
    );
    assert!(
        matches!(&plan.items[1], Err(Outcome::Failed(f)) if f.http_error().code == "InvalidArgument.Host")
    );
}
