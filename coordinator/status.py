"""Plan `.status` as SUC shapes it: conditions, latestVersion, latestHash, applying. Pure.

Conditions carry type/status/reason/message/lastUpdateTime/lastTransitionTime. A condition whose
status, reason and message did not change keeps both timestamps (so an unchanged status is an
identical dict and the runtime writes nothing); `lastTransitionTime` moves only when `status` flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple


class Cond(NamedTuple):
    type: str
    status: bool
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(cond: Cond, previous: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    status = "True" if cond.status else "False"
    stamp = timestamp(now)
    out: dict[str, Any] = {"type": cond.type, "status": status}
    if cond.reason:
        out["reason"] = cond.reason
    if cond.message:
        out["message"] = cond.message
    if previous is not None and previous.get("status") == status:
        same = previous.get("reason", "") == cond.reason and previous.get("message", "") == cond.message
        out["lastUpdateTime"] = previous.get("lastUpdateTime", stamp) if same else stamp
        out["lastTransitionTime"] = previous.get("lastTransitionTime", stamp)
    else:
        out["lastUpdateTime"] = stamp
        out["lastTransitionTime"] = stamp
    return out


ORDER = {"Validated": 0, "LatestResolved": 1, "Complete": 2}
"""Conditions in the order a Plan is processed, any other after them by name: the Message column
(`deploy/crd.yaml`, SUC's) shows the first condition with a message, so the first thing wrong comes first
(a Plan made invalid keeps its last `Complete`, which no longer applies)."""

STATUS_KEYS = ("conditions", "latestVersion", "latestHash", "applying")
"""The keys of `.status` that `plan_status` writes (each may be left out of a status it makes)."""


def plan_status(
    previous: Mapping[str, Any],
    conditions: Sequence[Cond],
    now: datetime,
    *,
    latest_version: str | None,
    latest_hash: str | None,
    applying: Sequence[str],
) -> dict[str, Any]:
    """The whole new `.status`; conditions not listed in `conditions` are kept as they were."""
    old = {str(c.get("type")): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    new_types = {c.type for c in conditions}
    conds = [dict(c) for t, c in old.items() if t not in new_types]
    conds += [_condition(c, old.get(c.type), now) for c in conditions]
    conds.sort(key=lambda c: (ORDER.get(str(c.get("type")), len(ORDER)), str(c.get("type"))))
    out: dict[str, Any] = {"conditions": conds}
    if latest_version:
        out["latestVersion"] = latest_version
    if latest_hash:
        out["latestHash"] = latest_hash
    if applying:
        out["applying"] = sorted(applying)
    return out


def condition_of(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None
