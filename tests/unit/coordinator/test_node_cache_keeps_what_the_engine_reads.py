"""The Node cache keeps only what the coordinator reads, and reads the same from it.

Aspects: a Node as a real k3s server reports it (images, managedFields, capacity, several conditions,
taints) gives the same NodeView slimmed as whole; the slimmed object is a fraction of the size; labels and
annotations survive (the status endpoint and Events read them).
"""

from __future__ import annotations

import json

from coordinator.reconciler import node_view, slim_node


def real_node(ready: str = "True", unschedulable: bool = True) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "server-1",
            "uid": "3b1a9c2e-0d1f-4d4e-9a57-1f0c6b1f2a3b",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "labels": {
                "kubernetes.io/arch": "arm64",
                "node-role.kubernetes.io/control-plane": "true",
                "plan.upgrade.cattle.io/server-plan": "f" * 56,
            },
            "annotations": {"k3s.io/node-args": "[\"server\"]", "upgrade.k3s.io/retry": "now"},
            "managedFields": [{"manager": "k3s", "operation": "Update", "fieldsV1": {"f:status": {}}}] * 8,
        },
        "spec": {"podCIDR": "10.42.0.0/24", "unschedulable": unschedulable,
                 "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": ready, "reason": "KubeletReady", "message": "kubelet is ready"},
            ],
            "nodeInfo": {"kubeletVersion": "v1.30.4+k3s1", "architecture": "arm64", "osImage": "Debian",
                         "containerRuntimeVersion": "containerd://1.7.20-k3s1", "kernelVersion": "6.1.0"},
            "images": [{"names": [f"docker.io/rancher/image-{i}@sha256:{'a' * 64}"], "sizeBytes": 10**7}
                       for i in range(40)],
        },
    }


def test_the_slim_node_gives_the_same_view() -> None:
    for ready in ("True", "False"):
        for unschedulable in (True, False):
            node = real_node(ready, unschedulable)
            assert node_view(slim_node(node)) == node_view(node)


def test_the_slim_node_is_small_and_keeps_labels_and_annotations() -> None:
    node = real_node()
    slim = slim_node(node)
    assert len(json.dumps(slim)) * 5 < len(json.dumps(node))
    assert slim["metadata"]["labels"] == node["metadata"]["labels"]
    assert slim["metadata"]["annotations"] == node["metadata"]["annotations"]
    assert slim["metadata"]["uid"] == node["metadata"]["uid"]


def test_a_node_without_status_still_slims() -> None:
    bare = {"metadata": {"name": "n"}}
    assert node_view(slim_node(bare)) == node_view(bare)
