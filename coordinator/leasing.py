"""The lease table: the one serialisation point of all upgrade work, and the agent-facing pure logic.

Every active upgrade lease of the cluster lives in ONE coordination.k8s.io/v1 Lease object
(`k3s-upgrade-leases` in the coordinator's namespace), as JSON in its annotation
`upgrade.cattle.io/lease-table`. Every change is a conditional update carrying the resourceVersion that
was read, so `concurrency` (per plan) and `exclusive` (cluster-wide) hold across crashes, restarts and
two replicas. This module holds the table's data model, its JSON form, and the two pure functions the
agent API needs: `apply_report` (a phase change reported by an agent) and `instruction_for` (what an
agent must do next). No I/O, the clock is passed in.

Lease phases:

    granted -> staged -> draining (cordon/drain if the plan asks) -> applying -> restarted -> verified
            -> (labelled, postCompleteLabels, uncordon if we cordoned) -> released after postCompleteDelay
    any non-terminal -> failed;  applying/restarted -> rolling_back -> rolled_back

`failed` and `rolled_back` are terminal: the lease stays in the table as the failure record (node, hash,
cause) and stops the plan (see coordinator.engine for how a person clears it). Every other phase is
"active" and counts against the plan's `concurrency`.

Errors (both subclasses of `ReportError`, carrying the HTTP status the agent API answers):
    UnknownLease (404)  the report names a lease this node does not hold (reclaimed, or never granted)
    StaleReport  (409)  the reported phase does not fit the lease's phase
"""

from __future__ import annotations

import base64
import binascii
import bisect
import gzip
import json
import zlib
from collections.abc import KeysView, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from operator import attrgetter
from typing import Any

from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    LeaseAssignment,
    Prefetch,
    Report,
)

TABLE_ANNOTATION = "upgrade.cattle.io/lease-table"
"""Annotation of the Lease object that holds the table as JSON."""

COMPRESS_ABOVE = 32 * 1024
"""A table whose JSON is longer is stored gzip-compressed and base64-encoded, behind `GZIP_PREFIX`."""
GZIP_PREFIX = "gzip+base64:"
COMPRESS_LEVEL = 6
"""zlib's default. The table is compressed on every write: at 1,000 finished records (700 KB of JSON)
level 9 takes 10.5 ms and level 6 3.6 ms, for the same size within 1%; level 1 takes 1.1 ms but is 15%
larger, which `MAX_ACTIVE_LEASES` would have to pay for."""
MAX_ACTIVE_LEASES = 2000
"""Leases in flight across all plans. The API server refuses more than 256 KiB of annotations on an
object; a lease record takes about 670 bytes as JSON but about 53 once compressed, so 2,000 active leases
plus as many finished records fit in about 210 KiB."""


class LeasePhase(StrEnum):
    GRANTED = "granted"
    STAGED = "staged"
    DRAINING = "draining"
    APPLYING = "applying"
    RESTARTED = "restarted"
    VERIFIED = "verified"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


_LEASE_ID = attrgetter("lease_id")

TERMINAL = frozenset({LeasePhase.FAILED, LeasePhase.ROLLED_BACK})
"""Phases that no longer hold a slot: the lease is only the failure record."""

UNDISRUPTED = frozenset({LeasePhase.GRANTED, LeasePhase.STAGED})
"""Phases in which nothing on the node has changed yet (the lease may be reclaimed freely)."""

_ORDER = {p: i for i, p in enumerate(LeasePhase)}


