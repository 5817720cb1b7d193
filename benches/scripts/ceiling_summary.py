#!/usr/bin/env python3
"""The ceiling scenario's figures from the load generator's --json output, one line each:
ceiling_summary.py FILE. Used by device_plan.sh and device_tail.sh."""
import json, sys
c = json.load(open(sys.argv[1]))["results"][0]["ceiling"]
for k in ("healthz", "auth", "validate"):
    r = c[k]
    print(f"  {k}: {r['throughput']:.0f} req/s, daemon CPU {r['cpu']['us_per_request']} us/request")
x = c["cpu_over_healthz"]
print(f"  CPU over healthz (median round): auth {x['auth_over_healthz']}x, validate {x['validate_over_healthz']}x;"
      f" by round: auth {x['auth_over_healthz_by_round']}, validate {x['validate_over_healthz_by_round']}")
h = c["auth_at_half_peak"]; o = h["ops"]["auth"]
print(f"  auth open loop at {h['rate']:.0f}/s: p50 {o['p50_ms']} p99 {o['p99_ms']} p99.9 {o['p999_ms']}"
      f" max {o['max_ms']} ms, daemon CPU {h['cpu']['us_per_request']} us/request;"
      f" p99 by round {c['auth_at_half_peak_p99_ms']['by_round']}")
for line in h.get("stalls", {}).get("text", [])[:6]:
    print("   ", line)
