//! Side by side against real peers, every process separate: batchgate (release binary, default
//! settings but the per-batch concurrency), an OpenResty-style batch endpoint (nginx +
//! lua-nginx-module, `ngx.location.capture_multi` over upstream keep-alive), nginx `proxy_pass`
//! for pass-through, and one upstream process they all share: nginx when installed (one
//! worker), else this benchmark re-run as a standalone upstream. The client is `wrk`.
//!
//! Run: `cargo bench --bench sidebyside` (about two minutes). Needs `wrk`; the nginx peers
//! need `nginx-light`, `libnginx-mod-http-lua` and `lua-cjson` (Debian) and are skipped, with a
//! line saying so, when missing.
//!
//! Each scenario runs its contenders alternately, A B A B (`SIDE_ROUNDS`, default 3, each
//! `LOAD_SECONDS`, default 4), and prints every run and the ratio per pair:
//! * `batch0`: 4 clients sending 100-item PDS batches, 0 ms upstream: server CPU per item;
//! * `pass0`: 32 clients sending single GETs through the proxy, 0 ms upstream: CPU per request;
//! * `batch10`: 1 client, 10 ms upstream: batch p50 over one direct call's p50, and over the p99
//!   of 100 direct calls in parallel (what the slowest of a batch's 100 calls costs without it).
//!
//! Server CPU is utime + stime from `/proc` (nginx: master and workers). New upstream
//! connections per request come from the upstream's `stub_status` counters (`accepts`,
//! `requests`). `SIDE_ONLY=batch0|pass0|batch10` runs one scenario; `BATCHGATE_BIN` measures
//! another build; `BATCHGATE_THREADS` (2) and `NGINX_WORKERS` (2) size the contenders;
//! `BATCHGATE_EXTRA` is appended to batchgate's `[server]` section (A/B of a setting).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// CPU of started processes, free ports, stopping them (shared with `load.rs`).
#[path = "load/procs.rs"]
mod procs;
use procs::{family_cpu_seconds, free_port, process_cpu_seconds};

/// Items per batch.
const ITEMS: usize = 100;
/// What the upstream answers (57 bytes, as in `benches/load.rs`).
const UPSTREAM_BODY: &str = r#"{"domain_id":"1","drive_id":"1","file_id":"9520943DC264"}"#;

