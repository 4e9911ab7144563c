"""A node whose agent prefetched the binary is granted, cordoned and told `apply` in the pass that frees
its slot, through the real runtime, broker and HTTP API.

Aspects: the next node is told the binary in an `idle` answer; once its agent says it holds it and its
poll is held, the pass that verifies the node before it grants it, cordons it (in the round of Node
patches that labels the node before it, marked as ours on the Node) and answers its held poll `apply` (it
is never told `stage`); when that cordon fails, the pass stores nothing, and the next one releases the
node before it, grants, cordons and tells `apply`, and the Events (the node upgraded, the grant) are
posted once; when the cordon is done but the table write after it fails, the next pass takes the cordon
over (cordoned again, marked for the lease it stores; the lease says we cordoned it, so it is uncordoned,
and its mark removed, once upgraded); a table write whose answer was lost, though it was stored, is read
again rather than decided over from the copy before it (no lost race), and the held poll of the node it
let go ahead is answered at once; the released node is never granted again; an agent whose last poll said
it holds the binary but whose poll is not held now is granted as any node and told `stage`; an agent of a
version before prefetch is never named a binary (it would refuse the field) and its idle poll is held.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp

from agent import __version__
from coordinator.api import BrokerError
from coordinator.cordons import CORDON_ANNOTATION, marked_lease
from coordinator.kube.errors import KubeError
from coordinator.kube.resources import PLANS
from tests.integration.coordinator.harness import Rig, coordinator, plan_manifest
from wire.messages import Action, AgentPhase, AgentState, Instruction, Report

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
PLAN = plan_manifest("p", NEW, cordon=True)
NODES = [("node-1", False, OLD), ("node-2", False, OLD)]


def state(node: str, prefetched: str | None = None) -> AgentState:
    return AgentState(node=node, agent_version=__version__, arch="amd64", k3s_version=OLD,
                      prefetched=prefetched)


async def poll(rig: Rig, node: str, body: AgentState, wait: float = 0) -> Instruction:
    headers = {"Authorization": f"Bearer tok-{node}", "Content-Type": "application/json"}
    url = f"{rig.url}/v1/agents/{node}/poll?wait={wait:g}"
    async with aiohttp.ClientSession() as s, s.post(url, data=body.model_dump_json(), headers=headers) as r:
        assert r.status == 200, await r.text()
        return Instruction.model_validate_json(await r.read())


async def first_and_next(rig: Rig) -> tuple[str, str, str, str]:
    """(the node granted first, its lease id, the node told to prefetch, the binary's SHA-256)."""
    rig.cluster.put(PLANS, PLAN)
    first = lease_id = second = sha = None
    for _ in range(100):
        for node in ("node-1", "node-2"):
            ins = await poll(rig, node, state(node))
            if ins.action is Action.STAGE and ins.lease is not None:
                first, lease_id = node, ins.lease.lease_id
            elif ins.action is Action.IDLE and ins.prefetch is not None:
                second, sha = node, ins.prefetch.artifact.sha256
        if first and second and lease_id and sha:
            return first, lease_id, second, sha
        await asyncio.sleep(0.05)
    raise AssertionError("no grant and prefetch hint seen")


async def upgraded(rig: Rig, node: str, lease_id: str) -> Report:
    """The first node staged, applied and restarted on the target (its Node says so): its report."""
    rt = rig.runtime
    staged = Report(node=node, lease_id=lease_id, phase=AgentPhase.STAGED)
    assert (await asyncio.wait_for(rt.broker.report(staged), 10)).action is Action.APPLY
    rig.cluster.set_node_version(node, NEW)
    for _ in range(100):
        view = rt._views.get(node)
        if view is not None and view.kubelet_version == NEW:
            break
        await asyncio.sleep(0.05)
    return Report(node=node, lease_id=lease_id, phase=AgentPhase.RESTARTED, k3s_version=NEW)


async def test_held_prefetched_node_goes_ahead_even_when_its_first_cordon_fails(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], NODES) as rig:
        first, lease_id, second, sha = await first_and_next(rig)
        restarted = await upgraded(rig, first, lease_id)
        patch_node, failed = rig.cluster.patch_node, []

        async def cordon_fails_once(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == second and kwargs.get("unschedulable") is True and not failed:
                failed.append(name)
                raise KubeError("injected: the API server failed this cordon", 500)
            return await patch_node(name, *args, **kwargs)

        rig.cluster.patch_node = cordon_fails_once  # type: ignore[method-assign]
        held = asyncio.create_task(poll(rig, second, state(second, sha), wait=10))
        await until_held(rig, second)
        events = len(rig.cluster.events)
        answer = await asyncio.wait_for(rig.runtime.broker.report(restarted), 10)
        assert answer.action is Action.FINISH
        told = await asyncio.wait_for(held, 10)
        assert failed == [second], "the cordon was not tried"
        assert told.action is Action.APPLY and told.lease is not None and told.lease.node == second
        node = rig.cluster.objects["nodes"][second]
        assert node["spec"].get("unschedulable") is True
        lease, _ = marked_lease(node["metadata"]["annotations"][CORDON_ANNOTATION])
        assert lease == told.lease.lease_id
        for _ in range(100):  # posted after the pass, beside the next ones
            reasons = [e[3] for e in rig.cluster.events[events:]]
            if "Upgraded" in reasons and "LeaseGranted" in reasons:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        reasons = [e[3] for e in rig.cluster.events[events:]]
        assert reasons.count("Upgraded") == 1 and reasons.count("LeaseGranted") == 1, reasons
        granted = [e[4] for e in rig.cluster.events[events:] if e[3] == "LeaseGranted"]
        assert second in granted[0]
        leases = [le for t in rig.cluster.table_history for le in t.leases if le.node == first]
        assert {le.lease_id for le in leases} == {lease_id}, "the released node was granted again"


async def until_held(rig: Rig, node: str) -> None:
    for _ in range(100):
        if node in rig.runtime.holding:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the poll of {node} was not held")


async def test_a_cordon_whose_table_write_failed_is_taken_over_by_the_next_grant(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], NODES) as rig:
        first, lease_id, second, sha = await first_and_next(rig)
        restarted = await upgraded(rig, first, lease_id)
        write_lease, patch_node, failed = rig.cluster.write_lease, rig.cluster.patch_node, []
        cordons: list[dict[str, Any]] = []

        async def table_write_fails_once(*args: Any, **kwargs: Any) -> Any:
            node = rig.cluster.objects["nodes"][second]
            if node["spec"].get("unschedulable") and not failed:
                failed.append(second)
                raise KubeError("injected: the API server failed this table write", 500)
            return await write_lease(*args, **kwargs)

        async def counted(name: str, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("unschedulable") is True:
                cordons.append({"node": name, **kwargs})
            return await patch_node(name, *args, **kwargs)

        rig.cluster.write_lease = table_write_fails_once  # type: ignore[method-assign]
        rig.cluster.patch_node = counted  # type: ignore[method-assign]
        held = asyncio.create_task(poll(rig, second, state(second, sha), wait=10))
        await until_held(rig, second)
        answer = await asyncio.wait_for(rig.runtime.broker.report(restarted), 10)
        assert answer.action is Action.FINISH
        told = await asyncio.wait_for(held, 10)
        assert failed == [second], "the table write after the cordon did not fail"
        assert told.action is Action.APPLY and told.lease is not None and told.lease.node == second
        # Cordoned for the grant that was never stored, then again for the lease stored in its place.
        assert [c["node"] for c in cordons] == [second, second]
        first_mark = marked_lease(cordons[0]["annotations"][CORDON_ANNOTATION])[0]
        assert first_mark is not None and first_mark != told.lease.lease_id
        stored = rig.cluster.table_history[-1].by_id(told.lease.lease_id)
        assert stored is not None and stored.cordoned_by_us
        node = rig.cluster.objects["nodes"][second]
        assert marked_lease(node["metadata"]["annotations"][CORDON_ANNOTATION])[0] == told.lease.lease_id
        leases = [le for t in rig.cluster.table_history for le in t.leases if le.node == first]
        assert {le.lease_id for le in leases} == {lease_id}, "the released node was granted again"
        # Once upgraded, it is uncordoned (the lease says we cordoned it) and the mark removed.
        done = await upgraded(rig, second, told.lease.lease_id)
        assert (await asyncio.wait_for(rig.runtime.broker.report(done), 10)).action is Action.FINISH
        node = rig.cluster.objects["nodes"][second]
        assert node["spec"].get("unschedulable") is False
        assert CORDON_ANNOTATION not in node["metadata"].get("annotations", {})


async def test_a_table_write_that_failed_but_was_stored_is_read_again(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], NODES) as rig:
        first, lease_id, second, sha = await first_and_next(rig)
        restarted = await upgraded(rig, first, lease_id)
        write_lease, lost = rig.cluster.write_lease, []

        async def answer_lost_once(*args: Any, **kwargs: Any) -> Any:
            written = await write_lease(*args, **kwargs)
            if rig.cluster.objects["nodes"][second]["spec"].get("unschedulable") and not lost:
                lost.append(second)
                raise KubeError("injected: the answer to this table write was lost", 504)
            return written

        rig.cluster.write_lease = answer_lost_once  # type: ignore[method-assign]
        held = asyncio.create_task(poll(rig, second, state(second, sha), wait=10))
        await until_held(rig, second)
        # Its report was stored with the write whose answer was lost: asked again, the lease is gone (its
        # agent learns `finish` from its next poll).
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(BrokerError):
            await asyncio.wait_for(rig.runtime.broker.report(restarted), 10)
        told = await asyncio.wait_for(held, 10)
        # Told by the read that found its lease, not by the end of its long-poll (2 s here).
        assert loop.time() - started < 1.2
        assert lost == [second]
        assert told.action is Action.APPLY and told.lease is not None and told.lease.node == second
        conflicts = rig.runtime.metrics.write_conflicts.labels("lease_table")._value.get()
        assert conflicts == 0, "decided on the table from before the write, and lost the race with it"


