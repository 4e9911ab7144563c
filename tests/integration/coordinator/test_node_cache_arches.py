"""The runtime's Node cache keeps the set of node architectures as Nodes come, change and go; and only a
change to what the engine sees of a Node wakes the reconcile loop.

Aspects: an architecture is listed while at least one cached Node has it; a Node that changes its arch
label moves from one to the other; a deleted Node no longer counts; a relist's DELETED for a Node the
cache never saw changes nothing. A Node update that leaves its view as it was (a status heartbeat, its
image list) wakes no pass and keeps its arch counted once; one that changes the view (Ready, a label,
the cordon), a new Node and a deleted one each wake one.
"""

from __future__ import annotations

import copy

from coordinator import config
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from tests.integration.coordinator.harness import node
from tests.integration.coordinator.memory_cluster import MemoryCluster

V = "v1.30.3+k3s1"


def test_node_arches_follow_the_node_events() -> None:
    settings = config.load(["--release-base-url", "http://127.0.0.1:9"], env={})
    runtime = Runtime(MemoryCluster({}), settings, Metrics())
    assert runtime.node_arches() == set()
    runtime._on_node_event("ADDED", node("a", False, V, "arm64"))
    runtime._on_node_event("ADDED", node("b", False, V, "arm64"))
    runtime._on_node_event("ADDED", node("c", True, V, "amd64"))
    assert runtime.node_arches() == {"arm64", "amd64"}
    runtime._on_node_event("MODIFIED", node("a", False, V, "amd64"))
    assert runtime.node_arches() == {"arm64", "amd64"}  # b is still arm64
    runtime._on_node_event("DELETED", node("b", False, V, "arm64"))
    assert runtime.node_arches() == {"amd64"}
    runtime._on_node_event("DELETED", node("ghost", False, V, "arm"))
    assert runtime.node_arches() == {"amd64"}
    runtime._on_node_event("MODIFIED", node("c", True, V, "arm"))
    assert runtime.node_arches() == {"amd64", "arm"}


def test_only_a_change_to_a_nodes_view_wakes_a_pass() -> None:
    settings = config.load(["--release-base-url", "http://127.0.0.1:9"], env={})
    runtime = Runtime(MemoryCluster({}), settings, Metrics())
    wake = runtime._wake
    a = node("a", False, V)
    runtime._on_node_event("ADDED", a)
    assert wake.is_set()
    wake.clear()
    beat = copy.deepcopy(a)
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-28T03:40:00Z"
    beat["status"]["images"] = [{"names": ["rancher/k3s"], "sizeBytes": 1}]
    beat["metadata"]["resourceVersion"] = "99"
    runtime._on_node_event("MODIFIED", beat)
    assert not wake.is_set()
    assert runtime.node_arches() == {"amd64"} and runtime._arches["amd64"] == 1
    for change in ("cordon", "label", "not ready"):
        changed = copy.deepcopy(beat)
        if change == "cordon":
            changed.setdefault("spec", {})["unschedulable"] = True
        elif change == "label":
            changed["metadata"].setdefault("labels", {})["plan.upgrade.cattle.io/p"] = "h"
        else:
            changed["status"]["conditions"][0]["status"] = "False"
        runtime._on_node_event("MODIFIED", changed)
        assert wake.is_set(), change
        wake.clear()
        runtime._on_node_event("MODIFIED", beat)  # (back as it was: a change again)
        assert wake.is_set(), change
        wake.clear()
    runtime._on_node_event("DELETED", beat)
    assert wake.is_set() and runtime.node_arches() == set()
