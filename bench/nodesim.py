"""Light stand-ins for nodes and their agents: hundreds of asyncio tasks in ONE process.

Each `SimNode` speaks the real agent HTTP API (`wire.messages`, long-poll + reports, bearer token from a
TokenRequest bound to a Pod on its node) to a real coordinator process through the agent's own client
(`agent.client.CoordinatorClient`: its connection kept from exchange to exchange, the token read from its
file each time),
and plays its node on the API server emulator the way a restarting k3s would: on `apply` it spends a
fixed `work` time (the node's own upgrade work), then patches its Node's status (`kubeletVersion` =
target, `Ready`) and reports `restarted`. Nothing else of an agent is simulated (no download, no
binary): the benchmark measures the orchestration around the node's work. Like the agent, it sends no
`applying` report (its polls would say it). A prefetch (`idle` naming a
binary) is taken as done at once: the stand-in says it holds the binary in its next poll, and a lease
then comes as `apply` (granted `staged`). A `bare` stand-in takes `apply` with the lease
(against `bench.floor --bare`: not our protocol).

Every instruction it receives and every report it sends is timestamped (`time.monotonic`) in a shared
`Timeline` so the rollout benchmark can compute hand-off latencies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent import __version__
from agent.client import CoordinatorClient, CoordinatorUnavailable, Rejected
from agent.loop import next_instruction
from coordinator.config import DEFAULT_AGENT_SERVICE_ACCOUNT
from wire.messages import TOKEN_AUDIENCE, Action, AgentPhase, AgentState, Instruction, Report

ADMIN = {"Authorization": "Bearer admin-token"}
AGENT_SERVICE_ACCOUNT = DEFAULT_AGENT_SERVICE_ACCOUNT
"""The ServiceAccount the stand-ins' tokens belong to: the one the coordinator accepts by default."""
SETUP_PARALLELISM = 32


@dataclass
class Timeline:
    """Monotonic timestamps per node of the events the benchmark needs."""

    staged: dict[str, float] = field(default_factory=dict)
    """First instruction of a lease received, `stage` (or `apply` after a prefetch): the grant as the agent
    sees it."""
    applied: dict[str, float] = field(default_factory=dict)
    """First `apply` instruction received (staged, cordoned: the go-ahead)."""
    restarted: dict[str, float] = field(default_factory=dict)
    """`restarted` report sent: the node's work is over and its Node shows the target, Ready."""
    finished: dict[str, float] = field(default_factory=dict)
    """`finish` received (the coordinator verified and labelled the node)."""
    errors: list[str] = field(default_factory=list)
    expected: int = 0
    """`all_finished` is set once this many nodes have received `finish`."""
    all_finished: asyncio.Event = field(default_factory=asyncio.Event)
    wave: int = 0
    """The plan's concurrency: the first wave is the first `wave` nodes back, and its hand-offs are over
    once `2 * wave` nodes have received their first instruction."""
    probe: Callable[[], dict[str, float | None]] | None = None
    """Called when the first wave's first node is back and when its last hand-off is over (the CPU
    seconds of each process, say); what it returns is kept in `probes`."""
    probes: dict[str, tuple[float, dict[str, float | None]]] = field(default_factory=dict)
    """`first_wave_back` and `first_wave_handed_off`: (monotonic time, what `probe` returned)."""

    def _probe(self, moment: str) -> None:
        if self.probe is not None and moment not in self.probes:
            self.probes[moment] = (time.monotonic(), self.probe())

    def stage(self, node: str, now: float) -> None:
        """`node` received the first instruction of its lease at `now`."""
        self.staged.setdefault(node, now)
        if self.wave and len(self.staged) == 2 * self.wave:
            self._probe("first_wave_handed_off")

    def restart(self, node: str) -> None:
        """`node` is back on the target (its `restarted` report goes out now)."""
        self.restarted.setdefault(node, time.monotonic())
        if len(self.restarted) == 1:
            self._probe("first_wave_back")

    def finish(self, node: str) -> None:
        self.finished.setdefault(node, time.monotonic())
        if len(self.finished) >= self.expected:
            self.all_finished.set()


