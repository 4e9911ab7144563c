"""Watch-fed caches (informer style): list once, then follow a watch; reconciles read the cache.

At thousands of nodes a list per reconcile would cost the API server and our memory dearly; a watch
costs one stream. On 410 Expired or a broken stream the informer lists again (with a short backoff)
and reports what changed meanwhile. `synced` is set after the first full list. A `transform` given
applies to the list page by page (`Cluster.list_objects`), so the whole list is never held as read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from coordinator.kube.errors import Expired, KubeError
from coordinator.kube.protocol import Cluster, Obj
from coordinator.kube.resources import Resource

log = logging.getLogger("coordinator.kube.informer")

Handler = Callable[[str, Obj], None]
"""Called with (event type, object) for every ADDED / MODIFIED / DELETED seen, on the event loop."""


def key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    def __init__(
        self,
        cluster: Cluster,
        res: Resource,
        namespace: str | None,
        on_event: Handler,
        watch_timeout: int = 300,
        backoff: float = 0.5,
        transform: Callable[[Obj], Obj] | None = None,
    ) -> None:
        """`transform`: applied to every object before it is cached (e.g. keep only the fields read)."""
        self._cluster = cluster
        self._transform = transform
        self.res = res
        self._namespace = namespace
        self._on_event = on_event
        self._watch_timeout = watch_timeout
        self._backoff = backoff
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""

    async def _relist(self) -> None:
        items, rv = await self._cluster.list_objects(self.res, self._namespace, self._transform)
        fresh = {key(o): o for o in items}
        for k, old in list(self.cache.items()):
            if k not in fresh:
                del self.cache[k]
                self._on_event("DELETED", old)
        for k, obj in fresh.items():
            prev = self.cache.get(k)
            self.cache[k] = obj
            if prev is None:
                self._on_event("ADDED", obj)
            elif prev.get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._on_event("MODIFIED", obj)
        self.resource_version = rv
        self.synced.set()

    async def run(self) -> None:
        """Forever (until cancelled): keep `cache` equal to the API server's view."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                async for ev in self._cluster.watch(
                    self.res, self._namespace, self.resource_version, self._watch_timeout
                ):
                    rv = (ev.obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        self.resource_version = str(rv)
                    if ev.type == "BOOKMARK":
                        continue
                    obj = self._transform(ev.obj) if self._transform is not None else ev.obj
                    k = key(obj)
                    if ev.type == "DELETED":
                        self.cache.pop(k, None)
                    else:
                        self.cache[k] = obj
                    self._on_event(ev.type, obj)
            except Expired:
                need_list = True
            except KubeError as exc:
                log.warning("watch of %s broke, listing again: %s", self.res.plural, exc)
                need_list = True
                await asyncio.sleep(self._backoff)
