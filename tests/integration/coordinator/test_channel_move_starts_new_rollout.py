"""A Plan that follows a channel upgrades again when the channel moves.

Aspects covered:
- a channel Plan resolves through the sandbox channel server (302 Location basename) and completes;
- moving the channel to a newer release is noticed by the periodic re-resolution, gives a new
  latestVersion/latestHash, and the nodes are upgraded and relabelled with the new hash;
- LatestResolved carries reason Channel; a channel that answers 404 makes
  LatestResolved=False with a message naming the channel, and changes no node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.kube.resources import PLANS
from sandbox.channels import ChannelServer
from tests.integration.coordinator.harness import condition, coordinator, drive

V0, V1, V2 = "v1.30.3+k3s1", "v1.30.4+k3s1", "v1.30.5+k3s1"
NODES = ["node-1", "node-2"]


def channel_plan(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": name, "namespace": "system-upgrade"},
        "spec": {
            "concurrency": 2,
            "channel": url,
            "serviceAccountName": "system-upgrade",
            "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
            "upgrade": {"image": "rancher/k3s-upgrade"},
        },
    }


async def test_channel_move_triggers_a_new_rollout(tmp_path: Path) -> None:
    channels = ChannelServer({"stable": V1})
    await channels.start()
    try:
        nodes = [(n, True, V0) for n in NODES]
        async with coordinator(tmp_path, [V1, V2], nodes, "--polling-interval", "0.3") as rig:
            rig.cluster.put(PLANS, channel_plan("follow", channels.url("stable")))
            rig.cluster.put(PLANS, channel_plan("broken", channels.url("withdrawn")))
            plans = rig.cluster.objects["plans"]
            agents = rig.agents(NODES, V0)

            def at(version: str) -> bool:
                p = plans["system-upgrade/follow"]
                st = p.get("status") or {}
                return st.get("latestVersion") == version and condition(p, "Complete").get("status") == "True"

            await drive(rig, agents, lambda: at(V1), 30, f"the channel Plan did not reach {V1}")
            first_hash = plans["system-upgrade/follow"]["status"]["latestHash"]
            assert condition(plans["system-upgrade/follow"], "LatestResolved")["reason"] == "Channel"

            channels.set_channel("stable", V2)
            await drive(rig, agents, lambda: at(V2), 30, f"the moved channel did not roll out {V2}")
            st = plans["system-upgrade/follow"]["status"]
            assert st["latestHash"] != first_hash
            for n in NODES:
                obj = rig.cluster.objects["nodes"][n]
                assert obj["status"]["nodeInfo"]["kubeletVersion"] == V2
                assert obj["metadata"]["labels"]["plan.upgrade.cattle.io/follow"] == st["latestHash"]

            broken = condition(plans["system-upgrade/broken"], "LatestResolved")
            assert broken["status"] == "False" and "withdrawn" in broken["message"], broken
            assert not any(
                "plan.upgrade.cattle.io/broken" in rig.cluster.objects["nodes"][n]["metadata"]["labels"]
                for n in NODES
            )
    finally:
        await channels.stop()
