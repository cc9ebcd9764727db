"""What the Python benchmarks share: a work directory nginx can read, nginx started and
stopped, a batchgate started from a shipped example config on the benchmark's ports, and a
process's CPU time. Imported by the scripts next to it (run from the repository root)."""

import http.client
import os
import subprocess
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")


def work_dir():
    """A fresh directory for configs and pid files, readable by nginx's workers."""
    work = tempfile.mkdtemp()
    os.chmod(work, 0o755)  # nginx's workers run as another user
    return work


def start_nginx(work, servers, workers=1):
    """nginx with `servers` (server blocks) inside its http block; returns its config path."""
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(
        f"""worker_processes {workers}; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000;
{servers} }}"""
    )
    subprocess.run(["nginx", "-c", conf], check=True)
    return conf


def stop_nginx(conf):
    subprocess.run(["nginx", "-c", conf, "-s", "stop"], check=False)


def example_config(work, name, listen, admin, upstream, server_extra="", text=None):
    """conf/examples/NAME (or `text`) on 127.0.0.1 ports: proxy `listen`, admin `admin`, the
    one upstream at `upstream`; `server_extra` lines join [server]. Returns the file's path."""
    text = text if text is not None else open(f"conf/examples/{name}").read()
    server = f'listen = ["127.0.0.1:{listen}"]\npid_file = "{work}/pid"\nupgrade_sock = "{work}/sock"\nlog_level = "warn"'
    if server_extra:
        server += "\n" + server_extra
    text = text.replace('listen = ["0.0.0.0:8080"]', server)
    text = text.replace('listen = "127.0.0.1:9091"', f'listen = "127.0.0.1:{admin}"')
    text = text.replace('addresses = ["127.0.0.1:9000"]', f'addresses = ["127.0.0.1:{upstream}"]')
    path = os.path.join(work, "gate.toml")
    open(path, "w").write(text)
    return path


def start_gate(binary, config, admin):
    """batchgate on `config`, once its admin port answers."""
    # A session of its own, as nginx's daemon has (and a service has): with the kernel's
    # autogroup scheduling on, a process sharing the client's session shares its CPU share.
    process = subprocess.Popen([binary, "run", "-c", config], stderr=subprocess.DEVNULL,
                               start_new_session=True)
    for _ in range(100):
        try:
            http.client.HTTPConnection("127.0.0.1", admin, timeout=1).request("GET", "/healthz")
            break
        except OSError:
            time.sleep(0.1)
    return process


def stop_gate(process):
    process.terminate()
    process.wait(timeout=20)


def cpu_seconds(pid):
    """A process's CPU time so far (user + system)."""
    return sum(cpu_split(pid))


def cpu_split(pid):
    """A process's CPU time so far: (user, system) seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def nginx_family(master):
    """An nginx master's pid and its workers'."""
    pids = [master]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                pids.append(int(pid))
    return pids
