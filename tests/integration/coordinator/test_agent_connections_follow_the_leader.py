"""Agents keep their connection to the coordinator, but not to a replica that is not the leader.

Behind a Service, a connection reaches one replica for as long as it lasts; a replica that is not the
leader answers `idle` to every poll (and 503 to every report), so an agent kept on it would never be
granted anything. Such a replica ends each connection with its answer, and the agent's next exchange goes
through the Service again. The leader's connections are kept.

Aspects: three polls to a replica that is not the leader take three connections, and a report refused
by it ends its connection too; three polls to the leader take one; a poll held while leadership is lost
ends its connection; so does an answer that tells the agent to come back after `CLOSE_BEYOND` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent.client import CoordinatorClient, CoordinatorUnavailable
from coordinator.api import CLOSE_BEYOND, BrokerSlot, IdleBroker, NodeAuthenticator, add_agent_routes
from tests.integration.coordinator.test_agent_api_over_tls import NODE, TOKEN, Reviewer
from wire.messages import Action, AgentPhase, AgentState, Instruction, Report

STATE = AgentState(node=NODE, agent_version="test", arch="amd64", k3s_version="v1.30.3+k3s1")


class Leader:
    """A broker that answers as the leader would when it has nothing for the node (after `hold`, if set)."""

    def __init__(self, poll_after: float = 1.0) -> None:
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        self.poll_after = poll_after

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        return Instruction(action=Action.IDLE, reason="nothing to do", poll_after_seconds=self.poll_after)

    async def report(self, report: Report) -> Instruction:
        return Instruction(action=Action.IDLE, reason="noted", poll_after_seconds=1.0)


class Replica:
    def __init__(self, slot: BrokerSlot, url: str, peers: list[object]) -> None:
        self.slot, self.url, self.peers = slot, url, peers


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    peers: list[object] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await handler(request)

    app = web.Application(middlewares=[record])
    slot = BrokerSlot(IdleBroker(max_wait=0.05))
    add_agent_routes(app, NodeAuthenticator(Reviewer()), slot, 1.0)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Replica(slot, f"http://127.0.0.1:{runner.addresses[0][1]}", peers)
    finally:
        await runner.cleanup()


async def test_a_replica_that_is_not_the_leader_ends_each_connection(
    replica: Replica, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    client = CoordinatorClient(replica.url, NODE, token)
    try:
        for _ in range(3):
            assert (await client.poll(STATE, 1.0)).reason == "this coordinator replica is not the leader"
        with pytest.raises(CoordinatorUnavailable, match="answered 503"):
            await client.report(Report(node=NODE, lease_id="l-1", phase=AgentPhase.STAGED))
        assert await client.poll(STATE, 0) is not None
        assert len(replica.peers) == 5 and len(set(replica.peers)) == 5, replica.peers
        replica.peers.clear()
        replica.slot.broker = Leader()  # this replica won the election
        for _ in range(3):
            assert (await client.poll(STATE, 1.0)).reason == "nothing to do"
        await client.report(Report(node=NODE, lease_id="l-1", phase=AgentPhase.STAGED))
    finally:
        await client.close()
    assert len(replica.peers) == 4 and len(set(replica.peers)) == 1, replica.peers


async def test_leadership_lost_during_a_held_poll_ends_its_connection(
    replica: Replica, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    leader = Leader()
    replica.slot.broker = leader
    client = CoordinatorClient(replica.url, NODE, token)
    try:
        await client.poll(STATE, 1.0)
        leader.hold = asyncio.Event()
        held = asyncio.create_task(client.poll(STATE, 1.0))
        await asyncio.wait_for(leader.held.wait(), 5)
        replica.slot.broker = IdleBroker(max_wait=0.05)  # lost the election while the poll was held
        leader.hold.set()
        await held
        await client.poll(STATE, 0)
    finally:
        await client.close()
    assert len(replica.peers) == 3 and replica.peers[0] == replica.peers[1] != replica.peers[2], replica.peers


async def test_an_agent_told_to_come_back_later_does_not_keep_its_connection(
    replica: Replica, tmp_path: Path
) -> None:
    """Agents paced beyond --max-held-polls are told to come back in some seconds: their connections are
    ended rather than kept idle by the thousand until then."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    replica.slot.broker = Leader(poll_after=CLOSE_BEYOND + 1)
    client = CoordinatorClient(replica.url, NODE, token)
    try:
        for _ in range(3):
            await client.poll(STATE, 0)
    finally:
        await client.close()
    assert len(set(replica.peers)) == 3, replica.peers
