//! End-to-end load benchmark: a fast upstream, the release batchgate binary and a load client,
//! all on 127.0.0.1, reported side by side in one run. This is the in-process variant (the
//! upstream and the client live in this benchmark's process); `benches/sidebyside.rs` measures
//! against peers and an upstream that are all separate processes.
//!
//! Run: `cargo bench --bench load` (about a minute; everything it starts, it stops).
//! Scenarios:
//! * latency, 10 ms upstream: one call straight to the upstream (concurrency 1) vs one
//!   100-item envelope batch through batchgate (per-batch concurrency 100);
//! * CPU, 0 ms upstream: 100-item batches vs single pass-through requests vs direct calls,
//!   with batchgate's CPU-seconds per 1,000 items read from /proc/<pid>/stat;
//! * capacity: 1,000 batches of 100 items in flight at once against the 10 ms upstream with
//!   `max_in_flight = 1024`, all checked for correctness.
//!
//! Reference peers, measured in the same run when installed: nginx (pass-through) and the npm
//! `batch-request` Express middleware (`benches/peers/batch-request`, enabled by `npm ci` there).
//!
//! * TLS (`load/tls.rs`): clients over TLS (kept-alive and one connection per request) and
//!   items to a TLS upstream, beside nginx doing the same TLS work.
//!
//! * burst (`LOAD_ONLY=burst`, `load/overload.rs`): 6000 batches at once into a full queue:
//!   batchgate's CPU per refusal and a pass-through probe meanwhile;
//! * overload (`LOAD_ONLY=overload`, `load/overload.rs`): open-loop batches at 0.5x-10x the
//!   capacity of a small batchgate, with admission on and off; `LOAD_ONLY=soak` runs 80% of
//!   capacity for `SOAK_SECONDS` (default 120) and samples RSS and file descriptors.
//!
//! Environment: `LOAD_SECONDS` (default 4) per throughput scenario; `LOAD_TLS=0` skips TLS.

// TLS scenarios: certificates, the TLS upstream front, batchgate and nginx doing TLS.
#[path = "load/tls.rs"]
mod tls;

// The overload scenario (`LOAD_ONLY=overload`): open-loop arrivals up to 10x capacity.
#[path = "load/overload.rs"]
mod overload;

// CPU of started processes, free ports, stopping them (shared with `sidebyside.rs`).
#[path = "load/procs.rs"]
mod procs;
use procs::{family_cpu_seconds, free_port, process_cpu_seconds};

// The h2c test upstream; the benchmark does not read its request log.
#[path = "../tests/it/common/h2c.rs"]
#[allow(dead_code)]
mod h2c;

