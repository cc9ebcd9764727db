//! Pass-through on batchgate's own HTTP/1.1 exchange (`proxy::lane`): bodies stream both ways
//! through bounded buffers, a connection moves to pingora for a batch or an upgrade and is
//! served there, and what the upstream frames in its own way reaches the client framed again.

use crate::common;

use common::batch::{batch, item, responses, BATCH_PATH};
use common::client::{build_request, Conn};
use common::config::GateConfig;
use common::upstream::{Reply, Upstream};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Reads a request head from `reader`, returning its `Content-Length`.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<u64> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(length);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
}

/// An upstream that reads each request's body without keeping it and answers with the
/// number of body bytes it got; `GET /big/N` answers N bytes, written in 64 KiB pieces.
async fn streaming_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let Some(length) = read_head(&mut reader).await else {
                        return;
                    };
                    let mut left = length;
                    let mut piece = vec![0u8; 64 * 1024];
                    while left > 0 {
                        let want = left.min(piece.len() as u64) as usize;
                        match reader.read(&mut piece[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left -= n as u64,
                        }
                    }
                    let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
                    let big: Option<u64> =
                        target.strip_prefix("/big/").and_then(|n| n.parse().ok());
                    let result = match big {
                        Some(size) => {
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                            let mut ok = write.write_all(head.as_bytes()).await.is_ok();
                            let piece = vec![b'z'; 64 * 1024];
                            let mut left = size;
                            while ok && left > 0 {
                                let n = left.min(piece.len() as u64) as usize;
                                ok = write.write_all(&piece[..n]).await.is_ok();
                                left -= n as u64;
                            }
                            ok
                        }
                        None => {
                            let body = length.to_string();
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            write.write_all(answer.as_bytes()).await.is_ok()
                        }
                    };
                    if !result {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Proves a 256 MiB upload and a 256 MiB download through pass-through leave batchgate's
/// peak memory within a few MiB of where it was: bodies stream, they are never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let upstream = streaming_upstream().await;
    let gate = GateConfig::new(upstream).start().await;
    // Warm: connections, buffers and the allocator's pools.
    let mut conn = TcpStream::connect(gate.addr).await.expect("connect");
    let (_, peak_before) = gate.memory_kib();

    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("head");
    let piece = vec![b'u'; 256 * 1024];
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        conn.write_all(&piece[..n]).await.expect("body");
        left -= n as u64;
    }
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("status");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let length = read_head(&mut reader).await.expect("head");
    let mut body = vec![0u8; length as usize];
    reader.read_exact(&mut body).await.expect("body");
    assert_eq!(
        body,
        SIZE.to_string().as_bytes(),
        "the upstream got every byte"
    );

    let get = format!("GET /big/{SIZE} HTTP/1.1\r\nHost: a\r\n\r\n");
    reader
        .get_mut()
        .write_all(get.as_bytes())
        .await
        .expect("get");
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("status");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(read_head(&mut reader).await, Some(SIZE));
    let mut piece = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < SIZE {
        let n = reader.read(&mut piece).await.expect("read");
        assert!(n > 0, "the download ended at {got} bytes");
        assert!(piece[..n].iter().all(|&b| b == b'z'));
        got += n as u64;
    }
    let (_, peak_after) = gate.memory_kib();
    assert!(
        peak_after < peak_before + 16 * 1024,
        "peak memory grew from {peak_before} KiB to {peak_after} KiB"
    );
}

