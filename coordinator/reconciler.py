"""The coordinator's runtime loop: watch-fed caches -> World -> engine.decide -> ordered writes -> repeat.

One reconcile path for everything: Plan, Node and Secret events, agent reports, drain outcomes and timers
only wake the loop; each pass takes the lease table this replica last read or wrote (it is the only writer
while it leads; every write is conditional on the resourceVersion, so a 409 just means: read again and
decide again), applies the agent reports that arrived since the last pass (up to `reports_per_pass` of them:
the others get a pass of their own right after), asks the pure engine what to do, and performs the writes in
the engine's order: at most two table writes per pass, with the Node patches and Events between them
performed concurrently. The Events after the last table write (a node upgraded, a lease granted) describe
what that write (which stores the releases and grants) holds: once it is stored they are posted beside the
next passes, which do not wait for them (`split_announcements`).
Agent heartbeats stay in memory (`AgentRegistry`); they are never written to the API.

This module also answers agents (`RuntimeBroker`): a poll records the agent's state and returns the
instruction for its lease; when nothing new is due it waits (long-poll) until the instruction for that
node changes or `wait` runs out (beyond `--max-held-polls` agents, those furthest from their turn are
told when to come back instead: `coordinator.pacing`); an idle answer names the binary to prefetch to the
nodes next in a plan's order (`Decision.prefetch`). A report that changes the table is answered once
the pass that stored it is over (a group commit: the reports of that moment share one table write, up
to `reports_per_pass` of them).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.api import BrokerError
from coordinator.artifacts import ASSETS
from coordinator.config import LEASE_TABLE_NAME, Settings
from coordinator.drainer import Drainer, DrainOptions, DrainResult, PodPicker
from coordinator.draining import pods_to_evict
from coordinator.engine import (
    AgentSummary,
    AgentView,
    Decision,
    DrainOutcome,
    EngineSettings,
    EventWrite,
    NodePatch,
    NodeView,
    PlanInput,
    PlanStatusWrite,
    StartDrain,
    TableWrite,
    World,
    Write,
    decide,
    plan_input,
    still_labelling,
)
from coordinator.events import involved
from coordinator.handoffs import slot_handoffs
from coordinator.kube.errors import KubeError, LeaseTableConflict
from coordinator.kube.informer import Informer
from coordinator.kube.protocol import Cluster, Obj, StoredLease
from coordinator.kube.resources import NODES, PLANS, SECRETS
from coordinator.leasing import (
    TABLE_ANNOTATION,
    Lease,
    LeasePhase,
    LeaseTable,
    ReportError,
    apply_report,
    instruction_for,
)
from coordinator.metrics import Metrics
from coordinator.nodeviews import NodeViews
from coordinator.pacing import Pacing, pace, plan_queues, turns
from coordinator.plans import Drain, drain_timeout
from coordinator.resolver import Resolver
from coordinator.skew import SkewPolicy
from coordinator.status import STATUS_KEYS
from coordinator.statuslane import StatusLane
from coordinator.versions import is_version
from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    Prefetch,
    Report,
    speaks_prefetch,
)

log = logging.getLogger("coordinator.reconciler")

LABEL_PREFIX = "plan.upgrade.cattle.io/"
EFFECT_PARALLELISM = 16
"""Node patches and Events of one pass performed at the same time."""
LULL_MAX = 0.5
"""Seconds an Event or a Plan status write waits at most for a lull between passes (`_until_lull`)."""
ANNOUNCE_PARALLELISM = 8
"""Closing Events (`split_announcements`) posted at the same time, over all passes: with a slow API server
they queue here instead of taking the pooled connections (`KUBE_CONNECTIONS`) from the writes a rollout
waits for."""


def _ts(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def slim_node(obj: Obj) -> Obj:
    """The part of a Node the coordinator reads (a real Node carries its image list, managedFields,
    capacity...: several KiB that thousands of cached Nodes would hold for nothing)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    info = status.get("nodeInfo") or {}
    return {
        "metadata": {
            k: meta[k]
            for k in ("name", "uid", "resourceVersion", "creationTimestamp", "labels", "annotations")
            if k in meta
        },
        "spec": {"unschedulable": bool((obj.get("spec") or {}).get("unschedulable"))},
        "status": {
            "nodeInfo": {k: info[k] for k in ("kubeletVersion", "architecture") if k in info},
            "conditions": [
                {k: c[k] for k in ("type", "status") if k in c}
                for c in status.get("conditions") or []
                if c.get("type") == "Ready"
            ],
        },
    }


