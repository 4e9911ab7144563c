"""An unreachable coordinator is retried, and never makes the agent roll back blind.

Aspects: an agent started before its coordinator keeps polling with backoff and then does its lease; a
coordinator that disappears while the node restarts (its API server may be that node) leaves the healthy
new binary in place while the agent retries its `restarted` report until the coordinator is back.
"""

from __future__ import annotations

import asyncio
import time

from tests.integration.agent.conftest import NEW, Node, ScriptedCoordinator, free_port, make_lease, sha
from wire.messages import Action, AgentPhase


async def test_agent_waits_for_a_late_coordinator(node: Node, releases, agent_factory) -> None:
    port = free_port()
    agent = agent_factory(f"http://127.0.0.1:{port}")
    agent.start()
    await asyncio.sleep(1.0)  # the agent is now failing to connect (nothing listens on the port)
    assert agent.process is not None and agent.process.poll() is None
    coordinator = ScriptedCoordinator()
    await coordinator.start(port)
    try:
        coordinator.instruct(Action.STAGE, make_lease(releases))
        restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
        assert restarted.k3s_version == NEW
    finally:
        await coordinator.stop()


async def test_report_is_retried_and_no_blind_rollback(node: Node, releases, agent_factory) -> None:
    coordinator = ScriptedCoordinator(auto=False)
    await coordinator.start()
    port = coordinator.port
    lease = make_lease(releases)
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.APPLY, lease)
    deadline = time.monotonic() + 15
    while not any(p.phase == AgentPhase.APPLYING for p in coordinator.polls):  # its heartbeat says so
        assert time.monotonic() < deadline, coordinator.polls[-3:]
        await asyncio.sleep(0.02)
    await coordinator.stop()
    deadline = time.monotonic() + 20
    while agent.journal_phase() != "restarted":
        assert time.monotonic() < deadline, agent.journal_phase()
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # retrying the report meanwhile; nothing may change
    assert agent.journal_phase() == "restarted"
    assert sha(node.binary) == lease.artifact.sha256 and node.running_version() == NEW
    back = ScriptedCoordinator(auto=False)
    back.instruction = coordinator.instruction
    await back.start(port)
    try:
        restarted = await back.wait_report(AgentPhase.RESTARTED)
        assert restarted.k3s_version == NEW and restarted.lease_id == lease.lease_id
    finally:
        await back.stop()
