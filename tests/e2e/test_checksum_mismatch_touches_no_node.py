"""A release whose binary does not match its published checksum never touches a node.

Aspects covered (observed with a kubectl watch of Nodes and kubectl reads of the Plan):
- the plan reports the failure (a condition or Event that mentions the checksum);
- no node is cordoned, goes NotReady or changes version; all stay Ready on the old version.
"""

from __future__ import annotations

from sandbox.cluster import NAMESPACE, wait_for
from sandbox.progress import NodeWatch
from tests.e2e.conftest import MakeSandbox, first_time, plan_manifest

OLD, NEW = "v1.24.4+k3s1", "v1.24.6+k3s1"


def test_corrupt_download_changes_nothing(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(servers=2, agents=0, from_version=OLD, versions=(OLD, NEW))
    assert sandbox.releases is not None
    sandbox.releases.corrupt(NEW, "k3s")
    watch = NodeWatch(sandbox.kubeconfig)
    watch.start()
    watch.wait_listed(2)  # before the Plan: no change of a Node is missed
    try:
        sandbox.kubectl.apply(plan_manifest("server-plan", servers=True, version=NEW))

        def reported() -> bool:
            text = sandbox.kubectl.run("describe", "plan", "server-plan", "-n", NAMESPACE).lower()
            return "checksum" in text or "sha256" in text

        wait_for("the plan did not report the checksum mismatch", reported, 45, 0.5)
        history = watch.history()
        assert sorted(history) == ["server-1", "server-2"]
        for node, seq in history.items():
            ready_at = first_time(seq, lambda v: v.ready) or 0.0
            assert all(not v.cordoned for _, v in seq), f"{node} was cordoned"
            assert all(v.version == OLD for _, v in seq), f"{node} changed version"
            assert all(v.ready for at, v in seq if at > ready_at), f"{node} restarted"
        sandbox.wait_nodes_ready(OLD, timeout=5)
    finally:
        watch.stop()
