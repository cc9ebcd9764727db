#!/usr/bin/env python3
"""What OpenTelemetry traces cost (issue 33): batchgate's CPU per item with `[tracing]` off,
on with every trace sampled (spans exported to a collector), and on with none sampled.

The upstream is nginx answering a 57-byte JSON body; the collector is a Python OTLP/HTTP sink
(answers every export 200 and counts the bytes); a client keeps CLIENTS 100-item PDS batches
in flight for SECONDS. Modes alternate, ROUNDS times; reported per mode: batchgate CPU
(utime + stime) per item and batches per second, medians with min-max, and the spans the
collector received.

Usage: python3 benches/tracing.py [BINARY] (default target/release/batchgate); MODES picks
modes (default off,sampled,unsampled), and MODE@B runs MODE on the build BINARY_B.
Needs nginx (nginx-light); ports 18550-18553.
"""

import asyncio
import http.server
import json
import os
import statistics
import sys
import threading
import time

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = float(os.environ.get("SECONDS", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
UPSTREAM, GATE, ADMIN, COLLECTOR = 18550, 18551, 18552, 18553
WORK = harness.work_dir()
BODY = '{"domain_id":"1","drive_id":"1","file_id":"9520943DC264"}'
received = {"exports": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        received["exports"] += 1
        received["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def gate(mode):
    # `MODE@B`: the same mode on BINARY_B (an A/B of two builds).
    binary = os.environ["BINARY_B"] if mode.endswith("@B") else BINARY
    mode = mode.split("@")[0]
    text = open("conf/examples/tracing.toml").read()
    text = text.replace("http://127.0.0.1:4318", f"http://127.0.0.1:{COLLECTOR}")
    if mode == "off":
        text = text[: text.index("[tracing]")]
    elif mode == "unsampled":
        text = text.replace("sampling_ratio = 1.0", "sampling_ratio = 0.0")
    text = text.replace('name = "pds_batch"', 'name = "pds_batch"\nconcurrency = 100')
    config = harness.example_config(WORK, None, GATE, ADMIN, UPSTREAM, "max_in_flight = 4096", text=text)
    return harness.start_gate(binary, config, ADMIN)


def batch_body():
    items = [{"id": str(i), "method": "POST", "url": "/file/get", "body": {"drive_id": "1"}} for i in range(100)]
    return json.dumps({"resource": "file", "requests": items}).encode()


async def load(seconds):
    body = batch_body()
    head = (b"POST /v2/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    done = [0]
    end = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", GATE)
        while time.perf_counter() < end:
            writer.write(head + body)
            reply_head = await reader.readuntil(b"\r\n\r\n")
            length = int(reply_head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done[0] += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done[0]


def run(mode):
    process = gate(mode)
    asyncio.run(load(0.5))
    before_cpu = harness.cpu_seconds(process.pid)
    before_exports = received["exports"]
    started = time.perf_counter()
    batches = asyncio.run(load(SECONDS))
    elapsed = time.perf_counter() - started
    cpu = harness.cpu_seconds(process.pid) - before_cpu
    time.sleep(1.5)  # the last export
    exports = received["exports"] - before_exports
    harness.stop_gate(process)
    return {"cpu_us": cpu / (batches * 100) * 1e6, "batches_s": batches / elapsed, "exports": exports}


def main():
    conf = harness.start_nginx(WORK, f"""server {{ listen 127.0.0.1:{UPSTREAM};
  location / {{ default_type application/json; return 200 '{BODY}'; }} }}""")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", COLLECTOR), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    modes = os.environ.get("MODES", "off,sampled,unsampled").split(",")
    results = {m: [] for m in modes}
    try:
        for _ in range(ROUNDS):
            for mode in modes:
                results[mode].append(run(mode))
    finally:
        harness.stop_nginx(conf)
        server.shutdown()
    off = statistics.median(r["cpu_us"] for r in results[modes[0]])
    print(f"{CLIENTS} clients x 100-item batches, {SECONDS:.0f} s x {ROUNDS} rounds, alternating")
    for mode in modes:
        cpu = [r["cpu_us"] for r in results[mode]]
        rate = [r["batches_s"] for r in results[mode]]
        exports = sum(r["exports"] for r in results[mode])
        print(f"{mode:>10}: {statistics.median(cpu):6.2f} us CPU/item ({min(cpu):.2f}-{max(cpu):.2f}), "
              f"x{statistics.median(cpu) / off:.2f} of {modes[0]}, {statistics.median(rate):7.1f} batches/s, "
              f"{exports} exports")
    print(f"collector received {received['bytes']} bytes in {received['exports']} exports")


if __name__ == "__main__":
    main()
