"""A granted lease takes the node from the old k3s to the new one, and nothing is left behind.

Aspects: the agent reports the running version/binary when idle; stage reports `staged` without touching
the host; apply swaps the binary atomically (keeping owner/mode), restarts k3s under its supervisor, and
reports `restarted` only once a NEW process runs the new version; finish drops the rollback copy and the
journal; the Bearer token from the token file is sent, and a rotated token is picked up; a report's
answer that asks for the next step is obeyed without polling for it again.
"""

from __future__ import annotations

import asyncio
import time

from tests.integration.agent.conftest import NEW, OLD, TOKEN, Node, ScriptedCoordinator, make_lease, sha
from wire.messages import Action, AgentPhase


async def test_upgrade_stages_applies_restarts_and_finishes(node: Node, releases,
                                                            coordinator: ScriptedCoordinator,
                                                            agent_factory, tmp_path) -> None:
    old_pid = node.pid()
    old_sha = sha(node.binary)
    agent = agent_factory(coordinator.url)
    agent.start()
    deadline = time.monotonic() + 15
    while not any(p.k3s_version == OLD for p in coordinator.polls):
        assert time.monotonic() < deadline, f"agent never reported {OLD}: {coordinator.polls}"
        await asyncio.sleep(0.05)
    idle = [p for p in coordinator.polls if p.k3s_version == OLD][-1]
    assert idle.k3s_binary == "/usr/local/bin/k3s" and idle.phase == AgentPhase.IDLE and idle.error is None

    coordinator.auto = False
    lease = make_lease(releases)
    coordinator.instruct(Action.STAGE, lease)
    staged = await coordinator.wait_report(AgentPhase.STAGED)
    assert staged.lease_id == lease.lease_id
    assert sha(node.binary) == old_sha and node.pid() == old_pid, "staging changed the host"

    (tmp_path / "token").write_text("rotated-token")
    coordinator.auto = True
    coordinator.instruct(Action.APPLY, lease)
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW
    assert sha(node.binary) == lease.artifact.sha256
    assert node.pid() != old_pid and node.running_version() == NEW
    assert (node.binary.stat().st_mode & 0o777) == 0o755
    assert coordinator.go_ahead_at is not None and coordinator.restarted_at is not None
    print(f"go-ahead to restarted: {coordinator.restarted_at - coordinator.go_ahead_at:.2f} s "
          f"(stable {lease.restart_stable_seconds} s, stand-in start {0.2} s)")

    deadline = time.monotonic() + 10
    rollback_copy = node.binary.parent / ".k3s.rollback"
    while agent.journal_phase() is not None or node.stray_files() or rollback_copy.exists():
        assert time.monotonic() < deadline, f"left {node.stray_files()}, journal {agent.journal_phase()}"
        await asyncio.sleep(0.05)
    assert {f"Bearer {TOKEN}", "Bearer rotated-token"} <= coordinator.tokens
    assert [r.phase for r in coordinator.reports if r.phase == AgentPhase.FAILED] == []


async def test_the_answer_to_staged_is_obeyed_without_polling_again(
    node: Node, releases, coordinator: ScriptedCoordinator, agent_factory
) -> None:
    """A coordinator answers `staged` with `apply` once the node is cordoned: the agent applies at once."""
    agent = agent_factory(coordinator.url)
    agent.start()
    deadline = time.monotonic() + 15
    while not coordinator.polls:
        assert time.monotonic() < deadline, "the agent never polled"
        await asyncio.sleep(0.05)
    lease = make_lease(releases)
    coordinator.instruct(Action.STAGE, lease)  # auto: `staged` is answered with `apply`
    await coordinator.wait_report(AgentPhase.RESTARTED)
    seq = [r for r in coordinator.requests if r != "poll wait=0"]  # heartbeats aside
    assert seq[seq.index("report staged") + 1] == "report restarted", seq  # applied, not polled for
