//! Shared integration-test harness for `batchgate`.
//!
//! This module owns everything the integration tests need besides the
//! binary under test itself:
//!
//! * [`upstream`] — an instrumented HTTP/1.1 test upstream (request log,
//!   concurrency peak, connection count, scripted replies with delays,
//!   hangs and connection closes);
//! * [`client`] — a tiny raw HTTP/1.1 client giving tests exact control over
//!   the bytes sent to the gate, including keep-alive connections;
//! * [`gate`] — starting the real `batchgate` binary from a config text in a
//!   fresh temp dir, and running `batchgate check`;
//! * [`config`] — a small builder for the config texts the tests start the gate with;
//! * [`batch`] — building envelope batch bodies and reading envelope replies;
//! * [`scripted`] — an upstream that plays scripted bytes and pauses (fault injection);
//! * [`tls`] — a test CA and certificates (rcgen) and a TLS front for test upstreams;
//! * [`prom`] — parsing `/metrics` (Prometheus text format), finding the Prometheus tools,
//!   reading the Grafana dashboard.
//!
//! Each test binary uses only a subset of it, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod batch;
pub mod client;
pub mod config;
pub mod gate;
pub mod h2c;
pub mod prom;
pub mod scripted;
pub mod tls;
pub mod upstream;
