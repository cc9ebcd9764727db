"""What an idle client connection costs, batchgate beside nginx (issue 34): RSS growth per
connection with N connections held open, for cleartext HTTP/1.1 and TLS HTTP/1.1 connections
that each made one pass-through request, and TLS HTTP/2 connections after the handshake and
the client's SETTINGS.

batchgate runs conf/examples/https.toml (2 threads); nginx (2 workers) proxies to the same
upstream with the same certificate, `http2 on` for its TLS port. RSS is VmRSS (nginx: master and
workers summed), read 1.5 s after the last connection opened.

Run: `python3 benches/idle_memory.py` (N=1000 by default; about half a minute)."""

import os
import socket
import ssl
import subprocess
import time

import harness

N = int(os.environ.get("N", "1000"))
PORTS = {"upstream": 18501, "nginx": 18502, "nginx_tls": 18503, "gate": 18504, "gate_tls": 18505, "admin": 18506}
CERT = os.path.abspath("conf/examples/tls/localhost.pem")
KEY = os.path.abspath("conf/examples/tls/localhost.key")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def open_connection(port, mode):
    raw = socket.create_connection(("127.0.0.1", port))
    if mode == "cleartext":
        raw.sendall(b"GET /v2/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.recv(65536)
        return raw
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
    tls = context.wrap_socket(raw, server_hostname="localhost")
    if mode == "h2":
        assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
        tls.sendall(H2_PREFACE + EMPTY_SETTINGS)
        tls.recv(65536)
    else:
        tls.sendall(b"GET /v2/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.recv(65536)
    return tls


def per_connection(port, mode, pids):
    warm = [open_connection(port, mode) for _ in range(20)]
    for conn in warm:
        conn.close()
    time.sleep(0.5)
    before = rss_kib(pids)
    conns = [open_connection(port, mode) for _ in range(N)]
    time.sleep(1.5)
    grown = rss_kib(pids) - before
    for conn in conns:
        conn.close()
    time.sleep(0.5)
    return grown / N


def main():
    work = harness.work_dir()
    body = '{"ok":true}'
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(f"""worker_processes 2; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_timeout 300s; client_body_temp_path {work}/b; proxy_temp_path {work}/p;
upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 64; }}
server {{ listen 127.0.0.1:{PORTS['upstream']}; location / {{ return 200 '{body}'; }} }}
server {{ listen 127.0.0.1:{PORTS['nginx']}; listen 127.0.0.1:{PORTS['nginx_tls']} ssl http2;
  ssl_certificate {CERT}; ssl_certificate_key {KEY};
  location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}""")
    subprocess.run(["nginx", "-c", conf], check=True)
    time.sleep(0.3)
    master = int(open(f"{work}/nginx.pid").read())
    text = open("conf/examples/https.toml").read().replace(
        'tls_listen = ["0.0.0.0:8443"]', f'tls_listen = ["127.0.0.1:{PORTS["gate_tls"]}"]')
    config = harness.example_config(work, None, PORTS["gate"], PORTS["admin"], PORTS["upstream"],
                                    "threads = 2\nmax_client_connections = 20000", text=text)
    gate = harness.start_gate("target/release/batchgate", config, PORTS["admin"])
    try:
        print(f"idle client connections, {N} held, RSS growth per connection:")
        for mode, gate_port, nginx_port in [("cleartext", PORTS["gate"], PORTS["nginx"]),
                                            ("tls", PORTS["gate_tls"], PORTS["nginx_tls"]),
                                            ("h2", PORTS["gate_tls"], PORTS["nginx_tls"])]:
            ours = per_connection(gate_port, mode, [gate.pid])
            theirs = per_connection(nginx_port, mode, harness.nginx_family(master))
            print(f"{mode:>10}: batchgate {ours:6.1f} KiB, nginx {theirs:6.1f} KiB", flush=True)
    finally:
        harness.stop_gate(gate)
        harness.stop_nginx(conf)


if __name__ == "__main__":
    main()
