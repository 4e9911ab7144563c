"""`handoffs.slot_handoffs`: which grants of a table write took the slot of a verified node, and when.

Aspects: a verified lease released with a grant of its plan in the same write is one hand-off, timed from
its node's evidence to the write; several freed slots pair in order, the earliest evidence with the
first grant, and the surplus on either side is not counted; a grant of another plan, a first grant (no
slot freed), a lease released without being verified (failed, withdrawn) or with no evidence recorded,
and a released lease whose finished record is a later lease of its node are not hand-offs; the time is
never negative.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from coordinator.handoffs import slot_handoffs
from coordinator.leasing import Lease, LeasePhase, LeaseTable
from wire.messages import Artifact

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ART = Artifact(url="http://r/k3s", sha256="b" * 64, name="k3s")
P = LeasePhase


def lease(lease_id: str, node: str, phase: LeasePhase = P.RESTARTED, plan: str = "p") -> Lease:
    return Lease(lease_id=lease_id, plan=plan, node=node, plan_hash="h", target_version="v1.30.2+k3s1",
                 artifact=ART, phase=phase, granted_at=NOW, updated_at=NOW)


def released(table: LeaseTable, lease_id: str, phase: LeasePhase = P.VERIFIED) -> LeaseTable:
    """`table` with `lease_id` moved to `phase` and released, its finished record kept."""
    gone = table.by_id(lease_id)
    assert gone is not None
    return table.put(replace(gone, phase=phase)).remove(lease_id, finished=True)


def granted(table: LeaseTable, *leases: Lease) -> LeaseTable:
    for le in leases:
        table = table.put(replace(le, phase=P.GRANTED))
    return table


def test_a_verified_release_and_a_grant_in_one_write_is_one_handoff() -> None:
    old = LeaseTable(leases=(lease("L1", "n1"), lease("L2", "n2")))
    new = granted(released(old, "L1"), lease("L3", "n3"))
    assert slot_handoffs(old, new, {"n1": 10.0, "n2": 10.5}, 10.025) == [("p", 10.025 - 10.0)]


def test_freed_slots_pair_in_order_and_the_surplus_is_not_counted() -> None:
    old = LeaseTable(leases=(lease("L1", "n1"), lease("L2", "n2"), lease("L3", "n3")))
    three_freed = released(released(released(old, "L1"), "L2"), "L3")
    evidence = {"n1": 3.0, "n2": 1.0, "n3": 2.0}
    two_grants = granted(three_freed, lease("L4", "n4"), lease("L5", "n5"))
    assert slot_handoffs(old, two_grants, evidence, 5.0) == [("p", 4.0), ("p", 3.0)]  # n2's, then n3's
    one_freed = released(old, "L3")
    three_grants = granted(one_freed, lease("L4", "n4"), lease("L5", "n5"), lease("L6", "n6"))
    assert slot_handoffs(old, three_grants, evidence, 5.0) == [("p", 3.0)]


def test_only_grants_of_the_same_plan_take_a_freed_slot() -> None:
    old = LeaseTable(leases=(lease("L1", "n1", plan="servers"),))
    new = granted(released(old, "L1"), lease("L2", "n2", plan="agents"))
    assert slot_handoffs(old, new, {"n1": 1.0}, 2.0) == []
    both = granted(new, lease("L3", "n3", plan="servers"))
    assert slot_handoffs(old, both, {"n1": 1.0}, 2.0) == [("servers", 1.0)]


def test_first_grants_free_no_slot() -> None:
    empty = LeaseTable()
    assert slot_handoffs(empty, granted(empty, lease("L1", "n1"), lease("L2", "n2")), {}, 1.0) == []


def test_a_lease_released_without_being_verified_frees_no_counted_slot() -> None:
    old = LeaseTable(leases=(lease("L1", "n1", P.STAGED), lease("L2", "n2", P.ROLLED_BACK)))
    withdrawn = granted(old.remove("L1"), lease("L3", "n3"))  # no finished record
    assert slot_handoffs(old, withdrawn, {"n1": 1.0}, 2.0) == []
    failed_before = granted(released(old, "L1", P.FAILED), lease("L3", "n3"))
    assert slot_handoffs(old, failed_before, {"n1": 1.0}, 2.0) == []
    record_dropped = granted(old.remove("L2"), lease("L3", "n3"))  # a failure record, not an active lease
    assert slot_handoffs(old, record_dropped, {"n2": 1.0}, 2.0) == []


def test_a_release_with_no_evidence_or_another_lease_finished_is_not_counted() -> None:
    old = LeaseTable(leases=(lease("L1", "n1"),))
    new = granted(released(old, "L1"), lease("L2", "n2"))
    assert slot_handoffs(old, new, {"n9": 1.0}, 2.0) == []
    later = LeaseTable(leases=new.leases, finished={"n1": replace(lease("L0", "n1"), phase=P.VERIFIED)})
    assert slot_handoffs(old, later, {"n1": 1.0}, 2.0) == []


def test_a_handoff_is_never_negative() -> None:
    old = LeaseTable(leases=(lease("L1", "n1"),))
    new = granted(released(old, "L1"), lease("L2", "n2"))
    assert slot_handoffs(old, new, {"n1": 5.0}, 4.0) == [("p", 0.0)]
