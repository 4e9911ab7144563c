"""One full scheduling decision (`coordinator.engine.decide`) over 5,000 nodes and 20 Plans.

The engine is pure, so this times exactly the decision: no API, no network. Every node's agent is alive.
Each Plan selects its own pool of 250 nodes (`pool=<i>` label, matchExpressions In) with concurrency 10.
Two cases: an empty lease table (the decision grants 200 leases) and the table that first decision
produced (every Plan holds its full set). Each is timed twice: cold (Node views just made, as on the
coordinator's first pass) and warm (the same views with `CHANGED` of them replaced, as on a later pass:
the runtime keeps a Node's view until the Node changes, and each plan's selection with them,
`coordinator.nodeviews`). Prints JSON."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from coordinator.engine import AgentView, EngineSettings, NodeView, TableWrite, World, decide, plan_input
from coordinator.leasing import LeaseTable
from coordinator.nodeviews import NodeViews
from wire.messages import AgentState, Artifact

NODES, PLANS, CONCURRENCY = 5000, 20, 10
CHANGED = 10
"""Nodes changed before a warm decision (a 5,000-node rollout at concurrency 200: 6-7 per pass)."""
OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
ARTIFACTS = {"amd64": Artifact(url="http://rel/k3s", sha256="a" * 64, name="k3s")}


def plan(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": f"pool-{i}", "namespace": "system-upgrade", "uid": f"plan-uid-{i}"},
        "spec": {
            "concurrency": CONCURRENCY,
            "cordon": True,
            "version": NEW,
            "serviceAccountName": "system-upgrade",
            "upgrade": {"image": "rancher/k3s-upgrade"},
            "nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "In", "values": [str(i)]}]},
        },
    }


def view(n: int, plans: int, generation: int = 0) -> NodeView:
    return NodeView(
        name=f"node-{n}",
        uid=f"node-uid-{n}",
        labels={"pool": str(n % plans), "kubernetes.io/arch": "amd64"},
        annotations={"generation": str(generation)},
        unschedulable=False,
        ready=True,
        kubelet_version=OLD,
    )


def world(now: datetime, table: LeaseTable, nodes: int = NODES, plans: int = PLANS) -> World:
    """Fresh Node views, kept as the coordinator keeps them (`NodeViews`)."""
    views = NodeViews()
    for n in range(nodes):
        views.put(view(n, plans))
    inputs = tuple(plan_input(plan(i), artifacts=ARTIFACTS) for i in range(plans))
    return World(
        now=now,
        namespace="system-upgrade",
        plans=inputs,
        nodes=tuple(views.values()),
        table=table,
        agents=agents(now, nodes),
        drains={},
        started_at=now,
        settings=EngineSettings(),
        node_index=views,
        selections=views,
    )


def changed(w: World, count: int, generation: int) -> World:
    """`w` after `count` Nodes changed (new views), as between two passes of a rollout."""
    views = w.selections
    assert views is not None
    plans = len(w.plans)
    for n in range(0, len(views), max(len(views) // count, 1))[:count]:
        views.put(view(n, plans, generation))
    return replace(w, nodes=tuple(views.values()))


def agents(now: datetime, nodes: int) -> dict[str, AgentView]:
    """Every node's agent polled just now (the engine grants only to nodes whose agent is alive)."""
    return {
        f"node-{n}": AgentView(
            state=AgentState(node=f"node-{n}", agent_version="bench", arch="amd64", k3s_version=OLD), at=now
        )
        for n in range(nodes)
    }


def main(nodes: int = NODES, plans: int = PLANS, repeat: int = 7) -> dict[str, Any]:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    first = decide(world(now, LeaseTable(), nodes, plans))
    tables = [w.table for w in first.writes if isinstance(w, TableWrite)]
    granted = tables[-1] if tables else LeaseTable()
    cases = ("empty_table", "leases_held", "empty_table_warm", "leases_held_warm")
    timings: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for label, table in (("empty_table", LeaseTable()), ("leases_held", granted)):
            w = world(now, table, nodes, plans)
            for key in (label, f"{label}_warm"):
                if key.endswith("_warm"):
                    w = changed(w, CHANGED, len(timings[key]) + 1)
                t0 = time.perf_counter()
                decide(w)
                timings[key].append((time.perf_counter() - t0) * 1000)
    return {
        "benchmark": "scheduling",
        "nodes": nodes,
        "plans": plans,
        "leases_granted_by_first_decision": len(granted.leases),
        **{f"decide_ms_{k}_median": round(statistics.median(v), 1) for k, v in timings.items()},
        **{f"decide_ms_{k}_max": round(max(v), 1) for k, v in timings.items()},
    }


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
    print()
