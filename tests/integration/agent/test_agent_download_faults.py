"""Bad downloads change nothing on the host; interrupted ones resume.

Aspects: a checksum mismatch is reported `failed` naming both sums, with the live binary, the running
process and the binary's directory unchanged; a connection cut mid-download is resumed with a `Range`
request and the upgrade completes; a slow download keeps posting the agent's state with its progress; a
file system too small for the new binary (a real tmpfs) gives a clear
`failed` report and leaves the old binary intact and running, and so does a data directory without room
for the new k3s to unpack (3 times its binary): the default one, or the one k3s was given in a drop-in of
its config file or with `--data-dir` on its command line (the error names it and where it was set).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox.standin import build_standin
from sandbox.supervision import NodeSupervisor
from tests.integration.agent.conftest import (
    NEW,
    OLD,
    STARTUP,
    AgentProcess,
    Node,
    ScriptedCoordinator,
    make_lease,
    sha,
)
from wire.messages import Action, AgentPhase, Report


async def test_checksum_mismatch_changes_nothing(node: Node, releases, coordinator: ScriptedCoordinator,
                                                 agent_factory) -> None:
    old_pid, old_sha = node.pid(), sha(node.binary)
    lease = make_lease(releases)
    releases.corrupt(NEW)
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.STAGE, lease)
    failed = await coordinator.wait_report(AgentPhase.FAILED)
    assert failed.error and "checksum mismatch" in failed.error and lease.artifact.sha256 in failed.error
    assert sha(node.binary) == old_sha and node.pid() == old_pid and node.stray_files() == []
    assert not any(r.phase == AgentPhase.STAGED for r in coordinator.reports)


async def test_interrupted_download_resumes_with_range(node: Node, releases, coordinator: ScriptedCoordinator,
                                                       agent_factory) -> None:
    lease = make_lease(releases)
    releases.cut_after(NEW, "k3s", 100)
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.STAGE, lease)
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW and sha(node.binary) == lease.artifact.sha256
    ranges = [r for method, path, r in releases.requests if path.endswith("/k3s")]
    assert ranges[0] is None and "bytes=100-" in ranges, ranges


async def test_slow_download_keeps_heartbeating_with_progress(node: Node, releases,
                                                              coordinator: ScriptedCoordinator,
                                                              agent_factory) -> None:
    lease = make_lease(releases)
    releases.throttle(250)  # about a second for the stand-in binary
    coordinator.auto = False
    agent = agent_factory(coordinator.url)
    agent.start()
    coordinator.instruct(Action.STAGE, lease)
    await coordinator.wait_report(AgentPhase.STAGED)
    during = [p.progress for p in coordinator.polls if p.phase == AgentPhase.DOWNLOADING]
    assert any(p is not None and 0 < p < 1 for p in during), during


def mount_small_tmpfs(directory: Path, size: str) -> None:
    """Mount a real tmpfs of `size` on `directory` (made here), or skip the test: a full file system is only
    real with mount(8) and root, which CI has (unmount it with `umount`)."""
    directory.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here, cannot make a small tmpfs")
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")


@pytest.fixture
def tiny_fs_node(tmp_path: Path) -> Node:
    """A node whose /usr/local/bin is a tmpfs just big enough for the old binary."""
    root = tmp_path / "tiny"
    mount_small_tmpfs(root / "usr/local/bin", "8k")
    return Node(root, NodeSupervisor(root, "agent", restart_delay=0.1))


async def test_full_file_system_is_a_clear_error(tiny_fs_node: Node, releases,
                                                 coordinator: ScriptedCoordinator, tmp_path: Path) -> None:
    node = tiny_fs_node
    bindir = node.binary.parent
    try:
        build_standin(node.binary, OLD, startup_seconds=STARTUP)
        try:  # fill the tmpfs: no room is left for a new binary
            (bindir / "filler").write_bytes(b"x" * 8192)
        except OSError:
            pass
        node.supervisor.start()
        old_pid, old_sha = node.pid(), sha(node.binary)
        token = tmp_path / "token"
        token.write_text("t")
        agent = AgentProcess(node, coordinator.url, token, tmp_path / "state", tmp_path / "agent.log")
        agent.start()
        try:
            coordinator.instruct(Action.STAGE, make_lease(releases))
            failed = await coordinator.wait_report(AgentPhase.FAILED)
        finally:
            agent.stop()
        assert failed.error and ("free space" in failed.error or "full" in failed.error), failed.error
        assert sha(node.binary) == old_sha and node.pid() == old_pid
        assert node.version() == OLD
        assert sorted(p.name for p in bindir.iterdir()) == ["filler", "k3s"]
    finally:
        node.supervisor.stop()
        subprocess.run(["umount", str(bindir)], check=True)  # noqa: ASYNC221 - teardown, must finish


async def test_no_room_for_the_new_k3s_to_unpack_fails_before_anything_changes(
        node: Node, releases, coordinator: ScriptedCoordinator, agent_factory) -> None:
    """The new k3s unpacks about 3 times its binary into its data directory on its first start; without
    that room it would crash-loop on a full disk where the agent's journal could not be written either.
    The data directory is a real tmpfs, full; the binary's own file system has room."""
    old_pid, old_sha = node.pid(), sha(node.binary)
    data = node.root / "var/lib/rancher/k3s"
    failed = await stage_on_a_full_directory(data, node, releases, coordinator, agent_factory)
    assert failed.error and f"not enough free space in {data} for the new k3s to unpack" in failed.error
    assert sha(node.binary) == old_sha and node.pid() == old_pid and node.stray_files() == []


