"""A lease whose target the node runs already (a Plan changed, not its version) restarts nothing.

Aspects: after an upgrade, a second lease to the same binary is `restarted` at once, with the k3s that
this agent saw start from that binary still running (as k3s-upgrade exits without killing k3s when the
binary in place is the new one); a k3s that restarted on its own since is restarted as for any lease
(nothing else tells which file it runs); an unreadable record counts as none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from agent.journal import RunningRecord
from tests.integration.agent.conftest import NEW, AgentProcess, Node, ScriptedCoordinator, make_lease
from wire.messages import Action, AgentPhase, Report


async def _lease_through(coordinator: ScriptedCoordinator, agent: AgentProcess, lease_id: str,
                         releases) -> Report:
    """Stage, apply and finish a lease to NEW (the scripted coordinator answers each step): its `restarted`.
    """
    coordinator.reports.clear()
    coordinator.instruct(Action.STAGE, make_lease(releases, lease_id=lease_id))
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    deadline = time.monotonic() + 10
    while agent.journal_phase() is not None:  # finished
        assert time.monotonic() < deadline, f"journal still says {agent.journal_phase()}"
        await asyncio.sleep(0.05)
    return restarted


async def test_a_second_lease_to_the_running_binary_restarts_nothing(
        node: Node, releases, coordinator: ScriptedCoordinator, agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    first = await _lease_through(coordinator, agent, "plan/n1/1", releases)
    assert first.k3s_version == NEW and "not restarted" not in first.detail
    upgraded = node.pid()
    second = await _lease_through(coordinator, agent, "plan/n1/2", releases)
    assert second.lease_id == "plan/n1/2" and second.k3s_version == NEW
    assert "not restarted" in second.detail, second.detail
    assert node.pid() == upgraded and node.running_version() == NEW
    assert node.stray_files() == []


async def test_a_k3s_restarted_since_is_restarted_for_a_lease_to_its_binary(
        node: Node, releases, coordinator: ScriptedCoordinator, agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    await _lease_through(coordinator, agent, "plan/n1/1", releases)
    upgraded = node.pid()
    await asyncio.sleep(0.05)  # start times have clock-tick resolution
    os.kill(upgraded, signal.SIGTERM)  # its supervisor starts it again, from the same file
    on_its_own = await asyncio.to_thread(node.supervisor.wait_pid, other_than=upgraded)
    second = await _lease_through(coordinator, agent, "plan/n1/2", releases)
    assert second.k3s_version == NEW and "not restarted" not in second.detail
    assert node.pid() not in (upgraded, on_its_own)


async def test_an_unreadable_record_counts_as_none(
        node: Node, releases, coordinator: ScriptedCoordinator, agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    await _lease_through(coordinator, agent, "plan/n1/1", releases)
    upgraded = node.pid()
    record = RunningRecord(agent.state_dir)
    assert record.load() is not None and record.load().pid == upgraded  # type: ignore[union-attr]
    record.path.write_text("{not json")
    second = await _lease_through(coordinator, agent, "plan/n1/2", releases)
    assert "not restarted" not in second.detail and node.pid() != upgraded
