"""Which pods a drain removes, as `kubectl drain` decides it. Pure: pods in, (pods, problems) out.

Rules, in kubectl's order: our own pod (the coordinator's) is never touched; pods outside `podSelector`
are left alone; finished pods (Succeeded/Failed) always go; mirror (static) pods are skipped; DaemonSet
pods are skipped when `ignoreDaemonSets` is true or unset (SUC's default) and are a problem when it is
false; a pod with no controller needs `force`; a pod with emptyDir volumes needs `deleteEmptydirData`
(or its old name `deleteLocalData`). A non-empty problem list means the drain must not start: the
runtime fails the lease with those messages (each names the pod and the setting that would allow it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.plans import Drain
from coordinator.selection import matches

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

Pod = Mapping[str, Any]


def pods_to_evict(
    pods: Sequence[Pod], drain: Drain, own_name: str | None = None, own_namespace: str | None = None
) -> tuple[list[Pod], list[str]]:
    """(pods to evict or delete, problems that block the drain), for the pods bound to one node."""
    out: list[Pod] = []
    problems: list[str] = []
    for pod in pods:
        meta: Mapping[str, Any] = pod.get("metadata") or {}
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        if own_name and meta.get("name") == own_name and own_namespace in (None, meta.get("namespace")):
            continue
        if drain.pod_selector is not None and not matches(drain.pod_selector, meta.get("labels") or {}):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            out.append(pod)
            continue
        if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
            continue
        owners: Sequence[Mapping[str, Any]] = meta.get("ownerReferences") or []
        controller = next((o for o in owners if o.get("controller")), None)
        if controller is not None and controller.get("kind") == "DaemonSet":
            if drain.ignore_daemon_sets is False:
                problems.append(f"pod {name} is managed by a DaemonSet (set drain.ignoreDaemonSets)")
            continue
        if controller is None and not drain.force:
            problems.append(f"pod {name} is not managed by a controller (set drain.force)")
            continue
        volumes: Sequence[Mapping[str, Any]] = (pod.get("spec") or {}).get("volumes") or []
        allowed = drain.delete_emptydir_data or drain.delete_local_data
        if any("emptyDir" in v for v in volumes) and not allowed:
            problems.append(f"pod {name} has emptyDir data (set drain.deleteEmptydirData)")
            continue
        out.append(pod)
    return out, problems
