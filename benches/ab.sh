#!/usr/bin/env bash
# A/B comparison of batchgate builds on one load scenario, runs alternating so that drift in
# the machine's speed hits every build alike.
#
#   benches/ab.sh SCENARIO ROUNDS BINARY...
#   e.g. benches/ab.sh batch0 3 /tmp/batchgate-before target/release/batchgate
#
# SCENARIO is a LOAD_ONLY value of benches/load.rs (batch0, batch10, h2batch0, pass, local);
# LOAD_SECONDS (default 4) and BATCHGATE_THREADS are passed through. Prints each build's
# batchgate CPU per item in microseconds: the mean and every run.
set -euo pipefail
scenario=$1
rounds=$2
shift 2
cd "$(dirname "$0")/.."
cargo bench --bench load --no-run >/dev/null 2>&1
for _ in $(seq "$rounds"); do
  for binary in "$@"; do
    value=$(BATCHGATE_BIN=$binary LOAD_ONLY=$scenario LOAD_SECONDS=${LOAD_SECONDS:-4} \
      cargo bench --bench load 2>/dev/null | awk '/CPU per item/ {print $4}')
    echo "$binary ${value:-failed}"
  done
done | awk '{sum[$1] += $2; n[$1]++; runs[$1] = runs[$1] " " $2}
  END {for (b in sum) printf "%s: mean %.2f us per item; runs:%s\n", b, sum[b] / n[b], runs[b]}'
