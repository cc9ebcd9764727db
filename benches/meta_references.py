#!/usr/bin/env python3
"""CPU per item of Meta batches with references against the same batches without (issue 29,
item 5: within 15 %).

nginx answers every Graph call with a small JSON object; one batchgate (release build) fronts
it with conf/examples/meta.toml's route. ROUNDS times, alternating, CLIENTS keep-alive clients
send BATCHES batches of 50 items in all: "plain" (50 independent GETs) and "references" (the
same, with items 1-10 each using item 0's id in their url: `{result=first:$.id}/feed`, so they
also wait for it). batchgate's CPU (utime + stime from /proc) is read before and after each
phase. Prints each phase and the median CPU per item of each kind, with min-max, and their
ratio.

Usage: python3 benches/meta_references.py [BINARY] (default target/release/batchgate).
Needs nginx; uses ports 18380 (nginx), 18390 (batchgate) and 18391 (admin).
"""

import http.client
import json
import os
import statistics
import sys
import threading
import urllib.parse

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "6"))
BATCHES = int(os.environ.get("BATCHES", "400"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
ITEMS = 50
WORK = harness.work_dir()


def body(references):
    items = [{"method": "GET", "relative_url": "me?fields=id,name", "name": "first"}]
    for i in range(1, ITEMS):
        url = "{result=first:$.id}/feed" if i <= references else "4/feed"
        items.append({"method": "GET", "relative_url": f"{url}?limit={i}"})
    return urllib.parse.urlencode({"access_token": "EAAB-token", "batch": json.dumps(items)})


def nginx():
    return harness.start_nginx(
        WORK,
        """server { listen 127.0.0.1:18380; default_type application/json;
    location / { return 200 '{"id":"4","name":"Ann Lee","data":[{"id":"7"}]}'; } }""",
    )


def client(payload, count, errors):
    conn = http.client.HTTPConnection("127.0.0.1", 18390, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(count):
        conn.request("POST", "/v21.0/", body=payload, headers=headers)
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        if resp.status != 200 or len(reply) != ITEMS or any(
            e is not None and e["code"] != 200 for e in reply
        ):
            errors.append(resp.status)
    conn.close()


def phase(pid, payload):
    errors = []
    before = harness.cpu_seconds(pid)
    threads = [
        threading.Thread(target=client, args=(payload, BATCHES // CLIENTS, errors))
        for _ in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = harness.cpu_seconds(pid) - before
    items = (BATCHES // CLIENTS) * CLIENTS * ITEMS
    return used / items * 1e6, len(errors)


def main():
    conf = nginx()
    config = harness.example_config(WORK, "meta.toml", 18390, 18391, 18380)
    gate = harness.start_gate(BINARY, config, 18391)
    try:
        payloads = {"plain": body(0), "references": body(10)}
        phase(gate.pid, payloads["plain"])  # warm-up: connections, allocator
        results = {"plain": [], "references": []}
        for _ in range(ROUNDS):
            for kind in ("plain", "references"):
                us, errors = phase(gate.pid, payloads[kind])
                results[kind].append(us)
                print(f"{kind:10} {us:6.1f} us/item  errors {errors}")
        for kind, values in results.items():
            print(f"median {kind:10} {statistics.median(values):6.1f} us/item "
                  f"({min(values):.1f}-{max(values):.1f})")
        ratio = statistics.median(results["references"]) / statistics.median(results["plain"])
        print(f"references / plain: {ratio:.3f}")
    finally:
        harness.stop_gate(gate)
        harness.stop_nginx(conf)


if __name__ == "__main__":
    main()
