//! The overload scenario: open-loop arrivals of 100-item batches at 0.5x to 10x of the
//! measured capacity of a small batchgate (`max_in_flight = 100` against the 10 ms upstream,
//! so capacity is about 100 batches/s and the load generator on the same two cores can offer
//! 10x of it). Per step: the share of offered batches answered fully within their deadline
//! (the goodput), refusals and how fast they come back, p50/p99 of admitted batches, a small
//! pass-through probe's latency, and batchgate's peak RSS.
//!
//! Arrivals are open loop (a batch every 1/rate seconds, whatever the replies): a closed loop
//! slows down with the server and can never show congestion collapse.

use super::{
    batch_of, batch_request, closed_loop, free_port, passthrough_call, Call, Conn, Gate, Target,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The batch deadline clients have; a batch answered later (or partially) is not goodput.
const DEADLINE: Duration = Duration::from_secs(5);
/// Batches in flight at most from the generator (a bound on its own memory).
const MAX_OUTSTANDING: u64 = 20_000;
const STEPS: [f64; 6] = [0.5, 1.0, 2.0, 4.0, 7.0, 10.0];

/// Starts the small batchgate the scenario overloads.
pub fn start_gate(slow: SocketAddr, admission: &str) -> Gate {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("batchgate-overload-{}", std::process::id()));
    let config = format!(
        r#"
[server]
listen = ["{addr}"]
threads = 2
max_in_flight = 100
default_upstream = "slow"
pid_file = "{dir}/batchgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
{admission}

[admin]
enabled = false

[upstreams.slow]
addresses = ["{slow}"]
pool_size = 1024

[[routes]]
name = "slow"
path = "/slow/batch"
dialect = "envelope"
upstream = "slow"
base_path = "/v2"
max_items = 100
concurrency = 100
batch_timeout = "{deadline}s"
"#,
        dir = dir.display(),
        deadline = DEADLINE.as_secs(),
    );
    Gate::spawn(&config, addr, addr, dir)
}

/// What one step saw.
#[derive(Default)]
struct Step {
    good: AtomicU64,
    refused: AtomicU64,
    late_or_partial: AtomicU64,
    errors: AtomicU64,
    admitted_latency: Mutex<Vec<Duration>>,
    refusal_latency: Mutex<Vec<Duration>>,
}

fn quantile(values: &Mutex<Vec<Duration>>, q: f64) -> f64 {
    let mut values = values.lock().expect("latencies").clone();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort();
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// `call` with one more header (`Name: value`), after the request line.
fn with_header(call: Call, header: &str) -> Call {
    let line_end = call
        .raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    let mut raw = call.raw[..line_end].to_vec();
    raw.extend_from_slice(header.as_bytes());
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&call.raw[line_end..]);
    Call {
        raw,
        check: call.check,
    }
}

/// The flood's batches (one client, `X-Api-Key: flood`).
fn flood_call() -> Call {
    with_header(batch_request("/slow/batch"), "X-Api-Key: flood")
}

/// The light client's 10-item batch (`X-Api-Key: light`).
fn light_call() -> Call {
    with_header(batch_of("/slow/batch", 10), "X-Api-Key: light")
}

