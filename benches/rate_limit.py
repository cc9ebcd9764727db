#!/usr/bin/env python3
"""What a rate limit costs and how exact a shared one is (issue 31, item 6).

nginx answers every /v2/file/... call; batchgate (release build) runs conf/examples/quotas.toml
with its limit set far above the load ("local", "redis", "redis lease" with lease = 50) or
without [routes.rate_limit] ("off"):

  cost      ROUNDS x alternating modes: CLIENTS keep-alive clients send BATCHES batches of 10
            items in all; the batch latency (p50, p99) seen by the clients, batchgate's CPU
            (utime + stime) per batch, and redis-server's CPU per batch.
  accuracy  two batchgate processes sharing one Redis, a quota of 100 items/s (burst 100) per
            client; one client offers 200 items/s (batches of 10, alternating between the two)
            for ACCURACY_SECONDS: the items admitted per second, strict and with lease = 20.

Usage: python3 benches/rate_limit.py [BINARY] (default target/release/batchgate).
Needs nginx and redis-server (redis-cli); uses ports 18500 and 18502 (nginx, redis) and 18510-18515.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BATCHES = int(os.environ.get("BATCHES", "4000"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
ACCURACY_SECONDS = float(os.environ.get("ACCURACY_SECONDS", "60"))
UPSTREAM, REDIS = 18500, 18502
WORK = harness.work_dir()
BODY = json.dumps({"resource": "file", "requests": [
    {"id": str(i), "method": "POST", "url": "/file/get", "body": {"file_id": str(i)}}
    for i in range(10)]})

MODES = {
    "off": None,
    "local": 'items_per_second = 1000000\nburst = 1000000\nstore = "local"',
    "redis": 'items_per_second = 1000000\nburst = 1000000\nstore = "redis"',
    "redis lease": 'items_per_second = 1000000\nburst = 1000000\nstore = "redis"\nlease = 50',
}


def config(limit, listen, admin, name):
    text = open("conf/examples/quotas.toml").read()
    head, tail = text.split("[routes.rate_limit]")
    store = tail[tail.index("[rate_limits]"):].replace("6379", str(REDIS))
    text = head + (f"[routes.rate_limit]\n{limit}\n\n" if limit else "") + store
    text = text.replace('client_key = "header:X-Api-Key"', 'client_key = "header:X-Api-Key"\nconcurrency = 100')
    work = os.path.join(WORK, name)
    os.makedirs(work, exist_ok=True)
    return harness.example_config(work, None, listen, admin, UPSTREAM, "max_in_flight = 4096", text=text)


def send(port, key, count, latencies):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = {}
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/v2/batch", BODY, {"Content-Type": "application/json", "X-Api-Key": key})
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    return statuses


def cost_round(mode, redis_pid):
    gate = harness.start_gate(BINARY, config(MODES[mode], 18510, 18511, mode), 18511)
    send(18510, "warm", 200, [])
    latencies = []
    gate_cpu, redis_cpu = harness.cpu_seconds(gate.pid), harness.cpu_seconds(redis_pid)
    threads = [threading.Thread(target=send, args=(18510, f"client-{c}", BATCHES // CLIENTS, latencies))
               for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gate_cpu = harness.cpu_seconds(gate.pid) - gate_cpu
    redis_cpu = harness.cpu_seconds(redis_pid) - redis_cpu
    harness.stop_gate(gate)
    latencies.sort()
    n = len(latencies)
    return {"p50": latencies[n // 2], "p99": latencies[int(n * 0.99)],
            "cpu": gate_cpu / n, "redis": redis_cpu / n}


def accuracy(lease):
    limit = 'items_per_second = 100\nburst = 100\nstore = "redis"' + (f"\nlease = {lease}" if lease else "")
    subprocess.run(["redis-cli", "-p", str(REDIS), "FLUSHALL"], capture_output=True)
    gates = [harness.start_gate(BINARY, config(limit, 18512, 18513, "acc-a"), 18513),
             harness.start_gate(BINARY, config(limit, 18514, 18515, "acc-b"), 18515)]
    ports = [18512, 18514]
    admitted, sent = 0, 0
    connections = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in ports]
    started = time.time()
    while time.time() - started < ACCURACY_SECONDS:
        due = started + sent * 10 / 200
        time.sleep(max(0.0, due - time.time()))
        connection = connections[sent % 2]
        sent += 1
        connection.request("POST", "/v2/batch", BODY, {"Content-Type": "application/json", "X-Api-Key": "one"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            admitted += 10
    elapsed = time.time() - started
    for gate in gates:
        harness.stop_gate(gate)
    return admitted / elapsed, sent * 10 / elapsed, elapsed


def main():
    nginx = harness.start_nginx(WORK, f"""server {{ listen 127.0.0.1:{UPSTREAM};
  location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }}""")
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", WORK], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        figures = {mode: [] for mode in MODES}
        for _ in range(ROUNDS):
            for mode in MODES:
                figures[mode].append(cost_round(mode, redis.pid))
        print(f"cost: {ROUNDS} rounds x {BATCHES} batches of 10 items, {CLIENTS} clients; "
              "median (min-max) over rounds")
        print(f"{'mode':12} {'p50 ms':>18} {'p99 ms':>18} {'CPU us/batch':>20} {'Redis CPU us/batch':>20}")
        for mode, rounds in figures.items():
            def shown(key, scale):
                values = [r[key] * scale for r in rounds]
                return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"
            print(f"{mode:12} {shown('p50', 1e3):>18} {shown('p99', 1e3):>18} "
                  f"{shown('cpu', 1e6):>20} {shown('redis', 1e6):>20}")
        for lease in (None, 20):
            rate, offered, elapsed = accuracy(lease)
            name = f"lease = {lease}" if lease else "strict"
            print(f"accuracy ({name}): admitted {rate:.1f} items/s of a 100/s quota, offered "
                  f"{offered:.0f}/s over {elapsed:.0f} s, two replicas sharing Redis "
                  f"(bound: 100 + burst 100 / {elapsed:.0f} s = {100 + 100 / elapsed:.1f})")
    finally:
        redis.terminate()
        harness.stop_nginx(nginx)


if __name__ == "__main__":
    main()
