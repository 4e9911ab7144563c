"""The Events a pass posts after its last table write (`Upgraded`, `LeaseGranted`) hold up nothing.

Aspects: with every Event post left unanswered, a Plan still rolls out over its nodes and completes (the
passes that follow do not wait for the Events of the ones before), one by one or ten at a time; at most
`ANNOUNCE_PARALLELISM` of those posts wait at once, over all passes (the others queue in the coordinator,
leaving the API connections to the writes the rollout needs); the runtime, told to stop, waits for them
at most `ANNOUNCE_GRACE` seconds and then gives them up.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.kube.resources import PLANS
from coordinator.reconciler import ANNOUNCE_GRACE, ANNOUNCE_PARALLELISM
from tests.integration.coordinator.harness import condition, coordinator, drive, plan_manifest

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
PLAN: dict[str, Any] = plan_manifest("rollout", NEW, cordon=True)


@pytest.mark.parametrize(
    ("nodes", "concurrency", "posted"),
    [
        (3, 1, 3 + 3),  # each node's `Upgraded`, and a `LeaseGranted` for each grant (one per pass)
        (10, 10, ANNOUNCE_PARALLELISM),  # 10 `Upgraded` and a `LeaseGranted` due: the rest wait their turn
    ],
)
async def test_unanswered_event_posts_hold_up_neither_the_rollout_nor_the_stop(
    tmp_path: Path, nodes: int, concurrency: int, posted: int
) -> None:
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    plan = copy.deepcopy(PLAN)
    plan["spec"]["concurrency"] = concurrency
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in names]) as rig:
        rig.cluster.events_gate = asyncio.Event()  # never set
        rig.cluster.put(PLANS, plan)
        plans = rig.cluster.objects["plans"]

        def complete() -> bool:
            return condition(plans["system-upgrade/rollout"], "Complete").get("status") == "True"

        await drive(rig, rig.agents(names, OLD), complete, 30, "the Plan did not complete")
        assert rig.runtime._announcing, "no Event post is pending: the gate was not in the way"
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert rig.cluster.events == [] and rig.cluster.events_waiting == 0  # none answered, all given up
    assert rig.cluster.writes["event"] == rig.cluster.events_waiting_max == posted
    done = plans["system-upgrade/rollout"]["status"]["latestHash"]
    for n in names:
        labels = rig.cluster.objects["nodes"][n]["metadata"]["labels"]
        assert labels["plan.upgrade.cattle.io/rollout"] == done
    assert ANNOUNCE_GRACE - 0.1 <= took < ANNOUNCE_GRACE + 2.0
