//! Body framing, persistence and the head limit: what an upstream may send and how it is
//! read (RFC 9112 section 6), and what is refused.

use super::*;

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_they_declare() {
    let mut head = get();
    head.method = Method::HEAD;
    let (result, _) = run(
        head,
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n",
        Send::Whole,
    )
    .await;
    let exchanged = ok(result);
    assert!(exchanged.response.body.is_empty());
    // The declared 500 bytes may still come, later: the connection is not reused.
    assert!(!exchanged.reusable);
    for answer in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..],
        &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"[..],
        &b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = answer;
        let exchanged = ok(run(get(), answer, Send::Whole).await.0);
        assert!(exchanged.response.body.is_empty());
        assert!(!exchanged.reusable, "{:?}", String::from_utf8_lossy(answer));
    }
    // Bodiless answers that leave no room for more bytes keep the connection.
    for answer in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        &b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"[..],
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = answer;
        let exchanged = ok(run(get(), answer, Send::Whole).await.0);
        assert!(exchanged.reusable, "{:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_the_connection_is_not_reused() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        Send::Whole,
    )
    .await;
    let exchanged = ok(result);
    assert_eq!(&exchanged.response.body[..], b"hi");
    assert!(!exchanged.reusable);
}

#[tokio::test]
async fn conflicting_lengths_are_refused_and_repeated_equal_ones_accepted() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        Send::Whole,
    )
    .await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab",
        Send::Whole,
    )
    .await;
    assert_eq!(&ok(result).response.body[..], b"ab");
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = answer;
        let (result, _) = run(get(), answer, Send::Whole).await;
        assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
    }
}

#[tokio::test]
async fn malformed_chunk_sizes_are_protocol_errors() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = answer;
        let (result, _) = run(get(), answer, Send::Whole).await;
        assert!(
            matches!(
                result,
                Err(H1Error::Protocol(_)) | Err(H1Error::TooLarge(_))
            ),
            "{}: {result:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_however_they_are_framed() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n",
        Send::Whole,
    )
    .await;
    assert!(matches!(result, Err(H1Error::TooLarge(LIMIT))));

    static CHUNKED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let chunked = CHUNKED.get_or_init(|| {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            answer.extend_from_slice(b"200\r\n");
            answer.extend_from_slice(&[b'x'; 512]);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    });
    let (result, _) = run(get(), chunked, Send::Whole).await;
    assert!(matches!(result, Err(H1Error::TooLarge(LIMIT))));

    static UNTIL_CLOSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let until_close = UNTIL_CLOSE.get_or_init(|| {
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.extend_from_slice(&[b'x'; 2000]);
        answer
    });
    let (result, _) = run(get(), until_close, Send::ThenClose).await;
    assert!(matches!(result, Err(H1Error::TooLarge(LIMIT))));
}

