//! Every integration test, in one binary: it links pingora once instead of once per test
//! file. Each module is one capability, named as its file; `cargo test --test it http2::`
//! runs one of them. `common/` starts upstreams and batchgate for all of them.

mod common;

mod balance;
mod clients;
mod coalesce;
mod config_check;
mod connections;
mod dashboard;
mod demo;
mod dependencies;
mod deploy;
mod envelope;
mod fanout;
mod faults;
mod fuzz_corpus;
mod h2c;
mod hostile;
mod http2;
mod instance;
mod jsonrpc;
mod lane;
mod limits;
mod meta;
mod metrics;
mod multipart;
mod overload;
mod passthrough;
mod prometheus;
mod rate_limit;
mod reload;
mod resilience;
mod security;
mod shutdown;
mod status;
mod stream;
mod tls;
mod tracing;
mod upstream_batch;
mod upstream_quirks;
