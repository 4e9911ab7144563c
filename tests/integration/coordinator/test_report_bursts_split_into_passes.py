"""A burst of agent reports is stored by several passes, each taking at most `reports_per_pass` of them,
through the real runtime and broker: the nodes a pass hands off together come back together, so a pass
that took every report of a wave would keep that wave's last node waiting behind all the others.

Aspects: ten leases of a plan with ten slots (four reports per pass) reported `staged` at the same moment:
every report is answered (`apply`: the plan does not cordon), no pass took more than four, and the passes
right after the first took the rest without waiting for anything else to wake the loop; a report that
arrives as a pass fails (the lease table could not be read) is stored by the pass after the loop's
one-second pause, not at the next resync.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import coordinator.reconciler as reconciler
from coordinator.engine import Decision, World
from coordinator.kube.errors import KubeUnavailable
from coordinator.kube.resources import PLANS
from coordinator.leasing import LeasePhase
from tests.integration.coordinator.harness import Rig, coordinator, plan_manifest
from wire.messages import Action, AgentPhase, AgentState, Report

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NAMES = [f"node-{i}" for i in range(10)]


async def granted(rig: Rig, names: list[str]) -> dict[str, str]:
    """Put a plan with a slot per node, poll as each node's agent until all are told to stage: leases."""
    rig.cluster.put(PLANS, plan_manifest("p", NEW, concurrency=len(names)))
    leases: dict[str, str] = {}
    for _ in range(100):  # the grants need the agents seen alive and the checksum fetched
        for n in names:
            state = AgentState(node=n, agent_version="t", arch="amd64", k3s_version=OLD)
            ins = await rig.runtime.broker.poll(state, 0)
            if ins.action is Action.STAGE and ins.lease is not None:
                leases[n] = ins.lease.lease_id
        if len(leases) == len(names):
            return leases
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every node granted: {leases}")


async def test_ten_reports_at_once_take_three_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NAMES]) as rig:
        rt = rig.runtime
        leases = await granted(rig, NAMES)
        assert reconciler.reports_per_pass(rt._slots) == 4

        taken: list[int] = []  # reports each pass applied: its leases `staged` in the World it decides on
        decide = reconciler.decide

        def counting_decide(world: World) -> Decision:
            taken.append(sum(1 for le in world.table.leases if le.phase is LeasePhase.STAGED))
            return decide(world)

        monkeypatch.setattr(reconciler, "decide", counting_decide)
        reports = [Report(node=n, lease_id=leases[n], phase=AgentPhase.STAGED) for n in NAMES]
        answers = await asyncio.wait_for(asyncio.gather(*(rt.broker.report(r) for r in reports)), 10)

        assert [a.action for a in answers] == [Action.APPLY] * len(NAMES)
        table = await rt.current_table()
        assert {le.node: le.phase for le in table.leases} == dict.fromkeys(NAMES, LeasePhase.APPLYING)
        burst = [k for k in taken if k]
        assert sum(burst) == len(NAMES) and max(burst) <= 4, taken
        assert len(burst) == 3, taken  # 4 + 4 + 2: each pass wakes the next while reports wait


async def test_a_report_met_by_a_failed_pass_is_stored_after_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--resync-interval", "6")  # a report waits up to 6 s for its pass (submit's timeout)
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)], *args) as rig:
        rt = rig.runtime
        leases = await granted(rig, ["node-1"])
        stored_table, failed = rt.stored_table, []

        async def fails_once():  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(True)
                raise KubeUnavailable("get lease: 503 the API server is restarting", 503)
            return await stored_table()

        monkeypatch.setattr(rt, "stored_table", fails_once)
        report = Report(node="node-1", lease_id=leases["node-1"], phase=AgentPhase.STAGED)
        started = asyncio.get_running_loop().time()
        answer = await asyncio.wait_for(rt.broker.report(report), 10)
        took = asyncio.get_running_loop().time() - started
        assert failed and answer.action is Action.APPLY
        assert 1.0 <= took < 3.0, took  # the loop's pause after a failure, not the 6-s resync
