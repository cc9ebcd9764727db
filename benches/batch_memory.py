#!/usr/bin/env python3
"""Memory of 1,000 simultaneous 100-item batches, batchgate beside its OpenResty peer (issue 34,
item 4): the JSON-RPC dialect and peer of benches/jsonrpc_peer.py, with an upstream that
answers each call after DELAY_MS, so that every batch is in flight at once.

N clients each open a connection and send one 100-call JSON-RPC array at the same moment;
every answer is checked (100 results); batches without one are counted. Reported per contender: peak RSS over the run
(batchgate: VmHWM; nginx: the sum of its master's and workers' VmHWM, an upper bound of their
joint peak), the RSS before the load, the growth per batch, and the time until the last answer.
batchgate runs conf/examples/limelight.toml with max_items 100, concurrency 100 and
max_in_flight 4096 (its default is 1024), a queue that admits all N batches of the one client
address and PIPELINE_DEPTH (16; 1: none); the peer is 2
workers with upstream keep-alive 1024. Contenders run ROUNDS times, alternating.

Usage: python3 benches/batch_memory.py [BINARY]. Needs nginx-light, libnginx-mod-http-lua,
lua-cjson; ports 18570-18574; raises its open-files limit to the hard limit.
"""

import asyncio
import os
import resource
import statistics
import sys
import time

import harness
import jsonrpc_peer
import peer_compare

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
UPSTREAM, GATE, ADMIN, PEER = 18570, 18571, 18572, 18573
N = int(os.environ.get("N", "1000"))
DELAY_MS = int(os.environ.get("DELAY_MS", "50"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WORK = harness.work_dir()

# The JSON-RPC peer benchmark's upstream (here with a delay), peer, request and check.
UPSTREAM_SERVER = jsonrpc_peer.upstream_server(UPSTREAM, DELAY_MS)
PEER_SERVER = jsonrpc_peer.peer_server(PEER, UPSTREAM)
request, check = jsonrpc_peer.request, jsonrpc_peer.check


def status_kib(pids, field):
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


async def burst(port, raw):
    """N connections, each sending one batch once all are open: seconds to the last answer,
    and how many batches got no complete answer (reset, or an error in place of results)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(N)]
    started = time.perf_counter()
    for _, writer in conns:
        writer.write(raw)

    async def one(reader, writer):
        try:
            check(await peer_compare.read_answer(reader))
            return True
        except (OSError, AssertionError, asyncio.IncompleteReadError, ValueError):
            return False
        finally:
            writer.close()

    answered = await asyncio.gather(*(one(r, w) for r, w in conns))
    return time.perf_counter() - started, answered.count(False)


def measure(port, raw, pids):
    before = status_kib(pids(), "VmRSS")
    seconds, failed = asyncio.run(burst(port, raw))
    peak = status_kib(pids(), "VmHWM")
    return {"before": before, "peak": peak, "seconds": seconds, "failed": failed}


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    config = peer_compare.gate_config(WORK, "limelight.toml", (GATE, ADMIN, UPSTREAM),
                                      [("max_items = 3", "max_items = 100"), ("concurrency = 3", "concurrency = 100")])
    # One client address sends all N batches: the queue admits them all (its defaults would
    # hold one client to a share of it, as they should).
    with open(config, "a") as file:
        file.write('\n[server.admission]\nmax_queued_items = 200000\nqueue_budget = "60s"\n')
    upstream_conf, _ = peer_compare.start_nginx(WORK, "upstream", 1, UPSTREAM_SERVER)
    results = {"batchgate": [], "lua peer": []}
    try:
        for _ in range(ROUNDS):
            process = harness.start_gate(BINARY, config, ADMIN)
            results["batchgate"].append(measure(GATE, request("/jsonrpc2"), lambda: [process.pid]))
            harness.stop_gate(process)
            # A fresh peer each round, so that its peak is this round's.
            peer_conf, master = peer_compare.start_nginx(WORK, "peer", peer_compare.WORKERS, PEER_SERVER)
            try:
                results["lua peer"].append(measure(PEER, request("/"), lambda: harness.nginx_family(master)))
            finally:
                harness.stop_nginx(peer_conf)
                time.sleep(0.5)
    finally:
        harness.stop_nginx(upstream_conf)
    print(f"{N} simultaneous 100-call JSON-RPC batches, {DELAY_MS} ms upstream, "
          f"pipeline_depth {peer_compare.PIPELINE_DEPTH}, {ROUNDS} rounds alternating")
    for name, runs in results.items():
        peak = statistics.median(r["peak"] for r in runs) / 1024
        before = statistics.median(r["before"] for r in runs) / 1024
        growth = statistics.median((r["peak"] - r["before"]) / N for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        failed = max(r["failed"] for r in runs)
        print(f"{name:>10}: peak RSS {peak:7.1f} MiB ({min(r['peak'] for r in runs) / 1024:.1f}-"
              f"{max(r['peak'] for r in runs) / 1024:.1f}), before {before:.1f} MiB, "
              f"{growth:.1f} KiB per batch, last answer after {seconds:.2f} s, "
              f"batches not answered: {failed} (most in a round)")


if __name__ == "__main__":
    main()