#[tokio::test]
async fn connection_persistence_follows_version_and_connection_header() {
    let cases: [(&'static [u8], bool); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            true,
        ),
        // Bytes nobody asked for after the response.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            false,
        ),
    ];
    for (answer, reusable) in cases {
        let exchanged = ok(run(get(), answer, Send::Whole).await.0);
        assert_eq!(
            exchanged.reusable,
            reusable,
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn a_close_before_any_answer_is_retryable_and_a_close_mid_body_is_not() {
    let (result, _) = run(get(), b"", Send::ThenClose).await;
    let error = result.expect_err("closed");
    assert!(error.nothing_received(), "{error}");

    let (result, _) = run(
        get(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        Send::ThenClose,
    )
    .await;
    let error = result.expect_err("closed");
    assert!(!error.nothing_received(), "{error}");
    assert!(matches!(error, H1Error::Closed { .. }));
}

#[tokio::test]
async fn malformed_or_oversized_heads_are_protocol_errors() {
    let (result, _) = run(get(), b"HTTP/1.1 2OO OK\r\n\r\n", Send::Whole).await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
    let (result, _) = run(get(), b"SSH-2.0-OpenSSH\r\n\r\n", Send::Whole).await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");

    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..3000 {
            answer.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        answer
    });
    let (result, _) = run(get(), huge, Send::Whole).await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
}

#[tokio::test]
async fn a_silent_upstream_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let _ = read_request(&mut socket).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let timeouts = Timeouts {
        read: Duration::from_millis(100),
        write: Duration::from_secs(1),
    };
    let result = exchange(&mut client, &get(), &batch(), timeouts).await;
    assert!(matches!(result, Err(H1Error::Timeout(_))), "{result:?}");
    // Nothing of an answer came: the upstream may or may not have acted on it.
    assert_eq!(result.err().map(|e| e.sent()), Some(Sent::Maybe));
    server.abort();
}

/// A connection the upstream closed before answering leaves the request's fate unknown.
#[tokio::test]
async fn a_connection_closed_before_any_answer_is_not_counted_as_delivered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let (socket, _) = listener.accept().await.expect("accept");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let timeouts = Timeouts {
        read: Duration::from_secs(1),
        write: Duration::from_secs(1),
    };
    let error = exchange(&mut client, &get(), &batch(), timeouts)
        .await
        .expect_err("closed");
    // The write may land in the socket buffer before the close is noticed; either way nothing
    // of an answer came, so the request is not counted as delivered.
    assert!(error.nothing_received(), "{error}");
    assert_ne!(error.sent(), Sent::All, "{error}");
}

