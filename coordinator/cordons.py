"""Our cordons, recorded on the Node itself, so that a node cordoned before its lease was stored is ours.

A node that goes ahead the moment it is granted (its agent holds the binary: `engine._Decider.go_ahead`)
is cordoned in the same round of Node patches that labels and uncordons the nodes whose slots it takes,
and its lease is stored `applying`, with `cordonedByUs`, in the one table write after that round. Until
that write is stored, only the Node can say who cordoned it: every cordon of ours sets the annotation
`CORDON_ANNOTATION` in the same patch (the lease and the time), and every uncordon of ours removes it.

The mark counts for the lease it names, and only for it: a failure record of one plan never uncordons
the node that another plan's lease holds now. A pass that finds a node cordoned with our mark:
  * naming a lease in the table: that lease keeps it (and uncordons it when it ends);
  * naming a lease the table does not know (that table write failed, or the coordinator stopped before
    it): the next lease of the node, when it reaches its cordon, cordons it once more with a mark that
    names itself (a view of a node given back since may be stale, so the old mark proves nothing), and
    stores `cordonedByUs`. A node no lease holds is uncordoned and the mark removed after `ORPHAN_GRACE`
    (a write still on its way, or a replica that has just lost the lead, could yet store it).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

CORDON_ANNOTATION = "upgrade.k3s.io/cordoned"
"""Node annotation set with our cordon and removed with our uncordon: {"lease": id, "at": RFC 3339}."""

ORPHAN_GRACE = timedelta(seconds=60)
"""How old the mark of a cordon whose lease was never stored must be before the node is given back."""


def mark(lease_id: str, now: datetime) -> str:
    """The annotation's value for a cordon of `lease_id` at `now`."""
    return json.dumps({"lease": lease_id, "at": now.isoformat()}, separators=(",", ":"))


def marked_lease(value: str) -> tuple[str | None, datetime | None]:
    """(the lease, the time) a mark names; None for what cannot be read (a mark a person wrote by hand is
    ours all the same: its node is given back, without waiting, if no lease holds it)."""
    try:
        got = json.loads(value)
        lease, at = got.get("lease"), datetime.fromisoformat(got.get("at"))
    except (ValueError, TypeError, AttributeError):
        return None, None
    if at.tzinfo is None:
        return (lease if isinstance(lease, str) else None), None
    return (lease if isinstance(lease, str) else None), at


def orphaned(value: str, now: datetime) -> bool:
    """Whether a mark no lease in the table holds is old enough to give its node back (`ORPHAN_GRACE`)."""
    _, at = marked_lease(value)
    return at is None or now - at >= ORPHAN_GRACE
