"""Every decision has one shape, however many leases move: [table] effects [table] afterwards.

Aspects: at most two lease-table writes per pass (so a rollout of 50 nodes at once does not cost 50
writes per phase); Node patches and failure Events sit between the two; Plan status, grant and upgraded
Events and StartDrain come after the last table write; a node's slot is handed to the next node in the
same pass that labels and releases it.
"""

from __future__ import annotations

from typing import Any

from coordinator.engine import EventWrite, NodePatch, PlanStatusWrite, StartDrain, TableWrite, Write
from coordinator.leasing import LeasePhase

from .cluster_sim import Sim, SimNode


def plan(concurrency: int, drain: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "concurrency": concurrency,
        "cordon": True,
        "version": "v1.24.6+k3s1",
        "serviceAccountName": "system-upgrade",
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
    }
    if drain:
        spec["drain"] = {"force": True}
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "uid-p"},
        "spec": spec,
    }


def cluster(n: int) -> list[SimNode]:
    return [SimNode(f"n{i:02d}", f"uid-{i}", {"pool": "a"}, "v1.23.9+k3s1") for i in range(n)]


def shape(writes: tuple[Write, ...]) -> str:
    """T = table, E = effect (Node patch, failure Event), A = afterwards (status, announcements, drains)."""
    out = []
    for w in writes:
        if isinstance(w, TableWrite):
            out.append("T")
        elif isinstance(w, (PlanStatusWrite, StartDrain)) or (
            isinstance(w, EventWrite) and w.reason in ("LeaseGranted", "Upgraded")
        ):
            out.append("A")
        elif isinstance(w, NodePatch) and not w.labels and w.unschedulable is None:
            out.append("A")  # the retry annotation's removal
        else:
            out.append("E")
    return "".join(out)


def run(sim: Sim, steps: int) -> list[str]:
    shapes = []
    for _ in range(steps):
        shapes.append(shape(sim.step().writes))
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
    return shapes


def test_at_most_two_table_writes_per_pass_whatever_moves() -> None:
    for drain in (False, True):
        sim = Sim(cluster(30), [plan(10, drain)])
        shapes = run(sim, 40)
        assert all(s.count("T") <= 2 for s in shapes), shapes
        # [T] E* [T] A*: effects never follow the last table write, and nothing but T precedes effects.
        for s in shapes:
            core = s.rstrip("A")
            assert "A" not in core, s
            assert core.lstrip("T").rstrip("T").count("T") == 0, s
        # Ten leases move at once, and still a pass has at most two table writes.
        assert any(s.count("E") >= 10 for s in shapes), shapes
        assert all(n.labels.get("plan.upgrade.cattle.io/p") for n in sim.nodes.values())


def test_a_released_slot_is_granted_in_the_same_pass() -> None:
    sim = Sim(cluster(3), [plan(1)])
    for _ in range(20):
        before = {le.node for le in sim.table.leases if le.active}
        sim.step()
        after = {le.node for le in sim.table.leases if le.active}
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
        if before and after and before != after:
            # one pass labelled the old node and granted the next one
            (old,) = before
            (new,) = after
            assert sim.nodes[old].labels.get("plan.upgrade.cattle.io/p")
            assert sim.table.active_for_node(new) is not None
            assert sim.table.active_for_node(new).phase in (LeasePhase.GRANTED, LeasePhase.STAGED)  # type: ignore[union-attr]
            return
    raise AssertionError("no hand-off seen in 20 passes")


def test_one_grant_event_per_plan_and_pass_naming_the_nodes() -> None:
    sim = Sim(cluster(30), [plan(10)])
    for name in sim.nodes:
        sim.agent_poll(name)  # grants go to nodes whose agent is alive
    sim.step()
    (event,) = [e for e in sim.events if e.reason == "LeaseGranted"]
    granted = sorted(le.node for le in sim.table.leases)
    assert len(granted) == 10
    assert event.message.startswith("upgrade to v1.24.6+k3s1 granted to 10 nodes: ")
    assert sorted(event.message.split(": ", 1)[1].split(", ")) == granted


def test_grant_message_fits_an_event() -> None:
    from coordinator.engine import granted_message

    assert granted_message(["a"], "v1") == "node a: upgrade to v1 granted"
    many = [f"node-{i:05d}" for i in range(200)]
    msg = granted_message(many, "v1.30.4+k3s1")
    assert len(msg) <= 900 and msg.endswith(" more") and "node-00000, node-00001" in msg
    shown = msg.split(": ", 1)[1].rsplit(" and ", 1)
    assert len(shown[0].split(", ")) + int(shown[1].split()[0]) == 200


def test_grants_stop_at_the_lease_table_limit(monkeypatch: Any) -> None:
    from coordinator import engine

    monkeypatch.setattr(engine, "MAX_ACTIVE_LEASES", 3)
    sim = Sim(cluster(10), [plan(10)])
    for name in sim.nodes:
        sim.agent_poll(name)
    sim.step()
    assert len([le for le in sim.table.leases if le.active]) == 3
    sim.step()  # the table is full: the plan waits and says why
    conds = {c["type"]: c for c in sim.plans["p"]["status"]["conditions"]}
    assert conds["Complete"]["reason"] == "Waiting"
    assert "3 leases in flight, its limit" in conds["Complete"]["message"]
