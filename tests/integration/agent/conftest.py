"""Fixtures for the agent's integration tests: a simulated node (host-root directory, stand-in k3s under a
real supervisord), a local release server, a scripted coordinator speaking the wire format, and the agent
as a real subprocess. Everything started here is stopped here."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agent.install import sha256_of
from sandbox.releases import ReleaseServer
from sandbox.standin import build_standin
from sandbox.supervision import NodeSupervisor
from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    LeaseAssignment,
    Prefetch,
    Report,
)

OLD = "v1.30.3+k3s1"
NEW = "v1.30.4+k3s1"
TOKEN = "test-token-1"
STARTUP = 0.2


@dataclass
class Node:
    root: Path
    supervisor: NodeSupervisor

    @property
    def binary(self) -> Path:
        return self.root / "usr/local/bin/k3s"

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, check=True)
        return out.stdout.split()[2]

    def pid(self) -> int:
        return self.supervisor.wait_pid()

    def running_version(self, timeout: float = 10.0) -> str:
        """The version of the k3s running now: the stand-in logs `server <version> starting` on each start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.supervisor.k3s_pid()
            log = self.root / "var/log/k3s.log"
            if pid is not None and log.exists():
                lines = log.read_text().splitlines()
                starts = [line for line in lines if f"[{pid}]" in line and "starting" in line]
                if starts:
                    return starts[-1].split()[-5]
            time.sleep(0.05)
        raise AssertionError(f"no running k3s on {self.root}")

    def stray_files(self) -> list[str]:
        return sorted(p.name for p in self.binary.parent.iterdir() if p.name not in {"k3s", ".k3s.rollback"})


@dataclass
class ScriptedCoordinator:
    """Answers polls with the instruction the test sets; records polls and reports. With `auto`, moves
    staged -> apply and restarted -> finish like a coordinator whose cordon/verify always succeed."""

    auto: bool = True
    instruction: Instruction = field(default_factory=lambda: Instruction(action=Action.IDLE,
                                                                         poll_after_seconds=0.2))
    reports: list[Report] = field(default_factory=list)
    polls: list[AgentState] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None
    go_ahead_at: float | None = None
    restarted_at: float | None = None
    requests: list[str] = field(default_factory=list)
    """Every request in order: `poll wait=W` or `report PHASE`."""
    refuse_prefetched: bool = False
    """Answer 400 to a poll that says `prefetched`, as a coordinator of a version before prefetch does."""
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context (`url` is then https://)."""

    def instruct(self, action: Action, lease: LeaseAssignment | None, reason: str = "",
                 prefetch: Prefetch | None = None) -> None:
        self.instruction = Instruction(action=action, lease=lease, reason=reason, poll_after_seconds=0.2,
                                       prefetch=prefetch)
        if action == Action.APPLY:
            self.go_ahead_at = time.monotonic()
        self.changed.set()

    async def _poll(self, request: web.Request) -> web.Response:
        self.tokens.add(request.headers.get("Authorization", ""))
        raw = await request.text()
        if self.refuse_prefetched and '"prefetched"' in raw:
            self.requests.append("poll refused")
            return web.json_response({"error": "invalid AgentState: prefetched: extra", "status": 400},
                                     status=400)
        state = AgentState.model_validate_json(raw)
        self.polls.append(state)
        wait = float(request.query.get("wait", "0"))
        self.requests.append(f"poll wait={wait:g}")
        mine = self.instruction
        busy = state.lease_id is not None and mine.lease is not None and state.lease_id == mine.lease.lease_id
        hint = mine.prefetch
        told = hint is None or state.prefetched == hint.artifact.sha256 or state.error is not None
        if (mine.action == Action.IDLE and told) or busy:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(wait, 1.0))
            except TimeoutError:
                pass
        return web.json_response(text=self.instruction.model_dump_json())

    async def _report(self, request: web.Request) -> web.Response:
        self.tokens.add(request.headers.get("Authorization", ""))
        report = Report.model_validate_json(await request.text())
        self.reports.append(report)
        self.requests.append(f"report {report.phase.value}")
        lease = self.instruction.lease
        if self.auto and lease is not None:
            if report.phase == AgentPhase.STAGED:
                self.instruct(Action.APPLY, lease)
            elif report.phase == AgentPhase.RESTARTED:
                self.restarted_at = time.monotonic()
                self.instruct(Action.FINISH, lease)
            elif report.phase in (AgentPhase.FAILED, AgentPhase.ROLLED_BACK):
                self.instruct(Action.IDLE, None)
        self.changed.set()
        return web.json_response(text=self.instruction.model_dump_json())

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/agents/{node}/poll", self._poll)
        app.router.add_post("/v1/agents/{node}/report", self._report)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.tls)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            self.changed.set()
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def wait_report(self, phase: AgentPhase, within: float = 30.0) -> Report:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for report in self.reports:
                if report.phase == phase:
                    return report
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {phase.value} report within {within} s; got {self.reports}")


def make_lease(releases: ReleaseServer, version: str = NEW, lease_id: str = "plan/n1/1",
               stable: float = 0.6, timeout: float = 8.0) -> LeaseAssignment:
    return LeaseAssignment(
        lease_id=lease_id, plan="server-plan", node="n1", target_version=version, plan_hash="h" * 10,
        artifact=Artifact(url=releases.url(version), sha256=releases.sha256(version), name="k3s"),
        restart_stable_seconds=stable, restart_timeout_seconds=timeout,
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "node"
    build_standin(root / "usr/local/bin/k3s", OLD, startup_seconds=STARTUP)
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "etc/rancher/k3s/config.yaml").write_text("node-name: n1\n")
    supervisor = NodeSupervisor(root, "server", args=("--cluster-init",), restart_delay=0.1)
    supervisor.start()
    try:
        node = Node(root, supervisor)
        node.running_version()  # the stand-in has started (not only its supervisor's restart delay)
        yield node
    finally:
        supervisor.stop()


@pytest.fixture
async def releases(tmp_path: Path) -> AsyncIterator[ReleaseServer]:
    server = ReleaseServer([OLD, NEW], tmp_path / "releases", startup_seconds=STARTUP)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def coordinator() -> AsyncIterator[ScriptedCoordinator]:
    coord = ScriptedCoordinator()
    await coord.start()
    try:
        yield coord
    finally:
        await coord.stop()


class AgentProcess:
    def __init__(self, node: Node, url: str, token_file: Path, state_dir: Path, log: Path) -> None:
        self.node, self.url, self.token_file, self.state_dir, self.log = node, url, token_file, state_dir, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        cmd = [sys.executable, "-m", "agent", "--node", "n1", "--coordinator", self.url,
               "--host-root", str(self.node.root), "--token-file", str(self.token_file),
               "--state-dir", str(self.state_dir), "--poll-wait", "2", "--heartbeat", "0.3",
               "--retry-backoff", "0.1", "--max-backoff", "0.5", "--download-attempts", "4",
               "--space-margin", "0", *extra]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def journal_phase(self) -> str | None:
        path = self.state_dir / "journal.json"
        try:
            import json

            return str(json.loads(path.read_text())["phase"])
        except (FileNotFoundError, ValueError):
            return None


@pytest.fixture
def agent_factory(tmp_path: Path, node: Node) -> Iterator[Callable[[str], AgentProcess]]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    made: list[AgentProcess] = []

    def make(url: str) -> AgentProcess:
        agent = AgentProcess(node, url, token, tmp_path / "state", tmp_path / "agent.log")
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha(path: Path) -> str:
    return sha256_of(path)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
