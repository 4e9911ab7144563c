"""Lease hand-offs: which grant of a stored table took the slot of which verified node, and how long after.

A hand-off is the time a Plan's slot stands empty between two nodes: from the moment the coordinator
had all the evidence that a node was upgraded (its agent's `restarted` report and its Node's update
showing it Ready on the target, whichever arrived later) to the moment the lease granted in its place was
stored (the next agent's held poll is answered right then, with `stage`; or, when it prefetched the
binary, with `apply` once the same pass has cordoned its node). The runtime times the evidence as it
arrives and calls `slot_handoffs` after each table write; the result feeds
`k3s_upgrade_handoff_seconds`.

Counted: grants stored in the same write that released a verified lease of the same Plan, the earliest
freed slot paired with the first grant. That is the hand-off as it happens whenever an agent is waiting
for a lease (the engine grants a freed slot in the write that frees it). A slot freed with no agent
waiting (the last nodes of a Plan, a closed window, agents not held beyond `--max-held-polls`) is
granted in a later write or never, and is not counted here: the time it stayed empty is not the
coordinator's to spend.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.leasing import LeasePhase, LeaseTable


def slot_handoffs(
    old: LeaseTable, new: LeaseTable, evidence: Mapping[str, float], stored_at: float
) -> list[tuple[str, float]]:
    """(plan, seconds) for each lease granted in `new` in a slot that a verified lease of the same plan
    left in the same write (`old` -> `new`). `evidence`: node -> when the last evidence of its upgrade
    arrived (any clock `stored_at` is on); a released node without it is not counted."""
    old_ids = {le.lease_id for le in old.leases}
    new_ids = {le.lease_id for le in new.leases}
    freed: dict[str, list[float]] = {}
    for le in old.leases:
        if le.lease_id in new_ids:
            continue
        done = new.finished.get(le.node)
        if done is None or done.lease_id != le.lease_id or done.phase is not LeasePhase.VERIFIED:
            continue
        if le.node in evidence:
            freed.setdefault(le.plan, []).append(evidence[le.node])
    for slots in freed.values():
        slots.sort(reverse=True)  # the earliest last: popped first
    samples = []
    for le in new.leases:
        if le.lease_id not in old_ids and le.active and freed.get(le.plan):
            samples.append((le.plan, max(0.0, stored_at - freed[le.plan].pop())))
    return samples
