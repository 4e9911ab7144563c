"""A release that crashes at start is rolled back on the first node and halts the plan.

Aspects covered (kubectl watch of Nodes, `kubectl get plan -o json`, `kubectl describe plan`):
- the first node is cordoned, restarted, and comes back Ready on the old version (rolled back);
- the plan halts: its Complete condition is False with a message naming that node and the cause,
  and `kubectl describe plan` shows Events about it;
- the second node is never cordoned nor restarted; every node ends Ready on the old version;
- the coordinator does not leave the failed node silently cordoned forever (it is uncordoned).
"""

from __future__ import annotations

from typing import Any

from sandbox.cluster import NAMESPACE, wait_for
from sandbox.progress import NodeWatch, condition
from tests.e2e.conftest import MakeSandbox, first_time, intervals, plan_manifest

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"


def test_crashing_release_is_rolled_back(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(servers=2, agents=0, from_version=OLD, versions=(OLD, NEW))
    assert sandbox.releases is not None
    sandbox.releases.set_behaviour(NEW, "crash")
    watch = NodeWatch(sandbox.kubeconfig)
    watch.start()
    watch.wait_listed(2)  # before the Plan: no change of a Node is missed
    try:
        sandbox.kubectl.apply(plan_manifest("server-plan", servers=True, version=NEW))

        def halted() -> dict[str, Any] | None:
            plan = sandbox.kubectl.json("get", "plan", "server-plan", "-n", NAMESPACE)
            cond = condition(plan, "Complete")
            touched = [n for n, seq in watch.history().items() if any(v.cordoned for _, v in seq)]
            named = any(n in cond.get("message", "") for n in touched)
            return cond if cond.get("status") == "False" and named else None

        cond = wait_for("the plan did not halt naming the failed node", halted, 90, 0.5)
        history = watch.history()
        failed = [n for n, seq in history.items() if any(v.cordoned for _, v in seq)]
        assert len(failed) == 1, f"more than the first node was touched: {failed}"
        (node,) = failed
        assert node in cond["message"]
        other = next(n for n in history if n != node)
        seq = history[node]
        ready_at = first_time(seq, lambda v: v.ready) or 0.0
        assert any(not v.ready for at, v in seq if at > ready_at), f"{node} was never restarted"

        def recovered() -> bool:
            last = watch.history()[node][-1][1]
            return last.ready and last.version == OLD and not last.cordoned

        wait_for(f"{node} did not come back Ready on {OLD} and uncordoned", recovered, 60, 0.3)
        assert all(v.version == OLD for _, v in watch.history()[node]), f"{node} reported {NEW} as Ready"
        assert intervals(history[other], "cordoned") == [], f"{other} was cordoned"
        other_ready = first_time(history[other], lambda v: v.ready) or 0.0
        assert all(v.ready for at, v in history[other] if at > other_ready), f"{other} restarted"
        described = sandbox.kubectl.run("describe", "plan", "server-plan", "-n", NAMESPACE)
        events = described.split("Events:", 1)[1] if "Events:" in described else ""
        assert node in events, f"no Event names {node}:\n{described}"
        sandbox.wait_nodes_ready(OLD, timeout=5)
    finally:
        watch.stop()
