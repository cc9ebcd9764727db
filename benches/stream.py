#!/usr/bin/env python3
"""Streamed against buffered batch replies, same run, alternating (issue 28, item 6).

Starts `batchgate demo` (the reference config with the envelope route's concurrency at 100, so
all 100 items run at once; the demo API answers after a body's `delay_ms`),
then ROUNDS times, alternating: one 100-item envelope batch (99 items of 10 ms, one of 2 s)
streamed as JSON Lines, read line by line, and the same batch buffered; and one direct 10 ms
call to the demo API. Prints, as medians over the rounds (with min-max):

  direct     one 10 ms call straight to the demo API
  first      streamed: the first item record
  fast99     streamed: the 99th fast record
  buffered   the buffered reply, whole

Usage: python3 benches/stream.py [BINARY] (default target/release/batchgate); ROUNDS=10.
Needs ports 8080, 9000 and 9091 free. Everything it starts is stopped.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "10"))
ITEM = {"method": "POST", "url": "/file/get"}
BATCH = json.dumps(
    {
        "resource": "file",
        "requests": [dict(ITEM, id="slow", body={"delay_ms": 2000})]
        + [dict(ITEM, id=str(i), body={"delay_ms": 10}) for i in range(99)],
    }
)


def post(port, path, body, accept):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Accept": accept}
    started = time.monotonic()
    conn.request("POST", path, body=body, headers=headers)
    return conn, conn.getresponse(), started


def streamed():
    conn, resp, started = post(8080, "/v2/batch", BATCH, "application/x-ndjson")
    first = fast99 = None
    fast = 0
    for line in resp:
        record = json.loads(line)
        if first is None and "id" in record:
            first = time.monotonic() - started
        if record.get("id") not in (None, "slow"):
            fast += 1
            if fast == 99:
                fast99 = time.monotonic() - started
    conn.close()
    return first, fast99


def buffered():
    conn, resp, started = post(8080, "/v2/batch", BATCH, "application/json")
    reply = json.loads(resp.read())
    assert len(reply["responses"]) == 100
    conn.close()
    return time.monotonic() - started


def direct():
    conn, resp, started = post(9000, "/v2/file/get", json.dumps({"delay_ms": 10}), "*/*")
    resp.read()
    conn.close()
    return time.monotonic() - started


def summary(name, values):
    ms = sorted(v * 1000 for v in values)
    print(f"{name:9} median {statistics.median(ms):8.1f} ms   ({ms[0]:.1f}-{ms[-1]:.1f})")


def config():
    text = open("conf/batchgate.toml").read()
    assert "concurrency = 16" in text
    path = os.path.join(tempfile.mkdtemp(), "batchgate.toml")
    open(path, "w").write(text.replace("concurrency = 16", "concurrency = 100", 1))
    return path


def main():
    gate = subprocess.Popen(
        [BINARY, "demo", "-c", config()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                direct()
                break
            except OSError:
                time.sleep(0.1)
        results = {"direct": [], "first": [], "fast99": [], "buffered": []}
        for _ in range(ROUNDS):
            results["direct"].append(direct())
            first, fast99 = streamed()
            results["first"].append(first)
            results["fast99"].append(fast99)
            results["buffered"].append(buffered())
        for name, values in results.items():
            summary(name, values)
    finally:
        gate.terminate()
        gate.wait(timeout=10)


if __name__ == "__main__":
    main()
