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
//! - [`config`]: the TOML file (strict serde types) and its validated runtime form, each
//!   section's runtime type and checks in the section's file.
//! - [`item`]: the vocabulary every layer shares: `SubRequest`, `UpstreamResponse`,
//!   `Outcome`, the typed `Failure` with the one table mapping it to status, code, class and
//!   fault, `RejectionKind`, and `Upstream`, the seam the executor sends items through. The executor, the upstream client and the metrics import it,
//!   never a dialect.
//! - [`dialect`]: pure decode/encode per batch dialect (`envelope`, `jsonrpc`, `fanout`).
//! - [`guard`]: what a sub-request may be (URL and header rules against SSRF and smuggling).
//! - [`admission`]: whether a decoded batch may wait for permits at all (bounded queue,
//!   queue-time budget, per-client cap, held memory), refusing with 503/429 at once.
//! - [`permits`]: the global item permits, granted round-robin across clients.
//! - [`exec`]: per-batch and global concurrency limits, item timeout, batch deadline.
//! - [`upstream`]: one sub-request over pingora's pooled connector.
//! - [`proxy`]: the pingora `ProxyHttp` impl wiring the above, plus pass-through; its
//!   routing table is swapped whole by a reload.
//! - [`reload`]: SIGHUP: read, validate and apply the config file in place.
//! - [`listener`]: client connections: the per-listener cap, the idle, head and body
//!   read deadlines around pingora's HTTP server, and the per-thread workers that serve them.
//! - [`metrics`]: every Prometheus family, with per-route handles resolved once.
//! - [`logs`]: the log subscriber, and the pingora line that is counted instead of logged.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on the admin listener.
//! - [`demo`]: the built-in demo upstream behind `batchgate demo`.
//! - [`server`]: builds the pingora server and its services from a config.
//! - [`instance`]: the running instance as commands see it: listeners claimed before start,
//!   the pid file (pid and config path), verified before anything is signalled.
//!
//! Imports point down only: `item` (and `config`, which is data) at the bottom; `dialect`
//! reads `config` and `item`; `exec` (with `permits`), `upstream` and `metrics` know `item`
//! and no dialect; `admin` reads `upstream`, never the reverse; `proxy` and `server` wire
//! everything. The same holds among the children of one module (`listener::clock` does not
//! know `listener::stream`; in `config`, `problems` and `values` are at the bottom and the
//! driver `validate` on top); a module's own file and its children are one unit. The test in
//! `layout.rs` reads the source and fails on any two modules that import each other.
//!
//! Adding a dialect touches: `dialect/NEW.rs` (decode, encode, reject); in `dialect/mod.rs`
//! one `RouteDialect` variant with its arm in `RouteDialect::new` and in `with_dialect!`;
//! one `DialectConfig` variant with its validation (`config/NEW.rs`) and its name in
//! `config/routes.rs`; a fuzz target in `fuzz/`. The proxy, the executor, the upstream client,
//! the metrics and the listener need nothing.
// One audited exception: duplicating an accepted socket's descriptor (`listener/rehome.rs`).
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod admission;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod demo;
pub mod dialect;
pub mod exec;
pub mod guard;
pub mod instance;
pub mod item;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod permits;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod server;
pub mod traces;
pub mod upstream;
pub mod upstream_batch;

#[cfg(test)]
mod layout;
