"""`jobActiveDeadlineSecs`: the time a lease may take from its grant until its node is told to apply.

SUC sets it as its Job's `activeDeadlineSeconds` (the Plan's value; unset: the controller's default, 900 s
in its manifest; 0: none; at most the controller's maximum when one is set), and a Job past it fails and
stops the Plan. Here the same deadline bounds the download, the cordon and the drain; from `applying` on,
the restart and verification timeouts bound the upgrade (it ends in a rollback, never half-done).

Aspects:
- `job_deadline` computes the deadline as SUC does, for every combination that matters;
- a drain still running past the deadline fails its lease: the node is uncordoned, Warning Events name
  the cause, the Plan's `Complete` condition is False with reason JobFailed and that message, and the plan
  grants nothing more; one second before the deadline it is still draining;
- a download past the deadline fails its lease (the agent alive all along);
- an applying lease is never failed by the deadline; a drain done in time is not failed by the pass that
  sees it later; a coordinator away counts the deadline again from its start (the drain is its own);
- `jobActiveDeadlineSecs: 0` means no deadline even with a controller default; a Plan's own value
  overrides the default; a negative value is refused at validation.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from coordinator.engine import AgentView, DrainOutcome, EngineSettings, EventWrite, job_deadline
from coordinator.leasing import LeasePhase
from coordinator.plans import parse_plan
from coordinator.status import condition_of
from wire.messages import AgentPhase, AgentState

from .cluster_sim import Sim, SimNode

PLAN: dict[str, Any] = {
    "metadata": {"name": "p", "uid": "pu"},
    "spec": {"concurrency": 1, "version": "v1.30.2+k3s1", "serviceAccountName": "sa",
             "drain": {"force": True}, "upgrade": {"image": "rancher/k3s-upgrade"}},
}


def make(settings: EngineSettings | None = None, n: int = 2, **spec: Any) -> Sim:
    plan = copy.deepcopy(PLAN)
    plan["spec"].update(spec)
    return Sim([SimNode(f"n{i}", f"u{i}", {}, "v1.30.1+k3s1") for i in range(n)], [plan],
               settings or EngineSettings(agent_heartbeat=30, verify=60, job_deadline=900))


def only_lease(sim: Sim) -> Any:
    (lease,) = sim.table.leases
    return lease


def keep_draining(sim: Sim, seconds: float, step: float = 10) -> None:
    """Passes every `step` seconds with the drain still running (no outcome) and the agent polling."""
    lease = only_lease(sim)
    waited = 0.0
    while waited < seconds:
        sim.drains.pop(lease.lease_id, None)
        sim.tick(step)
        waited += step
        sim.agent_poll(lease.node)
        sim.step()
        sim.drains.pop(lease.lease_id, None)


def polled(sim: Sim) -> None:
    for name in sim.nodes:
        sim.agent_poll(name)


def start_drain(sim: Sim) -> Any:
    polled(sim)
    sim.step()  # granted
    polled(sim)  # the granted agent stages at once
    sim.step()  # staged -> draining: cordon, StartDrain (the simulator answers it: undone below)
    lease = only_lease(sim)
    sim.drains.pop(lease.lease_id, None)
    assert lease.phase is LeasePhase.DRAINING and sim.nodes[lease.node].unschedulable
    return lease


@pytest.mark.parametrize(
    ("asked", "default", "maximum", "expected"),
    [
        (None, 900, 0, 900),  # unset: the controller's default
        (None, 0, 0, 0),  # ... which may be none
        (120, 900, 0, 120),  # the Plan's own
        (3600, 900, 0, 3600),  # longer than the default too
        (0, 900, 0, 0),  # 0: no deadline
        (3600, 900, 1800, 1800),  # at most the maximum
        (None, 900, 600, 600),  # the default too
        (0, 900, 600, 0),  # SUC clamps only a deadline above the maximum
        (300, 900, 600, 300),
    ],
)
def test_deadline_as_suc_computes_it(
    asked: int | None, default: float, maximum: float, expected: float
) -> None:
    settings = EngineSettings(job_deadline=default, job_deadline_max=maximum)
    assert job_deadline(asked, settings) == expected


def test_a_drain_past_the_deadline_fails_its_lease_and_stops_the_plan() -> None:
    sim = make()
    lease = start_drain(sim)
    node = lease.node
    keep_draining(sim, 890)
    assert only_lease(sim).phase is LeasePhase.DRAINING and sim.nodes[node].unschedulable
    sim.events.clear()
    keep_draining(sim, 20)
    failed = only_lease(sim)
    assert failed.phase is LeasePhase.FAILED
    expected = (f"node {node}: the drain did not finish within the job deadline of 900s from the grant "
                "(jobActiveDeadlineSecs)")
    assert failed.cause == expected
    assert not sim.nodes[node].unschedulable
    warnings = {(e.kind, e.reason) for e in sim.events if isinstance(e, EventWrite) and e.type == "Warning"}
    assert warnings == {("Plan", "UpgradeFailed"), ("Node", "UpgradeFailed")}
    complete = condition_of(sim.plans["p"]["status"], "Complete")
    assert complete is not None and complete["status"] == "False" and complete["reason"] == "JobFailed"
    assert expected in complete["message"]
    for _ in range(10):
        sim.tick(60)
        polled(sim)
        sim.step()
    assert [le.lease_id for le in sim.table.leases] == [lease.lease_id]  # nothing more granted


def test_a_download_past_the_deadline_fails_its_lease() -> None:
    sim = make(EngineSettings(agent_heartbeat=30, verify=60, job_deadline=120))
    polled(sim)
    sim.step()
    lease = only_lease(sim)
    assert lease.phase is LeasePhase.GRANTED
    for _ in range(13):  # the agent downloads, alive and slow
        sim.tick(10)
        state = AgentState(node=lease.node, agent_version="t", arch="amd64", k3s_version="v1.30.1+k3s1",
                           lease_id=lease.lease_id, phase=AgentPhase.DOWNLOADING)
        sim.agents[lease.node] = AgentView(state, sim.now)
        sim.step()
        if sim.now - lease.granted_at <= timedelta(seconds=120):
            assert only_lease(sim).phase is LeasePhase.GRANTED
    failed = only_lease(sim)
    assert failed.phase is LeasePhase.FAILED
    assert "the download of the binary did not finish within the job deadline of 120s" in failed.cause


def test_an_applying_lease_is_left_to_the_restart_and_verify_timeouts() -> None:
    sim = make(EngineSettings(agent_heartbeat=30, verify=60, job_deadline=60), drain=None, cordon=True)
    polled(sim)
    sim.step()
    polled(sim)
    sim.step()  # staged -> draining -> applying (cordon only)
    assert only_lease(sim).phase is LeasePhase.APPLYING
    sim.tick(3600)
    sim.step()
    assert only_lease(sim).phase is LeasePhase.APPLYING


def test_zero_means_no_deadline_and_a_plans_own_value_wins() -> None:
    sim = make(jobActiveDeadlineSecs=0)
    start_drain(sim)
    keep_draining(sim, 10 * 3600, step=600)
    assert only_lease(sim).phase is LeasePhase.DRAINING

    sim = make(jobActiveDeadlineSecs=60)
    start_drain(sim)
    keep_draining(sim, 50)
    assert only_lease(sim).phase is LeasePhase.DRAINING
    keep_draining(sim, 20)
    assert only_lease(sim).phase is LeasePhase.FAILED
    assert "job deadline of 60s" in only_lease(sim).cause


def test_a_coordinator_away_does_not_count_against_a_drain() -> None:
    """The drain is the coordinator's: a coordinator away past the deadline (its pod rescheduled, say)
    counts the deadline again from its start, and fails the drain only if it still does not finish."""
    sim = make(EngineSettings(agent_heartbeat=30, verify=60, job_deadline=120))
    lease = start_drain(sim)
    sim.tick(600)  # no coordinator for 10 minutes
    sim.restart_coordinator()
    keep_draining(sim, 110)
    assert only_lease(sim).phase is LeasePhase.DRAINING
    keep_draining(sim, 20)
    assert only_lease(sim).phase is LeasePhase.FAILED and only_lease(sim).lease_id == lease.lease_id


def test_a_download_counts_from_its_grant_whatever_the_coordinator_did() -> None:
    """The download is the agent's: it went on while no coordinator ran, and its deadline with it."""
    sim = make(EngineSettings(agent_heartbeat=30, verify=60, job_deadline=120))
    polled(sim)
    sim.step()
    lease = only_lease(sim)
    sim.tick(100)
    sim.restart_coordinator()
    for _ in range(3):
        sim.tick(10)
        state = AgentState(node=lease.node, agent_version="t", arch="amd64", k3s_version="v1.30.1+k3s1",
                           lease_id=lease.lease_id, phase=AgentPhase.DOWNLOADING)
        sim.agents[lease.node] = AgentView(state, sim.now)
        sim.step()
    assert only_lease(sim).phase is LeasePhase.FAILED


def test_a_drain_done_in_time_is_not_failed_by_a_later_pass() -> None:
    sim = make(EngineSettings(agent_heartbeat=30, verify=60, job_deadline=120))
    lease = start_drain(sim)
    keep_draining(sim, 110)
    sim.drains[lease.lease_id] = DrainOutcome(ok=True)  # done; the next pass comes after the deadline
    sim.tick(30)
    polled(sim)
    sim.step()
    assert only_lease(sim).phase is LeasePhase.APPLYING


def test_a_negative_deadline_is_refused_naming_the_field() -> None:
    plan = copy.deepcopy(PLAN)
    plan["spec"]["jobActiveDeadlineSecs"] = -1
    parsed, errors = parse_plan(plan)
    assert parsed is None
    assert errors == ["spec.jobActiveDeadlineSecs: -1 is negative (0: no deadline)"]