use bytes::{Buf, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Items per batch, as in the issue's targets.
const ITEMS: usize = 100;
/// Batches in flight at once in the capacity scenario.
const CAPACITY_BATCHES: usize = 1000;

fn capacity_batches() -> usize {
    std::env::var("CAPACITY_BATCHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CAPACITY_BATCHES)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let load_time = Duration::from_secs(seconds);
    let fast = start_upstream(Duration::ZERO).await;
    let slow = start_upstream(Duration::from_millis(10)).await;
    let h2_fast = h2c::H2Upstream::start(Duration::ZERO, false).await;
    let h2_slow = h2c::H2Upstream::start(Duration::from_millis(10), false).await;
    if std::env::var("LOAD_ONLY").is_ok_and(|o| o == "overload") {
        overload_only(&slow, load_time).await;
        return;
    }
    if std::env::var("LOAD_ONLY").is_ok_and(|o| o == "burst") {
        // Refusals must be cheap: admission decides from the request head (issue 26).
        let stuck = start_upstream(Duration::from_secs(30)).await;
        let gate = overload::start_burst_gate(stuck.addr, fast.addr);
        gate.wait_ready().await;
        overload::burst(&gate, "queue full").await;
        return;
    }
    if std::env::var("LOAD_ONLY").is_ok_and(|o| o == "soak") {
        let seconds = std::env::var("SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok());
        let gate = overload::start_gate(slow.addr, "[server.admission]\nqueue_budget = \"2s\"");
        gate.wait_ready().await;
        let duration = Duration::from_secs(seconds.unwrap_or(120));
        overload::soak(&gate, duration, Duration::from_secs(10)).await;
        return;
    }
    if let Some(only) = std::env::var("LOAD_ONLY")
        .ok()
        .filter(|o| o.starts_with("peer"))
    {
        // Profiling aid for the batch-request peer; batchgate is not started.
        peer_only(&only, &fast, &slow, load_time).await;
        return;
    }
    let tls = tls::Setup::new(fast.addr).await;
    let upstreams = GateUpstreams {
        fast: fast.addr,
        slow: slow.addr,
        h2_fast: h2_fast.addr,
        h2_slow: h2_slow.addr,
    };
    let gate = Gate::start(&upstreams, &tls);
    gate.wait_ready().await;
    warm_up(&gate, &fast).await;
    if let Ok(only) = std::env::var("LOAD_ONLY") {
        // Profiling aid: one scenario, with batchgate's pid printed for `perf record -p`.
        let opened = |u: &Arc<AtomicU64>| u.load(Ordering::Relaxed);
        let before = (opened(&fast.connections), opened(&h2_fast.connections));
        profile_only(&only, &gate, load_time).await;
        println!(
            "upstream connections opened during the run: HTTP/1.1 {}, h2c {}",
            opened(&fast.connections) - before.0,
            opened(&h2_fast.connections) - before.1
        );
        return;
    }

    println!(
        "batchgate load benchmark (release build, 127.0.0.1, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "batchgate threads={} work_stealing={}, upstream and client in this process (2 tokio workers)\n",
        std::env::var("BATCHGATE_THREADS").unwrap_or_else(|_| "2".into()),
        std::env::var("BATCHGATE_WORK_STEALING").unwrap_or_else(|_| "false".into())
    );

    // Latency against the 10 ms upstream.
    let single = closed_loop(slow.addr, 1, load_time / 2, None, |_| upstream_call()).await;
    let direct100 = closed_loop(slow.addr, ITEMS, load_time / 2, None, |_| upstream_call()).await;
    let cpu_before = gate.cpu_seconds();
    let batch10 = closed_loop(gate.addr, 1, load_time / 2, None, |_| {
        batch_request("/slow/batch")
    })
    .await;
    let batch10_cpu = gate.cpu_seconds() - cpu_before;

    // CPU against the 0 ms upstream.
    let direct0 = closed_loop(fast.addr, 32, load_time, None, |_| upstream_call()).await;
    let cpu_before = gate.cpu_seconds();
    let pass = closed_loop(gate.addr, 32, load_time, None, |_| passthrough_call()).await;
    let pass_cpu = gate.cpu_seconds() - cpu_before;
    let cpu_before = gate.cpu_seconds();
    let batch0 = closed_loop(gate.addr, 4, load_time, None, |_| {
        batch_request("/fast/batch")
    })
    .await;
    let batch0_cpu = gate.cpu_seconds() - cpu_before;
    // The same 100 calls as one Google-style multipart batch.
    let cpu_before = gate.cpu_seconds();
    let multipart0 = closed_loop(gate.addr, 4, load_time, None, |_| {
        multipart_request("/fast/multipart")
    })
    .await;
    let multipart0_cpu = gate.cpu_seconds() - cpu_before;
    // The same batches against h2c upstreams (items multiplexed as HTTP/2 streams).
    let cpu_before = gate.cpu_seconds();
    let h2_batch10 = closed_loop(gate.addr, 1, load_time / 2, None, |_| {
        batch_request("/h2slow/batch")
    })
    .await;
    let h2_batch10_cpu = gate.cpu_seconds() - cpu_before;
    let cpu_before = gate.cpu_seconds();
    let h2_batch0 = closed_loop(gate.addr, 4, load_time, None, |_| {
        batch_request("/h2fast/batch")
    })
    .await;
    let h2_batch0_cpu = gate.cpu_seconds() - cpu_before;
    // nginx as the pass-through reference, measured the same way, when it is installed.
    let nginx_server = Nginx::start(fast.addr, &tls);
    let nginx = match &nginx_server {
        Some(nginx) => {
            nginx.wait_ready().await;
            let _ = closed_loop(nginx.addr, 8, Duration::from_millis(300), Some(50), |_| {
                passthrough_call()
            })
            .await;
            let before = nginx.cpu_seconds();
            let stats = closed_loop(nginx.addr, 32, load_time, None, |_| passthrough_call()).await;
            let cpu = nginx.cpu_seconds() - before;
            Some((stats, cpu))
        }
        None => None,
    };
    // The npm batch-request middleware as the batch-proxy reference, when node and its
    // node_modules are installed; stopped before the capacity scenario.
    let peer = measure_batch_request(&fast, &slow, load_time).await;

    println!("| scenario | upstream | clients | requests/s | items/s | p50 ms | p99 ms | batchgate CPU s / 1k items |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    row("direct, one call at a time", "10 ms", 1, &single, 1, None);
    row(
        "direct, 100 calls in parallel",
        "10 ms",
        ITEMS,
        &direct100,
        1,
        None,
    );
    row(
        "batch of 100 via batchgate",
        "10 ms",
        1,
        &batch10,
        ITEMS,
        Some(batch10_cpu),
    );
    row("direct", "0 ms", 32, &direct0, 1, None);
    row(
        "pass-through via batchgate",
        "0 ms",
        32,
        &pass,
        1,
        Some(pass_cpu),
    );
    row(
        "batch of 100 via batchgate",
        "0 ms",
        4,
        &batch0,
        ITEMS,
        Some(batch0_cpu),
    );
    row(
        "multipart batch of 100 via batchgate",
        "0 ms",
        4,
        &multipart0,
        ITEMS,
        Some(multipart0_cpu),
    );
    row(
        "batch of 100 via batchgate, h2c upstream",
        "10 ms",
        1,
        &h2_batch10,
        ITEMS,
        Some(h2_batch10_cpu),
    );
    row(
        "batch of 100 via batchgate, h2c upstream",
        "0 ms",
        4,
        &h2_batch0,
        ITEMS,
        Some(h2_batch0_cpu),
    );
    if let Some((stats, cpu)) = &nginx {
        row(
            "pass-through via nginx (reference)",
            "0 ms",
            32,
            stats,
            1,
            Some(*cpu),
        );
    }
    if let Ok(peer) = &peer {
        row(
            "batch of 100 via batch-request (npm, reference)",
            "10 ms",
            1,
            &peer.latency,
            ITEMS,
            Some(peer.latency_cpu),
        );
        row(
            "batch of 100 via batch-request (npm, reference)",
            "0 ms",
            4,
            &peer.throughput,
            ITEMS,
            Some(peer.throughput_cpu),
        );
    }

    let cpu_per_item = batch0_cpu / (batch0.ok as f64 * ITEMS as f64).max(1.0);
    let cpu_per_pass = pass_cpu / (pass.ok as f64).max(1.0);
    println!();
    println!(
        "batch p50 / single-call p50 (10 ms upstream): {:.3}  (target <= 1.10)",
        batch10.p(0.5) / single.p(0.5)
    );
    println!(
        "batchgate CPU per item in a 100-item batch (0 ms): {:.2} us  (target <= 10 us)",
        cpu_per_item * 1e6
    );
    println!(
        "batchgate CPU per pass-through request (0 ms): {:.2} us  (target <= 15.5 us)",
        cpu_per_pass * 1e6
    );
    println!(
        "batch CPU per item / pass-through CPU per request: {:.3}  (target <= 1.0)",
        cpu_per_item / cpu_per_pass
    );
    println!(
        "h2c upstream: batch p50 / single-call p50 (10 ms): {:.3}; CPU per item (0 ms): {:.2} us; upstream h2c connections: {} for {} streams",
        h2_batch10.p(0.5) / single.p(0.5),
        h2_batch0_cpu / (h2_batch0.ok as f64 * ITEMS as f64).max(1.0) * 1e6,
        h2_fast.connections.load(Ordering::Relaxed) + h2_slow.connections.load(Ordering::Relaxed),
        h2_fast.requests.load(Ordering::Relaxed) + h2_slow.requests.load(Ordering::Relaxed)
    );
    if let Some((stats, cpu)) = &nginx {
        let nginx_per_request = cpu / (stats.ok as f64).max(1.0);
        println!(
            "nginx CPU per pass-through request (0 ms, same run): {:.2} us; batchgate pass-through / nginx: {:.3} (target <= 1.2); batch item / nginx request: {:.3}",
            nginx_per_request * 1e6,
            cpu_per_pass / nginx_per_request,
            cpu_per_item / nginx_per_request
        );
    }
    match &peer {
        Ok(peer) => {
            let peer_per_item =
                peer.throughput_cpu / (peer.throughput.ok as f64 * ITEMS as f64).max(1.0);
            println!(
                "batch-request {} (express {}, node {}, one process; same run): CPU per item (0 ms) {:.2} us vs batchgate {:.2} us ({:.1}x); batch p50 / single-call p50 (10 ms) {:.3} vs batchgate {:.3}; upstream connections opened: {} for {} items",
                peer.versions.0,
                peer.versions.1,
                peer.versions.2,
                peer_per_item * 1e6,
                cpu_per_item * 1e6,
                peer_per_item / cpu_per_item,
                peer.latency.p(0.5) / single.p(0.5),
                batch10.p(0.5) / single.p(0.5),
                peer.connections,
                peer.items
            );
        }
        Err(skipped) => println!("batch-request reference skipped: {skipped}"),
    }
    println!(
        "upstream connections accepted so far: {} (0 ms) and {} (10 ms) for {} + {} requests",
        fast.connections.load(Ordering::Relaxed),
        slow.connections.load(Ordering::Relaxed),
        fast.requests.load(Ordering::Relaxed),
        slow.requests.load(Ordering::Relaxed)
    );
    println!("batchgate peak RSS so far: {:.1} MiB", gate.peak_rss_mib());

    // TLS on both sides, nginx doing the same TLS work (`tls.rs`).
    if std::env::var("LOAD_TLS").map_or(true, |v| v != "0") {
        tls::run(&tls, &gate, nginx_server.as_ref(), load_time).await;
    }
    drop(nginx_server);

    // Capacity: 1,000 batches at once. CAPACITY_ITEMS changes the batch size (memory studies).
    let capacity_items: usize = std::env::var("CAPACITY_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ITEMS);
    let started = Instant::now();
    let capacity = closed_loop(
        gate.addr,
        capacity_batches(),
        Duration::from_secs(60),
        Some(1),
        |_| batch_of("/slow/batch", capacity_items),
    )
    .await;
    println!();
    println!(
        "capacity: {} batches x {capacity_items} items in flight at once, 10 ms upstream, max_in_flight 1024: {} fully correct, {} errors, wall {:.2} s, p50 {:.1} ms, p99 {:.1} ms, batchgate peak RSS {:.1} MiB",
        capacity_batches(),
        capacity.ok,
        capacity.errors,
        started.elapsed().as_secs_f64(),
        capacity.p(0.5) * 1e3,
        capacity.p(0.99) * 1e3,
        gate.peak_rss_mib()
    );
    drop(gate);
}

/// The overload scenario, the same steps against admission control's defaults and against
/// admission turned off (an unbounded queue: every batch waits, as before issue 13).
async fn overload_only(slow: &FastUpstream, step_time: Duration) {
    // The budget well below the 5 s deadline, as docs/OPERATIONS.md advises. Clients are told
    // apart by X-Api-Key (flood, light) except in the second run, where all of them are one
    // address.
    let configs = [
        (
            "admission (queue_budget 2 s), clients by X-Api-Key",
            "[server.admission]\nqueue_budget = \"2s\"\nclient_key = \"header:x-api-key\"",
        ),
        (
            "admission (queue_budget 2 s), clients by address (flood and light client are one)",
            "[server.admission]\nqueue_budget = \"2s\"",
        ),
        (
            "admission (queue_budget 2 s) + per_client_items 100, clients by X-Api-Key",
            "[server.admission]\nqueue_budget = \"2s\"\nper_client_items = 100\nclient_key = \"header:x-api-key\"",
        ),
        (
            "admission off (unbounded queue), clients by X-Api-Key",
            "[server.admission]\nmax_queued_items = 10000000\nqueue_budget = \"1h\"\nmax_held_bytes = 1099511627776\nclient_key = \"header:x-api-key\"",
        ),
    ];
    for (label, admission) in configs {
        let gate = overload::start_gate(slow.addr, admission);
        gate.wait_ready().await;
        overload::run(&gate, label, step_time).await;
    }
}

/// The batch-request peer's two scenarios, as measured in one run.
struct PeerResults {
    /// batch-request, express and node versions.
    versions: (String, String, String),
    latency: Stats,
    latency_cpu: f64,
    throughput: Stats,
    throughput_cpu: f64,
    /// Upstream connections opened and items sent by the peer, warm-up included.
    connections: u64,
    items: u64,
}

/// Starts batch-request, warms it up and runs (a) 100 items x the 10 ms upstream, one client,
/// and (b) 100 items x the 0 ms upstream, 4 clients, with the node process's CPU for each.
/// `Err` says why it was skipped or failed.
async fn measure_batch_request(
    fast: &FastUpstream,
    slow: &FastUpstream,
    load_time: Duration,
) -> Result<PeerResults, String> {
    let mut peer = BatchRequestPeer::start(&[fast.addr, slow.addr])?;
    peer.wait_ready().await?;
    let connections_before = total(&[fast, slow], |u| &u.connections);
    let requests_before = total(&[fast, slow], |u| &u.requests);
    peer.warm_up(fast.addr).await?;
    let before = peer.cpu_seconds();
    let latency = peer.run(1, load_time / 2, slow.addr).await?;
    let latency_cpu = peer.cpu_seconds() - before;
    let before = peer.cpu_seconds();
    let throughput = peer.run(4, load_time, fast.addr).await?;
    let throughput_cpu = peer.cpu_seconds() - before;
    Ok(PeerResults {
        versions: peer.versions.clone(),
        latency,
        latency_cpu,
        throughput,
        throughput_cpu,
        connections: total(&[fast, slow], |u| &u.connections) - connections_before,
        items: total(&[fast, slow], |u| &u.requests) - requests_before,
    })
}

fn total(upstreams: &[&FastUpstream], counter: fn(&FastUpstream) -> &AtomicU64) -> u64 {
    upstreams
        .iter()
        .map(|u| counter(u).load(Ordering::Relaxed))
        .sum()
}

/// `LOAD_ONLY=peer0` / `peer10`: one batch-request scenario, with node's pid printed for
/// `perf record -p` (node needs `--perf-basic-prof` for JS symbols).
async fn peer_only(only: &str, fast: &FastUpstream, slow: &FastUpstream, load_time: Duration) {
    let (upstream, clients) = match only {
        "peer10" => (slow.addr, 1),
        "peer0" => (fast.addr, 4),
        _ => {
            eprintln!("LOAD_ONLY={only}: the batch-request scenarios are peer0 and peer10");
            return;
        }
    };
    let started = async {
        let mut peer = BatchRequestPeer::start(&[fast.addr, slow.addr])?;
        peer.wait_ready().await?;
        peer.warm_up(fast.addr).await?;
        Ok::<_, String>(peer)
    };
    let peer = match started.await {
        Ok(peer) => peer,
        Err(skipped) => {
            println!("batch-request reference skipped: {skipped}");
            return;
        }
    };
    eprintln!("batch-request (node) pid {}", peer.child.id());
    let before = peer.cpu_seconds();
    match peer.run(clients, load_time, upstream).await {
        Ok(stats) => {
            let cpu = peer.cpu_seconds() - before;
            row(only, "-", clients, &stats, ITEMS, Some(cpu));
            println!(
                "CPU per item: {:.2} us",
                cpu / (stats.ok as f64 * ITEMS as f64).max(1.0) * 1e6
            );
        }
        Err(failed) => println!("batch-request {failed}"),
    }
}

/// Runs one named scenario (`batch0`, `multipart0`, `pass`, `h2batch0`, `batch10`) and prints
/// its CPU cost.
async fn profile_only(only: &str, gate: &Gate, load_time: Duration) {
    eprintln!("batchgate pid {}", gate.child.id());
    let (path, clients, items) = match only {
        "batch0" => (Some("/fast/batch"), 4, ITEMS),
        "h2batch0" => (Some("/h2fast/batch"), 4, ITEMS),
        "batch10" => (Some("/slow/batch"), 1, ITEMS),
        "multipart0" => (Some("/fast/multipart"), 4, ITEMS),
        _ => (None, 32, 1),
    };
    let local = only == "local";
    let cpu_before = gate.cpu_seconds();
    let stats = match path {
        Some(path) if only == "multipart0" => {
            closed_loop(gate.addr, clients, load_time, None, |_| {
                multipart_request(path)
            })
            .await
        }
        Some(path) => {
            closed_loop(gate.addr, clients, load_time, None, |_| batch_request(path)).await
        }
        // `local`: a GET on a batch route, answered 405 by batchgate itself: the cost of
        // serving alone, without an upstream.
        None if local => {
            closed_loop(gate.addr, clients, load_time, None, |_| Call {
                raw: b"GET /fast/batch HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
                check: |status, _| status == 405,
            })
            .await
        }
        None => closed_loop(gate.addr, clients, load_time, None, |_| passthrough_call()).await,
    };
    let cpu = gate.cpu_seconds() - cpu_before;
    row(only, "-", clients, &stats, items, Some(cpu));
    println!(
        "CPU per item: {:.2} us",
        cpu / (stats.ok as f64 * items as f64).max(1.0) * 1e6
    );
}

fn row(name: &str, upstream: &str, clients: usize, stats: &Stats, items: usize, cpu: Option<f64>) {
    let rps = stats.ok as f64 / stats.elapsed.as_secs_f64();
    let cpu = cpu.map_or("-".to_string(), |c| {
        format!(
            "{:.4}",
            c / (stats.ok as f64 * items as f64 / 1000.0).max(1e-9)
        )
    });
    println!(
        "| {name} | {upstream} | {clients} | {rps:.0} | {:.0} | {:.2} | {:.2} | {cpu} |{}",
        rps * items as f64,
        stats.p(0.5) * 1e3,
        stats.p(0.99) * 1e3,
        if stats.errors > 0 {
            format!(" {} errors", stats.errors)
        } else {
            String::new()
        }
    );
}

/// Prints the first few failures of a client to stderr, so an error count comes with a cause.
fn report_error(count: u64, what: &str) {
    if count <= 3 {
        eprintln!("load error: {what}");
    }
}

/// The entries of a batch reply that are not 200, shortened (or the start of the body).
fn failed_items(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let failed: Vec<&str> = text
        .split("{\"id\":")
        .skip(1)
        .filter(|entry| !entry.contains("\"status\":200"))
        .take(3)
        .collect();
    let shown = if failed.is_empty() {
        text.chars().take(300).collect::<String>()
    } else {
        failed.join(" | ")
    };
    shown.chars().take(600).collect()
}

/// Results of one closed-loop scenario.
struct Stats {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    /// Latency quantile in seconds.
    fn p(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies
            .get(i)
            .map_or(f64::NAN, Duration::as_secs_f64)
    }
}

/// What one request is and how to tell its reply is correct.
struct Call {
    raw: Vec<u8>,
    check: fn(u16, &[u8]) -> bool,
}

fn upstream_call() -> Call {
    Call {
        raw: b"POST /v2/file/get HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"domain_id\":\"1\",\"drive_id\":\"1\"}".to_vec(),
        check: |status, _| status == 200,
    }
}

fn passthrough_call() -> Call {
    Call {
        raw: b"GET /v2/hello HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
        check: |status, _| status == 200,
    }
}

fn batch_request(path: &str) -> Call {
    batch_of(path, ITEMS)
}

fn batch_of(path: &str, n: usize) -> Call {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id":"{i}","method":"POST","url":"/file/get","headers":{{"Content-Type":"application/json"}},"body":{{"domain_id":"1","drive_id":"1"}}}}"#))
        .collect();
    let body = format!(r#"{{"resource":"file","requests":[{}]}}"#, items.join(","));
    let mut raw = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body.as_bytes());
    Call {
        raw,
        check: if n == ITEMS {
            // Every item must have come back 200: count the item statuses.
            |status, body| status == 200 && count(body, br#""status":200"#) == ITEMS
        } else {
            |status, _| status == 200
        },
    }
}

/// One Google-style `multipart/mixed` batch of the same 100 calls (`application/http` parts
/// with Content-IDs). Correct when every part says 200.
fn multipart_request(path: &str) -> Call {
    let item_body = r#"{"domain_id":"1","drive_id":"1"}"#;
    let mut body = String::new();
    for i in 0..ITEMS {
        body.push_str(&format!("--BOUNDARY\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <bench+{i}>\r\n\r\nPOST /v2/file/get HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{item_body}\r\n", item_body.len()));
    }
    body.push_str("--BOUNDARY--\r\n");
    let mut raw = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: multipart/mixed; boundary=BOUNDARY\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body.as_bytes());
    Call {
        raw,
        check: |status, body| status == 200 && count(body, b"HTTP/1.1 200 OK") == ITEMS,
    }
}

/// One batch of 100 PDS-style items in batch-request's format: an object of named requests,
/// each an absolute URL to `upstream` with the same method, header and body as the batchgate
/// items. Correct when every sub-response says 200.
fn batch_request_peer_call(upstream: SocketAddr) -> Call {
    let items: Vec<String> = (0..ITEMS)
        .map(|i| format!(r#""{i}":{{"method":"POST","uri":"http://{upstream}/v2/file/get","headers":{{"Content-Type":"application/json"}},"body":"{{\"domain_id\":\"1\",\"drive_id\":\"1\"}}"}}"#))
        .collect();
    let body = format!("{{{}}}", items.join(","));
    let mut raw = format!("POST /batch HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(body.as_bytes());
    Call {
        raw,
        check: |status, body| status == 200 && count(body, br#""statusCode":200"#) == ITEMS,
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// `clients` connections each sending requests back to back until `duration` passes (or
/// `per_client` requests each); returns sorted latencies.
async fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    per_client: Option<u64>,
    call: impl Fn(usize) -> Call,
) -> Stats {
    closed_loop_on(
        Target::Plain(addr),
        clients,
        duration,
        per_client,
        false,
        call,
    )
    .await
}

/// Where a load client connects: cleartext, or TLS with the name it verifies.
#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr, tls::Client),
}

/// `closed_loop` to any target; with `fresh`, every request opens (and handshakes) a new
/// connection, which is what a handshake costs.
async fn closed_loop_on(
    target: Target,
    clients: usize,
    duration: Duration,
    per_client: Option<u64>,
    fresh: bool,
    call: impl Fn(usize) -> Call,
) -> Stats {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(clients);
    let go = Arc::new(tokio::sync::Notify::new());
    for client in 0..clients {
        let call = call(client);
        let go = go.clone();
        let target = target.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut ok, mut errors) = (0u64, 0u64);
            let Ok(mut conn) = Conn::connect(&target).await else {
                return (latencies, ok, 1);
            };
            go.notified().await;
            let mut sent = 0u64;
            while Instant::now() < deadline && per_client.is_none_or(|n| sent < n) {
                sent += 1;
                let t = Instant::now();
                if fresh && sent > 1 {
                    match Conn::connect(&target).await {
                        Ok(c) => conn = c,
                        Err(_) => break,
                    }
                }
                match conn.send(&call.raw).await {
                    Ok((status, body)) if (call.check)(status, &body) => {
                        ok += 1;
                        latencies.push(t.elapsed());
                    }
                    Ok((status, body)) => {
                        errors += 1;
                        report_error(errors, &format!("status {status}: {}", failed_items(&body)));
                    }
                    Err(e) => {
                        errors += 1;
                        report_error(errors, &format!("connection: {e}"));
                        match Conn::connect(&target).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (latencies, ok, errors)
        }));
    }
    // Let every client connect first, then start them together.
    tokio::time::sleep(Duration::from_millis(50 + clients as u64 / 4)).await;
    go.notify_waiters();
    let mut stats = Stats {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for handle in handles {
        if let Ok((latencies, ok, errors)) = handle.await {
            stats.latencies.extend(latencies);
            stats.ok += ok;
            stats.errors += errors;
        }
    }
    stats.elapsed = started.elapsed();
    stats.latencies.sort();
    stats
}

/// A keep-alive HTTP/1.1 client connection that reads Content-Length framed replies.
struct Conn {
    stream: Io,
    buf: BytesMut,
}

/// The client's socket, cleartext or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    async fn write_all(&mut self, raw: &[u8]) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(raw).await,
            Io::Tls(s) => s.write_all(raw).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read_buf(buf).await,
            Io::Tls(s) => s.read_buf(buf).await,
        }
    }
}

impl Conn {
    async fn connect(target: &Target) -> io::Result<Conn> {
        let addr = match target {
            Target::Plain(addr) | Target::Tls(addr, _) => *addr,
        };
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match target {
            Target::Plain(_) => Io::Plain(tcp),
            Target::Tls(_, client) => Io::Tls(Box::new(client.handshake(tcp).await?)),
        };
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    async fn send(&mut self, raw: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(raw).await?;
        loop {
            if let Some((status, head_len, body_len)) = parse_head(&self.buf)? {
                if self.buf.len() >= head_len + body_len {
                    self.buf.advance(head_len);
                    let body = self.buf.split_to(body_len).to_vec();
                    return Ok((status, body));
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
        }
    }
}

/// Status, head length and Content-Length of a complete response head.
fn parse_head(buf: &[u8]) -> io::Result<Option<(u16, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            Ok(Some((response.code.unwrap_or(0), head_len, length)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
    }
}

/// A minimal keep-alive upstream: answers every request with a small JSON body after `delay`.
struct FastUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for FastUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn start_upstream(delay: Duration) -> FastUpstream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, r, s) = (connections.clone(), requests.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::Relaxed);
            let r = r.clone();
            tokio::spawn(serve_connection(stream, delay, r));
        }
    });
    FastUpstream {
        addr,
        connections,
        requests,
        stop,
    }
}

async fn serve_connection(mut stream: TcpStream, delay: Duration, requests: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 57\r\n\r\n{\"domain_id\":\"1\",\"drive_id\":\"1\",\"file_id\":\"9520943DC264\"}";
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = match request.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let body_len: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                Some(head_len + body_len)
            }
            Ok(httparse::Status::Partial) => None,
            Err(_) => return,
        };
        match parsed {
            Some(total) if buf.len() >= total => {
                buf.advance(total);
                requests.fetch_add(1, Ordering::Relaxed);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if stream.write_all(REPLY).await.is_err() {
                    return;
                }
            }
            _ => match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// The release batchgate binary with a benchmark config; killed on drop.
struct Gate {
    addr: SocketAddr,
    /// The TLS listener (see `tls.rs`).
    tls_addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// The upstreams batchgate is started with.
struct GateUpstreams {
    fast: SocketAddr,
    slow: SocketAddr,
    h2_fast: SocketAddr,
    h2_slow: SocketAddr,
}

impl Gate {
    fn start(upstreams: &GateUpstreams, tls: &tls::Setup) -> Gate {
        let GateUpstreams {
            fast,
            slow,
            h2_fast,
            h2_slow,
        } = *upstreams;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let (tls_server, tls_tables) = tls.gate_config(tls_addr);
        let dir = std::env::temp_dir().join(format!("batchgate-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!(
            r#"
[server]
listen = ["{addr}"]
threads = {threads}
work_stealing = {stealing}
default_upstream = "fast"
max_in_flight = 1024
pid_file = "{dir}/batchgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
{tls_server}
# The capacity scenario measures a burst of 1,000 x 100 items queued at once, so the
# admission queue is opened wide here; the overload scenarios measure admission itself.
[server.admission]
max_queued_items = 1000000
queue_budget = "60s"

[admin]
enabled = false

[upstreams.fast]
addresses = ["{fast}"]
pool_size = 1024

[upstreams.slow]
addresses = ["{slow}"]
pool_size = 1024

[upstreams.h2fast]
addresses = ["{h2_fast}"]
protocol = "h2c"

[upstreams.h2slow]
addresses = ["{h2_slow}"]
protocol = "h2c"

[[routes]]
name = "h2fast"
path = "/h2fast/batch"
dialect = "envelope"
upstream = "h2fast"
base_path = "/v2"
max_items = 100
concurrency = 100

[[routes]]
name = "h2slow"
path = "/h2slow/batch"
dialect = "envelope"
upstream = "h2slow"
base_path = "/v2"
max_items = 100
concurrency = 100

[[routes]]
name = "fast"
path = "/fast/batch"
dialect = "envelope"
upstream = "fast"
base_path = "/v2"
max_items = 100
concurrency = 100

[[routes]]
name = "fast_multipart"
path = "/fast/multipart"
dialect = "multipart"
upstream = "fast"
max_items = 100
concurrency = 100

[[routes]]
name = "slow"
path = "/slow/batch"
dialect = "envelope"
upstream = "slow"
base_path = "/v2"
max_items = 100
concurrency = 100
batch_timeout = "60s"
{tls_tables}"#,
            dir = dir.display(),
            h2_fast = h2_fast,
            h2_slow = h2_slow,
            threads = std::env::var("BATCHGATE_THREADS").unwrap_or_else(|_| "2".into()),
            stealing = std::env::var("BATCHGATE_WORK_STEALING").unwrap_or_else(|_| "false".into()),
        );
        Gate::spawn(&config, addr, tls_addr, dir)
    }

    /// Starts the binary on `config` (written into `dir`), listening on `addr`.
    fn spawn(config: &str, addr: SocketAddr, tls_addr: SocketAddr, dir: PathBuf) -> Gate {
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("load.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.join("batchgate.log")).expect("log file");
        // BATCHGATE_WRAPPER runs the binary under a tool, e.g. "valgrind --tool=massif".
        let wrapper = std::env::var("BATCHGATE_WRAPPER").unwrap_or_default();
        // BATCHGATE_BIN measures another build (A/B comparisons of a change).
        let binary = std::env::var("BATCHGATE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_batchgate").to_string());
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start batchgate");
        Gate {
            addr,
            tls_addr,
            child,
            dir,
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "batchgate did not start; see {}",
            self.dir.join("batchgate.log").display()
        );
    }

    /// utime + stime of the batchgate process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }

    /// Current RSS, in MiB.
    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    /// Open file descriptors of the process.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    fn status_kib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // SIGTERM first (graceful stop, lets a wrapping profiler write its output), then kill.
        procs::stop(&mut self.child, Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx 1.22 (Debian) proxying to the same upstream with upstream keep-alive, 2 workers
/// like batchgate's 2 threads; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    /// The TLS listener (see `tls.rs`).
    tls_addr: SocketAddr,
    master: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(upstream: SocketAddr, tls: &tls::Setup) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        let dir = std::env::temp_dir().join(format!("batchgate-load-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let d = dir.display();
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
        let tls_server = tls.nginx_config(tls_addr);
        let config = format!(
            "daemon off; master_process on; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 100000000; client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
             upstream up {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}\n\
             server {{ listen {addr}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
             {tls_server} }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).ok()?;
        let master = Command::new(binary)
            .args(["-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Nginx {
            addr,
            tls_addr,
            master,
            dir,
        })
    }

    async fn wait_ready(&self) {
        for _ in 0..250 {
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// CPU of the master and its workers, in seconds.
    fn cpu_seconds(&self) -> f64 {
        family_cpu_seconds(self.master.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops the workers too (SIGKILL would orphan them).
        procs::stop(&mut self.master, Duration::from_secs(5));
        // Workers exit when the master is gone; give them a moment, then clean up.
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The npm `batch-request` 0.1.4 middleware on Express 4 (`benches/peers/batch-request`), one
/// node process forwarding to the benchmark's upstreams; stopped on drop.
struct BatchRequestPeer {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    /// batch-request, express and node versions.
    versions: (String, String, String),
}

/// A batch that takes longer than this is answered 504 by the peer's watchdog (see server.js);
/// the benchmark gives up on a scenario this long after its end.
const PEER_BATCH_TIMEOUT: Duration = Duration::from_secs(5);

impl BatchRequestPeer {
    fn start(upstreams: &[SocketAddr]) -> Result<BatchRequestPeer, String> {
        const ENABLE: &str = "to enable: cd benches/peers/batch-request && npm ci";
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/batch-request");
        let node = Command::new("node")
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .ok_or(format!("`node` is not on PATH ({ENABLE})"))?;
        let modules = dir.join("node_modules");
        if !modules.join("batch-request").is_dir() || !modules.join("express").is_dir() {
            return Err(format!("{} is not installed ({ENABLE})", modules.display()));
        }
        let version = |package: &str| {
            std::fs::read(modules.join(package).join("package.json"))
                .ok()
                .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
                .and_then(|v| v.get("version")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into())
        };
        let versions = (version("batch-request"), version("express"), node);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::env::temp_dir().join(format!(
            "batchgate-load-batch-request-{}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let child = Command::new("node")
            .arg("server.js")
            .arg(port.to_string())
            .args(upstreams.iter().map(SocketAddr::to_string))
            .current_dir(&dir)
            .env(
                "BATCH_TIMEOUT_MS",
                PEER_BATCH_TIMEOUT.as_millis().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start node: {e}"))?;
        Ok(BatchRequestPeer {
            addr,
            child,
            log,
            versions,
        })
    }

    /// Until it accepts connections; `Err` (with its log) if it exits or never listens.
    async fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..500 {
            if TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(&format!("node exited ({status})")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.failed("node did not listen within 10 s"))
    }

    fn failed(&self, what: &str) -> String {
        // The first error line of node's log (a stack trace follows it), else its last line.
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = log
            .lines()
            .find(|l| l.contains("Error"))
            .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("(empty)");
        format!("failed: {what}; node's log: {}", line.trim())
    }

    /// Lets V8 compile the hot paths before anything is measured.
    async fn warm_up(&self, upstream: SocketAddr) -> Result<(), String> {
        let stats = self
            .run_for(4, Duration::from_secs(1), Some(40), upstream)
            .await?;
        if stats.ok == 0 {
            return Err(self.failed(&format!(
                "warm-up: no correct reply ({} errors)",
                stats.errors
            )));
        }
        Ok(())
    }

    async fn run(
        &self,
        clients: usize,
        duration: Duration,
        upstream: SocketAddr,
    ) -> Result<Stats, String> {
        self.run_for(clients, duration, None, upstream).await
    }

    /// The closed loop, bounded: a peer that stops answering fails the scenario instead of
    /// hanging the benchmark.
    async fn run_for(
        &self,
        clients: usize,
        duration: Duration,
        per_client: Option<u64>,
        upstream: SocketAddr,
    ) -> Result<Stats, String> {
        let scenario = closed_loop(self.addr, clients, duration, per_client, |_| {
            batch_request_peer_call(upstream)
        });
        tokio::time::timeout(duration + 2 * PEER_BATCH_TIMEOUT, scenario)
            .await
            .map_err(|_| self.failed("stopped answering"))
    }

    /// utime + stime of the node process (all its threads), in seconds.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for BatchRequestPeer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..30 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn warm_up(gate: &Gate, fast: &FastUpstream) {
    let _ = closed_loop(gate.addr, 8, Duration::from_millis(500), Some(20), |_| {
        batch_request("/fast/batch")
    })
    .await;
    let _ = closed_loop(gate.addr, 8, Duration::from_millis(500), Some(50), |_| {
        passthrough_call()
    })
    .await;
    let _ = closed_loop(fast.addr, 8, Duration::from_millis(200), Some(50), |_| {
        upstream_call()
    })
    .await;
}
