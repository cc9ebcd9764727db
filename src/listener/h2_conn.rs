//! One HTTP/2 client connection: its accept loop, in place of pingora's, so that batchgate
//! can end a connection with a GOAWAY of its own choosing and time each of its streams.
//!
//! It does what pingora's loop does (the handshake with the app's options, one task per
//! stream, a graceful GOAWAY at shutdown, the idle timeout once no stream is open, a
//! connection closed after `MAX_MALFORMED_STREAMS` streams pingora had to reject) and two
//! things it cannot: a client that resets too many streams right after opening them
//! (`h2_frames.rs` notices, the clock signals) gets `GOAWAY(ENHANCE_YOUR_CALM)`, as Envoy
//! and nginx answer the "rapid reset" pattern, and each stream runs under a `BodyWatch`
//! (`h2_streams.rs`).

use super::h2_streams::{self, OpenStreams};
use super::stream::DeadlineStream;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::v2::server::{handshake, H2Accept};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Ssl, Stream};
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Streams pingora may reject as malformed (a forbidden byte in `:path`, conflicting
/// `Content-Length`) before the connection is closed: pingora's own loop allows 32.
const MAX_MALFORMED_STREAMS: usize = 32;

/// Serves every stream of the HTTP/2 connection on `stream` with `app`, until the client
/// or the loop ends it. `listener`: the one it arrived on, to count its streams' timeouts.
pub(super) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: DeadlineStream,
    shutdown: &ShutdownWatch,
    listener: SocketAddr,
) {
    let calm = stream.clock().calm_requested();
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let stream: Stream = Box::new(stream);
    let mut conn = match handshake(stream, app.h2_options()).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("client HTTP/2 handshake failed: {e}");
            return;
        }
    };
    let idle_timeout = app.server_options().and_then(|o| o.h2_idle_timeout);
    let open = Arc::new(OpenStreams::default());
    let mut shutdown = shutdown.clone();
    let mut malformed = 0;
    let mut closing = false;
    loop {
        let next = if closing {
            // Drive the connection until its GOAWAY is out and its streams are done (a
            // client that takes nothing is cut by the send timeout).
            H2Session::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                next = H2Session::from_h2_conn(&mut conn, digest.clone()) => next,
                // Raised only while the branch above polls the connection, so looked at
                // right after it.
                () = raised(&calm) => {
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                    continue;
                }
                () = open.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() => {
                    // Nothing open for the idle timeout: close at once (a graceful GOAWAY
                    // could wait on a peer that is gone).
                    return;
                }
            }
        };
        match next {
            Err(e) => {
                tracing::debug!("HTTP/2 connection ended: {e}");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MAX_MALFORMED_STREAMS && !closing {
                    tracing::debug!("HTTP/2 client sent {malformed} malformed requests; closing");
                    conn.abrupt_shutdown(h2::Reason::PROTOCOL_ERROR);
                    closing = true;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                tokio::spawn(h2_streams::serve_stream(
                    app.clone(),
                    ServerSession::new_http2(session),
                    shutdown.clone(),
                    listener,
                    open.enter(),
                ));
            }
        }
    }
}

/// Ready once `flag` is raised. It registers no waker: the flag is raised only during a
/// poll of the same task, which polls this right after.
fn raised(flag: &AtomicBool) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if flag.load(Ordering::Relaxed) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}