def node_view(obj: Obj) -> NodeView:
    """What the engine needs of a Node object as read."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    labels = dict(meta.get("labels") or {})
    info = status.get("nodeInfo") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return NodeView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid", "")),
        labels=labels,
        annotations=dict(meta.get("annotations") or {}),
        unschedulable=bool((obj.get("spec") or {}).get("unschedulable")),
        ready=ready,
        kubelet_version=info.get("kubeletVersion"),
        arch=labels.get("kubernetes.io/arch") or info.get("architecture") or "amd64",
        creation=_ts(meta.get("creationTimestamp")),
    )


def drain_options(drain: Drain) -> DrainOptions:
    timeout = drain_timeout(drain.timeout)
    return DrainOptions(
        timeout=timeout or None,
        grace_period=drain.grace_period
        if drain.grace_period is not None and drain.grace_period >= 0
        else None,
        disable_eviction=drain.disable_eviction,
        skip_wait_for_delete_timeout=drain.skip_wait_for_delete_timeout,
    )


@dataclass
class _Listening:
    event: asyncio.Event
    polls: int = 0


class AgentRegistry:
    """Last heartbeat per node plus a per-node "something changed" event for long-polls."""

    def __init__(self) -> None:
        self.seen: dict[str, AgentView] = {}
        """node -> the last state its agent posted and when (the engine reads it as is, no copy)."""
        self._changed: dict[str, _Listening] = {}

    def record(self, state: AgentState, now: datetime) -> None:
        self.seen[state.node] = AgentView(AgentSummary.of(state), now)

    @contextmanager
    def listening(self, node: str) -> Iterator[asyncio.Event]:
        """The event `notify` sets for `node`, kept while a poll of it is open (one for all of them).

        Dropped after the last one: an Event weighs about 800 bytes, and most agents of a large cluster
        are not polling at any moment (beyond `--max-held-polls` they are told when to come back)."""
        entry = self._changed.get(node)
        if entry is None:
            entry = self._changed[node] = _Listening(asyncio.Event())
        entry.polls += 1
        try:
            yield entry.event
        finally:
            entry.polls -= 1
            if not entry.polls:
                del self._changed[node]

    def notify(self, nodes: Collection[str] | None = None) -> None:
        """Wake the long-polls of `nodes` (of every node: None)."""
        if nodes is None:
            for entry in self._changed.values():
                entry.event.set()
            return
        for node in nodes:  # (a few nodes, usually, out of thousands)
            waiting = self._changed.get(node)
            if waiting is not None:
                waiting.event.set()


def changed_nodes(old: LeaseTable | None, new: LeaseTable) -> set[str] | None:
    """Nodes whose lease or finished record differs between the two tables (None: every node)."""
    if old is None:
        return None
    before = {le.lease_id: le for le in old.leases}
    after = {le.lease_id: le for le in new.leases}
    nodes = {le.node for k, le in after.items() if before.get(k) != le}
    nodes |= {le.node for k, le in before.items() if k not in after}
    nodes |= {n for n in set(old.finished) | set(new.finished) if old.finished.get(n) != new.finished.get(n)}
    return nodes


def _already_doing(state: AgentState, ins: Instruction) -> bool:
    """Whether the agent is already carrying out `ins` (then a long-poll may hold the answer)."""
    lease_id = ins.lease.lease_id if ins.lease else None
    if ins.action is Action.IDLE:
        if ins.prefetch is not None and state.prefetched != ins.prefetch.artifact.sha256 and not state.error:
            return False  # a binary to download (an agent that could not says why: it tries again later)
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


def _may_prefetch(state: AgentState) -> bool:
    """Whether the agent takes a binary to prefetch now: a version that knows the field, and no lease it
    still works on (it would not prefetch, and would be answered again at once)."""
    ends = (AgentPhase.IDLE, AgentPhase.FAILED, AgentPhase.ROLLED_BACK)
    return (state.lease_id is None or state.phase in ends) and speaks_prefetch(state.agent_version)


class RuntimeBroker:
    """Answers agents for the leader, from the lease table this replica holds."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        rt = self._rt
        now = datetime.now(UTC)
        prev = rt.agents.seen.get(state.node)
        rt.agents.record(state, now)
        if prev is None or (now - prev.at).total_seconds() > rt.settings.timeouts.agent_heartbeat / 2:
            rt.wake()  # the agent (re)appeared: its node may now get a lease
        with rt.agents.listening(state.node) as ev:
            return await self._poll(state, wait, ev)

    async def _poll(self, state: AgentState, wait: float, ev: asyncio.Event) -> Instruction:
        """The instruction, at once if it differs from what the agent does, else once `ev` is set (the
        table changed for this node) or `wait` is over; an idle poll beyond the ones held is paced."""
        rt = self._rt
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        held = False  # this poll counts among the idle polls held
        try:
            while True:
                ev.clear()  # before reading: a table stored from here on sets it again
                table = await rt.current_table()
                ins = instruction_for(state.node, table, state, datetime.now(UTC))
                leased = ins.prefetch is not None  # granted from its prefetch: waits for `apply`
                if (ins.action is Action.IDLE and not leased and (hint := rt.prefetch.get(state.node))
                        and _may_prefetch(state)):
                    # (poll again once it is downloaded: the grant may come any moment from then on)
                    ins = ins.model_copy(update={"prefetch": hint, "poll_after_seconds": 0.0})
                remaining = deadline - loop.time()
                if not _already_doing(state, ins):
                    return ins
                if wait > 0 and ins.action is Action.IDLE and not leased:
                    # (A held poll is asked again when woken: it may have to make room for one ranked within.)
                    after = rt.pacing.poll_after(
                        state.node,
                        len(rt.holding) - (state.node in rt.holding),  # other agents held
                        rt.settings.max_held_polls,
                        loop.time(),
                        rt.settings.timeouts.poll_wait_max,
                    )
                    if after is not None:  # beyond the polls held: come back nearer its turn
                        rt.metrics.polls_paced.inc()
                        return ins.model_copy(update={"poll_after_seconds": round(after, 3)})
                    if not held:
                        held = True
                        rt.hold(state.node)
                if remaining <= 0:
                    # Held for the whole long-poll: that paced the agent already, so it may poll again at
                    # once (a lease granted while it slept would wait for it).
                    return ins.model_copy(update={"poll_after_seconds": 0.0}) if wait > 0 else ins
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: it can swallow a cancel (3.11)
                        await ev.wait()
                except TimeoutError:
                    pass
        finally:
            if held:
                rt.release(state.node)

    async def report(self, report: Report) -> Instruction:
        rt = self._rt
        table = await rt.current_table()
        now = datetime.now(UTC)
        try:
            new = apply_report(table, report, now)  # checked here at once; applied again by the pass
        except ReportError as exc:
            raise BrokerError(exc.status, str(exc)) from exc
        if new == table:  # progress only, or a retry of what is stored already
            return instruction_for(report.node, table, self._state(report), now)
        return await rt.submit(report, self._state(report))

    def _state(self, report: Report) -> AgentState:
        seen = self._rt.agents.seen.get(report.node)
        return AgentState(
            node=report.node,
            agent_version=seen.state.agent_version if seen else "unknown",
            arch=seen.state.arch if seen else "amd64",
            k3s_version=report.k3s_version,
            lease_id=report.lease_id,
            phase=report.phase,
        )


