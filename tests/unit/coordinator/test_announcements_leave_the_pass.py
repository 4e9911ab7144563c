"""`reconciler.split_announcements`: which writes of a decision a pass performs before the next pass.

Aspects: the Events after the last table write (they describe what is stored) leave the pass, in their
order; everything up to that write (effects, Events among them such as a failure's, which the table
records as announced) and the other writes after it (Plan status, a drain to start after the cordon)
stay, in their order; a decision without a table write keeps all its writes.
"""

from __future__ import annotations

from coordinator.engine import EventWrite, NodePatch, PlanStatusWrite, TableWrite
from coordinator.leasing import LeaseTable
from coordinator.reconciler import split_announcements


def event(reason: str) -> EventWrite:
    return EventWrite("Node", "n1", "system-upgrade", "Normal", reason, f"{reason} n1")


def test_the_events_after_the_last_table_write_leave_the_pass() -> None:
    before, after = TableWrite(LeaseTable()), TableWrite(LeaseTable(finished={}))
    failure = EventWrite("Plan", "p", "system-upgrade", "Warning", "UpgradeFailed", "node n2: drain failed")
    patch, status = NodePatch("n1", labels={"plan.upgrade.cattle.io/p": "h"}), PlanStatusWrite("p", {})
    writes = (before, patch, failure, after, event("Upgraded"), status, event("LeaseGranted"))
    performed, announced = split_announcements(writes, 3)
    assert performed == [before, patch, failure, after, status]
    assert announced == [event("Upgraded"), event("LeaseGranted")]


def test_without_a_table_write_or_an_event_after_it_the_pass_keeps_every_write() -> None:
    alone = (event("Upgraded"), PlanStatusWrite("p", {}))
    assert split_announcements(alone, -1) == (list(alone), [])
    written = (TableWrite(LeaseTable()), PlanStatusWrite("p", {}))
    assert split_announcements(written, 0) == (list(written), [])
