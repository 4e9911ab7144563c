"""Which agents' long-polls the coordinator holds, and when the others should poll again. Pure.

A held long-poll costs the coordinator about 15 KiB of aiohttp request state (`bench.longpoll_memory`):
74 MiB at 5,000 agents, nearly all of them idle and most of them minutes from their turn. So the
coordinator holds the idle polls of at most `max_held` agents (`--max-held-polls`, default 1,000);
the polls of agents with a lease are always held and do not count.

- While fewer are held, an idle poll is held.
- Once `max_held` are, a poll is held only if its agent ranks among the first `max_held` (see `pace`):
  the nodes the plans may grant now, nearest their turn first (`plan_queues`, `turns`), then the other
  agents, those held now first. Held polls beyond `max_held` are answered then (`Pacing.evictions`),
  so the count stays at `max_held`.
- Any other poll is answered `idle` at once, with `poll_after_seconds`: for a node a plan may grant, the
  time until its turn is `max_held / 2` nodes away, as if every slot of the plans freed a node each
  second (faster than any upgrade, so the agent comes back early, not late); for any other node, its
  own moment of a `--poll-wait-max` cycle (`cycle_wait`), so it polls as often as a held poll ends, and
  a herd of agents (all reconnecting after a restart of the coordinator) spreads evenly over the cycle.
  Both are between 1 s and `--poll-wait-max`.

While more agents poll than `max_held` (agents seen within the heartbeat timeout), the engine grants only
agents whose polls it holds (`World.listening`): a lease granted to an agent that is away would keep its
slot idle until it came back. Up to `max_held` agents, every poll is held and any agent may be granted,
as before.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.engine import World
from coordinator.selection import candidate_order

MIN_POLL_AFTER = 1.0
"""Seconds: the soonest a paced agent is asked to come back."""


@dataclass(frozen=True)
class PlanQueue:
    """The nodes a plan may grant now, in the order it grants them."""

    name: str
    pending: Sequence[str]


def plan_queues(world: World, grantable: Mapping[str, Collection[str]]) -> list[PlanQueue]:
    """Each plan's queue: the nodes the engine found it may grant now (`Decision.grantable`: not done,
    not failed, Ready, within the skew rules, a binary for their arch), in SUC's candidate order.

    A node the plan cannot grant (NotReady, say) is left out, so it ranks with the agents no plan wants
    instead of taking a held poll from one the plan can grant. So is a plan that cannot grant now
    (waiting for its prepare plan, outside its window): its nodes are reached when it can, among the
    agents held then or as they come back."""
    queues = []
    for pi in world.plans:
        plan, h = pi.plan, pi.hash
        names = grantable.get(pi.name)
        if plan is None or h is None or not names:
            continue
        nodes = [n for n in world.nodes if n.name in names]
        queues.append(PlanQueue(pi.name, [n.name for n in candidate_order(nodes, plan.uid, h)]))
    return queues


def turns(queues: Sequence[PlanQueue]) -> dict[str, int]:
    """node -> how many nodes are ahead of it (the least over the plans whose queues it is in)."""
    ahead: dict[str, int] = {}
    for q in queues:
        for i, node in enumerate(q.pending):
            if i < ahead.get(node, i + 1):
                ahead[node] = i
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
    """node -> seconds: a plan may grant it, but it is not near enough its turn to be held."""
    unwanted: frozenset[str] = frozenset()
    """Nodes no plan may grant now: they come back at their moment of the cycle (`cycle_wait`)."""

    def poll_after(
        self, node: str, holding: int, max_held: int, now: float, max_after: float
    ) -> float | None:
        """None: hold this agent's idle poll; else the seconds after which it should poll again.

        `holding`: other agents whose idle polls are held now; `now`: a clock in seconds."""
        if node in self.held or holding < max_held:
            return None
        after = self.after.get(node)
        return after if after is not None else cycle_wait(node, now, max_after)

    def evictions(self, holding: Collection[str], max_held: int) -> list[str]:
        """The held polls to answer so that at most `max_held` stay, among those ranked beyond `held`:
        agents not ranked yet or that no plan may grant first, then the furthest from their turn."""
        over = len(holding) - max_held
        if over <= 0:
            return []
        beyond = set(holding).difference(self.held)
        after = self.after
        return heapq.nsmallest(over, beyond, key=lambda n: (n in after, -after.get(n, 0.0), n))


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
    `listening`: the nodes whose idle polls are held now (among the nodes no plan may grant now, they
    rank first);
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
