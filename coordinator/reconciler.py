"""The coordinator's runtime loop: watch-fed caches -> World -> engine.decide -> ordered writes -> repeat.

One reconcile path for everything: Plan, Node and Secret events, agent reports, drain outcomes and
timers only wake the loop; each pass reads the caches and the lease table (with its resourceVersion),
asks the pure engine what to do, and performs the writes in the order given, stopping at the first that
fails (a 409 on the lease table just means: read again and decide again). Agent heartbeats stay in
memory (`AgentRegistry`); they are never written to the API.

This module also answers agents (`RuntimeBroker`): a poll records the agent's state and returns the
instruction for its lease; when nothing new is due it waits (long-poll) until the next pass changes
something for that node or `wait` runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coordinator.config import LEASE_TABLE_NAME, Settings
from coordinator.kube.errors import LeaseTableConflict
from coordinator.kube.informer import Informer
from coordinator.kube.protocol import Cluster, Obj, StoredLease
from coordinator.kube.resources import NODES, PLANS, SECRETS
from coordinator.leasing import TABLE_ANNOTATION, LeaseTable, ReportError, apply_report, instruction_for
from coordinator.metrics import Metrics
from wire.messages import Action, AgentPhase, AgentState, Instruction, Report

log = logging.getLogger("coordinator.reconciler")

LABEL_PREFIX = "plan.upgrade.cattle.io/"


@dataclass(frozen=True)
class AgentSeen:
    """The last state an agent posted and when (in memory only; empty after a restart)."""

    state: AgentState
    at: datetime


class AgentRegistry:
    """Last heartbeat per node plus a per-node "something changed" event for long-polls."""

    def __init__(self) -> None:
        self.seen: dict[str, AgentSeen] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def record(self, state: AgentState, now: datetime) -> None:
        self.seen[state.node] = AgentSeen(state, now)

    def event(self, node: str) -> asyncio.Event:
        return self._changed.setdefault(node, asyncio.Event())

    def notify(self, nodes: set[str] | None = None) -> None:
        for node, ev in self._changed.items():
            if nodes is None or node in nodes:
                ev.set()


def _already_doing(state: AgentState, ins: Instruction) -> bool:
    """Whether the agent is already carrying out `ins` (then a long-poll may hold the answer)."""
    lease_id = ins.lease.lease_id if ins.lease else None
    if ins.action is Action.IDLE:
        return state.lease_id is None or state.phase in (
            AgentPhase.IDLE,
            AgentPhase.FAILED,
            AgentPhase.ROLLED_BACK,
        )
    if lease_id != state.lease_id:
        return False
    doing = {
        Action.STAGE: (AgentPhase.DOWNLOADING, AgentPhase.STAGED),
        Action.APPLY: (AgentPhase.APPLYING, AgentPhase.RESTARTED),
        Action.ROLLBACK: (AgentPhase.ROLLING_BACK, AgentPhase.ROLLED_BACK),
    }
    return state.phase in doing.get(ins.action, ())


class RuntimeBroker:
    """Answers agents for the leader, from the lease table (read/written conditionally)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        rt = self._rt
        rt.agents.record(state, datetime.now(UTC))
        ev = rt.agents.event(state.node)
        ev.clear()
        table = await rt.current_table()
        ins = instruction_for(state.node, table, state, datetime.now(UTC))
        if wait > 0 and _already_doing(state, ins):
            try:
                await asyncio.wait_for(ev.wait(), timeout=wait)
            except TimeoutError:
                pass
            table = await rt.current_table()
            ins = instruction_for(state.node, table, state, datetime.now(UTC))
        return ins

    async def report(self, report: Report) -> Instruction:
        from coordinator.api import BrokerError

        rt = self._rt
        for _attempt in range(8):
            stored, table = await rt.read_table()
            now = datetime.now(UTC)
            try:
                new = apply_report(table, report, now)
            except ReportError as exc:
                raise BrokerError(exc.status, str(exc)) from exc
            if new != table:
                try:
                    await rt.write_table(stored, new)
                except LeaseTableConflict:
                    continue
                rt.wake()
            seen = rt.agents.seen.get(report.node)
            state = AgentState(
                node=report.node,
                agent_version=seen.state.agent_version if seen else "unknown",
                arch=seen.state.arch if seen else "amd64",
                k3s_version=report.k3s_version,
                lease_id=report.lease_id,
                phase=report.phase,
            )
            return instruction_for(report.node, new, state, now)
        raise BrokerError(
            503, f"lease table kept changing while recording the report of {report.node}; retry"
        )


