//! Moves a just-accepted TCP connection to the worker that will serve it (`workers.rs`).
//!
//! The acceptor's runtime registered the socket when pingora accepted it, and tokio reports
//! a socket's readiness on the runtime that registered it: served as is, every read and write
//! a worker waits for would need a wake-up from the acceptor thread (measured: 1.2 eventfd
//! writes per pass-through request). The socket is duplicated, the copy registered on the
//! worker's runtime and the original (with its registration) dropped. pingora's accepted
//! stream buffers writes in 1460 bytes so a small response head and body leave in one
//! `send`; a stream built from a socket has no such buffer (pingora keeps that setting to
//! itself), so `Rehomed` adds it.

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as TcpConn;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// pingora's write buffer for accepted connections (`DEFAULT_L4_WRITE_BUFFER_SIZE`).
const WRITE_BUFFER: usize = 1460;

/// Re-registers a plain TCP connection pingora accepted on the calling thread's runtime;
/// anything else (or a socket that cannot be duplicated) is served as it is.
pub(super) fn rehome(stream: Stream) -> Stream {
    let Some(conn) = stream.as_any().downcast_ref::<TcpConn>() else {
        return stream;
    };
    let digest = conn.get_socket_digest();
    // The copy shares the open file (and its O_NONBLOCK); registered here, on this thread.
    let registered = duplicate(conn)
        .map(std::net::TcpStream::from)
        .and_then(tokio::net::TcpStream::from_std);
    let Ok(socket) = registered else {
        return stream;
    };
    // Nothing was read or buffered yet: dropping the original only closes its descriptor
    // and its registration on the acceptor.
    drop(stream);
    let mut conn = TcpConn::from(socket);
    let _ = conn.set_nodelay();
    let fresh = SocketDigest::from_raw_fd(conn.as_raw_fd());
    if let Some(old) = digest {
        // The addresses pingora learnt at accept (the peer's without a syscall).
        let _ = fresh.peer_addr.set(old.peer_addr().cloned());
        if let Some(local) = old.local_addr.get() {
            let _ = fresh.local_addr.set(local.clone());
        }
    }
    conn.set_socket_digest(fresh);
    Box::new(Rehomed {
        inner: BufWriter::with_capacity(WRITE_BUFFER, conn),
    })
}

/// A second descriptor for the connection's socket.
#[allow(unsafe_code)]
fn duplicate(conn: &TcpConn) -> std::io::Result<OwnedFd> {
    // SAFETY: the descriptor belongs to `conn`, which is borrowed (and so stays open) for as
    // long as the `BorrowedFd` lives: only until `try_clone_to_owned` returns the duplicate.
    let fd = unsafe { BorrowedFd::borrow_raw(conn.as_raw_fd()) };
    fd.try_clone_to_owned()
}

/// A re-registered connection with pingora's write buffering; reads go straight through.
#[derive(Debug)]
struct Rehomed {
    inner: BufWriter<TcpConn>,
}

impl Drop for Rehomed {
    /// What is still buffered goes out if the socket takes it now, as pingora's own stream
    /// does when dropped: a path that writes and then drops the stream loses nothing.
    fn drop(&mut self) {
        use futures_util::FutureExt;
        use tokio::io::AsyncWriteExt;
        let _ = self.inner.flush().now_or_never();
    }
}

impl AsyncRead for Rehomed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rehomed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Rehomed {
    async fn shutdown(&mut self) {
        // What is buffered goes out first, as pingora's own stream does it.
        let _ = self.inner.flush().await;
        Shutdown::shutdown(self.inner.get_mut()).await
    }
}

impl UniqueID for Rehomed {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl Ssl for Rehomed {
    fn get_ssl(&self) -> Option<&TlsRef> {
        None
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        None
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        None
    }
}

impl GetTimingDigest for Rehomed {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }
}

impl GetProxyDigest for Rehomed {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for Rehomed {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for Rehomed {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.get_mut().try_peek(buf).await
    }
}
