#!/usr/bin/env python3
"""Single JSON-RPC calls gathered into upstream arrays (issue 32, item 6).

The upstream is nginx with lua: every HTTP request costs 1 ms (`ngx.sleep(0.001)`), each call
in it almost nothing; it answers a single call or an array of calls (by id). An asyncio client
offers RATE single calls per second (open loop, over CONNECTIONS keep-alive connections) for
SECONDS, in three modes, ROUNDS times alternating:

  gathered     conf/examples/upstream-batching.toml (max_wait 2 ms, or MAX_WAIT): POST /rpc
  one by one   the same route without [routes.upstream_batching]
  passthrough  the same calls to a path no route serves: batchgate's plain proxy
  direct       the client straight to the upstream (the latency every mode adds to)

Reported per mode: upstream HTTP requests per call, call latency p50 and p99, batchgate's CPU
(utime + stime) per call. Medians over rounds, with min-max.

Usage: python3 benches/upstream_batching.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18530-18531 and 18540-18541.
"""

import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import time

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
RATE = int(os.environ.get("RATE", "2000"))
SECONDS = float(os.environ.get("SECONDS", "5"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
MAX_WAIT = os.environ.get("MAX_WAIT", "2ms")
UPSTREAM, STATUS, GATE, ADMIN = 18530, 18531, 18540, 18541
WORK = harness.work_dir()

LUA = r"""
local cjson = require "cjson"
ngx.req.read_body()
ngx.sleep(0.001)
local body = cjson.decode(ngx.req.get_body_data())
local function answer(call) return {jsonrpc = "2.0", id = call.id, result = call.method} end
local text
if body[1] ~= nil then
  local out = {}
  for i, call in ipairs(body) do out[i] = answer(call) end
  text = cjson.encode(out)
else
  text = cjson.encode(answer(body))
end
ngx.header["Content-Type"] = "application/json"
ngx.header["Content-Length"] = #text
ngx.print(text)
"""


def nginx():
    open(os.path.join(WORK, "rpc.lua"), "w").write(LUA)
    conf = os.path.join(WORK, "nginx.conf")
    open(conf, "w").write(f"""load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1; error_log {WORK}/nginx.err; pid {WORK}/nginx.pid;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UPSTREAM}; location / {{ content_by_lua_file {WORK}/rpc.lua; }} }}
  server {{ listen 127.0.0.1:{STATUS}; location / {{ stub_status; }} }} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    return conf


def upstream_requests():
    conn = http.client.HTTPConnection("127.0.0.1", STATUS, timeout=5)
    conn.request("GET", "/")
    return int(conn.getresponse().read().decode().splitlines()[2].split()[2])


def gate(gathered):
    text = open("conf/examples/upstream-batching.toml").read()
    if not gathered:
        text = text[: text.index("[routes.upstream_batching]")]
    text = text.replace('max_wait = "2ms"', f'max_wait = "{MAX_WAIT}"')
    config = harness.example_config(WORK, None, GATE, ADMIN, UPSTREAM, "max_in_flight = 4096", text=text)
    return harness.start_gate(BINARY, config, ADMIN)


async def offer(port, path):
    """RATE calls per second for SECONDS over CONNECTIONS connections; each call's latency."""
    latencies = []
    per_connection = RATE / CONNECTIONS
    total = int(RATE * SECONDS / CONNECTIONS)
    started = time.perf_counter()

    async def connection(c):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(total):
            due = started + (n + c / CONNECTIONS) / per_connection
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            body = f'{{"jsonrpc":"2.0","method":"m{c}","params":[],"id":{n}}}'.encode()
            sent = time.perf_counter()
            writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
        writer.close()

    await asyncio.gather(*(connection(c) for c in range(CONNECTIONS)))
    return latencies


def run(mode):
    process = None
    if mode in ("gathered", "one by one", "passthrough"):
        process = gate(mode == "gathered")
        port, path = GATE, "/jsonrpc2" if mode == "passthrough" else "/rpc"
    else:
        port, path = UPSTREAM, "/jsonrpc2"
    asyncio.run(warm(port, path))
    before_requests = upstream_requests()
    before_cpu = harness.cpu_seconds(process.pid) if process else 0.0
    latencies = asyncio.run(offer(port, path))
    calls = len(latencies)
    requests = upstream_requests() - before_requests - 1
    cpu = (harness.cpu_seconds(process.pid) - before_cpu) if process else 0.0
    if process:
        harness.stop_gate(process)
    latencies.sort()
    return {"requests": requests / calls, "p50": latencies[calls // 2],
            "p99": latencies[int(calls * 0.99)], "cpu": cpu / calls}


async def warm(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"jsonrpc":"2.0","method":"warm","id":1}'
    for _ in range(50):
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


def main():
    conf = nginx()
    modes = ["direct", "gathered", "one by one", "passthrough"]
    try:
        figures = {mode: [] for mode in modes}
        for _ in range(ROUNDS):
            for mode in modes:
                figures[mode].append(run(mode))
    finally:
        harness.stop_nginx(conf)
    print(f"{RATE} single calls/s for {SECONDS:.0f} s over {CONNECTIONS} connections, upstream 1 ms per "
          f"HTTP request, max_wait {MAX_WAIT}; {ROUNDS} rounds, median (min-max)")
    print(f"{'mode':12} {'upstream req/call':>20} {'p50 ms':>20} {'p99 ms':>20} {'CPU us/call':>20}")
    for mode, rounds in figures.items():
        def shown(key, scale, digits=2):
            values = [r[key] * scale for r in rounds]
            return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
        print(f"{mode:12} {shown('requests', 1, 3):>20} {shown('p50', 1e3):>20} {shown('p99', 1e3):>20} "
              f"{shown('cpu', 1e6, 1):>20}")


if __name__ == "__main__":
    main()