@dataclass(frozen=True)
class Lease:
    """One upgrade lease: plan `plan` upgrades node `node` to `target_version` (at plan hash `plan_hash`)."""

    lease_id: str
    plan: str
    node: str
    plan_hash: str
    target_version: str
    artifact: Artifact
    phase: LeasePhase
    granted_at: datetime
    updated_at: datetime
    exclusive: bool = False
    cordoned_by_us: bool = False
    """True from just before we cordon the node until we uncordoned it: the only licence to uncordon."""
    cause: str = ""
    """Why the lease failed or rolled back (names the node and the cause)."""
    announced: bool = False
    """The failure was published as Events (so it is published once)."""
    verified_at: datetime | None = None
    restart_stable_seconds: float = 10.0
    restart_timeout_seconds: float = 120.0

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL

    def assignment(self) -> LeaseAssignment:
        return LeaseAssignment(
            lease_id=self.lease_id,
            plan=self.plan,
            node=self.node,
            target_version=self.target_version,
            plan_hash=self.plan_hash,
            artifact=self.artifact,
            restart_stable_seconds=self.restart_stable_seconds,
            restart_timeout_seconds=self.restart_timeout_seconds,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "leaseId": self.lease_id,
            "plan": self.plan,
            "node": self.node,
            "planHash": self.plan_hash,
            "targetVersion": self.target_version,
            "artifact": self.artifact.model_dump(),
            "phase": self.phase.value,
            "grantedAt": self.granted_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "exclusive": self.exclusive,
            "cordonedByUs": self.cordoned_by_us,
            "cause": self.cause,
            "announced": self.announced,
            "verifiedAt": self.verified_at.isoformat() if self.verified_at else None,
            "restartStableSeconds": self.restart_stable_seconds,
            "restartTimeoutSeconds": self.restart_timeout_seconds,
        }

    @cached_property
    def json_text(self) -> str:
        """`to_json()` as JSON text (sorted keys), made once per Lease (they are immutable)."""
        return json.dumps(self.to_json(), sort_keys=True)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Lease:
        verified = d.get("verifiedAt")
        return Lease(
            lease_id=str(d["leaseId"]),
            plan=str(d["plan"]),
            node=str(d["node"]),
            plan_hash=str(d["planHash"]),
            target_version=str(d["targetVersion"]),
            artifact=Artifact.model_validate(d["artifact"]),
            phase=LeasePhase(d["phase"]),
            granted_at=datetime.fromisoformat(d["grantedAt"]),
            updated_at=datetime.fromisoformat(d["updatedAt"]),
            exclusive=bool(d.get("exclusive", False)),
            cordoned_by_us=bool(d.get("cordonedByUs", False)),
            cause=str(d.get("cause", "")),
            announced=bool(d.get("announced", False)),
            verified_at=datetime.fromisoformat(verified) if verified else None,
            restart_stable_seconds=float(d.get("restartStableSeconds", 10.0)),
            restart_timeout_seconds=float(d.get("restartTimeoutSeconds", 120.0)),
        )


class TableFormatError(ValueError):
    """The annotation does not hold a lease table (names the cause); permanent until someone fixes it."""


