"""A coordinator that dies at random points of a rollout and starts again finishes it without over-granting.

The runtime is cancelled wherever it is awaiting (mid reconcile, between two ordered writes, inside an
agent report) and a fresh one, with empty memory, takes over the same cluster state: the lease table
in the API is all it has. (The SIGKILL variant with a real subprocess runs against the API server
emulator.)

Aspects covered:
- three crashes at random moments during a concurrency-2 rollout over 6 nodes with cordon;
- every lease-table version ever written holds at most `concurrency` active leases for the plan;
- the rollout completes, every node labelled and uncordoned, no lease left active.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from coordinator.kube.resources import PLANS
from tests.integration.coordinator.harness import condition, coordinator, drive

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NODES = [f"node-{i}" for i in range(1, 7)]


async def test_three_crashes_mid_rollout(tmp_path: Path) -> None:
    rng = random.Random()
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        rig.cluster.put(
            PLANS,
            {
                "apiVersion": "upgrade.cattle.io/v1",
                "kind": "Plan",
                "metadata": {"name": "fleet", "namespace": "system-upgrade"},
                "spec": {
                    "concurrency": 2,
                    "cordon": True,
                    "version": NEW,
                    "upgrade": {"image": "rancher/k3s-upgrade"},
                    "nodeSelector": {
                        "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]
                    },
                },
            },
        )
        plan = rig.cluster.objects["plans"]

        async def crasher() -> None:
            for _ in range(3):
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                await rig.crash_and_restart()

        chaos = asyncio.create_task(crasher())

        def complete() -> bool:
            p = plan["system-upgrade/fleet"]
            return chaos.done() and condition(p, "Complete").get("status") == "True"

        await drive(rig, rig.agents(NODES, OLD, wait=0.5), complete, 60, "the rollout did not finish")
        await chaos
        assert rig.restarts == 3
        for table in rig.cluster.table_history:
            assert len(table.active_for_plan("fleet")) <= 2, "over-granted"
        h = plan["system-upgrade/fleet"]["status"]["latestHash"]
        for n in NODES:
            obj = rig.cluster.objects["nodes"][n]
            assert obj["metadata"]["labels"]["plan.upgrade.cattle.io/fleet"] == h
            assert not obj["spec"].get("unschedulable")
        assert not any(le.active for le in rig.cluster.table_history[-1].leases)
