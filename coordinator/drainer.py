"""Runs the drains the engine asks for (`kubectl drain` semantics) and reports how they ended.

Which pods go is a pure decision (the plan's drain options: DaemonSet and mirror pods skipped,
`podSelector`, emptyDir data, unmanaged pods need `force`, never the coordinator's own pod); the
runtime passes it in as `pick`. This module does the I/O: evict each pod through the Eviction API
(`pods/eviction`), or delete it when the plan says `disableEviction`; a 429 (a PodDisruptionBudget says
not now) is retried until the plan's drain timeout; then wait until the pods are gone, not waiting for
pods stuck terminating longer than `skipWaitForDeleteTimeout`. A drain never raises: its end is a
`DrainResult`, which the runtime feeds into the next World keyed by lease id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coordinator.draining import terminating_too_long
from coordinator.kube.errors import EvictionBlocked, KubeError, NotFound
from coordinator.kube.protocol import Cluster, Obj

log = logging.getLogger("coordinator.drainer")

PodPicker = Callable[[Sequence[Obj]], tuple[Sequence[Mapping[str, Any]], list[str]]]
"""(pods on the node) -> (pods to remove, reasons the drain cannot proceed, e.g. an unmanaged pod)."""


@dataclass(frozen=True)
class DrainOptions:
    timeout: float | None = None
    """Seconds for the whole drain; None waits forever (as SUC/kubectl with timeout 0)."""
    grace_period: int | None = None
    disable_eviction: bool = False
    skip_wait_for_delete_timeout: int = 0
    """Do not wait for pods whose deletionTimestamp is older than this many seconds (0: always wait)."""
    retry_interval: float = 2.0
    """Pause between rounds while a PodDisruptionBudget blocks or pods are terminating."""


@dataclass(frozen=True)
class DrainResult:
    lease_id: str
    node: str
    ok: bool
    error: str | None
    evicted: tuple[str, ...] = ()
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _name(pod: Mapping[str, Any]) -> str:
    m = pod.get("metadata") or {}
    return f"{m.get('namespace')}/{m.get('name')}"


async def drain(
    cluster: Cluster, lease_id: str, node: str, opts: DrainOptions, pick: PodPicker
) -> DrainResult:
    """Evict/delete the picked pods of `node` and wait until they are gone, within `opts.timeout`."""
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    removed: set[str] = set()
    blocked: dict[str, str] = {}
    while True:
        try:
            pods = await cluster.list_pods_on_node(node)
            targets, problems = pick(pods)
            if problems:
                return DrainResult(
                    lease_id,
                    node,
                    False,
                    f"cannot drain node {node}: " + "; ".join(problems),
                    tuple(sorted(removed)),
                )
            now = datetime.now(UTC)
            pending = [
                p for p in targets if not terminating_too_long(p, opts.skip_wait_for_delete_timeout, now)
            ]
            if not pending:
                return DrainResult(lease_id, node, True, None, tuple(sorted(removed)))
            blocked.clear()
            for pod in pending:
                meta = pod.get("metadata") or {}
                if meta.get("deletionTimestamp"):
                    continue  # already going; wait for it
                ns, name = str(meta.get("namespace")), str(meta.get("name"))
                try:
                    if opts.disable_eviction:
                        await cluster.delete_pod(ns, name, opts.grace_period)
                    else:
                        await cluster.evict_pod(ns, name, opts.grace_period)
                    removed.add(_name(pod))
                except NotFound:
                    removed.add(_name(pod))
                except EvictionBlocked as exc:
                    blocked[_name(pod)] = str(exc)
        except KubeError as exc:
            if not exc.temporary:
                return DrainResult(
                    lease_id, node, False, f"drain of node {node} failed: {exc}", tuple(sorted(removed))
                )
            log.warning("drain of %s: temporary error, retrying: %s", node, exc)
            blocked["api"] = str(exc)
        if deadline is not None and time.monotonic() >= deadline:
            why = "; ".join(f"{k}: {v}" for k, v in sorted(blocked.items())) or "pods still terminating"
            return DrainResult(
                lease_id,
                node,
                False,
                f"drain of node {node} timed out after {opts.timeout:g}s ({why})",
                tuple(sorted(removed)),
            )
        pause = opts.retry_interval
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        await asyncio.sleep(pause)


class Drainer:
    """Runs drains as background tasks, one per lease; results wait in `results` for the next World."""

    def __init__(self, cluster: Cluster, on_done: Callable[[DrainResult], None]) -> None:
        self._cluster = cluster
        self._on_done = on_done
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.results: dict[str, DrainResult] = {}

    def running(self, lease_id: str) -> bool:
        return lease_id in self._tasks

    def start(self, lease_id: str, node: str, opts: DrainOptions, pick: PodPicker) -> None:
        """Start a drain unless one runs or has ended for this lease (idempotent across reconciles)."""
        if lease_id in self._tasks or lease_id in self.results:
            return

        async def go() -> None:
            try:
                result = await drain(self._cluster, lease_id, node, opts, pick)
            except Exception as exc:  # a bug must still end the drain visibly, with its cause
                log.exception("drain of %s crashed", node)
                result = DrainResult(lease_id, node, False, f"drain of node {node} crashed: {exc!r}")
            finally:
                if self._tasks.get(lease_id) is asyncio.current_task():
                    del self._tasks[lease_id]
            self.results[lease_id] = result
            self._on_done(result)

        self._tasks[lease_id] = asyncio.create_task(go(), name=f"drain-{node}")

    def retain(self, draining: set[str]) -> None:
        """Keep the drains of the leases still `draining` in the stored table, and only those: a lease that
        left the phase (withdrawn with its Plan, moved on with the outcome, failed) has its drain stopped
        (it would go on evicting pods from a node that is schedulable again) and its outcome dropped."""
        for lid in [k for k in self._tasks if k not in draining]:
            log.info("drain stopped: lease %s is no longer draining", lid)
            self._tasks.pop(lid).cancel()
        for lid in [k for k in self.results if k not in draining]:
            del self.results[lid]

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
