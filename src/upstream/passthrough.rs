//! Pass-through on batchgate's own HTTP/1.1 exchange (`h1::relay`): which address, which
//! connection, what each ending counts for against the address (as pingora's path counts it
//! in `proxy.rs`), and the one resend a stale pooled connection allows.

use super::h1::relay::{relay, Answered, Buffers, Outbound, RelayError};
use super::pool::Conn;
use super::{Tried, UpstreamClient};
use crate::item::{FailureKind, Outcome, Sent, UpstreamResponse};
use tokio::io::{AsyncRead, AsyncWrite};

/// Connects a pass-through request tries, on different addresses when there are several,
/// before its error goes to the client.
const CONNECT_TRIES: usize = 3;

/// How a relay ended, and where.
#[derive(Debug)]
pub struct Relayed {
    /// The address the last attempt went to.
    pub address: Option<usize>,
    pub result: Result<Answered, RelayError>,
}

impl UpstreamClient {
    /// Whether this upstream's pass-through takes batchgate's own exchange (HTTP/1.1
    /// upstreams); the others stay on pingora's proxy path.
    pub fn relays(&self) -> bool {
        self.transport.h1(0).is_some()
    }

    /// Relays one pass-through request read from `client` and writes its answer there.
    /// `repeatable`: the method may be sent twice; `key`: what `balance = "hash"` hashes;
    /// `connected` is told whether each attempt went on a pooled connection.
    pub async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        out: Outbound<'_>,
        repeatable: bool,
        key: Option<&[u8]>,
        buffers: &mut Buffers,
        connected: impl Fn(bool),
    ) -> Relayed {
        let mut tried = Tried::default();
        let mut connect_failures = 0;
        // A pooled connection may have been closed by the upstream under the request.
        let mut pooled_allowed = true;
        loop {
            let n = self.choose(tried, key);
            tried = tried.with(n);
            let Some(address) = self.transport.h1(n) else {
                let no = RelayError::Connect("the upstream has no such address".into());
                return Relayed {
                    address: None,
                    result: Err(no),
                };
            };
            let pooled = pooled_allowed.then(|| address.pool.take()).flatten();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => match address.connector.new_stream(address.peer).await {
                    Ok(stream) => Conn::new(stream),
                    Err(error) => {
                        let failed = Outcome::failed(FailureKind::Connect, Sent::Nothing);
                        self.address_outcome(n, &failed);
                        connect_failures += 1;
                        let others = self.config.addresses.len() > 1;
                        if others && connect_failures < CONNECT_TRIES {
                            continue;
                        }
                        return Relayed {
                            address: Some(n),
                            result: Err(RelayError::Connect(error.to_string())),
                        };
                    }
                },
            };
            connected(reused);
            let result = relay(
                &mut conn.stream,
                client,
                out.again(),
                address.timeouts,
                buffers,
            )
            .await;
            match &result {
                Ok(answered) => {
                    let answer = Outcome::Response(UpstreamResponse {
                        status: answered.status,
                        headers: http::HeaderMap::new(),
                        body: bytes::Bytes::new(),
                    });
                    self.address_outcome(n, &answer);
                    if answered.reusable {
                        address.pool.put(conn);
                    }
                }
                Err(RelayError::Upstream(error)) => {
                    let stale = reused
                        && out.rest == 0
                        && (error.unsent() || error.nothing_received())
                        && super::may_send_again(error.sent(), repeatable);
                    if stale {
                        // Once, on a new connection to the same address.
                        pooled_allowed = false;
                        tried = Tried::default();
                        continue;
                    }
                    let kind = match error {
                        super::h1::H1Error::Timeout(_) => FailureKind::Timeout,
                        _ => FailureKind::Connection,
                    };
                    self.address_outcome(n, &Outcome::failed(kind, Sent::Maybe));
                }
                Err(
                    RelayError::Connect(_) | RelayError::ClientBody(_) | RelayError::Cut { .. },
                ) => {}
            }
            return Relayed {
                address: Some(n),
                result,
            };
        }
    }
}
