#!/usr/bin/env python3
"""Exclusive instructions per request by function in a callgrind dump, or the difference from a
base dump: callgrind_top.py DUMP REQUESTS [BASE_DUMP BASE_REQUESTS] [--top N].
(callgrind_annotate attributes a dump taken after `callgrind_control -z` to `clone` alone.)"""
import collections, re, sys


def exclusive(path):
    names, cost, cur, call = {}, collections.Counter(), None, False
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, i, name = m.groups()
            if name:
                names[i] = name
            if kind == "fn":
                cur = i
            continue
        if line.startswith("calls="):
            call = True  # the next cost line is the call's inclusive cost
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2:
                if call:
                    call = False
                    continue
                cost[cur] += int(parts[1])
    return {names.get(k, k): v for k, v in cost.items()}


args, top = sys.argv[1:], 25
if "--top" in args:
    i = args.index("--top")
    top = int(args[i + 1])
    del args[i : i + 2]
dump, reqs = args[0], int(args[1])
e = exclusive(dump)
per = {k: v / reqs for k, v in e.items()}
print(f"{dump}: {sum(per.values()):,.0f} instructions per request ({reqs} requests)")
if len(args) >= 4:
    base, breqs = exclusive(args[2]), int(args[3])
    bper = {k: v / breqs for k, v in base.items()}
    print(f"{args[2]}: {sum(bper.values()):,.0f} per request; difference by function:")
    rows = sorted(((per.get(k, 0) - bper.get(k, 0), k) for k in set(per) | set(bper)), reverse=True)
    for d, k in rows[:top]:
        print(f"{d:+9,.0f} {per.get(k, 0):9,.0f}  {k[:140]}")
else:
    for k, v in sorted(per.items(), key=lambda x: -x[1])[:top]:
        print(f"{v:9,.0f}  {k[:140]}")
