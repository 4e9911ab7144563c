"""What the coordinator needs from the cluster, as a Protocol.

Everything above `coordinator.kube` codes against `Cluster`; `coordinator.kube.client.KubeCluster`
implements it over the official client. Objects travel as plain JSON dicts (exactly what the API
server sent), which keeps memory low at thousands of nodes and keeps the engine free of client models.
Failures are the typed errors of `coordinator.kube.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.kube.resources import Resource

Obj = dict[str, Any]


@dataclass(frozen=True)
class TokenIdentity:
    """Who a bearer token belongs to, per TokenReview."""

    username: str
    node: str | None
    """`authentication.kubernetes.io/node-name` from the review's `user.extra`, if the token is bound."""


@dataclass(frozen=True)
class StoredLease:
    """A coordination.k8s.io Lease as read: its annotations and spec, and the version to write against."""

    name: str
    resource_version: str
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED, BOOKMARK."""
    obj: Obj


class Cluster(Protocol):
    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        """The identity behind `token` for `audience`, or None when the API server does not accept it.
        `only_user`: the one user whose node the caller needs; another user's identity may come without
        its node (before Kubernetes 1.30 finding it takes a Pod GET, which can fail)."""
        ...

    async def list_objects(
        self, res: Resource, namespace: str | None = None, transform: Callable[[Obj], Obj] | None = None
    ) -> tuple[list[Obj], str]:
        """All objects of a kind and the list's resourceVersion. `transform` is applied to each object as
        it arrives (a page at a time), so a caller keeping part of each never holds the whole list as read."""
        ...

    def watch(
        self, res: Resource, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version`; raises `Expired` (a NotFound-like 410) when it is too old."""
        ...

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj: ...

    async def get_lease(self, namespace: str, name: str) -> StoredLease | None: ...

    async def write_lease(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        resource_version: str | None,
    ) -> StoredLease:
        """Create (resource_version None) or replace conditionally; `Conflict` on a lost race."""
        ...

    async def patch_node(
        self,
        name: str,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        unschedulable: bool | None = None,
    ) -> Obj: ...

    async def patch_status(
        self, res: Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj: ...

    async def create_event(
        self, namespace: str, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None: ...

    async def list_pods_on_node(self, node: str) -> list[Obj]: ...

    async def evict_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        """Eviction API; `EvictionBlocked` on 429 (a PodDisruptionBudget), `NotFound` if already gone."""
        ...

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None: ...