fn main() {
    if let Ok(spec) = std::env::var("SIDE_UPSTREAM_ROLE") {
        standalone::serve(&spec);
        return;
    }
    if let Ok(spec) = std::env::var("SIDE_BARE_PINGORA_ROLE") {
        bare::serve(&spec);
        return;
    }
    let Some(wrk) = find(&["/usr/bin/wrk", "/usr/local/bin/wrk"]) else {
        println!("sidebyside: wrk is not installed (apt-get install wrk); nothing measured");
        return;
    };
    let seconds: u64 = env_or("LOAD_SECONDS", 4);
    let rounds: usize = env_or("SIDE_ROUNDS", 3);
    let only = std::env::var("SIDE_ONLY").ok();
    let dir = std::env::temp_dir().join(format!("batchgate-side-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let nginx = find(&["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]);
    let lua = nginx.is_some() && Path::new(LUA_MODULE).exists() && Path::new(NDK_MODULE).exists();

    // `SIDE_UPSTREAM=standalone` measures against the standalone upstream even where nginx
    // is installed (a thread per connection: 100 parallel 10 ms calls take 10 ms, where one
    // nginx worker serialises their CPU).
    let standalone = std::env::var("SIDE_UPSTREAM").is_ok_and(|u| u == "standalone");
    let upstream = Upstream::start(nginx.filter(|_| lua && !standalone), &dir);
    upstream.wait_ready();
    let gate = Gate::start(&upstream, &dir);
    let proxy = nginx.map(|n| Nginx::start(n, "proxy", &nginx_proxy_config(&upstream), &dir));
    let batch_peer = (nginx.is_some() && lua).then(|| {
        Nginx::start(
            nginx.unwrap_or_default(),
            "lua",
            &nginx_lua_config(&upstream),
            &dir,
        )
    });
    if nginx.is_none() {
        println!("nginx is not installed: the nginx peers are skipped");
    } else if !lua {
        println!(
            "libnginx-mod-http-lua or lua-cjson is missing: the OpenResty-style peer is skipped"
        );
    }
    gate.wait_ready();
    for peer in proxy.iter().chain(&batch_peer) {
        peer.wait_ready();
    }
    let body = dir.join("batch.json");
    std::fs::write(&body, batch_body()).expect("batch body");
    let client = Wrk {
        binary: wrk,
        dir: dir.clone(),
        seconds,
    };
    println!(
        "side by side (release build, 127.0.0.1, {} cores, {}s per run, {rounds} rounds alternating); upstream: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        seconds,
        upstream.describe()
    );
    // Warm every contender up (pools, lazily built state) before anything is measured.
    let warm = Wrk {
        seconds: 1,
        ..client.clone()
    };
    let batch_contenders: Vec<&dyn Server> = std::iter::once(&gate as &dyn Server)
        .chain(batch_peer.iter().map(|p| p as &dyn Server))
        .collect();
    for server in &batch_contenders {
        warm.run(server.port(), "/v2/batch", 4, Some(&body));
        warm.run(server.port(), "/slow/v2/batch", 1, Some(&body));
    }

    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("batch0") {
        let runs = alternate(rounds, &batch_contenders, |server| {
            measure(
                &client,
                *server,
                &upstream,
                "/v2/batch",
                4,
                Some(&body),
                ITEMS,
            )
        });
        report("batch of 100, 0 ms upstream, 4 clients", "item", &runs);
    }
    if wants("pass0") {
        let bare = BarePingora::start(&upstream, &dir);
        bare.wait_ready();
        let contenders: Vec<&dyn Server> = std::iter::once(&gate as &dyn Server)
            .chain(proxy.iter().map(|p| p as &dyn Server))
            .chain(std::iter::once(&bare as &dyn Server))
            .collect();
        for server in &contenders {
            warm.run(server.port(), "/v2/hello", 32, None);
        }
        let runs = alternate(rounds, &contenders, |server| {
            measure(&client, *server, &upstream, "/v2/hello", 32, None, 1)
        });
        report("pass-through, 0 ms upstream, 32 clients", "request", &runs);
    }
    if wants("batch10") {
        let direct = Direct(upstream.slow_port, 1);
        let parallel = Direct(upstream.slow_port, ITEMS);
        std::fs::write(dir.join("item.json"), r#"{"domain_id":"1","drive_id":"1"}"#)
            .expect("item body");
        let mut contenders: Vec<&dyn Server> = vec![&direct, &parallel, &gate];
        contenders.extend(batch_peer.iter().map(|p| p as &dyn Server));
        let runs = alternate(rounds, &contenders, |server| match server.name().as_str() {
            "direct" => measure(
                &client,
                *server,
                &upstream,
                "/v2/file/get",
                1,
                Some(&dir.join("item.json")),
                1,
            ),
            PARALLEL => measure(
                &client,
                *server,
                &upstream,
                "/v2/file/get",
                ITEMS,
                Some(&dir.join("item.json")),
                1,
            ),
            _ => measure(
                &client,
                *server,
                &upstream,
                "/slow/v2/batch",
                1,
                Some(&body),
                ITEMS,
            ),
        });
        report_latency("100 items x 10 ms upstream, 1 client: p50", &runs);
    }
    drop(batch_peer);
    drop(proxy);
    drop(gate);
    drop(upstream);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A command for `program` in a session of its own, as nginx's daemon runs (and as a service
/// manager runs batchgate): with the kernel's autogroup scheduling, a process in the
/// benchmark's session would share the client's CPU share. `setsid` (util-linux) calls
/// setsid() and execs the program in place, so the child's pid is the program's.
fn own_session(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("setsid");
    command.arg(program);
    command
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn find(paths: &[&'static str]) -> Option<&'static str> {
    paths.iter().copied().find(|p| Path::new(p).exists())
}

/// The 100 PDS-style items of `benches/load.rs`, as one envelope batch.
fn batch_body() -> String {
    let items: Vec<String> = (0..ITEMS)
        .map(|i| format!(r#"{{"id":"{i}","method":"POST","url":"/file/get","headers":{{"Content-Type":"application/json"}},"body":{{"domain_id":"1","drive_id":"1"}}}}"#))
        .collect();
    format!(r#"{{"resource":"file","requests":[{}]}}"#, items.join(","))
}

/// One measured run of one contender.
struct Run {
    name: String,
    /// Client requests answered 2xx per second.
    requests_per_second: f64,
    /// Server CPU seconds per upstream request (item or pass-through request).
    cpu_per_unit: f64,
    /// New upstream connections per upstream request.
    new_connections: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Upstream requests seen over what the answered client requests should have caused.
    delivered: f64,
    errors: u64,
}

/// A contender: something with a port and processes whose CPU can be read.
trait Server {
    fn name(&self) -> String;
    fn port(&self) -> u16;
    fn cpu_seconds(&self) -> f64;
}

fn alternate<'a>(
    rounds: usize,
    contenders: &[&'a dyn Server],
    mut run: impl FnMut(&&'a dyn Server) -> Run,
) -> Vec<Run> {
    let mut runs = Vec::new();
    for _ in 0..rounds {
        for server in contenders {
            runs.push(run(server));
        }
    }
    runs
}

fn measure(
    client: &Wrk,
    server: &dyn Server,
    upstream: &Upstream,
    path: &str,
    connections: usize,
    body: Option<&Path>,
    units_per_request: usize,
) -> Run {
    let (accepts, requests) = upstream.counters();
    let cpu = server.cpu_seconds();
    let result = client.run(server.port(), path, connections, body);
    let cpu = server.cpu_seconds() - cpu;
    let (accepts_after, requests_after) = upstream.counters();
    let upstream_requests = requests_after.saturating_sub(requests).max(1) as f64;
    let expected = (result.requests * units_per_request as u64).max(1) as f64;
    Run {
        name: server.name(),
        requests_per_second: result.requests as f64 / result.seconds,
        cpu_per_unit: cpu / upstream_requests,
        new_connections: accepts_after.saturating_sub(accepts) as f64 / upstream_requests,
        p50_ms: result.p50_us / 1000.0,
        p99_ms: result.p99_us / 1000.0,
        delivered: upstream_requests / expected,
        errors: result.errors,
    }
}

fn print_runs(runs: &[Run], unit: &str) {
    println!(
        "| contender | run | requests/s | CPU us per {unit} | new upstream conns per {unit} | p50 ms | p99 ms | upstream/expected | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut seen: Vec<(String, usize)> = Vec::new();
    for run in runs {
        let n = match seen.iter_mut().find(|(name, _)| *name == run.name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((run.name.clone(), 1));
                1
            }
        };
        println!(
            "| {} | {n} | {:.0} | {:.2} | {:.4} | {:.2} | {:.2} | {:.3} | {} |",
            run.name,
            run.requests_per_second,
            run.cpu_per_unit * 1e6,
            run.new_connections,
            run.p50_ms,
            run.p99_ms,
            run.delivered,
            run.errors
        );
    }
}

/// Each round's ratio of the first contender to each other one, then their range.
fn ratios(runs: &[Run], value: impl Fn(&Run) -> f64) -> Vec<(String, Vec<f64>)> {
    let first = &runs[0].name;
    let per_round = runs.iter().filter(|r| r.name == *first).count();
    let width = runs.len() / per_round.max(1);
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for round in runs.chunks(width) {
        for other in &round[1..] {
            let ratio = value(&round[0]) / value(other);
            match out.iter_mut().find(|(n, _)| *n == other.name) {
                Some((_, v)) => v.push(ratio),
                None => out.push((other.name.clone(), vec![ratio])),
            }
        }
    }
    out
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    format!("{mean:.2} (runs {min:.2}-{max:.2})")
}

fn report(title: &str, unit: &str, runs: &[Run]) {
    println!("\n### {title}\n");
    print_runs(runs, unit);
    for (other, values) in ratios(runs, |r| r.cpu_per_unit) {
        println!(
            "\nCPU per {unit}, {} / {other}: {}",
            runs[0].name,
            range(&values)
        );
    }
}

fn report_latency(title: &str, runs: &[Run]) {
    println!("\n### {title}\n");
    print_runs(runs, "item");
    // Runs are [direct, parallel, batchgate, peer...] per round. A batch waits for its slowest
    // item: the median of the slowest of 100 calls is about their 99.3rd percentile, so the
    // parallel calls' p99 is what the same 100 calls cost a client without a batch proxy.
    let rounds = runs.iter().filter(|r| r.name == "direct").count().max(1);
    let width = runs.len() / rounds;
    let contenders: Vec<String> = runs
        .iter()
        .take(width)
        .skip(2)
        .map(|r| r.name.clone())
        .collect();
    for name in contenders {
        let ratio = |baseline: &str, of: fn(&Run) -> f64| -> Vec<f64> {
            runs.chunks(width)
                .filter_map(|round| {
                    let base = round.iter().find(|r| r.name == baseline)?;
                    let other = round.iter().find(|r| r.name == name)?;
                    Some(other.p50_ms / of(base))
                })
                .collect()
        };
        println!(
            "\np50 {name} / p50 of one direct call: {}",
            range(&ratio("direct", |r| r.p50_ms))
        );
        println!(
            "p50 {name} / p99 of 100 direct calls in parallel: {}",
            range(&ratio(PARALLEL, |r| r.p99_ms))
        );
    }
}

/// The name of the 100-calls-in-parallel baseline.
const PARALLEL: &str = "direct, 100 in parallel";

/// The load client: wrk with a Lua script that sends the body and prints a summary line.
#[derive(Clone)]
struct Wrk {
    binary: &'static str,
    dir: PathBuf,
    seconds: u64,
}

struct WrkResult {
    requests: u64,
    seconds: f64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
}

impl Wrk {
    fn run(&self, port: u16, path: &str, connections: usize, body: Option<&Path>) -> WrkResult {
        let script = self
            .dir
            .join(format!("wrk-{connections}-{}.lua", body.is_some()));
        let send = match body {
            Some(body) => format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal f = io.open(\"{}\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
                body.display()
            ),
            None => String::new(),
        };
        let done = "function done(s, latency, requests)\n  local e = s.errors\n  io.write(string.format(\"SUMMARY %d %d %d %d %d\\n\", s.requests, s.duration, e.connect + e.read + e.write + e.timeout + e.status, latency:percentile(50), latency:percentile(99)))\nend\n";
        std::fs::write(&script, format!("{send}{done}")).expect("wrk script");
        let output = Command::new(self.binary)
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{}s", self.seconds),
            ])
            .arg("-s")
            .arg(&script)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .stderr(Stdio::inherit())
            .output()
            .expect("wrk runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let summary = text
            .lines()
            .find_map(|l| l.strip_prefix("SUMMARY "))
            .unwrap_or_else(|| panic!("wrk printed no summary: {text}"));
        let n: Vec<f64> = summary
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        WrkResult {
            requests: n[0] as u64,
            seconds: n[1] / 1e6,
            errors: n[2] as u64,
            p50_us: n[3],
            p99_us: n[4],
        }
    }
}

const NDK_MODULE: &str = "/usr/lib/nginx/modules/ndk_http_module.so";
const LUA_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_lua_module.so";

/// The shared upstream: nginx (one worker) or this benchmark as a standalone server, with a
/// 0 ms port, a 10 ms port and `stub_status` counters on `/_status` of the 0 ms port.
struct Upstream {
    fast_port: u16,
    slow_port: u16,
    process: Process,
}

impl Upstream {
    fn start(nginx: Option<&'static str>, dir: &Path) -> Upstream {
        let (fast_port, slow_port) = (free_port(), free_port());
        let process = match nginx {
            Some(nginx) => {
                let config = format!(
                    "{modules}events {{ worker_connections 16384; }}\n\
                     http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s; default_type application/json;\n\
                     server {{ listen 127.0.0.1:{fast_port} backlog=4096;\n\
                       location = /_status {{ stub_status; }}\n\
                       location / {{ return 200 '{UPSTREAM_BODY}'; }} }}\n\
                     server {{ listen 127.0.0.1:{slow_port} backlog=4096;\n\
                       location / {{ content_by_lua_block {{ ngx.sleep(0.01) ngx.print('{UPSTREAM_BODY}') }} }} }} }}\n",
                    modules = lua_modules(),
                );
                Process::Nginx(Nginx::start(nginx, "upstream", &config, dir))
            }
            None => {
                let me = std::env::current_exe().expect("own path");
                let child = Command::new(me)
                    .env("SIDE_UPSTREAM_ROLE", format!("{fast_port},{slow_port}"))
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("standalone upstream");
                Process::Standalone(child)
            }
        };
        Upstream {
            fast_port,
            slow_port,
            process,
        }
    }

    fn describe(&self) -> &'static str {
        match self.process {
            Process::Nginx(_) => "nginx 1 worker (separate process)",
            Process::Standalone(_) => {
                "standalone upstream (separate process; SIDE_UPSTREAM=standalone, or no nginx with lua)"
            }
        }
    }

    fn wait_ready(&self) {
        wait_for_port(self.fast_port);
        wait_for_port(self.slow_port);
    }

    /// (`accepts`, `requests`) from the status page.
    fn counters(&self) -> (u64, u64) {
        let page = http_get(self.fast_port, "/_status");
        // "Active connections: 1 \nserver accepts handled requests\n 10 10 20 \nReading: ..."
        let numbers: Vec<u64> = page
            .lines()
            .nth(2)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        // The status request itself is one accept and one request.
        match numbers.as_slice() {
            [accepts, _, requests, ..] => (accepts.saturating_sub(1), requests.saturating_sub(1)),
            _ => panic!("unreadable upstream status: {page}"),
        }
    }
}

enum Process {
    // Held for its `Drop`, which stops nginx.
    #[allow(dead_code)]
    Nginx(Nginx),
    Standalone(Child),
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Process::Standalone(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lua_modules() -> String {
    format!("load_module {NDK_MODULE};\nload_module {LUA_MODULE};\n")
}

fn wait_for_port(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port}");
}

/// One GET on a fresh connection; the whole response as text.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, body)| body.to_string())
}

/// nginx `proxy_pass` with upstream keep-alive (the pass-through peer).
fn nginx_proxy_config(upstream: &Upstream) -> String {
    format!(
        "events {{ worker_connections 16384; }}\n\
         http {{ access_log off; keepalive_requests 100000000;\n\
         upstream fast {{ server 127.0.0.1:{}; keepalive 1024; keepalive_requests 100000000; }}\n\
         server {{ listen 127.0.0.1:{{port}} backlog=4096;\n\
           location / {{ proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        upstream.fast_port
    )
}

/// The OpenResty-style batch endpoint: decode the envelope, `capture_multi` every item over
/// upstream keep-alive (all at once, like batchgate's per-batch concurrency of 100), decode each
/// JSON answer and encode the envelope reply.
fn nginx_lua_config(upstream: &Upstream) -> String {
    let handler = |prefix: &str| {
        format!(
            r#"content_by_lua_block {{
  local cjson = require "cjson.safe"
  local methods = {{ GET = ngx.HTTP_GET, POST = ngx.HTTP_POST, PUT = ngx.HTTP_PUT, DELETE = ngx.HTTP_DELETE, PATCH = ngx.HTTP_PATCH }}
  ngx.req.read_body()
  local batch = cjson.decode(ngx.req.get_body_data() or "")
  if type(batch) ~= "table" or type(batch.requests) ~= "table" then
    ngx.status = 400
    ngx.print('{{"code":"InvalidParameter"}}')
    return
  end
  local calls = {{}}
  for i, item in ipairs(batch.requests) do
    calls[i] = {{ "{prefix}" .. item.url, {{ method = methods[item.method] or ngx.HTTP_GET, body = item.body and cjson.encode(item.body) or nil }} }}
  end
  local answers = {{ ngx.location.capture_multi(calls) }}
  local responses = {{}}
  for i, answer in ipairs(answers) do
    responses[i] = {{ id = batch.requests[i].id, status = answer.status, body = cjson.decode(answer.body) or answer.body }}
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({{ responses = responses }}))
}}"#
        )
    };
    format!(
        "{modules}events {{ worker_connections 16384; }}\n\
         http {{ access_log off; keepalive_requests 100000000; client_body_buffer_size 1m; client_max_body_size 1m;\n\
         lua_package_cpath \"/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;\";\n\
         upstream fast {{ server 127.0.0.1:{fast}; keepalive 1024; keepalive_requests 100000000; }}\n\
         upstream slow {{ server 127.0.0.1:{slow}; keepalive 1024; keepalive_requests 100000000; }}\n\
         server {{ listen 127.0.0.1:{{port}} backlog=4096;\n\
           location = /v2/batch {{ {fast_handler} }}\n\
           location = /slow/v2/batch {{ {slow_handler} }}\n\
           location /_fast/ {{ internal; rewrite ^/_fast(/.*)$ /v2$1 break; proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Content-Type application/json; }}\n\
           location /_slow/ {{ internal; rewrite ^/_slow(/.*)$ /v2$1 break; proxy_pass http://slow; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Content-Type application/json; }} }} }}\n",
        modules = lua_modules(),
        fast = upstream.fast_port,
        slow = upstream.slow_port,
        fast_handler = handler("/_fast"),
        slow_handler = handler("/_slow"),
    )
}

/// An nginx master with `NGINX_WORKERS` workers (the upstream: one) on `config`, where
/// `{port}` is replaced by a free port; stopped on drop.
struct Nginx {
    role: &'static str,
    port: u16,
    master: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(binary: &'static str, role: &'static str, config: &str, dir: &Path) -> Nginx {
        let dir = dir.join(role);
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = free_port();
        let workers = if role == "upstream" {
            1
        } else {
            env_or("NGINX_WORKERS", 2)
        };
        let d = dir.display();
        let head = format!(
            "daemon off; master_process on; worker_processes {workers}; pid {d}/nginx.pid; error_log {d}/error.log warn;\n"
        );
        let temp = format!(
            "client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;"
        );
        let config = config.replace("{port}", &port.to_string()).replacen(
            "http {",
            &format!("http {{ {temp}"),
            1,
        );
        let path = dir.join("nginx.conf");
        // `load_module` lines must come first, before the main-context directives.
        let (modules, rest): (Vec<&str>, Vec<&str>) =
            config.lines().partition(|l| l.starts_with("load_module"));
        std::fs::write(
            &path,
            format!("{}\n{head}{}\n", modules.join("\n"), rest.join("\n")),
        )
        .expect("nginx config");
        let master = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        Nginx {
            role,
            port,
            master,
            dir,
        }
    }

    fn wait_ready(&self) {
        wait_for_port(self.port);
    }
}

impl Server for Nginx {
    fn name(&self) -> String {
        match self.role {
            "lua" => "nginx+lua capture_multi".into(),
            "proxy" => "nginx proxy_pass".into(),
            other => format!("nginx {other}"),
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// The master and its workers.
    fn cpu_seconds(&self) -> f64 {
        family_cpu_seconds(self.master.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops the workers too.
        procs::stop(&mut self.master, Duration::from_secs(5));
        if std::env::var_os("SIDE_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Calls straight to the upstream's 10 ms port, one or 100 at a time (the latency baselines).
struct Direct(u16, usize);

impl Server for Direct {
    fn name(&self) -> String {
        if self.1 == 1 {
            "direct".into()
        } else {
            PARALLEL.into()
        }
    }
    fn port(&self) -> u16 {
        self.0
    }
    fn cpu_seconds(&self) -> f64 {
        0.0
    }
}

/// The release batchgate binary: `threads = BATCHGATE_THREADS`, everything else at its
/// defaults except the per-batch concurrency (100, as the peer runs every item at once).
struct Gate {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Gate {
    fn start(upstream: &Upstream, dir: &Path) -> Gate {
        let dir = dir.join("batchgate");
        std::fs::create_dir_all(&dir).expect("gate dir");
        let port = free_port();
        let d = dir.display();
        let threads: usize = env_or("BATCHGATE_THREADS", 2);
        let extra = std::env::var("BATCHGATE_EXTRA").unwrap_or_default();
        let config = format!(
            r#"[server]
listen = ["127.0.0.1:{port}"]
threads = {threads}
default_upstream = "fast"
pid_file = "{d}/batchgate.pid"
upgrade_sock = "{d}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
{extra}

[admin]
enabled = false

[upstreams.fast]
addresses = ["127.0.0.1:{fast}"]

[upstreams.slow]
addresses = ["127.0.0.1:{slow}"]

[[routes]]
name = "pds_batch"
path = "/v2/batch"
dialect = "envelope"
upstream = "fast"
base_path = "/v2"
max_items = 100
concurrency = 100
allowed_methods = ["POST"]
allowed_resources = ["file"]
allowed_url_prefixes = ["/file/"]

[[routes]]
name = "pds_batch_slow"
path = "/slow/v2/batch"
dialect = "envelope"
upstream = "slow"
base_path = "/v2"
max_items = 100
concurrency = 100
allowed_methods = ["POST"]
allowed_resources = ["file"]
allowed_url_prefixes = ["/file/"]
"#,
            fast = upstream.fast_port,
            slow = upstream.slow_port,
        );
        let path = dir.join("batchgate.toml");
        std::fs::write(&path, config).expect("gate config");
        let binary = std::env::var("BATCHGATE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_batchgate").to_string());
        let log = std::fs::File::create(dir.join("batchgate.log")).expect("log");
        let child = own_session(&binary)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Gate { port, child, dir }
    }

    fn wait_ready(&self) {
        wait_for_port(self.port);
    }
}

impl Server for Gate {
    fn name(&self) -> String {
        "batchgate".into()
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.join("batchgate.log");
        let warnings = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = warnings.lines().collect();
        if !lines.is_empty() {
            println!(
                "\nbatchgate logged {} lines at warn or above; the first:",
                lines.len()
            );
            for line in lines.iter().take(5) {
                println!("  {line}");
            }
        }
    }
}

/// The standalone upstream for machines without nginx: blocking threads, one per connection,
/// with nginx's `stub_status` format on `/_status`.
mod standalone {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    pub fn serve(spec: &str) {
        let ports: Vec<u16> = spec.split(',').filter_map(|p| p.parse().ok()).collect();
        let accepts = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let delay = if i == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            let (accepts, requests) = (accepts.clone(), requests.clone());
            threads.push(std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    accepts.fetch_add(1, Ordering::Relaxed);
                    let (accepts, requests) = (accepts.clone(), requests.clone());
                    std::thread::spawn(move || connection(stream, delay, &accepts, &requests));
                }
            }));
        }
        for thread in threads {
            let _ = thread.join();
        }
    }

    fn connection(stream: TcpStream, delay: Duration, accepts: &AtomicU64, requests: &AtomicU64) {
        let _ = stream.set_nodelay(true);
        let mut writer = match stream.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                if header == "\r\n" {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
            let reply = if path == "/_status" {
                let a = accepts.load(Ordering::Relaxed);
                format!("Active connections: 0 \nserver accepts handled requests\n {a} {a} {n} \n")
            } else {
                std::thread::sleep(delay);
                UPSTREAM_BODY.to_string()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                reply.len()
            );
            if writer
                .write_all(format!("{head}{reply}").as_bytes())
                .is_err()
            {
                return;
            }
        }
    }
}

/// The floor pingora itself sets for pass-through: pingora's own proxy with nothing of
/// batchgate's (no filters, metrics, deadlines or connection caps), the same pingora version,
/// threads, runtime flavour (`work_stealing = false`) and keep-alive pool size as batchgate's
/// defaults. Run as this benchmark re-executed with
/// `SIDE_BARE_PINGORA_ROLE=listen_port,upstream_port,threads,work_stealing,dir`.
mod bare {
    use async_trait::async_trait;
    use pingora::prelude::*;
    use pingora::server::configuration::{Opt, ServerConf};

    struct Bare(String);

    #[async_trait]
    impl ProxyHttp for Bare {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(
                self.0.as_str(),
                false,
                String::new(),
            )))
        }
    }

    pub fn serve(spec: &str) {
        let parts: Vec<&str> = spec.split(',').collect();
        let [listen, upstream, threads, work_stealing, dir] = parts[..] else {
            panic!("SIDE_BARE_PINGORA_ROLE: {spec}");
        };
        let conf = ServerConf {
            threads: threads.parse().unwrap_or(2),
            work_stealing: work_stealing == "true",
            upstream_keepalive_pool_size: 1024,
            pid_file: format!("{dir}/bare.pid"),
            upgrade_sock: format!("{dir}/bare.sock"),
            grace_period_seconds: Some(1),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
        server.bootstrap();
        let mut proxy =
            http_proxy_service(&server.configuration, Bare(format!("127.0.0.1:{upstream}")));
        proxy.add_tcp(&format!("127.0.0.1:{listen}"));
        server.add_service(proxy);
        server.run_forever();
    }
}

/// The bare pingora proxy (`mod bare`) as a separate process.
struct BarePingora {
    port: u16,
    child: Child,
}

impl BarePingora {
    fn start(upstream: &Upstream, dir: &Path) -> BarePingora {
        let dir = dir.join("bare");
        std::fs::create_dir_all(&dir).expect("bare dir");
        let port = free_port();
        let threads: usize = env_or("BATCHGATE_THREADS", 2);
        let work_stealing: bool = env_or("BARE_WORK_STEALING", false);
        let child = own_session(std::env::current_exe().expect("own path"))
            .env(
                "SIDE_BARE_PINGORA_ROLE",
                format!(
                    "{port},{},{threads},{work_stealing},{}",
                    upstream.fast_port,
                    dir.display()
                ),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bare pingora");
        BarePingora { port, child }
    }

    fn wait_ready(&self) {
        wait_for_port(self.port);
    }
}

impl Server for BarePingora {
    fn name(&self) -> String {
        "pingora alone".into()
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for BarePingora {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
