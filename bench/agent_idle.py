"""The agent's idle footprint, before and after an upgrade (issue #6: under 40 MiB RSS idle).

A node is simulated (stand-in k3s under supervisord, as in the agent's integration tests) and the real
agent (`python -m agent`) runs against a minimal stand-in of the coordinator's agent API that long-polls
and answers `idle` (the coordinator's answer when there is no work). Its RSS, its USS (memory only this
process holds) at the end of the window and its CPU seconds over the window are reported. Then the
stand-in grants one lease (stage -> apply -> finish, the node upgraded to a new stand-in release) and,
once the agent is idle again, the same figures are taken over a second window (`agent_after_upgrade_*`),
with whether aiohttp is mapped in the process (the agent never imports it: its download is
`http.client`). Run by `bench.agent_download` (`--idle SECONDS`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from bench.processes import stop_process
from sandbox.releases import ReleaseServer
from sandbox.standin import build_standin
from sandbox.supervision import NodeSupervisor
from wire.messages import Action, AgentPhase, AgentState, Artifact, Instruction, LeaseAssignment, Report

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"


class LeaseCoordinator:
    """A stand-in of the coordinator's agent API: `idle` after the long-poll wait, until `grant(lease)`;
    then stage -> apply (on `staged`) -> finish (on `restarted`) for that lease, and `idle` again once the
    agent has dropped it (`finished` is set then)."""

    def __init__(self) -> None:
        self.instruction = self._idle()
        self.changed = asyncio.Event()
        self.finished = asyncio.Event()
        self.failure: str | None = None

    @staticmethod
    def _idle() -> Instruction:
        return Instruction(action=Action.IDLE, reason="no plan selects this node", poll_after_seconds=1.0)

    def _set(self, instruction: Instruction) -> None:
        self.instruction = instruction
        self.changed.set()

    def grant(self, lease: LeaseAssignment) -> None:
        self._set(Instruction(action=Action.STAGE, lease=lease))

    async def poll(self, request: web.Request) -> web.Response:
        state = AgentState.model_validate_json(await request.read())
        if self.instruction.action == Action.FINISH and state.lease_id is None:
            self._set(self._idle())
            self.finished.set()
        elif self.instruction.action == Action.IDLE:
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(float(request.query.get("wait", "0")), 30.0))
        return web.json_response(text=self.instruction.model_dump_json())

    async def report(self, request: web.Request) -> web.Response:
        report = Report.model_validate_json(await request.read())
        lease = self.instruction.lease
        if report.phase == AgentPhase.STAGED:
            self._set(Instruction(action=Action.APPLY, lease=lease))
        elif report.phase == AgentPhase.RESTARTED:
            self._set(Instruction(action=Action.FINISH, lease=lease))
        elif report.phase in (AgentPhase.FAILED, AgentPhase.ROLLED_BACK):
            self.failure = f"{report.phase.value}: {report.error}"
            self._set(self._idle())
            self.finished.set()
        return web.json_response(text=self.instruction.model_dump_json())

    async def start(self, host: str) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/v1/agents/{node}/poll", self.poll)
        app.router.add_post("/v1/agents/{node}/report", self.report)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        return runner, f"http://{host}:{runner.addresses[0][1]}"


async def window(p: psutil.Process, seconds: float, prefix: str) -> dict[str, Any]:
    """RSS and USS at the end of `seconds`, and CPU seconds over them."""
    c0 = p.cpu_times()
    await asyncio.sleep(seconds)
    c1 = p.cpu_times()
    mem = p.memory_full_info()
    return {
        f"{prefix}_rss_mib": round(mem.rss / 2**20, 1),
        f"{prefix}_uss_mib": round(mem.uss / 2**20, 1),
        f"{prefix}_cpu_s": round((c1.user + c1.system) - (c0.user + c0.system), 2),
    }


def start_node(root: Path) -> NodeSupervisor:
    build_standin(root / "usr/local/bin/k3s", OLD, startup_seconds=0.2)
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "etc/rancher/k3s/config.yaml").write_text("node-name: bench-node\n")
    supervisor = NodeSupervisor(root, "server", restart_delay=0.1)
    supervisor.start()
    supervisor.wait_pid()
    return supervisor


async def measure_idle(seconds: float, tmp: Path) -> dict[str, Any]:
    coordinator = LeaseCoordinator()
    runner, url = await coordinator.start("127.0.0.1")
    releases = ReleaseServer([OLD, NEW], tmp / "releases", startup_seconds=0.2)
    await releases.start()
    root = tmp / "host"
    supervisor = await asyncio.to_thread(start_node, root)
    token = tmp / "token"
    token.write_text("bench-token")
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "agent",
            "--node",
            "bench-node",
            "--coordinator",
            url,
            "--host-root",
            str(root),
            "--token-file",
            str(token),
            "--state-dir",
            str(tmp / "state"),
            "--arch",
            "amd64",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        p = psutil.Process(proc.pid)
        await asyncio.sleep(3.0)  # start-up (imports) is not idle time
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise RuntimeError(f"the agent exited {proc.returncode}: {proc.stderr.read()[-2000:]!r}")
        figures: dict[str, Any] = {"agent_idle_window_s": seconds, **await window(p, seconds, "agent_idle")}
        lease = LeaseAssignment(
            lease_id="bench/1", plan="bench", node="bench-node", target_version=NEW, plan_hash="b" * 10,
            artifact=Artifact(url=releases.url(NEW), sha256=releases.sha256(NEW), name="k3s"),
            restart_stable_seconds=1.0, restart_timeout_seconds=30.0,
        )
        coordinator.grant(lease)
        await asyncio.wait_for(coordinator.finished.wait(), 120)
        if coordinator.failure:
            raise RuntimeError(f"the bench upgrade did not succeed: {coordinator.failure}")
        await asyncio.sleep(3.0)  # the lease's last exchanges are over: not idle time
        figures.update(await window(p, seconds, "agent_after_upgrade"))
        maps = await asyncio.to_thread(Path(f"/proc/{proc.pid}/maps").read_text)
        figures["agent_after_upgrade_aiohttp_loaded"] = "/aiohttp/" in maps
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited {proc.returncode} after the upgrade")
    finally:
        await stop_process(proc, 15)
        await asyncio.to_thread(supervisor.stop)
        await releases.stop()
        await runner.cleanup()
    return figures