/// Proves a connection that starts with pass-through requests and then sends a batch is
/// served by pingora from there, the batch and every later request included, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_a_pass_through_connection_is_served_and_so_is_what_follows() {
    let upstream =
        Upstream::with_handler(|req| Reply::text(200, &format!("saw {}", req.target))).await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let mut conn = Conn::connect(gate.addr).await;
    let first = conn.request("GET", "/v2/one", &[], b"").await;
    assert_eq!((first.status, first.body_str()), (200, "saw /v2/one"));
    let body = batch(vec![
        item("a", "GET", "/file/a"),
        item("b", "GET", "/file/b"),
    ]);
    let reply = conn
        .request(
            "POST",
            BATCH_PATH,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(responses(&reply).len(), 2);
    let after = conn.request("GET", "/v2/two", &[], b"").await;
    assert_eq!((after.status, after.body_str()), (200, "saw /v2/two"));

    // Pipelined: two pass-through requests and a batch in one write, answered in order.
    let keep = ("Connection", "keep-alive");
    let mut raw = build_request("GET", "/v2/three", &[keep], b"");
    raw.extend(build_request(
        "POST",
        BATCH_PATH,
        &[("Content-Type", "application/json"), keep],
        body.as_bytes(),
    ));
    raw.extend(build_request("GET", "/v2/four", &[], b""));
    let mut conn = Conn::connect(gate.addr).await;
    conn.write(&raw).await;
    assert_eq!(conn.read_response().await.body_str(), "saw /v2/three");
    assert_eq!(responses(&conn.read_response().await).len(), 2);
    assert_eq!(conn.read_response().await.body_str(), "saw /v2/four");
}

/// Proves a head longer than the lane reads (16 KiB) is served by pingora, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_longer_than_the_lane_reads_is_served_by_pingora() {
    let upstream = Upstream::with_handler(|req| {
        let size = req.header("x-big").map_or(0, str::len);
        Reply::text(200, &format!("x-big {size}"))
    })
    .await;
    let gate = GateConfig::new(upstream.addr).start().await;
    let big = "b".repeat(20 * 1024);
    let mut conn = Conn::connect(gate.addr).await;
    let resp = conn
        .request("GET", "/v2/big", &[("X-Big", &big)], b"")
        .await;
    assert_eq!((resp.status, resp.body_str()), (200, "x-big 20480"));
}

/// Proves a WebSocket upgrade passes through (to pingora, which tunnels it) and bytes flow
/// both ways after the 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_still_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("request line");
        read_head(&mut reader).await.expect("head");
        write
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await
            .expect("101");
        let mut buf = [0u8; 64];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(&buf[..n]);
                    if write.write_all(&echo).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let gate = GateConfig::new(upstream).start().await;
    let mut conn = TcpStream::connect(gate.addr).await.expect("connect");
    conn.write_all(b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
            .await
            .expect("the 101 in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    conn.write_all(b"frame").await.expect("frame");
    let mut echo = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut echo))
        .await
        .expect("the echo in time")
        .expect("echo");
    assert_eq!(&echo, b"echo:frame");
}

/// Proves an upstream answer without a length (until close) reaches the client chunked and
/// the client's connection stays usable, and a 502 follows an upstream that breaks before
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_until_close_are_chunked_and_a_broken_upstream_is_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                reader.read_line(&mut line).await.expect("request line");
                read_head(&mut reader).await.expect("head");
                if line.contains("/broken") {
                    return;
                }
                let _ = write
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length here")
                    .await;
            });
        }
    });
    let gate = GateConfig::new(upstream).start().await;
    let mut conn = Conn::connect(gate.addr).await;
    let resp = conn.request("GET", "/stream", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body_str(), "no length here");
    let again = conn.request("GET", "/stream", &[], b"").await;
    assert_eq!(
        again.body_str(),
        "no length here",
        "the connection was kept"
    );
    let broken = conn.request("GET", "/broken", &[], b"").await;
    assert_eq!(broken.status, 502);
}

/// An upstream that cannot be reached while the client is still sending a large body: the
/// client reads the whole 502 and the end of the connection, not a reset (the lane reads and
/// drops the rest of the body for a while before it closes, as nginx's lingering close does).
#[tokio::test]
async fn an_error_answer_reaches_a_client_still_sending_its_body() {
    let refused = common::upstream::refused_addr().await;
    let gate = GateConfig::new(refused).start().await;
    for _ in 0..5 {
        let socket = TcpStream::connect(gate.addr).await.expect("connect");
        let (mut reader, mut writer) = socket.into_split();
        let length = 64 << 20;
        let head =
            format!("POST /v2/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
        writer.write_all(head.as_bytes()).await.expect("head");
        let sending = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..length / chunk.len() {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer))
            .await
            .expect("the answer and the end within the linger time");
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "{read:?} after {text:?}");
        assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
        sending.abort();
    }
}
