#!/usr/bin/env bash
# Instructions per request, counted by callgrind: an A/B of batchgate builds that CPU time on
# a shared 2-core VM (±10 % run to run) cannot resolve. Each build serves h2load (4
# connections, 10 streams each, h2c) in front of a one-worker nginx; two runs of N1 and N2
# requests, and the difference of their totals over N2 - N1 is the cost of one request
# without start-up and shutdown. SCENARIO=pass (default): `GET /x` passed through;
# SCENARIO=batch: an envelope batch of 10 `GET` items.
#
#   benches/instructions.sh BINARY...
#   e.g. SCENARIO=batch benches/instructions.sh /tmp/batchgate-before target/release/batchgate
#
# Needs valgrind, nginx-light and nghttp2-client (h2load); N1 (2000) and N2 (12000) override
# the request counts. Everything it starts is stopped; about 20 s per build.
set -euo pipefail
n1=${N1:-2000}
n2=${N2:-12000}
scenario=${SCENARIO:-pass}
work=$(mktemp -d)
trap 'nginx -c "$work/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx.err;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:18180; location / { return 200 "ok\n"; } }
}
CONF
cat >"$work/gate.toml" <<CONF
[server]
listen = ["127.0.0.1:18190"]
h2c = true
default_upstream = "api"
pid_file = "$work/batchgate.pid"
upgrade_sock = "$work/upgrade.sock"
log_level = "warn"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:18191"

[upstreams.api]
addresses = ["127.0.0.1:18180"]

[[routes]]
path = "/v2/batch"
dialect = "envelope"
CONF
printf '{"requests":[' >"$work/batch.json"
for i in $(seq 0 9); do
  [ "$i" -gt 0 ] && printf ',' >>"$work/batch.json"
  printf '{"id":"%s","method":"GET","url":"/v2/x"}' "$i" >>"$work/batch.json"
done
printf ']}' >>"$work/batch.json"
case $scenario in
  pass) load=(http://127.0.0.1:18190/x) ;;
  batch) load=(-d "$work/batch.json" -H 'content-type: application/json' http://127.0.0.1:18190/v2/batch) ;;
  *) echo "SCENARIO is pass or batch" >&2; exit 1 ;;
esac
nginx -c "$work/nginx.conf"

# Total instructions of one batchgate run that serves $2 requests.
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$1" run -c "$work/gate.toml" \
    2>"$work/valgrind.err" &
  local pid=$!
  for _ in $(seq 300); do
    curl -s -o /dev/null http://127.0.0.1:18191/healthz && break
    sleep 0.2
  done
  h2load -n "$2" -c 4 -m 10 "${load[@]}" | grep -q "$2 2xx" ||
    echo "warning: not every request answered 2xx" >&2
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$work"/cg.*
  awk '/Collected/ {gsub(",", "", $4); print $4}' "$work/valgrind.err"
}

for binary in "$@"; do
  small=$(count "$binary" "$n1")
  large=$(count "$binary" "$n2")
  echo "$binary: $(((large - small) / (n2 - n1))) instructions per $scenario request"
done
