"""The coordinator SIGKILLed three times mid-rollout, and an agent SIGKILLed mid-upgrade: the rollout
still finishes correctly.

Aspects covered (kubectl watch of Nodes, kubectl reads of Plans):
- the coordinator is killed (SIGKILL) each time a new node gets cordoned, three times, and restarted at
  the same address; one agent is killed while its node is cordoned and restarted a moment later;
- every node ends on the target version with its plan's hash label, Ready and uncordoned;
- per plan, never more than `concurrency` (1) nodes cordoned at once, across all the crashes;
- no agent node is cordoned before every server carries the server plan's hash.
"""

from __future__ import annotations

import time
from pathlib import Path

from sandbox.cluster import NAMESPACE, wait_for
from sandbox.progress import NodeWatch, build_snapshot, finished
from tests.e2e.conftest import MakeSandbox, first_time, intervals, max_overlap

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"
SEED = Path(__file__).resolve().parents[2] / "sandbox" / "seed_plans.yaml"


def test_coordinator_and_agent_crashes(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(servers=2, agents=2, from_version=OLD, versions=(OLD, NEW))
    watch = NodeWatch(sandbox.kubeconfig)
    watch.start()
    watch.wait_listed(4)  # before the Plan: no change of a Node is missed
    try:
        sandbox.kubectl.run("apply", "-f", str(SEED))
        seen: list[str] = []

        def next_cordoned() -> str | None:
            for node, seq in watch.history().items():
                if seq[-1][1].cordoned and node not in seen:
                    return node
            return None

        killed_agent = False
        for _ in range(3):
            node = wait_for("no further node was cordoned", next_cordoned, 90, 0.05)
            seen.append(node)
            if node.startswith("agent") and not killed_agent:
                sandbox.kill_agent(node)
                killed_agent = True
            sandbox.kill_coordinator()
            time.sleep(0.3)  # a crashed coordinator stays down for a moment, like a pod being rescheduled
            sandbox.start_coordinator()
            if node.startswith("agent") and sandbox.nodes[node].agent is None:
                sandbox.start_agent(node)
        if not killed_agent:
            node = wait_for("no agent node was cordoned", lambda: next(
                (n for n, s in watch.history().items() if n.startswith("agent") and s[-1][1].cordoned), None),
                90, 0.05)
            sandbox.kill_agent(node)
            time.sleep(0.3)
            sandbox.start_agent(node)

        def done() -> bool:
            plans = sandbox.kubectl.json("get", "plans", "-n", NAMESPACE)["items"]
            nodes = sandbox.kubectl.json("get", "nodes")["items"]
            return finished(build_snapshot(plans, nodes), ["server-plan", "agent-plan"])

        wait_for("the rollout did not finish after the crashes", done, 120, 0.5)
    finally:
        watch.stop()
    history = watch.history()
    servers = [n for n in history if n.startswith("server")]
    agents = [n for n in history if n.startswith("agent")]
    for group in (servers, agents):
        spans = [span for n in group for span in intervals(history[n], "cordoned")]
        assert max_overlap(spans) <= 1, f"more than one node of a plan cordoned at once: {spans}"
    servers_done = max(first_time(history[n], lambda v: "plan.upgrade.cattle.io/server-plan" in v.labels
                                  and v.version == NEW) or 0.0 for n in servers)
    first_agent_cordon = min(first_time(history[n], lambda v: v.cordoned) or float("inf") for n in agents)
    assert first_agent_cordon > servers_done
    for node, seq in history.items():
        last = seq[-1][1]
        assert last.version == NEW and last.ready and not last.cordoned, f"{node} ended as {last}"
