#!/bin/bash
# Open-loop latency of one mix with the daemon and the load generator on cores of their own:
# the daemon (1 HTTP worker, and every other thread of it) pinned to core $DAEMON_CPU, the
# generator to $GEN_CPU; each round runs the daemon with the journal on (everysec) and then
# with --no-persist, 8 s each, 100k sessions, 32 connections.
# Usage: benches/scripts/tail_pinned.sh SESSIOND_BINARY MIX RATE ROUNDS [sessiond args...]
#   e.g. benches/scripts/tail_pinned.sh target/release/sessiond auth 5000 2
# SESSIOND_BINARY may be several, comma-separated: each round then runs each in turn (builds
# compared in the same minutes). MODES="journal" (or "no-persist") runs only that mode.
# With `nginx` as the binary it measures the same way an nginx (1 worker, pinned the same) that
# answers every request with a fixed 200 (one process: no master): the machine's and the
# generator's own tail.
# Each run prints its stall episodes with what the server's threads and each core's steal did
# during them, sampled every $SAMPLE_US µs (2000 by default; the sampler shares the generator's
# core, so finer sampling costs the generator). Needs the load generator built:
#   cargo bench --bench load --no-run
set -euo pipefail
bin=$1; mix=$2; rate=$3; rounds=$4; shift 4
dcpu=${DAEMON_CPU:-0}; gcpu=${GEN_CPU:-1}; sample=${SAMPLE_US:-2000}
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
report() { python3 benches/scripts/open_summary.py /dev/stdin "$*"; } # the label
if [ "$bin" = nginx ]; then
  for _ in $(seq 1 "$rounds"); do
    st=$(mktemp -d); port=$((18300 + RANDOM % 500))
    cat > "$st/nginx.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $st/nginx.pid; error_log $st/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $st/body;
  server { listen 127.0.0.1:$port;
    location / { default_type application/json; return 200 '{"status":"ok"}'; } } }
CONF
    taskset -c "$dcpu" nginx -c "$st/nginx.conf" &
    pid=$!; sleep 0.5
    taskset -c "$gcpu" "$load" --target http://127.0.0.1:$port --mix healthz --rate "$rate" \
      --duration 8 --sessions 0 --connections 32 --json --pid $pid --sample-us "$sample" 2>/dev/null | report nginx fixed-200
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$st"
  done
  exit 0
fi
IFS=, read -r -a bins <<< "$bin"
for _ in $(seq 1 "$rounds"); do
 for b in "${bins[@]}"; do
  tag=; [ ${#bins[@]} -gt 1 ] && tag=$(basename "$b")
  for mode in ${MODES:-journal no-persist}; do
    st=$(mktemp -d); port=$((18300 + RANDOM % 500))
    if [ "$mode" = journal ]; then persist=(--state-dir "$st/s"); else persist=(--no-persist); fi
    taskset -c "$dcpu" "$b" --listen 127.0.0.1:$port --http-workers 1 "${persist[@]}" "$@" \
      > "$st/log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -sf 127.0.0.1:$port/readyz > /dev/null && break; sleep 0.1; done
    taskset -c "$gcpu" "$load" --target http://127.0.0.1:$port --pid $pid --mix "$mix" \
      --rate "$rate" --duration 8 --sessions 100000 --connections 32 --json --sample-us "$sample" 2>/dev/null \
      | report "$mix" "$mode" $tag
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$st"
  done
 done
done
