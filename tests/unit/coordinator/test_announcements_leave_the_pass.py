"""`reconciler.split_announcements`: which writes of a decision a pass performs before the next pass.

Aspects: the Plan statuses and the Events after the last table write (they describe what is stored) leave
the pass, in their order; everything up to that write (effects, Events among them such as a failure's,
which the table records as announced) and the other writes after it (a drain to start after the cordon)
stay, in their order; a decision without a table write keeps its Events but not its Plan statuses.
"""

from __future__ import annotations

from coordinator.engine import EventWrite, NodePatch, PlanStatusWrite, StartDrain, TableWrite
from coordinator.leasing import LeaseTable
from coordinator.plans import Drain
from coordinator.reconciler import split_announcements


def event(reason: str) -> EventWrite:
    return EventWrite("Node", "n1", "system-upgrade", "Normal", reason, f"{reason} n1")


def test_the_events_after_the_last_table_write_leave_the_pass() -> None:
    before, after = TableWrite(LeaseTable()), TableWrite(LeaseTable(finished={}))
    failure = EventWrite("Plan", "p", "system-upgrade", "Warning", "UpgradeFailed", "node n2: drain failed")
    patch, status = NodePatch("n1", labels={"plan.upgrade.cattle.io/p": "h"}), PlanStatusWrite("p", {})
    other = PlanStatusWrite("q", {"applying": ["n1"]})
    writes = (before, patch, failure, after, event("Upgraded"), status, event("LeaseGranted"), other)
    performed, statuses, announced = split_announcements(writes, 3)
    assert performed == [before, patch, failure, after]
    assert statuses == [status, other]
    assert announced == [event("Upgraded"), event("LeaseGranted")]


def test_without_a_table_write_the_pass_keeps_its_events_and_leaves_its_statuses() -> None:
    alone = (event("Upgraded"), PlanStatusWrite("p", {}))
    assert split_announcements(alone, -1) == ([event("Upgraded")], [PlanStatusWrite("p", {})], [])
    drain = StartDrain("l1", "n1", Drain())
    written = (TableWrite(LeaseTable()), drain, PlanStatusWrite("p", {}))
    status = PlanStatusWrite("p", {})
    assert split_announcements(written, 0) == ([TableWrite(LeaseTable()), drain], [status], [])
