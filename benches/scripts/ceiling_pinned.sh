#!/bin/bash
# The ceiling scenario (daemon CPU per request of healthz, auth and validate, and their ratios)
# with the daemon and the load generator on a core each: the daemon (1 HTTP worker, every
# thread of it, journal on, everysec) on core $DAEMON_CPU, the generator on $GEN_CPU. Builds
# given together are run in turn, RUNS times (a shared VM's speed drifts over minutes:
# alternating compares like with like), each run 5 rounds of 2 s per op, 10k sessions, 32
# connections; then the medians over every round of each build. UNIX=1: over a Unix socket
# instead of TCP loopback (a gateway on the same host).
# Usage: benches/scripts/ceiling_pinned.sh OUT_DIR NAME=SESSIOND_BINARY [NAME=BINARY...]
#   e.g. benches/scripts/ceiling_pinned.sh /tmp/cp before=/tmp/sessiond-old now=target/release/sessiond
# Needs the load generator built: cargo bench --bench load --no-run
set -euo pipefail
out=$1; shift
dcpu=${DAEMON_CPU:-0}; gcpu=${GEN_CPU:-1}; runs=${RUNS:-3}; port=${PORT:-18979}
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
mkdir -p "$out"
for run in $(seq 1 "$runs"); do
  for build in "$@"; do
    name=${build%%=*}; bin=${build#*=}; st=$(mktemp -d)
    if [ "${UNIX:-0}" = 1 ]; then
      listen=unix:$st/sd.sock; target=$listen; probe=(--unix-socket "$st/sd.sock" http://x/readyz)
    else
      listen=127.0.0.1:$port; target=http://$listen; probe=(http://$listen/readyz)
    fi
    taskset -c "$dcpu" "$bin" --listen "$listen" --http-workers 1 --state-dir "$st/s" \
      --log-level warn > "$st/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "${probe[@]}" > /dev/null && break; sleep 0.1; done
    taskset -c "$gcpu" "$load" --target "$target" --pid $pid --scenario ceiling \
      --rounds 5 --duration 2 --sessions 10000 --orgs 100 --connections 32 --json \
      > "$out/$name-$run.json" 2> "$st/err"
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$st"
    echo "run $run $name done" >&2
  done
done
python3 - "$out" "$@" <<'PY'
import json, statistics, sys, glob
out, builds = sys.argv[1], [b.split("=", 1)[0] for b in sys.argv[2:]]
for name in builds:
    rounds = {"auth": [], "validate": []}; us = {"healthz": [], "auth": [], "validate": []}
    for f in sorted(glob.glob(f"{out}/{name}-*.json")):
        c = json.load(open(f))["results"][0]["ceiling"]
        for op in rounds:
            rounds[op] += c["cpu_over_healthz"][f"{op}_over_healthz_by_round"]
        for op in us:
            us[op].append(c[op]["cpu"]["us_per_request"])
    line = lambda xs: f"median {statistics.median(xs):.3f} (rounds {min(xs):.2f}-{max(xs):.2f}, n={len(xs)})"
    print(f"{name}: auth/healthz CPU {line(rounds['auth'])}; validate/healthz {line(rounds['validate'])}")
    print("  daemon CPU per request, us, each run's median-throughput round: " + "; ".join(f"{op} {', '.join(f'{x:.1f}' for x in xs)}" for op, xs in us.items()))
PY
