"""The Eviction API: delete a Pod unless a PodDisruptionBudget would be violated (429).

There is no disruption controller here, so a budget's numbers are computed at eviction time from the
Pods it selects: healthy = Running and not Ready=False, not being deleted. `minAvailable` and
`maxUnavailable` take integers or percentages (rounded up, as the real controller does). A Pod that is
not healthy itself may always be evicted. More than one budget on a Pod is a 500, as on the real server.
The decision (`budget_allows`) is pure.
"""

from __future__ import annotations

import math
from typing import Any

from sandbox.apiserver.errors import ApiError
from sandbox.apiserver.selectors import labels_match, selector_from_object
from sandbox.apiserver.store import Store

Obj = dict[str, Any]


def healthy(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return ready is None or ready.get("status") == "True"


def _amount(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def budget_status(pdb: Obj, pods: list[Obj]) -> Obj:
    """PDB status fields computed from the Pods it selects (all in its namespace)."""
    spec = pdb.get("spec") or {}
    reqs = selector_from_object(spec.get("selector"))
    selected = [
        p for p in pods if reqs is not None and reqs and labels_match(reqs, p["metadata"].get("labels"))
    ]
    expected = len(selected)
    current = sum(1 for p in selected if healthy(p))
    if spec.get("minAvailable") is not None:
        desired = _amount(spec["minAvailable"], expected)
    elif spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _amount(spec["maxUnavailable"], expected))
    else:
        desired = expected
    return {
        "currentHealthy": current,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": max(0, current - desired),
    }


def budgets_for(store: Store, pod: Obj) -> list[Obj]:
    ns = pod["metadata"].get("namespace") or ""
    out = []
    for (n, _), pdb in store.objects.get("poddisruptionbudgets.policy", {}).items():
        if n != ns:
            continue
        reqs = selector_from_object((pdb.get("spec") or {}).get("selector"))
        if reqs and labels_match(reqs, pod["metadata"].get("labels")):
            out.append(pdb)
    return out


def evict(store: Store, ns: str, name: str, body: Obj) -> Obj:
    """Evict Pod ns/name; returns a Success Status or raises ApiError (404, 429, 500)."""
    pods_rt = store.registry.lookup("", "v1", "pods")
    assert pods_rt is not None
    pod = store.get(pods_rt, ns, name)
    opts = (body.get("deleteOptions") if isinstance(body, dict) else None) or {}
    dry = "All" in (opts.get("dryRun") or [])
    budgets = budgets_for(store, pod)
    if len(budgets) > 1:
        raise ApiError(
            500,
            "InternalError",
            "This pod has more than one PodDisruptionBudget, which the eviction "
            "subresource does not support.",
        )
    if budgets and healthy(pod):
        pdb = budgets[0]
        pods = list(store.items(pods_rt, ns))
        st = budget_status(pdb, pods)
        if st["disruptionsAllowed"] <= 0:
            pdb_name = pdb["metadata"]["name"]
            raise ApiError(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                {
                    "causes": [
                        {
                            "reason": "DisruptionBudget",
                            "message": f"The disruption "
                            f"budget {pdb_name} needs {st['desiredHealthy']} healthy pods and has "
                            f"{st['currentHealthy']} currently",
                        }
                    ]
                },
            )
    if not dry:
        store.delete(pods_rt, ns, name, opts.get("preconditions"))
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


def refresh_status(store: Store, pdb: Obj) -> Obj:
    """The PDB as served: its status computed now (no controller keeps it current)."""
    pods_rt = store.registry.lookup("", "v1", "pods")
    assert pods_rt is not None
    ns = pdb["metadata"].get("namespace") or ""
    st = budget_status(pdb, list(store.items(pods_rt, ns)))
    return {
        **pdb,
        "status": {
            **(pdb.get("status") or {}),
            **st,
            "observedGeneration": pdb["metadata"].get("generation", 1),
        },
    }