async def stage_on_a_full_directory(data: Path, node: Node, releases, coordinator: ScriptedCoordinator,
                                    agent_factory) -> Report:
    """Mount a full 4 KiB tmpfs on `data`, have a fresh agent stage a lease, and return its failure."""
    mount_small_tmpfs(data, "4k")
    try:
        try:
            (data / "filler").write_bytes(b"x" * 4096)
        except OSError:
            pass
        assert shutil.disk_usage(data).free < 3 * node.binary.stat().st_size
        agent = agent_factory(coordinator.url)
        agent.start()
        coordinator.instruct(Action.STAGE, make_lease(releases))
        failed = await coordinator.wait_report(AgentPhase.FAILED)
        agent.stop()
    finally:
        subprocess.run(["umount", str(data)], check=True)  # noqa: ASYNC221 - teardown, must finish
    return failed


@pytest.mark.parametrize("set_by", ["config drop-in", "--data-dir"])
async def test_no_room_in_a_data_directory_of_its_own_fails_the_stage(
        node: Node, releases, coordinator: ScriptedCoordinator, agent_factory, set_by: str) -> None:
    """A k3s given its own data directory unpacks the new release there: that one is a real tmpfs, full,
    while the default one (not there: its parent) and the binary's file system have room."""
    data = node.root / "srv/k3s"
    if set_by == "config drop-in":
        dropin = node.root / "etc/rancher/k3s/config.yaml.d/50-data.yaml"
        dropin.parent.mkdir()
        dropin.write_text("data-dir: /srv/k3s\n")
        source = "data-dir in /etc/rancher/k3s/config.yaml.d/50-data.yaml"
    else:
        node.supervisor.stop()
        node.supervisor.args = ("--cluster-init", "--data-dir", "/srv/k3s")
        node.supervisor.start()
        node.running_version()
        source = f"--data-dir of k3s pid {node.pid()}"
    old_pid, old_sha = node.pid(), sha(node.binary)
    failed = await stage_on_a_full_directory(data, node, releases, coordinator, agent_factory)
    assert failed.error and f"not enough free space in {data} for the new k3s to unpack" in failed.error
    assert f"(k3s's data directory is /srv/k3s, {source})" in failed.error, failed.error
    assert sha(node.binary) == old_sha and node.pid() == old_pid and node.stray_files() == []