class ApiClient:
    """The few admin calls to the API server emulator that setup and node restarts need."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(self, method: str, path: str, body: Any, ctype: str = "application/json") -> Any:
        headers = {**ADMIN, "Content-Type": ctype}
        async with self.session.request(method, self.url + path, data=json.dumps(body), headers=headers) as r:
            text = await r.text()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {r.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def set_node(self, name: str, version: str) -> None:
        status = {
            "nodeInfo": {"kubeletVersion": version, "architecture": "amd64"},
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        await self.call(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": status}, "application/merge-patch+json"
        )


async def register(api: ApiClient, names: Iterable[str], version: str, namespace: str) -> dict[str, str]:
    """Create each Node (Ready on `version`), a Pod of the agent on it, and a token bound to that Pod.

    Needs the namespace and its `AGENT_SERVICE_ACCOUNT` ServiceAccount. Returns node -> bearer token."""
    gate = asyncio.Semaphore(SETUP_PARALLELISM)
    tokens: dict[str, str] = {}

    async def one(name: str) -> None:
        async with gate:
            labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name}
            await api.call(
                "POST",
                "/api/v1/nodes",
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}},
            )
            await api.set_node(name, version)
            pod = await api.call(
                "POST",
                f"/api/v1/namespaces/{namespace}/pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"agent-{name}", "namespace": namespace},
                    "spec": {
                        "nodeName": name,
                        "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                        "containers": [{"name": "agent", "image": "k3s-upgrader"}],
                    },
                },
            )
            ref = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
            review = await api.call(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{AGENT_SERVICE_ACCOUNT}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": [TOKEN_AUDIENCE], "expirationSeconds": 7200, "boundObjectRef": ref},
                },
            )
            tokens[name] = review["status"]["token"]

    await asyncio.gather(*(one(n) for n in names))
    return tokens


@dataclass
class SimNode:
    """One node + agent. `run` polls until `stop` is set; it never raises for a refused request."""

    name: str
    client: CoordinatorClient
    version: str
    api: ApiClient
    timeline: Timeline
    work: float = 1.0
    wait: float = 20.0
    bare: bool = False
    """Against `bench.floor --bare`: `apply` comes with the lease (with no prefetch before it)."""
    phase: AgentPhase = AgentPhase.IDLE
    lease_id: str | None = None
    prefetched: str | None = None

    async def _exchange(self, what: str, call: Awaitable[Instruction]) -> Instruction | None:
        try:
            return await call
        except (CoordinatorUnavailable, Rejected) as exc:
            self.timeline.errors.append(f"{self.name} {what}: {exc}")
            return None

    async def _report(self, phase: AgentPhase) -> Instruction:
        """Send the report until it is accepted; the answer (the next instruction, as the agent gets it)."""
        assert self.lease_id is not None
        self.phase = phase
        body = Report(node=self.name, lease_id=self.lease_id, phase=phase, k3s_version=self.version)
        for _ in range(50):
            answer = await self._exchange("report", self.client.report(body))
            if answer is not None:
                return answer
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: report {phase} never accepted")

    def _state(self) -> AgentState:
        return AgentState(
            node=self.name,
            agent_version=__version__,  # the agent's: it speaks the same protocol
            arch="amd64",
            k3s_version=self.version,
            lease_id=self.lease_id,
            phase=self.phase,
            prefetched=self.prefetched if self.phase is AgentPhase.IDLE else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Like agent.loop: poll, obey, and take a report's answer as the next instruction when it asks
        for something else (`staged` -> `apply`, `restarted` -> `finish`) instead of polling for it."""
        ins: Instruction | None = None
        while not stop.is_set():
            if ins is None:
                ins = await self._exchange("poll", self.client.poll(self._state(), self.wait))
                if ins is None:
                    await asyncio.sleep(0.5)
                    continue
            done = ins
            answer = await self._obey(done)
            ins = next_instruction(done, answer)
            if done.action is Action.IDLE:
                ins = None
                if done.poll_after_seconds:
                    try:
                        async with asyncio.timeout(done.poll_after_seconds):
                            await stop.wait()
                    except TimeoutError:
                        pass

    async def _work_then_report(self, target: str) -> Instruction:
        """The node's own work, its Node Ready on `target` (as a restarted kubelet reports), `restarted`."""
        await asyncio.sleep(self.work)
        self.version = target
        await self.api.set_node(self.name, target)
        self.timeline.restart(self.name)
        return await self._report(AgentPhase.RESTARTED)

    async def _obey(self, ins: Instruction) -> Instruction | None:
        """Carry out `ins`; the answer to the last report it sent (None if none)."""
        lease = ins.lease
        answer = None
        if ins.action is Action.STAGE and lease is not None:
            self.timeline.stage(self.name, time.monotonic())
            self.lease_id, self.prefetched = lease.lease_id, None
            answer = await self._report(AgentPhase.STAGED)
        elif ins.action is Action.APPLY and lease is not None and self.phase is AgentPhase.IDLE:
            now = time.monotonic()  # granted `staged` from its prefetch (or bare): the grant and the go-ahead
            self.timeline.stage(self.name, now)
            self.timeline.applied.setdefault(self.name, now)
            self.lease_id, self.prefetched, self.phase = lease.lease_id, None, AgentPhase.APPLYING
            answer = await self._work_then_report(lease.target_version)
        elif ins.action is Action.APPLY and lease is not None and self.phase is AgentPhase.STAGED:
            self.timeline.applied.setdefault(self.name, time.monotonic())
            self.phase = AgentPhase.APPLYING  # (no report: the agent's polls say it)
            answer = await self._work_then_report(lease.target_version)
        elif ins.action is Action.APPLY and lease is not None and self.phase is AgentPhase.RESTARTED:
            answer = await self._report(AgentPhase.RESTARTED)
        elif ins.action is Action.FINISH:
            self.timeline.finish(self.name)
            self.phase, self.lease_id = AgentPhase.IDLE, None
        elif ins.action is Action.ROLLBACK and lease is not None:
            self.timeline.errors.append(f"{self.name}: told to roll back: {ins.reason}")
            answer = await self._report(AgentPhase.ROLLED_BACK)
        elif ins.action is Action.IDLE and self.phase in (AgentPhase.ROLLED_BACK, AgentPhase.FAILED):
            self.phase, self.lease_id = AgentPhase.IDLE, None
        elif ins.action is Action.IDLE and ins.prefetch is not None and self.phase is AgentPhase.IDLE:
            self.prefetched = ins.prefetch.artifact.sha256
        return answer