/// Runs every step against `gate` and prints one row per step.
pub async fn run(gate: &Gate, label: &str, step_time: Duration) {
    let unloaded = closed_loop(gate.addr, 1, Duration::from_secs(1), Some(20), |_| {
        light_call()
    })
    .await;
    // Capacity: a closed loop with enough clients to keep max_in_flight busy.
    let capacity = closed_loop(gate.addr, 8, step_time, None, |_| {
        batch_request("/slow/batch")
    })
    .await;
    let capacity_rate = capacity.ok as f64 / capacity.elapsed.as_secs_f64();
    println!();
    println!(
        "overload, {label}: capacity {capacity_rate:.0} full batches/s (closed loop, 8 clients); deadline {} s",
        DEADLINE.as_secs()
    );
    println!(
        "light client: a 10-item batch every 200 ms under its own key; unloaded p50 {:.1} ms",
        unloaded.p(0.5) * 1e3
    );
    println!("| offered | batches/s offered | goodput (full, in deadline) / capacity | refused | late or partial | errors | refusal p99 ms | admitted p50 ms | admitted p99 ms | light client p50 / p99 ms | pass-through probe p99 ms | peak RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for factor in STEPS {
        let rate = capacity_rate * factor;
        let light = tokio::spawn(light_client(gate.addr, Instant::now() + step_time));
        let (step, probe) = offer(gate.addr, rate, step_time).await;
        let light = light.await.unwrap_or_default();
        let good = step.good.load(Ordering::Relaxed);
        println!(
            "| {factor}x | {rate:.0} | {:.2} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} | {:.1} | {:.1} |",
            good as f64 / step_time.as_secs_f64() / capacity_rate,
            step.refused.load(Ordering::Relaxed),
            step.late_or_partial.load(Ordering::Relaxed),
            step.errors.load(Ordering::Relaxed),
            quantile(&step.refusal_latency, 0.99),
            quantile(&step.admitted_latency, 0.5),
            quantile(&step.admitted_latency, 0.99),
            quantile(&light, 0.5),
            quantile(&light, 0.99),
            quantile(&probe, 0.99),
            gate.peak_rss_mib(),
        );
        // Let the queue drain before the next step.
        tokio::time::sleep(DEADLINE).await;
    }
}