def holds(table: LeaseTable, report: Report, now: datetime) -> bool:
    """Whether `table` has taken `report`: applying it again changes nothing (or its lease moved on past
    it). A pass may store its first table write and fail its second, which alone carried the report."""
    try:
        return apply_report(table, report, now) is table
    except ReportError:
        return True


def split_announcements(
    writes: Sequence[Write], last: int
) -> tuple[list[Write], list[PlanStatusWrite], list[Write]]:
    """(the writes a pass performs, the Plan statuses and the Events it leaves to be written after it):
    what follows the last table write (`last`) describes what is stored and nothing waits for it, so the
    next pass need not. Events before any table write stay in the pass (with none, all of them)."""
    tail = writes[last + 1 :]
    statuses = [w for w in tail if isinstance(w, PlanStatusWrite)]
    events: list[Write] = [w for w in tail if isinstance(w, EventWrite)] if last >= 0 else []
    leave = (PlanStatusWrite, EventWrite) if last >= 0 else PlanStatusWrite
    return [*writes[: last + 1], *(w for w in tail if not isinstance(w, leave))], statuses, events


@dataclass
class PendingReport:
    """A report waiting for the next pass to store it; `answer` gets the agent's next instruction."""

    report: Report
    state: AgentState
    answer: asyncio.Future[Instruction]
    passes: int = 0
    received: float = field(default_factory=time.monotonic)
    """When it arrived (`time.monotonic`), for `k3s_upgrade_report_wait_seconds`."""


PACING_EVERY = 1.0
"""Seconds between two decisions of whose long-polls are held (beyond `--max-held-polls` agents)."""
LISTENER_WAKE_DELAY = 0.05
"""Seconds from an agent a plan waits for being held to the pass that grants it (and the others held
meanwhile)."""

HINT_DELAY = 0.25
"""Seconds from a pass to the answers that tell agents a new binary to prefetch (all of that period at
once): the nodes a pass makes next are those it grants in their place, so without it their polls would
be answered, and come back, amid the hand-offs of that very pass and the go-aheads after it."""

ANNOUNCE_GRACE = 2.0
"""Seconds the loop, when it stops (shutdown, lost lead), waits for the Events its passes still post."""

REPORT_PASSES = 8
"""A report not stored after this many passes (each failed on a conflict or an API error) gets a 503."""

SLOTS_PER_REPORT = 8
"""A pass takes at most one report per this many slots of the plans (the sum of their concurrency), and
at least `MIN_REPORTS_PER_PASS`: see `reports_per_pass`."""
MIN_REPORTS_PER_PASS = 4


