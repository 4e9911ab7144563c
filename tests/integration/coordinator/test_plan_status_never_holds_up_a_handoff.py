"""A Plan status write holds up no pass: a rollout goes on while the API server keeps it waiting.

Aspects: with the Plan's status patches left unanswered, its nodes are upgraded and labelled one after
another (no pass waits for a status write, and only one is out at a time); once the API server answers,
the status written is the latest one decided (`Complete`, every node's label), not each pass's in turn;
a status written before the echo of the one before it reached the cache still removes what it leaves
out (`applying`); a status write that fails shows in /status (`last_error`) until one succeeds, and the
status is written once the API server answers again; the echo of its own status write wakes no pass, but
the same status with a changed spec or annotation does, as does another status.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from coordinator import config
from coordinator.engine import PlanStatusWrite
from coordinator.kube.errors import KubeUnavailable
from coordinator.kube.resources import PLANS
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from tests.integration.coordinator.harness import condition, coordinator, drive, plan_manifest
from tests.integration.coordinator.memory_cluster import MemoryCluster

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
PLAN: dict[str, Any] = plan_manifest("rollout", NEW, cordon=True)


async def test_an_unanswered_status_patch_holds_up_no_hand_off(tmp_path: Path) -> None:
    names = [f"node-{i}" for i in range(1, 5)]
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in names]) as rig:
        rig.cluster.status_gate = asyncio.Event()
        rig.cluster.put(PLANS, copy.deepcopy(PLAN))  # concurrency 1: a pass per hand-off
        plans, nodes = rig.cluster.objects["plans"], rig.cluster.objects["nodes"]
        label = "plan.upgrade.cattle.io/rollout"

        def all_labelled() -> bool:
            return all(label in nodes[n]["metadata"].get("labels", {}) for n in names)

        await drive(rig, rig.agents(names, OLD), all_labelled, 30, "the nodes were not all upgraded")
        assert rig.cluster.status_waiting == 1  # the first status write, still out; nothing else waits on it
        assert "status" not in plans["system-upgrade/rollout"]
        writes = rig.cluster.writes.get("status", 0)
        rig.cluster.status_gate.set()

        def complete() -> bool:
            return condition(plans["system-upgrade/rollout"], "Complete").get("status") == "True"

        await drive(rig, [], complete, 10, "the Plan's status did not become Complete")
    assert rig.cluster.writes["status"] - writes <= 2  # the first one out, then the latest (not one per pass)
    assert all(nodes[n]["metadata"]["labels"][label] for n in names)


async def test_a_status_written_before_the_last_ones_echo_drops_what_it_leaves_out(tmp_path: Path) -> None:
    """The write naming the node `applying` is answered late, once the node is done; the `Complete` status
    follows it before its echo reached the cache, and must remove `applying` all the same (not only once
    a later pass sees the mix in the cache)."""
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        cluster = rig.cluster
        plain = cluster.patch_status
        release, naming = asyncio.Event(), asyncio.Event()
        stored_wrong: list[Any] = []

        async def patch_status(res: Any, namespace: str, name: str, status: Any) -> Any:
            if status.get("applying") and not naming.is_set():
                naming.set()
                await release.wait()
                return await plain(res, namespace, name, status)
            out = await plain(res, namespace, name, status)
            if condition(out, "Complete").get("status") == "True" and "applying" in out["status"]:
                stored_wrong.append(out["status"]["applying"])
            if naming.is_set():
                await asyncio.sleep(0.05)  # its echo reaches the cache before its answer reaches the lane
            return out

        cluster.patch_status = patch_status  # type: ignore[method-assign]
        cluster.put(PLANS, plan_manifest("rollout", NEW))
        def upgraded() -> bool:
            labels = cluster.objects["nodes"]["node-1"]["metadata"].get("labels", {})
            return naming.is_set() and "plan.upgrade.cattle.io/rollout" in labels

        await drive(rig, rig.agents(["node-1"], OLD), upgraded, 30, "the node was not upgraded")
        release.set()

        def complete() -> bool:
            plan = cluster.objects["plans"]["system-upgrade/rollout"]
            done = condition(plan, "Complete").get("status") == "True"
            return done and "applying" not in plan["status"]

        await drive(rig, [], complete, 1.5, "the Plan's status did not become Complete without `applying`")
    assert stored_wrong == []  # not even for a moment


async def test_a_failing_status_write_shows_in_status_until_one_succeeds(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [("node-1", False, OLD)]) as rig:
        cluster = rig.cluster
        plain = cluster.patch_status
        refusing = True

        async def patch_status(res: Any, namespace: str, name: str, status: Any) -> Any:
            if refusing:
                raise KubeUnavailable("patch plans/rollout/status: the API server is away")
            return await plain(res, namespace, name, status)

        cluster.patch_status = patch_status  # type: ignore[method-assign]
        cluster.put(PLANS, plan_manifest("rollout", NEW))

        def shown() -> bool:
            return "status of plan rollout not written" in (rig.runtime.status()["last_error"] or "")

        await drive(rig, [], shown, 10, "the failed status write was not shown")
        await asyncio.sleep(1.5)  # passes that succeed meanwhile do not hide it
        assert shown()
        refusing = False

        def written() -> bool:
            plan = cluster.objects["plans"]["system-upgrade/rollout"]
            return "latestHash" in plan.get("status", {}) and rig.runtime.status()["last_error"] is None

        await drive(rig, [], written, 10, "the status was not written again once the API server answered")


async def test_the_echo_of_its_own_status_write_alone_wakes_no_pass() -> None:
    settings = config.load(["--release-base-url", "http://127.0.0.1:9"], env={})
    cluster = MemoryCluster({})
    runtime = Runtime(cluster, settings, Metrics())
    plan = cluster.put(PLANS, plan_manifest("rollout", NEW))
    runtime._on_plan_event("ADDED", plan)
    assert runtime._wake.is_set()
    written = {"applying": ["node-1"], "latestHash": "h"}
    runtime.statuses.put(PlanStatusWrite("rollout", written))
    assert runtime.statuses._task is not None
    await asyncio.wait_for(runtime.statuses._task, 5.0)
    echo = cluster.objects["plans"]["system-upgrade/rollout"]
    assert echo["status"] == written
    runtime._wake.clear()
    runtime._on_plan_event("MODIFIED", echo)
    assert not runtime._wake.is_set()
    for change in ("spec", "annotation", "status"):
        other = copy.deepcopy(echo)
        if change == "spec":
            other["spec"]["concurrency"] = 2
        elif change == "annotation":
            other["metadata"].setdefault("annotations", {})["upgrade.cattle.io/failure-budget"] = "1"
        else:
            other["status"]["applying"] = []
        runtime._on_plan_event("MODIFIED", other)
        assert runtime._wake.is_set(), change
        runtime._wake.clear()
        runtime._on_plan_event("MODIFIED", echo)  # (back as it was: a change again, but for the status)
        runtime._wake.clear()
