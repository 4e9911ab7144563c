"""deploy/coordinator.yaml is a working, least-privilege install of the coordinator.

Aspects covered:
- every document parses into the official client's model of its kind (what the API server would accept);
- the ServiceAccount is `system-upgrade`, the Deployment runs as non-root, without privilege escalation,
  with a read-only root filesystem and all capabilities dropped;
- probes hit `/healthz` and `/readyz` on the port the container and the Service use, and those routes
  exist in the coordinator's web app; leader election is on;
- RBAC is least-privilege: no wildcards, Secrets and Leases only in the coordinator's namespace, and
  the rules cover exactly what the coordinator calls (plans, plans/status, nodes, pods, pods/eviction,
  events, tokenreviews, leases, secrets);
- the environment variables the Deployment sets are the ones `coordinator.config` reads;
- the namespace admits the agent DaemonSet's privileged pods where a cluster enforces a stricter Pod
  Security level by default (`pod-security.kubernetes.io/enforce: privileged`, as SUC labels it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from kubernetes import client

from coordinator import config
from coordinator.metrics import Metrics
from coordinator.web import add_status_routes

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "coordinator.yaml"

MODELS = {
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
}


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in docs() if d["kind"] == kind]


def test_every_document_parses_into_the_official_model() -> None:
    api = client.ApiClient()
    kinds = []
    for doc in docs():
        model = api.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")
        assert model.metadata.name == doc["metadata"]["name"]
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(MODELS)


def test_the_namespace_admits_the_privileged_agent_pods() -> None:
    (ns,) = by_kind("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    agent_docs = yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text())
    (daemonset,) = [d for d in agent_docs if d and d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    assert daemonset["metadata"]["namespace"] == ns["metadata"]["name"] and pod["hostPID"] is True


def test_deployment_is_non_root_with_probes_on_real_routes() -> None:
    (dep,) = by_kind("Deployment")
    pod = dep["spec"]["template"]["spec"]
    tolerated = {t["key"] for t in pod["tolerations"]}  # the servers, as SUC's controller may run there
    assert {"CriticalAddonsOnly", "node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master",
            "node-role.kubernetes.io/etcd"} <= tolerated
    assert pod["serviceAccountName"] == "k3s-upgrade-coordinator"  # not SUC's, which keeps SUC's bindings
    assert {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]  # a recreated coordinator must start on a one-node cluster being upgraded
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "--leader-elect" in c["args"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    listen = c["args"][c["args"].index("--listen") + 1]
    assert config.parse_listen(listen)[1] == port
    app = web.Application()
    add_status_routes(app, dict, lambda: (True, "ready"), Metrics())
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in routes
        assert c[probe]["httpGet"]["port"] == "http"
    (svc,) = by_kind("Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    env = {e["name"] for e in c["env"]}
    settings = config.load(
        ["--listen", listen],
        env={e["name"]: "x" for e in c["env"] if "value" not in e}
        | {e["name"]: e["value"] for e in c["env"] if "value" in e},
    )
    assert env >= {"SYSTEM_UPGRADE_CONTROLLER_NAMESPACE", "POD_NAME", "POD_NAMESPACE"}
    assert settings.pod_name == "x" and settings.namespace == "x"


def rules(kind: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for role in by_kind(kind):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_rbac_is_least_privilege_and_sufficient() -> None:
    cluster, ns = rules("ClusterRole"), rules("Role")
    for table in (cluster, ns):
        for (group, res), verbs in table.items():
            assert "*" not in (group, res) and "*" not in verbs
    assert cluster == {
        ("upgrade.cattle.io", "plans"): {"get", "list", "watch"},
        ("upgrade.cattle.io", "plans/status"): {"patch"},
        ("", "nodes"): {"get", "list", "watch", "patch"},
        ("", "pods"): {"get", "list", "delete"},
        ("", "pods/eviction"): {"create"},
        ("", "events"): {"create"},
        ("authentication.k8s.io", "tokenreviews"): {"create"},
    }
    assert ns == {
        ("coordination.k8s.io", "leases"): {"get", "create", "update"},  # get/update: by name, below
        ("", "secrets"): {"get", "list", "watch"},
    }
    for binding in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
        (subject,) = binding["subjects"]
        assert (subject["kind"], subject["name"], subject["namespace"]) == (
            "ServiceAccount",
            "k3s-upgrade-coordinator",
            "system-upgrade",
        )
    (role,) = by_kind("Role")
    named = [r for r in role["rules"] if "leases" in r["resources"] and set(r["verbs"]) & {"get", "update"}]
    assert [sorted(r.get("resourceNames", [])) for r in named] == [
        sorted([config.LEADER_LEASE_NAME, config.LEASE_TABLE_NAME])
    ]
    for namespaced in by_kind("Role") + by_kind("RoleBinding") + by_kind("Deployment") + by_kind("Service"):
        assert namespaced["metadata"]["namespace"] == config.DEFAULT_NAMESPACE
