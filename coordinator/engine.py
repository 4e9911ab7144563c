"""The coordinator's pure engine: `decide(World) -> Decision`. No I/O; the clock is in the World.

The runtime (coordinator.reconciler) gathers a World (Plans, Nodes, the lease table as read, agent
heartbeats, drain outcomes), calls `decide`, and performs the Decision's writes IN ORDER, stopping at the
first that fails and deciding again on fresh state. A Decision has one shape, whatever the number of
leases it moves, so a pass costs at most two lease-table writes:

    [TableWrite(before)]  effects...  [TableWrite(after)]  afterwards...

`before` holds every lease change that must be stored before its node is touched (`cordonedByUs` before
we cordon, a phase change before the node is patched for it); the effects (Node patches, Events) touch
different nodes and may run concurrently; `after` holds the changes that may only be stored once those
effects happened (a lease is released only after its node was labelled and uncordoned; `APPLYING` only
after the cordon; `announced` only after the Events) plus every new grant (a grant may use a slot freed
in `after`); `afterwards` are writes that describe the stored table (Plan status, grant Events) or must
follow the cordon (`StartDrain`). A decision that grants nodes whose agents prefetched the binary makes
them go ahead at once (`_Decider.go_ahead`): they are cordoned among the effects (each cordon marked as
ours on the Node itself, `coordinator.cordons`, since the grant is not stored yet), and `after` holds
them `applying`, with `cordonedByUs`. Agent reports not stored yet (`World.stored`) go with `before`, so a
report is stored before the effects it causes, except a `restarted` report that verifies its node: that
one is stored with the release (`after`). A lease takes at most one round of effects per pass. `StartDrain` is
repeated on every pass until `drains[lease_id]` holds its outcome: the runtime runs at most one drain per
lease id.

Failures and how to retry (copy for the README):
  A lease that fails (download/checksum error, drain failure, not told to apply within the job deadline
  from its grant, k3s not coming up, node not Ready on the target within the verify timeout -> rollback)
  stays in the lease table as a failure record. The node is uncordoned if we cordoned it; the Plan gets
  Complete=False, reason JobFailed, with a message naming the node and the cause, and Warning Events on
  the Plan and the Node. The plan grants no new lease while its failures at the current hash exceed its
  failure budget (annotation `upgrade.k3s.io/failure-budget` on the Plan, default 0). To retry:
    * fix the cause and annotate the node: `kubectl annotate node <node> upgrade.k3s.io/retry=now`
      (the coordinator drops that node's failure records and removes the annotation), or
    * change the Plan (new version, or anything in the hash): failure records of the old hash are dropped,
    * or raise the budget: `kubectl -n system-upgrade annotate plan <plan> upgrade.k3s.io/failure-budget=1`.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Container, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from coordinator.cordons import CORDON_ANNOTATION, mark, marked_lease, orphaned
from coordinator.hashing import plan_hash
from coordinator.leasing import MAX_ACTIVE_LEASES, TERMINAL, UNDISRUPTED, Lease, LeasePhase, LeaseTable
from coordinator.plans import Drain, Plan, parse_plan
from coordinator.selection import candidate_order, is_done, plan_label, selected
from coordinator.skew import SkewPolicy, checker, is_server
from coordinator.status import Cond, plan_status
from coordinator.versions import same_version
from coordinator.windows import parse_window
from wire.messages import AgentPhase, AgentState, Artifact, Prefetch

if TYPE_CHECKING:
    from coordinator.nodeviews import NodeViews

RETRY_ANNOTATION = "upgrade.k3s.io/retry"
"""Node annotation (any value): drop this node's failure records, then the annotation."""
UNMARK: Mapping[str, str | None] = {CORDON_ANNOTATION: None}
"""The annotations of a Node patch that uncordons a node we cordoned (`coordinator.cordons`)."""


