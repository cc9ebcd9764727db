#!/usr/bin/env python3
"""The fan-out dialect beside its OpenResty peer (issue 34, item 2).

The peer is written the way benches/sidebyside.rs writes the envelope one: nginx + lua reads
the id list, `ngx.location.capture_multi`s one GET per id over upstream keep-alive (all at
once), decodes each answer and encodes the list reply, as conf/examples/huawei.toml's route
does (Huawei `access-urls`: `?group_id=G&accessory_ids=1,2,...`, `X-Auth-Token` required,
`{"accessory_urls":[{"accessory_url","accessory_id"}]}`). batchgate runs that route with
concurrency 100. The upstream is a separate nginx (1 worker) answering each id. CLIENTS clients
keep 100-id calls in flight for SECONDS; contenders alternate ROUNDS times. Reported: server CPU
(utime + stime; nginx: master and workers) per id, median with min-max, and the ratio.

Usage: python3 benches/fanout_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18570-18574.
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
UPSTREAM, GATE, ADMIN, PEER = 18570, 18571, 18572, 18573
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
  location ~ ^/v2/servicerequest/accessorys/([^/]+)/access-url$ {{ default_type application/json;
    return 200 '{{"url":"https://files.example/$arg_group_id/$1","expires":3600}}'; }} }}"""

PEER_SERVER = f"""upstream api {{ server 127.0.0.1:{UPSTREAM}; keepalive 1024; keepalive_requests 100000000; }}
server {{ listen 127.0.0.1:{PEER} backlog=4096;
  location /_call/ {{ internal; proxy_pass http://api/; proxy_http_version 1.1;
    proxy_set_header Connection ""; }}
  location / {{ content_by_lua_block {{
    local cjson = require "cjson.safe"
    local args = ngx.req.get_uri_args()
    local group, ids = args.group_id, args.accessory_ids
    if not ngx.var.http_x_auth_token or type(group) ~= "string" or type(ids) ~= "string" then
      ngx.status = 400
      ngx.print('{{"error_code":"MissingParameter","error_msg":"group_id, accessory_ids and X-Auth-Token are required"}}')
      return
    end
    local list, requests = {{}}, {{}}
    for id in string.gmatch(ids, "[^,]+") do
      list[#list + 1] = id
      requests[#requests + 1] = {{ "/_call/v2/servicerequest/accessorys/" .. ngx.escape_uri(id) .. "/access-url", {{ args = {{ group_id = group }} }} }}
    end
    local answers = {{ ngx.location.capture_multi(requests) }}
    local out = {{}}
    for i, answer in ipairs(answers) do
      local part = cjson.decode(answer.body) or {{}}
      out[i] = {{ accessory_url = part.url, accessory_id = list[i] }}
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode({{ accessory_urls = out }}))
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
    text = open("conf/examples/huawei.toml").read()
    text = text.replace("concurrency = 16", "concurrency = 100")
    text += '\n[admin]\nlisten = "127.0.0.1:9091"\n'
    config = harness.example_config(WORK, None, GATE, ADMIN, UPSTREAM, "max_in_flight = 4096\nthreads = 2", text=text)
    return harness.start_gate(BINARY, config, ADMIN)


TARGET = "/v2/servicerequest/accessorys/access-urls?group_id=7&accessory_ids=" + ",".join(
    str(1000 + i) for i in range(100))


async def load(port, path, seconds):
    data = b""
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: t\r\n\r\n".encode()
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
                answers = json.loads(answer)["accessory_urls"]
                assert len(answers) == 100 and all(a["accessory_url"] for a in answers), answer[:300]
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
    print(f"fan-out, {CLIENTS} clients x 100-id calls, 0 ms upstream, {SECONDS:.0f} s x {ROUNDS} rounds alternating")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        rate = [r["calls_s"] for r in runs]
        print(f"{name:>10}: {statistics.median(cpu):6.2f} us CPU/id ({min(cpu):.2f}-{max(cpu):.2f}), "
              f"{statistics.median(rate):8.0f} ids/s")
    ratios = [b["cpu_us"] / p["cpu_us"] for b, p in zip(results["batchgate"], results["lua peer"])]
    print(f"batchgate / lua peer: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
