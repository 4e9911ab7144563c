"""The coordinator's only door to the Kubernetes API (the only package that imports `kubernetes`).

`Cluster` (protocol.py) says what the coordinator needs; `KubeCluster` (client.py) implements it over
the official client off the event loop; errors.py holds our typed errors; informer.py keeps watch-fed
caches so reconciles never list.
"""

from coordinator.kube.errors import (
    Conflict,
    EvictionBlocked,
    Expired,
    Forbidden,
    Invalid,
    KubeError,
    KubeUnavailable,
    LeaseTableConflict,
    NotFound,
)
from coordinator.kube.protocol import Cluster, Obj, StoredLease, TokenIdentity, WatchEvent
from coordinator.kube.resources import EVENTS, LEASES, NODES, PLANS, PODS, SECRETS, Resource

__all__ = [
    "EVENTS",
    "LEASES",
    "NODES",
    "PLANS",
    "PODS",
    "SECRETS",
    "Cluster",
    "Conflict",
    "EvictionBlocked",
    "Expired",
    "Forbidden",
    "Invalid",
    "KubeError",
    "KubeUnavailable",
    "LeaseTableConflict",
    "NotFound",
    "Obj",
    "Resource",
    "StoredLease",
    "TokenIdentity",
    "WatchEvent",
]
