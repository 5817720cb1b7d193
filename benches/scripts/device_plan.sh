#!/bin/bash
# What issues #25 and #27 still need from a machine with cores of its own, in one run of about
# 7 minutes on the lent 16-core machine (the `device` tool), every figure with its raw output:
#   1. start-up from a snapshot of 10M sessions + 1M journal records, every core (#25: <= 5 s);
#   2. the ceiling: healthz, auth and validate closed loop, the daemon's CPU per request as
#      multiples of healthz's, then auth open loop at half its peak (#27: auth <= 1.15x,
#      validate <= 1.25x; p99 <= 1 ms, p99.9 <= 5 ms with the journal on);
#   3. Redis GET at that same rate (#27: auth's p99 <= 2x Redis's);
#   4. per core: one HTTP worker on one core, validate, against Redis on one core (>= 0.7x);
#   5. the same ceiling over a Unix socket (#27: its CPU per request beside TCP's);
#   6. the tail's suspects: auth at that rate without the journal, and with 4 cores;
#   7. with sessiond-base packed (BASE=<commit> device_prepare.sh): the TCP ceiling of that
#      build and of this one, alternated twice, since CPU ratios move ±15% run to run.
# The daemon (journal on, everysec) runs on cores 0-1, Redis on core 2, the load generator on
# cores 4-15; the start-up bench gets every core.
#
# Here (2 cores are enough to build):  benches/scripts/device_prepare.sh
# Then:  run(command="bash .devperf/device_plan.sh", carry=[".devperf"], timeout_s=560)
# SMOKE=1 runs every step at small sizes on any machine, to check the script, not to measure.
set -u
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib
O=${OUT:-/tmp/device-out}; mkdir -p "$O"
if [ "${SMOKE:-0}" = 1 ]; then
  S=20000; J=2000; DUR=1; ROUNDS=1; SESS=2000; DC=0; RC=0; LC=1; TH=1
else
  S=10000000; J=1000000; DUR=5; ROUNDS=3; SESS=100000; DC=0,1; RC=2; LC=4-15; TH=6
fi
{ date -u; uname -r; nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2
  echo "CPU flags: $(grep -m1 -o -w "sha_ni\|avx2\|avx512f\|aes" /proc/cpuinfo | sort -u | tr "\n" " ")"
  ./redis-server --version; } 2>&1 | tee "$O/machine.txt"

echo "== 1. start-up: snapshot of $S sessions + $J journal records, every core, 3 loads"
rm -rf /tmp/sd-persist
timeout 300 ./persist --sessions "$S" --journal "$J" --loads 3 --dir /tmp/sd-persist 2>&1 \
  | tee "$O/startup.txt"
rm -rf /tmp/sd-persist