async def test_a_node_whose_poll_is_not_held_is_told_to_stage(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], NODES) as rig:
        first, lease_id, second, sha = await first_and_next(rig)
        await poll(rig, second, state(second, sha))  # says it holds the binary, then goes away a moment
        restarted = await upgraded(rig, first, lease_id)
        assert (await asyncio.wait_for(rig.runtime.broker.report(restarted), 10)).action is Action.FINISH
        ins = await poll(rig, second, state(second, sha))
        assert ins.action is Action.STAGE and ins.lease is not None and ins.lease.node == second
        assert rig.cluster.objects["nodes"][second]["spec"].get("unschedulable") is not True


async def test_an_agent_of_a_version_before_prefetch_is_not_told(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], NODES) as rig:
        _, _, second, _ = await first_and_next(rig)  # as an agent of this version, it was named the binary
        loop = asyncio.get_running_loop()
        for version, told in (("0.1.0", False), (__version__, True)):
            body = AgentState(node=second, agent_version=version, arch="amd64", k3s_version=OLD)
            started = loop.time()
            ins = await poll(rig, second, body, wait=0.5)
            assert ins.action is Action.IDLE and (ins.prefetch is not None) is told, (version, ins)
            held = loop.time() - started >= 0.45
            assert held is not told  # the old one's idle poll is held, as any; the new one is answered
