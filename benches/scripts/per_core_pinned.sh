#!/bin/bash
# Per core: validate on the daemon (1 HTTP worker, every thread of it, journal on, everysec)
# against GET on Redis (no persistence), each server alone on core $SERVER_CPU in turn, the load
# generator on core $GEN_CPU; closed loop, 100k sessions (keys), 32 connections, ROUNDS rounds
# of 3 s per server, Redis and each build in turn (a shared VM's speed drifts over minutes).
# Prints each round's req/s and the server's CPU per request (utime + stime from
# /proc/PID/stat over the round, divided by the requests) and how often the generator was woken
# per request, then the medians and each build over Redis.
# Usage: benches/scripts/per_core_pinned.sh OUT_DIR NAME=SESSIOND_BINARY [NAME=BINARY...]
# Needs the load generator built (cargo bench --bench load --no-run) and redis-server.
set -euo pipefail
out=$1; shift
scpu=${SERVER_CPU:-0}; gcpu=${GEN_CPU:-1}; rounds=${ROUNDS:-5}; port=${PORT:-18979}
rport=${REDIS_PORT:-16379}
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
mkdir -p "$out"
gen=(taskset -c "$gcpu" "$load" --sessions 100000 --connections 32 --duration 3 --mix validate
  --json)
wait_up() { # $1: a log to show if the server never answers; then the probe command
  local log=$1; shift
  for _ in $(seq 1 100); do "$@" > /dev/null 2>&1 && return; sleep 0.1; done
  echo "the server did not come up: $log" >&2; cat "$log" >&2; exit 1
}
for round in $(seq 1 "$rounds"); do
  st=$(mktemp -d)
  taskset -c "$scpu" redis-server --port "$rport" --save "" --appendonly no > "$st/redis.log" 2>&1 &
  rp=$!
  wait_up "$st/redis.log" redis-cli -p "$rport" ping
  "${gen[@]}" --target "redis://127.0.0.1:$rport" > "$out/redis-$round.json" 2> "$st/err"
  kill $rp; wait $rp 2>/dev/null || true
  for build in "$@"; do
    name=${build%%=*}; bin=${build#*=}; rm -rf "$st/s"
    taskset -c "$scpu" "$bin" --listen 127.0.0.1:$port --http-workers 1 --state-dir "$st/s" \
      --log-level warn > "$st/log" 2>&1 &
    sp=$!
    wait_up "$st/log" curl -sf http://127.0.0.1:$port/readyz
    "${gen[@]}" --target http://127.0.0.1:$port --pid $sp > "$out/$name-$round.json" 2> "$st/err"
    kill $sp; wait $sp 2>/dev/null || true
  done
  rm -rf "$st"
  echo "round $round done" >&2
done
python3 - "$out" "$rounds" "$@" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
names = ["redis"] + [b.split("=", 1)[0] for b in sys.argv[3:]]
rows = {n: [] for n in names}
for r in range(1, rounds + 1):
    line = []
    for name in names:
        run = json.load(open(f"{out}/{name}-{r}.json"))["results"][0]["run"]
        rate, us = run["ops"]["validate"]["ops_per_sec"], run["cpu"]["us_per_request"]
        wake = run["cpu"].get("client_wakeups_per_request")
        rows[name].append((rate, us, wake))
        line.append(f"{name} {rate:.0f} req/s {us:.2f} us/req"
                    f" ({run['cpu']['seconds'] / run['seconds']:.0%} busy, generator woken {wake}/req)")
    print(f"round {r}: " + "; ".join(line))
med = lambda xs: statistics.median(xs)
for name in names:
    rate, us = med(x[0] for x in rows[name]), med(x[1] for x in rows[name])
    wakes = [x[2] for x in rows[name] if x[2] is not None]
    woken = f", generator woken {med(wakes):.3f} times per request" if wakes else ""
    print(f"{name}: median {rate:.0f} req/s, {us:.2f} us/request{woken}")
    if name != "redis":
        cpu = sorted(r[1] / s[1] for s, r in zip(rows[name], rows["redis"]))
        rates = [s[0] / r[0] for s, r in zip(rows[name], rows["redis"])]
        print(f"  per core over Redis GET: req/s {med(rates):.2f}x; CPU per request (Redis's over"
              f" the daemon's) median round {med(cpu):.2f}x (rounds {cpu[0]:.2f}-{cpu[-1]:.2f})")
PY
