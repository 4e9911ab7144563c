"""Runs the coordinator runtime in-process (caches, reconcile loop, agent API over real HTTP) against the
in-memory Cluster stand-in, plus helpers to build Nodes and drive scripted agents to a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator import config
from coordinator.api import BrokerSlot, NodeAuthenticator, add_agent_routes
from coordinator.kube.resources import NODES
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from coordinator.web import add_status_routes
from sandbox.releases import ReleaseServer
from tests.integration.coordinator.memory_cluster import MemoryCluster
from tests.integration.coordinator.scripted_agent import ScriptedAgent


def node(name: str, server: bool, version: str, arch: str = "amd64") -> dict[str, Any]:
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/hostname": name}
    if server:
        labels["node-role.kubernetes.io/master"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "nodeInfo": {"kubeletVersion": version, "architecture": arch},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def plan_manifest(name: str, version: str, concurrency: int = 1, cordon: bool = False) -> dict[str, Any]:
    """A Plan for every Node (any arch), `concurrency` at a time, cordoned if asked."""
    spec: dict[str, Any] = {
        "concurrency": concurrency,
        "version": version,
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
    }
    if cordon:
        spec["cordon"] = True
    return {"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": name, "namespace": "system-upgrade"}, "spec": spec}


@dataclass
class Rig:
    cluster: MemoryCluster
    runtime: Runtime
    url: str
    releases: ReleaseServer
    slot: BrokerSlot
    tasks: list[asyncio.Task[None]]
    restarts: int = 0

    async def crash_and_restart(self) -> None:
        """Kill the runtime at whatever await it is in and start a fresh one (empty memory, same cluster)."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.runtime = Runtime(self.cluster, self.runtime.settings, Metrics())
        self.slot.broker = self.runtime.broker
        self.tasks[:] = [
            asyncio.create_task(self.runtime.run_caches()),
            asyncio.create_task(self.runtime.run()),
        ]
        self.restarts += 1

    def agents(
        self, names: Sequence[str], version: str, wait: float = 1.0, max_poll_after: float | None = 0.2
    ) -> list[ScriptedAgent]:
        async def restart(name: str, target: str) -> None:
            self.cluster.set_node_version(name, target)

        return [
            ScriptedAgent(self.url, n, f"tok-{n}", version, restart, wait=wait, max_poll_after=max_poll_after)
            for n in names
        ]


@asynccontextmanager
async def coordinator(
    tmp_path: Path, versions: Sequence[str], nodes: Sequence[tuple[str, bool, str]], *args: str
) -> AsyncIterator[Rig]:
    """A running coordinator over a MemoryCluster holding `nodes` (name, is_server, version)."""
    cluster = MemoryCluster({f"tok-{n}": n for n, _, _ in nodes})
    for name, server, version in nodes:
        cluster.put(NODES, node(name, server, version))
    releases = ReleaseServer(versions, tmp_path / "releases")
    # Its own thread: building the stand-in binaries must not stall the coordinator's loop.
    await asyncio.to_thread(releases.start_in_thread)
    settings = config.load(
        [
            "--listen",
            "127.0.0.1:0",
            "--release-base-url",
            releases.base_url,
            "--resync-interval",
            "1",
            "--agent-heartbeat-timeout",
            "10",
            "--verify-timeout",
            "30",
            *args,
        ],
        env={},
    )
    metrics = Metrics()
    runtime = Runtime(cluster, settings, metrics)
    app = web.Application()
    slot = BrokerSlot(runtime.broker)
    add_agent_routes(app, NodeAuthenticator(cluster), slot, 2.0)
    add_status_routes(app, runtime.status, runtime.ready, metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    tasks = [asyncio.create_task(runtime.run_caches()), asyncio.create_task(runtime.run())]
    try:
        yield Rig(cluster, runtime, f"http://127.0.0.1:{runner.addresses[0][1]}", releases, slot, tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await asyncio.to_thread(releases.stop_in_thread)


def condition(plan: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (plan.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


async def drive(
    rig: Rig, agents: Sequence[ScriptedAgent], until: Callable[[], bool], limit_s: float, what: str
) -> None:
    """Run `agents` until `until()` holds (polled), failing with `what` after `limit_s` seconds."""
    stop = asyncio.Event()
    runs = [asyncio.create_task(a.run(stop)) for a in agents]
    deadline = time.monotonic() + limit_s
    try:
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} within {limit_s:g}s; last error: {rig.runtime.last_error}; "
                    f"status: {rig.runtime.status()['plans']}"
                )
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*runs)
