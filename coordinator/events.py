"""Events on Plans and Nodes: turning the engine's `EventWrite` into a core/v1 Event's involvedObject.

Plan events go to the Plan's namespace; Node events (cluster-scoped objects) to `default`, as the
kubelet and `kubectl drain` record them, so `kubectl describe node` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.kube.protocol import Obj

NODE_EVENT_NAMESPACE = "default"


def involved(kind: str, name: str, namespace: str, cached: Mapping[str, Obj]) -> tuple[str, dict[str, str]]:
    """(namespace to record the Event in, involvedObject) for a Plan or Node named `name`."""
    if kind == "Node":
        ref = {"apiVersion": "v1", "kind": "Node", "name": name}
        ns = NODE_EVENT_NAMESPACE
    else:
        ref = {"apiVersion": "upgrade.cattle.io/v1", "kind": kind, "name": name, "namespace": namespace}
        ns = namespace
    uid = ((cached.get(name) or {}).get("metadata") or {}).get("uid")
    if uid:
        ref["uid"] = str(uid)
    return ns, ref