@dataclass(frozen=True)
class LeaseTable:
    """All leases (active ones and failure records) plus the last finished lease per node."""

    leases: tuple[Lease, ...] = ()
    finished: Mapping[str, Lease] = field(default_factory=dict)
    """node -> its last released lease, so an agent that missed `finish` still gets it."""

    def by_id(self, lease_id: str) -> Lease | None:
        return self._by_id.get(lease_id)

    @cached_property
    def _by_id(self) -> dict[str, Lease]:
        """lease id -> lease (the first of that id), built once per table (a pass looks up every lease,
        often more than once)."""
        return {le.lease_id: le for le in reversed(self.leases)}

    def active_for_node(self, node: str) -> Lease | None:
        return self._active_by_node.get(node)

    def active_nodes(self) -> KeysView[str]:
        """The nodes that hold an active lease."""
        return self._active_by_node.keys()

    @cached_property
    def _active_by_node(self) -> dict[str, Lease]:
        """node -> its active lease, built once per table (a scheduling pass asks for every node)."""
        index: dict[str, Lease] = {}
        for le in self.leases:
            if le.active:
                index.setdefault(le.node, le)
        return index

    def active_for_plan(self, plan: str) -> tuple[Lease, ...]:
        return self._by_plan.get((plan, True), ())

    def failures_for_plan(self, plan: str) -> tuple[Lease, ...]:
        return self._by_plan.get((plan, False), ())

    def active_count(self) -> int:
        """How many leases are active, over all plans."""
        return sum(len(leases) for (_, active), leases in self._by_plan.items() if active)

    @cached_property
    def exclusive_plans(self) -> frozenset[str]:
        """The plans that hold an active exclusive lease."""
        return frozenset(le.plan for le in self.leases if le.active and le.exclusive)

    @cached_property
    def _by_plan(self) -> dict[tuple[str, bool], tuple[Lease, ...]]:
        """(plan, active) -> its leases in table order, built once per table (a pass asks per plan)."""
        index: dict[tuple[str, bool], list[Lease]] = {}
        for le in self.leases:
            index.setdefault((le.plan, le.active), []).append(le)
        return {key: tuple(leases) for key, leases in index.items()}

    def put(self, lease: Lease) -> LeaseTable:
        """The table with `lease` added or replacing the lease of the same id, in the order of the ids
        (the order every table written by `put` and `remove` has; not re-sorted here)."""
        leases = [le for le in self.leases if le.lease_id != lease.lease_id]
        bisect.insort(leases, lease, key=_LEASE_ID)
        return LeaseTable(leases=tuple(leases), finished=self.finished)

    def remove(self, lease_id: str, *, finished: bool = False) -> LeaseTable:
        gone = self.by_id(lease_id)
        leases = tuple(le for le in self.leases if le.lease_id != lease_id)
        done = dict(self.finished)
        if finished and gone is not None:
            done[gone.node] = gone
        return LeaseTable(leases=leases, finished=done)

    def to_json(self) -> str:
        """`json.dumps({"leases": [...], "finished": {...}}, sort_keys=True)`, put together from each
        lease's own cached text (`Lease.json_text`): a table is written on every pass, its leases rarely
        all change."""
        finished = ", ".join(f"{json.dumps(n)}: {le.json_text}" for n, le in sorted(self.finished.items()))
        leases = ", ".join(le.json_text for le in self.leases)
        return f'{{"finished": {{{finished}}}, "leases": [{leases}]}}'

    def to_annotation(self) -> str:
        """The annotation's value: the JSON, compressed when it is long (see `COMPRESS_ABOVE`)."""
        text = self.to_json()
        if len(text) <= COMPRESS_ABOVE:
            return text
        packed = gzip.compress(text.encode(), compresslevel=COMPRESS_LEVEL, mtime=0)
        return GZIP_PREFIX + base64.b64encode(packed).decode()

    @staticmethod
    def from_json(text: str | None) -> LeaseTable:
        """Parse the annotation (plain or compressed JSON); a missing or empty one is an empty table."""
        if not text:
            return LeaseTable()
        if text.startswith(GZIP_PREFIX):
            try:
                text = gzip.decompress(base64.b64decode(text[len(GZIP_PREFIX) :], validate=True)).decode()
            except (binascii.Error, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                msg = f"annotation {TABLE_ANNOTATION} is not a compressed table: {exc}"
                raise TableFormatError(msg) from exc
        try:
            raw = json.loads(text)
            return LeaseTable(
                leases=tuple(Lease.from_json(d) for d in raw.get("leases", [])),
                finished={str(n): Lease.from_json(d) for n, d in (raw.get("finished") or {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TableFormatError(f"annotation {TABLE_ANNOTATION} is not a lease table: {exc}") from exc

    @staticmethod
    def from_annotations(annotations: Mapping[str, str] | None) -> LeaseTable:
        return LeaseTable.from_json((annotations or {}).get(TABLE_ANNOTATION))


class ReportError(Exception):
    """A report the coordinator cannot take; `status` is the HTTP status the agent API answers."""

    status = 400


class UnknownLease(ReportError):
    status = 404


class StaleReport(ReportError):
    status = 409


# Which lease phases a reported agent phase may move from, and to what.
_REPORT_MOVES: dict[AgentPhase, tuple[frozenset[LeasePhase], LeasePhase]] = {
    AgentPhase.STAGED: (frozenset({LeasePhase.GRANTED}), LeasePhase.STAGED),
    AgentPhase.RESTARTED: (frozenset({LeasePhase.APPLYING}), LeasePhase.RESTARTED),
    AgentPhase.ROLLING_BACK: (
        frozenset({LeasePhase.APPLYING, LeasePhase.RESTARTED}),
        LeasePhase.ROLLING_BACK,
    ),
    AgentPhase.ROLLED_BACK: (
        frozenset(
            {
                LeasePhase.GRANTED,
                LeasePhase.STAGED,
                LeasePhase.DRAINING,
                LeasePhase.APPLYING,
                LeasePhase.RESTARTED,
                LeasePhase.ROLLING_BACK,
            }
        ),
        LeasePhase.ROLLED_BACK,
    ),
    AgentPhase.FAILED: (
        frozenset(
            {
                LeasePhase.GRANTED,
                LeasePhase.STAGED,
                LeasePhase.DRAINING,
                LeasePhase.APPLYING,
                LeasePhase.RESTARTED,
                LeasePhase.ROLLING_BACK,
            }
        ),
        LeasePhase.FAILED,
    ),
}


def apply_report(table: LeaseTable, report: Report, now: datetime) -> LeaseTable:
    """The table after `report`. Idempotent: a repeated or outdated report returns the table unchanged.

    Raises UnknownLease when the node holds no such lease, StaleReport when the phase cannot follow
    the lease's phase (e.g. `restarted` for a lease that was never told to apply).
    """
    lease = table.by_id(report.lease_id)
    if lease is None or lease.node != report.node:
        raise UnknownLease(f"node {report.node} holds no lease {report.lease_id}")
    move = _REPORT_MOVES.get(report.phase)
    if move is None:  # idle, downloading, applying: progress only, nothing to record
        return table
    sources, target = move
    if lease.phase in TERMINAL or lease.phase == target:
        return table  # a retry, or the failure is recorded already (keep its first cause)
    if lease.phase not in sources:
        if target not in TERMINAL and _ORDER[lease.phase] > _ORDER[target]:
            return table  # an outdated retry: the coordinator already moved on
        raise StaleReport(
            f"lease {lease.lease_id} of node {lease.node} is {lease.phase.value}; "
            f"a report of {report.phase.value} does not fit"
        )
    cause = lease.cause
    if target in TERMINAL or target is LeasePhase.ROLLING_BACK:
        detail = report.error or report.detail or f"agent reported {report.phase.value}"
        cause = cause or f"node {lease.node}: {detail}"
    return table.put(replace(lease, phase=target, updated_at=now, cause=cause))


def instruction_for(node: str, table: LeaseTable, state: AgentState, now: datetime) -> Instruction:
    """What the agent of `node` must do next, given the table and what it says it is doing."""
    done = table.finished.get(node)
    if done is not None and state.lease_id == done.lease_id and state.phase is not AgentPhase.IDLE:
        # The agent missed `finish` of a released lease: it must drop it before it can take a new one.
        return Instruction(action=Action.FINISH, lease=done.assignment(), reason="verified and labelled")
    lease = table.active_for_node(node)
    if lease is None:
        failed = next((le for le in table.leases if le.node == node and le.lease_id == state.lease_id), None)
        reason = failed.cause if failed is not None else "no lease for this node"
        return Instruction(action=Action.IDLE, reason=reason, poll_after_seconds=1.0)
    if (lease.phase in (LeasePhase.STAGED, LeasePhase.DRAINING) and state.lease_id != lease.lease_id
            and state.prefetched == lease.artifact.sha256):
        # Granted `staged` from its prefetch (`engine.Decision.prefetch`): nothing for the agent to do
        # before `apply` but keep the binary. An agent that lost it is told `stage` (its state says so).
        reason = "prefetched" + ("; waiting for cordon/drain" if lease.phase is LeasePhase.DRAINING else "")
        return Instruction(action=Action.IDLE, reason=reason, poll_after_seconds=1.0,
                           prefetch=Prefetch(artifact=lease.artifact, target_version=lease.target_version))
    action = {
        LeasePhase.GRANTED: Action.STAGE,
        LeasePhase.STAGED: Action.STAGE,
        LeasePhase.DRAINING: Action.STAGE,
        LeasePhase.APPLYING: Action.APPLY,
        LeasePhase.RESTARTED: Action.APPLY,
        LeasePhase.VERIFIED: Action.FINISH,
        LeasePhase.ROLLING_BACK: Action.ROLLBACK,
    }[lease.phase]
    reason = {
        LeasePhase.DRAINING: "staged; waiting for cordon/drain",
        LeasePhase.RESTARTED: "restarted; waiting for the Node to be Ready on the target version",
        LeasePhase.ROLLING_BACK: lease.cause,
    }.get(lease.phase, lease.phase.value)
    return Instruction(action=action, lease=lease.assignment(), reason=reason, poll_after_seconds=1.0)
