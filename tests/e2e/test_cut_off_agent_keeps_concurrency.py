"""An agent node cut off from the network mid-upgrade does not make the coordinator exceed `concurrency`.

Runs with `--netns` (each agent in its own network namespace; needs root). Aspects covered (kubectl
watch of Nodes):
- the agent of the first cordoned agent node is cut off (its veth taken down) while it upgrades;
- for longer than the coordinator's agent heartbeat timeout, no second agent node is cordoned;
- after the cable is plugged back the rollout finishes: every agent node on the target, labelled;
- over the whole run, never more than one agent node cordoned at once.
"""

from __future__ import annotations

import time

import pytest

from sandbox import netns
from sandbox.cluster import NAMESPACE, wait_for
from sandbox.progress import NodeWatch, build_snapshot, finished
from tests.e2e.conftest import MakeSandbox, intervals, max_overlap, plan_manifest

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"
HEARTBEAT = 3.0

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and the ip tool")


def test_cut_off_agent(make_sandbox: MakeSandbox) -> None:
    from sandbox.cluster import SandboxConfig

    args = list(SandboxConfig().coordinator_args)
    args[args.index("--agent-heartbeat-timeout") + 1] = str(HEARTBEAT)
    args.append("--allow-agent-skew")  # only the agents are upgraded here; the server stays older
    sandbox = make_sandbox(servers=1, agents=2, from_version=OLD, versions=(OLD, NEW), netns=True,
                           api_on_server=False,
                           coordinator_args=tuple(args))
    assert sandbox.fabric is not None
    watch = NodeWatch(sandbox.kubeconfig)
    watch.start()
    watch.wait_listed(3)  # before the Plan: no change of a Node is missed
    try:
        sandbox.kubectl.apply(plan_manifest("agent-plan", servers=False, version=NEW))

        def cordoned_agent() -> str | None:
            return next((n for n, s in watch.history().items()
                         if n.startswith("agent") and s[-1][1].cordoned), None)

        node = wait_for("no agent node was cordoned", cordoned_agent, 60, 0.05)
        index = sandbox.nodes[node].index
        sandbox.fabric.cut(index)
        cut_at = time.monotonic()
        # observe for well past the heartbeat timeout: the coordinator must not start the other node
        wait_for("", lambda: time.monotonic() - cut_at > 3 * HEARTBEAT + 2, 30, 0.2)
        history = watch.history()
        others = [n for n in history if n.startswith("agent") and n != node]
        for other in others:
            assert intervals(history[other], "cordoned") == [], f"{other} started while {node} was cut off"
        sandbox.fabric.restore(index)

        def done() -> bool:
            plans = sandbox.kubectl.json("get", "plans", "-n", NAMESPACE)["items"]
            nodes = sandbox.kubectl.json("get", "nodes")["items"]
            return finished(build_snapshot(plans, nodes), ["agent-plan"])

        wait_for("the rollout did not finish after the network came back", done, 90, 0.5)
    finally:
        watch.stop()
    history = watch.history()
    spans = [span for n in history if n.startswith("agent") for span in intervals(history[n], "cordoned")]
    assert max_overlap(spans) <= 1, f"more than one agent node cordoned at once: {spans}"
