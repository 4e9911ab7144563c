"""What a restarted agent finds is taken as it is now, not as the journal saw it before the agent went down.

Aspects: a k3s that restarted on its own (still from the old file) after the go-ahead but before the swap
is restarted again after the swap, and `restarted` is reported only with the new version running; the
same for a rollback, where a k3s that restarted from the new file before the restore is restarted after
it; an end the coordinator did not hear (`failed`, killed before the report went out) is said again when
it asks for a step of that lease; a `rollback` of a lease the agent dropped before it was killed is
answered `rolled_back` with nothing changed; an instruction the agent cannot take is not polled for in a
tight loop; `finish` leaves no staged file when the target was live already; a restart that cannot
even be asked for is a restart failure (rolled back), not an exception that ends the agent; a systemd
restart does not wait for the new k3s (`--no-block`), and `auto` restarts the k3s unit k3s runs in, or
the one it was last seen in while no k3s runs; a step
that fails unexpectedly (the journal cannot be written) does not end the agent either, which resumes and
carries the lease through once it can; a download
resumed while no k3s runs fails and leaves no partial file once the lease is dropped; a swap journalled in
an earlier boot counts as done before every process of this boot.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from agent.discovery import K3sProcess, boot_id, process_clock, process_stat
from agent.install import staging_paths, swap_in
from agent.journal import Journal, JournalEntry
from agent.restart import AUTO_UNIT, RestartFailed, restart, unit_of
from sandbox.standin import build_standin
from tests.integration.agent.conftest import (
    NEW,
    OLD,
    STARTUP,
    Node,
    ScriptedCoordinator,
    make_lease,
    sha,
)
from wire.messages import Action, AgentPhase, LeaseAssignment


def _stage_by_hand(node: Node, lease: LeaseAssignment) -> Path:
    _, staged = staging_paths(node.binary, lease.artifact.sha256)
    build_standin(staged, NEW, startup_seconds=STARTUP)
    assert sha(staged) == lease.artifact.sha256
    return staged


async def _k3s_restarts_on_its_own(node: Node) -> int:
    """SIGTERM to the running k3s; its supervisor starts it again from the file in place now."""
    old = node.pid()
    await asyncio.sleep(0.05)  # start times have clock-tick resolution
    os.kill(old, signal.SIGTERM)
    return await asyncio.to_thread(node.supervisor.wait_pid, other_than=old)


async def test_k3s_restarted_before_the_swap_is_restarted_after_it(node: Node, releases, tmp_path: Path,
                                                                   coordinator: ScriptedCoordinator,
                                                                   agent_factory) -> None:
    lease = make_lease(releases)
    _stage_by_hand(node, lease)
    pid = node.pid()
    stat = process_stat(pid)
    assert stat is not None
    started = stat[1]
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.APPLYING, binary=str(node.binary), old_sha256=sha(node.binary),
        swap_started_at=process_clock(), old_process=(pid, started), boot_id=boot_id(),
    ))  # the go-ahead was journalled, then the agent went down before the swap
    on_its_own = await _k3s_restarts_on_its_own(node)
    assert node.running_version() == OLD
    coordinator.auto = False
    coordinator.instruct(Action.APPLY, lease)
    agent_factory(coordinator.url).start()
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW
    assert node.pid() != on_its_own and node.running_version() == NEW


async def test_k3s_restarted_before_the_restore_is_restarted_after_it(node: Node, releases, tmp_path: Path,
                                                                      coordinator: ScriptedCoordinator,
                                                                      agent_factory) -> None:
    lease = make_lease(releases)
    old_sha = sha(node.binary)
    swap_in(_stage_by_hand(node, lease), node.binary)
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.ROLLING_BACK, binary=str(node.binary), old_sha256=old_sha,
        swap_started_at=process_clock(), rollback_started_at=process_clock(), error="did not verify",
        boot_id=boot_id(),
    ))  # the rollback was journalled, then the agent went down before the restore
    on_its_own = await _k3s_restarts_on_its_own(node)
    assert node.running_version() == NEW
    coordinator.auto = False
    coordinator.instruct(Action.ROLLBACK, lease, reason="did not verify")
    agent_factory(coordinator.url).start()
    rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
    assert rolled.k3s_version == OLD and sha(node.binary) == old_sha
    assert node.pid() != on_its_own and node.running_version() == OLD


async def test_a_rollback_restores_a_live_binary_that_is_gone(node: Node, releases, tmp_path: Path,
                                                              coordinator: ScriptedCoordinator,
                                                              agent_factory) -> None:
    """The live path missing when a rollback resumes (removed by hand, say): the checked copy is put back
    (the rollback raised FileNotFoundError at the live file's checksum and was retried forever)."""
    lease = make_lease(releases)
    old_sha = sha(node.binary)
    swap_in(_stage_by_hand(node, lease), node.binary)
    node.binary.unlink()
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.ROLLING_BACK, binary=str(node.binary), old_sha256=old_sha,
        swap_started_at=process_clock(), rollback_started_at=process_clock(), error="did not verify",
        boot_id=boot_id(),
    ))
    coordinator.auto = False
    coordinator.instruct(Action.ROLLBACK, lease, reason="did not verify")
    agent_factory(coordinator.url).start()
    rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
    assert rolled.k3s_version == OLD and sha(node.binary) == old_sha and node.running_version() == OLD


