//! How an exchange reaches one address of an upstream: one `Transport` per upstream, one
//! variant per protocol holding that protocol's connections, and one `exchange` that items and
//! health checks both use. Each protocol's exchange (its own resend of a request a stale
//! connection never saw) lives in its module (`h1`, `h2`); every failure comes back as one
//! `ExchangeError` that says how much of the request had left.
//!
//! A new upstream protocol is a variant of `Protocol`, its arm in `exchange`, and its module.

use super::exchange_error::ExchangeError;
use super::{h1, h2, h2_streams, pool, BatchHeaders};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::item::{SubRequest, UpstreamResponse};
use crate::metrics::Carried;
use pingora::connectors::http::Connector;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;

/// One upstream's connections to its addresses.
pub(super) struct Transport {
    /// One ready peer per address (timeouts, TLS, ALPN).
    peers: Vec<HttpPeer>,
    /// Makes new connections (TCP, and TLS when the upstream speaks it): HTTP/1.1 and h2c
    /// connections, and the reachability checks of every protocol.
    connector: TransportConnector,
    protocol: Protocol,
}

/// The connections one protocol keeps, one entry per address. Shared (`Arc`) with the
/// transport a reload builds for the same connections (`keep_connections`).
enum Protocol {
    /// batchgate's own HTTP/1.1 exchange (`h1`) on connections kept in an idle pool.
    Http1 {
        pools: Arc<[pool::Pool]>,
        timeouts: h1::Timeouts,
        /// With `pipeline_depth` above 1: the pipelined connections, per address.
        pipes: Option<Arc<[h1::pipeline::Pipes]>>,
    },
    /// HTTP/2 with prior knowledge on batchgate's own set of connections (`h2_streams`).
    H2c {
        connections: Arc<[h2_streams::H2cConnections]>,
    },
    /// HTTP/2 over TLS (HTTP/1.1 when ALPN declines h2) through pingora's session pool, one
    /// connect at a time per address.
    H2 {
        connector: Arc<Connector>,
        gates: Arc<[h2_streams::SessionGate]>,
    },
}

impl Transport {
    pub(super) fn new(config: &UpstreamConfig) -> Self {
        let peers: Vec<HttpPeer> = config
            .addresses
            .iter()
            .map(|addr| peer(config, *addr))
            .collect();
        let protocol = match config.protocol {
            UpstreamProtocol::Http1 => {
                let timeouts = h1::Timeouts {
                    read: config.read_timeout,
                    write: config.write_timeout,
                };
                let pipes = (config.pipeline_depth > 1).then(|| {
                    let pipes = |_| {
                        let (depth, delay) = (config.pipeline_depth, config.pipeline_max_delay);
                        let (idle, idle_timeout) = (config.pool_size, config.idle_timeout);
                        h1::pipeline::Pipes::new(depth, delay, idle, idle_timeout, timeouts)
                    };
                    peers.iter().map(pipes).collect()
                });
                Protocol::Http1 {
                    pools: peers
                        .iter()
                        .map(|_| pool::Pool::new(config.pool_size, config.idle_timeout))
                        .collect(),
                    timeouts,
                    pipes,
                }
            }
            UpstreamProtocol::H2c => Protocol::H2c {
                connections: per_address(&peers),
            },
            UpstreamProtocol::H2 => Protocol::H2 {
                connector: Arc::new(Connector::new(Some(connector_options(config)))),
                gates: per_address(&peers),
            },
        };
        Transport {
            connector: TransportConnector::new(Some(connector_options(config))),
            peers,
            protocol,
        }
    }

    /// Takes over `old`'s open and idle connections; only for the same connection settings
    /// (`reload::same_connections`), so the protocols match.
    pub(super) fn keep_connections(&mut self, old: &Transport) {
        match (&mut self.protocol, &old.protocol) {
            (
                Protocol::Http1 { pools, pipes, .. },
                Protocol::Http1 {
                    pools: old,
                    pipes: old_pipes,
                    ..
                },
            ) => {
                *pools = old.clone();
                *pipes = old_pipes.clone();
            }
            (Protocol::H2c { connections }, Protocol::H2c { connections: old }) => {
                *connections = old.clone();
            }
            (
                Protocol::H2 { connector, gates },
                Protocol::H2 {
                    connector: old_connector,
                    gates: old_gates,
                },
            ) => {
                *connector = old_connector.clone();
                *gates = old_gates.clone();
            }
            _ => {}
        }
    }

