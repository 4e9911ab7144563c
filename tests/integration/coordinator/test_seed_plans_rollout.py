"""The seed's two Plans, verbatim, roll out over 3 servers + 5 agents through the real runtime.

The coordinator runtime (caches, reconcile loop, engine, agent API over real HTTP with TokenReview)
runs in-process against the in-memory Cluster stand-in; eight scripted agents speak the agent API and
"restart" their node by patching its kubeletVersion; checksums come from the sandbox release server.

Aspects covered:
- both Plans reach Complete=True with latestVersion/latestHash, every node carries its plan's hash label;
- no agent node got a lease before every server was verified, labelled and released;
- at no point did a plan hold more active leases than its concurrency (1), over every lease-table write;
- every node the coordinator cordoned is uncordoned again; the lease table ends empty of active leases;
- API cost: lease-table + node writes per upgraded node stay under a regression guard (10).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from coordinator import config
from coordinator.api import BrokerSlot, NodeAuthenticator, add_agent_routes
from coordinator.kube.resources import NODES, PLANS
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from coordinator.web import add_status_routes
from sandbox.releases import ReleaseServer
from tests.integration.coordinator.memory_cluster import MemoryCluster
from tests.integration.coordinator.scripted_agent import ScriptedAgent

ROOT = Path(__file__).resolve().parents[3]
OLD, NEW = "v1.24.5+k3s1", "v1.24.6+k3s1"
SERVERS = ["server-1", "server-2", "server-3"]
AGENTS = [f"agent-{i}" for i in range(1, 6)]


def node(name: str, server: bool) -> dict[str, Any]:
    labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name}
    if server:
        labels["node-role.kubernetes.io/master"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "nodeInfo": {"kubeletVersion": OLD, "architecture": "amd64"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@dataclass
class Rig:
    cluster: MemoryCluster
    runtime: Runtime
    url: str
    releases: ReleaseServer


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cluster = MemoryCluster({f"tok-{n}": n for n in SERVERS + AGENTS})
    for n in SERVERS:
        cluster.put(NODES, node(n, True))
    for n in AGENTS:
        cluster.put(NODES, node(n, False))
    releases = ReleaseServer([NEW], tmp_path / "releases")
    await releases.start()
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
        ],
        env={},
    )
    metrics = Metrics()
    runtime = Runtime(cluster, settings, metrics)
    app = web.Application()
    add_agent_routes(app, NodeAuthenticator(cluster), BrokerSlot(runtime.broker), 2.0)
    add_status_routes(app, runtime.status, runtime.ready, metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    tasks = [asyncio.create_task(runtime.run_caches()), asyncio.create_task(runtime.run())]
    try:
        yield Rig(cluster, runtime, f"http://127.0.0.1:{runner.addresses[0][1]}", releases)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await releases.stop()


def condition(plan: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (plan.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


async def test_seed_plans_complete_servers_first_within_concurrency(rig: Rig) -> None:
    for doc in yaml.safe_load_all((ROOT / "sandbox" / "seed_plans.yaml").read_text()):
        rig.cluster.put(PLANS, doc)

    async def restart(name: str, version: str) -> None:
        rig.cluster.set_node_version(name, version)

    stop = asyncio.Event()
    agents = [ScriptedAgent(rig.url, n, f"tok-{n}", OLD, restart, wait=1.0) for n in SERVERS + AGENTS]
    runs = [asyncio.create_task(a.run(stop)) for a in agents]
    deadline = time.monotonic() + 60
    try:
        while True:
            plans = rig.cluster.objects["plans"]
            server_plan, agent_plan = plans["system-upgrade/server-plan"], plans["system-upgrade/agent-plan"]
            if all(condition(p, "Complete").get("status") == "True" for p in (server_plan, agent_plan)):
                break
            assert time.monotonic() < deadline, (
                f"rollout did not complete: {condition(server_plan, 'Complete')} "
                f"{condition(agent_plan, 'Complete')} {rig.runtime.last_error}"
            )
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*runs)

    for plan, names in (("server-plan", SERVERS), ("agent-plan", AGENTS)):
        st = plans[f"system-upgrade/{plan}"]["status"]
        assert st["latestVersion"] == NEW and len(st["latestHash"]) == 56
        assert condition(plans[f"system-upgrade/{plan}"], "Validated")["status"] == "True"
        for n in names:
            obj = rig.cluster.objects["nodes"][n]
            assert obj["metadata"]["labels"][f"plan.upgrade.cattle.io/{plan}"] == st["latestHash"]
            assert not obj["spec"].get("unschedulable"), f"{n} left cordoned"
            assert obj["status"]["nodeInfo"]["kubeletVersion"] == NEW

    history = rig.cluster.table_history
    for table in history:
        for plan in ("server-plan", "agent-plan"):
            assert len(table.active_for_plan(plan)) <= 1, f"{plan} exceeded concurrency 1"
    first_agent = next(t for t in history if any(le.plan == "agent-plan" for le in t.leases))
    assert all(
        first_agent.finished.get(s) is not None and first_agent.finished[s].plan == "server-plan"
        for s in SERVERS
    ), "an agent node started before every server was verified and released"
    assert not any(le.active for le in history[-1].leases)
    upgraded = len(SERVERS) + len(AGENTS)
    writes = rig.cluster.writes
    # Regression guard at today's cost (about 7 table + 2 node writes per node; the target of 6 API
    # writes per node needs fewer lease phases written by the engine).
    assert writes.get("lease", 0) + writes.get("node", 0) <= 10 * upgraded, writes
