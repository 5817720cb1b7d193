#!/usr/bin/env python3
"""Issue #27's tail targets over device_tail.sh's rounds: tail_verdict.py ROUND_JSON...

Each file is one open-loop run of the load generator (--json), named round-NN-<label>.json by
device_tail.sh. Rounds are grouped by label (pinned, pinned with the write gate off,
unpinned); for each group it prints every round's p99 / p99.9 / max, the stall episodes with
and without steal, and the daemon's lag-probe ticks late by more than 10 ms; then, for the
pinned rounds (the default configuration), the targets: p99 <= 1 ms, p99.9 <= 5 ms. Redis's
p99 at the same rate (the other half of the p99 target) comes from device_plan.sh."""
import json
import re
import statistics
import sys
from collections import OrderedDict


def load(path):
    run = json.load(open(path))["results"][0]["run"]
    op = list(run["ops"].values())[0]
    stalls = run.get("stalls") or {}
    steal = stalls.get("steal") or {}
    delay = stalls.get("daemon_worker_delay") or {}
    return {
        "p99": op["p99_ms"],
        "p999": op["p999_ms"],
        "max": op["max_ms"],
        "rate": op["ops_per_sec"],
        "episodes": stalls.get("episodes", 0),
        "with_steal": steal.get("episodes_with_steal"),
        "windows": steal.get("shifted_windows"),
        "windows_steal": steal.get("shifted_windows_with_steal"),
        "late10": delay.get("late_over_10ms"),
        "ticks": delay.get("ticks"),
    }


def main(paths):
    groups = OrderedDict()
    for p in sorted(paths):
        m = re.search(r"round-\d+-(.+)\.json$", p)
        label = m.group(1) if m else p
        groups.setdefault(label, []).append(load(p))
    for label, rounds in groups.items():
        print(f"== {label}: {len(rounds)} rounds")
        for r in rounds:
            steal = ("" if r["with_steal"] is None else
                     f", {r['with_steal']} with steal (other windows: {r['windows_steal']} of {r['windows']})")
            probe = "" if r["ticks"] is None else f"; probe ticks > 10 ms late: {r['late10']:.0f} of {r['ticks']:.0f}"
            print(f"  {r['rate']:.0f}/s p99 {r['p99']} p99.9 {r['p999']} max {r['max']} ms;"
                  f" {r['episodes']} stall episodes{steal}{probe}")
    pinned = groups.get("pinned", [])
    if not pinned:
        print("no pinned rounds: no verdict")
        return
    p99 = [r["p99"] for r in pinned]
    p999 = [r["p999"] for r in pinned]
    bad = [r for r in pinned if r["p999"] > 5]
    print(f"== targets over the {len(pinned)} pinned rounds (the default: gate on)")
    print(f"  p99 <= 1 ms: {'met' if max(p99) <= 1 else 'MISSED'} ({min(p99)}-{max(p99)} ms)")
    print(f"  p99.9 <= 5 ms: {'met' if not bad else 'MISSED in %d rounds' % len(bad)}"
          f" ({min(p999)}-{max(p999)} ms)")
    for r in bad:
        print(f"    p99.9 {r['p999']} ms: {r['episodes']} episodes, {r['with_steal']} with steal;"
              f" probe ticks > 10 ms late: {r['late10']}")
    off = groups.get("pinned-gate-off", [])
    if off:
        med = statistics.median
        print(f"  write gate off ({len(off)} rounds): p99 median {med([r['p99'] for r in off])} ms"
              f" against {med(p99)} ms with it; p99.9 median {med([r['p999'] for r in off])}"
              f" against {med(p999)} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
