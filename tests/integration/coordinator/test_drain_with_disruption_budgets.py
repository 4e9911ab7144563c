"""Plans with `drain`: pods are evicted through the Eviction API, a disruption budget is waited out until
the drain timeout, and a drain that cannot finish fails the node visibly and gives it back.

Aspects covered:
- eviction of the node's pods (DaemonSet pods skipped, the coordinator's own pod never touched) while
  the node is cordoned; a 429 (PodDisruptionBudget) is retried until the budget allows it;
- the rollout completes and every node is uncordoned;
- a budget that never allows the eviction: after the plan's drain timeout the lease fails, the plan
  stops with Complete=False/JobFailed naming the node and cause, Warning Events go to the Plan and the
  Node, and the node is uncordoned (we cordoned it);
- a drain whose lease is withdrawn (its Plan deleted) stops: no eviction after the node is given back;
- a drain with no timeout is ended by the job deadline (SUC's Job deadline): the lease fails and the
  drain stops.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from coordinator.kube.resources import PLANS, PODS
from tests.integration.coordinator.harness import Rig, condition, coordinator, drive

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NODES = ["node-1", "node-2"]


def pod(name: str, node: str, owner: str = "ReplicaSet", ns: str = "apps") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "ownerReferences": [{"kind": owner, "name": "x", "controller": True}],
        },
        "spec": {"nodeName": node},
        "status": {"phase": "Running"},
    }


def plan(timeout: str) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "drained", "namespace": "system-upgrade"},
        "spec": {
            "concurrency": 1,
            "version": NEW,
            "upgrade": {"image": "rancher/k3s-upgrade"},
            "drain": {"timeout": timeout, "force": True},
            "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
        },
    }


def seed_pods(rig: Rig) -> None:
    for n in NODES:
        rig.cluster.put(PODS, pod(f"web-{n}", n))
        rig.cluster.put(PODS, pod(f"logs-{n}", n, owner="DaemonSet"))
    rig.cluster.put(PODS, pod("coordinator-0", "node-1", ns="system-upgrade"))


async def test_budget_waited_out_then_rollout_completes(tmp_path: Path) -> None:
    async with coordinator(
        tmp_path,
        [NEW],
        [(n, False, OLD) for n in NODES],
        "--pod-name",
        "coordinator-0",
        "--pod-namespace",
        "system-upgrade",
    ) as rig:
        seed_pods(rig)
        rig.cluster.pdb_blocked = {f"apps/web-{n}" for n in NODES}
        rig.cluster.put(PLANS, plan("30s"))
        plans = rig.cluster.objects["plans"]

        async def budget_allows_later() -> None:
            await asyncio.sleep(1.0)
            rig.cluster.pdb_blocked.clear()

        opener = asyncio.create_task(budget_allows_later())

        def complete() -> bool:
            return condition(plans["system-upgrade/drained"], "Complete").get("status") == "True"

        await drive(rig, rig.agents(NODES, OLD), complete, 40, "the drained rollout did not complete")
        await opener
        assert sorted(rig.cluster.evictions) == [f"apps/web-{n}" for n in NODES]
        pods = rig.cluster.objects["pods"]
        assert "system-upgrade/coordinator-0" in pods and all(f"apps/logs-{n}" in pods for n in NODES)
        for n in NODES:
            assert not rig.cluster.objects["nodes"][n]["spec"].get("unschedulable")


async def test_drain_timeout_fails_the_node_and_gives_it_back(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        seed_pods(rig)
        rig.cluster.pdb_blocked = {f"apps/web-{n}" for n in NODES}
        rig.cluster.put(PLANS, plan("1s"))
        plans = rig.cluster.objects["plans"]

        def failed() -> bool:
            c = condition(plans["system-upgrade/drained"], "Complete")
            nodes = rig.cluster.objects["nodes"].values()
            given_back = not any(n["spec"].get("unschedulable") for n in nodes)
            reported = any(e[3] == "UpgradeFailed" for e in rig.cluster.events)
            return c.get("reason") == "JobFailed" and reported and given_back

        await drive(rig, rig.agents(NODES, OLD), failed, 30, "the drain timeout was not reported")
        msg = condition(plans["system-upgrade/drained"], "Complete")["message"]
        bad = next(n for n in NODES if n in msg)
        assert "drain" in msg and "disruption budget" in msg, msg
        kinds = {(e[1]["kind"], e[1]["name"]) for e in rig.cluster.events if e[2] == "Warning"}
        assert ("Plan", "drained") in kinds and ("Node", bad) in kinds
        assert not rig.cluster.objects["nodes"][bad]["spec"].get("unschedulable"), "failed node left cordoned"
        others = [n for n in NODES if n != bad]
        assert all(
            "plan.upgrade.cattle.io/drained" not in rig.cluster.objects["nodes"][n]["metadata"]["labels"]
            for n in others
        ), "the plan kept going after a failure"


async def test_a_drain_stops_when_its_lease_is_withdrawn(tmp_path: Path) -> None:
    """A drain with no timeout, held by a budget, while its Plan is deleted: the node is given back and the
    evictions stop (they went on against a schedulable node until a timeout that never came)."""
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        seed_pods(rig)
        rig.cluster.pdb_blocked = {f"apps/web-{n}" for n in NODES}
        rig.cluster.put(PLANS, plan("0s"))  # no drain timeout
        agents = rig.agents(NODES, OLD)
        attempts = rig.cluster.eviction_attempts

        def draining() -> bool:
            return len(attempts) >= 2

        await drive(rig, agents, draining, 20, "the drain did not start")
        rig.cluster.remove(PLANS, "system-upgrade/drained")

        def given_back() -> bool:
            return not any(n["spec"].get("unschedulable") for n in rig.cluster.objects["nodes"].values())

        await drive(rig, agents, given_back, 20, "the node was not given back")
        seen = len(attempts)
        await asyncio.sleep(5)  # more than two of the drain's 2-s rounds
        assert len(attempts) == seen, f"evictions went on after the lease was withdrawn: {attempts[seen:]}"
        assert not rig.runtime.drainer.results


async def test_a_drain_past_the_job_deadline_stops_and_fails_its_node(tmp_path: Path) -> None:
    """No drain timeout, a budget that never allows the eviction: the controller's job deadline (SUC's
    SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS) fails the lease as SUC's Job would fail, the drain stops
    and the node is given back (it waited, cordoned, for as long as the budget held)."""
    async with coordinator(
        tmp_path, [NEW], [(n, False, OLD) for n in NODES], "--job-active-deadline-seconds", "3"
    ) as rig:
        seed_pods(rig)
        rig.cluster.pdb_blocked = {f"apps/web-{n}" for n in NODES}
        rig.cluster.put(PLANS, plan("0s"))  # no drain timeout
        plans = rig.cluster.objects["plans"]
        attempts = rig.cluster.eviction_attempts

        def failed() -> bool:
            c = condition(plans["system-upgrade/drained"], "Complete")
            nodes = rig.cluster.objects["nodes"].values()
            return c.get("reason") == "JobFailed" and not any(n["spec"].get("unschedulable") for n in nodes)

        await drive(rig, rig.agents(NODES, OLD), failed, 30, "the job deadline did not end the drain")
        msg = condition(plans["system-upgrade/drained"], "Complete")["message"]
        assert "the drain did not finish within the job deadline of 3s" in msg, msg
        assert attempts, "the drain never ran"
        seen = len(attempts)
        await asyncio.sleep(5)  # more than two of the drain's 2-s rounds
        assert len(attempts) == seen, f"evictions went on after the deadline: {attempts[seen:]}"
        assert not rig.runtime.drainer.results