    /// One exchange with address `n`; `repeatable`: the request may be sent twice (a
    /// connection that turns out stale may resend more than an unsent request). `count` is
    /// told whether the request went on a connection that was already open.
    pub(super) async fn exchange(
        &self,
        n: usize,
        request: &SubRequest,
        batch: &BatchHeaders,
        repeatable: bool,
        count: impl Fn(Carried),
    ) -> Result<UpstreamResponse, ExchangeError> {
        let Some(peer) = self.peers.get(n) else {
            return Err(no_address());
        };
        match &self.protocol {
            Protocol::Http1 {
                pools,
                timeouts,
                pipes,
            } => {
                let pool = pools.get(n).ok_or_else(no_address)?;
                let connect = || self.connector.new_stream(peer);
                let pipes = pipes.as_ref().and_then(|pipes| pipes.get(n));
                match pipes {
                    Some(pipes) if h1::pipeline::fits(request) => {
                        h1::pipeline::send(connect, pipes, pool, request, batch, repeatable, count)
                            .await
                    }
                    _ => {
                        h1::send(connect, pool, request, batch, *timeouts, repeatable, count).await
                    }
                }
            }
            Protocol::H2c { connections } => {
                let connections = connections.get(n).ok_or_else(no_address)?;
                let streams = h2_streams::Streams::H2c {
                    connections,
                    transport: &self.connector,
                };
                Box::pin(h2::send(streams, peer, request, batch, repeatable, count)).await
            }
            Protocol::H2 { connector, gates } => {
                let gate = gates.get(n).ok_or_else(no_address)?;
                let streams = h2_streams::Streams::Pingora { connector, gate };
                Box::pin(h2::send(streams, peer, request, batch, repeatable, count)).await
            }
        }
    }

    /// A new connection to address `n` (its TLS handshake included), closed at once.
    pub(super) async fn reach(&self, n: usize) -> Result<(), ExchangeError> {
        let peer = self.peers.get(n).ok_or_else(no_address)?;
        self.connector
            .new_stream(peer)
            .await
            .map(drop)
            .map_err(|error| ExchangeError::connect(&error))
    }
}

/// What pass-through needs to reach one address over batchgate's own HTTP/1.1 exchange.
pub(super) struct H1Address<'a> {
    pub pool: &'a pool::Pool,
    pub peer: &'a HttpPeer,
    pub connector: &'a TransportConnector,
    pub timeouts: h1::Timeouts,
}

impl Transport {
    /// Address `n` over HTTP/1.1; `None` for the other protocols, whose pass-through stays on
    /// pingora's proxy path.
    pub(super) fn h1(&self, n: usize) -> Option<H1Address<'_>> {
        match &self.protocol {
            Protocol::Http1 {
                pools, timeouts, ..
            } => Some(H1Address {
                pool: pools.get(n)?,
                peer: self.peers.get(n)?,
                connector: &self.connector,
                timeouts: *timeouts,
            }),
            Protocol::H2c { .. } | Protocol::H2 { .. } => None,
        }
    }
}

/// Fresh state for each address.
fn per_address<T: Default>(peers: &[HttpPeer]) -> Arc<[T]> {
    peers.iter().map(|_| T::default()).collect()
}

fn no_address() -> ExchangeError {
    ExchangeError::Connect {
        tls: false,
        detail: "the upstream has no such address".into(),
    }
}

/// The item connectors' options: pool size, and for TLS the CA file and client certificate,
/// loaded once here (config validation has read them) instead of per connection.
fn connector_options(config: &UpstreamConfig) -> ConnectorOptions {
    let mut options = ConnectorOptions::new(config.pool_size);
    if let Some(tls) = &config.tls {
        options.ca_file = tls.ca_file.clone();
        options.cert_key_file = tls.client_cert_files.clone();
    }
    options
}

/// A peer for one address with the upstream's timeouts and TLS settings, for the item
/// clients (whose connectors hold the CA and client certificate).
pub(super) fn peer(config: &UpstreamConfig, addr: std::net::SocketAddr) -> HttpPeer {
    let sni = config.tls.as_ref().map(|tls| tls.sni.clone());
    let mut peer = HttpPeer::new(addr, sni.is_some(), sni.unwrap_or_default());
    peer.options.connection_timeout = Some(config.connect_timeout);
    peer.options.read_timeout = Some(config.read_timeout);
    peer.options.write_timeout = Some(config.write_timeout);
    peer.options.idle_timeout = Some(config.idle_timeout);
    if let Some(tls) = &config.tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
    }
    match config.protocol {
        // ALPN offers only what the items speak, so the upstream cannot pick the other.
        UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
        // Prior knowledge: no ALPN on cleartext, so pingora's h2 connector trusts (2, 2).
        UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
        // ALPN h2 first, HTTP/1.1 if the upstream declines it.
        UpstreamProtocol::H2 => peer.options.set_http_version(2, 1),
    }
    if config.protocol != UpstreamProtocol::Http1 {
        peer.options.max_h2_streams = config.max_h2_streams;
    }
    peer
}

/// The pass-through peer: the item peer plus the CA and client certificate per peer, since
/// pingora's proxy has one connector for every upstream.
pub(super) fn passthrough_peer(config: &UpstreamConfig, addr: std::net::SocketAddr) -> HttpPeer {
    let mut peer = peer(config, addr);
    if let Some(tls) = &config.tls {
        peer.options.ca = tls.ca.clone();
        peer.client_cert_key = tls.client_cert.clone();
        // Pass-through relays what the client spoke; pingora's proxy negotiates per request.
        peer.options.set_http_version(1, 1);
    }
    peer
}
