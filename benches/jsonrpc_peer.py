#!/usr/bin/env python3
"""The JSON-RPC dialect beside its OpenResty peer (issue 34, item 2; the first of the three).

The peer is written the way benches/sidebyside.rs writes the envelope one: nginx + lua decodes
the JSON-RPC array, `ngx.location.capture_multi`s every call as its own POST over upstream
keep-alive (all at once), decodes each answer and encodes the array reply. batchgate runs
conf/examples/limelight.toml's route with max_items 100 and concurrency 100. The upstream is a
separate nginx (1 worker, lua) answering each call with its own id. CLIENTS clients keep
100-call arrays in flight for SECONDS; contenders alternate ROUNDS times. Reported: server CPU
(utime + stime; nginx: master and workers) per call, median with min-max, and the ratio.

The rounds, the client and the report are benches/peer_compare.py's (ROUNDS, SECONDS,
CLIENTS, NGINX_WORKERS).

Usage: python3 benches/jsonrpc_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18560-18564.
"""

import json
import sys

import harness
import peer_compare

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
UPSTREAM, GATE, ADMIN, PEER = 18560, 18561, 18562, 18563
WORK = harness.work_dir()

def upstream_server(port, delay_ms=0):
    """The upstream: answers each call with its own id, after `delay_ms`."""
    sleep = f"  ngx.sleep({delay_ms / 1000})\n" if delay_ms else ""
    return f"""server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ content_by_lua_block {{
  local cjson = require "cjson.safe"
  ngx.req.read_body()
{sleep}  local call = cjson.decode(ngx.req.get_body_data() or "") or {{}}
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({{ jsonrpc = "2.0", id = call.id, result = {{ file_id = "9520943DC264", drive_id = "1" }} }}))
}} }} }}"""


def peer_server(port, upstream):
    """The OpenResty peer on `port`, calling the upstream on `upstream`."""
    return f"""upstream api {{ server 127.0.0.1:{upstream}; keepalive 1024; keepalive_requests 100000000; }}
server {{ listen 127.0.0.1:{port} backlog=4096;
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


UPSTREAM_SERVER, PEER_SERVER = upstream_server(UPSTREAM), peer_server(PEER, UPSTREAM)


BODY = json.dumps(
    [{"jsonrpc": "2.0", "method": "getFile", "params": {"drive_id": "1"}, "id": i} for i in range(100)]
).encode()


def request(path):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


GATE_REQUEST, PEER_REQUEST = request("/jsonrpc2"), request("/")


def check(answer):
    answers = json.loads(answer)
    assert len(answers) == 100 and all("result" in a for a in answers), answer[:300]


if __name__ == "__main__":
    config = peer_compare.gate_config(WORK, "limelight.toml", (GATE, ADMIN, UPSTREAM), [("max_items = 3", "max_items = 100"), ("concurrency = 3", "concurrency = 100")])
    peer_compare.compare("JSON-RPC", "call", BINARY, config, ADMIN, UPSTREAM_SERVER, PEER_SERVER,
                         GATE, PEER, GATE_REQUEST, PEER_REQUEST, check)
