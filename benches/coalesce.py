#!/usr/bin/env python3
"""What coalescing and the item cache save (issue 30, item 5), measured against nginx.

nginx answers every /v2/file/... call with a small JSON object marked fresh for a minute
(`Cache-Control: max-age=60`) and counts its requests (stub_status). batchgate (release build)
runs conf/examples/coalesce.toml ("on") or the same route without its [routes.coalesce] and
[routes.cache] tables ("off"):

  duplicates  one 100-item batch of 50 distinct GETs, each twice: upstream requests.
  hit/miss    ROUNDS x alternating: BATCHES batches of 100 never-seen items (every item a miss,
              then stored), then the same batches again (every item a hit); batchgate's CPU
              (utime + stime) per item of each, and their ratio.
  zipf        CLIENTS concurrent clients send ZIPF_BATCHES batches of 50 items in all, keys
              drawn from 1,000 with a Zipf law (s = 1.1): upstream requests on and off.

Usage: python3 benches/coalesce.py [BINARY] (default target/release/batchgate).
Needs nginx; uses ports 18480-18481 (nginx) and 18490-18491 (batchgate).
"""

import http.client
import json
import os
import random
import statistics
import sys
import threading

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "5"))
BATCHES = int(os.environ.get("BATCHES", "200"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
ZIPF_BATCHES = int(os.environ.get("ZIPF_BATCHES", "400"))
WORK = harness.work_dir()


def nginx():
    return harness.start_nginx(
        WORK,
        """server { listen 127.0.0.1:18480; default_type application/json;
    location / { add_header Cache-Control "max-age=60"; return 200 '{"id":"f","size":42}'; } }
  server { listen 127.0.0.1:18481; location / { stub_status; } }""",
    )


def upstream_requests():
    conn = http.client.HTTPConnection("127.0.0.1", 18481, timeout=5)
    conn.request("GET", "/")
    text = conn.getresponse().read().decode()
    # "server accepts handled requests\n N N N": the status request itself is one of them.
    return int(text.splitlines()[2].split()[2])


def gate(on):
    text = open("conf/examples/coalesce.toml").read()
    if not on:
        text = text[: text.index("[routes.coalesce]")]
    text = text.replace('forward_headers = ["authorization"]', 'forward_headers = ["authorization"]\nconcurrency = 100')
    config = harness.example_config(WORK, None, 18490, 18491, 18480, "max_in_flight = 4096", text=text)
    return harness.start_gate(BINARY, config, 18491)


def body(paths):
    return json.dumps(
        {"requests": [{"id": str(i), "method": "GET", "url": p} for i, p in enumerate(paths)]}
    )


def send_all(bodies, clients=CLIENTS):
    chunks = [bodies[i::clients] for i in range(clients)]
    errors = []

    def client(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", 18490, timeout=30)
        for payload in chunk:
            conn.request("POST", "/v2/batch", body=payload,
                         headers={"Content-Type": "application/json", "Authorization": "Bearer a"})
            resp = conn.getresponse()
            reply = json.loads(resp.read())
            if resp.status != 200 or any(r["status"] != 200 for r in reply["responses"]):
                errors.append(resp.status)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(errors)


def main():
    conf = nginx()
    try:
        for on in (True, False):
            g = gate(on)
            try:
                before = upstream_requests()
                paths = [f"/file/dup{i % 50}" for i in range(100)]
                send_all([body(paths)], clients=1)
                sent = upstream_requests() - before - 1
                print(f"duplicates ({'on' if on else 'off'}): 100 items, 50 distinct: {sent} upstream requests")
            finally:
                harness.stop_gate(g)

        g = gate(True)
        try:
            miss, hit = [], []
            for r in range(ROUNDS):
                bodies = [body([f"/file/r{r}b{b}i{i}" for i in range(100)]) for b in range(BATCHES)]
                items = BATCHES * 100
                start = harness.cpu_seconds(g.pid)
                errors = send_all(bodies)
                miss.append((harness.cpu_seconds(g.pid) - start) / items * 1e6)
                start = harness.cpu_seconds(g.pid)
                errors += send_all(bodies)
                hit.append((harness.cpu_seconds(g.pid) - start) / items * 1e6)
                print(f"round {r}: miss {miss[-1]:6.1f} us/item  hit {hit[-1]:6.1f} us/item  errors {errors}")
            m, h = statistics.median(miss), statistics.median(hit)
            print(f"median miss {m:.1f} us/item ({min(miss):.1f}-{max(miss):.1f}), "
                  f"hit {h:.1f} us/item ({min(hit):.1f}-{max(hit):.1f}): hit/miss {h / m:.2f}")
        finally:
            harness.stop_gate(g)

        rng = random.Random(30)
        weights = [1 / (k ** 1.1) for k in range(1, 1001)]
        zipf = [body([f"/file/z{k}" for k in rng.choices(range(1000), weights, k=50)])
                for _ in range(ZIPF_BATCHES)]
        for on in (True, False):
            g = gate(on)
            try:
                before = upstream_requests()
                errors = send_all(zipf)
                sent = upstream_requests() - before - 1
                print(f"zipf ({'on' if on else 'off'}): {ZIPF_BATCHES * 50} items: {sent} upstream requests, errors {errors}")
            finally:
                harness.stop_gate(g)
    finally:
        harness.stop_nginx(conf)


if __name__ == "__main__":
    main()
