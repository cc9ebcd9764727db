//! Pipelining against scripted upstreams on real 127.0.0.1 sockets: a server that reads
//! pipelined requests off each connection in order and answers each as its test says.

use super::*;
use crate::upstream::h1::tests::batch;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUTS: Timeouts = Timeouts {
    read: Duration::from_secs(5),
    write: Duration::from_secs(5),
};

fn item(method: Method, n: usize) -> SubRequest {
    SubRequest {
        method: method.clone(),
        path: format!("/item/{n}"),
        headers: vec![],
        body: (method == Method::POST).then(|| Bytes::from(format!("{{\"n\":{n}}}"))),
    }
}

/// What the server does with one request: `(connection, request on it, path)` in.
#[derive(Clone, Copy)]
enum Act {
    /// Answers with the path as the body.
    Answer,
    /// Answers, marked `Connection: close`, and closes.
    AnswerAndClose,
    /// Closes without answering (and without reading further).
    Drop,
    /// Answers after a pause.
    Slow(u64),
    /// Answers (keeping the connection, it says) and then closes it.
    AnswerAndHangUp,
}

/// What the server saw: per request, the connection it came on and its path.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(usize, String)>>,
    connections: AtomicUsize,
}

impl Seen {
    fn paths(&self) -> Vec<String> {
        let requests = self.requests.lock().expect("seen");
        let mut paths: Vec<String> = requests.iter().map(|(_, p)| p.clone()).collect();
        paths.sort();
        paths
    }

    fn on_connection(&self, conn: usize) -> usize {
        let requests = self.requests.lock().expect("seen");
        requests.iter().filter(|(c, _)| *c == conn).count()
    }
}

async fn server(script: fn(usize, usize) -> Act) -> (std::net::SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let conn = shared.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, conn, shared.clone(), script));
        }
    });
    (addr, seen)
}

/// Answers the requests of one connection in order, as they come (pipelined or not).
async fn serve(
    mut socket: TcpStream,
    conn: usize,
    seen: Arc<Seen>,
    script: fn(usize, usize) -> Act,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut index = 0;
    loop {
        while let Some((len, path)) = one_request(&buf) {
            buf.drain(..len);
            seen.requests
                .lock()
                .expect("seen")
                .push((conn, path.clone()));
            let answer = |close: bool| {
                let connection = if close { "Connection: close\r\n" } else { "" };
                format!(
                    "HTTP/1.1 200 OK\r\n{connection}Content-Length: {}\r\n\r\n{path}",
                    path.len()
                )
            };
            match script(conn, index) {
                Act::Answer => {
                    let _ = socket.write_all(answer(false).as_bytes()).await;
                }
                Act::AnswerAndClose => {
                    let _ = socket.write_all(answer(true).as_bytes()).await;
                    return;
                }
                Act::Drop => return,
                Act::AnswerAndHangUp => {
                    let _ = socket.write_all(answer(false).as_bytes()).await;
                    return;
                }
                Act::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = socket.write_all(answer(false).as_bytes()).await;
                }
            }
            index += 1;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length and path of the complete request at the start of `buf`.
fn one_request(buf: &[u8]) -> Option<(usize, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let path = head.split(' ').nth(1)?.to_string();
    (buf.len() >= end + length).then_some((end + length, path))
}

/// A connection to `addr` as the upstream's connector gives one.
async fn connect(addr: std::net::SocketAddr) -> pingora::Result<Stream> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| pingora::Error::because(pingora::ErrorType::ConnectError, "", e))?;
    Ok(Box::new(pingora::protocols::l4::stream::Stream::from(tcp)))
}

/// Per kind of connection, how many item requests went on it.
#[derive(Default)]
struct Counted([AtomicUsize; 3]);

impl Counted {
    fn count(&self, carried: Carried) {
        let slot = match carried {
            Carried::New => 0,
            Carried::Reused => 1,
            Carried::Pipelined => 2,
        };
        self.0[slot].fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> [usize; 3] {
        self.0.each_ref().map(|n| n.load(Ordering::SeqCst))
    }
}

struct Client {
    addr: std::net::SocketAddr,
    pipes: Pipes,
    pool: Pool,
    counted: Counted,
}

impl Client {
    /// A client whose upstream is known to be fast: groups up to `depth` from the start.
    fn new(addr: std::net::SocketAddr, depth: usize) -> Self {
        let client = Client::fresh(addr, depth, Duration::from_secs(1));
        client.pipes.shared.per_request.record(0, 0);
        client
    }

