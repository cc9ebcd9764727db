"""The scale-out proof (issue 31): nginx load-balancing three batchgate replicas that share one
per-client quota through a real Redis, each replica in its own network namespace (loopback
ports when namespaces are not allowed). Under load at twice the quota, one replica is killed
(SIGKILL), one drained (SIGTERM) and one reloaded (SIGHUP). It reports every batch's fate (an
answer from batchgate, nginx's 502 for batches that were on the killed replica, or no answer
at all), and the items admitted per client against the quota, as a whole and per phase.

Usage: python3 benches/multi_replica.py [BINARY] (default target/release/batchgate); as root
for namespaces; LEASE=N runs the replicas with `lease = N`. Needs nginx and redis-server (Debian packages). Runs about 40 s.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
REPLICAS = 3
UPSTREAM, REDIS, LB = 18601, 18602, 18603
RATE, BURST = 100, 100  # items per second per client, the quota's burst
CLIENTS = 4  # distinct X-Api-Key values
ITEMS = 10  # items per batch
OFFERED = 2.0  # each client offers OFFERED x RATE items per second
KILL_AT, DRAIN_AT, RELOAD_AT, END_AT = 8.0, 16.0, 24.0, 32.0
LEASE = os.environ.get("LEASE")  # items per lease (`lease`), none: every batch asks Redis


def namespaces_allowed():
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = subprocess.run(["ip", "netns", "add", "bgprobe"], capture_output=True)
    if probe.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", "bgprobe"], check=False)
    return True


class Replica:
    """One batchgate; in namespace bgN at 10.77.N.2 (host side 10.77.N.1), or on loopback."""

    def __init__(self, n, work, isolated):
        self.n, self.isolated = n, isolated
        self.work = os.path.join(work, f"r{n}")
        os.makedirs(self.work)
        self.host = f"10.77.{n}.1" if isolated else "127.0.0.1"
        self.addr = f"10.77.{n}.2" if isolated else "127.0.0.1"
        self.port = 8080 if isolated else 18610 + n
        self.admin = 9091 if isolated else 18620 + n
        self.process = None

    def up(self):
        if not self.isolated:
            return
        ns, veth = f"bg{self.n}", f"bgv{self.n}"
        run = lambda *a: subprocess.run(list(a), check=True)  # noqa: E731
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{self.host}/24", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.addr}/24", "dev", "eth0")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self):
        if self.isolated:
            subprocess.run(["ip", "netns", "del", f"bg{self.n}"], check=False)
            subprocess.run(["ip", "link", "del", f"bgv{self.n}"], capture_output=True)

    def config(self):
        text = open("conf/examples/quotas.toml").read()
        text = text.replace('listen = ["0.0.0.0:8080"]', f'listen = ["{self.addr}:{self.port}"]\n'
                            f'pid_file = "{self.work}/pid"\nupgrade_sock = "{self.work}/sock"\n'
                            'log_level = "warn"\ngrace_period = "1s"\n'
                            'graceful_shutdown_timeout = "5s"')
        text = text.replace('listen = "127.0.0.1:9091"', f'listen = "{self.addr}:{self.admin}"')
        text = text.replace('addresses = ["127.0.0.1:9000"]', f'addresses = ["{self.host}:{UPSTREAM}"]')
        text = text.replace("items_per_second = 200", f"items_per_second = {RATE}")
        text = text.replace("burst = 400", f"burst = {BURST}" + (f"\nlease = {LEASE}" if LEASE else ""))
        text = text.replace('"redis://127.0.0.1:6379/0"', f'"redis://{self.host}:{REDIS}/0"')
        path = os.path.join(self.work, "gate.toml")
        open(path, "w").write(text)
        return path

    def start(self):
        command = [os.path.abspath(BINARY), "run", "-c", self.config()]
        if self.isolated:
            command = ["ip", "netns", "exec", f"bg{self.n}"] + command
        self.process = subprocess.Popen(command, stderr=open(os.path.join(self.work, "log"), "w"))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                connection = http.client.HTTPConnection(self.addr, self.admin, timeout=1)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"replica {self.n} did not become ready; see {self.work}/log")

    def signal(self, sig):
        # Through `ip netns exec` the batchgate process is the child's own (exec, no fork).
        self.process.send_signal(sig)


def start_redis(work, replicas):
    binds = ["127.0.0.1"] + sorted({r.host for r in replicas} - {"127.0.0.1"})
    process = subprocess.Popen(["redis-server", "--port", str(REDIS), "--bind", *binds,
                                "--save", "", "--appendonly", "no", "--dir", work,
                                # Bound to loopback and the namespaces' host sides only.
                                "--protected-mode", "no"],
                               stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return process


def load(stop, results, lock):
    """CLIENTS clients, each offering OFFERED x RATE items per second in batches of ITEMS,
    through the load balancer; every batch's (time, client, status) is recorded."""
    body = json.dumps({"resource": "file", "requests": [
        {"id": str(i), "method": "POST", "url": "/file/get", "body": {"file_id": str(i)}}
        for i in range(ITEMS)]})
    interval = ITEMS / (RATE * OFFERED)
    started = time.time()

    def client(key):
        connection = None
        sent = 0
        while not stop.is_set():
            due = started + sent * interval
            time.sleep(max(0.0, due - time.time()))
            sent += 1
            at = time.time() - started
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", LB, timeout=10)
                connection.request("POST", "/v2/batch", body, {
                    "Content-Type": "application/json", "X-Api-Key": key})
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                status = "no answer"
                connection = None
            with lock:
                results.append((at, key, status))

    threads = [threading.Thread(target=client, args=(f"client-{c}",)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


def main():
    isolated = namespaces_allowed()
    work = harness.work_dir()
    replicas = [Replica(n, work, isolated) for n in range(1, REPLICAS + 1)]
    for r in replicas:
        r.down()
        r.up()
    servers = "\n".join(f"server {r.addr}:{r.port} max_fails=1 fail_timeout=2s;" for r in replicas)
    nginx = harness.start_nginx(work, f"""
upstream replicas {{ {servers} keepalive 32; }}
server {{ listen 127.0.0.1:{LB};
  location / {{ proxy_pass http://replicas; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_next_upstream error timeout; }} }}
server {{ listen {UPSTREAM} reuseport;
  location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }}""", workers=2)
    redis = start_redis(work, replicas)
    try:
        for r in replicas:
            r.start()
        stop, lock, results = threading.Event(), threading.Lock(), []
        threads = load(stop, results, lock)
        began = time.time()
        events = [(KILL_AT, replicas[0], signal.SIGKILL, "killed (SIGKILL)"),
                  (DRAIN_AT, replicas[1], signal.SIGTERM, "drained (SIGTERM)"),
                  (RELOAD_AT, replicas[2], signal.SIGHUP, "reloaded (SIGHUP)")]
        for at, replica, sig, what in events:
            time.sleep(max(0.0, began + at - time.time()))
            replica.signal(sig)
            print(f"{at:5.1f} s  replica {replica.n} {what}")
        time.sleep(max(0.0, began + END_AT - time.time()))
        stop.set()
        for t in threads:
            t.join()
        report(results, isolated)
    finally:
        for r in replicas:
            if r.process and r.process.poll() is None:
                r.process.kill()
                r.process.wait()
            r.down()
        redis.terminate()
        redis.wait()
        harness.stop_nginx(nginx)


def report(results, isolated):
    print(f"\nreplicas in {'network namespaces' if isolated else 'loopback ports'}; lease {LEASE or 'none'}; "
          f"{CLIENTS} clients each offering {OFFERED * RATE:.0f} items/s in batches of {ITEMS}; "
          f"quota {RATE} items/s per client, burst {BURST}")
    statuses = {}
    for _, _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    print("batches by answer:", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))
    phases = [("3 replicas", 0, KILL_AT), ("after the kill", KILL_AT, DRAIN_AT),
              ("after the drain", DRAIN_AT, RELOAD_AT), ("after the reload", RELOAD_AT, END_AT),
              ("whole run", 0, END_AT)]
    print(f"{'phase':18} {'admitted items/s per client (quota ' + str(RATE) + ')':>48}")
    for name, start, end in phases:
        per_client = []
        for c in range(CLIENTS):
            admitted = sum(ITEMS for at, key, status in results
                           if key == f"client-{c}" and status == 200 and start <= at < end)
            per_client.append(admitted / (end - start))
        shown = " ".join(f"{v:6.1f}" for v in per_client)
        print(f"{name:18} {shown:>48}   max {max(per_client) / RATE:.2f} x quota")
    # The whole run may admit the burst on top of the rate once.
    bound = (RATE * END_AT + BURST) / END_AT
    worst = max(sum(ITEMS for _, key, status in results if key == f"client-{c}" and status == 200)
                / END_AT for c in range(CLIENTS))
    print(f"worst client over the run: {worst:.1f} items/s; bound (rate + one burst): {bound:.1f}")


if __name__ == "__main__":
    main()
