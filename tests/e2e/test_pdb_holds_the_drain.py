"""A PodDisruptionBudget that blocks the drain holds the node until the budget allows it, or until the
Plan's drain timeout passes.

Aspects covered (kubectl only):
- a Running pod on the agent node, protected by a PDB with `minAvailable: 1`; a Plan with `drain`;
- the node is cordoned, the pod is not evicted and the node keeps its old version while the PDB blocks;
- once the PDB is deleted the pod is evicted and the node is upgraded, labelled and uncordoned;
- with `drain.timeout` and a PDB that never allows it, the drain gives up after the timeout: the plan
  halts (Complete=False naming the node), the node is uncordoned (we cordoned it) and keeps its old
  version, and the protected pod was never evicted.
"""

from __future__ import annotations

import time

import yaml

from sandbox.cluster import NAMESPACE, Kubectl, SandboxConfig, wait_for
from sandbox.progress import build_snapshot, finished
from tests.e2e.conftest import MakeSandbox, plan_manifest

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"
HOLD = 4.0


def protected_pod(make_sandbox: MakeSandbox) -> Kubectl:
    """A 1+1 sandbox with a Running pod on agent-1 that a `minAvailable: 1` PDB protects."""
    args = (*SandboxConfig().coordinator_args, "--allow-agent-skew")  # only the agent is upgraded here
    sandbox = make_sandbox(servers=1, agents=1, from_version=OLD, versions=(OLD, NEW), api_on_server=False,
                           coordinator_args=args)
    kubectl = sandbox.kubectl
    kubectl.apply(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default",
                                                         "labels": {"app": "web"}},
         "spec": {"nodeName": "agent-1", "containers": [{"name": "web", "image": "nginx"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}},
    ]))
    kubectl.run("patch", "pod", "web", "-n", "default", "--subresource=status", "--type=merge", "-p",
                '{"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}')
    return kubectl


def test_pdb_blocks_then_allows(make_sandbox: MakeSandbox) -> None:
    kubectl = protected_pod(make_sandbox)
    kubectl.apply(plan_manifest("agent-plan", servers=False, version=NEW,
                                drain={"force": True, "ignoreDaemonSets": True}))

    def cordoned() -> bool:
        return bool(kubectl.json("get", "node", "agent-1").get("spec", {}).get("unschedulable"))

    wait_for("agent-1 was not cordoned", cordoned, 60, 0.2)
    held_from = time.monotonic()
    while time.monotonic() - held_from < HOLD:
        current = kubectl.json("get", "node", "agent-1")
        assert current["status"]["nodeInfo"]["kubeletVersion"] == OLD, "upgraded although the PDB blocks"
        assert kubectl.run("get", "pod", "web", "-n", "default", "-o", "name").strip() == "pod/web"
        time.sleep(0.5)
    kubectl.run("delete", "pdb", "web", "-n", "default")
    wait_for("the pod was not evicted after the PDB went away",
             lambda: "web" not in kubectl.run("get", "pods", "-n", "default", "-o", "name"), 60, 0.3)

    def done() -> bool:
        plans = kubectl.json("get", "plans", "-n", NAMESPACE)["items"]
        return finished(build_snapshot(plans, kubectl.json("get", "nodes")["items"]), ["agent-plan"])

    wait_for("agent-1 was not upgraded after the PDB allowed the drain", done, 90, 0.5)
    assert not kubectl.json("get", "node", "agent-1").get("spec", {}).get("unschedulable")


def test_drain_timeout_gives_up_and_halts_the_plan(make_sandbox: MakeSandbox) -> None:
    kubectl = protected_pod(make_sandbox)
    kubectl.apply(plan_manifest("agent-plan", servers=False, version=NEW,
                                drain={"force": True, "ignoreDaemonSets": True, "timeout": "3s"}))

    def cordoned() -> bool:
        return bool(kubectl.json("get", "node", "agent-1").get("spec", {}).get("unschedulable"))

    wait_for("agent-1 was not cordoned", cordoned, 60, 0.2)

    def halted() -> dict[str, str] | None:
        plan = kubectl.json("get", "plan", "agent-plan", "-n", NAMESPACE)
        conditions = (plan.get("status") or {}).get("conditions") or []
        complete = next((c for c in conditions if c["type"] == "Complete"), None)
        return complete if complete and complete["status"] == "False" and "agent-1" in complete.get(
            "message", "") and complete.get("reason") not in ("Resolved", "Waiting", "SyncJob") else None

    wait_for("the plan did not halt after the drain timeout", lambda: halted() is not None, 60, 0.3)
    condition = halted()
    assert condition is not None and "drain" in condition["message"].lower(), condition
    wait_for("agent-1 was left cordoned after the failed drain", lambda: not cordoned(), 30, 0.3)
    node = kubectl.json("get", "node", "agent-1")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == OLD
    assert kubectl.run("get", "pod", "web", "-n", "default", "-o", "name").strip() == "pod/web"
