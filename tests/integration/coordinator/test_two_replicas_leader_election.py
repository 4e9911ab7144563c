"""Two coordinator replicas with leader election never act at the same time, and the survivor takes over.

Each replica runs the real `LeaderElector` + `act_while_leading` (as `python -m coordinator
--leader-elect` does) over the shared in-memory cluster, and starts/stops its own runtime on gaining and
losing the Lease `k3s-upgrade-coordinator`. Agents reach whichever replica acts (as a Service would).

Aspects covered:
- exactly one replica acts at any sampled moment and at every start (never both);
- the leader "dies" abruptly (tasks cancelled, Lease not released): the other replica takes over once
  the Lease expires and finishes the rollout; concurrency holds over every lease-table version;
- a leader whose renewal hangs (an API server that does not answer) steps down two thirds of the Lease's
  duration after its last renewal, before another replica may take it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.api import IdleBroker
from coordinator.config import LEADER_LEASE_NAME
from coordinator.election import LeaderElector, act_while_leading
from coordinator.kube.resources import PLANS
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from tests.integration.coordinator.harness import Rig, condition, coordinator, drive

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NODES = [f"node-{i}" for i in range(1, 5)]


class Replica:
    def __init__(self, rig: Rig, name: str, acting: set[str], overlaps: list[str]) -> None:
        self.rig, self.name, self.acting, self.overlaps = rig, name, acting, overlaps
        self.runtime = Runtime(rig.cluster, rig.runtime.settings, Metrics())
        self.elector = LeaderElector(rig.cluster, "system-upgrade", LEADER_LEASE_NAME, name, duration=2.0)
        self.run: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self.runtime.run_caches()),
            asyncio.create_task(self.elector.run()),
            asyncio.create_task(act_while_leading(self.elector, self.start, self.stop, self.done)),
        ]

    def start(self) -> None:
        if self.acting - {self.name}:
            self.overlaps.append(f"{self.name} started while {sorted(self.acting)} act")
        self.acting.add(self.name)
        self.run = asyncio.create_task(self.runtime.run())
        self.rig.slot.broker = self.runtime.broker

    async def stop(self) -> None:
        if self.run is not None:
            self.run.cancel()
            await asyncio.gather(self.run, return_exceptions=True)
            self.run = None
        self.acting.discard(self.name)

    async def die(self) -> None:
        """SIGKILL-like: everything stops where it is; the Lease is not released; agents reach it no more."""
        self.done.set()
        if self.rig.slot.broker is self.runtime.broker:
            self.rig.slot.broker = IdleBroker(max_wait=0.2)
        tasks = [*self.tasks, *([self.run] if self.run else [])]
        for t in tasks:
            t.cancel()
        _done, pending = await asyncio.wait(tasks, timeout=3)
        if pending:
            raise AssertionError(f"{self.name}: tasks did not stop: {pending}")
        self.acting.discard(self.name)


async def test_two_replicas_never_both_act_and_the_survivor_finishes(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        for t in rig.tasks:  # the harness's own runtime stands aside: the replicas act
            t.cancel()
        await asyncio.gather(*rig.tasks, return_exceptions=True)
        rig.slot.broker = IdleBroker(max_wait=0.2)
        acting: set[str] = set()
        overlaps: list[str] = []
        a = Replica(rig, "replica-a", acting, overlaps)
        b = Replica(rig, "replica-b", acting, overlaps)
        rig.cluster.put(
            PLANS,
            {
                "apiVersion": "upgrade.cattle.io/v1",
                "kind": "Plan",
                "metadata": {"name": "fleet", "namespace": "system-upgrade"},
                "spec": {
                    "concurrency": 1,
                    "cordon": True,
                    "version": NEW,
                    "upgrade": {"image": "rancher/k3s-upgrade"},
                    "nodeSelector": {
                        "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]
                    },
                },
            },
        )
        samples: list[int] = []

        async def sample() -> None:
            while True:
                samples.append(len(acting))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        killed: list[str] = []
        try:

            async def kill_leader_after_first_node() -> None:
                while True:  # poll with the rollout's own deadline (drive) as the bound
                    if any(f.plan == "fleet" for t in rig.cluster.table_history for f in t.finished.values()):
                        break
                    await asyncio.sleep(0.02)
                leader = a if "replica-a" in acting else b
                await leader.die()
                killed.append(leader.name)

            killer = asyncio.create_task(kill_leader_after_first_node())
            plan = rig.cluster.objects["plans"]

            def complete() -> bool:
                return (
                    bool(killed)
                    and condition(plan["system-upgrade/fleet"], "Complete").get("status") == "True"
                )

            await drive(rig, rig.agents(NODES, OLD, wait=0.5), complete, 40, "the survivor did not finish")
            await killer
        finally:
            sampler.cancel()
            for r in (a, b):
                await r.die()
            await asyncio.gather(sampler, return_exceptions=True)
        assert not overlaps, overlaps
        assert max(samples) == 1, "two replicas acted at once"
        assert killed and len({le.plan for t in rig.cluster.table_history for le in t.leases}) == 1
        for table in rig.cluster.table_history:
            assert len(table.active_for_plan("fleet")) <= 1


class HangingLeases:
    """The cluster, but reading the Lease hangs once `hang` is set (an API server that does not answer)."""

    def __init__(self, cluster: object) -> None:
        self.cluster, self.hang = cluster, asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.cluster, name)

    async def get_lease(self, namespace: str, name: str) -> object:
        if self.hang.is_set():
            await asyncio.Event().wait()
        return await self.cluster.get_lease(namespace, name)  # type: ignore[attr-defined]


async def test_a_leader_whose_renewal_hangs_steps_down_before_the_lease_expires(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        cluster = HangingLeases(rig.cluster)
        elector = LeaderElector(cluster, "system-upgrade", "hang", "a", 3.0)  # type: ignore[arg-type]
        task = asyncio.create_task(elector.run())
        try:
            await asyncio.wait_for(elector.leading.wait(), 5)
            renewed = asyncio.get_running_loop().time()
            cluster.hang.set()  # the next renewal never comes back
            for _ in range(250):
                if not elector.leading.is_set():
                    break
                await asyncio.sleep(0.02)
            stepped_down = asyncio.get_running_loop().time() - renewed
            # Another replica may take the Lease a full duration (3 s) after the last renewal; this one
            # stops two thirds of it after (2 s), give or take the loop's steps.
            assert not elector.leading.is_set() and stepped_down < 2.5, f"leading {stepped_down:.2f} s on"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
