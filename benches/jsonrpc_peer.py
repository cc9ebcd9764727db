#!/usr/bin/env python3
"""The JSON-RPC dialect beside its OpenResty peer (issue 34, item 2; the first of the three).

The peer is written the way benches/sidebyside.rs writes the envelope one: nginx + lua decodes
the JSON-RPC array, `ngx.location.capture_multi`s every call as its own POST over upstream
keep-alive (all at once), decodes each answer and encodes the array reply. batchgate runs
conf/examples/limelight.toml's route with max_items 100 and concurrency 100. The upstream is a
separate nginx (1 worker, lua) answering each call with its own id. CLIENTS clients keep
100-call arrays in flight for SECONDS; contenders alternate ROUNDS times. Reported: server CPU
(utime + stime; nginx: master and workers) per call, median with min-max, and the ratio.

Usage: python3 benches/jsonrpc_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18560-18564.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import harness

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = float(os.environ.get("SECONDS", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
WORKERS = int(os.environ.get("NGINX_WORKERS", "2"))
UPSTREAM, GATE, ADMIN, PEER = 18560, 18561, 18562, 18563
WORK = harness.work_dir()
MODULES = """load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"""


def nginx(name, workers, server):
    conf = os.path.join(WORK, f"{name}.conf")
    open(conf, "w").write(f"""{MODULES}
worker_processes {workers}; error_log {WORK}/{name}.err; pid {WORK}/{name}.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 100000000; {server} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    time.sleep(0.3)
    return conf, int(open(f"{WORK}/{name}.pid").read())


UPSTREAM_SERVER = f"""server {{ listen 127.0.0.1:{UPSTREAM} backlog=4096; location / {{ content_by_lua_block {{
  local cjson = require "cjson.safe"
  ngx.req.read_body()
  local call = cjson.decode(ngx.req.get_body_data() or "") or {{}}
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({{ jsonrpc = "2.0", id = call.id, result = {{ file_id = "9520943DC264", drive_id = "1" }} }}))
}} }} }}"""

PEER_SERVER = f"""upstream api {{ server 127.0.0.1:{UPSTREAM}; keepalive 1024; keepalive_requests 100000000; }}
server {{ listen 127.0.0.1:{PEER} backlog=4096;
  location = /_call {{ internal; proxy_pass http://api/jsonrpc2; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Content-Type application/json; }}
  location / {{ content_by_lua_block {{
    local cjson = require "cjson.safe"
    ngx.req.read_body()
    local calls = cjson.decode(ngx.req.get_body_data() or "")
    if type(calls) ~= "table" or #calls == 0 then
      ngx.print('{{"jsonrpc":"2.0","error":{{"code":-32600,"message":"Invalid Request"}},"id":null}}')
      return
    end
    local requests = {{}}
    for i, call in ipairs(calls) do
      requests[i] = {{ "/_call", {{ method = ngx.HTTP_POST, body = cjson.encode(call) }} }}
    end
    local answers = {{ ngx.location.capture_multi(requests) }}
    local out = {{}}
    for i, answer in ipairs(answers) do
      out[i] = cjson.decode(answer.body) or {{ jsonrpc = "2.0", id = calls[i].id, error = {{ code = -32603, message = "Internal error" }} }}
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(out))
  }} }} }}"""


def family_cpu(master):
    """CPU seconds of an nginx master and its workers."""
    total = harness.cpu_seconds(master)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                total += harness.cpu_seconds(int(pid))
    return total


def gate():
    text = open("conf/examples/limelight.toml").read()
    text = text.replace("max_items = 3", "max_items = 100").replace("concurrency = 3", "concurrency = 100")
    text += '\n[admin]\nlisten = "127.0.0.1:9091"\n'
    config = harness.example_config(WORK, None, GATE, ADMIN, UPSTREAM, "max_in_flight = 4096\nthreads = 2", text=text)
    return harness.start_gate(BINARY, config, ADMIN)


def body():
    calls = [{"jsonrpc": "2.0", "method": "getFile", "params": {"drive_id": "1"}, "id": i} for i in range(100)]
    return json.dumps(calls).encode()


async def load(port, path, seconds):
    data = body()
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    done = [0]
    end = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            writer.write(head + data)
            reply = await reader.readuntil(b"\r\n\r\n")
            lower = reply.lower()
            if b"content-length:" in lower:
                n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(n)
            else:  # chunked
                answer = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    answer += chunk[:-2]
            if done[0] == 0:
                answers = json.loads(answer)
                assert len(answers) == 100 and all("result" in a for a in answers), answer[:300]
            done[0] += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done[0]


def measure(name, port, path, cpu):
    asyncio.run(load(port, path, 0.5))
    before = cpu()
    started = time.perf_counter()
    batches = asyncio.run(load(port, path, SECONDS))
    elapsed = time.perf_counter() - started
    return {"cpu_us": (cpu() - before) / (batches * 100) * 1e6, "calls_s": batches * 100 / elapsed}


def main():
    upstream_conf, _ = nginx("upstream", 1, UPSTREAM_SERVER)
    peer_conf, peer_master = nginx("peer", WORKERS, PEER_SERVER)
    results = {"batchgate": [], "lua peer": []}
    try:
        for _ in range(ROUNDS):
            process = gate()
            results["batchgate"].append(measure("batchgate", GATE, "/jsonrpc2", lambda: harness.cpu_seconds(process.pid)))
            harness.stop_gate(process)
            results["lua peer"].append(measure("lua peer", PEER, "/", lambda: family_cpu(peer_master)))
    finally:
        harness.stop_nginx(peer_conf)
        harness.stop_nginx(upstream_conf)
    print(f"JSON-RPC, {CLIENTS} clients x 100-call arrays, 0 ms upstream, {SECONDS:.0f} s x {ROUNDS} rounds alternating")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        rate = [r["calls_s"] for r in runs]
        print(f"{name:>10}: {statistics.median(cpu):6.2f} us CPU/call ({min(cpu):.2f}-{max(cpu):.2f}), "
              f"{statistics.median(rate):8.0f} calls/s")
    ratios = [b["cpu_us"] / p["cpu_us"] for b, p in zip(results["batchgate"], results["lua peer"])]
    print(f"batchgate / lua peer: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
