"""A simulated cluster for the pure engine (nodes, plans, lease table, agents), invariants checked per write.

Not a test module: the property and seed-plan tests drive it. Writes are applied the way the runtime
applies them (in order, optionally only a prefix, as if the coordinator crashed mid-way); every write is
checked against the invariants of BRIEF section 5 as it lands.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.cordons import CORDON_ANNOTATION
from coordinator.engine import (
    AgentView,
    Decision,
    DrainOutcome,
    EngineSettings,
    EventWrite,
    NodePatch,
    NodeView,
    PlanStatusWrite,
    StartDrain,
    TableWrite,
    World,
    decide,
    plan_input,
    still_labelling,
)
from coordinator.leasing import Lease, LeasePhase, LeaseTable, ReportError, apply_report, instruction_for
from coordinator.nodeviews import NodeViews
from coordinator.selection import plan_label
from wire.messages import Action, AgentPhase, AgentState, Artifact, Prefetch, Report

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SHA = "a" * 64
ARTIFACTS = {a: Artifact(url=f"http://rel/{a}", sha256=SHA, name=f"k3s-{a}")
             for a in ("amd64", "arm64", "arm")}


class InvariantBroken(AssertionError):
    pass


@dataclass
class SimNode:
    name: str
    uid: str
    labels: dict[str, str]
    version: str
    ready: bool = True
    unschedulable: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    we_cordoned: bool = False
    seen_ready_on: set[str] = field(default_factory=set)
    agent_phase: AgentPhase = AgentPhase.IDLE
    agent_lease: str | None = None
    previous_version: str | None = None
    healthy_upgrades: bool = True
    prefetched: str | None = None
    """The SHA-256 of the binary its agent downloaded ahead of a lease (`Decision.prefetch`)."""


class Sim:
    def __init__(
        self, nodes: list[SimNode], plans: list[dict[str, Any]], settings: EngineSettings | None = None
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.plans = {p["metadata"]["name"]: copy.deepcopy(p) for p in plans}
        self.table = LeaseTable()
        self.agents: dict[str, AgentView] = {}
        self.drains: dict[str, DrainOutcome] = {}
        self.now = T0
        self.started_at = T0
        self.settings = settings or EngineSettings(agent_heartbeat=30, verify=60)
        self.events: list[EventWrite] = []
        self.grants: list[tuple[str, str]] = []  # (plan, node) in grant order
        self.views = NodeViews()
        self.labelled: dict[str, Lease] = {}  # kept as the runtime keeps it (`World.labelled`)
        self.prefetch: Mapping[str, Prefetch] = {}  # the last decision's hints, told with `idle` answers
        self.ungranted: set[str] = set()  # nodes cordoned in this decision before a write stores their lease

    # -- the World ---------------------------------------------------------------------------------
    def inputs(self) -> tuple[Any, ...]:
        return tuple(plan_input(p, artifacts=ARTIFACTS) for p in self.plans.values())

    def world(self) -> World:
        for n in self.nodes.values():
            if n.ready:
                n.seen_ready_on.add(n.version)
        # Kept as the runtime keeps them: a view replaced only when its Node changed, each plan's
        # selection updated with it.
        for name in [name for name in self.views if name not in self.nodes]:
            self.views.pop(name)
        for n in self.nodes.values():
            view = NodeView(name=n.name, uid=n.uid, labels=dict(n.labels), annotations=dict(n.annotations),
                            unschedulable=n.unschedulable, ready=n.ready, kubelet_version=n.version)
            if self.views.get(n.name) != view:
                self.views.put(view)
        inputs = self.inputs()
        self.views.retain({pi.name for pi in inputs})
        self.labelled = still_labelling(self.labelled, self.views, self.now)
        return World(now=self.now, namespace="system-upgrade", plans=inputs, nodes=tuple(self.views.values()),
                     table=self.table, agents=dict(self.agents), drains=dict(self.drains),
                     started_at=self.started_at, settings=self.settings, selections=self.views,
                     labelled=dict(self.labelled))

    def step(self, prefix: int | None = None) -> Decision:
        world = self.world()
        decision = decide(world)
        walked = decide(replace(world, selections=None))  # every plan's selection over every Node
        if walked != decision:
            raise InvariantBroken(f"kept selections decide otherwise than a walk: {decision} != {walked}")
        writes = decision.writes if prefix is None else decision.writes[:prefix]
        for w in writes:
            self.perform(w, world)
        if self.ungranted and prefix is None:
            raise InvariantBroken(f"{sorted(self.ungranted)} cordoned, and no table write after stores it")
        self.ungranted = set()  # (a crash mid-way: cordoned and marked, the lease never stored)
        final = [w for w in decision.writes if isinstance(w, TableWrite)]
        if final and self.table is final[-1].table:
            self.labelled.update(decision.released)
        self.prefetch = decision.prefetch
        return decision

    # -- writes ------------------------------------------------------------------------------------
    def perform(self, w: Any, world: World) -> None:
        if isinstance(w, TableWrite):
            before = {le.lease_id: le for le in self.table.leases}
            self.table = w.table
            for name in self.ungranted:
                le = self.table.active_for_node(name)
                if le is None or not le.cordoned_by_us:
                    raise InvariantBroken(f"{name} cordoned before a grant, and the write after does not "
                                          f"store it as ours: {le}")
            self.ungranted = set()
            self.check_cordons()
            for le in w.table.leases:
                if le.lease_id not in before:  # granted (as `staged`, or further, from a prefetch)
                    self.check_grant(le.plan, le.node, world)
                old = before.get(le.lease_id)
                if le.phase is LeasePhase.APPLYING and (old is None or old.phase is not LeasePhase.APPLYING):
                    self.check_cordoned(le.plan, le.node, "told to apply")
            self.check_table()
        elif isinstance(w, NodePatch):
            node = self.nodes.get(w.node)
            if node is None:
                return
            for k, v in w.labels.items():
                if k.startswith("plan.upgrade.cattle.io/") and v is not None and node.labels.get(k) != v:
                    lease = next((le for le in self.table.leases if le.node == node.name
                                  and plan_label(le.plan) == k), None)
                    target = lease.target_version if lease else None
                    if target is None or target not in node.seen_ready_on:
                        raise InvariantBroken(f"{node.name} labelled {k}={v} without being seen Ready on "
                                              f"{target} (seen {node.seen_ready_on})")
                if v is None:
                    node.labels.pop(k, None)
                else:
                    node.labels[k] = v
            for k, v in w.annotations.items():
                if v is None:
                    node.annotations.pop(k, None)
                else:
                    node.annotations[k] = v
            if w.unschedulable is True:
                if not w.annotations.get(CORDON_ANNOTATION):
                    raise InvariantBroken(f"{node.name} cordoned without our mark: {w}")
                if self.table.active_for_node(node.name) is None:
                    self.ungranted.add(node.name)
                node.unschedulable, node.we_cordoned = True, True
            elif w.unschedulable is False and node.unschedulable:
                if not node.we_cordoned:
                    raise InvariantBroken(f"{node.name} uncordoned although we did not cordon it")
                if CORDON_ANNOTATION not in w.annotations or node.annotations.get(CORDON_ANNOTATION):
                    raise InvariantBroken(f"{node.name} uncordoned, and our mark left: {w}")
                node.unschedulable, node.we_cordoned = False, False
        elif isinstance(w, PlanStatusWrite):
            self.plans[w.plan]["status"] = w.status
        elif isinstance(w, EventWrite):
            self.events.append(w)
        elif isinstance(w, StartDrain):
            self.check_cordoned(None, w.node, "drained")
            self.drains.setdefault(w.lease_id, DrainOutcome(ok=True))

    def check_cordoned(self, plan: str | None, node: str, what: str) -> None:
        """A node is drained, or its agent told to apply, only once it is cordoned (if the plan cordons)."""
        spec = self.plans[plan]["spec"] if plan is not None and plan in self.plans else {"cordon": True}
        sim = self.nodes.get(node)
        if sim is not None and (spec.get("cordon") or spec.get("drain")) and not sim.unschedulable:
            raise InvariantBroken(f"{node} {what} while still schedulable")

    def check_grant(self, plan: str, node: str, world: World) -> None:
        self.grants.append((plan, node))
        spec = self.plans[plan]["spec"]
        prep = spec.get("prepare")
        if prep:
            other = prep["args"][1]
            pi = next(p for p in world.plans if p.name == other)
            sel = [n for n in world.nodes if _selected(self.plans[other], n.labels)]
            if pi.hash is None or any(n.labels.get(plan_label(other)) != pi.hash for n in sel):
                raise InvariantBroken(f"{node} granted for {plan} before {other} was complete")

    def check_cordons(self) -> None:
        """As each table write lands: every node cordoned by us that holds no lease carries our mark, and
        every node whose lease (of a plan that cordons) is stored `applying` or `restarted` as cordoned by
        us is cordoned. (Within one round of Node patches a node that goes ahead is cordoned while the node
        whose slot it takes is uncordoned; a node cordoned by a pass cut short is marked, and taken by its
        next grant or given back.)"""
        for n, node in self.nodes.items():
            leases = [le for le in self.table.leases if le.node == n]
            if node.we_cordoned and not leases and not node.annotations.get(CORDON_ANNOTATION):
                raise InvariantBroken(f"{n} cordoned by us, with no lease and no mark")
            for le in leases:
                spec = self.plans[le.plan]["spec"] if le.plan in self.plans else {}
                cordons = spec.get("cordon") or spec.get("drain")
                if (le.active and le.cordoned_by_us and cordons and not node.unschedulable
                        and le.phase in (LeasePhase.APPLYING, LeasePhase.RESTARTED)):
                    raise InvariantBroken(f"{n} uncordoned while its lease is {le.phase.value}: {le}")

    def check_table(self) -> None:
        for name, p in self.plans.items():
            active = [le for le in self.table.leases if le.plan == name and le.active]
            if len(active) > max(int(p["spec"].get("concurrency", 1)), 1):
                raise InvariantBroken(f"plan {name} has {len(active)} active leases: {active}")
        active = [le for le in self.table.leases if le.active]
        plans = {le.plan for le in active}
        if len(plans) > 1 and any(self.plans.get(p, {}).get("spec", {}).get("exclusive") for p in plans):
            raise InvariantBroken(f"exclusive plan overlaps: {plans}")
        nodes = [le.node for le in active]
        if len(nodes) != len(set(nodes)):
            raise InvariantBroken(f"a node holds two active leases: {nodes}")

    # -- agents ------------------------------------------------------------------------------------
    def agent_poll(self, name: str, outcome: str = "ok") -> None:
        """One poll of the node's agent and what it does with the answer (outcome: ok|fail|silent)."""
        node = self.nodes[name]
        if outcome == "silent":
            return
        idle = node.agent_lease is None
        state = AgentState(node=name, agent_version="t", arch="amd64", k3s_version=node.version,
                           lease_id=node.agent_lease, phase=node.agent_phase,
                           prefetched=node.prefetched if idle else None)
        self.agents[name] = AgentView(state, self.now)
        ins = instruction_for(name, self.table, state, self.now)
        lease = ins.lease
        if ins.action is Action.IDLE:
            if node.agent_phase in (AgentPhase.DOWNLOADING, AgentPhase.STAGED, AgentPhase.ROLLED_BACK,
                                    AgentPhase.FAILED):
                node.agent_phase, node.agent_lease = AgentPhase.IDLE, None
            hint = ins.prefetch or self.prefetch.get(name)  # (the runtime adds the pass's hint)
            if hint is not None and node.agent_lease is None and outcome != "fail":
                node.prefetched = hint.artifact.sha256
            return
        assert lease is not None
        if node.agent_lease not in (None, lease.lease_id):
            if node.agent_phase in (AgentPhase.APPLYING, AgentPhase.RESTARTED, AgentPhase.ROLLING_BACK):
                return
            node.agent_phase, node.agent_lease = AgentPhase.IDLE, None
        node.prefetched = None  # a lease takes the binary over (or another one is downloaded)
        if ins.action is Action.STAGE:
            node.agent_lease = lease.lease_id
            if outcome == "fail":
                node.agent_phase = AgentPhase.FAILED
                self.report(name, lease.lease_id, AgentPhase.FAILED, "checksum mismatch")
            else:
                node.agent_phase = AgentPhase.STAGED
                self.report(name, lease.lease_id, AgentPhase.STAGED)
        elif ins.action is Action.APPLY:
            if node.agent_phase in (AgentPhase.STAGED, AgentPhase.IDLE, AgentPhase.DOWNLOADING):
                node.agent_lease = lease.lease_id
                node.previous_version = node.version
                if outcome == "fail":
                    node.agent_phase = AgentPhase.ROLLED_BACK
                    self.report(name, lease.lease_id, AgentPhase.ROLLED_BACK, "k3s did not start")
                    return
                # An unhealthy release comes back Ready on the OLD version (the lying job SUC trusts).
                node.version = lease.target_version if node.healthy_upgrades else node.version
                node.agent_phase = AgentPhase.RESTARTED
                self.report(name, lease.lease_id, AgentPhase.RESTARTED)
            elif node.agent_phase is AgentPhase.RESTARTED:
                self.report(name, lease.lease_id, AgentPhase.RESTARTED)
        elif ins.action is Action.ROLLBACK:
            if node.agent_phase in (AgentPhase.RESTARTED, AgentPhase.APPLYING, AgentPhase.ROLLING_BACK):
                node.version = node.previous_version or node.version
                node.ready = True
            node.agent_phase = AgentPhase.ROLLED_BACK
            self.report(name, lease.lease_id, AgentPhase.ROLLED_BACK, "rolled back on request")
        elif ins.action is Action.FINISH:
            if node.agent_phase is AgentPhase.RESTARTED:
                node.agent_phase, node.agent_lease = AgentPhase.IDLE, None

    def report(self, node: str, lease_id: str, phase: AgentPhase, error: str | None = None) -> None:
        try:
            report = Report(node=node, lease_id=lease_id, phase=phase, error=error)
            self.table = apply_report(self.table, report, self.now)
        except ReportError:
            if phase in (AgentPhase.STAGED, AgentPhase.FAILED, AgentPhase.ROLLED_BACK):
                self.nodes[node].agent_phase, self.nodes[node].agent_lease = AgentPhase.IDLE, None
        self.check_table()

    # -- external events ---------------------------------------------------------------------------
    def restart_coordinator(self) -> None:
        self.agents = {}
        self.drains = {}
        self.started_at = self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def complete(self, plan: str) -> bool:
        st = self.plans[plan].get("status") or {}
        conds = st.get("conditions", [])
        return any(c.get("type") == "Complete" and c.get("status") == "True" for c in conds)


