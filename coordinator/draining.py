"""Which pods a drain removes, as `kubectl drain` decides it. Pure: pods in, (pods, problems) out.

Rules, in kubectl's order (k8s.io/kubectl/pkg/drain/filters.go): our own pods are never touched (the
coordinator's, and the agents', `AGENT_LABEL`: the node's agent does the upgrade; SUC likewise leaves its
own pods out); pods outside `podSelector` are left alone; a pod terminating for longer than
`skipWaitForDeleteTimeout` (> 0) is skipped; mirror (static) pods are skipped; finished pods
(Succeeded/Failed) go; DaemonSet pods are skipped when `ignoreDaemonSets` is true or unset (SUC's
default) and are a problem when it is false; a pod with no controller needs `force`; a pod with emptyDir
volumes is a problem only when `deleteEmptydirData` or its old name `deleteLocalData` is set to false
(SUC passes `--delete-emptydir-data` unless one of them is false). A non-empty problem list means the
drain must not start: the runtime fails the lease with those messages (each names the pod and the
setting that would allow it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from coordinator.plans import Drain
from coordinator.selection import matches

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
AGENT_LABEL = ("app.kubernetes.io/name", "k3s-upgrade-agent")
"""The label of the agents' pods (deploy/daemonset.yaml)."""

Pod = Mapping[str, Any]


def terminating_too_long(pod: Pod, skip_after: int, now: datetime) -> bool:
    """Whether `pod` has been terminating for more than `skip_after` seconds (0 or less: never, as
    kubectl takes `--skip-wait-for-delete-timeout`)."""
    ts = (pod.get("metadata") or {}).get("deletionTimestamp")
    if skip_after <= 0 or not ts:
        return False
    try:
        since = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return False
    return (now - since).total_seconds() > skip_after


def pods_to_evict(
    pods: Sequence[Pod], drain: Drain, own_name: str | None = None, own_namespace: str | None = None,
    now: datetime | None = None,
) -> tuple[list[Pod], list[str]]:
    """(pods to evict or delete, problems that block the drain), for the pods bound to one node; `now`
    for `skipWaitForDeleteTimeout` (None: no pod is skipped for it)."""
    out: list[Pod] = []
    problems: list[str] = []
    for pod in pods:
        meta: Mapping[str, Any] = pod.get("metadata") or {}
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        if own_name and meta.get("name") == own_name and own_namespace in (None, meta.get("namespace")):
            continue
        labels = meta.get("labels") or {}
        if labels.get(AGENT_LABEL[0]) == AGENT_LABEL[1]:
            continue
        if drain.pod_selector is not None and not matches(drain.pod_selector, labels):
            continue
        if now is not None and terminating_too_long(pod, drain.skip_wait_for_delete_timeout, now):
            continue
        if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            out.append(pod)
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
        refused = drain.delete_emptydir_data is False or drain.delete_local_data is False
        if refused and any("emptyDir" in v for v in volumes):
            field = "deleteEmptydirData" if drain.delete_emptydir_data is False else "deleteLocalData"
            problems.append(f"pod {name} has emptyDir data (drain.{field} is false)")
            continue
        out.append(pod)
    return out, problems
