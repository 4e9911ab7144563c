"""Which agents' long-polls the coordinator holds, and when the others should poll again. Pure.

A held long-poll costs the coordinator about 15 KiB of aiohttp request state (`bench.longpoll_memory`):
74 MiB at 5,000 agents, nearly all of them idle and most of them minutes from their turn. So the
coordinator holds the idle polls of at most `max_held` agents (`--max-held-polls`, default 1,000);
the polls of agents with a lease are always held and do not count.

- While fewer are held, an idle poll is held.
- Once `max_held` are, a poll is held only if its agent ranks among the first `max_held` (see `pace`):
  nearest its turn first, in the order the plans grant (`turns`), then the agents no plan wants. A held
  poll ranked beyond is answered then (`Pacing.evictions`), so the count stays at `max_held`.
- Any other poll is answered `idle` at once, with `poll_after_seconds`: for a node a plan wants, the time
  until its turn is `max_held / 2` nodes away, as if each slot of its plans freed a node every second
  (faster than any upgrade, so the agent comes back early, not late); for a node no plan wants, its own
  moment of a `--poll-wait-max` cycle (`cycle_wait`), so it polls as often as a held poll ends, and a
  herd of agents (all reconnecting after a restart of the coordinator) spreads evenly over the cycle.
  Both are between 1 s and `--poll-wait-max`.

With more agents than `max_held`, the engine grants only agents whose polls it holds
(`World.listening`): a lease granted to an agent that is away would keep its slot idle until it came
back. Up to `max_held` agents, every poll is held and any agent may be granted, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.engine import World
from coordinator.selection import candidate_order, plan_label, selected

MIN_POLL_AFTER = 1.0
"""Seconds: the soonest a paced agent is asked to come back."""


@dataclass(frozen=True)
class PlanQueue:
    """One plan's nodes still to upgrade, in the order the plan will grant them."""

    name: str
    pending: Sequence[str]
    prepare: str | None = None
    """The plan that must complete first (the `prepare` of SUC's Plan)."""


def plan_queues(world: World) -> list[PlanQueue]:
    """Each resolved plan's nodes still to upgrade (done and failed ones left out), in SUC's candidate
    order (the engine's, among the agents it may grant)."""
    queues = []
    for pi in world.plans:
        plan, h = pi.plan, pi.hash
        if plan is None or h is None:
            continue
        sel = plan.spec.node_selector
        raw = sel.model_dump(by_alias=True, exclude_none=True) if sel else None
        label = plan_label(pi.name)
        failed = {le.node for le in world.table.failures_for_plan(pi.name) if le.plan_hash == h}
        chosen = selected(raw, pi.name, world.nodes)
        todo = [n for n in chosen if n.labels.get(label) != h and n.name not in failed]
        order = [n.name for n in candidate_order(todo, plan.uid, h)]
        queues.append(PlanQueue(pi.name, order, plan.prepare_plan))
    return queues


def turns(queues: Sequence[PlanQueue]) -> dict[str, int]:
    """node -> how many nodes are to be granted before it (the least over the plans that want it)."""
    by_name = {q.name: q for q in queues}
    offsets: dict[str, int] = {}

    def offset(q: PlanQueue, seen: frozenset[str]) -> int:
        if q.name not in offsets:
            first = by_name.get(q.prepare) if q.prepare else None
            if first is None or first.name in seen or not first.pending:
                offsets[q.name] = 0  # no prepare plan, a missing or complete one, or a cycle
            else:
                offsets[q.name] = offset(first, seen | {q.name}) + len(first.pending)
        return offsets[q.name]

    ahead: dict[str, int] = {}
    for q in queues:
        base = offset(q, frozenset())
        for i, node in enumerate(q.pending):
            n = base + i
            if n < ahead.get(node, n + 1):
                ahead[node] = n
    return ahead


def cycle_wait(node: str, now: float, cycle: float) -> float:
    """Seconds from `now` to the node's own moment of a `cycle`-long period (a stable hash of its name),
    at least `MIN_POLL_AFTER`."""
    phase = int.from_bytes(hashlib.blake2b(node.encode(), digest_size=4).digest()) / 2**32 * cycle
    return max((phase - now) % cycle if cycle > 0 else 0.0, MIN_POLL_AFTER)


@dataclass(frozen=True)
class Pacing:
    """Whose idle long-polls to hold (`held`), and when the others come back."""

    held: frozenset[str] = frozenset()
    after: Mapping[str, float] = field(default_factory=dict)
    """node -> seconds: wanted by a plan, but not near enough its turn to be held."""
    unwanted: frozenset[str] = frozenset()
    """Nodes no plan wants now: they come back at their moment of the cycle (`cycle_wait`)."""

    def poll_after(
        self, node: str, holding: int, max_held: int, now: float, max_after: float
    ) -> float | None:
        """None: hold this agent's idle poll; else the seconds after which it should poll again.

        `holding`: idle polls held now (this one not counted); `now`: a clock in seconds."""
        if node in self.held or holding < max_held:
            return None
        after = self.after.get(node)
        return after if after is not None else cycle_wait(node, now, max_after)

    def evictions(self, holding: Collection[str], max_held: int) -> list[str]:
        """The held polls to answer so that at most `max_held` stay: those ranked beyond `held`, the
        agents no plan wants (or not ranked yet) first, then the furthest from their turn."""
        over = len(holding) - max_held
        if over <= 0:
            return []
        beyond = [n for n in holding if n not in self.held]
        beyond.sort(key=lambda n: (n in self.after, -self.after.get(n, 0.0), n))
        return beyond[:over]


def pace(
    agents: Iterable[str],
    leased: Collection[str],
    ahead: Mapping[str, int],
    *,
    listening: Collection[str] = frozenset(),
    max_held: int,
    rate: float,
    max_after: float,
) -> Pacing:
    """Rank the agents (see the module's docstring) and hold the first `max_held` idle ones.

    `agents`: the nodes whose agents poll; `leased`: the nodes holding a lease; `ahead`: see `turns`;
    `listening`: the nodes whose idle polls are held now (among those no plan wants, they rank first);
    `rate`: nodes granted per second (how fast the turns advance)."""
    idle = [n for n in agents if n not in leased]
    if len(idle) <= max_held:
        return Pacing(held=frozenset(idle))
    idle.sort(key=lambda n: (0, ahead[n], n) if n in ahead else (1, n not in listening, n))
    after: dict[str, float] = {}
    unwanted = []
    for node in idle[max_held:]:
        n = ahead.get(node)
        if n is None:
            unwanted.append(node)
        else:
            due = (n - max_held / 2) / max(rate, 1e-9)
            after[node] = min(max(due, MIN_POLL_AFTER), max_after)
    return Pacing(held=frozenset(idle[:max_held]), after=after, unwanted=frozenset(unwanted))