@dataclass(frozen=True)
class NodeView:
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    ready: bool = False
    kubelet_version: str | None = None
    arch: str = "amd64"
    creation: datetime | None = None
    server: bool = field(init=False, repr=False, compare=False)
    """Whether it runs the control plane (`skew.is_server` of its labels), computed once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "server", is_server(self.labels))


class AgentFacts(Protocol):
    """What the coordinator reads of an agent's last `AgentState`."""

    @property
    def lease_id(self) -> str | None: ...
    @property
    def phase(self) -> AgentPhase: ...
    @property
    def k3s_version(self) -> str | None: ...
    @property
    def agent_version(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def prefetched(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """`AgentFacts` kept per agent: 5,000 of them with their views take 1.3 MiB, the posted `AgentState`s
    (pydantic models) 6.4 MiB. Its repeated strings are shared (`sys.intern`)."""

    lease_id: str | None
    phase: AgentPhase
    k3s_version: str | None
    agent_version: str
    arch: str
    prefetched: str | None = None

    @classmethod
    def of(cls, state: AgentState) -> AgentSummary:
        k3s = sys.intern(state.k3s_version) if state.k3s_version is not None else None
        prefetched = sys.intern(state.prefetched) if state.prefetched is not None else None
        return cls(state.lease_id, state.phase, k3s, sys.intern(state.agent_version), sys.intern(state.arch),
                   prefetched)


@dataclass(frozen=True, slots=True)
class AgentView:
    """What a node's agent last posted and when (in memory; empty after a restart)."""

    state: AgentFacts
    at: datetime


@dataclass(frozen=True)
class DrainOutcome:
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class PlanInput:
    """One Plan as the engine sees it: parsed (or its errors), resolved (or why not), hashed."""

    name: str
    plan: Plan | None
    errors: tuple[str, ...] = ()
    version: str | None = None
    resolved_by: str = "Version"
    """`Version` (spec.version) or `Channel` (spec.channel resolved): the LatestResolved reason."""
    resolve_error: str | None = None
    hash: str | None = None
    artifacts: Mapping[str, Artifact] = field(default_factory=dict)
    """arch (amd64, arm64, arm) -> the binary of `version`, checksum resolved by the runtime."""
    artifact_error: str | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    """The Plan's `.status` as read (timestamps are kept; an unchanged status is not written)."""


def plan_input(
    obj: dict[str, Any],
    *,
    channel_version: str | None = None,
    channel_error: str | None = None,
    secret_data: Mapping[str, Mapping[str, bytes]] | None = None,
    artifacts: Mapping[str, Artifact] | None = None,
    artifact_error: str | None = None,
    secret_types: Mapping[str, str] | None = None,
) -> PlanInput:
    """Build a PlanInput from a Plan object as read plus what the runtime resolved for it.

    `secret_data`: secret name -> decoded data; `secret_types`: secret name -> type (default Opaque).
    """
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    status = obj.get("status") or {}
    plan, errors = parse_plan(obj)
    if plan is None:
        return PlanInput(name=name, plan=None, errors=tuple(errors), status=status)
    by = "Channel" if plan.spec.channel else "Version"
    version = plan.spec.version if plan.spec.version else channel_version
    if version is None:
        err = channel_error or f"channel {plan.spec.channel} not resolved yet"
        return PlanInput(name=name, plan=plan, resolved_by=by, resolve_error=err, status=status)
    have = secret_data or {}
    missing = [s.name for s in plan.spec.secrets if not s.ignore_updates and s.name not in have]
    if missing:
        return PlanInput(
            name=name,
            plan=plan,
            version=version,
            resolved_by=by,
            status=status,
            resolve_error=f"secret(s) {', '.join(missing)} not found",
        )
    h = plan_hash(
        version,
        plan.spec.service_account_name,
        obj,
        [(s.name, s.ignore_updates) for s in plan.spec.secrets],
        secret_data or {},
        secret_types,
    )
    return PlanInput(
        name=name,
        plan=plan,
        version=version,
        resolved_by=by,
        hash=h,
        artifacts=dict(artifacts or {}),
        artifact_error=artifact_error,
        status=status,
    )


@dataclass(frozen=True)
class EngineSettings:
    agent_heartbeat: float = 60.0
    verify: float = 600.0
    restart_stable: float = 10.0
    restart: float = 120.0
    skew: SkewPolicy = field(default_factory=SkewPolicy)
    prefetch_waves: int = 1
    """How many waves of nodes (a plan's `concurrency` each) past the ones it grants now are asked to
    download the binary before their turn (`Decision.prefetch`); 0: a node downloads once granted."""
    job_deadline: float = 900.0
    """SUC's controller default for `jobActiveDeadlineSecs` (`job_deadline`); 0: none."""
    job_deadline_max: float = 0.0
    """SUC's ceiling on a Plan's `jobActiveDeadlineSecs`; 0: none."""


def job_deadline(asked: int | None, settings: EngineSettings) -> float:
    """Seconds a lease may take from its grant until its node is told to apply (0: no limit), as SUC
    computes its Job's `activeDeadlineSeconds`: the Plan's `jobActiveDeadlineSecs` when set (0: none),
    else the controller default, at most the controller's maximum when one is set.

    SUC's Job holds the download (its image pull), the cordon, the drain and the upgrade. Here the deadline
    bounds the steps before the binary is touched; from `applying` on, the restart and verification
    timeouts bound the upgrade, which ends in a rollback rather than a killed Job."""
    deadline = settings.job_deadline if asked is None else float(asked)
    if settings.job_deadline_max > 0 and deadline > settings.job_deadline_max:
        return settings.job_deadline_max
    return deadline


@dataclass(frozen=True)
class World:
    now: datetime
    namespace: str
    plans: tuple[PlanInput, ...]
    nodes: tuple[NodeView, ...]
    table: LeaseTable
    agents: Mapping[str, AgentView] = field(default_factory=dict)
    drains: Mapping[str, DrainOutcome] = field(default_factory=dict)
    started_at: datetime | None = None
    settings: EngineSettings = EngineSettings()
    node_index: Mapping[str, NodeView] | None = None
    """`nodes` by name, when the caller keeps one (else the decision builds it); read only by `decide`."""
    selections: NodeViews | None = None
    """`nodes` with each plan's selection kept as they change, when the caller keeps them so: the
    decision reads a plan's selected and not-done Nodes there instead of walking `nodes`."""
    stored: LeaseTable | None = None
    """The table as stored, when `table` is it with agent reports applied that are not stored yet (they
    are stored by this decision's writes); None: `table` is as stored."""
    listening: frozenset[str] | None = None
    """None: any agent that polled lately may be granted. A set: only these, the nodes whose agents the
    coordinator holds a long-poll of now. Given when more agents poll than the coordinator holds
    (`coordinator.pacing`): a lease granted to an agent that is away keeps its slot idle until it polls."""
    held: frozenset[str] | None = None
    """The nodes whose agents' idle polls the coordinator holds at this moment (None: not known, as for the
    engine alone: any agent that polled lately counts). A node is granted from its prefetch, and so
    cordoned and told `apply` in the same pass, only if its agent is there now: a poll up to
    `agent_heartbeat` old proves nothing about an agent that crashed since (its node would be cordoned
    and held `applying` for nothing). Otherwise it is granted as any node and told `stage`."""
    labelled: Mapping[str, Lease] = field(default_factory=dict)
    """node -> its lease released lately (`Decision.released`, once stored), while its Node view may not
    show the plan label yet: the watch brings the echo of the label patch, possibly after the next pass has
    started. Such a node is not a candidate for that plan at that hash (see `label_on_its_way`)."""


@dataclass(frozen=True)
class TableWrite:
    table: LeaseTable


@dataclass(frozen=True)
class NodePatch:
    node: str
    labels: Mapping[str, str | None] = field(default_factory=dict)
    unschedulable: bool | None = None
    annotations: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanStatusWrite:
    plan: str
    status: dict[str, Any]


@dataclass(frozen=True)
class EventWrite:
    kind: str
    name: str
    namespace: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class StartDrain:
    lease_id: str
    node: str
    drain: Drain


Write = TableWrite | NodePatch | PlanStatusWrite | EventWrite | StartDrain


@dataclass(frozen=True)
class Decision:
    writes: tuple[Write, ...]
    progress: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """plan -> (nodes it selects, nodes done at its current hash), for the metrics."""
    grantable: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """plan -> the nodes it may grant now, held or not, whether or not it has a free slot (given only
    with `World.listening`): the queues `coordinator.pacing` ranks agents by. A plan that grants nothing
    now for another reason (waiting for its prepare plan, outside its window, over its failure budget,
    no binary resolved, an exclusive plan running, the lease table full) has none."""
    waiting_for: frozenset[str] = frozenset()
    """Nodes a plan would have granted a free slot to, had their agents been in `World.listening`: the
    coordinator decides again when one of them is held."""
    released: Mapping[str, Lease] = field(default_factory=dict)
    """node -> the lease this decision releases after labelling the node: once its last table write (which
    stores the releases and grants) is stored, the caller keeps it in `World.labelled` until the Node view
    shows the label."""
    prefetch: Mapping[str, Prefetch] = field(default_factory=dict)
    """node -> the binary its agent should download now, before its turn: the next nodes in each plan's
    order after the ones it grants (`EngineSettings.prefetch_waves` times its concurrency). A node whose
    agent says it holds that binary (`AgentFacts.prefetched`) and is there now (`World.held`) is granted
    as `staged` (no download, no `staged` report between the grant and the cordon), and cordoned and
    told `apply` in the same pass, with no further table write (`_Decider.go_ahead`)."""


LABEL_ECHO_GRACE = timedelta(seconds=30)
"""How long after a node was verified its plan label may be missing from the Node cache because the echo
of the label patch has not arrived yet. Later, a node released at the plan's hash whose label is missing
had it removed by a person, and is upgraded again (as with SUC)."""


def label_on_its_way(done: Lease | None, plan: str, plan_hash: str, now: datetime) -> bool:
    """Whether `done` (the node's lease released lately, `World.labelled`) says the node is done at this
    plan's hash, though its cached Node may not show the label yet: then it is not a candidate."""
    if done is None or done.plan != plan or done.plan_hash != plan_hash:
        return False
    return now < (done.verified_at or done.updated_at) + LABEL_ECHO_GRACE


def still_labelling(labelled: Mapping[str, Lease], views: Mapping[str, NodeView],
                    now: datetime) -> dict[str, Lease]:
    """`labelled` without the nodes whose views show the label now (or are gone), and the ones whose grace
    is over: what the next World's `labelled` holds."""
    keep = {}
    for name, done in labelled.items():
        view = views.get(name)
        shown = view is None or view.labels.get(plan_label(done.plan)) == done.plan_hash
        if not shown and label_on_its_way(done, done.plan, done.plan_hash, now):
            keep[name] = done
    return keep


@functools.lru_cache(maxsize=64)
def prefetch_of(artifact: Artifact, version: str) -> Prefetch:
    """The hint for a binary, the same object from pass to pass (the runtime compares the hints of two
    passes to find the agents to tell: identical objects compare at no cost)."""
    return Prefetch(artifact=artifact, target_version=version)


def _lease_id(plan: str, node: str, h: str, now: datetime) -> str:
    digest = hashlib.sha256(f"{plan}/{node}/{h}/{now.isoformat()}".encode()).hexdigest()[:12]
    return f"{plan}.{node}.{digest}"


def _substitute(value: str, version: str, h: str) -> str:
    """postCompleteLabels value; the version is munged like SUC's (`+` -> `-`) to stay a valid label."""
    return value.replace("$(LATEST_VERSION)", version.replace("+", "-")).replace("$(LATEST_HASH)", h)


def prune_finished(table: LeaseTable, agents: Mapping[str, AgentView], nodes: Container[str]) -> LeaseTable:
    """Drop `finished` entries no agent can still need, so the table stays the size of the work in flight.

    An entry exists so that an agent that missed `finish` is told again (see `instruction_for`). It is
    kept while its node exists and its agent is unknown (e.g. after a coordinator restart), last polled
    before the lease was granted (it was idle then, but has taken the lease since: reports do not update
    `agents`, and a lease can go from grant to release without another poll), or still says it is on
    that lease; once the agent is idle or on another lease, the entry is dropped.
    """
    keep = {}
    for node, done in table.finished.items():
        view = agents.get(node)
        if node in nodes and (
            view is None
            or view.at < done.granted_at
            or (view.state.lease_id == done.lease_id and view.state.phase is not AgentPhase.IDLE)
        ):
            keep[node] = done
    return table if len(keep) == len(table.finished) else replace(table, finished=keep)


def granted_message(nodes: list[str], version: str, limit: int = 900) -> str:
    """`node a: upgrade to v granted` for one node; for several, their names (cut to fit an Event)."""
    if len(nodes) == 1:
        return f"node {nodes[0]}: upgrade to {version} granted"
    head = f"upgrade to {version} granted to {len(nodes)} nodes: "
    names = ", ".join(nodes)
    if len(head) + len(names) <= limit:
        return head + names
    shown: list[str] = []
    for name in nodes:
        rest = f" and {len(nodes) - len(shown) - 1} more"
        if len(head) + len(", ".join([*shown, name])) + len(rest) > limit:
            break
        shown.append(name)
    return f"{head}{', '.join(shown)} and {len(nodes) - len(shown)} more"


class _Decider:
    def __init__(self, world: World) -> None:
        self.w = world
        # Pruned in memory only: it reaches the API with the next table write this decision makes anyway.
        self.nodes = world.node_index if world.node_index is not None else {n.name: n for n in world.nodes}
        self.base = prune_finished(world.table, world.agents, self.nodes)
        stored = world.stored
        self.stored = self.base if stored is None else prune_finished(stored, world.agents, self.nodes)
        """The table as stored: what the first table write must differ from to be worth making."""
        self.t = self.base
        """The table after every change of this decision (written last)."""
        self.before = self.base
        """The table with only the changes made to leases before their first effect (written first)."""
        self.acted: set[str] = set()
        """Lease ids that have an effect (Node patch, Event) in this decision: later changes go `after`."""
        self.effects: list[Write] = []
        self.afterwards: list[Write] = []
        self.plans = {p.name: p for p in world.plans}
        self.cordoned: set[str] = set()  # nodes this decision cordons/uncordons (seen by later steps)
        self.uncordoned: set[str] = set()
        self.released: dict[str, Lease] = {}
        """node -> its lease this decision releases (`Decision.released`)."""
        """Nodes whose lease this decision releases: their labels are not read back yet, no new grant."""
        self._chosen: dict[str, tuple[tuple[NodeView, ...], tuple[NodeView, ...]]] = {}
        """plan -> (the nodes it selects, those of them not done at its hash), once per decision."""
        self._servers: list[str | None] | None = None
        self.grantable: dict[str, frozenset[str]] = {}
        self.waiting_for: set[str] = set()
        self.prefetch: dict[str, Prefetch] = {}
        self.ready: list[str] = []
        """Lease ids granted `staged` in this decision (their agents hold the binary): `go_ahead`."""

    def writes(self) -> tuple[Write, ...]:
        """The decision in its one shape: [before] effects [after] afterwards."""
        out: list[Write] = []
        written = self.stored
        if self.effects and self.before != self.stored:
            out.append(TableWrite(self.before))
            written = self.before
        out.extend(self.effects)
        if self.t != written:
            out.append(TableWrite(self.t))
        out.extend(self.afterwards)
        return tuple(out)

    # -- helpers -----------------------------------------------------------------------------------
    def _change(self, lease_id: str, put: Lease | None = None, *, finished: bool = False) -> None:
        """Put `put` (or remove lease `lease_id`) in the table; in `before` too unless the lease acted."""
        def change(table: LeaseTable) -> LeaseTable:
            return table.put(put) if put is not None else table.remove(lease_id, finished=finished)

        self.t = change(self.t)
        if lease_id not in self.acted:
            self.before = change(self.before)

    def remove(self, lease_id: str, *, finished: bool = False) -> None:
        self._change(lease_id, finished=finished)

    def update(self, lease: Lease, **changes: Any) -> Lease:
        new = replace(lease, **changes)
        self._change(lease.lease_id, new)
        return new

    def store_after_effects(self, lease_id: str) -> None:
        """From now on, changes to `lease_id` are stored in `after` (once this pass's effects happened)."""
        self.acted.add(lease_id)

    def store_report_after_effects(self, lease_id: str) -> None:
        """Like `store_after_effects`, and its agent's report (not stored yet) is stored `after` too."""
        if lease_id not in self.acted:
            reported, stored = self.before.by_id(lease_id), self.stored.by_id(lease_id)
            if stored is not None and reported is not None and reported != stored:
                self.before = self.before.put(stored)
        self.store_after_effects(lease_id)

    def effect(self, lease_id: str, write: Write) -> None:
        """A write that touches the node (or publishes) for `lease_id`, after `before` is stored."""
        self.store_after_effects(lease_id)
        self.effects.append(write)

    def event(self, lease_id: str, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.effect(lease_id, EventWrite(kind, name, self.w.namespace, type_, reason, message))

    def announce(self, kind: str, name: str, reason: str, message: str) -> None:
        """A Normal Event after the last table write: it describes what is stored, nothing waits for it."""
        self.afterwards.append(EventWrite(kind, name, self.w.namespace, "Normal", reason, message))

    def alive(self, node: str, since: datetime) -> bool:
        baseline = max(since, self.w.started_at or since)
        agent = self.w.agents.get(node)
        last = max(agent.at, baseline) if agent else baseline
        return (self.w.now - last).total_seconds() <= self.w.settings.agent_heartbeat

    def server_versions(self) -> list[str | None]:
        """The kubelet versions of the server nodes (once per decision)."""
        if self._servers is None:
            kept = self.w.selections
            servers = kept.servers() if kept is not None else [n for n in self.w.nodes if n.server]
            self._servers = [n.kubelet_version for n in servers]
        return self._servers

    def is_unschedulable(self, node: NodeView) -> bool:
        if node.name in self.cordoned:
            return True
        if node.name in self.uncordoned:
            return False
        return node.unschedulable

    def mark_of(self, node: NodeView) -> str | None:
        """The lease the mark of a cordon of ours on the node names (`coordinator.cordons`), as read; "" for
        a mark that cannot be read, None without a mark (or once this decision removes it)."""
        value = node.annotations.get(CORDON_ANNOTATION)
        if value is None or node.name in self.uncordoned:
            return None
        return marked_lease(value)[0] or ""

    def ours(self, lease: Lease, node: NodeView) -> bool:
        """Whether the node is cordoned by us for `lease`: the mark names it (a cordon of a pass whose table
        write was not stored names a lease that the next grant takes over by cordoning again)."""
        return self.mark_of(node) == lease.lease_id

    def cordon_needed(self, lease: Lease, node: NodeView) -> bool | None:
        """Whether `lease` must cordon the node now: True to cordon (not cordoned, or cordoned by a pass of
        ours for a lease never stored: cordoned again with a mark naming this lease, so a stale view of
        a node given back since does not count as cordoned), False if it is cordoned for this lease,
        None if someone else cordoned it (not ours to uncordon later)."""
        mark = self.mark_of(node)
        if not self.is_unschedulable(node) or (mark is not None and mark != lease.lease_id):
            return True
        return False if mark == lease.lease_id or lease.cordoned_by_us else None

    def cordon_patch(self, lease_id: str, node: str) -> NodePatch:
        """Our cordon of `node` for `lease_id`, marked as ours (`coordinator.cordons`)."""
        self.cordoned.add(node)
        return NodePatch(node, unschedulable=True,
                         annotations={CORDON_ANNOTATION: mark(lease_id, self.w.now)})

    def cordon(self, lease: Lease, node: NodeView) -> Lease:
        needed = self.cordon_needed(lease, node)
        if needed is None:
            return lease
        if not lease.cordoned_by_us:
            lease = self.update(lease, cordoned_by_us=True)
        if needed:
            self.effect(lease.lease_id, self.cordon_patch(lease.lease_id, node.name))
        return lease

    def uncordon(self, lease: Lease, node: NodeView | None) -> Lease:
        mine = node is not None and self.ours(lease, node)
        if lease.cordoned_by_us or mine:
            # Never the node another lease holds now (a failure record of one plan, a lease of another).
            holder = self.t.active_for_node(lease.node)
            if node is not None and (holder is None or holder.lease_id == lease.lease_id) and (
                self.is_unschedulable(node) or mine
            ):
                cordoned = self.is_unschedulable(node)
                patch = NodePatch(node.name, unschedulable=False if cordoned else None, annotations=UNMARK)
                self.effect(lease.lease_id, patch)
                self.uncordoned.add(node.name)
            if lease.cordoned_by_us:
                lease = self.update(lease, cordoned_by_us=False)
        return lease

    def withdrawn(self, lease: Lease) -> bool:
        pi = self.plans.get(lease.plan)
        return pi is None or pi.plan is None or pi.hash is None or pi.hash != lease.plan_hash

    def fail(self, lease: Lease, cause: str) -> None:
        self.update(lease, phase=LeasePhase.FAILED, cause=cause, updated_at=self.w.now)

    # -- steps -------------------------------------------------------------------------------------
    def retries(self) -> None:
        kept = self.w.selections
        if kept is not None:
            asked = kept.retries()
        else:
            asked = [n for n in self.w.nodes if RETRY_ANNOTATION in n.annotations]
        for node in sorted(asked, key=lambda n: n.name):
            records = [le for le in self.t.leases if le.node == node.name and le.phase in TERMINAL]
            for le in records:
                if le.cordoned_by_us:
                    self.uncordon(le, node)
                self.remove(le.lease_id)
            # Only once the records' removal is stored: otherwise a crash would lose the request.
            self.afterwards.append(NodePatch(node.name, annotations={RETRY_ANNOTATION: None}))

    def node_gone(self, lease: Lease) -> None:
        """The lease's Node was deleted. Before the cordon nothing on it changed, and a failure record goes
        with its Node (deleting a broken node is one way a person acts): the lease is reclaimed. A node
        disrupted since keeps its slot, as one that is not Ready does: the kubelet registers it again under
        its name and its upgrade goes on (another lease for it would be refused by its agent, busy with this
        one). Only if it has not registered again within the verify timeout is the slot reclaimed, with a
        Warning Event on the Plan."""
        if lease.phase not in (LeasePhase.GRANTED, LeasePhase.STAGED) and lease.phase not in TERMINAL:
            if (self.w.now - lease.updated_at).total_seconds() <= self.w.settings.verify:
                return
            cause = (f"node {lease.node}: deleted while {lease.phase.value}, and not registered again within "
                     f"{self.w.settings.verify:g}s; its slot is free again")
            self.event(lease.lease_id, "Plan", lease.plan, "Warning", "UpgradeFailed", cause)
        self.remove(lease.lease_id)

    def advance(self, lease_id: str) -> None:
        lease = self.t.by_id(lease_id)
        if lease is None:
            return
        node = self.nodes.get(lease.node)
        w, now = self.w, self.w.now
        if node is None:
            self.node_gone(lease)
            return
        if lease.phase in TERMINAL:
            lease = self.uncordon(lease, node)
            if not lease.announced:
                msg = lease.cause or f"node {node.name}: upgrade failed"
                self.event(lease.lease_id, "Plan", lease.plan, "Warning", "UpgradeFailed", msg)
                self.event(
                    lease.lease_id, "Node", node.name, "Warning", "UpgradeFailed", f"plan {lease.plan}: {msg}"
                )
                lease = self.update(lease, announced=True)
            if self.withdrawn(lease):
                self.remove(lease.lease_id)
            return
        pi = self.plans.get(lease.plan)
        if lease.phase in UNDISRUPTED:
            if self.withdrawn(lease) or not self.alive(node.name, lease.updated_at):
                self.remove(lease.lease_id)
                return
            if self.overdue(lease):
                return
            if lease.phase is LeasePhase.STAGED:
                assert pi is not None and pi.plan is not None
                spec = pi.plan.spec
                if spec.cordon or spec.drain is not None:
                    lease = self.update(lease, phase=LeasePhase.DRAINING, updated_at=now)
                else:
                    self.update(lease, phase=LeasePhase.APPLYING, updated_at=now)
                    return
            else:
                return
        if lease.phase is LeasePhase.DRAINING:
            if self.withdrawn(lease):  # nothing was applied yet: give the node back
                lease = self.uncordon(lease, node)
                self.remove(lease.lease_id)
                return
            outcome = w.drains.get(lease.lease_id)
            # (A drain that finished in time is not failed for the pass that saw it later; one still running
            # is stopped once its lease fails: `Drainer.retain`.)
            if (outcome is None or not outcome.ok) and self.overdue(lease):
                return
            assert pi is not None and pi.plan is not None
            lease = self.cordon(lease, node)
            drain = pi.plan.spec.drain
            if drain is not None:
                outcome = w.drains.get(lease.lease_id)
                if outcome is None:
                    # After the cordon (an effect of this pass, maybe): evicted pods must not come back.
                    self.afterwards.append(StartDrain(lease.lease_id, node.name, drain))
                    return
                if not outcome.ok:
                    self.fail(lease, f"node {node.name}: drain failed: {outcome.message}")
                    self.advance(lease.lease_id)
                    return
            self.update(lease, phase=LeasePhase.APPLYING, updated_at=now)
            return
        if lease.phase is LeasePhase.RESTARTED:
            if node.ready and same_version(node.kubelet_version, lease.target_version):
                # Stored with the release, not before the label, and so is the agent's `restarted` report:
                # nothing depends on them having been stored (after a crash in between, the lease is found
                # `applying` or `restarted`, the agent sends `restarted` again until it is answered, and
                # the Node, labelled already, is verified again and needs no patch).
                self.store_report_after_effects(lease.lease_id)
                lease = self.update(lease, phase=LeasePhase.VERIFIED, verified_at=now, updated_at=now)
            elif (now - lease.updated_at).total_seconds() > w.settings.verify:
                seen = node.kubelet_version or "unknown"
                self.update(
                    lease,
                    phase=LeasePhase.ROLLING_BACK,
                    updated_at=now,
                    cause=(
                        f"node {node.name}: not Ready on {lease.target_version} within "
                        f"{w.settings.verify:g}s (Ready={node.ready}, kubelet {seen}); "
                        "rolling back"
                    ),
                )
                return
            else:
                return
        if lease.phase is LeasePhase.VERIFIED:
            self.finish(lease, node)

    def overdue(self, lease: Lease) -> bool:
        """Fail `lease` (of a plan at its hash, not applying yet) when its job deadline has passed since its
        grant (`job_deadline`; since this coordinator's start, if later), as SUC's Job would have failed; True
        if it did. The failure record stops
        the plan as any other (the node is uncordoned, Events name the cause)."""
        pi = self.plans.get(lease.plan)
        assert pi is not None and pi.plan is not None
        deadline = job_deadline(pi.plan.spec.job_active_deadline_secs, self.w.settings)
        # A drain counts from the grant, or from this coordinator's start if later: while no coordinator
        # ran, no drain did either (one away longer than the deadline would fail every drain it finds). A
        # download is the agent's, and went on meanwhile.
        since = lease.granted_at
        if lease.phase is LeasePhase.DRAINING and self.w.started_at is not None:
            since = max(since, self.w.started_at)
        if deadline <= 0 or (self.w.now - since).total_seconds() <= deadline:
            return False
        if lease.phase is not LeasePhase.DRAINING:
            doing = "the download of the binary"
        elif pi.plan.spec.drain is not None:
            doing = "the drain"
        else:
            doing = "the cordon"
        self.fail(lease, f"node {lease.node}: {doing} did not finish within the job deadline of "
                         f"{deadline:g}s from the grant (jobActiveDeadlineSecs)")
        self.advance(lease.lease_id)
        return True

    def finish(self, lease: Lease, node: NodeView) -> None:
        pi = self.plans.get(lease.plan)
        labels: dict[str, str | None] = {plan_label(lease.plan): lease.plan_hash}
        delay = 0.0
        if pi is not None and pi.plan is not None and pi.hash == lease.plan_hash:
            for k, v in (pi.plan.spec.post_complete_labels or {}).items():
                labels[k] = _substitute(v, lease.target_version, lease.plan_hash)
            delay = pi.plan.post_complete_delay_seconds
        unlabelled = any(node.labels.get(k) != v for k, v in labels.items())
        marked = self.ours(lease, node)
        uncordon = (lease.cordoned_by_us or marked) and self.is_unschedulable(node)
        verified = lease.verified_at or lease.updated_at
        release = self.w.now >= verified + timedelta(seconds=delay)
        if unlabelled or uncordon or marked:
            patch = NodePatch(node.name, labels=labels, unschedulable=False if uncordon else None,
                              annotations=UNMARK if uncordon or marked else {})
            self.effect(lease.lease_id, patch)
            if uncordon or marked:
                self.uncordoned.add(node.name)
            if not release and lease.cordoned_by_us:
                self.update(lease, cordoned_by_us=False)
        if release:  # stored after the patch above: the slot is free for a grant of this same pass
            self.store_after_effects(lease.lease_id)  # (with the Event below: in the last table write)
            self.remove(lease.lease_id, finished=True)
            self.released[node.name] = lease
            # An announcement: after the table write, so the next grant does not wait for it. With the release
            # (stored once), not with the patch: a pass cut short after its patch would lose it.
            msg = f"plan {lease.plan}: node {node.name} verified on {lease.target_version}"
            self.announce("Node", node.name, "Upgraded", msg)

    def grants(self, pi: PlanInput) -> tuple[list[str], str | None]:
        """Grant what the plan may; returns (messages about blocked nodes, why the plan waits or None)."""
        plan, w = pi.plan, self.w
        if plan is None or pi.hash is None or pi.version is None:
            return [], None
        spec = plan.spec
        if plan.prepare_plan:
            other = self.plans.get(plan.prepare_plan)
            if other is None or not self.complete(other):
                self.prefetch_first(pi)
                return [], f"waiting for plan {plan.prepare_plan} to complete"
        failures = [le for le in self.t.failures_for_plan(plan.name) if le.plan_hash == pi.hash]
        if len(failures) > plan.failure_budget:
            return [], None
        if spec.window is not None:
            win = spec.window
            if not parse_window(win.days, win.start_time, win.end_time, win.time_zone).contains(w.now):
                return [], "outside the plan's window"
        if pi.artifact_error:
            return [], None
        active = self.t.active_count()
        others = active - len(self.t.active_for_plan(plan.name))  # active leases of the other plans
        if self.t.exclusive_plans - {plan.name} or (spec.exclusive and others):
            return [], "waiting for an exclusive plan" if others else None
        slots = max(spec.concurrency, 1) - (active - others)
        room = MAX_ACTIVE_LEASES - active
        if 0 < slots and room < slots:
            slots = room
            if room <= 0:
                return [], f"the lease table holds {MAX_ACTIVE_LEASES} leases in flight, its limit"
        blocked: list[str] = []
        skew = checker(pi.version, self.server_versions(), w.settings.skew)
        # Failed, released by this very pass, or holding a lease: not a candidate.
        busy = {le.node for le in failures} | self.released.keys()
        busy.update(self.t.active_nodes())
        alive_since = w.now - timedelta(seconds=w.settings.agent_heartbeat)
        agents, listening, artifacts = w.agents, w.listening, pi.artifacts
        pool = []
        away: list[NodeView] = []
        for n in self.pending(pi):  # every node of the plan not done: keep this loop lean
            name = n.name
            if name in busy:
                continue
            problem = skew(name, n.kubelet_version, n.server)
            if problem is None and n.arch not in artifacts:
                problem = f"node {name}: no {pi.version} binary for arch {n.arch}"
            if problem:
                blocked.append(problem)
                continue
            agent = agents.get(name)
            if n.ready and agent is not None and agent.at >= alive_since:  # its agent polled lately
                if listening is not None and name not in listening:
                    away.append(n)  # its agent is paced (`coordinator.pacing`): grant it once it is held
                else:
                    pool.append(n)
        if labelled := w.labelled:
            pool = [n for n in pool if not label_on_its_way(labelled.get(n.name), plan.name, pi.hash, w.now)]
        ahead = max(spec.concurrency, 1) * w.settings.prefetch_waves
        ordered = candidate_order(pool, plan.uid, pi.hash, first=max(slots, 0) + ahead)
        granted = ordered[:max(slots, 0)]
        if ahead:
            self.prefetch_upcoming(pi, ordered[len(granted):])
        if listening is not None:
            self.grantable[plan.name] = frozenset(n.name for n in (*pool, *away))
            if len(granted) < slots:
                self.waiting_for.update(n.name for n in away)
        for n in granted:
            artifact = pi.artifacts[n.arch]
            agent = agents.get(n.name)
            prefetched = (agent is not None and agent.state.prefetched == artifact.sha256
                          and (w.held is None or n.name in w.held))
            lease = Lease(
                lease_id=_lease_id(plan.name, n.name, pi.hash, w.now),
                plan=plan.name,
                node=n.name,
                plan_hash=pi.hash,
                target_version=pi.version,
                artifact=artifact,
                # Its agent holds the binary, verified: as good as its `staged` report (docs/protocol.md).
                phase=LeasePhase.STAGED if prefetched else LeasePhase.GRANTED,
                granted_at=w.now,
                updated_at=w.now,
                exclusive=spec.exclusive,
                restart_stable_seconds=w.settings.restart_stable,
                restart_timeout_seconds=w.settings.restart,
            )
            # Stored `after`: the slot may be one this pass frees there (a released or failed lease).
            self.store_after_effects(lease.lease_id)
            self._change(lease.lease_id, lease)
            if prefetched:
                self.ready.append(lease.lease_id)
        if granted:  # one Event per plan and pass, however many nodes (each node gets its own when done)
            msg = granted_message([n.name for n in granted], pi.version)
            self.announce("Plan", plan.name, "LeaseGranted", msg)
        return sorted(blocked), None  # by node: the order of `pending` is not the Nodes' (`selections`)

    def go_ahead(self) -> None:
        """The leases granted `staged` in this decision go on to `applying` in it too (to `draining`, with
        their drain started afterwards, as for any lease): each node is cordoned in the round of Node patches
        that labels and uncordons the nodes whose slots it takes, marked as ours (`coordinator.cordons`), and
        its lease is stored `applying`, with `cordonedByUs`, in the one table write after that round. The
        go-ahead follows the grant without another pass, another table write or another round."""
        for lease_id in self.ready:
            lease = self.t.by_id(lease_id)
            assert lease is not None
            node, pi = self.nodes[lease.node], self.plans[lease.plan]
            assert pi.plan is not None
            spec = pi.plan.spec
            if not (spec.cordon or spec.drain is not None):
                self.t = self.t.put(replace(lease, phase=LeasePhase.APPLYING))
                continue
            if node.name in self.uncordoned:  # uncordoned in this round: cordoned by the next pass, in order
                continue
            lease = self.cordon(lease, node)  # (a grant of this decision: its changes go `after`)
            if spec.drain is not None:
                self.t = self.t.put(replace(lease, phase=LeasePhase.DRAINING))
                # After the cordon: evicted pods must not come back.
                self.afterwards.append(StartDrain(lease.lease_id, lease.node, spec.drain))
            else:
                self.t = self.t.put(replace(lease, phase=LeasePhase.APPLYING))

    def orphaned_cordons(self) -> None:
        """Give back the nodes cordoned by a pass whose table write was never stored (`coordinator.cordons`):
        marked as ours, no active lease and no lease the mark names in the table, none taken by this
        decision, not released lately
        (the echo of the patch that uncordoned them and removed the mark may still be on its way:
        `World.labelled`, `finished`), and the mark older than `cordons.ORPHAN_GRACE`."""
        kept = self.w.selections
        if kept is not None:
            marked = kept.marked()
        else:
            marked = [n for n in self.w.nodes if CORDON_ANNOTATION in n.annotations]
        if not marked:
            return
        active = self.t.active_nodes()
        labelled = self.w.labelled
        for node in sorted(marked, key=lambda n: n.name):
            name, value = node.name, node.annotations[CORDON_ANNOTATION]
            if name in active or name in self.cordoned or name in self.uncordoned or name in self.released:
                continue
            if name in labelled:
                continue
            done = self.t.finished.get(name)
            lease_id, _ = marked_lease(value)
            if lease_id is not None and self.t.by_id(lease_id) is not None:  # (its own record uncordons it)
                continue
            if (done is not None and done.lease_id == lease_id) or not orphaned(value, self.w.now):
                continue
            self.effects.append(NodePatch(name, unschedulable=False if node.unschedulable else None,
                                          annotations=UNMARK))
            self.uncordoned.add(name)
            if node.unschedulable:
                lease = lease_id or "unknown"
                msg = f"node {name}: cordoned by us (lease {lease}), held by no lease; uncordoned"
                self.announce("Node", name, "Uncordoned", msg)

    def prefetch_first(self, pi: PlanInput) -> None:
        """A plan that waits for its prepare plan: its first nodes download its binary meanwhile, so its
        first wave goes ahead once the prepare plan completes. Before the skew rules, which hold them
        back until then (an agent node is not upgraded past its servers, upgrading now); a download
        changes nothing on the node."""
        ahead = max(pi.plan.spec.concurrency, 1) * self.w.settings.prefetch_waves if pi.plan else 0
        if not ahead:
            return
        busy = self.t.active_nodes()
        alive_since = self.w.now - timedelta(seconds=self.w.settings.agent_heartbeat)
        pool = [n for n in self.pending(pi) if n.name not in busy and n.ready and n.arch in pi.artifacts
                and (agent := self.w.agents.get(n.name)) is not None and agent.at >= alive_since]
        assert pi.plan is not None and pi.hash is not None
        self.prefetch_upcoming(pi, candidate_order(pool, pi.plan.uid, pi.hash, first=ahead))

    def prefetch_upcoming(self, pi: PlanInput, upcoming: list[NodeView]) -> None:
        """Ask the agents of the nodes next in the plan's order to download its binary now."""
        assert pi.version is not None
        for n in upcoming:  # a node next for two plans: the first by name
            self.prefetch.setdefault(n.name, prefetch_of(pi.artifacts[n.arch], pi.version))

    def chosen(self, pi: PlanInput) -> tuple[tuple[NodeView, ...], int]:
        """The nodes the plan selects and how many of them are done at its hash (once per decision)."""
        nodes, pending = self._selection(pi)
        return nodes, len(nodes) - len(pending)

    def pending(self, pi: PlanInput) -> tuple[NodeView, ...]:
        """The nodes the plan selects that are not done at its hash (all of them without a hash)."""
        return self._selection(pi)[1]

    def _selection(self, pi: PlanInput) -> tuple[tuple[NodeView, ...], tuple[NodeView, ...]]:
        hit = self._chosen.get(pi.name)
        if hit is None:
            if pi.plan is None:
                hit = (), ()
            else:
                sel = pi.plan.spec.node_selector
                raw = sel.model_dump(by_alias=True, exclude_none=True) if sel else None
                if self.w.selections is not None:
                    hit = self.w.selections.select(raw, pi.name, pi.hash)
                else:  # a walk over every Node
                    nodes = tuple(selected(raw, pi.name, self.w.nodes))
                    h = pi.hash
                    hit = nodes, nodes if h is None else tuple(n for n in nodes if not is_done(n, pi.name, h))
            self._chosen[pi.name] = hit
        return hit

    def complete(self, pi: PlanInput) -> bool:
        if pi.plan is None or pi.hash is None:
            return False
        nodes, done = self.chosen(pi)
        return done == len(nodes)

    def status(self, pi: PlanInput, blocked: list[str], waiting: str | None) -> None:
        conds: list[Cond] = []
        if pi.plan is None:
            conds.append(Cond("Validated", False, "Error", "; ".join(pi.errors)))
        else:
            conds.append(Cond("Validated", True, "PlanIsValid", ""))
            if pi.resolve_error:
                conds.append(Cond("LatestResolved", False, "Error", pi.resolve_error))
            else:
                # No message, as SUC: the Message column shows the first condition that has one.
                conds.append(Cond("LatestResolved", True, pi.resolved_by, ""))
            if pi.hash is not None:
                failures = [le for le in self.t.failures_for_plan(pi.name) if le.plan_hash == pi.hash]
                applying = [le.node for le in self.t.active_for_plan(pi.name)]
                if self.complete(pi) and not applying:
                    conds.append(Cond("Complete", True, "", ""))
                elif failures and len(failures) > pi.plan.failure_budget:
                    conds.append(Cond("Complete", False, "JobFailed", "; ".join(le.cause for le in failures)))
                elif pi.artifact_error:
                    conds.append(Cond("Complete", False, "Error", pi.artifact_error))
                elif waiting:
                    conds.append(Cond("Complete", False, "Waiting", waiting))
                else:
                    parts = ([f"applying: {', '.join(sorted(applying))}"] if applying else []) + blocked
                    conds.append(Cond("Complete", False, "SyncJob", "; ".join(parts)))
        applying_nodes = [le.node for le in self.t.active_for_plan(pi.name)]
        new = plan_status(
            pi.status,
            conds,
            self.w.now,
            latest_version=pi.version,
            latest_hash=pi.hash,
            applying=applying_nodes,
        )
        if new != dict(pi.status):
            self.afterwards.append(PlanStatusWrite(pi.name, new))


def decide(world: World) -> Decision:
    """Everything the coordinator should write now, in order. Pure."""
    d = _Decider(world)
    d.retries()
    for lease_id in sorted(le.lease_id for le in world.table.leases):
        d.advance(lease_id)
    outcome: dict[str, tuple[list[str], str | None]] = {}
    for pi in sorted(world.plans, key=lambda p: p.name):
        outcome[pi.name] = d.grants(pi)
    d.go_ahead()
    d.orphaned_cordons()
    for pi in sorted(world.plans, key=lambda p: p.name):
        d.status(pi, *outcome[pi.name])
    progress = {}
    for pi in world.plans:
        if pi.plan is not None:
            nodes, done = d.chosen(pi)
            progress[pi.name] = (len(nodes), done)
    return Decision(
        writes=d.writes(), progress=progress, grantable=d.grantable, waiting_for=frozenset(d.waiting_for),
        released=d.released, prefetch=d.prefetch,
    )
