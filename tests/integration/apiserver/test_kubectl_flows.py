"""kubectl v1.32 drives the emulator as a user would.

Aspects covered:
- `create namespace` (a protobuf body), `apply -f` of deploy/crd.yaml then of the seed's two Plans
  verbatim; re-apply is unchanged (patch path);
- `get plans` shows Image/Channel/Version/Complete/Message, `-o wide` adds Applying, `-o yaml` round-trips;
- `get nodes -l`, `label`, `cordon`, `uncordon`;
- `drain` is held by a PodDisruptionBudget (kubectl retries evictions) and goes through once allowed;
- `kubectl wait --for=condition=Complete` returns when the status subresource gets the condition;
- `describe plan` shows its Events; `delete` removes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
SEED = Path(__file__).with_name("seed_plans.yaml")


def _node(name: str, labels: dict[str, str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.30.1+k3s1"},
            },
        }
    )


def _plans(kubectl: Any) -> None:
    kubectl("apply", "-f", str(ROOT / "deploy" / "crd.yaml"))
    kubectl("create", "namespace", "system-upgrade")  # a protobuf body
    out = kubectl("apply", "-f", str(SEED)).stdout
    assert "server-plan created" in out and "agent-plan created" in out


def test_apply_get_wait_describe_delete_plans(kubectl: Any, apiserver: Any) -> None:
    _plans(kubectl)
    again = kubectl("apply", "-f", str(SEED)).stdout
    assert "server-plan unchanged" in again
    table = kubectl("-n", "system-upgrade", "get", "plans").stdout.splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "CHANNEL", "VERSION", "COMPLETE", "MESSAGE"]
    assert any(r.split()[:3] == ["server-plan", "rancher/k3s-upgrade", "v1.24.6+k3s1"] for r in table[1:])
    wide = kubectl("-n", "system-upgrade", "get", "plans", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "APPLYING"
    got = yaml.safe_load(kubectl("-n", "system-upgrade", "get", "plan", "server-plan", "-o", "yaml").stdout)
    assert got["spec"]["version"] == "v1.24.6+k3s1" and got["metadata"]["generation"] == 1

    waiter = subprocess.Popen(
        [
            *kubectl.prefix,
            "-n",
            "system-upgrade",
            "wait",
            "--for=condition=Complete",
            "plan/server-plan",
            "--timeout=30s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not any("watch=true" in e.query for e in list(apiserver.request_log)):
            assert waiter.poll() is None and time.monotonic() < deadline, "kubectl wait never watched"
            time.sleep(0.05)
        status = (
            '{"status":{"conditions":[{"type":"Complete","status":"True","reason":"Done","message":"ok"}]}}'
        )
        kubectl(
            "-n",
            "system-upgrade",
            "patch",
            "plan",
            "server-plan",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        )
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert "condition met" in out
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    table = kubectl("-n", "system-upgrade", "get", "plans").stdout
    assert any(
        r.split()[:5] == ["server-plan", "rancher/k3s-upgrade", "v1.24.6+k3s1", "True", "ok"]
        for r in table.splitlines()
    )

    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "server-plan.1", "namespace": "system-upgrade"},
        "involvedObject": {
            "apiVersion": "upgrade.cattle.io/v1",
            "kind": "Plan",
            "name": "server-plan",
            "namespace": "system-upgrade",
            "uid": got["metadata"]["uid"],
        },
        "reason": "Resolved",
        "message": "resolved v1.24.6+k3s1",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "source": {"component": "k3s-upgrade-coordinator"},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(event))
    described = kubectl("-n", "system-upgrade", "describe", "plan", "server-plan").stdout
    assert "Events:" in described and "resolved v1.24.6+k3s1" in described

    kubectl("-n", "system-upgrade", "delete", "plan", "agent-plan")
    names = kubectl("-n", "system-upgrade", "get", "plans", "-o", "name").stdout.split()
    assert names == ["plan.upgrade.cattle.io/server-plan"]


def test_nodes_label_cordon_drain_with_budget(kubectl: Any) -> None:
    kubectl("apply", "-f", "-", input=_node("server-1", {"node-role.kubernetes.io/master": "true"}))
    kubectl("apply", "-f", "-", input=_node("agent-1", {}))
    assert kubectl(
        "get", "nodes", "-l", "node-role.kubernetes.io/master=true", "-o", "name"
    ).stdout.split() == ["node/server-1"]
    assert kubectl("get", "nodes", "-l", "!node-role.kubernetes.io/master", "-o", "name").stdout.split() == [
        "node/agent-1"
    ]
    kubectl("label", "node", "agent-1", "plan.upgrade.cattle.io/agent-plan=abc")
    assert kubectl(
        "get", "nodes", "-l", "plan.upgrade.cattle.io/agent-plan=abc", "-o", "name"
    ).stdout.split() == ["node/agent-1"]
    kubectl("cordon", "agent-1")
    assert "SchedulingDisabled" in kubectl("get", "node", "agent-1").stdout
    kubectl("uncordon", "agent-1")
    assert "SchedulingDisabled" not in kubectl("get", "node", "agent-1").stdout

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "agent-1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pdb))
    held = kubectl(
        "drain", "agent-1", "--timeout=3s", "--ignore-daemonsets", "--force", check=False, timeout=30
    )
    assert held.returncode != 0
    assert "disruption budget" in held.stderr
    assert "web" in kubectl("get", "pods", "-o", "name").stdout
    kubectl("delete", "pdb", "web")
    kubectl("drain", "agent-1", "--timeout=20s", "--ignore-daemonsets", "--force", timeout=40)
    assert kubectl("get", "pods", "-o", "name").stdout.strip() == ""
    assert "SchedulingDisabled" in kubectl("get", "node", "agent-1").stdout
