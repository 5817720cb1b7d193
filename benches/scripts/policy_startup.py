#!/usr/bin/env python3
"""Start-up time with a big policy file: writes N CUSTOM orgs to a TOML file, starts the daemon
on it and prints the seconds from exec to its "sessiond started" line (the file is written more
than the settle window before, so the wait for a stable file is not counted).
Usage: policy_startup.py SESSIOND_BINARY N [RUNS] (stdlib only)."""
import os, subprocess, sys, tempfile, time
binary, n = sys.argv[1], int(sys.argv[2])
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
d = tempfile.mkdtemp()
path = os.path.join(d, "policy.toml")
lines = ["[application]", 'absolute_timeout = { value = 24, unit = "HOURS" }', "idle_timeout = 1800", ""]
for i in range(n):
    lines += [f"[orgs.org_{i:06}]", 'source = "CUSTOM"', 'absolute_timeout = { value = 8, unit = "HOURS" }',
              "idle_timeout_enabled = true", "idle_timeout = 900", "persistent = true", ""]
open(path, "w").write("\n".join(lines))
time.sleep(1.2)
for run in range(runs):
    t = time.monotonic()
    p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--state-dir", os.path.join(d, f"state{run}"),
                          "--policy-file", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if "sessiond started" in line:
            print(f"orgs={n} bytes={os.path.getsize(path)} startup_s={time.monotonic() - t:.3f}")
            break
    else:
        sys.exit(f"the daemon exited with {p.wait()} before starting")
    p.terminate(); p.wait()
