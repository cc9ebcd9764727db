//! The relay against in-memory peers: what the client gets, what the upstream got, and
//! whether the connection may be kept.

use super::{relay, Answered, Buffers, Outbound, RelayError, PIECE};
use crate::upstream::h1::Timeouts;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Run {
    result: Result<Answered, RelayError>,
    client_got: Vec<u8>,
    upstream_got: Vec<u8>,
}

/// Relays `first` (and `body` from the client, `rest` bytes) to an upstream that writes
/// `answer` (then ends its side when `end`) and reads the request to its end.
async fn run(first: &[u8], body: &[u8], answer: Vec<u8>, end: bool) -> Run {
    let (mut up_proxy, up_server) = tokio::io::duplex(4 << 20);
    let (mut cl_proxy, mut cl_peer) = tokio::io::duplex(4 << 20);
    let server = tokio::spawn(async move {
        let (mut read, mut write) = tokio::io::split(up_server);
        write.write_all(&answer).await.expect("answer");
        if end {
            write.shutdown().await.expect("end");
        }
        let mut got = Vec::new();
        let _ = read.read_to_end(&mut got).await;
        drop(write);
        got
    });
    cl_peer.write_all(body).await.expect("client body");
    let out = Outbound {
        first,
        rest: body.len() as u64,
        close: false,
    };
    let timeouts = Timeouts {
        read: Duration::from_secs(5),
        write: Duration::from_secs(5),
    };
    let mut buffers = Buffers::default();
    let result = relay(&mut up_proxy, &mut cl_proxy, out, timeouts, &mut buffers).await;
    drop(up_proxy);
    drop(cl_proxy);
    let mut client_got = Vec::new();
    cl_peer.read_to_end(&mut client_got).await.expect("client");
    let upstream_got = server.await.expect("server");
    Run {
        result,
        client_got,
        upstream_got,
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: u\r\n\r\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_sized_answer_keeps_its_end_to_end_headers_and_loses_hop_by_hop_ones() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=b\r\nX-Thing: 1\r\n\r\nhello";
    let got = run(GET, b"", answer.to_vec(), false).await;
    let answered = got.result.expect("relayed");
    assert_eq!(answered.status, 200);
    assert!(answered.reusable);
    assert_eq!(
        text(&got.client_got),
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nX-Thing: 1\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert_eq!(got.upstream_got, GET);
}

#[tokio::test]
async fn chunked_answers_are_re_chunked_without_extensions_or_trailers() {
    let answer = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert!(got.result.expect("relayed").reusable);
    assert_eq!(
        text(&got.client_got),
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn an_answer_until_close_is_chunked_for_the_client_and_the_connection_is_not_kept() {
    let answer = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
    let got = run(GET, b"", answer.to_vec(), true).await;
    assert!(!got.result.expect("relayed").reusable);
    assert_eq!(
        text(&got.client_got),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\nuntil the end\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_a_protocol_switch_is_refused_before_any_byte() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert_eq!(got.result.expect("relayed").status, 204);
    assert_eq!(text(&got.client_got), "HTTP/1.1 204 No Content\r\n\r\n");

    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert!(matches!(got.result, Err(RelayError::Upstream(_))));
    assert!(got.client_got.is_empty());
}

#[tokio::test]
async fn answers_that_cannot_be_framed_reach_the_client_as_nothing() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 2000 Big\r\n\r\n",
    ] {
        let got = run(GET, b"", answer.to_vec(), true).await;
        assert!(
            matches!(got.result, Err(RelayError::Upstream(_))),
            "{}",
            text(answer)
        );
        assert!(got.client_got.is_empty(), "{}", text(answer));
    }
}

#[tokio::test]
async fn both_length_and_chunked_are_read_as_chunked_and_the_connection_is_not_kept() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert!(!got.result.expect("relayed").reusable);
    assert!(text(&got.client_got).ends_with("\r\n\r\n2\r\nok\r\n0\r\n\r\n"));
    assert!(!text(&got.client_got).contains("Content-Length"));
}

#[tokio::test]
async fn a_short_body_is_cut_and_bytes_after_an_answer_end_the_connection() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
    let got = run(GET, b"", answer.to_vec(), true).await;
    assert!(matches!(
        got.result,
        Err(RelayError::Cut { status: 200, .. })
    ));

    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert!(!got.result.expect("relayed").reusable);
    assert!(text(&got.client_got).ends_with("\r\n\r\nok"));

    // A 204 that declares a body may send it late, into the next answer.
    let answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n";
    let got = run(GET, b"", answer.to_vec(), false).await;
    assert!(!got.result.expect("relayed").reusable);
}

#[tokio::test]
async fn a_body_still_at_the_client_is_streamed_and_a_large_answer_passes_whole() {
    let body = vec![b'x'; 3 * PIECE + 17];
    let first = format!(
        "POST /up HTTP/1.1\r\nHost: u\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut answer =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 5 * PIECE).into_bytes();
    answer.extend(std::iter::repeat_n(b'y', 5 * PIECE));
    let got = run(first.as_bytes(), &body, answer, false).await;
    assert!(got.result.expect("relayed").reusable);
    let mut sent = first.into_bytes();
    sent.extend_from_slice(&body);
    assert_eq!(got.upstream_got, sent);
    let head = text(&got.client_got);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 327680\r\n\r\nyyy"));
    assert_eq!(
        got.client_got.iter().filter(|&&b| b == b'y').count(),
        5 * PIECE
    );
}

#[tokio::test]
async fn a_client_that_leaves_in_its_body_is_a_client_body_error() {
    let first = b"POST /up HTTP/1.1\r\nHost: u\r\nContent-Length: 100\r\n\r\n";
    let (mut up_proxy, _up_server) = tokio::io::duplex(1 << 16);
    let (mut cl_proxy, mut cl_peer) = tokio::io::duplex(1 << 16);
    cl_peer.write_all(b"only ten b").await.expect("body");
    drop(cl_peer);
    let out = Outbound {
        first,
        rest: 100,
        close: false,
    };
    let timeouts = Timeouts {
        read: Duration::from_secs(5),
        write: Duration::from_secs(5),
    };
    let mut buffers = Buffers::default();
    let result = relay(&mut up_proxy, &mut cl_proxy, out, timeouts, &mut buffers).await;
    assert!(matches!(result, Err(RelayError::ClientBody(_))));
}

#[tokio::test]
async fn a_head_over_the_limit_and_endless_interim_answers_reach_the_client_as_nothing() {
    let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
    while endless.len() <= crate::upstream::MAX_RESPONSE_HEAD_BYTES {
        endless.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
    }
    endless.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let interim = b"HTTP/1.1 103 Early Hints\r\n\r\n".repeat(20);
    for answer in [endless, interim] {
        let got = run(GET, b"", answer, true).await;
        assert!(matches!(got.result, Err(RelayError::Upstream(_))));
        assert!(got.client_got.is_empty());
    }
}
