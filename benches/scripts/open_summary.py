#!/usr/bin/env python3
"""One open-loop run's figures from the load generator's --json output: open_summary.py FILE
LABEL [STALL_LINES]. Its latency, the daemon's CPU per request, the run-queue waits and steal of
the run (`sched`), and the first STALL_LINES (default 6) lines of its stall report (`stalls`,
with what the machine did during each episode when the run had --sample-us). Used by
device_plan.sh, device_tail.sh and tail_pinned.sh."""
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]["run"]
label = sys.argv[2]
keep = int(sys.argv[3]) if len(sys.argv) > 3 else 6
o = list(r["ops"].values())[0]
cpu = r.get("cpu", {}).get("us_per_request") or "n/a"
print(f"  {label}: {o['ops_per_sec']:.0f}/s p50 {o['p50_ms']} p99 {o['p99_ms']} p99.9 {o['p999_ms']}"
      f" max {o['max_ms']} ms, daemon CPU {cpu} us/request")
s = r.get("sched") or {}
if s:
    waits = {k: v for k, v in (s.get("target_run_queue_wait_ms") or {}).items() if v}
    print(f"    run-queue waits (ms): daemon {waits}, generator {s.get('generator_run_queue_wait_ms')};"
          f" steal (ms) {s.get('steal_ms')}")
for line in (r.get("stalls") or {}).get("text", [])[:keep]:
    print("   ", line)
