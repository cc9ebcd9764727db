//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same property
//! checks the fuzz targets run (`fuzz/props.rs`), as ordinary tests: CI does no fuzzing, but
//! every input the fuzzer found interesting keeps being checked. Fuzzing itself is
//! `cargo +nightly fuzz run <target>` in `fuzz/` (docs/RELIABILITY.md).

#[path = "../../fuzz/props.rs"]
mod props;

use std::path::Path;

/// Runs `check` on every file of one target's corpus; there must be some.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its property",
            path.display()
        );
        inputs += 1;
    }
    assert!(inputs > 0, "{target}: empty corpus");
}

/// Every envelope corpus input: sent children pass the guards, replies are JSON.
#[test]
fn envelope_corpus() {
    replay("envelope", props::envelope);
}

/// Every JSON-RPC corpus input: no denied or unusable method is sent, replies are JSON.
#[test]
fn jsonrpc_corpus() {
    replay("jsonrpc", props::jsonrpc);
}

/// Every fan-out corpus input: each id stays one encoded path segment or query value.
#[test]
fn fanout_corpus() {
    replay("fanout", props::fanout);
}

/// Every upstream-response corpus input: heads and bodies within their limits, nothing
/// left over on a connection marked reusable.
#[test]
fn h1_response_corpus() {
    replay("h1_response", props::h1_response);
}

/// Every lane corpus input: a relayed head is a plain request and goes upstream rewritten
/// by the proxy's rules, with one framing.
#[test]
fn lane_request_corpus() {
    replay("lane_request", props::lane_request);
}

/// Every relay corpus input: a refused answer reaches the client as nothing, a relayed one
/// as one well-framed response.
#[test]
fn relay_response_corpus() {
    replay("relay_response", props::relay_response);
}

/// Every pipelined-answers corpus input: one result per request, in order, none after a
/// failure; generated answers read back exactly.
#[test]
fn pipelined_responses_corpus() {
    replay("pipelined_responses", props::pipelined_responses);
}

/// Every multipart corpus input: sent parts pass the guards, replies re-split into one part
/// per request under a boundary that occurs nowhere else, refusals are JSON.
#[test]
fn multipart_corpus() {
    replay("multipart", props::multipart);
}

/// Every HTTP/2 frame-head corpus input: the same streams, resets and half-received frame
/// whatever pieces the bytes come in; bounded memory.
#[test]
fn h2_frames_corpus() {
    replay("h2_frames", props::h2_frames);
}

/// Every Meta corpus input: sent items (references filled from hostile answers too) pass the
/// guards, dependencies point back, replies are one JSON array element per item.
#[test]
fn meta_corpus() {
    replay("meta", props::meta);
}

/// Every cache corpus input: answers the RFC 9111 rules refuse are never served, and the
/// cache stays within its bound.
#[test]
fn cache_corpus() {
    replay("cache", props::cache);
}

/// Every upstream-batching corpus input: one outcome per call, never another caller's answer,
/// and an id-list call asks exactly the callers' ids.
#[test]
fn upstream_batch_corpus() {
    replay("upstream_batch", props::upstream_batch);
}
