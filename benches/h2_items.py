"""A batch item from an HTTP/2 TLS client beside one from a cleartext HTTP/1.1 client (issue 34,
item 3): server CPU per item of 100-item envelope batches, the same batchgate process serving
both, clients alternating ROUNDS times for SECONDS each.

batchgate runs conf/examples/https.toml (cleartext and TLS listeners, `http2 = true`, 2
threads); the upstream is nginx (1 worker) answering every item at once. The cleartext client
is wrk (CLIENTS connections), the h2 one h2load (CLIENTS connections, one stream each, TLS with
ALPN h2). Reported: CPU per item for each (median, min-max) and the ratio h2 / HTTP/1.1.

Run: `python3 benches/h2_items.py` (needs wrk, nghttp2-client and nginx-light)."""

import json
import os
import re
import statistics
import subprocess
import time

import harness

ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = int(os.environ.get("SECONDS", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
ITEMS = 100
PORTS = {"upstream": 18601, "gate": 18602, "tls": 18603, "admin": 18604}


def main():
    work = harness.work_dir()
    body = json.dumps({"resource": "file", "requests": [
        {"id": str(i), "method": "POST", "url": "/file/get", "body": {"drive_id": "1", "file_id": str(i)}}
        for i in range(ITEMS)]})
    body_file = os.path.join(work, "batch.json")
    open(body_file, "w").write(body)
    script = os.path.join(work, "batch.lua")
    open(script, "w").write(
        f'wrk.method = "POST"\nwrk.body = io.open("{body_file}"):read("*a")\n'
        'wrk.headers["Content-Type"] = "application/json"\n')
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(f"""worker_processes 1; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s; default_type application/json;
client_body_temp_path {work}/b;
server {{ listen 127.0.0.1:{PORTS['upstream']} backlog=4096;
  location / {{ return 200 '{{"domain_id":"1","drive_id":"1","file_id":"9520943DC264"}}'; }} }} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    time.sleep(0.3)
    text = open("conf/examples/https.toml").read().replace(
        'tls_listen = ["0.0.0.0:8443"]', f'tls_listen = ["127.0.0.1:{PORTS["tls"]}"]')
    config = harness.example_config(work, None, PORTS["gate"], PORTS["admin"], PORTS["upstream"],
                                    "threads = 2\nmax_in_flight = 4096", text=text)
    gate = harness.start_gate("target/release/batchgate", config, PORTS["admin"])

    def h1(seconds):
        out = subprocess.run(["wrk", "-t1", f"-c{CLIENTS}", f"-d{seconds}s", "-s", script,
                              f"http://127.0.0.1:{PORTS['gate']}/v2/batch"],
                             capture_output=True, text=True).stdout
        if "Non-2xx" in out:
            raise SystemExit(out)
        return int(re.search(r"(\d+) requests in", out).group(1))

    def h2(seconds):
        out = subprocess.run(["h2load", f"-c{CLIENTS}", "-m1", f"-D{seconds}", "-d", body_file,
                              "-H", "content-type: application/json",
                              f"https://127.0.0.1:{PORTS['tls']}/v2/batch"],
                             capture_output=True, text=True).stdout
        status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if not status or int(status.group(3)) or int(status.group(4)):
            raise SystemExit(out)
        assert "h2" in out, out
        return int(status.group(1))

    def measure(client):
        client(1)
        before = harness.cpu_seconds(gate.pid)
        batches = client(SECONDS)
        return (harness.cpu_seconds(gate.pid) - before) / (batches * ITEMS) * 1e6

    runs = {"http/1.1 cleartext": [], "h2 tls": []}
    try:
        for _ in range(ROUNDS):
            runs["http/1.1 cleartext"].append(measure(h1))
            runs["h2 tls"].append(measure(h2))
    finally:
        harness.stop_gate(gate)
        harness.stop_nginx(conf)
    print(f"100-item envelope batches, {CLIENTS} clients, {SECONDS} s x {ROUNDS} rounds alternating")
    for name, values in runs.items():
        print(f"{name:>20}: {statistics.median(values):.2f} us CPU/item ({min(values):.2f}-{max(values):.2f})")
    ratios = [b / a for a, b in zip(runs["http/1.1 cleartext"], runs["h2 tls"])]
    print(f"h2 tls / http/1.1: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
