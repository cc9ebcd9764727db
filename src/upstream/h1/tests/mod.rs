//! The HTTP/1.1 exchange against scripted upstreams on real 127.0.0.1 sockets: each test's
//! server reads one request and answers with exact bytes, so framing edge cases are reproduced
//! byte for byte.

use super::*;
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: usize = 1024;

/// The batch headers every exchange test uses (pipelining's too).
pub(super) fn batch() -> BatchHeaders {
    BatchHeaders {
        host: HeaderValue::from_static("api.test"),
        common: vec![(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("r-1"),
        )],
        max_response_bytes: LIMIT,
        item_timeout: Duration::from_secs(60),
    }
}

fn post(body: &'static [u8]) -> SubRequest {
    SubRequest {
        method: Method::POST,
        path: "/v2/file/get?x=1".to_string(),
        headers: vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )],
        body: Some(Bytes::from_static(body)),
    }
}

fn get() -> SubRequest {
    SubRequest {
        method: Method::GET,
        path: "/v2/hello".to_string(),
        headers: vec![],
        body: None,
    }
}

const TIMEOUTS: Timeouts = Timeouts {
    read: Duration::from_secs(2),
    write: Duration::from_secs(2),
};

/// How the scripted server sends its answer.
#[derive(Clone, Copy)]
enum Send {
    /// All bytes in one write, then keep the connection open.
    Whole,
    /// One byte per write, with a pause between some of them.
    Trickle,
    /// All bytes, then close the connection.
    ThenClose,
}

/// Runs one exchange against a server answering `answer`; returns the result and the raw
/// request the server received (and the number of reads it took the server to get it).
async fn run(
    request: SubRequest,
    answer: &'static [u8],
    send: Send,
) -> (Result<Exchanged, H1Error>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let received = read_request(&mut socket).await;
        match send {
            Send::Whole | Send::ThenClose => {
                let _ = socket.write_all(answer).await;
            }
            Send::Trickle => {
                for (i, byte) in answer.iter().enumerate() {
                    let _ = socket.write_all(&[*byte]).await;
                    if i % 7 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        if matches!(send, Send::ThenClose) {
            drop(socket);
        } else {
            // Keep the connection open until the client is done with it.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        }
        received
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let result = exchange(&mut client, &request, &batch(), TIMEOUTS).await;
    drop(client);
    let received = server.await.expect("server");
    (result, received)
}

/// Reads one request: the head, then `Content-Length` bytes.
async fn read_request(socket: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        let n = socket.read(&mut chunk).await.expect("read request");
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn ok(result: Result<Exchanged, H1Error>) -> Exchanged {
    match result {
        Ok(exchanged) => exchanged,
        Err(e) => panic!("exchange failed: {e}"),
    }
}

#[tokio::test]
async fn request_goes_out_as_one_message_with_host_length_and_batch_headers() {
    let (result, received) = run(
        post(br#"{"a":1}"#),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        Send::Whole,
    )
    .await;
    ok(result);
    let text = String::from_utf8(received).expect("utf-8");
    assert_eq!(
        text,
        "POST /v2/file/get?x=1 HTTP/1.1\r\nHost: api.test\r\nx-request-id: r-1\r\n\
         content-type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
    );
}

#[tokio::test]
async fn an_item_header_replaces_the_forwarded_one_of_the_same_name() {
    let mut request = get();
    request.headers.push((
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("mine"),
    ));
    let (result, received) = run(
        request,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        Send::Whole,
    )
    .await;
    ok(result);
    let text = String::from_utf8(received).expect("utf-8");
    assert!(text.contains("x-request-id: mine\r\n"), "{text}");
    assert!(!text.contains("r-1"), "{text}");
    // A GET without a body declares no length.
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
}

#[tokio::test]
async fn content_length_body_and_kept_headers() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n\
          Keep-Alive: timeout=5\r\nX-Trace: a\r\nX-Trace: b\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
        Send::Whole,
    )
    .await;
    let exchanged = ok(result);
    assert_eq!(exchanged.response.status, 201);
    assert_eq!(&exchanged.response.body[..], br#"{"ok":true}"#);
    let headers = &exchanged.response.headers;
    assert_eq!(headers.get_all("x-trace").iter().count(), 2);
    assert!(headers.get("connection").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert!(
        headers.get("content-length").is_none(),
        "framing, not content"
    );
    assert!(exchanged.reusable);
}

#[tokio::test]
async fn responses_trickled_one_byte_at_a_time_are_reassembled() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Tail: 1\r\n\r\n",
        Send::Trickle,
    )
    .await;
    let exchanged = ok(result);
    assert_eq!(&exchanged.response.body[..], b"hello world");
    assert!(exchanged
        .response
        .headers
        .get("transfer-encoding")
        .is_none());
    assert!(exchanged.reusable);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_to_the_end_and_not_reused() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        Send::ThenClose,
    )
    .await;
    let exchanged = ok(result);
    assert_eq!(&exchanged.response.body[..], b"until the end");
    assert!(!exchanged.reusable);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_switching_protocols_is_refused() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Send::Whole,
    )
    .await;
    let exchanged = ok(result);
    assert_eq!(exchanged.response.status, 200);
    assert!(exchanged.response.headers.get("link").is_none());

    let (result, _) = run(
        get(),
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        Send::Whole,
    )
    .await;
    assert!(matches!(result, Err(H1Error::Protocol(_))));
}

mod framing;
