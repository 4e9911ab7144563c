"""How the demo and the e2e tests read a rollout from Plans and Nodes (pure functions of JSON).

Aspects covered:
- label selectors: matchLabels and In / NotIn / Exists / DoesNotExist (the seed's server and agent plans);
- a node counts as done only with the plan's current hash label; `disabled` opts it out;
- `finished` needs Complete=True, every node labelled, and every node on the target version;
- `failure_of` reports halted plans and invalid/unresolved plans with their message;
- node timeline events (cordon, Ready, version, label) and the rendered view (bars, phases).
"""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.progress import (
    build_snapshot,
    failure_of,
    finished,
    node_view,
    render,
    selects,
    timeline_events,
)

MASTER = "node-role.kubernetes.io/master"
SERVERS = {"matchExpressions": [{"key": MASTER, "operator": "In", "values": ["true"]}]}
AGENTS = {"matchExpressions": [{"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}]}


def node(name: str, version: str = "v1.24.4+k3s1", *, server: bool = False, cordoned: bool = False,
         ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    all_labels = dict(labels or {})
    if server:
        all_labels["node-role.kubernetes.io/master"] = "true"
    return {"metadata": {"name": name, "labels": all_labels}, "spec": {"unschedulable": cordoned},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "nodeInfo": {"kubeletVersion": version}}}


def plan(name: str, selector: dict[str, Any], *, complete: str = "False", reason: str = "",
         message: str = "", latest_hash: str = "h1",
         extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": complete, "reason": reason, "message": message}]
    return {"metadata": {"name": name}, "spec": {"concurrency": 1, "nodeSelector": selector,
                                                 "version": "v1.24.6+k3s1"},
            "status": {"latestVersion": "v1.24.6+k3s1", "latestHash": latest_hash,
                       "conditions": conditions + (extra or [])}}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (SERVERS, {"node-role.kubernetes.io/master": "true"}, True),
        (SERVERS, {}, False),
        (AGENTS, {}, True),
        (AGENTS, {"node-role.kubernetes.io/master": "true"}, False),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        (None, {"x": "y"}, True),
    ],
)
def test_selectors(selector: dict[str, Any] | None, labels: dict[str, str], expected: bool) -> None:
    assert selects(selector, labels) is expected


def test_done_needs_the_current_hash_and_disabled_opts_out() -> None:
    nodes = [node("s1", "v1.24.6+k3s1", server=True, labels={"plan.upgrade.cattle.io/server-plan": "h1"}),
             node("s2", server=True, labels={"plan.upgrade.cattle.io/server-plan": "h0"}),
             node("s3", server=True, labels={"plan.upgrade.cattle.io/server-plan": "disabled"}),
             node("a1")]
    snap = build_snapshot([plan("server-plan", SERVERS)], nodes)
    view = snap.plans["server-plan"]
    assert view.nodes == ("s1", "s2") and view.done == ("s1",)
    assert not finished(snap, ["server-plan"])


@pytest.mark.parametrize(
    ("version", "complete", "expected"),
    [("v1.24.6+k3s1", "True", True), ("v1.24.4+k3s1", "True", False), ("v1.24.6+k3s1", "False", False)],
)
def test_finished(version: str, complete: str, expected: bool) -> None:
    nodes = [node("a1", version, labels={"plan.upgrade.cattle.io/agent-plan": "h1"})]
    snap = build_snapshot([plan("agent-plan", AGENTS, complete=complete)], nodes)
    assert finished(snap, ["agent-plan"]) is expected
    assert not finished(snap, ["agent-plan", "missing-plan"])


def test_failure_names_plan_and_cause() -> None:
    halted = plan("server-plan", SERVERS, reason="JobFailed", message="node s1: k3s did not become Ready")
    assert failure_of(build_snapshot([halted], [])) == (
        "plan server-plan: JobFailed: node s1: k3s did not become Ready")
    waiting = plan("agent-plan", AGENTS, reason="Waiting", message="waiting for server-plan")
    assert failure_of(build_snapshot([waiting], [])) is None
    bad = plan("p", AGENTS, extra=[{"type": "LatestResolved", "status": "False", "reason": "Error",
                                   "message": "channel answered 404"}])
    cause = failure_of(build_snapshot([bad], [])) or ""
    assert "LatestResolved=False (Error): channel answered 404" in cause


def test_timeline_and_render() -> None:
    before = node_view(node("a1"))
    after = node_view(node("a1", "v1.24.6+k3s1", cordoned=True, ready=False,
                           labels={"plan.upgrade.cattle.io/agent-plan": "abcdef0123456789"}))
    assert timeline_events(None, before) == ["registered on v1.24.4+k3s1"]
    assert timeline_events(before, after) == [
        "cordoned", "NotReady", "running v1.24.6+k3s1", "labelled agent-plan=abcdef012345"]
    snap = build_snapshot([plan("agent-plan", AGENTS)], [node("a1", cordoned=True), node("a2")],
                          {"plans": [{"name": "agent-plan", "nodes": [{"name": "a1", "phase": "applying"}]}]})
    text = render(snap, 3.0)
    assert "[........................] 0/2" in text
    assert "a1           applying" in text and "a2           waiting" in text
