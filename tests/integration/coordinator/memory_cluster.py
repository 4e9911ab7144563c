"""An in-memory `Cluster` (the coordinator's Kubernetes Protocol) for tests that run the real runtime.

Faithful where the coordinator depends on it: resourceVersions that increase on every change, 409 on a
stale Lease write and on creating an existing Lease, watches that deliver every change after a
resourceVersion, merge-patch semantics for Node labels/annotations (null deletes) and Plan status,
TokenReview answering with the node a token is bound to. It also records every lease-table write so a
test can check invariants over the whole history. The API server emulator (sandbox.apiserver) is the
real thing; this stand-in keeps these runtime tests fast and independent of it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from coordinator.kube import errors
from coordinator.kube.protocol import Obj, StoredLease, TokenIdentity, WatchEvent
from coordinator.kube.resources import LEASES, NODES, PLANS, PODS, SECRETS, Resource
from coordinator.leasing import LeaseTable


def _merge(dst: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class MemoryCluster:
    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._rv = itertools.count(1)
        self.rv = 0
        self.objects: dict[str, dict[str, Obj]] = {
            r.plural: {} for r in (PLANS, NODES, SECRETS, PODS, LEASES)
        }
        self.log: list[tuple[int, str, str, Obj]] = []
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []
        self.tokens = dict(tokens or {})
        self.events: list[tuple[str, dict[str, str], str, str, str]] = []
        self.table_history: list[LeaseTable] = []
        self.writes: dict[str, int] = {}
        self.pdb_blocked: set[str] = set()
        """Pods (ns/name) whose eviction a PodDisruptionBudget refuses (429) while listed."""
        self.evictions: list[str] = []
        self.eviction_attempts: list[str] = []
        """Every eviction asked for, refused by a budget or not."""
        self.events_gate: asyncio.Event | None = None
        """When set to an Event, every Event post waits for it (an API server that does not answer)."""
        self.events_waiting = 0
        self.events_waiting_max = 0
        """Event posts waiting for `events_gate` now, and at most at once."""
        self.status_gate: asyncio.Event | None = None
        """When set to an Event, every status patch waits for it before it is stored."""
        self.status_waiting = 0

    # -- helpers for tests -----------------------------------------------------------------------
    def _key(self, obj: Obj) -> str:
        m = obj["metadata"]
        return f"{m['namespace']}/{m['name']}" if m.get("namespace") else str(m["name"])

    def put(self, res: Resource, obj: Obj, kind: str | None = None) -> Obj:
        obj = copy.deepcopy(obj)
        self.rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        key = self._key(obj)
        typ = kind or ("MODIFIED" if key in self.objects[res.plural] else "ADDED")
        self.objects[res.plural][key] = obj
        for plural, q in self._watchers:
            if plural == res.plural:
                q.put_nowait(WatchEvent(typ, copy.deepcopy(obj)))
        return obj

    def remove(self, res: Resource, key: str) -> None:
        """Delete the object stored under `key` (`namespace/name`), as `kubectl delete` would."""
        obj = self.objects[res.plural].pop(key)
        self.rv = next(self._rv)
        for plural, q in self._watchers:
            if plural == res.plural:
                q.put_nowait(WatchEvent("DELETED", copy.deepcopy(obj)))

    def set_node_version(self, name: str, version: str, ready: bool = True) -> None:
        node = copy.deepcopy(self.objects["nodes"][name])
        node["status"]["nodeInfo"]["kubeletVersion"] = version
        node["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.put(NODES, node)

    def _count(self, kind: str) -> None:
        self.writes[kind] = self.writes.get(kind, 0) + 1

    # -- Cluster ---------------------------------------------------------------------------------
    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        node = self.tokens.get(token)
        return None if node is None else TokenIdentity(username=f"system:serviceaccount:x:{node}", node=node)

    async def list_objects(
        self, res: Resource, namespace: str | None = None, transform: Callable[[Obj], Obj] | None = None
    ) -> tuple[list[Obj], str]:
        items = [
            copy.deepcopy(o)
            for o in self.objects[res.plural].values()
            if namespace is None or o["metadata"].get("namespace") == namespace
        ]
        return [transform(o) for o in items] if transform is not None else items, str(self.rv)

    async def watch(
        self, res: Resource, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[WatchEvent]:
        q: asyncio.Queue[WatchEvent] = asyncio.Queue()
        entry = (res.plural, q)
        self._watchers.append(entry)
        try:
            while True:
                ev = await q.get()
                if namespace is None or ev.obj["metadata"].get("namespace") == namespace:
                    yield ev
        finally:
            self._watchers.remove(entry)

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        key = f"{namespace}/{name}" if res.namespaced else name
        obj = self.objects[res.plural].get(key)
        if obj is None:
            raise errors.NotFound(f"{res.plural} {key} not found", 404)
        return copy.deepcopy(obj)

    async def get_lease(self, namespace: str, name: str) -> StoredLease | None:
        obj = self.objects["leases"].get(f"{namespace}/{name}")
        if obj is None:
            return None
        m = obj["metadata"]
        return StoredLease(name, m["resourceVersion"], dict(m.get("annotations") or {}), dict(obj["spec"]))

    async def write_lease(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        resource_version: str | None,
    ) -> StoredLease:
        await asyncio.sleep(0)
        current = self.objects["leases"].get(f"{namespace}/{name}")
        if resource_version is None and current is not None:
            raise errors.LeaseTableConflict(f"Lease {name} already exists", 409)
        if resource_version is not None and (
            current is None or current["metadata"]["resourceVersion"] != resource_version
        ):
            raise errors.LeaseTableConflict(f"Lease {name}: resourceVersion {resource_version} is stale", 409)
        self._count("lease")
        obj = self.put(
            LEASES,
            {
                "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations)},
                "spec": dict(spec),
            },
        )
        if "upgrade.cattle.io/lease-table" in annotations:
            self.table_history.append(LeaseTable.from_annotations(annotations))
        m = obj["metadata"]
        return StoredLease(name, m["resourceVersion"], dict(m["annotations"]), dict(obj["spec"]))

    async def patch_node(
        self,
        name: str,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        unschedulable: bool | None = None,
    ) -> Obj:
        node = self.objects["nodes"].get(name)
        if node is None:
            raise errors.NotFound(f"node {name} not found", 404)
        node = copy.deepcopy(node)
        _merge(node["metadata"].setdefault("labels", {}), labels or {})
        _merge(node["metadata"].setdefault("annotations", {}), annotations or {})
        if unschedulable is not None:
            node.setdefault("spec", {})["unschedulable"] = unschedulable
        self._count("node")
        return self.put(NODES, node)

    async def patch_status(self, res: Resource, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        if self.status_gate is not None:
            self.status_waiting += 1
            try:
                await self.status_gate.wait()
            finally:
                self.status_waiting -= 1
        obj = copy.deepcopy(await self.get(res, namespace, name))
        _merge(obj.setdefault("status", {}), status)
        self._count("status")
        return self.put(res, obj)

    async def create_event(
        self, namespace: str, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None:
        self._count("event")
        if self.events_gate is not None:
            self.events_waiting += 1
            self.events_waiting_max = max(self.events_waiting_max, self.events_waiting)
            try:
                await self.events_gate.wait()
            finally:
                self.events_waiting -= 1
        self.events.append((namespace, dict(involved), type_, reason, message))

    async def list_pods_on_node(self, node: str) -> list[Obj]:
        return [copy.deepcopy(p) for p in self.objects["pods"].values() if p["spec"].get("nodeName") == node]

    async def evict_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        self.eviction_attempts.append(f"{namespace}/{name}")
        if f"{namespace}/{name}" in self.pdb_blocked:
            raise errors.EvictionBlocked(f"Cannot evict pod {namespace}/{name}: disruption budget", 429)
        self.evictions.append(f"{namespace}/{name}")
        await self.delete_pod(namespace, name, grace_seconds)

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        if self.objects["pods"].pop(f"{namespace}/{name}", None) is None:
            raise errors.NotFound(f"pod {namespace}/{name} not found", 404)