class Runtime:
    """Owns the caches, the reconcile loop, and the agent broker of this replica."""

    def __init__(self, cluster: Cluster, settings: Settings, metrics: Metrics) -> None:
        self.cluster = cluster
        self.settings = settings
        self.metrics = metrics
        self.started_at = datetime.now(UTC)
        self.agents = AgentRegistry()
        self._wake = asyncio.Event()
        ns = settings.namespace
        self.plans = Informer(cluster, PLANS, ns, self._on_event)
        self.nodes = Informer(cluster, NODES, None, self._on_event)
        self.secrets = Informer(cluster, SECRETS, ns, self._on_event)
        self.table: StoredLease | None = None
        self.lease_table: LeaseTable | None = None
        self.last_error: str | None = None
        self.broker = RuntimeBroker(self)

    # -- caches ---------------------------------------------------------------------------------
    def _on_event(self, kind: str, obj: Obj) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run_caches(self) -> None:
        """Run the informers (every replica: status and readiness need them, leader or not)."""
        await asyncio.gather(self.plans.run(), self.nodes.run(), self.secrets.run())

    def ready(self) -> tuple[bool, str]:
        waiting = [i.res.plural for i in (self.plans, self.nodes, self.secrets) if not i.synced.is_set()]
        return (False, f"waiting for caches: {', '.join(waiting)}") if waiting else (True, "ready")

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Reconcile on every wake-up and at least every resync interval, until cancelled."""
        for inf in (self.plans, self.nodes, self.secrets):
            await inf.synced.wait()
        while True:
            self._wake.clear()
            try:
                await self.reconcile_once()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconcile failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.timeouts.resync)
            except TimeoutError:
                pass

    async def reconcile_once(self) -> None:
        self.metrics.reconciles.inc()
        await self.read_table()
        for plan in self.plans.cache.values():
            name = plan["metadata"]["name"]
            latest = (plan.get("status") or {}).get("latestHash")
            labels = [(n.get("metadata") or {}).get("labels") or {} for n in self.nodes.cache.values()]
            done = sum(1 for lbl in labels if latest and lbl.get(LABEL_PREFIX + name) == latest)
            self.metrics.nodes_done.labels(name).set(done)

    # -- the lease table ---------------------------------------------------------------------------
    async def read_table(self) -> tuple[StoredLease | None, LeaseTable]:
        """The lease table as stored now (and the object to write it back against)."""
        stored = await self.cluster.get_lease(self.settings.namespace, LEASE_TABLE_NAME)
        table = LeaseTable.from_annotations(stored.annotations if stored else None)
        self.table, self.lease_table = stored, table
        return stored, table

    async def current_table(self) -> LeaseTable:
        """The last table read or written by this replica (read once if none yet)."""
        if self.lease_table is None:
            return (await self.read_table())[1]
        return self.lease_table

    async def write_table(self, stored: StoredLease | None, table: LeaseTable) -> None:
        """Conditional write of the table; `LeaseTableConflict` when someone changed it since `stored`."""
        annotations = dict(stored.annotations) if stored else {}
        annotations[TABLE_ANNOTATION] = table.to_json()
        self.metrics.api_writes.labels("lease_table").inc()
        try:
            written = await self.cluster.write_lease(
                self.settings.namespace,
                LEASE_TABLE_NAME,
                annotations,
                dict(stored.spec) if stored else {},
                stored.resource_version if stored else None,
            )
        except LeaseTableConflict:
            self.metrics.write_conflicts.labels("lease_table").inc()
            self.lease_table = None
            raise
        self.table, self.lease_table = written, table
        self.agents.notify({le.node for le in table.leases} | set(table.finished))

    # -- /status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        plans: dict[str, Any] = {}
        for plan in sorted(self.plans.cache.values(), key=lambda p: str(p["metadata"]["name"])):
            name = str(plan["metadata"]["name"])
            spec: Mapping[str, Any] = plan.get("spec") or {}
            st: Mapping[str, Any] = plan.get("status") or {}
            label = LABEL_PREFIX + name
            nodes = {
                str(n["metadata"]["name"]): {"label": ((n["metadata"].get("labels") or {}).get(label))}
                for n in self.nodes.cache.values()
                if label in (n["metadata"].get("labels") or {})
            }
            for le in self.lease_table.leases if self.lease_table else ():
                if le.plan == name:
                    nodes.setdefault(le.node, {"label": None}).update(
                        {
                            "phase": le.phase.value,
                            "lease_id": le.lease_id,
                            "target_version": le.target_version,
                            "granted_at": le.granted_at.isoformat(),
                            "updated_at": le.updated_at.isoformat(),
                            "seconds_in_phase": round((datetime.now(UTC) - le.updated_at).total_seconds(), 3),
                            "last_error": le.cause or None,
                        }
                    )
            plans[name] = {
                "version": st.get("latestVersion") or spec.get("version"),
                "channel": spec.get("channel"),
                "hash": st.get("latestHash"),
                "conditions": st.get("conditions") or [],
                "applying": st.get("applying") or [],
                "nodes": nodes,
            }
        return {
            "namespace": self.settings.namespace,
            "started_at": self.started_at.isoformat(),
            "ready": self.ready()[0],
            "last_error": self.last_error,
            "plans": plans,
            "agents": {
                n: {
                    "phase": a.state.phase.value,
                    "k3s_version": a.state.k3s_version,
                    "seen": a.at.isoformat(),
                }
                for n, a in sorted(self.agents.seen.items())
            },
            "lease_table_version": self.table.resource_version if self.table else None,
        }
