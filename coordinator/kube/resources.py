"""Where each kind of object the coordinator touches lives in the Kubernetes REST API.

Plain data, no I/O: the adapter builds URLs from these, the informers key caches by them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One REST resource: `/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if sub is not None:
                base += f"/{sub}"
        return base


PLANS = Resource("upgrade.cattle.io", "v1", "plans", namespaced=True)
NODES = Resource("", "v1", "nodes", namespaced=False)
SECRETS = Resource("", "v1", "secrets", namespaced=True)
PODS = Resource("", "v1", "pods", namespaced=True)
EVENTS = Resource("", "v1", "events", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True)
TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", namespaced=False)
