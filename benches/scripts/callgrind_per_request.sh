#!/bin/bash
# User-space instructions per request of healthz, auth, validate and touch (issue #27): the daemon under
# valgrind --tool=callgrind with one HTTP worker and the journal on (everysec). For each op the
# load generator runs against it; once its preload is done the counters are zeroed, and dumped
# 10 s later; the requests in that window come from the daemon's sessiond_http_requests_total.
# Usage: benches/scripts/callgrind_per_request.sh SESSIOND_BINARY OUT_DIR
# Then:  benches/scripts/callgrind_top.py OUT_DIR/cg.out.2 REQUESTS [OUT_DIR/cg.out.1 REQUESTS]
# Needs valgrind, curl and the load generator: cargo bench --bench load --no-run
set -u
bin=$1; out=$2; port=${PORT:-18931}
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
rm -rf "$out"; mkdir -p "$out"
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
  "$bin" --listen 127.0.0.1:$port --http-workers 1 --state-dir "$out/state" --log-level warn \
  > "$out/daemon.log" 2>&1 &
vg=$!
for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$port/readyz > /dev/null && break; sleep 0.1; done
metric() { curl -s http://127.0.0.1:$port/metrics | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {printf "%d", s}'; }
created=0
for op in healthz auth validate touch; do
  "$load" --target http://127.0.0.1:$port --mix $op --sessions 2000 --orgs 100 --connections 8 \
    --duration 40 > "$out/load-$op.txt" 2>&1 &
  l=$!
  created=$((created + 2000))
  sleep 3
  for _ in $(seq 1 300); do [ "$(metric sessiond_sessions_created_total)" -ge $created ] && break; sleep 0.2; done
  sleep 2
  a=$(metric sessiond_http_requests_total); callgrind_control -z $vg > /dev/null; sleep 10
  callgrind_control -d $op $vg > /dev/null; b=$(metric sessiond_http_requests_total)
  # The first /metrics read is counted in the window; the second is not.
  echo "$op requests_in_window $((b - a - 1))" | tee -a "$out/summary.txt"
  wait $l
done
kill -TERM $vg; wait $vg
echo "dumps: $out/cg.out.1 (healthz) .2 (auth) .3 (validate) .4 (touch)"
