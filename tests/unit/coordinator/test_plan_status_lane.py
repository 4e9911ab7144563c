"""`statuslane.StatusLane`: Plan statuses written after the passes, one at a time, the latest per Plan.

Aspects: statuses are written in the order their Plans were put, one write at a time; a newer status put
while an older one of its Plan waits replaces it (the older one is never written), and keeps the Plan's
place; the same status is not written again while it is being written, nor for `ECHO_WAIT` after while
the cache shows what it showed before that write, and is once the cache moved (an echo of an older write,
someone else's write) or that time is over; a failed write is reported with its status and cause, kept
as `failure` until a write succeeds, the Plan's status may be put again, and the lane goes on with the
other Plans; a deleted Plan's waiting status is dropped; `close` writes nothing more, waits at most its
grace for the write out, then cancels it; a status decided while the lane waits to be due (`until_due`)
replaces the one put before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from coordinator import statuslane
from coordinator.engine import PlanStatusWrite
from coordinator.statuslane import StatusLane


class Recorder:
    """The lane's write (records each status, stores it in `cache` unless `echo` is off, waits for `gate`
    while it is set to an Event) and the Plan cache it reads."""

    def __init__(self) -> None:
        self.written: list[PlanStatusWrite] = []
        self.failed: list[tuple[PlanStatusWrite, Exception]] = []
        self.cache: dict[str, dict[str, Any]] = {}
        self.echo = True
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
            if self.echo:
                self.cache[w.plan] = dict(w.status)
        finally:
            self.writing -= 1

    def lane(self) -> StatusLane:
        def failed(w: PlanStatusWrite, exc: Exception) -> None:
            self.failed.append((w, exc))

        return StatusLane(self.write, failed, lambda p: self.cache.get(p, {}))


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


async def test_a_status_is_not_written_again_before_its_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.gate, rec.echo = asyncio.Event(), False
    lane = rec.lane()
    lane.put(status("p", 1))
    await asyncio.sleep(0.01)
    lane.put(status("p", 1))  # the same, being written
    rec.gate.set()
    await settle(lane)
    lane.put(status("p", 1))  # written, no echo yet: a pass decided it again from the old cache
    await settle(lane)
    assert rec.written == [status("p", 1)]
    rec.cache["p"] = {"applying": ["node-0"]}  # someone else wrote (or an older write's echo came)
    lane.put(status("p", 1))
    await settle(lane)
    assert rec.written == [status("p", 1)] * 2
    lane.put(status("p", 1))  # the cache as it was before that write: no echo yet
    await settle(lane)
    assert len(rec.written) == 2
    monkeypatch.setattr(statuslane, "ECHO_WAIT", 0.0)  # no echo in time: written again
    lane.put(status("p", 1))
    await settle(lane)
    assert rec.written == [status("p", 1)] * 3


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
    assert lane.failure is None  # q's write succeeded after it
    lane.put(status("p", 2))
    await settle(lane)
    assert lane.failure == "status of plan p not written: status of p refused"
    rec.fail = set()
    lane.put(status("p", 2))  # decided again by a later pass: not taken for written
    await settle(lane)
    assert rec.written == [status("q", 1), status("p", 2)] and lane.failure is None


async def test_a_deleted_plans_waiting_status_is_dropped() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    lane = rec.lane()
    lane.put(status("q", 1))
    await asyncio.sleep(0.01)
    lane.put(status("p", 1))
    lane.forget("p")
    rec.gate.set()
    await settle(lane)
    assert rec.written == [status("q", 1)]


async def test_close_writes_nothing_more_and_gives_up_a_write_that_does_not_end() -> None:
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


async def test_close_lets_the_write_out_finish_but_not_those_waiting() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    lane = rec.lane()
    lane.put(status("p", 1))
    lane.put(status("q", 1))
    await asyncio.sleep(0.01)
    asyncio.get_running_loop().call_later(0.05, rec.gate.set)
    await lane.close(2.0)
    assert rec.written == [status("p", 1)]  # q's was decided in a term that is over


async def test_a_status_decided_while_the_lane_waits_to_be_due_replaces_the_one_put_before() -> None:
    """The lane waits (`until_due`: the coordinator's lull between passes) before it takes a status: one
    decided meanwhile is the one written, and the cache is read as it is when the write goes out."""
    rec = Recorder()
    due = asyncio.Event()

    def failed(w: PlanStatusWrite, exc: Exception) -> None:
        rec.failed.append((w, exc))

    lane = StatusLane(rec.write, failed, lambda p: rec.cache.get(p, {}), until_due=due.wait)
    lane.put(status("p", 1))
    await asyncio.sleep(0.01)
    assert rec.written == []  # not due yet
    lane.put(status("p", 2))
    due.set()
    await settle(lane)
    assert rec.written == [status("p", 2)]
