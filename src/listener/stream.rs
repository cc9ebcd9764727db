//! The client socket wrapper: every read waits at most until its `ClientClock` deadline, a
//! head that grows past `client_max_head_bytes` is answered 431, and a write that makes no
//! progress for `client_send_timeout` fails. Everything else is delegated to the socket.

use super::clock::ClientClock;
use super::h2_frames::FrameWatch;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What a client whose request head grows past `client_max_head_bytes` is told, once, before
/// the connection closes.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A client socket whose reads fail with `TimedOut` once its clock's deadline passes.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    clock: ClientClock,
    /// The read-deadline timer, made when a read first has to wait and kept for the
    /// connection's life; armed at or before the clock's deadline (see `poll_deadline`).
    timer: Option<Pin<Box<Sleep>>>,
    /// Started when a write first cannot make progress, dropped when one does.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes `try_peek` read (at most one HTTP/2 preface), handed out again by the next reads.
    peeked: Vec<u8>,
    /// On an HTTP/2 connection, the client's frames as they pass (`h2_frames.rs`).
    frames: Option<FrameWatch>,
    /// The client reset too many streams right after opening them: nothing more is read
    /// from it while its connection sends GOAWAY and closes.
    calming: bool,
}

impl DeadlineStream {
    /// A read is waiting: fail it once the clock's deadline passes.
    ///
    /// The one timer is armed lazily. A deadline that moved later (every keep-alive request
    /// and every body read moves it) leaves the timer where it is; when the timer fires
    /// before the deadline it is moved on to it. Only a deadline that moved earlier re-arms
    /// it at once. A busy keep-alive connection so touches tokio's timer wheel about once
    /// per timeout period instead of once per request: a new timer per request took the
    /// wheel's lock and, most times, woke the event loop through its eventfd (0.37 `write`
    /// system calls per pass-through request under `perf stat`). With no deadline (the
    /// request is being answered) the timer is left alone: if it fires meanwhile it wakes
    /// the task once, and the read finds no deadline and waits on.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(deadline) = self.clock.deadline() else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if deadline < timer.deadline() {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // The timer is armed at or before the deadline; firing at it means the deadline passed.
        while timer.as_mut().poll(cx).is_ready() {
            if deadline <= timer.deadline() {
                self.timer = None;
                self.clock.expire();
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client deadline passed",
                )));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// A read from the socket, counted by the clock and failed once its deadline passes.
    fn poll_read_counted(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.clock.on_read(buf.filled().len() - before) {
                    return Poll::Ready(Ok(()));
                }
                // Over the head limit: say so if the socket takes it at once, then fail the
                // read so pingora closes the connection without buffering more.
                if let Some(metrics) = &self.clock.metrics {
                    metrics.head_too_large.inc();
                }
                let _ = Pin::new(&mut self.inner).poll_write(cx, HEAD_TOO_LARGE);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the request head exceeds client_max_head_bytes",
                )))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx),
        }
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.calming {
            return this.poll_deadline(cx);
        }
        let before = buf.filled().len();
        let read = if !this.peeked.is_empty() {
            // Already counted by the clock when the peek read them.
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            Poll::Ready(Ok(()))
        } else {
            this.poll_read_counted(cx, buf)
        };
        if matches!(read, Poll::Ready(Ok(()))) {
            return this.watch_frames(&buf.filled()[before..]);
        }
        read
    }
}

impl DeadlineStream {
    /// On an HTTP/2 connection, reads the client's frame heads from `bytes`: what is half
    /// received sets the connection's deadline, and a client that resets too many streams
    /// right after opening them is read no more (its connection's loop sends GOAWAY).
    fn watch_frames(&mut self, bytes: &[u8]) -> Poll<std::io::Result<()>> {
        if self.frames.is_none() {
            if !self.clock.is_multiplexed() {
                return Poll::Ready(Ok(()));
            }
            let max = self.clock.limits.max_h2_premature_resets;
            self.frames = Some(FrameWatch::new(max, tokio::time::Instant::now()));
        }
        let Some(frames) = &mut self.frames else {
            return Poll::Ready(Ok(()));
        };
        frames.feed(bytes, tokio::time::Instant::now());
        if frames.too_many_premature_resets() {
            self.clock.premature_resets();
            self.calming = true;
        }
        self.clock.frames_pending(frames.pending());
        Poll::Ready(Ok(()))
    }
}

