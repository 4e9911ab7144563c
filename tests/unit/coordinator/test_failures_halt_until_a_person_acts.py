"""Failure handling and lease lifetime in the engine (issue 3 item 6).

Aspects:
- a rolled-back node halts the plan with Complete=False/JobFailed naming node and cause; Warning Events
  on Plan and Node are published once; the node is uncordoned because we cordoned it;
- the retry annotation clears the record (and is removed); a failure budget lets other nodes go on;
- a node an admin had cordoned is never uncordoned by us; cordonedByUs is written before the cordon;
- a failed drain fails the lease; a node that does not verify in time is rolled back;
- a silent agent loses a granted lease (grace counted from the coordinator start after a restart), but a
  disrupted node keeps its slot; a deleted node's lease is reclaimed (past the cordon, after the verify
  timeout);
- postCompleteDelay holds the slot; no grants outside the window;
- postCompleteLabels are substituted (version munged `+` -> `-`).
"""

from __future__ import annotations

import copy
from typing import Any

from coordinator.engine import (
    RETRY_ANNOTATION,
    DrainOutcome,
    EngineSettings,
    EventWrite,
    NodePatch,
    TableWrite,
    decide,
)
from coordinator.leasing import LeasePhase, instruction_for
from coordinator.status import condition_of
from wire.messages import Action, AgentState

from .cluster_sim import Sim, SimNode

PLAN: dict[str, Any] = {
    "metadata": {"name": "p", "uid": "pu"},
    "spec": {"concurrency": 1, "cordon": True, "version": "v1.30.2+k3s1", "serviceAccountName": "sa",
             "upgrade": {"image": "rancher/k3s-upgrade"}},
}


def make(n: int = 3, **spec: Any) -> Sim:
    plan = copy.deepcopy(PLAN)
    plan["spec"].update(spec)
    return Sim([SimNode(f"n{i}", f"u{i}", {}, "v1.30.1+k3s1") for i in range(n)], [plan],
               EngineSettings(agent_heartbeat=30, verify=60))


def rounds(sim: Sim, k: int, outcome: dict[str, str] | None = None, tick: float = 1) -> None:
    for _ in range(k):
        sim.step()
        for name in list(sim.nodes):
            sim.agent_poll(name, (outcome or {}).get(name, "ok"))
        sim.tick(tick)


def leased(sim: Sim) -> str:
    (lease,) = [le for le in sim.table.leases if le.active]
    return lease.node


def test_rollback_halts_plan_until_retry_annotation() -> None:
    sim = make()
    rounds(sim, 2)
    victim = leased(sim)
    rounds(sim, 3, {victim: "fail"})
    rec = [le for le in sim.table.leases if le.node == victim]
    assert rec and rec[0].phase is LeasePhase.ROLLED_BACK
    complete = condition_of(sim.plans["p"]["status"], "Complete")
    assert complete is not None and complete["reason"] == "JobFailed" and victim in complete["message"]
    assert "k3s did not start" in complete["message"]
    warnings = [e for e in sim.events if e.type == "Warning"]
    assert {(e.kind, e.name) for e in warnings} == {("Plan", "p"), ("Node", victim)}
    assert not sim.nodes[victim].unschedulable
    rounds(sim, 10)
    assert not any(le.active for le in sim.table.leases), "halted plan must not grant"
    assert len([e for e in sim.events if e.type == "Warning"]) == 2, "events published once"
    sim.nodes[victim].annotations[RETRY_ANNOTATION] = "now"
    rounds(sim, 40)
    assert RETRY_ANNOTATION not in sim.nodes[victim].annotations
    assert sim.complete("p")


def test_failure_budget_lets_others_continue() -> None:
    sim = make()
    sim.plans["p"]["metadata"]["annotations"] = {"upgrade.k3s.io/failure-budget": "1"}
    rounds(sim, 2)
    victim = leased(sim)
    rounds(sim, 30, {victim: "fail"})
    others = [n for n in sim.nodes.values() if n.name != victim]
    assert all(n.version == "v1.30.2+k3s1" for n in others)
    assert not sim.complete("p")


def test_admin_cordoned_node_stays_cordoned() -> None:
    sim = make(1)
    sim.nodes["n0"].unschedulable = True
    rounds(sim, 8)
    assert sim.nodes["n0"].version == "v1.30.2+k3s1" and sim.complete("p")
    assert sim.nodes["n0"].unschedulable


def test_cordoned_by_us_is_recorded_before_the_cordon() -> None:
    sim = make(1)
    rounds(sim, 2)
    writes = sim.step().writes
    cordon = next(i for i, w in enumerate(writes) if isinstance(w, NodePatch) and w.unschedulable)
    before = [w for w in writes[:cordon] if isinstance(w, TableWrite)]
    assert before and before[-1].table.leases[0].cordoned_by_us