def _selected(plan: dict[str, Any], labels: dict[str, str] | Any) -> bool:
    from coordinator.selection import DISABLED, matches

    name = plan["metadata"]["name"]
    chosen = bool(matches(plan["spec"].get("nodeSelector"), labels))
    return chosen and labels.get(plan_label(name)) != DISABLED


def seed_cluster(servers: int = 3, agents: int = 5, version: str = "v1.23.9+k3s1") -> list[SimNode]:
    out = [SimNode(f"server-{i}", f"uid-s{i}", {"node-role.kubernetes.io/master": "true"}, version)
           for i in range(servers)]
    out += [SimNode(f"agent-{i}", f"uid-a{i}", {}, version) for i in range(agents)]
    return out


def with_version(plan: dict[str, Any], version: str) -> dict[str, Any]:
    p = copy.deepcopy(plan)
    p["spec"]["version"] = version
    return p


def pool_plan(concurrency: int = 1) -> dict[str, Any]:
    """Plan `p`: the nodes labelled pool=a, to v1.24.6+k3s1, cordoned, `concurrency` at a time."""
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "uid-p"},
        "spec": {"concurrency": concurrency, "cordon": True, "version": "v1.24.6+k3s1",
                 "serviceAccountName": "system-upgrade", "upgrade": {"image": "rancher/k3s-upgrade"},
                 "nodeSelector": {"matchLabels": {"pool": "a"}}},
    }


__all__ = ["Sim", "SimNode", "pool_plan", "replace", "seed_cluster", "with_version"]
