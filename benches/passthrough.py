"""Pass-through beside nginx `proxy_pass` (issue 34): server CPU per request and wrk's p99, for
GET, POST with a 1 KiB body and a 1 MiB response, at 16 and 64 connections.

One nginx (1 worker) is the upstream; the contenders are batchgate (release binary,
conf/examples/minimal.toml, 2 threads) and nginx proxying with upstream keep-alive (2 workers),
measured alternately, ROUNDS rounds of SECONDS each per scenario. Server CPU is utime + stime
(nginx: master and workers) over the requests wrk counted; ratios are batchgate's over nginx's
per round, printed as the median with min-max. With TLS=1 both contenders terminate TLS
(conf/examples/https.toml and its test certificate), wrk speaking https.

Run: `python3 benches/passthrough.py` (about 4 minutes; needs wrk and nginx-light).
ONLY=get16,post64,... picks scenarios; BINARY measures another build."""

import os
import re
import statistics
import subprocess
import time

import harness

ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = int(os.environ.get("SECONDS", "4"))
TLS = os.environ.get("TLS") == "1"
BINARY = os.environ.get("BINARY", "target/release/batchgate")
ONLY = set(filter(None, os.environ.get("ONLY", "").split(",")))
PORTS = {"upstream": 18401, "nginx": 18402, "gate": 18403, "admin": 18404}
SCENARIOS = [
    # name, path, wrk script (None: GET), connections
    ("get16", "/v2/hello", None, 16),
    ("get64", "/v2/hello", None, 64),
    ("post16", "/v2/post", "post.lua", 16),
    ("post64", "/v2/post", "post.lua", 64),
    ("big16", "/big", None, 16),
    ("big64", "/big", None, 64),
]
CERT = os.path.abspath("conf/examples/tls/localhost.pem")
KEY = os.path.abspath("conf/examples/tls/localhost.key")


def start(work, name, workers, server):
    conf = os.path.join(work, f"{name}.conf")
    open(conf, "w").write(f"""worker_processes {workers}; error_log {work}/{name}.err; pid {work}/{name}.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
client_body_temp_path {work}/{name}-body; proxy_temp_path {work}/{name}-proxy; {server} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    time.sleep(0.3)
    return conf, int(open(f"{work}/{name}.pid").read())


def family_cpu(master):
    return sum(harness.cpu_seconds(pid) for pid in harness.nginx_family(master))


def wrk(port, path, script, connections, seconds, work):
    scheme = "https" if TLS else "http"
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", os.path.join(work, script)]
    out = subprocess.run(args + [f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1, "ms": 1000, "s": 1e6}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error answers on port {port}{path}:\n{out}")
    return requests, float(p99.group(1)) * scale


def measure(port, path, script, connections, cpu, work):
    wrk(port, path, script, connections, 1, work)
    before = cpu()
    requests, p99 = wrk(port, path, script, connections, SECONDS, work)
    return {"cpu_us": (cpu() - before) / requests * 1e6, "p99_us": p99, "rps": requests / SECONDS}


def main():
    work = harness.work_dir()
    open(os.path.join(work, "post.lua"), "w").write(
        'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\nwrk.headers["Content-Type"] = "application/json"\n')
    open(os.path.join(work, "big.bin"), "wb").write(b"b" * (1 << 20))
    os.chmod(os.path.join(work, "big.bin"), 0o644)
    body = '{"domain_id":"1","drive_id":"1","file_id":"9520943DC264"}'
    upstream_conf, _ = start(work, "upstream", 1, f"""default_type application/json;
server {{ listen 127.0.0.1:{PORTS['upstream']} backlog=4096;
  location = /big {{ alias {work}/big.bin; }}
  location / {{ return 200 '{body}'; }} }}""")
    listen = f"{PORTS['nginx']} ssl" if TLS else f"{PORTS['nginx']}"
    tls = f"ssl_certificate {CERT}; ssl_certificate_key {KEY};" if TLS else ""
    proxy_conf, proxy_master = start(work, "proxy", 2, f"""
upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 256; }}
server {{ listen 127.0.0.1:{listen} backlog=4096; {tls}
  location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
    extra = "threads = 2\nmax_client_connections = 10000"
    if TLS:
        text = open("conf/examples/https.toml").read().replace(
            'tls_listen = ["0.0.0.0:8443"]', f'tls_listen = ["127.0.0.1:{PORTS["gate"]}"]')
        gate_port = PORTS["gate"] + 10
    else:
        text = open("conf/examples/minimal.toml").read().replace(
            'listen = ["127.0.0.1:8080"]', 'listen = ["0.0.0.0:8080"]')
        text += '\n[admin]\nlisten = "127.0.0.1:9091"\n'
        gate_port = PORTS["gate"]
    config = harness.example_config(work, None, gate_port, PORTS["admin"], PORTS["upstream"], extra, text=text)
    try:
        for name, path, script, connections in SCENARIOS:
            if ONLY and name not in ONLY:
                continue
            runs = {"batchgate": [], "nginx": []}
            for _ in range(ROUNDS):
                gate = harness.start_gate(BINARY, config, PORTS["admin"])
                runs["batchgate"].append(measure(PORTS["gate"], path, script, connections,
                                                 lambda: harness.cpu_seconds(gate.pid), work))
                harness.stop_gate(gate)
                runs["nginx"].append(measure(PORTS["nginx"], path, script, connections,
                                             lambda: family_cpu(proxy_master), work))
            report(name, runs)
    finally:
        harness.stop_nginx(proxy_conf)
        harness.stop_nginx(upstream_conf)


def report(name, runs):
    def spread(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
    gate, nginx = runs["batchgate"], runs["nginx"]
    cpu = [g["cpu_us"] / n["cpu_us"] for g, n in zip(gate, nginx)]
    p99 = [g["p99_us"] / n["p99_us"] for g, n in zip(gate, nginx)]
    print(f"{name}{' tls' if TLS else ''}: CPU/request batchgate {spread([g['cpu_us'] for g in gate])} us, "
          f"nginx {spread([n['cpu_us'] for n in nginx])} us, ratio {spread(cpu)}; "
          f"p99 batchgate {spread([g['p99_us'] for g in gate])} us, nginx {spread([n['p99_us'] for n in nginx])} us, "
          f"ratio {spread(p99)}; req/s {statistics.median([g['rps'] for g in gate]):.0f} vs "
          f"{statistics.median([n['rps'] for n in nginx]):.0f}", flush=True)


if __name__ == "__main__":
    main()