/// Offers `rate` batches per second for `duration`, each on its own connection, and probes
/// pass-through every 100 ms meanwhile.
async fn offer(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
) -> (Arc<Step>, Mutex<Vec<Duration>>) {
    let step = Arc::new(Step::default());
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    let outstanding = Arc::new(AtomicU64::new(0));
    let call = Arc::new(flood_call());
    let probe_latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + duration;
    let probe = tokio::spawn(probe_passthrough(addr, stop, probe_latencies.clone()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    while Instant::now() < stop {
        ticker.tick().await;
        if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            step.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let (step, outstanding, call) = (step.clone(), outstanding.clone(), call.clone());
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            one_batch(addr, &call, &step, &pool).await;
            outstanding.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let _ = probe.await;
    let probe = Mutex::new(std::mem::take(&mut *probe_latencies.lock().expect("probe")));
    (step, probe)
}

/// One batch on a kept-alive connection from `pool` (a new one when none is idle: a new
/// connection per batch would run the generator out of ephemeral ports at 10x).
async fn one_batch(addr: SocketAddr, call: &super::Call, step: &Step, pool: &Mutex<Vec<Conn>>) {
    let started = Instant::now();
    let idle = pool.lock().expect("pool").pop();
    let mut conn = match idle {
        Some(conn) => conn,
        None => match Conn::connect(&Target::Plain(addr)).await {
            Ok(conn) => conn,
            Err(_) => {
                step.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let reply = tokio::time::timeout(DEADLINE * 2, conn.send(&call.raw)).await;
    let elapsed = started.elapsed();
    if matches!(reply, Ok(Ok(_))) {
        pool.lock().expect("pool").push(conn);
    }
    match reply {
        Ok(Ok((503 | 429, _))) => {
            step.refused.fetch_add(1, Ordering::Relaxed);
            step.refusal_latency
                .lock()
                .expect("latencies")
                .push(elapsed);
        }
        Ok(Ok((status, body))) => {
            step.admitted_latency
                .lock()
                .expect("latencies")
                .push(elapsed);
            if (call.check)(status, &body) && elapsed <= DEADLINE {
                step.good.fetch_add(1, Ordering::Relaxed);
            } else {
                step.late_or_partial.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            step.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn probe_passthrough(addr: SocketAddr, stop: Instant, latencies: Arc<Mutex<Vec<Duration>>>) {
    let call = passthrough_call();
    while Instant::now() < stop {
        let started = Instant::now();
        if let Ok(mut conn) = Conn::connect(&Target::Plain(addr)).await {
            if conn.send(&call.raw).await.is_ok() {
                latencies.lock().expect("probe").push(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The soak: `duration` at 80% of capacity, open loop, with batchgate's RSS and open file
/// descriptors sampled every `every`; they must stay flat after the warm-up.
pub async fn soak(gate: &Gate, duration: Duration, every: Duration) {
    let capacity = closed_loop(gate.addr, 8, Duration::from_secs(5), None, |_| {
        batch_request("/slow/batch")
    })
    .await;
    let rate = 0.8 * capacity.ok as f64 / capacity.elapsed.as_secs_f64();
    println!();
    println!(
        "soak: {:.0} s at {rate:.0} batches/s (80% of capacity), samples every {} s",
        duration.as_secs_f64(),
        every.as_secs()
    );
    println!("| elapsed s | good | refused | late or partial | errors | RSS MiB | open fds |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        let (step, _) = offer(gate.addr, rate, every).await;
        let (rss, fds) = (gate.rss_mib(), gate.open_fds());
        samples.push((rss, fds));
        println!(
            "| {:.0} | {} | {} | {} | {} | {rss:.1} | {fds} |",
            started.elapsed().as_secs_f64(),
            step.good.load(Ordering::Relaxed),
            step.refused.load(Ordering::Relaxed),
            step.late_or_partial.load(Ordering::Relaxed),
            step.errors.load(Ordering::Relaxed),
        );
    }
    // After the warm-up (the first quarter), against the end.
    let warm = samples.get(samples.len() / 4).copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    println!(
        "soak: RSS {:.1} -> {:.1} MiB ({:+.1}%), open fds {} -> {} after warm-up",
        warm.0,
        last.0,
        (last.0 / warm.0.max(1e-9) - 1.0) * 100.0,
        warm.1,
        last.1
    );
}

/// A light client beside the flood: a 10-item batch every 200 ms, its latencies (a refusal
/// counts as its latency too: the client got no answer to its batch).
async fn light_client(addr: SocketAddr, stop: Instant) -> Mutex<Vec<Duration>> {
    let call = light_call();
    let latencies = Mutex::new(Vec::new());
    let mut conn = None;
    while Instant::now() < stop {
        let started = Instant::now();
        let mut current = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(&Target::Plain(addr)).await {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        if let Ok(Ok((status, body))) =
            tokio::time::timeout(DEADLINE * 2, current.send(&call.raw)).await
        {
            let waited = started.elapsed();
            let answered = (call.check)(status, &body);
            latencies
                .lock()
                .expect("light")
                .push(if answered { waited } else { DEADLINE });
            conn = Some(current);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies
}

/// Batches in the burst scenario, all sent at once, each on its own connection.
const BURST: usize = 6000;

/// A batchgate whose queue stays full: the route's upstream (`stuck`) answers after 30 s,
/// `max_in_flight` and the queue hold 100 items each, so two 100-item batches fill both and
/// every later batch is refused until they end. Pass-through goes to `fast`.
pub fn start_burst_gate(stuck: SocketAddr, fast: SocketAddr) -> Gate {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("batchgate-burst-{}", std::process::id()));
    let config = format!(
        r#"
[server]
listen = ["{addr}"]
threads = 2
max_in_flight = 100
max_client_connections = 10000
default_upstream = "fast"
pid_file = "{dir}/batchgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[server.admission]
max_queued_items = 100
client_key = "header:x-api-key"

[admin]
enabled = false

[upstreams.fast]
addresses = ["{fast}"]

[upstreams.stuck]
addresses = ["{stuck}"]
read_timeout = "60s"

[[routes]]
name = "slow"
path = "/slow/batch"
dialect = "envelope"
upstream = "stuck"
base_path = "/v2"
max_items = 100
concurrency = 100
item_timeout = "60s"
batch_timeout = "60s"
"#,
        dir = dir.display(),
    );
    Gate::spawn(&config, addr, addr, dir)
}

/// The burst: two batches of two clients fill the queue, then `BURST` 100-item batches of a
/// third come at once, each on its own connection, and every one is refused. Prints
/// batchgate's CPU per refusal (all of its CPU over the burst: the queued items only wait)
/// and a pass-through probe's latency meanwhile.
pub async fn burst(gate: &Gate, label: &str) {
    let call = Arc::new(flood_call());
    let filling: Vec<_> = ["fill-a", "fill-b"]
        .into_iter()
        .map(|key| {
            let addr = gate.addr;
            let call = with_header(batch_request("/slow/batch"), &format!("X-Api-Key: {key}"));
            tokio::spawn(async move {
                if let Ok(mut conn) = Conn::connect(&Target::Plain(addr)).await {
                    let _ = conn.send(&call.raw).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe_latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let before = super::procs::process_cpu_split(gate.child.id());
    let probe = tokio::spawn(probe_passthrough(
        gate.addr,
        started + Duration::from_millis(1500),
        probe_latencies.clone(),
    ));
    let outcomes: Vec<_> = (0..BURST)
        .map(|_| {
            let (addr, call) = (gate.addr, call.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(&Target::Plain(addr)).await.ok()?;
                match tokio::time::timeout(DEADLINE * 2, conn.send(&call.raw)).await {
                    Ok(Ok((status, _))) => Some(status),
                    // Refused from the head, the connection closes over the unread body: the
                    // client may see the reset before the answer.
                    Ok(Err(_)) => Some(0),
                    Err(_) => None,
                }
            })
        })
        .collect();
    let mut refused = 0u64;
    let mut reset = 0u64;
    let mut other = 0u64;
    let mut lost = 0u64;
    for outcome in outcomes {
        match outcome.await.ok().flatten() {
            Some(503 | 429) => refused += 1,
            Some(0) => reset += 1,
            Some(_) => other += 1,
            None => lost += 1,
        }
    }
    let took = started.elapsed();
    let after = super::procs::process_cpu_split(gate.child.id());
    let (user, system) = (after.0 - before.0, after.1 - before.1);
    let cpu = user + system;
    let _ = probe.await;
    let kept = kept_alive_refusals(gate, &call).await;
    for fill in filling {
        fill.abort();
    }
    let probe = Mutex::new(std::mem::take(&mut *probe_latencies.lock().expect("probe")));
    println!();
    println!("burst, {label}: {BURST} batches of 100 items at once, each on its own connection, into a full queue");
    println!("| answered in s | refused (503/429) | reset before the answer | other | lost | batchgate CPU s | CPU per refusal us (user + system) | pass-through probe max / p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let per = |seconds: f64| seconds / (refused + reset).max(1) as f64 * 1e6;
    println!(
        "| {:.2} | {refused} | {reset} | {other} | {lost} | {cpu:.2} | {:.0} ({:.0} + {:.0}) | {:.1} / {:.1} |",
        took.as_secs_f64(),
        per(cpu),
        per(user),
        per(system),
        quantile(&probe, 1.0),
        quantile(&probe, 0.99),
    );
    let (refusals, closed, user, system) = kept;
    println!(
        "kept-alive: {KEPT_CONNECTIONS} connections x {KEPT_BATCHES} batches, {refusals} refused, {closed} connections closed: CPU per refusal {:.0} us ({:.0} + {:.0})",
        (user + system) / refusals.max(1) as f64 * 1e6,
        user / refusals.max(1) as f64 * 1e6,
        system / refusals.max(1) as f64 * 1e6,
    );
}

const KEPT_CONNECTIONS: usize = 200;
const KEPT_BATCHES: usize = 30;

/// The same refusals over kept-alive connections (a client library's pool): the refusal
/// drains the small body and the connection carries the next batch. Returns the refusals,
/// the connections that were closed, and batchgate's user and system CPU seconds.
async fn kept_alive_refusals(gate: &Gate, call: &Arc<super::Call>) -> (u64, u64, f64, f64) {
    let mut conns = Vec::with_capacity(KEPT_CONNECTIONS);
    for _ in 0..KEPT_CONNECTIONS {
        if let Ok(conn) = Conn::connect(&Target::Plain(gate.addr)).await {
            conns.push(conn);
        }
    }
    let before = super::procs::process_cpu_split(gate.child.id());
    let clients: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut refused = 0u64;
                for _ in 0..KEPT_BATCHES {
                    match conn.send(&call.raw).await {
                        Ok((503 | 429, _)) => refused += 1,
                        _ => return (refused, 1u64),
                    }
                }
                (refused, 0)
            })
        })
        .collect();
    let (mut refused, mut closed) = (0, 0);
    for client in clients {
        let (r, c) = client.await.unwrap_or((0, 1));
        refused += r;
        closed += c;
    }
    let after = super::procs::process_cpu_split(gate.child.id());
    (refused, closed, after.0 - before.0, after.1 - before.1)
}