#[test]
fn chunk_sizes_parse_as_bounded_hexadecimal() {
    assert_eq!(parse_chunk_size(b"1a").ok(), Some(26));
    assert_eq!(parse_chunk_size(b"A ; name=value").ok(), Some(10));
    assert_eq!(parse_chunk_size(b"0").ok(), Some(0));
    for bad in [&b""[..], b"g", b"+1", b" ", b"1 2", b"0000000000000001"] {
        assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn bodiless_answers_without_a_length_keep_the_connection() {
    let mut head = get();
    head.method = Method::HEAD;
    let cases: [(SubRequest, &'static [u8]); 3] = [
        (get(), b"HTTP/1.1 204 No Content\r\n\r\n"),
        (get(), b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        (head, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"),
    ];
    for (request, answer) in cases {
        let exchanged = ok(run(request, answer, Send::Whole).await.0);
        assert!(exchanged.response.body.is_empty());
        assert!(exchanged.reusable, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn faulty_framing_is_read_but_never_reused() {
    // HTTP/1.0 has no Transfer-Encoding (RFC 9112 section 6.1).
    let exchanged = ok(run(
        get(),
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        Send::Whole,
    )
    .await
    .0);
    assert_eq!(&exchanged.response.body[..], b"ok");
    assert!(!exchanged.reusable);
    // Transfer-Encoding lines form one list; an empty line adds no coding.
    let exchanged = ok(run(
        get(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        Send::Whole,
    )
    .await
    .0);
    assert_eq!(&exchanged.response.body[..], b"ok");
}

#[tokio::test]
async fn status_codes_below_100_and_endless_interim_answers_are_refused() {
    let (result, _) = run(
        get(),
        b"HTTP/1.1 042 Odd\r\nContent-Length: 0\r\n\r\n",
        Send::Whole,
    )
    .await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");

    static INTERIM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let interim = INTERIM.get_or_init(|| {
        let mut answer = Vec::new();
        for _ in 0..20 {
            answer.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        }
        answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        answer
    });
    let (result, _) = run(get(), interim, Send::Whole).await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
}

#[tokio::test]
async fn an_overlong_chunk_line_is_refused_even_when_it_arrives_whole() {
    static LONG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let long = LONG.get_or_init(|| {
        let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;".to_vec();
        answer.extend_from_slice(&[b'x'; 6000]);
        answer.extend_from_slice(b"\r\nok\r\n0\r\n\r\n");
        answer
    });
    let (result, _) = run(get(), long, Send::Whole).await;
    assert!(matches!(result, Err(H1Error::Protocol(_))), "{result:?}");
}

#[test]
fn loosely_fitting_bodies_are_copied_into_exact_ones() {
    let mut grown = BytesMut::with_capacity(64 * 1024);
    grown.extend_from_slice(&[1u8; 10_000]);
    let kept = fitted(grown);
    assert_eq!(kept.len(), 10_000);
    // A fresh copy owns exactly its bytes; `Bytes` does not expose capacity, but a copy is
    // a different allocation from the one it came from.
    let mut snug = BytesMut::with_capacity(10_100);
    snug.extend_from_slice(&[2u8; 10_000]);
    let pointer = snug.as_ptr();
    assert_eq!(
        fitted(snug).as_ptr(),
        pointer,
        "a snug buffer is kept as is"
    );
}

#[tokio::test]
async fn a_body_over_the_coalescing_limit_goes_out_whole_after_the_head() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let big: &'static [u8] = BIG.get_or_init(|| vec![b'z'; COALESCE_LIMIT * 3 / 2]);
    let mut request = post(b"");
    request.body = Some(Bytes::from_static(big));
    let (result, received) = run(
        request,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        Send::Whole,
    )
    .await;
    assert!(ok(result).reusable);
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", big.len())),
        "{head}"
    );
    assert_eq!(&received[head_end..], big);
}

/// Runs one exchange against a server that writes `writes` one after the other (each
/// pausing briefly) and never closes; returns the result and how many bytes the server
/// managed to write before the client gave up.
async fn run_writes(writes: Vec<Vec<u8>>) -> (Result<Exchanged, H1Error>, usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        read_request(&mut socket).await;
        let mut sent = 0;
        for write in writes {
            if socket.write_all(&write).await.is_err() {
                break;
            }
            sent += write.len();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let result = exchange(&mut client, &get(), &batch(), TIMEOUTS).await;
    drop(client);
    let sent = server.await.expect("server");
    (result, sent)
}

fn head_too_large(result: &Result<Exchanged, H1Error>) -> bool {
    matches!(result, Err(H1Error::Protocol(why)) if why.contains("head exceeds"))
}

/// A head that never ends is refused once it crosses the head limit, however it trickles
/// in: fewer than 128 headers of 1 KiB each, one write per header.
#[tokio::test]
async fn a_head_of_many_headers_is_refused_at_the_head_limit() {
    let mut writes = vec![b"HTTP/1.1 200 OK\r\n".to_vec()];
    for i in 0..120 {
        writes.push(format!("x-h{i}: {}\r\n", "v".repeat(1024)).into_bytes());
    }
    writes.push(b"\r\n".to_vec());
    let (result, _) = run_writes(writes).await;
    assert!(head_too_large(&result), "{result:?}");
}

/// A head that never ends (no blank line, ever) stops being read at the limit: the client
/// gives up instead of buffering what the upstream sends.
#[tokio::test]
async fn an_endless_head_is_not_buffered_past_the_limit() {
    let mut writes = vec![b"HTTP/1.1 200 OK\r\nx-endless: ".to_vec()];
    // 64 MiB would follow; the exchange must stop long before.
    writes.extend((0..4096).map(|_| vec![b'a'; 16 * 1024]));
    let (result, sent) = run_writes(writes).await;
    assert!(head_too_large(&result), "{result:?}");
    // What the server got out is what sits in socket buffers plus what was read (64 KiB
    // and one read more): far from the 64 MiB it tried.
    assert!(sent < 16 * 1024 * 1024, "the server wrote {sent} bytes");
}

/// One huge header value in a complete head, sent in one go, is refused like a long head.
#[tokio::test]
async fn a_complete_head_with_one_huge_value_is_refused() {
    let head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\nContent-Length: 2\r\n\r\nok",
        "b".repeat(1 << 20)
    );
    let (result, _) = run_writes(vec![head.into_bytes()]).await;
    assert!(head_too_large(&result), "{result:?}");
    // Just under the limit is fine.
    let head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\nContent-Length: 2\r\n\r\nok",
        "b".repeat(MAX_HEAD_BYTES - 100)
    );
    let (result, _) = run_writes(vec![head.into_bytes()]).await;
    assert_eq!(ok(result).response.body.as_ref(), b"ok");
}
