#!/bin/bash
# Auth's tail at half peak on the lent 16-core machine (issue #27), and what stalls it: auth
# open loop at RATE/s against the daemon on cores 0-1 (2 workers, journal on), workers pinned
# (the default), PINNED rounds of a fresh daemon each, the first GATE_OFF of them each followed
# by one with `--write-gate false` (the gate's cost in the tail, in the same minutes), then one
# unpinned for contrast; with
# SUSPECTS=1, unpinned with the suspects removed one at a time (state on tmpfs, `--fsync no`,
# `--no-persist`, a third core). Per round it prints each daemon thread's wait in the run queue
# and involuntary switches, the softirq time of cores 0-3, every other thread of the machine
# that took CPU, each core's steal, and the round's stall episodes with what the daemon's
# threads and the cores did during each (the generator's --sample-us timeline). Then the
# ceiling, pinned, and the verdict on issue #27's tail targets over the rounds
# (tail_verdict.py); each round's JSON stays in $OUT. About 4 minutes.
# Packed by benches/scripts/device_prepare.sh; then
#   run(command="bash .devperf/device_tail.sh", carry=[".devperf"], timeout_s=420)
# Small sizes on 2 cores, to check the script:
#   RATE=5000 DUR=1 ROUNDS=1 LC=1 TH=1 DC=0 DC3=0 bash .devperf/device_tail.sh
set -u
cd "$(dirname "$0")"
O=${OUT:-/tmp/diag-out}; mkdir -p "$O"; rm -f "$O"/round-*.json
RATE=${RATE:-96410}; DUR=${DUR:-5}; ROUNDS=${ROUNDS:-3}; LC=${LC:-4-15}; TH=${TH:-6}
PINNED=${PINNED:-8}; GATE_OFF=${GATE_OFF:-4}; SUSPECTS=${SUSPECTS:-0}; SAMPLE_US=${SAMPLE_US:-1000}
DC=${DC:-0,1}; DC3=${DC3:-0-2}  # the daemon's 2 cores, and 3 for the last check
L=(taskset -c "$LC" ./load --threads "$TH" --connections 128 --sessions 100000 --json
   --sample-us "$SAMPLE_US")