def test_failed_drain_fails_lease_and_uncordons() -> None:
    sim = make(1, drain={"force": True})
    rounds(sim, 2)
    lease = sim.table.leases[0]
    sim.step()
    assert sim.table.leases[0].phase is LeasePhase.DRAINING and sim.nodes["n0"].unschedulable
    sim.drains[lease.lease_id] = DrainOutcome(ok=False, message="PDB web blocks eviction")
    sim.step()
    failed = sim.table.leases[0]
    assert failed.phase is LeasePhase.FAILED, failed
    assert "PDB web" in failed.cause and not sim.nodes["n0"].unschedulable


def test_node_not_verified_in_time_is_rolled_back() -> None:
    sim = make(1)
    sim.nodes["n0"].healthy_upgrades = False
    rounds(sim, 3)
    assert sim.table.leases[0].phase is LeasePhase.RESTARTED
    sim.tick(61)
    sim.step()
    lease = sim.table.leases[0]
    assert lease.phase is LeasePhase.ROLLING_BACK and "not Ready on v1.30.2+k3s1" in lease.cause
    state = AgentState(node="n0", agent_version="t", arch="amd64", lease_id=lease.lease_id, phase="restarted")
    assert instruction_for("n0", sim.table, state, sim.now).action is Action.ROLLBACK


def test_silent_agent_loses_granted_lease_but_disrupted_node_keeps_slot() -> None:
    sim = make(2)
    rounds(sim, 1)
    sim.step()
    node = leased(sim)
    sim.tick(31)
    sim.step()
    assert not any(le.node == node for le in sim.table.leases)
    # restart: no agents known, a granted lease survives the grace period from the restart
    sim = make(2)
    rounds(sim, 1)
    sim.step()
    sim.tick(25)
    sim.restart_coordinator()
    sim.tick(20)
    sim.step()
    assert any(le.phase is LeasePhase.GRANTED for le in sim.table.leases)
    # disrupted (applying onwards): keeps its slot however long the agent is silent
    sim = make(1)
    rounds(sim, 2)
    sim.step()  # staged -> draining -> applying
    assert sim.table.leases[0].phase is LeasePhase.APPLYING
    sim.tick(3600)
    sim.restart_coordinator()
    sim.step()
    assert sim.table.leases[0].phase is LeasePhase.APPLYING


def test_deleted_node_lease_is_reclaimed() -> None:
    sim = make(2)
    rounds(sim, 3)
    node = leased(sim)
    del sim.nodes[node]
    sim.step()  # disrupted already: it keeps its slot until it registers again
    assert any(le.node == node for le in sim.table.leases)
    sim.tick(sim.settings.verify + 1)
    sim.step()
    assert not any(le.node == node for le in sim.table.leases)


def test_post_complete_delay_holds_the_slot() -> None:
    sim = make(2, postCompleteDelay="5m")
    rounds(sim, 4)
    first = [le for le in sim.table.leases]
    assert first and first[0].phase is LeasePhase.VERIFIED
    rounds(sim, 10, tick=10)
    assert [le.lease_id for le in sim.table.leases] == [first[0].lease_id]
    rounds(sim, 1, tick=300)
    rounds(sim, 1)
    assert first[0].lease_id not in {le.lease_id for le in sim.table.leases}


def test_no_grants_outside_the_window() -> None:
    sim = make(1, window={"days": ["saturday"], "startTime": "01:00", "endTime": "02:00"})
    rounds(sim, 5)
    assert sim.table.leases == ()
    complete = condition_of(sim.plans["p"]["status"], "Complete")
    assert complete is not None and complete["reason"] == "Waiting"


def test_decide_is_pure_and_deterministic() -> None:
    sim = make(3)
    rounds(sim, 2)
    world = sim.world()
    assert decide(world) == decide(world)
    assert all(not isinstance(w, EventWrite) or w.namespace == "system-upgrade" for w in decide(world).writes)


def test_post_complete_labels_are_substituted_and_valid() -> None:
    sim = make(1, postCompleteLabels={"k3s.io/version": "$(LATEST_VERSION)", "done-hash": "$(LATEST_HASH)"})
    rounds(sim, 5)
    labels = sim.nodes["n0"].labels
    assert labels["k3s.io/version"] == "v1.30.2-k3s1"
    assert labels["done-hash"] == sim.plans["p"]["status"]["latestHash"] == labels["plan.upgrade.cattle.io/p"]
