"""The benchmark floor's scheduler (`bench.floor.FloorBroker`): the agent protocol and nothing else.

Aspects: no lease before `start`; `concurrency` leases at a time in node-name order; `staged` is
answered with `apply`, `restarted` with `finish` while the next node's held poll is woken with its
`stage`; a `restarted` report sent again gets `finish` again; a report for a lease the node does not
hold is a 404; an idle poll is held until the wait is over; the next `concurrency` nodes are told to
prefetch (at once, and when they become next) and one that holds the binary is granted as `apply`; a
bare floor grants as `apply` and hands the slot on at `restarted` alone, and names nothing to prefetch.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.floor import FloorBroker
from coordinator.api import BrokerError
from wire.messages import Action, AgentPhase, AgentState, Report

V = "v1.30.4+k3s1"


def state(node: str, phase: AgentPhase = AgentPhase.IDLE, lease_id: str | None = None,
          prefetched: str | None = None) -> AgentState:
    return AgentState(node=node, agent_version="t", arch="amd64", phase=phase, lease_id=lease_id,
                      prefetched=prefetched)


def report(node: str, phase: AgentPhase) -> Report:
    return Report(node=node, lease_id=f"floor-{node}", phase=phase)


async def test_leases_go_out_in_name_order_within_concurrency() -> None:
    broker = FloorBroker(["n3", "n1", "n2"], concurrency=2, version=V)
    assert (await broker.poll(state("n1"), 0)).action is Action.IDLE  # nothing before start
    broker.start()
    assert sorted(broker.leases) == ["n1", "n2"]
    ins = await broker.poll(state("n1"), 0)
    assert ins.action is Action.STAGE and ins.lease is not None and ins.lease.target_version == V
    assert (await broker.poll(state("n3"), 0)).action is Action.IDLE


async def test_restarted_hands_the_slot_to_the_next_node_and_wakes_its_poll() -> None:
    broker = FloorBroker(["a", "b", "c"], concurrency=1, version=V)
    broker.start()
    hint = await asyncio.wait_for(broker.poll(state("b"), 30), 1)  # b is next: told to prefetch at once
    assert hint.action is Action.IDLE and hint.prefetch is not None
    held_c = asyncio.create_task(broker.poll(state("c"), 30))
    waiting = asyncio.create_task(broker.poll(state("b", prefetched=hint.prefetch.artifact.sha256), 30))
    await asyncio.sleep(0.01)
    assert not waiting.done() and not held_c.done()  # held: nothing for b (it holds the binary) or c yet
    assert (await broker.report(report("a", AgentPhase.STAGED))).action is Action.APPLY
    assert (await broker.report(report("a", AgentPhase.APPLYING))).action is Action.APPLY
    assert (await broker.report(report("a", AgentPhase.RESTARTED))).action is Action.FINISH
    woken = await asyncio.wait_for(waiting, 1)  # prefetched: the grant is the go-ahead
    assert woken.action is Action.APPLY and woken.lease is not None and woken.lease.node == "b"
    told = await asyncio.wait_for(held_c, 1)  # c became next: told to prefetch
    assert told.action is Action.IDLE and told.prefetch is not None
    # The answer to `restarted` was lost and the agent sends it again: the same answer.
    assert (await broker.report(report("a", AgentPhase.RESTARTED))).action is Action.FINISH
    with pytest.raises(BrokerError) as refused:
        await broker.report(report("a", AgentPhase.STAGED))
    assert refused.value.status == 404


async def test_an_applying_agent_is_held_until_the_wait_is_over() -> None:
    broker = FloorBroker(["a"], concurrency=1, version=V)
    broker.start()
    await broker.report(report("a", AgentPhase.STAGED))
    t0 = asyncio.get_running_loop().time()
    ins = await broker.poll(state("a", AgentPhase.APPLYING, "floor-a"), 0.05)
    assert ins.action is Action.APPLY and asyncio.get_running_loop().time() - t0 >= 0.05


async def test_a_bare_floor_grants_as_apply_and_needs_only_restarted() -> None:
    broker = FloorBroker(["a", "b"], concurrency=1, version=V, bare=True)
    broker.start()
    ins = await broker.poll(state("a"), 0)
    assert ins.action is Action.APPLY and ins.lease is not None and ins.lease.node == "a"
    waiting = asyncio.create_task(broker.poll(state("b"), 30))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert (await broker.report(report("a", AgentPhase.RESTARTED))).action is Action.FINISH
    woken = await asyncio.wait_for(waiting, 1)
    assert woken.action is Action.APPLY and woken.lease is not None and woken.lease.node == "b"