    /// A client that has measured nothing of its upstream yet.
    fn fresh(addr: std::net::SocketAddr, depth: usize, max_delay: Duration) -> Self {
        let idle = Duration::from_secs(60);
        Client {
            addr,
            pipes: Pipes::new(depth, max_delay, 64, idle, TIMEOUTS),
            pool: Pool::new(64, idle),
            counted: Counted::default(),
        }
    }

    async fn send(&self, request: &SubRequest, repeatable: bool) -> Result<String, String> {
        let addr = self.addr;
        let connect = || connect(addr);
        let count = |carried| self.counted.count(carried);
        let batch = batch();
        match send(
            connect,
            &self.pipes,
            &self.pool,
            request,
            &batch,
            repeatable,
            count,
        )
        .await
        {
            Ok(response) => Ok(String::from_utf8_lossy(&response.body).into_owned()),
            Err(error) => Err(format!("{error:?}")),
        }
    }

    /// `n` items started together; their answers in order.
    async fn many(&self, method: Method, n: usize) -> Vec<Result<String, String>> {
        let repeatable = method != Method::POST;
        let requests: Vec<SubRequest> = (0..n).map(|i| item(method.clone(), i)).collect();
        futures_util::future::join_all(requests.iter().map(|r| self.send(r, repeatable))).await
    }
}

fn answered(results: &[Result<String, String>]) {
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_deref(),
            Ok(format!("/item/{i}").as_str()),
            "item {i}"
        );
    }
}

#[tokio::test]
async fn items_started_together_share_connections_up_to_the_depth() {
    let (addr, seen) = server(|_, _| Act::Answer).await;
    let client = Client::new(addr, 8);
    answered(&client.many(Method::POST, 20).await);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3, "8 + 8 + 4");
    for conn in 0..3 {
        assert!(seen.on_connection(conn) <= 8, "connection {conn}");
    }
    assert_eq!(client.counted.get(), [3, 0, 17]);
    // The next batch's items go on the connections kept.
    answered(&client.many(Method::GET, 16).await);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    assert_eq!(client.counted.get(), [3, 2, 31]);
}

#[tokio::test]
async fn requests_behind_an_announced_close_go_again_whatever_their_method() {
    // The upstream closes after its third answer on each connection (a keep-alive request
    // limit): it acted on nothing behind it.
    let (addr, seen) = server(|_, index| {
        if index == 2 {
            Act::AnswerAndClose
        } else {
            Act::Answer
        }
    })
    .await;
    let client = Client::new(addr, 8);
    answered(&client.many(Method::POST, 8).await);
    let expected: Vec<String> = {
        let mut paths: Vec<String> = (0..8).map(|i| format!("/item/{i}")).collect();
        paths.sort();
        paths
    };
    assert_eq!(seen.paths(), expected, "each acted on once");
}

#[tokio::test]
async fn a_reset_behind_answers_fails_posts_and_resends_gets() {
    // The first connection answers two requests and then drops; the others answer.
    let (addr, seen) = server(|conn, index| match (conn, index) {
        (0, 2) => Act::Drop,
        _ => Act::Answer,
    })
    .await;
    let client = Client::new(addr, 8);
    let results = client.many(Method::POST, 6).await;
    answered(&results[..2]);
    for result in &results[2..] {
        let error = result.as_ref().expect_err("may have been acted on");
        assert!(error.contains("Broken"), "{error}");
    }
    let (addr, seen_gets) = server(|conn, index| match (conn, index) {
        (0, 2) => Act::Drop,
        _ => Act::Answer,
    })
    .await;
    let client = Client::new(addr, 8);
    answered(&client.many(Method::GET, 6).await);
    assert!(seen_gets.connections.load(Ordering::SeqCst) > 1);
    drop(seen);
}

