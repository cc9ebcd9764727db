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

The rounds, the client and the report are benches/peer_compare.py's (ROUNDS, SECONDS,
CLIENTS, NGINX_WORKERS).

Usage: python3 benches/fanout_peer.py [BINARY] (default target/release/batchgate).
Needs nginx-light, libnginx-mod-http-lua, lua-cjson; ports 18570-18574.
"""

import json
import sys

import harness
import peer_compare

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/batchgate"
UPSTREAM, GATE, ADMIN, PEER = 18570, 18571, 18572, 18573
WORK = harness.work_dir()

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


TARGET = "/v2/servicerequest/accessorys/access-urls?group_id=7&accessory_ids=" + ",".join(
    str(1000 + i) for i in range(100))
GATE_REQUEST = PEER_REQUEST = f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: t\r\n\r\n".encode()


def check(answer):
    answers = json.loads(answer)["accessory_urls"]
    assert len(answers) == 100 and all(a["accessory_url"] for a in answers), answer[:300]


if __name__ == "__main__":
    config = peer_compare.gate_config(WORK, "huawei.toml", (GATE, ADMIN, UPSTREAM), [("concurrency = 16", "concurrency = 100")])
    peer_compare.compare("fan-out", "id", BINARY, config, ADMIN, UPSTREAM_SERVER, PEER_SERVER,
                         GATE, PEER, GATE_REQUEST, PEER_REQUEST, check)