async def test_an_end_not_heard_is_said_again(node: Node, releases, tmp_path: Path,
                                             coordinator: ScriptedCoordinator, agent_factory) -> None:
    lease = make_lease(releases)
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.FAILED, binary=str(node.binary), error="staging failed: disk full",
    ))  # saved by `_fail`, then killed before the report went out
    coordinator.auto = False
    coordinator.instruct(Action.APPLY, lease)
    agent_factory(coordinator.url).start()
    failed = await coordinator.wait_report(AgentPhase.FAILED)
    assert failed.error == "staging failed: disk full" and failed.lease_id == lease.lease_id
    assert not any(r.phase == AgentPhase.APPLYING for r in coordinator.reports)


async def test_rollback_of_a_dropped_lease_says_nothing_changed(node: Node, releases,
                                                                coordinator: ScriptedCoordinator,
                                                                agent_factory) -> None:
    lease = make_lease(releases)  # staged, then dropped for the rollback; killed before the report
    pid, old_sha = node.pid(), sha(node.binary)
    coordinator.auto = False
    coordinator.instruct(Action.ROLLBACK, lease, reason="plan deleted")
    agent_factory(coordinator.url).start()
    rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
    assert rolled.lease_id == lease.lease_id and rolled.detail == "nothing had changed on the host"
    assert sha(node.binary) == old_sha and node.pid() == pid


async def test_an_instruction_it_cannot_take_is_not_polled_for_in_a_tight_loop(
        node: Node, releases, tmp_path: Path, coordinator: ScriptedCoordinator, agent_factory) -> None:
    mine, other = make_lease(releases), make_lease(releases, lease_id="plan/n1/2")
    Journal(tmp_path / "state").save(JournalEntry(
        lease=mine, phase=AgentPhase.RESTARTED, binary=str(node.binary), observed_version=OLD,
    ))
    coordinator.auto = False
    coordinator.instruct(Action.STAGE, other)  # refused while lease `mine` is not finished
    agent_factory(coordinator.url).start()
    for _ in range(200):
        if coordinator.polls:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    polls = sum(1 for r in coordinator.requests if r.startswith("poll"))
    assert polls <= 15, f"{polls} polls in 2 s for an instruction answered every 0.2 s"
    assert coordinator.reports == []


async def test_finish_leaves_no_staged_file_when_the_target_was_live_already(
        node: Node, releases, tmp_path: Path, coordinator: ScriptedCoordinator, agent_factory) -> None:
    lease = make_lease(releases)
    _stage_by_hand(node, lease)
    journal = Journal(tmp_path / "state")
    journal.save(JournalEntry(
        lease=lease, phase=AgentPhase.RESTARTED, binary=str(node.binary), observed_version=NEW,
    ))  # the swap was skipped: the live file was the target already
    coordinator.auto = False
    coordinator.instruct(Action.FINISH, lease)
    agent_factory(coordinator.url).start()
    for _ in range(200):
        if journal.load() is None:
            break
        await asyncio.sleep(0.05)
    assert journal.load() is None and node.stray_files() == []


