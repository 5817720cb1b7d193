#!/usr/bin/env python3
"""Eviction lag of a running daemon: sets a 3 s absolute policy, creates N sessions, waits past
their deadlines and prints sessiond_expiry_lag_seconds. Usage: expiry_lag.py PORT N (stdlib only)."""
import http.client, json, time, sys
port = int(sys.argv[1]); n = int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
def call(m, p, body=None):
    c.request(m, p, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse(); return r.status, r.read()
print(call("PUT", "/v1/policy", {"absolute_timeout": 3, "idle_timeout_enabled": False})[0])
t = time.time()
for i in range(n):
    assert call("POST", "/v1/sessions", {"user_id": f"u{i}"})[0] == 201
print(f"created {n} in {time.time()-t:.1f}s; waiting for their deadlines")
time.sleep(4.5)
text = call("GET", "/metrics")[1].decode()
print("\n".join(l for l in text.splitlines() if l.startswith(("sessiond_expiry_lag", "sessiond_sessions_expired", "sessiond_sessions_active"))))