SP=
SD=/tmp/sd-state
start_sd() { # $1: prefix command (or ""), $2: cores, then flags
  rm -rf "$SD"
  $1 taskset -c "$2" ./sessiond --listen 127.0.0.1:18080 --http-workers 2 --state-dir "$SD" \
    --log-level info "${@:3}" > "$O/sessiond.log" 2>&1 &
  SP=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz > /dev/null 2>&1 && return; sleep 0.1; done
}
stop_sd() { kill "$SP"; wait "$SP" 2>/dev/null; }
sample() { # one line per thread: name wait_ns nonvoluntary; then ksoftirqd 0/1 ticks; cpu0/1 softirq
  for t in /proc/"$SP"/task/*; do
    echo "T $(cat $t/comm) $(cut -d' ' -f2 $t/schedstat) $(awk '/nonvoluntary/{print $2}' $t/status)"
  done
  for c in 0 1 2 3; do
    p=$(pgrep -x "ksoftirqd/$c"); echo "K $c $(awk '{print $14 + $15}' /proc/$p/stat)"
  done
  awk '/^cpu[0-3] /{print "S", $1, $7, $8}' /proc/stat
  for t in /proc/[0-9]*/task/*; do # every other thread of the machine: comm tid ticks cpu
    read -r st < "$t/stat" 2>/dev/null || continue
    r=${st##*) }; set -- $r
    echo "A ${t##*/} ${12} + ${13} ${37} $(tr ' ' _ < $t/comm)"
  done 2>/dev/null
}
diff_samples() { python3 - "$1" "$2" << 'PY'
import sys
names = {}
def rd(f):
    d = {}
    for l in open(f):
        p = l.split()
        if p[0] == "T": d.setdefault(("T", p[1]), [0, 0]); d[("T", p[1])][0] += int(p[2]); d[("T", p[1])][1] += int(p[3])
        elif p[0] == "K": d[("K", p[1])] = [int(p[2])]
        elif p[0] == "S": d[("S", p[1])] = [int(p[2]), int(p[3])]
        elif p[0] == "A": d[("A", p[1])] = [int(p[2]) + int(p[4])]; names[p[1]] = (p[6], p[5])
    return d
a, b = rd(sys.argv[1]), rd(sys.argv[2])
out = []
for k in sorted(b):
    v = [y - x for x, y in zip(a.get(k, [0] * len(b[k])), b[k])]
    if k[0] == "T" and (v[0] > 1e6 or v[1] > 0): out.append(f"{k[1]} wait {v[0]/1e6:.1f} ms, {v[1]} invol")
    if k[0] == "K" and v[0]: out.append(f"ksoftirqd/{k[1]} {v[0]*10} ms")
    if k[0] == "S": out.append(f"{k[1]} irq {v[0]*10} softirq {v[1]*10} ms")
print("    " + "; ".join(out))
busy = sorted(((y[0] - a.get(k, [0])[0], k[1]) for k, y in b.items() if k[0] == "A"), reverse=True)
busy = [f"{names[t][0]}(cpu{names[t][1]}) {d*10} ms" for d, t in busy
        if d > 0 and not names[t][0].startswith(("load", "sessiond"))][:10]
print("    other threads: " + "; ".join(busy))
PY
}
N=0
open_auth() { # $1: a label; $2: a name for its rounds' JSON files (round-NN-NAME.json in $O)
  for _ in $(seq "$ROUNDS"); do
    N=$((N + 1)); f="$O/round-$(printf %02d $N)-$2.json"
    sample > "$O/a.txt"
    timeout 60 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --mix auth --rate "$RATE" \
      --duration "$DUR" 2> /dev/null > "$f"
    sample > "$O/b.txt"
    python3 open_summary.py "$f" "$1" 4
    diff_samples "$O/a.txt" "$O/b.txt"
  done
}
summary() { python3 ceiling_summary.py "$1"; } # $1: the JSON file of a ceiling run
echo "== auth open loop at $RATE/s, cores $DC, journal on, workers pinned (the default): $PINNED rounds"
echo "   (the first $GATE_OFF each followed by one with --write-gate false)"
for i in $(seq "$PINNED"); do
  start_sd "" "$DC"; grep -o 'HTTP workers pinned.*' "$O/sessiond.log" | head -1
  ROUNDS=1 open_auth "pinned (auto)" pinned; stop_sd
  if [ "$i" -le "$GATE_OFF" ]; then
    start_sd "" "$DC" --write-gate false
    ROUNDS=1 open_auth "pinned (auto), --write-gate false" pinned-gate-off; stop_sd
  fi
done
start_sd "" "$DC" --pin-workers off; ROUNDS=1 open_auth "not pinned (off), for contrast" unpinned; stop_sd
if [ "$SUSPECTS" = 1 ]; then
  echo "== unpinned, one suspect removed at a time"
  SD=/dev/shm/sd-state; start_sd "" "$DC" --pin-workers off; open_auth "state on tmpfs" tmpfs; stop_sd
  SD=/tmp/sd-state
  start_sd "" "$DC" --pin-workers off --fsync no; open_auth "--fsync no" fsync-no; stop_sd
  start_sd "" "$DC" --pin-workers off --no-persist; open_auth "--no-persist" no-persist; stop_sd
  start_sd "" "$DC3" --pin-workers off; open_auth "3 cores, 2 workers" 3-cores; stop_sd
fi
echo "== the ceiling, pinned (auto)"
start_sd "" "$DC"
timeout 200 "${L[@]}" --target http://127.0.0.1:18080 --pid "$SP" --scenario ceiling \
  --rounds 3 --duration "$DUR" > "$O/ceiling-pinned.json" 2> "$O/ceiling-pinned.err"
summary "$O/ceiling-pinned.json"
stop_sd
echo "== issue #27's tail targets over these rounds (each round's JSON is in $O)"
python3 tail_verdict.py "$O"/round-*.json
echo done
