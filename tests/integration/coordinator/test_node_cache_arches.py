"""The runtime's Node cache keeps the set of node architectures as Nodes come, change and go.

Aspects: an architecture is listed while at least one cached Node has it; a Node that changes its arch
label moves from one to the other; a deleted Node no longer counts; a relist's DELETED for a Node the
cache never saw changes nothing.
"""

from __future__ import annotations

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
