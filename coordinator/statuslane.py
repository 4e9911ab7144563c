"""Plan status writes off the reconcile pass: each Plan's latest status, written after the pass that
decided it, one write at a time.

A pass decides the Plans' statuses after its last lease-table write. Neither the agents it answered nor
the next pass need them; performed in the pass, the write held up the next one (and the reports waiting
for it) by one more API round trip. The lane keeps one status per Plan: a pass that decides a newer one
before the older is out replaces it, so the older one is never written.

A pass decides from the Plan cache, which shows a write only once its watch event (the echo) arrived: the
passes that run in between decide the status just written once more. The lane does not write it again
while it is being written, nor for `ECHO_WAIT` seconds after, as long as the cache still holds the status
it held before that write (no echo yet, and nobody else wrote). Anything else (the echo of an older
write, someone else's write, or no echo in time) lets the status through again: a repeated write is
harmless, a status never written again would stay wrong.

A failed write is reported to `failed` (the coordinator logs it and decides again a little later, which
puts the status back) and kept in `failure` until a write succeeds; the lane goes on with the other Plans.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.engine import PlanStatusWrite

log = logging.getLogger(__name__)

ECHO_WAIT = 2.0
"""Seconds after a status write during which the same status is not written again while the Plan cache
still shows what it showed before the write (the echo of a write takes milliseconds)."""


@dataclass
class _Sent:
    status: Mapping[str, Any]
    before: Mapping[str, Any]
    """The Plan's status in the cache when the write started."""
    done_at: float | None = None
    """When the write succeeded (`time.monotonic`); None while it is out."""


class StatusLane:
    def __init__(
        self,
        write: Callable[[PlanStatusWrite], Awaitable[None]],
        failed: Callable[[PlanStatusWrite, Exception], None],
        cached: Callable[[str], Mapping[str, Any]],
        until_due: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`write` writes one status; `failed` hears of a write that raised; `cached(plan)` is the Plan's
        status as the cache holds it now (empty if none); `until_due`, awaited before the lane takes the
        next status (the coordinator's lull between passes), so that a status decided meanwhile replaces
        it."""
        self._until_due = until_due
        self._write = write
        self._failed = failed
        self._cached = cached
        self._pending: dict[str, PlanStatusWrite] = {}
        """plan -> its latest status not written yet (in the order the plans were first put)."""
        self._sent: dict[str, _Sent] = {}
        """plan -> its last status written (or being written) by this lane."""
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None
        """The last write's failure, until a write succeeds."""

    @property
    def idle(self) -> bool:
        return not self._pending and (self._task is None or self._task.done())

    def put(self, w: PlanStatusWrite) -> None:
        """Write `w` after the writes put before it, unless a newer status of its Plan comes first."""
        if w.plan not in self._pending and self._written(w):
            return
        self._pending[w.plan] = w
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="plan-status")

    def _written(self, w: PlanStatusWrite) -> bool:
        """`w` is being written, or was a moment ago and the cache has not moved since (see the module)."""
        sent = self._sent.get(w.plan)
        if sent is None or sent.status != w.status:
            return False
        if sent.done_at is None:
            return True
        return time.monotonic() - sent.done_at < ECHO_WAIT and self._cached(w.plan) == sent.before

    def echo(self, plan: str, status: object) -> bool:
        """Whether `status`, seen on the Plan in a watch event, is the one this lane last wrote (or is
        writing): the echo of its own write, which tells a pass nothing it did not decide."""
        sent = self._sent.get(plan)
        return sent is not None and sent.status == status

    def forget(self, plan: str) -> None:
        """The Plan was deleted: its statuses not out yet are dropped (a new Plan of that name starts
        afresh)."""
        self._pending.pop(plan, None)
        self._sent.pop(plan, None)

    async def _run(self) -> None:
        while self._pending:
            if self._until_due is not None:
                await self._until_due()
                if not self._pending:  # (closed meanwhile)
                    break
            plan = next(iter(self._pending))
            w = self._pending.pop(plan)
            sent = self._sent[plan] = _Sent(w.status, self._cached(plan))
            try:
                await self._write(w)
            except Exception as exc:  # the lane must outlive any one failure; `failed` reports it
                if self._sent.get(plan) is sent:
                    del self._sent[plan]
                self.failure = f"status of plan {plan} not written: {exc}"
                self._failed(w, exc)
            else:
                sent.done_at = time.monotonic()
                self.failure = None

    async def close(self, grace: float) -> None:
        """On stop (or a lost lead): write nothing more, and let the write out finish for at most `grace`
        seconds; then give it up."""
        dropped = sorted(self._pending)
        self._pending.clear()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait([task], timeout=grace)
            finally:
                if not task.done():
                    dropped.append("(the one being written)")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._sent.clear()  # (a write cancelled may not have been stored; a later term decides afresh)
        if dropped:
            log.warning("plan status writes given up on stop", extra={"plans": dropped})
