"""Plan status writes off the reconcile pass: each Plan's latest status, written after the pass that
decided it, one write at a time.

A pass decides the Plans' statuses after its last lease-table write. Neither the agents it answered nor
the next pass need them; performed in the pass, the write held up the next one (and the reports waiting
for it) by one more API round trip. The lane keeps one status per Plan: a pass that decides a newer one
before the older is out replaces it, so the older one is never written. A status equal to the one being
written, or written and not yet seen back in the Plan cache (`seen`), is not written again: the passes
that run before the echo of a write arrives decide it once more from the cache.

A failed write is reported to `failed` (the coordinator logs it and decides again a little later, which
puts the status back), and the lane goes on with the other Plans.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from coordinator.engine import PlanStatusWrite

log = logging.getLogger(__name__)


class StatusLane:
    def __init__(
        self,
        write: Callable[[PlanStatusWrite], Awaitable[None]],
        failed: Callable[[PlanStatusWrite, Exception], None],
    ) -> None:
        self._write = write
        self._failed = failed
        self._pending: dict[str, PlanStatusWrite] = {}
        """plan -> its latest status not written yet (in the order the plans were first put)."""
        self._sent: dict[str, Mapping[str, Any]] = {}
        """plan -> the status being written, or written and not seen in the cache since."""
        self._writing: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._pending and (self._task is None or self._task.done())

    def put(self, w: PlanStatusWrite) -> None:
        """Write `w` after the writes put before it, unless a newer status of its Plan comes first."""
        if w.plan not in self._pending and self._sent.get(w.plan) == w.status:
            return
        self._pending[w.plan] = w
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="plan-status")

    def seen(self, plan: str) -> None:
        """The Plan changed in the cache: a status written before is in it now (or was written over), so the
        passes decide from the cache again. A change seen while a write is out may be an older echo."""
        if plan != self._writing:
            self._sent.pop(plan, None)

    async def _run(self) -> None:
        while self._pending:
            plan = next(iter(self._pending))
            w = self._pending.pop(plan)
            self._writing, self._sent[plan] = plan, w.status
            try:
                await self._write(w)
            except Exception as exc:  # the lane must outlive any one failure; `failed` reports it
                self._sent.pop(plan, None)
                self._failed(w, exc)
            finally:
                self._writing = None

    async def close(self, grace: float) -> None:
        """Let the writes put so far out for at most `grace` seconds; then give the rest up."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait([task], timeout=grace)
        finally:
            if not task.done():
                plans = sorted({*self._pending, *([self._writing] if self._writing else [])})
                log.warning("plan status writes given up on stop", extra={"plans": plans})
            self._pending.clear()
            self._sent.clear()  # (a write cancelled may not have been stored)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._task = None
