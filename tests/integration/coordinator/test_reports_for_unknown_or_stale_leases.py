"""Reports the lease table cannot take are refused with the status docs/protocol.md promises, through the
real runtime broker.

Aspects covered:
- a report naming a lease the node does not hold -> 404 with the node and lease in the message;
- a report whose phase does not fit the lease's phase (restarted while only granted) -> 409;
- a repeated report is answered like the first (200 with the lease), and the phase was recorded: the
  pass that stores a `staged` report moves the lease on at once (no cordon here), so the stored table
  shows it `applying` and the answer already says `apply`;
- a queued report whose agent gave up waiting, refused by the pass, leaves the other reports of that pass
  their answers;
- a report carried only by a pass's second table write, which failed, is taken again by the next pass
  and answered from what is stored then.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.kube.errors import KubeError
from coordinator.kube.resources import PLANS
from coordinator.leasing import TABLE_ANNOTATION, LeasePhase, LeaseTable
from coordinator.reconciler import PendingReport
from tests.integration.coordinator.harness import Rig, coordinator, plan_manifest
from wire.messages import Action, AgentPhase, AgentState, ErrorBody, Instruction, Report

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"


async def post(url: str, body: str, node: str = "node-1") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer tok-{node}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.read()


PLAN = plan_manifest("p", NEW)
STATE = AgentState(node="node-1", agent_version="t", arch="amd64", k3s_version=OLD)


async def granted(rig: Rig, base: str) -> str:
    """Put the plan and poll as node-1's agent until it is told to stage; the lease's id."""
    rig.cluster.put(PLANS, PLAN)
    for _ in range(50):  # the grant needs the agent seen alive and the checksum fetched
        _, raw = await post(f"{base}/poll?wait=1", STATE.model_dump_json())
        ins = Instruction.model_validate_json(raw)
        if ins.action is Action.STAGE and ins.lease is not None:
            return ins.lease.lease_id
    raise AssertionError("no lease granted")


async def test_unknown_and_stale_reports(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        base = f"{rig.url}/v1/agents/node-1"
        code, raw = await post(
            f"{base}/report", Report(node="node-1", lease_id="nope", phase="staged").model_dump_json()
        )  # type: ignore[arg-type]
        err = ErrorBody.model_validate_json(raw)
        assert code == 404 and "node-1" in err.error and "nope" in err.error

        lease_id = await granted(rig, base)

        restarted = Report(node="node-1", lease_id=lease_id, phase="restarted").model_dump_json()  # type: ignore[arg-type]
        code, raw = await post(f"{base}/report", restarted)
        assert code == 409 and "does not fit" in ErrorBody.model_validate_json(raw).error

        writes = len(rig.cluster.table_history)
        staged = Report(node="node-1", lease_id=lease_id, phase="staged").model_dump_json()  # type: ignore[arg-type]
        first = await post(f"{base}/report", staged)
        second = await post(f"{base}/report", staged)
        assert first[0] == second[0] == 200
        assert (
            len(
                [
                    t
                    for t in rig.cluster.table_history[writes:]
                    if (le := t.by_id(lease_id)) is not None and le.phase.value in ("staged", "applying")
                ]
            )
            >= 1
        )
        answers = [Instruction.model_validate_json(r[1]) for r in (first, second)]
        assert all(a.lease is not None and a.lease.lease_id == lease_id for a in answers)
        assert answers[1].action is Action.APPLY


async def test_a_report_its_agent_gave_up_on_costs_the_others_nothing(tmp_path: Path) -> None:
    """A queued report whose agent stopped waiting (its answer cancelled) and that the pass then refuses
    must not take the answers of the reports queued with it."""
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        lease_id = await granted(rig, f"{rig.url}/v1/agents/node-1")
        given_up: asyncio.Future[Instruction] = asyncio.get_running_loop().create_future()
        given_up.cancel()
        refused = Report(node="node-1", lease_id="gone", phase=AgentPhase.STAGED)
        rig.runtime._reports.append(PendingReport(refused, STATE, given_up))
        staged = Report(node="node-1", lease_id=lease_id, phase=AgentPhase.STAGED)
        answer = await asyncio.wait_for(rig.runtime.submit(staged, STATE), 10)
        assert answer.lease is not None and answer.lease.lease_id == lease_id


async def test_a_report_only_the_failed_table_write_carried_is_not_answered_as_stored(tmp_path: Path) -> None:
    """A pass stores its first table write (another node's cordon) and fails its second, which alone
    carried a `restarted` report (stored with the release): that report is taken again by the next pass
    and answered from what is stored then (`finish`), not as if stored (`apply`, its lease as it was)."""
    nodes = [("node-1", False, OLD), ("node-2", False, OLD)]
    async with coordinator(tmp_path, [NEW], nodes) as rig:
        rig.cluster.put(PLANS, {**PLAN, "spec": {**PLAN["spec"], "concurrency": 2, "cordon": True}})
        states = {n: AgentState(node=n, agent_version="t", arch="amd64", k3s_version=OLD)
                  for n in ("node-1", "node-2")}
        leases: dict[str, str] = {}
        for _ in range(50):
            for n, state in states.items():
                if n not in leases:
                    _, raw = await post(f"{rig.url}/v1/agents/{n}/poll?wait=0", state.model_dump_json(), n)
                    ins = Instruction.model_validate_json(raw)
                    if ins.action is Action.STAGE and ins.lease is not None:
                        leases[n] = ins.lease.lease_id
            if len(leases) == 2:
                break
            await asyncio.sleep(0.1)
        rt = rig.runtime
        one = Report(node="node-1", lease_id=leases["node-1"], phase=AgentPhase.STAGED)
        assert (await asyncio.wait_for(rt.broker.report(one), 10)).action is Action.APPLY
        rig.cluster.set_node_version("node-1", NEW)  # k3s restarted on the target; the Node says so
        for _ in range(100):
            view = rt._views.get("node-1")
            if view is not None and view.kubelet_version == NEW:
                break
            await asyncio.sleep(0.05)
        write_lease, failed = rig.cluster.write_lease, []

        async def second_write_fails(namespace: str, name: str, annotations: Any, *rest: Any) -> Any:
            table = LeaseTable.from_annotations(annotations) if TABLE_ANNOTATION in annotations else None
            lease = table.by_id(leases["node-1"]) if table is not None else None
            if table is not None and not failed and (lease is None or lease.phase is not LeasePhase.APPLYING):
                failed.append(table)
                raise KubeError("injected: the API server failed this write", 500)
            return await write_lease(namespace, name, annotations, *rest)

        rig.cluster.write_lease = second_write_fails  # type: ignore[method-assign]
        restarted = Report(node="node-1", lease_id=leases["node-1"], phase=AgentPhase.RESTARTED)
        two = Report(node="node-2", lease_id=leases["node-2"], phase=AgentPhase.STAGED)
        both = asyncio.gather(rt.broker.report(restarted), rt.broker.report(two))
        answer, _ = await asyncio.wait_for(both, 20)
        assert failed, "the write that stores the release was never tried"
        assert answer.action is Action.FINISH, answer