/// The clock of the connection a proxied request came on (`None` for connections that were
/// not accepted through a `Listener`, which only tests build, and for HTTP/2 streams, whose
/// connection's clock no one stream may move).
pub fn clock_of(session: &pingora::proxy::Session) -> Option<&ClientClock> {
    clock_of_http(&session.downstream_session)
}

/// The clock of the connection an HTTP session (of the proxy or of a plain app) is on.
pub fn clock_of_http(session: &pingora::protocols::http::ServerSession) -> Option<&ClientClock> {
    let stream = session.stream()?;
    let wrapped = (**stream).as_any().downcast_ref::<DeadlineStream>()?;
    Some(wrapped.clock())
}

impl DeadlineStream {
    pub(super) fn new(inner: Stream, clock: ClientClock) -> Self {
        DeadlineStream {
            inner,
            clock,
            timer: None,
            write_timer: None,
            peeked: Vec::new(),
            frames: None,
            calming: false,
        }
    }

    pub fn clock(&self) -> &ClientClock {
        &self.clock
    }

    /// Ends the write side and reads and drops what the client still sends, until it closes
    /// too or `within` has passed: after an answer that closes the connection while the client
    /// may still be sending a body, so that closing with unread bytes does not reset the
    /// connection under the answer (nginx's `lingering_close`). The reads bypass the clock: no
    /// request is being read any more, and a deadline it already cut would count again.
    pub async fn linger(&mut self, within: std::time::Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.inner.shutdown().await.is_err() {
            return;
        }
        let until = tokio::time::Instant::now() + within;
        let mut scratch = vec![0; 4096];
        let inner = &mut self.inner;
        while let Ok(Ok(read)) = tokio::time::timeout_at(until, inner.read(&mut scratch)).await {
            if read == 0 {
                return;
            }
        }
    }

    /// Puts `bytes` (read from this stream, and counted by its clock then) back in front of
    /// what the next reads return.
    pub fn unread(&mut self, bytes: &[u8]) {
        self.peeked.splice(0..0, bytes.iter().copied());
    }

    /// A write that cannot make progress for `client_send_timeout` fails (nginx's
    /// `send_timeout`: the time between two successive writes), so a client that stops
    /// reading its answer cannot hold the connection and the unsent reply for ever.
    fn bound_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if written.is_ready() {
            self.write_timer = None;
            return written;
        }
        let timeout = self.clock.limits.send_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.write_timer = None;
            if let Some(metrics) = &self.clock.metrics {
                metrics.send_timed_out.inc();
            }
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the send timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound_write(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// The first bytes of an HTTP/2 connection (RFC 9113 section 3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl Peek for DeadlineStream {
    /// With h2c, pingora peeks the start of every request on a cleartext connection for the
    /// HTTP/2 preface. The peek reads like any other read: under the clock's deadline (the
    /// header timeout of a new connection, the idle timeout between keep-alive requests) and
    /// counted towards the head. It stops as soon as the bytes can no longer be the preface,
    /// so a short HTTP/1 request (`GET / HTTP/1.0` and two CRLFs is 18 bytes) is not held
    /// waiting for 24, and what it read is kept for the next reads even if the peek is
    /// dropped half-way. `buf` gets the bytes read, zero-filled past them; `Err` when the
    /// client closed before sending anything or the deadline passed.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let preface_sized = buf.len() == H2_PREFACE.len();
        while self.peeked.len() < buf.len()
            && (!preface_sized || H2_PREFACE.starts_with(&self.peeked))
        {
            let mut chunk = [0u8; 64];
            let want = (buf.len() - self.peeked.len()).min(chunk.len());
            let read = std::future::poll_fn(|cx| {
                let mut window = ReadBuf::new(&mut chunk[..want]);
                self.poll_read_counted(cx, &mut window)
                    .map_ok(|()| window.filled().len())
            })
            .await?;
            if read == 0 {
                break;
            }
            self.peeked.extend_from_slice(&chunk[..read]);
        }
        if self.peeked.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client closed before a request",
            ));
        }
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        buf[n..].fill(0);
        Ok(true)
    }
}