#[tokio::test]
async fn an_item_cut_off_leaves_the_connection_in_step() {
    let (addr, seen) = server(|_, index| {
        if index == 0 {
            Act::Slow(300)
        } else {
            Act::Answer
        }
    })
    .await;
    let client = Client::new(addr, 8);
    let slow = item(Method::GET, 0);
    let cut = tokio::time::timeout(Duration::from_millis(50), client.send(&slow, true)).await;
    assert!(cut.is_err(), "cut off before its answer");
    // Once the abandoned answer has been read, the next item goes on the same connection
    // and gets its own answer.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = item(Method::GET, 1);
    assert_eq!(client.send(&next, true).await.as_deref(), Ok("/item/1"));
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let (addr, seen) = server(|_, _| Act::AnswerAndHangUp).await;
    let client = Client::new(addr, 8);
    for i in 0..3 {
        let request = item(Method::POST, i);
        assert_eq!(
            client.send(&request, false).await.as_deref(),
            Ok(format!("/item/{i}").as_str())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    assert_eq!(client.counted.get(), [3, 0, 0]);
}

#[tokio::test]
async fn a_connection_that_cannot_be_made_fails_every_item_queued_on_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = Client::new(addr, 8);
    for result in client.many(Method::GET, 5).await {
        let error = result.expect_err("nothing listens");
        assert!(error.contains("Connect"), "{error}");
    }
}

#[tokio::test]
async fn a_body_too_large_to_pipeline_is_not_queued() {
    let large = SubRequest {
        body: Some(Bytes::from(vec![b'x'; super::super::COALESCE_LIMIT + 1])),
        ..item(Method::POST, 0)
    };
    assert!(!fits(&large));
    assert!(fits(&item(Method::POST, 0)));
    assert!(fits(&item(Method::GET, 0)));
}

#[tokio::test]
async fn a_write_the_upstream_never_reads_ends_with_the_last_item_timeout() {
    // An upstream that accepts and never reads, with a small receive buffer: a group of 64
    // requests of 64 KiB each cannot all leave. The items are cut off at their timeout (by
    // the executor, here by `timeout`); the connection's task must not stay stuck in its write.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(16).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = Client::new(addr, 64);
    let body = Bytes::from(vec![b'x'; super::super::COALESCE_LIMIT]);
    let requests: Vec<SubRequest> = (0..64)
        .map(|i| SubRequest {
            body: Some(body.clone()),
            ..item(Method::POST, i)
        })
        .collect();
    let item_timeout = Duration::from_millis(300);
    let client = &client;
    let send = |request| async move {
        let batch = BatchHeaders {
            item_timeout,
            ..batch()
        };
        let addr = client.addr;
        let connect = || connect(addr);
        let count = |_| {};
        let sending = super::send(
            connect,
            &client.pipes,
            &client.pool,
            request,
            &batch,
            false,
            count,
        );
        tokio::time::timeout(item_timeout, sending).await
    };
    let results = futures_util::future::join_all(requests.iter().map(send)).await;
    assert!(results.iter().all(Result::is_err), "every item cut off");
    let pipes = || client.pipes.shared.open_pipes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while pipes() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pipes(), 0, "the connection's task gave up its write");
    held.abort();
}

#[tokio::test]
async fn groups_shrink_on_an_upstream_slower_than_the_delay_allows() {
    // 20 ms per answer and at most 1 ms of waiting for the answers ahead: no pipelining once
    // measured. Unmeasured, the first batch goes in groups of two.
    let (addr, seen) = server(|_, _| Act::Slow(20)).await;
    let client = Client::fresh(addr, 8, Duration::from_millis(1));
    answered(&client.many(Method::GET, 8).await);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4, "groups of two");
    assert_eq!(client.counted.get(), [4, 0, 4]);
    let started = Instant::now();
    answered(&client.many(Method::GET, 8).await);
    assert_eq!(
        client.counted.get()[2],
        4,
        "nothing pipelined once measured"
    );
    assert!(
        started.elapsed() < Duration::from_millis(39),
        "one answer's time, not two"
    );
    // A fast upstream, measured: full groups.
    let (addr, seen) = server(|_, _| Act::Answer).await;
    let client = Client::fresh(addr, 8, Duration::from_millis(1));
    answered(&client.many(Method::GET, 8).await);
    answered(&client.many(Method::GET, 8).await);
    assert_eq!(
        client.counted.get()[2],
        4 + 7,
        "groups of two, then one of eight"
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn no_more_pipes_stay_idle_than_the_pool_size() {
    let (addr, seen) = server(|_, _| Act::Answer).await;
    let idle = Duration::from_secs(60);
    let client = Client {
        pipes: Pipes::new(8, Duration::from_secs(1), 2, idle, TIMEOUTS),
        ..Client::fresh(addr, 8, Duration::from_secs(1))
    };
    // Unmeasured: eight items in pairs, four connections, of which two stay.
    answered(&client.many(Method::GET, 8).await);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
    let open = || client.pipes.shared.open_pipes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while open() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open(), 2);
}