def reports_per_pass(slots: int) -> int:
    """How many of the reports waiting one pass takes; the others wait for the next pass, right after.

    The nodes a pass hands off together are all cordoned and told `apply` at the end of it, so they come
    back together when their upgrades take as long, and are handed off together again, wave after wave.
    The last of them waits for every other's Node patches and answers each time: a pass that took the
    reports of 30 nodes at once took 40-55 ms, one that took 3 took 12 ms. Taking an eighth of the slots'
    reports per pass keeps those groups small, while the passes stay few enough that their fixed cost (a
    decision over every node, the table writes) does not add up. `bench.rollout`, runs alternated on 2
    cores: 1,000 nodes at concurrency 50 took 1.042 times the ideal (median of 9 runs) taking 6 reports per
    pass, 1.047 (10 runs) taking 7, 1.040 (5 runs) taking 4, and 1.057 (7 runs) taking every report; 5,000
    nodes at concurrency 200 took 32.2-32.6 s taking 25 or 50, 33.3 s taking all, and 38.4 s taking 6."""
    return max(MIN_REPORTS_PER_PASS, -(-slots // SLOTS_PER_REPORT))


class Runtime:
    """Owns the caches, the reconcile loop, and the agent broker of this replica."""

    def __init__(self, cluster: Cluster, settings: Settings, metrics: Metrics) -> None:
        self.cluster = cluster
        self.settings = settings
        self.metrics = metrics
        self.started_at = datetime.now(UTC)
        self.agents = AgentRegistry()
        self._wake = asyncio.Event()
        self._lull = asyncio.Event()
        """Set while the loop waits for something to happen (no pass due or running): see `_until_lull`."""
        self._lull_late = False
        """A write waited `LULL_MAX` for a lull in vain: the others go at once until the next lull."""
        ns = settings.namespace
        self.plans = Informer(cluster, PLANS, ns, self._on_plan_event)
        self.nodes = Informer(cluster, NODES, None, self._on_node_event, transform=slim_node)
        self.secrets = Informer(cluster, SECRETS, ns, self._on_event)
        self.table: StoredLease | None = None
        self.lease_table: LeaseTable | None = None
        self.last_error: str | None = None
        self.broker = RuntimeBroker(self)
        self._reports: list[PendingReport] = []
        self._slots = 0
        """The plans' slots in the last pass's World (the sum of their concurrency): `reports_per_pass`."""
        self.running = False
        """The reconcile loop runs (only then can a report be stored)."""
        self._table_read_at = 0.0
        self._read_again = False
        """A table write failed with an error other than a conflict: read the table before the next pass."""
        self._last_export = 0.0
        self._views = NodeViews()
        """node name -> its NodeView, kept up to date by the Node watch (not rebuilt per pass), with
        each plan's selection."""
        self._view_seen_at: dict[str, float] = {}
        self._labelled: dict[str, Lease] = {}
        """Nodes released lately whose views may not show the label yet (`World.labelled`)."""
        """node name -> when (`time.monotonic`) the watch delivered its view in `_views`."""
        self._restarted_at: dict[str, float] = {}
        """node -> when its agent's `restarted` report arrived, while its lease waits to be verified."""
        self._evidence: dict[str, float] = {}
        """node -> when the last evidence of its upgrade arrived, for the leases the pass may verify
        (`k3s_upgrade_handoff_seconds`)."""
        self._arches: Counter[str] = Counter()
        """How many of `_views` have each architecture (the plans resolve a binary for each)."""
        self._observed: LeaseTable | None = None
        self._announcing: set[asyncio.Task[bool]] = set()
        """Events of past passes still being posted (a failed one is logged by `_perform_group`)."""
        self._announce_gate = asyncio.Semaphore(ANNOUNCE_PARALLELISM)
        self.statuses = StatusLane(
            self._perform_one, self._status_failed, self._cached_status, until_due=self._until_lull
        )
        self._plan_shapes: dict[str, tuple[dict[str, Any], Any]] = {}
        """plan -> its metadata (but the resourceVersion) and spec as last seen: a status echo of ours that
        comes with no other change wakes no pass."""
        """The Plan statuses the passes decided, written after them (`coordinator.statuslane`)."""
        self.pacing = Pacing()
        """Whose idle long-polls are held, and when the others poll again (`coordinator.pacing`)."""
        self.paced = False
        """More agents poll than `--max-held-polls`: `pacing` applies, and only held agents are granted."""
        self.waiting_for: frozenset[str] = frozenset()
        """Nodes the last pass would have granted, had their agents been held (`Decision.waiting_for`)."""
        self.prefetch: Mapping[str, Prefetch] = {}
        """node -> the binary its agent should download before its turn, as the last pass decided
        (`Decision.prefetch`): told with the `idle` answers to its polls."""
        self._hinted: set[str] = set()
        self._hint_wake: asyncio.TimerHandle | None = None
        self.holding: dict[str, int] = {}
        """node -> idle long-polls of its agent held now (one, unless an old connection lingers)."""
        self._paced_at = float("-inf")
        self._pace_again: asyncio.TimerHandle | None = None
        self._listener_wake: asyncio.TimerHandle | None = None
        self.resolver = Resolver(
            settings.release_base_url, settings.polling_interval, settings.timeouts.channel_request, self.wake
        )
        self.drainer = Drainer(cluster, self._drained)
        t, sf = settings.timeouts, settings.safety
        self.engine_settings = EngineSettings(
            agent_heartbeat=t.agent_heartbeat,
            verify=t.verify,
            restart_stable=t.restart_stable,
            restart=t.restart,
            skew=SkewPolicy(
                allow_downgrade=sf.allow_downgrade,
                allow_minor_skip=sf.allow_minor_skip,
                allow_agent_skew=sf.allow_agent_skew,
            ),
            prefetch_waves=settings.prefetch_waves,
            job_deadline=t.job_deadline,
            job_deadline_max=t.job_deadline_max,
        )

    # -- caches ---------------------------------------------------------------------------------
    def _on_event(self, kind: str, obj: Obj) -> None:
        self._wake.set()

    def _on_plan_event(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if kind == "DELETED":
            self.statuses.forget(name)
            self._plan_shapes.pop(name, None)
        else:
            shape = ({k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")},
                     obj.get("spec"))
            before, self._plan_shapes[name] = self._plan_shapes.get(name), shape
            if kind == "MODIFIED" and shape == before and self.statuses.echo(name, obj.get("status")):
                return  # the echo of our own status write: nothing a pass did not decide
        self._wake.set()

    def _cached_status(self, plan: str) -> Mapping[str, Any]:
        return (self.plans.cache.get(f"{self.settings.namespace}/{plan}") or {}).get("status") or {}

    def _status_failed(self, w: PlanStatusWrite, exc: Exception) -> None:
        """A Plan status write failed: logged (and shown in /status until one succeeds), and decided again
        (and so put back) a second later."""
        if isinstance(exc, KubeError):
            log.warning("plan status not written, deciding again: %s", exc, extra={"plan": w.plan})
        else:
            log.error("plan status not written, deciding again", extra={"plan": w.plan}, exc_info=exc)
        asyncio.get_running_loop().call_later(1.0, self.wake)

    def _on_node_event(self, kind: str, obj: Obj) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        old = self._views.pop(name) if kind == "DELETED" else self._views.get(name)
        if old is not None:
            self._arches[old.arch] -= 1
        if kind != "DELETED":
            view = node_view(obj)
            self._arches[view.arch] += 1
            if view == old:  # an update to what a view leaves out (a heartbeat, the images): no pass
                return
            self._views.put(view)
            self._view_seen_at[name] = time.monotonic()
        else:
            self._view_seen_at.pop(name, None)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def node_arches(self) -> set[str]:
        """The architectures of the Nodes in the cache (kept by the watch, not counted per pass)."""
        return {arch for arch, count in self._arches.items() if count > 0}

    def _drained(self, result: DrainResult) -> None:
        log.info(
            "drain ended",
            extra={"node": result.node, "lease": result.lease_id, "ok": result.ok, "error": result.error},
        )
        self.wake()

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
        self._export_channels()
        self.lease_table = None  # (re)gaining the lead: read the table as stored, never trust an old copy
        resolving = asyncio.create_task(self.resolver.run(), name="resolver")
        self.running = True
        try:
            while True:
                self._lull.clear()
                await asyncio.sleep(0.001)  # coalesce a burst of events into one pass
                self._wake.clear()
                try:
                    with self.metrics.reconcile_seconds.time():
                        await self.reconcile_once()
                    self.last_error = None
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("reconcile failed; retrying")
                    await asyncio.sleep(1.0)
                    if self._reports:  # their agents wait for an answer: not until the next resync
                        self._wake.set()
                if not self._wake.is_set():
                    self._lull_late = False
                    self._lull.set()
                try:
                    async with asyncio.timeout(
                        self.settings.timeouts.resync
                    ):  # not wait_for: it can swallow a cancel (3.11)
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._lull.set()  # no pass to yield to any more: the last Events and statuses go at once
            resolving.cancel()
            announcing = list(self._announcing)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ANNOUNCE_GRACE
            try:
                if announcing:  # let the last passes' Events out, unless the API server does not answer
                    await asyncio.wait(announcing, timeout=ANNOUNCE_GRACE)
            finally:
                for task in announcing:
                    task.cancel()
                await self.statuses.close(max(0.0, deadline - loop.time()))  # (same grace, all in all)
            await asyncio.gather(resolving, *announcing, return_exceptions=True)
            self.running = False
            self.prefetch = {}  # hints of this term: not told by a replica that no longer leads
            await self.drainer.close()
            self.lease_table = None
            for pending in self._reports:
                if not pending.answer.done():
                    pending.answer.set_exception(BrokerError(503, "this coordinator stopped leading; retry"))
            self._reports = []

    async def submit(self, report: Report, state: AgentState) -> Instruction:
        """Queue `report` for the next pass; the agent's instruction once the pass has stored it."""
        if not self.running:
            raise BrokerError(503, f"this coordinator is not reconciling; report of {report.node} not stored")
        pending = PendingReport(report, state, asyncio.get_running_loop().create_future())
        self._reports.append(pending)
        self.wake()
        try:
            async with asyncio.timeout(self.settings.timeouts.resync):
                return await pending.answer
        except TimeoutError:
            raise BrokerError(503, f"the report of {report.node} was not stored in time; retry") from None

    async def reconcile_once(self) -> None:
        """One pass: reports + World -> decide -> writes in order; stop at the first failed write."""
        self.metrics.reconciles.inc()
        started = time.monotonic()
        stored, table = await self.stored_table()
        as_stored = table
        take = reports_per_pass(self._slots)
        waiting = [p for p in self._reports if not p.answer.done()]  # (not those whose agents gave up)
        reports, self._reports = waiting[:take], waiting[take:]
        if self._reports:  # the rest: a pass of their own right after this one
            self.wake()
        now = datetime.now(UTC)
        accepted = []
        for pending in reports:
            if pending.passes == 0:
                self.metrics.report_wait_seconds.observe(started - pending.received)
            try:
                table = apply_report(table, pending.report, now)
                accepted.append(pending)
                if pending.report.phase is AgentPhase.RESTARTED:
                    self._restarted_at[pending.report.node] = pending.received
            except ReportError as exc:  # the table moved on since the broker checked it
                if not pending.answer.done():  # the agent gave up waiting (it retries the report)
                    pending.answer.set_exception(BrokerError(exc.status, str(exc)))
        done = False
        try:
            world = self.world(table, stored=as_stored)
            self._slots = sum(max(pi.plan.spec.concurrency, 1) for pi in world.plans if pi.plan is not None)
            decision = decide(world)  # its table writes store the reports too (see World.stored)
            self.metrics.decide_seconds.observe(time.monotonic() - started)
            self._note_evidence(table)
            self.waiting_for = decision.waiting_for
            self._hint(decision.prefetch)
            tables = [i for i, w in enumerate(decision.writes) if isinstance(w, TableWrite)]
            last = tables[-1] if tables else -1  # the write that stores the pass's releases and grants
            writes, statuses, announcements = split_announcements(decision.writes, last)
            stored_at: list[int] = []

            def on_stored(index: int) -> None:
                stored_at.append(index)
                if index == last:  # the reports are stored: answered before the Plan status and Events
                    self._answer(accepted, stored)

            done = await self.perform(writes, stored, via=table, on_stored=on_stored)
            if last in stored_at:  # the releases are stored: until their labels' echo, not candidates
                self._labelled.update(decision.released)
            if done:  # (after a failed write, the next pass decides them again)
                for status in statuses:
                    self.statuses.put(status)
            if announcements and last in stored_at:  # the Events describe the table write they follow
                task = asyncio.create_task(
                    self._perform_group(announcements, self._announce_gate, "event not posted", lull=True),
                    name="announcements",
                )
                self._announcing.add(task)
                task.add_done_callback(self._announcing.discard)
            self._export(world, decision.progress)
            self._pace(world, decision)
        finally:
            self._answer(accepted, stored)
        # No pass of its own after a success (but for reports left waiting, above): a lease takes one round of
        # effects per pass and then waits for something outside (its agent's report, its Node's watch event,
        # a drain, a timer), which wakes us.
        if not done:
            await asyncio.sleep(0.05)  # a lost race or a failed write: decide again on fresh state
            self.wake()

    def _note_evidence(self, table: LeaseTable) -> None:
        """For the leases this pass may verify (`restarted`): when the last evidence of their node's
        upgrade arrived, as the World the pass decided on saw it (a later watch event, such as the echo of
        the pass's own label patch, must not count)."""
        restarted = {le.node for le in table.leases if le.phase is LeasePhase.RESTARTED}
        self._restarted_at = {n: t for n, t in self._restarted_at.items() if n in restarted}
        self._evidence = {
            n: max(self._restarted_at.get(n, 0.0), self._view_seen_at.get(n, 0.0)) for n in restarted
        }

    def _hint(self, prefetch: Mapping[str, Prefetch]) -> None:
        """Keep the pass's prefetch hints; wake the held polls of the agents with a new one `HINT_DELAY`
        later (an agent whose hint was dropped keeps its binary a while: `agent.prefetch`). A poll that
        arrives or is woken meanwhile gets its hint at once."""
        old, self.prefetch = self.prefetch, prefetch
        if old != prefetch:
            self._hinted.update(n for n, h in prefetch.items() if old.get(n) is not h)
            if self._hinted and self._hint_wake is None:
                self._hint_wake = asyncio.get_running_loop().call_later(HINT_DELAY, self._hints_due)

    def _hints_due(self) -> None:
        self._hint_wake = None
        hinted, self._hinted = self._hinted, set()
        self.agents.notify(hinted)

    def hold(self, node: str) -> None:
        """An idle poll of `node` is held from now on (see `release`)."""
        self.holding[node] = self.holding.get(node, 0) + 1
        self.metrics.polls_held.set(len(self.holding))
        if self.paced and len(self.holding) > self.settings.max_held_polls:  # ranked within: make room
            self.agents.notify(self.pacing.evictions(self.holding, self.settings.max_held_polls))
        if node in self.waiting_for and self._listener_wake is None:  # a plan has a slot for it
            # Decide again soon, once for all the agents held meanwhile: a pass per agent coming back
            # would keep the loop busy with passes while thousands of agents come back.
            loop = asyncio.get_running_loop()
            self._listener_wake = loop.call_later(LISTENER_WAKE_DELAY, self._listener_due)

    def release(self, node: str) -> None:
        left = self.holding.pop(node) - 1
        if left:
            self.holding[node] = left
        self.metrics.polls_held.set(len(self.holding))

    def _pace(self, world: World, decision: Decision) -> None:
        """Rank the agents again (at most once a second) while more poll than the coordinator holds."""
        limit = self.settings.max_held_polls
        if len(self.agents.seen) <= limit:  # (fewer live ones still: counted below, once a second)
            self.paced, self.pacing = False, Pacing()
            return
        loop = asyncio.get_running_loop()
        since = loop.time() - self._paced_at
        if since < PACING_EVERY:
            if self.paced and self._pace_again is None:  # what this pass changed: ranked a little later
                self._pace_again = loop.call_later(PACING_EVERY - since, self._pace_due)
            return
        self._paced_at = loop.time()
        live_since = world.now - timedelta(seconds=self.settings.timeouts.agent_heartbeat)
        agents = [n for n, a in self.agents.seen.items() if a.at >= live_since]
        self.paced = len(agents) > limit
        if not self.paced:
            self.pacing = Pacing()
            return
        queues = plan_queues(world, decision.grantable)
        table = self.lease_table or world.table
        slots = self._slots  # (of this pass's World)
        self.pacing = pace(
            agents,
            {le.node for le in table.leases if le.active},
            turns(queues),
            listening=self.holding,
            max_held=limit,
            rate=max(slots, 1),
            max_after=self.settings.timeouts.poll_wait_max,
        )
        self.agents.notify(self.pacing.evictions(self.holding, limit))

    def _listener_due(self) -> None:
        self._listener_wake = None
        self.wake()

    def _pace_due(self) -> None:
        self._pace_again = None
        self.wake()

    def _answer(self, accepted: list[PendingReport], stored_before: StoredLease | None) -> None:
        """Answer the reports the pass stored; queue the others again (503 after REPORT_PASSES).

        Called right after the pass's last table write (the agents need not wait for the Plan status and
        Events that follow) and again when the pass ends; a report is answered once."""
        stored = self.table is not stored_before and self.lease_table is not None
        retry = []
        for pending in accepted:
            if pending.answer.done():
                continue
            now = datetime.now(UTC)
            if stored and self.lease_table is not None and holds(self.lease_table, pending.report, now):
                pending.answer.set_result(
                    instruction_for(pending.report.node, self.lease_table, pending.state, now)
                )
            elif pending.passes + 1 >= REPORT_PASSES:
                pending.answer.set_exception(
                    BrokerError(503, f"could not store the report of {pending.report.node}: "
                                     f"{self.last_error or 'lease table kept changing'}; retry")
                )
            else:
                pending.passes += 1
                retry.append(pending)
        self._reports[:0] = retry

    def world(self, table: LeaseTable, stored: LeaseTable | None = None) -> World:
        now = datetime.now(UTC)
        nodes = tuple(self._views.values())
        arches = self.node_arches()
        plans = tuple(self.plan_input(o, arches) for o in self.plans.cache.values())
        self._views.retain({pi.name for pi in plans})
        if self._labelled:
            self._labelled = still_labelling(self._labelled, self._views, now)
        held = frozenset(self.holding)
        return World(
            now=now,
            namespace=self.settings.namespace,
            plans=plans,
            nodes=nodes,
            table=table,
            agents=self.agents.seen,
            drains={lid: DrainOutcome(r.ok, r.error or "") for lid, r in self.drainer.results.items()},
            started_at=self.started_at,
            settings=self.engine_settings,
            node_index=self._views,  # the same views as `nodes`: no await between here and decide
            selections=self._views,
            stored=stored if stored is not None and stored is not table else None,
            listening=held if self.paced else None,
            held=held,
            labelled=self._labelled,
        )

    def plan_input(self, obj: Obj, arches: set[str]) -> PlanInput:
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        channel = spec.get("channel")
        version: str | None = None
        channel_err: str | None = None
        if isinstance(channel, str) and channel and not spec.get("version"):
            got = self.resolver.channels.get(channel)
            if got is None:
                channel_err = f"channel {channel} not resolved yet"
            else:
                version, channel_err = got.version, got.error
        target = spec.get("version") or version
        artifacts: dict[str, Artifact] = {}
        artifact_err: str | None = None
        if isinstance(target, str) and is_version(target):
            for arch in sorted(arches & set(ASSETS)):
                art = self.resolver.artifacts.get((target, arch))
                if isinstance(art, Artifact):
                    artifacts[arch] = art
                else:
                    self.resolver.want_artifact(target, arch)
                    if isinstance(art, str):
                        artifact_err = art
        secrets: dict[str, dict[str, bytes]] = {}
        for ref in spec.get("secrets") or []:
            name = ref.get("name") if isinstance(ref, dict) else None
            sec = self.secrets.cache.get(f"{self.settings.namespace}/{name}")
            if sec is not None:
                secrets[str(name)] = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
        return plan_input(
            obj,
            channel_version=version,
            channel_error=channel_err,
            secret_data=secrets,
            artifacts=artifacts,
            artifact_error=artifact_err,
        )

    async def perform(
        self,
        writes: Sequence[Write],
        stored: StoredLease | None,
        via: LeaseTable | None = None,
        on_stored: Callable[[int], None] | None = None,
    ) -> bool:
        """Perform `writes` in order; False at the first that fails (it is logged with its cause).

        Table writes are barriers; the writes between two of them touch different objects and are
        performed concurrently (up to `EFFECT_PARALLELISM` at a time), all of them even if one fails.
        `via`: the table the decision started from (reports applied), for phase durations.
        `on_stored`: called with the index of each table write once it succeeded."""
        group: list[Write] = []
        for i, w in enumerate((*writes, None)):
            if w is not None and not isinstance(w, TableWrite):
                group.append(w)
                continue
            if group:
                if not await self._perform_group(group):
                    return False
                group = []
            if isinstance(w, TableWrite):
                try:
                    await self.write_table(stored, w.table, via=via)
                    via = None
                    if on_stored is not None:
                        on_stored(i)
                except LeaseTableConflict:
                    log.info("lease table changed under us; deciding again")
                    return False
                except KubeError as exc:
                    log.warning("lease table write failed, deciding again: %s", exc)
                    self.last_error = str(exc)
                    # It may have been stored all the same (a timeout, a lost answer): read the table again
                    # rather than decide on the copy from before it.
                    self._read_again = True
                    return False
                stored = self.table
        return True

    async def _perform_group(
        self,
        group: list[Write],
        gate: asyncio.Semaphore | None = None,
        failed: str = "write failed, deciding again",
        *,
        lull: bool = False,
    ) -> bool:
        """Perform `group` concurrently (at most `EFFECT_PARALLELISM` at a time, or as `gate` allows), each
        write after a lull if `lull` (`_until_lull`); False if a write failed (each failure is logged as
        `failed`)."""
        gate = gate or asyncio.Semaphore(EFFECT_PARALLELISM)

        async def one(w: Write) -> bool:
            if lull:  # (before the gate: a slot is not held while waiting)
                await self._until_lull()
            async with gate:
                try:
                    await self._perform_one(w)
                    return True
                except KubeError as exc:
                    log.warning("%s: %s", failed, exc, extra={"write": type(w).__name__})
                    self.last_error = str(exc)
                    return False

        if len(group) == 1:
            return await one(group[0])
        return all(await asyncio.gather(*(one(w) for w in group)))

    async def _until_lull(self) -> None:
        """Until the loop waits for something to happen (no pass due or running), or after `LULL_MAX`
        seconds: for the writes nothing waits for (the Events of a pass, Plan status). In a burst of
        hand-offs (a wave of nodes coming back together) they would take the coordinator's one thread, and
        the API server's share of the cores, from the passes that grant the next nodes. Once one write has
        waited in vain, the others go at once until the next lull: a loop busy for long delays them by
        `LULL_MAX` in all, not by `LULL_MAX` each."""
        if not self._lull.is_set() and not self._lull_late:
            try:
                async with asyncio.timeout(LULL_MAX):
                    await self._lull.wait()
            except TimeoutError:
                self._lull_late = True

    async def _perform_one(self, w: Write) -> None:
        ns = self.settings.namespace
        if isinstance(w, NodePatch):
            with self.metrics.api_write("node"):
                await self.cluster.patch_node(
                    w.node,
                    labels=dict(w.labels) or None,
                    annotations=dict(w.annotations) or None,
                    unschedulable=w.unschedulable,
                )
        elif isinstance(w, PlanStatusWrite):
            # The whole status is ours: what the new one leaves out goes, whether the cache shows it yet or
            # not (the echo of the lane's last write may still be on its way).
            old = self._cached_status(w.plan)
            patch: dict[str, Any] = {k: None for k in {*old, *STATUS_KEYS} if k not in w.status}
            patch.update(w.status)
            with self.metrics.api_write("plan_status"):
                await self.cluster.patch_status(PLANS, ns, w.plan, patch)
        elif isinstance(w, EventWrite):
            ev_ns, ref = involved(w.kind, w.name, w.namespace, self._cached(w.kind, w.name))
            with self.metrics.api_write("event"):
                await self.cluster.create_event(ev_ns, ref, w.type, w.reason, w.message)
            if w.type == "Warning" and w.kind == "Plan" and w.reason == "UpgradeFailed":
                self.metrics.failures.labels(w.name).inc()
        elif isinstance(w, StartDrain):
            self.drainer.start(w.lease_id, w.node, drain_options(w.drain), self.picker(w.drain))

    def _cached(self, kind: str, name: str) -> dict[str, Obj]:
        """{name: the object as cached} for a Node or Plan (empty when not cached)."""
        key = name if kind == "Node" else f"{self.settings.namespace}/{name}"
        obj = (self.nodes.cache if kind == "Node" else self.plans.cache).get(key)
        return {name: obj} if obj is not None else {}

    def picker(self, drain: Drain) -> PodPicker:
        return lambda pods: pods_to_evict(
            pods, drain, self.settings.pod_name, self.settings.pod_namespace, now=datetime.now(UTC))

    def _seen(self, table: LeaseTable) -> None:
        if self._observed is not None and self._observed is not table:
            self._observe(self._observed, table, datetime.now(UTC))
            self.drainer.retain({le.lease_id for le in table.leases if le.phase is LeasePhase.DRAINING})
        self._observed = table

    def _observe(self, old: LeaseTable, new: LeaseTable, now: datetime) -> None:
        """Phase durations: a lease that left a phase (or the table) spent `now - updated_at` in it.

        A lease released in the same write that verified it (its finished record says `verified`)
        spent `verified.updated_at - updated_at` in its old phase, and the rest in `verified`."""
        after = {le.lease_id: le for le in new.leases}
        seconds = self.metrics.phase_seconds
        for le in old.leases:
            nxt = after.get(le.lease_id)
            done = new.finished.get(le.node) if nxt is None else None
            if done is not None and done.lease_id == le.lease_id and done.phase != le.phase:
                seconds.labels(le.plan, le.phase.value).observe(
                    max(0.0, (done.updated_at - le.updated_at).total_seconds())
                )
                seconds.labels(le.plan, done.phase.value).observe(
                    max(0.0, (now - done.updated_at).total_seconds())
                )
            elif nxt is None or nxt.phase != le.phase:
                spent = max(0.0, (now - le.updated_at).total_seconds())
                seconds.labels(le.plan, le.phase.value).observe(spent)

    def _export(self, world: World, progress: Mapping[str, tuple[int, int]]) -> None:
        table = self.lease_table or world.table
        counts: dict[tuple[str, str], int] = {}
        for le in table.leases:
            counts[(le.plan, le.phase.value)] = counts.get((le.plan, le.phase.value), 0) + 1
        self.metrics.set_leases(counts)
        for plan, (total, done) in progress.items():
            self.metrics.nodes_total.labels(plan).set(total)
            self.metrics.nodes_done.labels(plan).set(done)
        self._export_channels()

    def _export_channels(self) -> None:
        urls = set()
        for o in self.plans.cache.values():
            spec = o.get("spec") or {}
            if isinstance(spec, dict) and isinstance(spec.get("channel"), str) and not spec.get("version"):
                urls.add(str(spec["channel"]))
        self.resolver.want(urls)

    # -- the lease table ---------------------------------------------------------------------------
    async def read_table(self) -> tuple[StoredLease | None, LeaseTable]:
        """The lease table as stored now (and the object to write it back against)."""
        stored = await self.cluster.get_lease(self.settings.namespace, LEASE_TABLE_NAME)
        table = LeaseTable.from_annotations(stored.annotations if stored else None)
        self._seen(table)
        self.table, self.lease_table = stored, table
        self._table_read_at = asyncio.get_running_loop().time()
        return stored, table

    async def stored_table(self) -> tuple[StoredLease | None, LeaseTable]:
        """The table this replica last read or wrote; read again after a conflict and every resync.

        While this replica leads it is the table's only writer, so its copy is the stored one; should
        anyone else write, the next conditional write fails with a conflict and the table is read again.
        """
        stale = asyncio.get_running_loop().time() - self._table_read_at > self.settings.timeouts.resync
        if self._read_again and self.lease_table is not None:  # a write that failed may have been stored
            self._read_again, old = False, self.lease_table
            stored, table = await self.read_table()
            self.agents.notify(changed_nodes(old, table))  # (its agents' held polls learn it at once)
            return stored, table
        if self.lease_table is None or stale:
            return await self.read_table()
        return self.table, self.lease_table

    async def current_table(self) -> LeaseTable:
        """The last table read or written by this replica (read once if none yet)."""
        if self.lease_table is None:
            return (await self.read_table())[1]
        return self.lease_table

    async def write_table(
        self, stored: StoredLease | None, table: LeaseTable, via: LeaseTable | None = None
    ) -> None:
        """Conditional write of the table; `LeaseTableConflict` when someone changed it since `stored`.

        `via`: a table between the stored one and this one (the reports of a pass applied), so that a
        phase a lease passed through within one write still counts in the phase durations."""
        annotations = dict(stored.annotations) if stored else {}
        annotations[TABLE_ANNOTATION] = table.to_annotation()
        try:
            with self.metrics.api_write("lease_table"):
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
        old = self.lease_table
        if via is not None:
            self._seen(via)
        self._seen(table)
        self.table, self.lease_table = written, table
        self.agents.notify(changed_nodes(old, table))
        if old is not None and self._evidence:
            for plan, seconds in slot_handoffs(old, table, self._evidence, time.monotonic()):
                self.metrics.handoff_seconds.labels(plan).observe(seconds)

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
            "last_error": self.last_error or self.statuses.failure,
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
