"""deploy/daemonset.yaml runs the agent where and how it must.

Aspects: every document parses into the official client's models; the pod runs on every node (tolerates
every taint, system-node-critical, rolling update), sees the host (hostPID, host / at /host, privileged
root: the image itself is non-root), gets its node name from the downward API, the coordinator's Service
URL, and a projected token with the coordinator's audience at the agent's default token path, and no
API credentials of its own; resources have requests and limits; the agent's flags parse from it; its
grace period outlasts a restart and a rollback (a stop waits for them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from agent.config import DEFAULT_TOKEN_FILE, parse_args
from coordinator.config import Timeouts
from wire.messages import TOKEN_AUDIENCE

ROOT = Path(__file__).resolve().parents[3]
MANIFEST = ROOT / "deploy" / "daemonset.yaml"


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def daemonset() -> dict[str, Any]:
    (ds,) = [d for d in docs() if d["kind"] == "DaemonSet"]
    return ds


def test_documents_parse_into_official_models() -> None:
    api = client.ApiClient()
    for doc in docs():
        model = api.deserialize(json.dumps(doc), f"V1{doc['kind']}", "application/json")
        assert model.metadata.name == doc["metadata"]["name"]
        assert model.metadata.namespace == "system-upgrade"


def test_pod_runs_on_every_node_with_host_access() -> None:
    ds = daemonset()
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True and pod["automountServiceAccountToken"] is False
    t = Timeouts()  # a stop waits while k3s is replaced: a restart, a rollback's restart, the stable wait
    assert pod["terminationGracePeriodSeconds"] >= 2 * t.restart + t.restart_stable
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    assert set(container["resources"]) == {"requests", "limits"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/host"]]["hostPath"]["path"] == "/"
    token_dir = str(Path(DEFAULT_TOKEN_FILE).parent)
    (source,) = volumes[mounts[token_dir]]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == TOKEN_AUDIENCE
    assert source["serviceAccountToken"]["path"] == Path(DEFAULT_TOKEN_FILE).name


def test_agent_settings_come_from_the_manifest(monkeypatch: Any) -> None:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["COORDINATOR_URL"]["value"] == "http://k3s-upgrade-coordinator.system-upgrade.svc:8080"
    monkeypatch.setenv("NODE_NAME", "node-a")
    for name, item in env.items():
        if "value" in item:
            monkeypatch.setenv(name, item["value"])
    config = parse_args(container["args"])
    assert config.node == "node-a" and config.host_root == Path("/host")
    assert config.token_file == Path(DEFAULT_TOKEN_FILE)
    assert config.state_dir == Path("/host/var/lib/k3s-upgrader")
