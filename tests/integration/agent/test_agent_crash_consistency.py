"""SIGKILL of the agent in any phase, then a restart, ends consistent; success is never reported for a
binary that was not restarted into.

Aspects: killed while downloading (resumes the partial file with Range), after staging, in the middle of
applying, and after restarting: each time the restarted agent finishes the lease with the new version
running in a process started after the swap and no temporary files left. A hand-made journal for the
k3s-upgrade bug (new file in place, old process still running) makes the agent restart k3s before it
reports `restarted`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from agent.discovery import boot_id, process_clock
from agent.install import staging_paths, swap_in
from agent.journal import Journal, JournalEntry
from sandbox.standin import build_standin
from tests.integration.agent.conftest import (
    NEW,
    STARTUP,
    AgentProcess,
    Node,
    ScriptedCoordinator,
    make_lease,
    process_alive,
    sha,
)
from wire.messages import Action, AgentPhase, LeaseAssignment


async def _until(predicate: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _finished(node: Node, agent: AgentProcess, coordinator: ScriptedCoordinator,
                    lease: LeaseAssignment) -> None:
    await coordinator.wait_report(AgentPhase.RESTARTED)
    await _until(lambda: agent.journal_phase() is None and node.stray_files() == [], what="finish")
    assert sha(node.binary) == lease.artifact.sha256 and node.running_version() == NEW
    assert not any(r.phase in (AgentPhase.FAILED, AgentPhase.ROLLED_BACK) for r in coordinator.reports)


@pytest.mark.parametrize("phase", ["downloading", "staged", "applying", "restarted"])
async def test_sigkill_in_each_phase_then_restart(phase: str, node: Node, releases,
                                                  coordinator: ScriptedCoordinator, agent_factory) -> None:
    lease = make_lease(releases)
    agent = agent_factory(coordinator.url)
    if phase == "downloading":
        releases.throttle(600)  # ~0.5 s for the stand-in binary
    coordinator.auto = phase in ("downloading", "applying")
    agent.start()
    coordinator.instruct(Action.STAGE, lease)
    if phase == "downloading":
        part, _ = staging_paths(node.binary, lease.artifact.sha256)
        await _until(lambda: part.exists() and part.stat().st_size > 0, what="a partial download")
        releases.throttle(None)
    elif phase == "staged":
        await coordinator.wait_report(AgentPhase.STAGED)
    elif phase == "applying":
        await _until(lambda: agent.journal_phase() == "applying", what="applying")
    else:
        await coordinator.wait_report(AgentPhase.STAGED)
        coordinator.instruct(Action.APPLY, lease)
        await coordinator.wait_report(AgentPhase.RESTARTED)
    agent.kill()
    agent.start()
    if phase in ("staged", "restarted"):
        coordinator.auto = True
        coordinator.instruct(Action.APPLY if phase == "staged" else Action.FINISH, lease)
    await _finished(node, agent, coordinator, lease)
    if phase == "downloading":
        assert any(r and r != "bytes=0-" for _, path, r in releases.requests if path.endswith("/k3s"))


async def test_new_file_in_place_but_old_process_running_is_restarted(node: Node, releases,
                                                                     coordinator: ScriptedCoordinator,
                                                                     agent_factory, tmp_path) -> None:
    """The k3s-upgrade bug: a rerun sees the new file and would call it done while the old k3s runs."""
    lease = make_lease(releases)
    old_pid, old_sha = node.pid(), sha(node.binary)
    _, staged = staging_paths(node.binary, lease.artifact.sha256)
    build_standin(staged, NEW, startup_seconds=STARTUP)
    assert sha(staged) == lease.artifact.sha256
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.APPLYING, binary=str(node.binary), old_sha256=old_sha,
        swap_started_at=process_clock(), boot_id=boot_id(),
    ))
    swap_in(staged, node.binary)  # killed right after the rename, before SIGTERM
    coordinator.instruct(Action.APPLY, lease)
    agent = agent_factory(coordinator.url)
    agent.start()
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW
    assert not process_alive(old_pid) and node.running_version() == NEW
