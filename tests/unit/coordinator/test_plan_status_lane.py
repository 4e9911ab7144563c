"""`statuslane.StatusLane`: Plan statuses written after the passes, one at a time, the latest per Plan.

Aspects: statuses are written in the order their Plans were put, one write at a time; a newer status put
while an older one of its Plan waits replaces it (the older one is never written), and keeps the Plan's
place; a status equal to the one being written, or written and not seen in the cache since, is not written
again, and is once the Plan's change is seen (but not a change seen while the write is out, which may be
an older echo); a failed write is reported with its status and cause, the Plan's status may be put again,
and the lane goes on with the other Plans; `close` waits at most its grace for a write that does not end,
then cancels it and drops what waits.
"""

from __future__ import annotations

import asyncio
import time

from coordinator.engine import PlanStatusWrite
from coordinator.statuslane import StatusLane


class Recorder:
    """The lane's write: records each status, waits for `gate` while it is set to an Event."""

    def __init__(self) -> None:
        self.written: list[PlanStatusWrite] = []
        self.failed: list[tuple[PlanStatusWrite, Exception]] = []
        self.gate: asyncio.Event | None = None
        self.fail: set[str] = set()
        self.writing = 0
        self.writing_max = 0

    async def write(self, w: PlanStatusWrite) -> None:
        self.writing += 1
        self.writing_max = max(self.writing_max, self.writing)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if w.plan in self.fail:
                raise RuntimeError(f"status of {w.plan} refused")
            self.written.append(w)
        finally:
            self.writing -= 1

    def lane(self) -> StatusLane:
        return StatusLane(self.write, lambda w, exc: self.failed.append((w, exc)))


def status(plan: str, n: int) -> PlanStatusWrite:
    return PlanStatusWrite(plan, {"applying": [f"node-{n}"]})


async def settle(lane: StatusLane) -> None:
    for _ in range(100):
        if lane.idle:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the lane did not finish its writes")


async def test_the_latest_status_of_each_plan_is_written_in_order_one_at_a_time() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    lane = rec.lane()
    lane.put(status("p", 1))
    await asyncio.sleep(0.01)  # p's first status is out, waiting for the API
    lane.put(status("p", 2))
    lane.put(status("q", 1))
    lane.put(status("p", 3))  # replaces p's 2nd, before q's (p was put first)
    rec.gate.set()
    await settle(lane)
    assert rec.written == [status("p", 1), status("p", 3), status("q", 1)]
    assert rec.writing_max == 1


async def test_a_status_being_written_or_not_seen_back_yet_is_not_written_again() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    lane = rec.lane()
    lane.put(status("p", 1))
    await asyncio.sleep(0.01)
    lane.put(status("p", 1))  # the same, being written
    lane.seen("p")  # a change seen while it is out: maybe the echo of an older write
    rec.gate.set()
    await settle(lane)
    lane.put(status("p", 1))  # written, its echo not seen yet: a pass decided it from the old cache
    await settle(lane)
    assert rec.written == [status("p", 1)]
    lane.seen("p")  # its echo (or someone else's write): the passes decide from the cache again
    lane.put(status("p", 1))
    await settle(lane)
    assert rec.written == [status("p", 1), status("p", 1)]


async def test_a_failed_write_is_reported_and_the_lane_goes_on() -> None:
    rec = Recorder()
    rec.fail = {"p"}
    lane = rec.lane()
    lane.put(status("p", 1))
    lane.put(status("q", 1))
    await settle(lane)
    assert rec.written == [status("q", 1)]
    ((w, exc),) = rec.failed
    assert w == status("p", 1) and "status of p refused" in str(exc)
    rec.fail = set()
    lane.put(status("p", 1))  # decided again by a later pass: not taken for written
    await settle(lane)
    assert rec.written == [status("q", 1), status("p", 1)]


async def test_close_waits_its_grace_for_a_write_that_does_not_end_then_gives_up() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()  # never set
    lane = rec.lane()
    lane.put(status("p", 1))
    lane.put(status("q", 1))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await lane.close(0.3)
    took = time.monotonic() - started
    assert 0.25 <= took < 1.0
    assert lane.idle and rec.written == [] and rec.writing == 0
    rec.gate = None
    await lane.close(0.3)  # closed already: nothing to wait for
    lane.put(status("q", 2))  # a lane closed on a lost lead serves the next term
    lane.put(status("p", 1))  # (its write was cancelled: maybe never stored)
    await settle(lane)
    assert rec.written == [status("q", 2), status("p", 1)]
