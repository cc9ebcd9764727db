//! batchgate: a pingora reverse proxy that turns one batch request into many ordinary
//! upstream requests, runs them with bounded concurrency and packs the answers into one reply.
//!
//! # Layout
//! ```text
//! client bytes ──► proxy (route lookup) ──► dialect.decode ──► [SubRequest] ──► exec ──► upstream
//!                        │ not a batch                                            │ limits, deadline,
//!                        └──► pingora pass-through                                │ cancellation
//! client ◄── reply bytes ◄── dialect.encode ◄── [Outcome] ◄──────────────────────┘
//! ```
//! - [`config`]: the TOML file (strict serde types) and its validated runtime form.
//! - [`item`]: the vocabulary every layer shares: `SubRequest`, `UpstreamResponse`,
//!   `Outcome` and its `ItemClass`. The executor, the upstream client and the metrics import it,
//!   never a dialect.
//! - [`dialect`]: pure decode/encode per batch dialect (`envelope`, `jsonrpc`, `fanout`).
//! - [`guard`]: what a sub-request may be (URL and header rules against SSRF and smuggling).
//! - [`exec`]: per-batch and global concurrency limits, item timeout, batch deadline.
//! - [`upstream`]: one sub-request over pingora's pooled connector.
//! - [`proxy`]: the pingora `ProxyHttp` impl wiring the above, plus pass-through.
//! - [`listener`]: client connections: the per-listener cap and the idle, head and body
//!   read deadlines around pingora's HTTP server.
//! - [`metrics`]: every Prometheus family, with per-route handles resolved once.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on the admin listener.
//! - [`demo`]: the built-in demo upstream behind `batchgate demo`.
//! - [`server`]: builds the pingora server and its services from a config.
//!
//! Adding a dialect today touches: `dialect/NEW.rs` (decode, encode, reject); a
//! `DialectConfig` variant, its validation (`config/NEW.rs`) and the dialect name in
//! `config/routes.rs`; a `RouteDialect` variant with its arms in `proxy.rs` (`build_route`)
//! and `proxy/batch.rs` (`serve_route`); a fuzz target in `fuzz/`. The executor, the
//! upstream client, the metrics and the listener need nothing.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod config;
pub mod demo;
pub mod dialect;
pub mod exec;
pub mod guard;
pub mod item;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod upstream;
