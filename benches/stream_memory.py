#!/usr/bin/env python3
"""Peak memory and CPU of streamed against buffered batch replies (issue 28, item 6).

nginx serves a 256 KiB JSON document; a fresh batchgate (release build) per run fronts it
with an envelope route that streams. Each run sends CLIENTS (100) concurrent batches of ITEMS
(100) items, every client a `curl` reading its reply as fast as it comes (streamed: JSON
Lines; buffered: the whole body), then stops batchgate and reads its peak RSS (VmHWM) and CPU
time (utime + stime). The route runs 20 items of a batch at once and keeps at most 64 MiB of
one reply (a buffered reply here is 25 MiB; a streamed one holds only what is unwritten). Runs alternate, streamed first, RUNS (2) of each. Prints one line per run
and the medians.

Usage: python3 benches/stream_memory.py [BINARY] (default target/release/batchgate).
Needs nginx; uses ports 18280 (nginx), 18290 (batchgate) and 18291 (admin).
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
CLIENTS = int(os.environ.get("CLIENTS", "100"))
ITEMS = int(os.environ.get("ITEMS", "100"))
RUNS = int(os.environ.get("RUNS", "2"))
WORK = harness.work_dir()
DOC = json.dumps({"pad": "x" * (256 * 1024 - 12)})
BATCH = json.dumps(
    {"requests": [{"id": str(i), "method": "GET", "url": "/doc.json"} for i in range(ITEMS)]}
)


def nginx():
    open(os.path.join(WORK, "doc.json"), "w").write(DOC)
    return harness.start_nginx(
        WORK,
        f"""server {{ listen 127.0.0.1:18280 backlog=8192; root {WORK}; default_type application/json;
    location / {{ }} }}""",
        workers=2,
    )


def gate_config():
    path = os.path.join(WORK, "gate.toml")
    open(path, "w").write(
        f"""[server]
listen = ["127.0.0.1:18290"]
pid_file = "{WORK}/batchgate.pid"
upgrade_sock = "{WORK}/upgrade.sock"
log_level = "warn"
max_in_flight = 10000
grace_period = "1s"
graceful_shutdown_timeout = "1s"
[server.admission]
max_held_bytes = 17179869184
[admin]
listen = "127.0.0.1:18291"
[upstreams.api]
addresses = ["127.0.0.1:18280"]
[[routes]]
path = "/v2/batch"
dialect = "envelope"
base_path = ""
max_items = {ITEMS}
concurrency = 20
max_item_response_bytes = 1048576
max_reply_bytes = 67108864
stream = ["ndjson"]
"""
    )
    return path


def client(streamed, errors):
    accept = "application/x-ndjson" if streamed else "application/json"
    out = subprocess.run(
        ["curl", "-sS", "-N", "-o", os.path.join(WORK, f"reply-{threading.get_ident()}"),
         "-w", "%{http_code}", "-H", "Content-Type: application/json", "-H", f"Accept: {accept}",
         "--data-binary", BATCH, "http://127.0.0.1:18290/v2/batch"],
        capture_output=True, text=True,
    )
    body = open(os.path.join(WORK, f"reply-{threading.get_ident()}")).read()
    if streamed:
        ok = sum(json.loads(l).get("status") == 200 for l in body.splitlines() if l) == ITEMS
    else:
        ok = sum(r["status"] == 200 for r in json.loads(body).get("responses", [])) == ITEMS
    if out.stdout != "200" or not ok:
        if not errors:
            print("failed reply:", out.stdout, body[:300], file=sys.stderr)
        errors.append(out.stdout)


def run(streamed):
    gate = harness.start_gate(BINARY, gate_config(), 18291)
    errors = []
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(streamed, errors)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    status = open(f"/proc/{gate.pid}/status").read()
    hwm = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
    cpu = harness.cpu_seconds(gate.pid)
    harness.stop_gate(gate)
    name = "streamed" if streamed else "buffered"
    print(f"{name:8} peak RSS {hwm / 1024:8.1f} MiB  CPU {cpu:6.2f} s "
          f"({cpu / (CLIENTS * ITEMS) * 1e6:6.1f} us/item)  {elapsed:5.1f} s  errors {len(errors)}")
    return hwm / 1024, cpu / (CLIENTS * ITEMS) * 1e6


def main():
    conf = nginx()
    try:
        results = {True: [], False: []}
        for _ in range(RUNS):
            for streamed in (True, False):
                results[streamed].append(run(streamed))
        for streamed, name in ((True, "streamed"), (False, "buffered")):
            rss = statistics.median(r for r, _ in results[streamed])
            cpu = statistics.median(c for _, c in results[streamed])
            print(f"median {name:8} peak RSS {rss:8.1f} MiB  CPU {cpu:6.1f} us/item")
    finally:
        harness.stop_nginx(conf)


if __name__ == "__main__":
    main()
