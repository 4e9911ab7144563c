"""A single-server cluster upgrades the node that serves its own API.

In a single-server sandbox the API server lives and dies with the server node's k3s (as on a real
single-server k3s): while the node restarts onto the new version the API is down, then it comes back with
its state. Aspects covered (kubectl only):
- the API server was restarted at least once during the rollout (it went down with the node);
- the Plan, the node label and the agent's objects survived the restart (state kept);
- the server and the agent node both end on the target version with their plans' hash labels;
- the seed's two Plans, verbatim, drive it (the agent plan waits for the server plan).
"""

from __future__ import annotations

from pathlib import Path

from sandbox.cluster import NAMESPACE, wait_for
from sandbox.progress import build_snapshot, finished
from tests.e2e.conftest import MakeSandbox

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"
SEED = Path(__file__).resolve().parents[2] / "sandbox" / "seed_plans.yaml"


def test_single_server_upgrade(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(servers=1, agents=1, from_version=OLD, versions=(OLD, NEW))
    assert sandbox.api_on_server
    sandbox.kubectl.run("apply", "-f", str(SEED))

    def done() -> bool:  # kubectl errors while the API is down are retried by wait_for
        plans = sandbox.kubectl.json("get", "plans", "-n", NAMESPACE)["items"]
        nodes = sandbox.kubectl.json("get", "nodes")["items"]
        return finished(build_snapshot(plans, nodes), ["server-plan", "agent-plan"])

    wait_for("the single-server rollout did not finish", done, 120, 0.5)
    assert sandbox.api_restarts >= 1, "the API server never went down with its node"
    names = sandbox.kubectl.run("get", "pods", "-n", NAMESPACE, "-o", "name")
    assert "pod/k3s-upgrade-agent-server-1" in names, "state lost across the API server restart"
