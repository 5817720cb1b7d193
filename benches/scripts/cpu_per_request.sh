#!/bin/bash
# Daemon CPU time (utime + stime from /proc/PID/stat) per request over a 6 s closed-loop run of
# the load generator on one mix, the daemon started here with persistence on (everysec).
# Usage: benches/scripts/cpu_per_request.sh SESSIOND_BINARY MIX   (MIX: healthz, auth, validate...)
# Needs the load generator built: cargo bench --bench load --no-run
set -euo pipefail
bin=$1; mix=$2; port=${PORT:-18080}; st=$(mktemp -d)
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
"$bin" --listen 127.0.0.1:$port --state-dir "$st/s" > "$st/log" 2>&1 &
pid=$!; sleep 0.7
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
req=$("$load" --target http://127.0.0.1:$port --mix "$mix" --sessions 1000 --duration 6 --json 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["run"]["requests"])')
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
kill $pid; wait $pid 2>/dev/null || true; rm -rf "$st"
tck=$(getconf CLK_TCK)
python3 -c "print(f'$mix requests=$req daemon_cpu_us_per_request={(($u1-$u0)+($s1-$s0))/$tck*1e6/$req:.2f} req_per_s={$req/6:.0f}')"
