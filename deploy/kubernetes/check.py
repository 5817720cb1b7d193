#!/usr/bin/env python3
"""Cross-checks the manifests in this directory, beyond what the Kubernetes schemas can see.

`kubernetes-validate --strict` checks each object against the Kubernetes schemas (it has none
for the Prometheus Operator's ServiceMonitor). This checks that the objects fit together: the
Services select the StatefulSet's pods, the ServiceMonitor selects exactly one Service and names
one of its ports, the StatefulSet's serviceName, ConfigMap and Secret exist, the env paths lie
under their mounts, and the probes hit sessiond's endpoints. With --policies-out FILE it writes
the ConfigMap's policies.toml there so that the tests parse it with sessiond's own parser.

With --cluster it checks the three-node variant instead: cluster/statefulset.yaml and
cluster/pdb.yaml in place of statefulset.yaml, with the same Services, ConfigMap and Secret;
three replicas spread one per machine, the cluster settings, a PodDisruptionBudget that keeps
two nodes up, and cluster/nats-values.yaml with JetStream on and sync_interval always.

Usage: check.py [--cluster] [--policies-out FILE]   (exit 1 with one line per problem)
"""
import pathlib
import sys

import yaml

here = pathlib.Path(__file__).parent
cluster = "--cluster" in sys.argv
docs = []
for f in sorted(here.glob("*.yaml")) + (sorted((here / "cluster").glob("*.yaml")) if cluster else []):
    if f.name == "nats-values.yaml" or (cluster and f.parent == here and f.name == "statefulset.yaml"):
        continue
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs.append((f.name, d))

def by_kind(kind):
    return [d for _, d in docs if d.get("kind") == kind]

problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())

sts_list = by_kind("StatefulSet")
need(len(sts_list) == 1, f"expected one StatefulSet, found {len(sts_list)}")
sts = sts_list[0]
pod = sts["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
need(selects(sts["spec"]["selector"]["matchLabels"], pod_labels),
     "StatefulSet selector does not match its pod template labels")
services = by_kind("Service")
names = {s["metadata"]["name"]: s for s in services}
need(sts["spec"]["serviceName"] in names, f"serviceName {sts['spec']['serviceName']} has no Service")
need(names.get(sts["spec"]["serviceName"], {}).get("spec", {}).get("clusterIP") == "None",
     "the StatefulSet's governing Service should be headless")
for s in services:
    need(selects(s["spec"]["selector"], pod_labels), f"Service {s['metadata']['name']} selects no sessiond pod")

c = next(c for c in pod["spec"]["containers"] if c["name"] == "sessiond")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for s in services:
    for p in s["spec"]["ports"]:
        need(p["targetPort"] in ports, f"Service {s['metadata']['name']} targets unknown port {p['targetPort']}")
need(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness must probe /healthz")
need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness must probe /readyz")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
need(env.get("SESSIOND_LISTEN", "").endswith(f":{ports.get('http')}"), "SESSIOND_LISTEN port differs from the http containerPort")
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
for m in c["volumeMounts"]:
    need(m["name"] in volumes or m["name"] in claims, f"mount {m['name']} has no volume")
    need("subPath" not in m, f"mount {m['name']} uses subPath: ConfigMap updates would not reach it")
need(env.get("SESSIOND_STATE_DIR") == mounts.get("state"), "SESSIOND_STATE_DIR is not the state volume")

cms = {d["metadata"]["name"]: d for d in by_kind("ConfigMap")}
secrets = {d["metadata"]["name"]: d for d in by_kind("Secret")}
policy_file = env.get("SESSIOND_POLICY_FILE", "")
keys_file = env.get("SESSIOND_API_KEYS_FILE", "")
policies_text = None
for name, v in volumes.items():
    mount = mounts.get(name, "")
    if "configMap" in v:
        cm = cms.get(v["configMap"]["name"])
        need(cm is not None, f"ConfigMap {v['configMap']['name']} is not defined")
        if cm and policy_file.startswith(mount + "/"):
            key = policy_file[len(mount) + 1:]
            need(key in cm["data"], f"ConfigMap has no key {key} for SESSIOND_POLICY_FILE")
            policies_text = cm["data"].get(key)
    if "secret" in v:
        sec = secrets.get(v["secret"]["secretName"])
        need(sec is not None, f"Secret {v['secret']['secretName']} is not defined (see secret.example.yaml)")
        if sec and keys_file.startswith(mount + "/"):
            need(keys_file[len(mount) + 1:] in sec.get("stringData", {}), "Secret lacks the keys file")
need(policies_text is not None, "SESSIOND_POLICY_FILE does not point into the policies ConfigMap")

mons = by_kind("ServiceMonitor")
need(len(mons) == 1, f"expected one ServiceMonitor, found {len(mons)}")
for m in mons:
    chosen = [s for s in services if selects(m["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    need(len(chosen) == 1, f"ServiceMonitor selects {len(chosen)} Services; exactly one avoids duplicate series")
    for e in m["spec"]["endpoints"]:
        need(e.get("path") == "/metrics", "ServiceMonitor must scrape /metrics")
        need(all(e["port"] in [p["name"] for p in s["spec"]["ports"]] for s in chosen),
             f"ServiceMonitor port {e['port']} is not a named port of the Service")

if cluster:
    need(sts["spec"]["replicas"] >= 3, "a cluster needs three nodes")
    anti = pod["spec"].get("affinity", {}).get("podAntiAffinity", {})
    rules = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    need(any(r.get("topologyKey") == "kubernetes.io/hostname"
             and selects(r["labelSelector"]["matchLabels"], pod_labels) for r in rules),
         "pods are not spread one per machine (podAntiAffinity on kubernetes.io/hostname)")
    need(env.get("SESSIOND_CLUSTER", "").startswith("nats://"), "SESSIOND_CLUSTER is not a nats:// URL")
    node_name = next((e for e in c["env"] if e["name"] == "SESSIOND_NODE_NAME"), {})
    need(node_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
         "SESSIOND_NODE_NAME must be the pod's name (unique per node)")
    pdbs = by_kind("PodDisruptionBudget")
    need(len(pdbs) == 1, f"expected one PodDisruptionBudget, found {len(pdbs)}")
    for p in pdbs:
        need(selects(p["spec"]["selector"]["matchLabels"], pod_labels), "the PodDisruptionBudget selects no sessiond pod")
        need(p["spec"].get("minAvailable") == sts["spec"]["replicas"] - 1,
             "the PodDisruptionBudget should let one node go at a time")
    values = yaml.safe_load((here / "cluster" / "nats-values.yaml").read_text())
    need(values["config"]["jetstream"]["enabled"] is True, "NATS values: JetStream is off")
    need(values["config"]["cluster"]["replicas"] >= 3, "NATS values: fewer than three servers")
    need(values["config"]["merge"]["jetstream"]["sync_interval"] == "always",
         "NATS values: sync_interval must be always (acknowledged writes survive a power loss)")
    replicas = next((e.get("value") for e in c["env"] if e["name"] == "SESSIOND_CLUSTER_REPLICAS"), None)
    need(replicas == "3", "SESSIOND_CLUSTER_REPLICAS should be 3 with three NATS servers")

if "--policies-out" in sys.argv and policies_text is not None:
    pathlib.Path(sys.argv[sys.argv.index("--policies-out") + 1]).write_text(policies_text)
for p in problems:
    print(f"deploy/kubernetes: {p}")
sys.exit(1 if problems else 0)
