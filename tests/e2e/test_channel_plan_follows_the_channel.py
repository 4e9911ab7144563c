"""A Plan with `channel:` follows the channel: when the channel moves, the nodes are upgraded again.

Aspects covered (kubectl reads of the Plan and Nodes):
- the plan resolves the channel's 302 to a version (`status.latestVersion`) and upgrades to it;
- after the channel server moves `stable`, the plan re-resolves (polling interval 2 s in the sandbox),
  computes a new hash, and every node ends on the new version carrying the new hash label.
"""

from __future__ import annotations

from typing import Any

from sandbox.cluster import NAMESPACE, wait_for
from tests.e2e.conftest import MakeSandbox, plan_manifest

V1, V2, V3 = "v1.24.4+k3s1", "v1.24.6+k3s1", "v1.24.7+k3s1"
LABEL = "plan.upgrade.cattle.io/server-plan"


def test_channel_move_triggers_a_new_rollout(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(servers=2, agents=0, from_version=V1, versions=(V1, V2, V3), stable=V2)
    assert sandbox.channels is not None
    sandbox.kubectl.apply(plan_manifest("server-plan", servers=True, channel=sandbox.channels.url("stable")))

    def rolled_out(version: str) -> str | None:
        plan: dict[str, Any] = sandbox.kubectl.json("get", "plan", "server-plan", "-n", NAMESPACE)
        status = plan.get("status") or {}
        if status.get("latestVersion") != version or not status.get("latestHash"):
            return None
        nodes = sandbox.kubectl.json("get", "nodes")["items"]
        done = all(n["metadata"].get("labels", {}).get(LABEL) == status["latestHash"]
                   and n["status"]["nodeInfo"]["kubeletVersion"] == version for n in nodes)
        return str(status["latestHash"]) if done and len(nodes) == 2 else None

    first = wait_for(f"the plan did not roll out {V2} from the channel", lambda: rolled_out(V2), 90, 0.5)
    sandbox.channels.set_channel("stable", V3)
    second = wait_for(f"the plan did not follow the channel to {V3}", lambda: rolled_out(V3), 90, 0.5)
    assert second != first
    assert "stable" in sandbox.channels.requests
