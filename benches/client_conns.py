# Opens N client connections to a running batchgate, holds them in one state and prints the
# growth of its RSS per connection (docs/RELIABILITY.md, "What a connection costs").
#   python3 benches/client_conns.py PORT PID N MODE   (MODE: idle-after-request | half-head | half-body)
import socket, sys, time
port, pid, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def fds():
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))
base, base_fd = rss(), fds()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if mode == "idle-after-request":
        s.sendall(b"GET /v2/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)
    elif mode == "half-head":
        s.sendall(b"GET /v2/hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    elif mode == "half-body":
        s.sendall(b"POST /v2/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"resource\":")
    conns.append(s)
time.sleep(1.5)
grown = rss() - base
print(f"{mode}: {n} connections, RSS +{grown} KiB = {grown / n:.1f} KiB each, fds +{fds() - base_fd}")
for s in conns:
    s.close()