taskset -c "$RC" ./redis-server --port 16379 --save "" --appendonly no > "$O/redis.log" 2>&1 &
RP=$!
SP=
BIN=./sessiond
start_sd() { # $1: cores, $2: workers, $3: listen address, then any other flags; runs $BIN
  rm -rf /tmp/sd-state
  taskset -c "$1" "$BIN" --listen "$3" --http-workers "$2" --state-dir /tmp/sd-state \
    --log-level warn "${@:4}" > "$O/sessiond.log" 2>&1 &
  SP=$!
  for _ in $(seq 100); do
    if [ -S "${3#unix:}" ] || curl -sf "http://$3/readyz" > /dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "sessiond did not come up on $3"; cat "$O/sessiond.log"
}
stop_sd() { kill "$SP"; wait "$SP" 2>/dev/null; }
threads() { # $1: a label; each daemon thread's CPU seconds (utime + stime) so far
  echo "  threads, $1 (name: CPU s):"
  for t in /proc/"$SP"/task/*; do
    awk -v n="$(cat "$t"/comm)" '{printf "    %s: %.2f\n", n, ($14 + $15) / 100}' "$t"/stat
  done | sort | uniq -c | sort -rn | head -12
}
L=(taskset -c "$LC" ./load --threads "$TH" --connections 128 --sessions "$SESS" --json
   --sample-us "${SAMPLE_US:-1000}")
summary() { python3 ceiling_summary.py "$1"; } # $1: the JSON file of a ceiling run

echo "== 2. ceiling over TCP: 2 workers on cores $DC, journal on; generator on cores $LC"
start_sd "$DC" 2 127.0.0.1:18080
timeout 200 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --scenario ceiling \
  --rounds "$ROUNDS" --duration "$DUR" > "$O/ceiling-tcp.json" 2> "$O/ceiling-tcp.err"
summary "$O/ceiling-tcp.json"
threads "after the TCP ceiling"
stop_sd
RATE=$(python3 -c "import json; print(int(json.load(open('$O/ceiling-tcp.json'))['results'][0]['ceiling']['auth_at_half_peak']['rate']))")

echo "== 3. Redis GET (the auth mix) open loop at the same $RATE/s, Redis on core $RC"
for _ in $(seq "$ROUNDS"); do
  timeout 60 "${L[@]}" --target redis://127.0.0.1:16379 --pid "$RP" --mix auth --rate "$RATE" \
    --duration "$DUR" 2> /dev/null > "$O/redis-rate.json"
  python3 open_summary.py "$O/redis-rate.json" "redis GET" 3
done

echo "== 4. per core: validate, 1 worker on core ${DC%%,*} vs Redis GET on core $RC, closed loop"
start_sd "${DC%%,*}" 1 127.0.0.1:18080
timeout 100 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --target redis://127.0.0.1:16379 \
  --mix validate --duration "$DUR" > "$O/per-core.json" 2> "$O/per-core.err"
python3 - "$O/per-core.json" << 'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["results"]:
    run = r["run"]
    print(f"  {r.get('target', '?')}: {run['ops']['validate']['ops_per_sec']:.0f} req/s,"
          f" target CPU {run['cpu']['us_per_request']} us/request, generator woken"
          f" {run['cpu'].get('client_wakeups_per_request')} times per request")
rates = [r["run"]["ops"]["validate"]["ops_per_sec"] for r in d["results"]]
print(f"  sessiond / redis: {rates[0] / rates[1]:.2f}x")
PY
stop_sd

echo "== 5. ceiling over a Unix socket: 2 workers on cores $DC"
start_sd "$DC" 2 unix:/tmp/sd.sock
timeout 200 "${L[@]}" --target unix:/tmp/sd.sock --pid "$SP" --scenario ceiling \
  --rounds "$ROUNDS" --duration "$DUR" > "$O/ceiling-unix.json" 2> "$O/ceiling-unix.err"
summary "$O/ceiling-unix.json"
stop_sd
open_auth() { # $1: a label; auth open loop at $RATE/s against the daemon started last
  for _ in $(seq "$ROUNDS"); do
    timeout 60 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --mix auth --rate "$RATE" \
      --duration "$DUR" 2> /dev/null > "$O/open.json"
    python3 open_summary.py "$O/open.json" "$1" 4
  done
}
echo "== 6. the tail's suspects: auth open loop at $RATE/s, journal off, then on with 4 cores"
start_sd "$DC" 2 127.0.0.1:18080 --no-persist
open_auth "2 cores, --no-persist"
stop_sd
start_sd 0-3 2 127.0.0.1:18080
open_auth "4 cores (2 workers), journal on"
threads "after the 4-core runs"
stop_sd
if [ -x ./sessiond-base ]; then
  echo "== 7. before and after: the TCP ceiling of $(cat sessiond-base.rev 2>/dev/null) (base) and of this build, alternated"
  for b in base this base this; do
    if [ $b = base ]; then BIN=./sessiond-base; else BIN=./sessiond; fi
    echo " $b:"
    start_sd "$DC" 2 127.0.0.1:18080
    timeout 120 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --scenario ceiling \
      --rounds 2 --duration "$DUR" > "$O/ceiling-$b.json" 2> /dev/null
    summary "$O/ceiling-$b.json"
    stop_sd
  done
  BIN=./sessiond
fi
kill "$RP"; wait "$RP" 2>/dev/null
echo "done; raw output in $O"
