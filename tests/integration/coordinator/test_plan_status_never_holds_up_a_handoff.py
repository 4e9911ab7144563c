"""A Plan status write holds up no pass: a rollout goes on while the API server keeps it waiting.

Aspects: with the Plan's status patches left unanswered, its nodes are upgraded and labelled one after
another (no pass waits for a status write, and only one is out at a time); once the API server answers,
the status written is the latest one decided (`Complete`, every node's label), not each pass's in turn.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from coordinator.kube.resources import PLANS
from tests.integration.coordinator.harness import condition, coordinator, drive, plan_manifest

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
PLAN: dict[str, Any] = plan_manifest("rollout", NEW, cordon=True)


async def test_an_unanswered_status_patch_holds_up_no_hand_off(tmp_path: Path) -> None:
    names = [f"node-{i}" for i in range(1, 5)]
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in names]) as rig:
        rig.cluster.status_gate = asyncio.Event()
        rig.cluster.put(PLANS, copy.deepcopy(PLAN))  # concurrency 1: a pass per hand-off
        plans, nodes = rig.cluster.objects["plans"], rig.cluster.objects["nodes"]
        label = "plan.upgrade.cattle.io/rollout"

        def all_labelled() -> bool:
            return all(label in nodes[n]["metadata"].get("labels", {}) for n in names)

        await drive(rig, rig.agents(names, OLD), all_labelled, 30, "the nodes were not all upgraded")
        assert rig.cluster.status_waiting == 1  # the first status write, still out; nothing else waits on it
        assert "status" not in plans["system-upgrade/rollout"]
        writes = rig.cluster.writes.get("status", 0)
        rig.cluster.status_gate.set()

        def complete() -> bool:
            return condition(plans["system-upgrade/rollout"], "Complete").get("status") == "True"

        await drive(rig, [], complete, 10, "the Plan's status did not become Complete")
    assert rig.cluster.writes["status"] - writes <= 2  # the first one out, then the latest (not one per pass)
    assert all(nodes[n]["metadata"]["labels"][label] for n in names)
