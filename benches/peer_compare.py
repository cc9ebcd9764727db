"""What the dialect-against-OpenResty benchmarks share (benches/*_peer.py, issue 34): a lua
nginx started as the upstream and another as the peer, batchgate on an example config, a client
keeping requests of ITEMS items in flight, and the alternating rounds with their report.

A script gives its request (head and body), the check of a first answer, the two nginx server
blocks and the batchgate config; `compare` does the rest. Server CPU is utime + stime (nginx:
master and workers), per item, median with min-max; the ratio is batchgate's over the peer's,
per round. ROUNDS, SECONDS, CLIENTS, NGINX_WORKERS and PIPELINE_DEPTH (1: no pipelining)
tune it."""

import asyncio
import os
import statistics
import subprocess
import time

import harness

ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECONDS = float(os.environ.get("SECONDS", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
WORKERS = int(os.environ.get("NGINX_WORKERS", "2"))
PIPELINE_DEPTH = int(os.environ.get("PIPELINE_DEPTH", "16"))
ITEMS = 100
MODULES = """load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"""


def start_nginx(work, name, workers, server):
    """nginx with lua and `server` (its server blocks); (config path, master pid)."""
    conf = os.path.join(work, f"{name}.conf")
    open(conf, "w").write(f"""{MODULES}
worker_processes {workers}; error_log {work}/{name}.err; pid {work}/{name}.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 100000000; {server} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    time.sleep(0.3)
    return conf, int(open(f"{work}/{name}.pid").read())


def family_cpu(master):
    """CPU seconds of an nginx master and its workers: (user, system)."""
    splits = [harness.cpu_split(pid) for pid in harness.nginx_family(master)]
    return sum(u for u, _ in splits), sum(s for _, s in splits)


def gate_config(work, example, ports, replace=()):
    """conf/examples/EXAMPLE on `ports` (gate, admin, upstream), with `replace` pairs applied,
    the upstream's `pipeline_depth` set to PIPELINE_DEPTH (the lua upstream is nginx, which
    answers pipelined requests) and an admin listener added if the example has none."""
    gate, admin, upstream = ports
    text = open(f"conf/examples/{example}").read()
    for old, new in replace:
        text = text.replace(old, new)
    address = 'addresses = ["127.0.0.1:9000"]'
    text = text.replace(address, f"{address}\npipeline_depth = {PIPELINE_DEPTH}", 1)
    if "\n[admin]\n" not in text:
        text += '\n[admin]\nlisten = "127.0.0.1:9091"\n'
    return harness.example_config(work, None, gate, admin, upstream, "max_in_flight = 4096\nthreads = 2", text=text)


async def read_answer(reader):
    """One HTTP/1.1 response body (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if b"content-length:" in head:
        return await reader.readexactly(int(head.split(b"content-length:")[1].split(b"\r\n")[0]))
    answer = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return answer
        answer += chunk[:-2]


async def load(port, request, check, seconds):
    """CLIENTS connections sending `request` for `seconds`; requests answered. The first
    answer of each connection passes `check`."""
    done = [0]
    end = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = True
        while time.perf_counter() < end:
            writer.write(request)
            answer = await read_answer(reader)
            if first:
                check(answer)
                first = False
            done[0] += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done[0]


def measure(port, request, check, cpu):
    """`cpu()` gives (user, system) seconds."""
    asyncio.run(load(port, request, check, 0.5))
    before = cpu()
    started = time.perf_counter()
    answered = asyncio.run(load(port, request, check, SECONDS))
    elapsed = time.perf_counter() - started
    after = cpu()
    items = answered * ITEMS
    user = (after[0] - before[0]) / items * 1e6
    system = (after[1] - before[1]) / items * 1e6
    return {"cpu_us": user + system, "user_us": user, "system_us": system, "items_s": items / elapsed}


def compare(title, unit, binary, config, admin, upstream_server, peer_server, gate_port, peer_port,
            gate_request, peer_request, check):
    """Alternates batchgate (`binary` on `config`) and the lua peer ROUNDS times and prints."""
    work = os.path.dirname(config)
    upstream_conf, _ = start_nginx(work, "upstream", 1, upstream_server)
    peer_conf, peer_master = start_nginx(work, "peer", WORKERS, peer_server)
    results = {"batchgate": [], "lua peer": []}
    try:
        for _ in range(ROUNDS):
            process = harness.start_gate(binary, config, admin)
            results["batchgate"].append(
                measure(gate_port, gate_request, check, lambda: harness.cpu_split(process.pid)))
            harness.stop_gate(process)
            results["lua peer"].append(measure(peer_port, peer_request, check, lambda: family_cpu(peer_master)))
    finally:
        harness.stop_nginx(peer_conf)
        harness.stop_nginx(upstream_conf)
    print(f"{title}, {CLIENTS} clients x {ITEMS}-{unit} requests, 0 ms upstream, pipeline_depth {PIPELINE_DEPTH}, "
          f"{SECONDS:.0f} s x {ROUNDS} rounds alternating")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        rate = [r["items_s"] for r in runs]
        user = statistics.median(r["user_us"] for r in runs)
        system = statistics.median(r["system_us"] for r in runs)
        print(f"{name:>10}: {statistics.median(cpu):6.2f} us CPU/{unit} ({min(cpu):.2f}-{max(cpu):.2f}; "
              f"user {user:.2f}, system {system:.2f}), {statistics.median(rate):8.0f} {unit}s/s")
    ratios = [b["cpu_us"] / p["cpu_us"] for b, p in zip(results["batchgate"], results["lua peer"])]
    print(f"batchgate / lua peer: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
