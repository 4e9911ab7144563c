"""A scripted agent: speaks the real agent HTTP API and plays the node instead of touching a host.

It follows the coordinator's instructions the way the real agent does (stage -> report staged; apply ->
"restart" the node -> report restarted; rollback -> report rolled_back; finish -> idle; idle naming a
binary -> say it holds it in the next poll, then take `apply` without `stage`), but instead of
replacing a binary it calls `restart(node, version)`, which a test implements by patching the Node's
`status.nodeInfo.kubeletVersion` and `Ready` condition through the API server. It records every
instruction it got with a timestamp so tests can check ordering and concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from agent import __version__
from wire.messages import Action, AgentPhase, AgentState, Instruction, Report

Restart = Callable[[str, str], Awaitable[None]]
"""(node, version) -> make the Node look like it restarted on `version`."""


@dataclass
class Seen:
    at: float
    action: Action
    lease_id: str | None
    version: str | None


@dataclass
class ScriptedAgent:
    coordinator: str
    node: str
    token: str
    version: str
    restart: Restart
    arch: str = "amd64"
    wait: float = 2.0
    fail_apply: bool = False
    """Report `failed` instead of restarting (to exercise failure handling)."""
    log: list[Seen] = field(default_factory=list)
    phase: AgentPhase = AgentPhase.IDLE
    lease_id: str | None = None
    statuses: list[int] = field(default_factory=list)
    max_poll_after: float | None = 0.2
    """The longest it sleeps when told `poll_after_seconds` (None: as long as told)."""
    prefetches: bool = True
    """Speaks the prefetch (an agent version that does); False: an older agent, never told to."""
    prefetched: str | None = None

    def state(self) -> AgentState:
        return AgentState(
            node=self.node,
            agent_version=__version__ if self.prefetches else "0.1.0",
            arch=self.arch,
            k3s_version=self.version,
            lease_id=self.lease_id,
            phase=self.phase,
            prefetched=self.prefetched if self.phase is AgentPhase.IDLE else None,
        )

    async def _post(self, session: aiohttp.ClientSession, path: str, body: str) -> Instruction | None:
        url = f"{self.coordinator}/v1/agents/{self.node}/{path}"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.wait + 10)
            ) as r:
                self.statuses.append(r.status)
                if r.status != 200:
                    return None
                return Instruction.model_validate_json(await r.read())
        except (aiohttp.ClientError, TimeoutError):
            return None  # coordinator restarting: retry

    async def report(
        self, session: aiohttp.ClientSession, phase: AgentPhase, error: str | None = None
    ) -> None:
        assert self.lease_id is not None
        self.phase = phase
        body = Report(
            node=self.node, lease_id=self.lease_id, phase=phase, k3s_version=self.version, error=error
        ).model_dump_json()
        for _ in range(200):
            got = await self._post(session, "report", body)
            if got is not None or (self.statuses and 400 <= self.statuses[-1] < 500):
                return
            await asyncio.sleep(0.1)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                ins = await self._post(session, f"poll?wait={self.wait:g}", self.state().model_dump_json())
                if ins is None:
                    await asyncio.sleep(0.1)
                    continue
                lease = ins.lease
                self.log.append(
                    Seen(
                        time.monotonic(),
                        ins.action,
                        lease.lease_id if lease else None,
                        lease.target_version if lease else None,
                    )
                )
                assert ins.prefetch is None or self.prefetches, "told to prefetch: it would reject the field"
                if ins.action is Action.STAGE and lease is not None:
                    self.lease_id, self.prefetched = lease.lease_id, None
                    await self.report(session, AgentPhase.STAGED)
                elif ins.action is Action.APPLY and lease is not None and (
                    self.phase is AgentPhase.STAGED
                    or (self.phase is AgentPhase.IDLE and self.prefetched == lease.artifact.sha256)
                ):
                    self.lease_id, self.prefetched = lease.lease_id, None
                    if self.fail_apply:
                        await self.report(session, AgentPhase.FAILED, "scripted failure")
                        continue
                    self.phase = AgentPhase.APPLYING  # (no report: as the agent, its polls say it)
                    self.version = lease.target_version
                    await self.restart(self.node, lease.target_version)
                    await self.report(session, AgentPhase.RESTARTED)
                elif (
                    ins.action is Action.APPLY
                    and lease is not None
                    and lease.lease_id == self.lease_id
                    and self.phase in (AgentPhase.APPLYING, AgentPhase.RESTARTED)
                ):
                    # Its `restarted` report was lost with a dead coordinator: say it again, as the real
                    # agent does (agent/upgrade.py answers a repeated apply with `restarted`).
                    await self.report(session, AgentPhase.RESTARTED)
                elif ins.action is Action.ROLLBACK and lease is not None:
                    await self.report(session, AgentPhase.ROLLED_BACK)
                elif ins.action is Action.FINISH:
                    self.phase, self.lease_id = AgentPhase.IDLE, None
                elif ins.action is Action.IDLE and self.phase in (AgentPhase.ROLLED_BACK, AgentPhase.FAILED):
                    self.phase, self.lease_id = AgentPhase.IDLE, None
                elif ins.action is Action.IDLE and ins.prefetch is not None and self.phase is AgentPhase.IDLE:
                    self.prefetched = ins.prefetch.artifact.sha256
                if ins.poll_after_seconds and ins.action is Action.IDLE:
                    try:
                        async with asyncio.timeout(
                            min(ins.poll_after_seconds, self.max_poll_after or ins.poll_after_seconds)
                        ):  # not wait_for: it can swallow a cancel (3.11)
                            await stop.wait()
                    except TimeoutError:
                        pass
