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

The rounds, the client and the report are benches/peer_compare.py's (ROUNDS, SECONDS,
CLIENTS, NGINX_WORKERS).

Usage: python3 benches/multipart_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18580-18584.
"""

import json
import sys

import harness
import peer_compare

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
UPSTREAM, GATE, ADMIN, PEER = 18580, 18581, 18582, 18583
WORK = harness.work_dir()

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


BODY = "".join(
    f"--bench\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\n"
    f"GET /drive/v3/files/{i}?fields=id,name HTTP/1.1\r\n\r\n"
    for i in range(100)
).encode() + b"--bench--\r\n"
GATE_REQUEST = PEER_REQUEST = (
    "POST /batch/drive/v3 HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/mixed; boundary=bench\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def check(answer):
    assert answer.count(b"HTTP/1.1 200") == 100, answer[:600]


if __name__ == "__main__":
    config = peer_compare.gate_config(WORK, "google.toml", (GATE, ADMIN, UPSTREAM), [("concurrency = 16", "concurrency = 100")])
    peer_compare.compare("multipart", "part", BINARY, config, ADMIN, UPSTREAM_SERVER, PEER_SERVER,
                         GATE, PEER, GATE_REQUEST, PEER_REQUEST, check)
