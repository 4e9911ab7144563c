"""The Events a pass posts after its last table write (`Upgraded`, `LeaseGranted`) hold up nothing.

Aspects: with every Event post left unanswered, a Plan still rolls out over three nodes one by one and
completes (the passes that follow do not wait for the Events of the ones before); the runtime, told to
stop, waits for those posts at most `ANNOUNCE_GRACE` seconds and then gives them up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from coordinator.kube.resources import PLANS
from coordinator.reconciler import ANNOUNCE_GRACE
from tests.integration.coordinator.harness import condition, coordinator, drive

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NODES = ["node-1", "node-2", "node-3"]
PLAN: dict[str, Any] = {
    "apiVersion": "upgrade.cattle.io/v1",
    "kind": "Plan",
    "metadata": {"name": "one-by-one", "namespace": "system-upgrade"},
    "spec": {
        "concurrency": 1,
        "cordon": True,
        "version": NEW,
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
    },
}


async def test_unanswered_event_posts_hold_up_neither_the_rollout_nor_the_stop(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        rig.cluster.events_gate = asyncio.Event()  # never set
        rig.cluster.put(PLANS, PLAN)
        plans = rig.cluster.objects["plans"]

        def complete() -> bool:
            return condition(plans["system-upgrade/one-by-one"], "Complete").get("status") == "True"

        await drive(rig, rig.agents(NODES, OLD), complete, 30, "the Plan did not complete")
        assert rig.runtime._announcing, "no Event post is pending: the gate was not in the way"
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert rig.cluster.events == [] and rig.cluster.writes["event"] >= len(NODES)  # all posted, none answered
    done = plans["system-upgrade/one-by-one"]["status"]["latestHash"]
    for n in NODES:
        labels = rig.cluster.objects["nodes"][n]["metadata"]["labels"]
        assert labels["plan.upgrade.cattle.io/one-by-one"] == done
    assert ANNOUNCE_GRACE - 0.1 <= took < ANNOUNCE_GRACE + 2.0
