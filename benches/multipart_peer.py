#!/usr/bin/env python3
"""The multipart dialect beside its OpenResty peer (issue 34, item 2).

The peer is written the way benches/sidebyside.rs writes the envelope one: nginx + lua splits
the `multipart/mixed` body at its boundary, reads each `application/http` part's request line,
`ngx.location.capture_multi`s every part over upstream keep-alive (all at once) and writes the
`multipart/mixed` reply (a `HTTP/1.1 STATUS` part per answer, `Content-ID: response-...`), as
conf/examples/google.toml's route does for Google's batch (`/batch/drive/v3`). batchgate runs
that route with concurrency 100. The upstream is a separate nginx (1 worker) answering JSON.
CLIENTS clients keep 100-part batches in flight for SECONDS; contenders alternate ROUNDS times.
Reported: server CPU (utime + stime; nginx: master and workers) per part, median with min-max,
and the ratio.

Usage: python3 benches/multipart_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18580-18584.
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
UPSTREAM, GATE, ADMIN, PEER = 18580, 18581, 18582, 18583
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


UPSTREAM_SERVER = f"""server {{ listen 127.0.0.1:{UPSTREAM} backlog=4096;
  location / {{ default_type application/json;
    return 200 '{{"kind":"drive#file","id":"1C2xzmV","name":"demo.txt","mimeType":"text/plain"}}'; }} }}"""

PEER_SERVER = f"""upstream api {{ server 127.0.0.1:{UPSTREAM}; keepalive 1024; keepalive_requests 100000000; }}
server {{ listen 127.0.0.1:{PEER} backlog=4096; client_body_buffer_size 1m; client_max_body_size 10m;
  location /_call/ {{ internal; proxy_pass http://api/; proxy_http_version 1.1;
    proxy_set_header Connection ""; }}
  location / {{ content_by_lua_block {{
    local boundary = string.match(ngx.var.http_content_type or "", "boundary=([^;]+)")
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not boundary or not body then
      ngx.status = 400
      ngx.print('{{"error":{{"code":400,"message":"multipart/mixed body with a boundary required"}}}}')
      return
    end
    local methods = {{ GET = ngx.HTTP_GET, POST = ngx.HTTP_POST, PUT = ngx.HTTP_PUT, DELETE = ngx.HTTP_DELETE, PATCH = ngx.HTTP_PATCH }}
    local requests, ids = {{}}, {{}}
    local delimiter = "--" .. boundary
    local from = 1
    while true do
      local s, e = string.find(body, delimiter, from, true)
      if not s then break end
      local next_s = string.find(body, delimiter, e + 1, true)
      if not next_s then break end
      local part = string.sub(body, e + 3, next_s - 3)
      local head_end = string.find(part, "\\r\\n\\r\\n", 1, true)
      if head_end then
        local id = string.match(string.sub(part, 1, head_end), "Content%-ID: <([^>]*)>") or ""
        local inner = string.sub(part, head_end + 4)
        local method, target = string.match(inner, "^(%u+) (%S+) HTTP/1%.1")
        if method then
          requests[#requests + 1] = {{ "/_call" .. target, {{ method = methods[method] or ngx.HTTP_GET }} }}
          ids[#ids + 1] = id
        end
      end
      from = next_s
    end
    local answers = {{ ngx.location.capture_multi(requests) }}
    local out = {{}}
    for i, answer in ipairs(answers) do
      out[#out + 1] = "--batch_peer\\r\\nContent-Type: application/http\\r\\nContent-ID: <response-" .. ids[i] ..
        ">\\r\\n\\r\\nHTTP/1.1 " .. answer.status .. "\\r\\nContent-Type: application/json\\r\\n\\r\\n" .. answer.body .. "\\r\\n"
    end
    out[#out + 1] = "--batch_peer--\\r\\n"
    ngx.header["Content-Type"] = "multipart/mixed; boundary=batch_peer"
    ngx.print(table.concat(out))
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
    text = open("conf/examples/google.toml").read()
    text = text.replace("concurrency = 16", "concurrency = 100")
    if "\n[admin]\n" not in text:
        text += '\n[admin]\nlisten = "127.0.0.1:9091"\n'
    config = harness.example_config(WORK, None, GATE, ADMIN, UPSTREAM, "max_in_flight = 4096\nthreads = 2", text=text)
    return harness.start_gate(BINARY, config, ADMIN)


TARGET = "/batch/drive/v3"
BODY = "".join(
    f"--bench\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\n"
    f"GET /drive/v3/files/{i}?fields=id,name HTTP/1.1\r\n\r\n"
    for i in range(100)
).encode() + b"--bench--\r\n"


async def load(port, path, seconds):
    data = BODY
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/mixed; boundary=bench\r\n"
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
                assert answer.count(b"HTTP/1.1 200") == 100, answer[:600]
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
            results["batchgate"].append(measure("batchgate", GATE, TARGET, lambda: harness.cpu_seconds(process.pid)))
            harness.stop_gate(process)
            results["lua peer"].append(measure("lua peer", PEER, TARGET, lambda: family_cpu(peer_master)))
    finally:
        harness.stop_nginx(peer_conf)
        harness.stop_nginx(upstream_conf)
    print(f"multipart, {CLIENTS} clients x 100-part batches, 0 ms upstream, {SECONDS:.0f} s x {ROUNDS} rounds alternating")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        rate = [r["calls_s"] for r in runs]
        print(f"{name:>10}: {statistics.median(cpu):6.2f} us CPU/part ({min(cpu):.2f}-{max(cpu):.2f}), "
              f"{statistics.median(rate):8.0f} parts/s")
    ratios = [b["cpu_us"] / p["cpu_us"] for b, p in zip(results["batchgate"], results["lua peer"])]
    print(f"batchgate / lua peer: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
