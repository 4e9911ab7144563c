"""The Events a pass posts after its last table write (`Upgraded`, `LeaseGranted`) hold up nothing.

Aspects: with every Event post left unanswered, a Plan still rolls out over its nodes and completes (the
passes that follow do not wait for the Events of the ones before), one by one or ten at a time; at most
`ANNOUNCE_PARALLELISM` of those posts wait at once, over all passes (the others queue in the coordinator,
leaving the API connections to the writes the rollout needs); the runtime, told to stop, waits for them
at most `ANNOUNCE_GRACE` seconds and then gives them up; Events and Plan status writes wait for a lull
between passes, at most `LULL_MAX` seconds.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.engine import EventWrite
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


async def after_lull(rig: Any, write: EventWrite) -> None:
    await rig.runtime._until_lull()
    await rig.runtime._perform_one(write)


async def test_events_and_statuses_wait_for_a_lull_between_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a burst of hand-offs the writes nothing waits for (Events, Plan status) go out once the loop waits
    for something to happen, so that they do not take the coordinator's thread from the passes; never
    later than LULL_MAX."""
    monkeypatch.setattr("coordinator.reconciler.LULL_MAX", 0.3)
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        await asyncio.wait_for(rig.runtime._lull.wait(), 10)  # the loop runs and has nothing to do
        write = EventWrite("Node", "node-1", "default", "Normal", "Test", "between passes")
        started = time.monotonic()
        await after_lull(rig, write)
        assert time.monotonic() - started < 0.1, "a write waited although the loop had nothing to do"
        rig.runtime._lull.clear()  # a pass is due (as while a burst of reports keeps it busy)
        started = time.monotonic()
        await after_lull(rig, write)
        waited = time.monotonic() - started
        assert 0.25 < waited < 1.0, f"waited {waited:.2f} s, not until LULL_MAX"
        started = time.monotonic()  # the loop still busy: the next ones do not wait LULL_MAX each
        for _ in range(5):
            await after_lull(rig, write)
        assert time.monotonic() - started < 0.2, "each write waited LULL_MAX again"
        assert sum(1 for e in rig.cluster.events if e[3] == "Test") == 7
