"""Every decision has one shape, however many leases move: [table] effects [table] afterwards, also
when it grants nodes that prefetched the binary (their cordons are among the effects).

Aspects: at most two lease-table writes per pass (so a rollout of 50 nodes at once does not cost 50
writes per phase), also when a grant goes ahead at once (a node that holds the binary is granted,
cordoned in the round that labels the node whose slot it takes, and stored `applying` in the one table
write after it); Node patches and failure Events sit between the two; Plan status, grant and upgraded
Events and StartDrain come after the last table write; a node's slot is handed to the next node in the
same pass that labels and releases it (and, if it prefetched, goes ahead in that pass too). Agent reports
the pass has not stored yet are stored by its table writes: a `restarted` report with the release (not
in a write of its own before the label), a failure report before the uncordon it causes.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from coordinator.engine import (
    EngineSettings,
    EventWrite,
    NodePatch,
    PlanStatusWrite,
    StartDrain,
    TableWrite,
    World,
    Write,
    decide,
)
from coordinator.leasing import Lease, LeasePhase, apply_report
from wire.messages import AgentPhase, Report

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
    """T = table, C = cordon, E = other effect (Node patch, failure Event), A = afterwards (status,
    announcements, drains)."""
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
        elif isinstance(w, NodePatch) and w.unschedulable is True:
            out.append("C")
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


@pytest.mark.parametrize("waves", [0, 1])
def test_at_most_two_table_writes_per_pass_whatever_moves(waves: int) -> None:
    for drain in (False, True):
        sim = Sim(cluster(30), [plan(10, drain)], EngineSettings(agent_heartbeat=30, verify=60,
                                                                  prefetch_waves=waves))
        shapes = run(sim, 40)
        # [T] E* [T] A*: effects never follow the last table write, nothing but T precedes effects.
        assert all(re.fullmatch(r"T?[EC]*T?A*", s) for s in shapes), shapes
        if waves:
            # Once a wave held the binary before its turn, the pass that labels the nodes before it also
            # cordons it, in the same round, and stores it `applying` in its one table write (with a drain,
            # `draining`; the drains start afterwards).
            assert any(re.fullmatch(r"E{10}C{10}TA+", s) for s in shapes), shapes
        # Ten leases move at once, and still a pass has at most two table writes.
        assert any(s.count("E") + s.count("C") >= 10 for s in shapes), shapes
        assert all(n.labels.get("plan.upgrade.cattle.io/p") for n in sim.nodes.values())


@pytest.mark.parametrize("waves", [0, 1])
def test_a_released_slot_is_granted_in_the_same_pass(waves: int) -> None:
    sim = Sim(cluster(3), [plan(1)], EngineSettings(agent_heartbeat=30, verify=60, prefetch_waves=waves))
    for _ in range(20):
        before = {le.node for le in sim.table.leases if le.active}
        sim.step()
        after = {le.node for le in sim.table.leases if le.active}
        if before and after and before != after:
            # one pass labelled the old node and granted the next one
            (old,) = before
            (new,) = after
            assert sim.nodes[old].labels.get("plan.upgrade.cattle.io/p")
            lease = sim.table.active_for_node(new)
            assert lease is not None
            if waves == 0:
                assert lease.phase is LeasePhase.GRANTED
            else:  # its agent held the binary: cordoned, and told to apply, in that pass
                assert lease.phase is LeasePhase.APPLYING and lease.cordoned_by_us
                assert sim.nodes[new].unschedulable
            return
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
    raise AssertionError("no hand-off seen in 20 passes")


def test_nodes_that_go_ahead_at_once_start_their_drain_in_that_pass() -> None:
    sim = Sim(cluster(3), [plan(1, drain=True)], EngineSettings(agent_heartbeat=30, verify=60,
                                                                 prefetch_waves=1))
    for _ in range(20):  # up to the pass that releases a node and lets the next, which prefetched, go ahead
        world = sim.world()
        restarted = [le for le in world.table.leases if le.phase is LeasePhase.RESTARTED]
        if restarted and any(n.prefetched for n in sim.nodes.values()):
            break
        sim.step()
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
    else:
        raise AssertionError("no hand-off seen in 20 passes")
    writes = decide(world).writes
    last = [w for w in writes if isinstance(w, TableWrite)][-1]
    (new,) = [le for le in last.table.leases if le.node != restarted[0].node]
    assert new.phase is LeasePhase.DRAINING and new.cordoned_by_us
    assert [w.node for w in writes if isinstance(w, StartDrain)] == [new.node]


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


# -- agent reports not stored yet (World.stored): the decision's table writes store them -----------------


def applying() -> tuple[Sim, World, Lease]:
    """One node whose lease is `applying` (cordoned by us), as stored; its agent has not reported since."""
    sim = Sim(cluster(1), [plan(1)])
    for _ in range(10):
        sim.agent_poll("n00")  # seen alive; stages when granted
        sim.step()
        lease = next(iter(sim.table.leases), None)
        if lease is not None and lease.phase is LeasePhase.APPLYING:
            return sim, sim.world(), lease
        sim.tick(1)
    raise AssertionError(f"no lease reached applying: {sim.table}")


def reported(world: World, lease: Lease, phase: AgentPhase, error: str | None = None) -> World:
    report = Report(node=lease.node, lease_id=lease.lease_id, phase=phase, error=error)
    return replace(world, table=apply_report(world.table, report, world.now), stored=world.table)


def test_restarted_report_is_stored_with_the_release_not_before_the_label() -> None:
    sim, _, lease = applying()
    sim.nodes["n00"].version = lease.target_version  # back Ready on the target; `restarted` not stored yet
    world = reported(sim.world(), lease, AgentPhase.RESTARTED)
    writes = decide(world).writes
    assert shape(writes).rstrip("A") == "ET", writes  # label (+uncordon), then one table write
    assert isinstance(writes[0], NodePatch) and writes[0].labels
    table = next(w.table for w in writes if isinstance(w, TableWrite))
    assert table.by_id(lease.lease_id) is None and table.finished["n00"].phase is LeasePhase.VERIFIED


def test_restarted_report_alone_is_stored() -> None:
    _, world, lease = applying()  # the node still runs the old version: nothing to verify yet
    writes = decide(reported(world, lease, AgentPhase.RESTARTED)).writes
    tables = [w.table for w in writes if isinstance(w, TableWrite)]
    stored = tables[0].by_id(lease.lease_id) if len(tables) == 1 else None
    assert stored is not None and stored.phase is LeasePhase.RESTARTED


def test_failed_report_is_stored_before_the_uncordon() -> None:
    _, world, lease = applying()
    assert lease.cordoned_by_us
    writes = decide(reported(world, lease, AgentPhase.FAILED, "k3s did not start")).writes
    assert isinstance(writes[0], TableWrite), writes
    assert writes[0].table.by_id(lease.lease_id).phase is LeasePhase.FAILED  # type: ignore[union-attr]
    assert any(isinstance(w, NodePatch) and w.unschedulable is False for w in writes[1:])


def test_without_reports_nothing_is_written_for_them() -> None:
    _, world, _ = applying()
    assert not any(isinstance(w, TableWrite) for w in decide(replace(world, stored=world.table)).writes)
