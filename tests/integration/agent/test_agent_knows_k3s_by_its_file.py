"""Without a record, a k3s that executes the very file in place is left running for a lease to that file.

The sandbox's stand-in k3s is a script, so its process runs the interpreter and nothing but the agent's
record (`RunningK3s`) tells what file it runs. Here k3s is a small compiled program under the node's
supervisor, so `/proc/PID/exe` names the file itself, as for the real k3s.

Aspects: on a node whose agent has no record (upgraded before this agent, or its record lost), a lease to
the binary in place is `restarted` at once and k3s keeps its pid; once the file is replaced by an
identical copy (a new inode: the process runs what is no longer in place), the same kind of lease
restarts k3s; `runs_file` says no for a process that is gone and for another file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.discovery import runs_file
from sandbox.supervision import NodeSupervisor
from tests.integration.agent.conftest import NEW, TOKEN, AgentProcess, Node, ScriptedCoordinator, sha
from wire.messages import Action, AgentPhase, Artifact, LeaseAssignment, Report

K3S_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("k3s version %s (0000000a)\ngo version go1.22.5\n", VERSION);
        return 0;
    }
    for (;;)
        pause();
}
"""


def compile_k3s(dest: Path, version: str) -> Path:
    """A k3s look-alike as a native executable: `--version` as k3s prints it; anything else runs until
    a signal ends it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine: a compiled k3s stand-in cannot be built")
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = dest.with_suffix(".c")
    source.write_text(K3S_C)
    subprocess.run([compiler, "-O1", f'-DVERSION="{version}"', "-o", str(dest), str(source)], check=True)
    source.unlink()
    return dest


@pytest.fixture
def compiled_node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "node"
    compile_k3s(root / "usr/local/bin/k3s", NEW)
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "etc/rancher/k3s/config.yaml").write_text("node-name: n1\n")
    supervisor = NodeSupervisor(root, "server", restart_delay=0)  # (a delay runs `sh` first, same pid)
    supervisor.start()
    try:
        yield Node(root, supervisor)
    finally:
        supervisor.stop()


@pytest.fixture
async def file_server(compiled_node: Node, tmp_path: Path) -> AsyncIterator[str]:
    """Serves a copy of the node's binary (the release), at the URL yielded."""
    release = tmp_path / "release-k3s"
    shutil.copy2(compiled_node.binary, release)

    async def serve(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(release)

    app = web.Application()
    app.router.add_get("/k3s", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/k3s"
    finally:
        await runner.cleanup()


def _running_the_file(node: Node, other_than: int | None = None) -> int:
    """The pid of k3s once it executes the file in place (a child of supervisord between fork and exec
    does not yet)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = node.supervisor.wait_pid(other_than=other_than)
        if runs_file(pid, node.binary):
            return pid
        time.sleep(0.02)
    raise AssertionError(f"k3s of {node.root} does not run {node.binary}")


async def _lease_through(coordinator: ScriptedCoordinator, agent: AgentProcess, lease: LeaseAssignment
                         ) -> Report:
    coordinator.reports.clear()
    coordinator.instruct(Action.STAGE, lease)
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    deadline = time.monotonic() + 10
    while agent.journal_phase() is not None:  # finished
        assert time.monotonic() < deadline, f"journal still says {agent.journal_phase()}"
        await asyncio.sleep(0.05)
    return restarted


async def test_a_k3s_running_the_file_in_place_is_not_restarted_without_a_record(
        compiled_node: Node, file_server: str, coordinator: ScriptedCoordinator, tmp_path: Path) -> None:
    node = compiled_node
    token = tmp_path / "token"
    token.write_text(TOKEN)
    agent = AgentProcess(node, coordinator.url, token, tmp_path / "state", tmp_path / "agent.log")
    agent.start()
    try:
        running = _running_the_file(node)

        def lease(lease_id: str) -> LeaseAssignment:
            return LeaseAssignment(
                lease_id=lease_id, plan="server-plan", node="n1", target_version=NEW, plan_hash="h" * 10,
                artifact=Artifact(url=file_server, sha256=sha(node.binary), name="k3s"),
                restart_stable_seconds=0.6, restart_timeout_seconds=8.0,
            )

        first = await _lease_through(coordinator, agent, lease("plan/n1/1"))
        assert first.k3s_version == NEW
        assert "running this very file: not restarted" in first.detail, first.detail
        assert node.pid() == running
        assert not (tmp_path / "state" / "running.json").exists()  # it was the file, not a record

        # The same bytes, a new inode: what runs is no longer what is in place.
        copy = node.binary.with_name("k3s.copy")
        shutil.copy2(node.binary, copy)
        os.replace(copy, node.binary)
        assert not runs_file(running, node.binary)
        second = await _lease_through(coordinator, agent, lease("plan/n1/2"))
        assert second.k3s_version == NEW and "not restarted" not in second.detail, second.detail
        assert _running_the_file(node, other_than=running) != running
    finally:
        agent.stop()


def test_runs_file_says_no_for_a_process_gone_or_another_file(tmp_path: Path) -> None:
    binary = compile_k3s(tmp_path / "bin/k3s", NEW)
    proc = subprocess.Popen([str(binary), "server"])
    try:
        other = tmp_path / "other"
        shutil.copy2(binary, other)
        assert runs_file(proc.pid, binary) and not runs_file(proc.pid, other)
        assert not runs_file(proc.pid, tmp_path / "missing")
    finally:
        proc.kill()
        proc.wait()
    assert not runs_file(proc.pid, binary)
