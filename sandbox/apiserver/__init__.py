"""A Kubernetes API server emulator for the sandbox and the tests (aiohttp, in memory, optional SQLite).

Faithful where our code and kubectl depend on it: resourceVersions and 409 conflicts, watches with replay
and 410, label/field selectors, the three patch types, the status subresource, CRDs, Tables, evictions with
PodDisruptionBudgets, TokenRequest/TokenReview. See the modules for each concern:

    store (objects, resourceVersion)  watch (hub, selector transitions)  selectors  patching
    resources (registry, discovery)   openapi  tables  tokens  eviction  persistence (SQLite)
    app (HTTP, faults, request log)   server (ApiServer, ThreadedApiServer)  kubeconfig  __main__ (CLI)
"""

from sandbox.apiserver.app import Faults, LoggedRequest
from sandbox.apiserver.kubeconfig import write_kubeconfig
from sandbox.apiserver.server import ApiServer, ThreadedApiServer

__all__ = ["ApiServer", "Faults", "LoggedRequest", "ThreadedApiServer", "write_kubeconfig"]