async def test_a_restart_that_cannot_be_asked_for_is_a_restart_failure(tmp_path: Path, monkeypatch) -> None:
    """An OSError (here: no `nsenter` on PATH) becomes RestartFailed, which `apply` answers with a
    rollback, instead of escaping the agent's loop and ending the process mid-upgrade."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RestartFailed, match=r"cannot run systemctl restart k3s\.service"):
        await restart(None, "k3s.service")


async def test_a_systemd_restart_does_not_wait_for_the_new_k3s(tmp_path: Path, monkeypatch) -> None:
    """`systemctl restart` of a `Type=notify` unit with no start timeout (install.sh's) waits until the new
    k3s is ready, forever if it never is: the agent asks with `--no-block` and bounds the wait itself. The
    stand-in `nsenter` here blocks unless it is given `--no-block`."""
    (tmp_path / "nsenter").write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\ncase "$*" in *--no-block*) exit 0;; esac\nsleep 60\n'
    )
    (tmp_path / "nsenter").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    async with asyncio.timeout(10):
        await restart(None, "k3s-agent.service")
    args = (tmp_path / "args").read_text().split()
    assert args[-3:] == ["restart", "--no-block", "k3s-agent.service"] and args[:3] == ["-t", "1", "-m"]


async def test_a_step_that_fails_unexpectedly_does_not_end_the_agent(
        node: Node, releases, tmp_path: Path, coordinator: ScriptedCoordinator, agent_factory) -> None:
    """Nothing starts the agent's pod again while k3s is down (its kubelet is k3s), so an error no step
    expects must not end the process: here the journal cannot be written (a directory where its temporary
    file goes; it can still be read). The agent logs it and tries again, waiting longer each time although
    its polls succeed in between (0.1 s, then 0.2, 0.4 and its 0.5-s maximum), and once the journal can be
    written it carries the lease through."""
    agent = agent_factory(coordinator.url)
    agent.start()
    for _ in range(100):  # polling: its start-up resume is over
        if coordinator.polls:
            break
        await asyncio.sleep(0.05)
    blocker = agent.state_dir / "journal.json.tmp"
    blocker.mkdir(parents=True)
    coordinator.instruct(Action.STAGE, make_lease(releases))
    log = tmp_path / "agent.log"

    def waits() -> list[float]:
        return [float(m) for m in re.findall(r"failed unexpectedly; resuming from the journal in ([0-9.]+) s",
                                             log.read_text())]

    for _ in range(200):
        if len(waits()) >= 4:
            break
        await asyncio.sleep(0.05)
    assert waits()[:4] == [0.1, 0.2, 0.4, 0.5]
    assert agent.process is not None and agent.process.poll() is None, "the agent exited"
    blocker.rmdir()
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW and node.running_version() == NEW


async def test_systemd_unit_auto_restarts_the_unit_k3s_runs_in(tmp_path: Path, monkeypatch) -> None:
    """`--systemd-unit auto` asks systemd to restart the k3s service whose cgroup the k3s process is in, or
    the one k3s was last seen in when no k3s runs right then (between two runs of a crash-looping new k3s,
    while it is rolled back); it refuses (a restart failure, rolled back) a k3s in no k3s service, such as
    this test's own process standing in for one; with no process and no unit known it leaves the service
    manager to start k3s, as without a unit."""
    (tmp_path / "nsenter").write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/args"\n')
    (tmp_path / "nsenter").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    me = K3sProcess(pid=os.getpid(), role="server", binary=tmp_path / "k3s",
                    host_binary="/usr/local/bin/k3s", create_time=0.0)
    assert unit_of(os.getpid()) is None  # not a k3s*.service
    with pytest.raises(RestartFailed, match=rf"k3s pid {os.getpid()} runs in no k3s systemd service"):
        await restart(me, AUTO_UNIT)
    await restart(None, AUTO_UNIT)
    assert not (tmp_path / "args").exists()
    await restart(None, AUTO_UNIT, known_unit="k3s-agent.service")
    await restart(me, AUTO_UNIT, known_unit="k3s.service")  # its own unit unknown: the one last seen
    calls = (tmp_path / "args").read_text().splitlines()
    assert [c.split()[-3:] for c in calls] == [["restart", "--no-block", "k3s-agent.service"],
                                               ["restart", "--no-block", "k3s.service"]]


async def test_a_resumed_download_with_no_k3s_running_leaves_no_partial_file(
        node: Node, releases, tmp_path: Path, coordinator: ScriptedCoordinator, agent_factory) -> None:
    """Killed while downloading, restarted while k3s does not run: staging fails, and once the coordinator
    drops the lease the partial download beside the binary goes too."""
    lease = make_lease(releases)
    part, _ = staging_paths(node.binary, lease.artifact.sha256)
    part.write_bytes(b"#!/bin/sh\n")  # the first bytes of the download
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.DOWNLOADING, binary=str(node.binary), old_version=OLD,
    ))
    node.supervisor.stop()
    coordinator.auto = False
    coordinator.instruct(Action.STAGE, lease)
    agent_factory(coordinator.url).start()
    failed = await coordinator.wait_report(AgentPhase.FAILED)
    assert failed.error and "cannot stage" in failed.error
    coordinator.instruct(Action.IDLE, None)
    for _ in range(200):
        if not part.exists():
            break
        await asyncio.sleep(0.05)
    assert node.stray_files() == []


async def test_a_swap_journalled_in_an_earlier_boot_is_done(node: Node, releases, tmp_path: Path,
                                                           coordinator: ScriptedCoordinator,
                                                           agent_factory) -> None:
    """The machine went down after the swap and came back running the new file: its k3s started after the
    swap, however the clocks of the two boots compare, and is not restarted again."""
    lease = make_lease(releases)
    old_sha = sha(node.binary)
    swap_in(_stage_by_hand(node, lease), node.binary)
    Journal(tmp_path / "state").save(JournalEntry(
        lease=lease, phase=AgentPhase.APPLYING, binary=str(node.binary), old_sha256=old_sha,
        boot_id="an-earlier-boot", swap_started_at=process_clock() + 100_000.0, old_process=(1, 1.0),
    ))  # the earlier boot had been up longer than this one
    running_new = await _k3s_restarts_on_its_own(node)
    assert node.running_version() == NEW
    coordinator.auto = False
    coordinator.instruct(Action.APPLY, lease)
    agent_factory(coordinator.url).start()
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED, within=15.0)
    assert restarted.k3s_version == NEW and node.pid() == running_new
