//! A scripted upstream that controls every byte and every pause: for each request it reads
//! (head, then `Content-Length` bytes) it runs the steps a script chooses from the request
//! line. Used by the fault-injection tests to be the upstream nobody would want.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One thing the upstream does after reading a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Write these bytes one at a time, pausing between them.
    Trickle(Vec<u8>, Duration),
    /// Write `chunk` again and again, pausing between writes, until the peer goes away
    /// (or `max` bytes were written).
    Endless {
        chunk: Vec<u8>,
        pause: Duration,
        max: usize,
    },
    /// Wait.
    Pause(Duration),
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST: linger 0, then close).
    Reset,
    /// Keep the connection open and read nothing more, ever.
    Hang,
}

impl Step {
    pub fn write(bytes: impl AsRef<[u8]>) -> Step {
        Step::Write(bytes.as_ref().to_vec())
    }
}

/// A running scripted upstream.
pub struct Scripted {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Bytes written to all peers so far.
    written: Arc<AtomicUsize>,
}

impl Scripted {
    /// Starts it; `script` turns a request line (`GET /x HTTP/1.1`) into the steps to run.
    /// After the steps, the connection reads the next request, unless a step ended it.
    pub async fn start<F>(script: F) -> Scripted
    where
        F: Fn(&str) -> Vec<Step> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(script);
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicUsize::new(0));
        let (c, r, w) = (connections.clone(), requests.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (script, r, w) = (script.clone(), r.clone(), w.clone());
                tokio::spawn(async move { serve(socket, &*script, &r, &w).await });
            }
        });
        Scripted {
            addr,
            connections,
            requests,
            written,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Bytes written to peers so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut socket: TcpStream,
    script: &(dyn Fn(&str) -> Vec<Step> + Send + Sync),
    requests: &AtomicUsize,
    written: &AtomicUsize,
) {
    let _ = socket.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(line) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        for step in script(&line) {
            let ok = match step {
                Step::Write(bytes) => write(&mut socket, &bytes, written).await,
                Step::Trickle(bytes, pause) => {
                    let mut ok = true;
                    for byte in bytes {
                        ok = write(&mut socket, &[byte], written).await;
                        if !ok {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    ok
                }
                Step::Endless { chunk, pause, max } => {
                    let mut sent = 0;
                    while sent < max && write(&mut socket, &chunk, written).await {
                        sent += chunk.len();
                        tokio::time::sleep(pause).await;
                    }
                    false
                }
                Step::Pause(pause) => {
                    tokio::time::sleep(pause).await;
                    true
                }
                Step::Close => return,
                Step::Reset => {
                    // Linger 0 makes the close an RST; it does not block the thread.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Hang => {
                    std::future::pending::<()>().await;
                    return;
                }
            };
            if !ok {
                return;
            }
        }
    }
}

async fn write(socket: &mut TcpStream, bytes: &[u8], written: &AtomicUsize) -> bool {
    match socket.write_all(bytes).await {
        Ok(()) => {
            written.fetch_add(bytes.len(), Ordering::SeqCst);
            true
        }
        Err(_) => false,
    }
}

/// Reads one request (head and `Content-Length` body) and returns its request line.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return head.lines().next().map(str::to_string);
            }
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
