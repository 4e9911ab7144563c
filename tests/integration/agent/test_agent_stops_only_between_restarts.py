"""A SIGTERM (a DaemonSet rollout, a deleted pod) while k3s is being replaced waits until it is over.

Cut short between the swap and a working new k3s, the agent could not start again on a node whose new
k3s does not come up (its kubelet is k3s), and nothing would roll the node back. So a stop that comes
while the journal says `applying` (or `rolling_back`) lets the restart finish, then ends the process
with status 0; a stop at any other time is at once.

Aspects: SIGTERM during the new k3s's stability wait: the agent is still running a second later, then
exits 0 with the journal at `restarted` and the new k3s running; SIGTERM while idle: exits within 2 s.
"""

from __future__ import annotations

import asyncio
import signal
import time

from tests.integration.agent.conftest import NEW, Node, ScriptedCoordinator, make_lease
from wire.messages import Action, AgentPhase


async def until(check, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_stop_during_the_restart_waits_for_it(node: Node, releases, coordinator: ScriptedCoordinator,
                                                      agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.auto = False
    lease = make_lease(releases, stable=3.0, timeout=15.0)
    coordinator.instruct(Action.STAGE, lease)
    await coordinator.wait_report(AgentPhase.STAGED)
    coordinator.instruct(Action.APPLY, lease)
    await until(lambda: agent.journal_phase() == "applying", 15, "the agent never began to apply")
    assert agent.process is not None
    agent.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert agent.process.poll() is None, "the agent stopped in the middle of replacing k3s"
    assert agent.journal_phase() == "applying"
    await until(lambda: agent.process is not None and agent.process.poll() is not None, 20,
                "the agent did not stop once the restart was over")
    assert agent.process.returncode == 0
    assert agent.journal_phase() == "restarted" and node.running_version() == NEW


async def test_a_stop_while_idle_is_at_once(
    node: Node, coordinator: ScriptedCoordinator, agent_factory
) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    await until(lambda: bool(coordinator.polls), 15, "the agent never polled")
    assert agent.process is not None
    started = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    await until(lambda: agent.process is not None and agent.process.poll() is not None, 2, "no stop")
    assert agent.process.returncode == 0 and time.monotonic() - started < 2
