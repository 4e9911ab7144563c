"""A new k3s that does not come up is rolled back, and the old one runs again.

Aspects: a release that passes checksum and `--version` but crashes on start is rolled back by the agent
(report `rolled_back` with the cause, old binary back in place, old version running in a new process);
a coordinator that asks for a rollback after `restarted` (the node did not verify) gets the old binary
back too; once the lease is dropped, the rollback copy (the live file under a second name) goes.
"""

from __future__ import annotations

import asyncio

from agent.install import rollback_path
from tests.integration.agent.conftest import NEW, OLD, Node, ScriptedCoordinator, make_lease, sha
from wire.messages import Action, AgentPhase


async def test_crashing_release_is_rolled_back(node: Node, releases, coordinator: ScriptedCoordinator,
                                               agent_factory) -> None:
    old_pid, old_sha = node.pid(), sha(node.binary)
    releases.set_behaviour(NEW, "crash")
    lease = make_lease(releases, stable=0.8, timeout=3.0)
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.STAGE, lease)
    rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
    assert rolled.error and "did not come up" in rolled.error
    assert rolled.k3s_version == OLD
    assert sha(node.binary) == old_sha and node.pid() != old_pid and node.running_version() == OLD
    assert not any(r.phase == AgentPhase.RESTARTED for r in coordinator.reports)
    # Told idle, the agent drops the lease, and with it the rollback copy, a second name of the live file
    # now, which would keep the old binary on disk once k3s is reinstalled over it.
    copy = rollback_path(node.binary)
    async with asyncio.timeout(10):
        while copy.exists():  # noqa: ASYNC110 (a file, not an event)
            await asyncio.sleep(0.05)
    assert sha(node.binary) == old_sha


async def test_coordinator_requested_rollback_restores_old_binary(node: Node, releases,
                                                                  coordinator: ScriptedCoordinator,
                                                                  agent_factory) -> None:
    old_sha = sha(node.binary)
    lease = make_lease(releases)
    coordinator.auto = False
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.APPLY, lease)
    await coordinator.wait_report(AgentPhase.RESTARTED)
    assert node.running_version() == NEW
    coordinator.instruct(Action.ROLLBACK, lease, reason="node did not become Ready on v1.30.4+k3s1")
    rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
    assert rolled.error == "node did not become Ready on v1.30.4+k3s1" and rolled.k3s_version == OLD
    assert sha(node.binary) == old_sha and node.running_version() == OLD
