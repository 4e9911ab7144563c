"""Pacing agent long-polls beyond `--max-held-polls` (coordinator.pacing), and the engine granting the
agents it holds first.

Aspects covered:
- `turns`: a node's place is the least over the plans whose queues it is in;
- `pace`: up to the limit every idle agent is held; leased agents never count; beyond it the nearest
  turns rank first, then the unwanted agents, those held now first; the others come back when their
  turn is half the held polls away, between 1 s and the longest poll;
- `Pacing.poll_after`: any poll is held while there is room, a ranked one always; beyond, its time, or
  (unwanted, not ranked yet) its moment of the cycle: `cycle_wait` spreads 3,000 agents evenly;
- `Pacing.evictions`: the held polls to answer down to the limit, unwanted and unranked first;
- `plan_queues` holds what the engine says each plan may grant now (not done, failed or NotReady), in
  the plan's order;
- the engine grants only the listening agents when it is given them, in the plan's order among them,
  names the nodes each plan may grant, and those it would have given a free slot to;
- a model of a rollout of 3,000 agents behind a limit of 500 finishes, never holds more than 500 idle
  polls, stays within 10% of the same rollout holding every poll, and costs under 3 polls per node.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import random
from dataclasses import replace
from typing import Any

import pytest

from coordinator.engine import AgentView, TableWrite, decide
from coordinator.leasing import Lease, LeasePhase, LeaseTable
from coordinator.pacing import (
    MIN_POLL_AFTER,
    Pacing,
    PlanQueue,
    cycle_wait,
    pace,
    plan_queues,
    turns,
)
from coordinator.selection import candidate_order, plan_label
from wire.messages import AgentState

from .cluster_sim import ARTIFACTS, T0, Sim, SimNode

PLAN: dict[str, Any] = {
    "metadata": {"name": "p", "uid": "pu"},
    "spec": {"concurrency": 2, "version": "v1.30.2+k3s1", "serviceAccountName": "sa",
             "upgrade": {"image": "rancher/k3s-upgrade"}},
}


# ---- turns -------------------------------------------------------------------------------------------


def test_turns_least_place_over_plans() -> None:
    ahead = turns([PlanQueue("a", ["n1", "n2", "n3"]), PlanQueue("b", ["n3", "n4"]), PlanQueue("c", [])])
    assert ahead == {"n1": 0, "n2": 1, "n3": 0, "n4": 1}


# ---- pace / Pacing ---------------------------------------------------------------------------------------


def test_up_to_the_limit_every_idle_agent_is_held_and_leased_ones_do_not_count() -> None:
    p = pace(["a", "b", "c", "d"], {"a"}, {}, max_held=3, rate=1.0, max_after=30.0)
    assert p.held == {"b", "c", "d"} and not p.after and not p.unwanted
    assert p.poll_after("b", holding=5, max_held=3, now=0.0, max_after=30.0) is None


def test_beyond_the_limit_nearest_turns_held_then_unwanted_listening_first() -> None:
    agents = [f"n{i:02d}" for i in range(10)]
    ahead = {"n09": 0, "n08": 1, "n07": 2, "n06": 40, "n05": 400}
    p = pace(agents, {"n00"}, ahead, max_held=4, rate=10.0, max_after=30.0)
    assert p.held == {"n09", "n08", "n07", "n06"}
    # n05: back when its turn is max_held / 2 away: (400 - 2) / 10 s, within the longest poll.
    assert p.after == {"n05": pytest.approx(30.0)}
    assert p.unwanted == {"n01", "n02", "n03", "n04"}
    assert "n00" not in p.held | p.unwanted and "n00" not in p.after
    p2 = pace(agents, {"n00"}, {**ahead, "n05": 52}, max_held=4, rate=10.0, max_after=30.0)
    assert p2.after["n05"] == pytest.approx(5.0)
    p3 = pace(agents, {"n00"}, ahead, max_held=4, rate=1000.0, max_after=30.0)
    assert p3.after["n05"] == MIN_POLL_AFTER
    held = pace(agents, {"n00"}, {"n09": 0}, listening={"n04", "n03"}, max_held=4, rate=10.0, max_after=30.0)
    assert held.held == {"n09", "n04", "n03", "n01"}
    assert held.unwanted == {"n02", "n05", "n06", "n07", "n08"}


def test_poll_after_holds_while_there_is_room_and_the_ranked_ones_always() -> None:
    p = Pacing(held=frozenset({"h"}), after={"w": 7.5}, unwanted=frozenset({"u"}))
    for node in ("h", "w", "u", "new"):
        assert p.poll_after(node, holding=0, max_held=1, now=0.0, max_after=30.0) is None
    assert p.poll_after("h", holding=10, max_held=1, now=0.0, max_after=30.0) is None
    assert p.poll_after("w", holding=1, max_held=1, now=0.0, max_after=30.0) == 7.5
    for node in ("u", "new"):
        wait = cycle_wait(node, 3.0, 30.0)
        assert p.poll_after(node, holding=1, max_held=1, now=3.0, max_after=30.0) == wait


def test_cycle_wait_spreads_a_herd_evenly_over_the_cycle_and_keeps_each_agent_on_its_moment() -> None:
    waits = [cycle_wait(f"node-{i:05d}", 100.0, 30.0) for i in range(3000)]
    assert all(MIN_POLL_AFTER <= w <= 30.0 for w in waits)
    per_second = [sum(1 for w in waits if k <= w < k + 1) for k in range(2, 30)]
    assert min(per_second) > 60 and max(per_second) < 150  # 100 a second on average
    w = cycle_wait("node-00042", 100.0, 30.0)
    assert cycle_wait("node-00042", 100.0 + w, 30.0) in (pytest.approx(30.0), pytest.approx(0.0, abs=1.0))
    assert cycle_wait("x", 5.0, 0.0) == MIN_POLL_AFTER


def test_evictions_answer_the_lowest_ranked_held_polls_down_to_the_limit() -> None:
    p = Pacing(held=frozenset({"a", "b"}), after={"far": 20.0, "near": 2.0}, unwanted=frozenset({"u"}))
    assert p.evictions(["a", "b", "far", "near"], max_held=4) == []
    assert p.evictions(["a", "b", "far", "near", "u", "new"], max_held=3) == ["new", "u", "far"]
    assert p.evictions(["a", "b", "far", "near"], max_held=3) == ["far"]


# ---- the engine's order --------------------------------------------------------------------------------


def sim(n: int) -> Sim:
    s = Sim([SimNode(f"n{i}", f"u{i}", {}, "v1.30.1+k3s1") for i in range(n)], [copy.deepcopy(PLAN)])
    for name in s.nodes:
        s.agents[name] = AgentView(
            AgentState(node=name, agent_version="t", arch="amd64", k3s_version="v1.30.1+k3s1"), T0
        )
    return s


def granted(world: Any) -> list[str]:
    tables = [w.table for w in decide(world).writes if isinstance(w, TableWrite)]
    return sorted(le.node for le in tables[-1].leases if le.phase is LeasePhase.GRANTED) if tables else []


def test_engine_grants_only_listening_agents_when_given_them() -> None:
    s = sim(8)
    world = s.world()
    order = [n.name for n in candidate_order(world.nodes, "pu", world.plans[0].hash or "")]
    plain = decide(world)
    assert granted(world) == sorted(order[:2])  # nobody paced: the plan's order, as SUC
    assert not plain.grantable and not plain.waiting_for
    listening = frozenset(order[-3:])
    two = decide(replace(world, listening=listening))
    assert granted(replace(world, listening=listening)) == sorted(order[-3:-1])
    assert two.grantable == {"p": frozenset(order)} and not two.waiting_for  # both slots given
    one = replace(world, listening=frozenset(order[-1:]))
    assert granted(one) == [order[-1]]
    assert decide(one).waiting_for == frozenset(order[:-1])  # a slot left free: any of them would do
    nobody = replace(world, listening=frozenset())
    assert granted(nobody) == [] and decide(nobody).waiting_for == frozenset(order)


def test_plan_queues_hold_what_the_plan_may_grant_now_in_its_order() -> None:
    s = sim(7)
    h = s.world().plans[0].hash or ""
    done, failed, not_ready = "n0", "n1", "n2"
    s.nodes[done].labels[plan_label("p")] = h
    s.nodes[not_ready].ready = False
    s.table = LeaseTable(leases=(
        Lease(lease_id="x", plan="p", node=failed, plan_hash=h, target_version="v1.30.2+k3s1",
              artifact=ARTIFACTS["amd64"], phase=LeasePhase.FAILED, granted_at=T0, updated_at=T0),
    ))
    s.plans["p"]["metadata"]["annotations"] = {"upgrade.k3s.io/failure-budget": "1"}
    world = replace(s.world(), listening=frozenset())
    decision = decide(world)
    (queue,) = plan_queues(world, decision.grantable)
    order = [n.name for n in candidate_order(world.nodes, "pu", h) if n.name not in (done, failed, not_ready)]
    assert queue == PlanQueue("p", order) and len(order) == 4
    # Not given the listening agents (not paced), the engine names no queue: nothing is ranked.
    assert plan_queues(s.world(), decide(s.world()).grantable) == []


# ---- a simulated rollout -------------------------------------------------------------------------------


def simulate(nodes: int, concurrency: int, max_held: int, seed: int = 7) -> dict[str, float]:
    """A model of the policy, not the runtime (test_polls_paced_beyond_the_limit runs that): agents that
    poll as agent.loop does, a plan created 2 s in, each node's work 1 s; `pace`, `Pacing.poll_after`
    and `Pacing.evictions` as the runtime calls them (ranked once a second; while paced, only held agents
    granted). Time in 50 ms steps. Returns the rollout's length, the most idle polls held at once, and the
    polls per node."""
    rng = random.Random(seed)
    names = [f"node-{i:05d}" for i in range(nodes)]
    key = {n: hashlib.sha256(n.encode()).hexdigest() for n in names}
    wakes = [(rng.uniform(0, 1), n) for n in names]  # (when it polls next, node)
    heapq.heapify(wakes)
    holding: set[str] = set()
    lease: dict[str, float | None] = {}  # node -> when its work ends (None: granted, not picked up)
    done: set[str] = set()
    pacing, paced_at = Pacing(), -1.0
    polls = most_held = 0
    start, t, dt, max_after = 2.0, 0.0, 0.05, 30.0

    def poll(node: str) -> None:
        nonlocal polls
        polls += 1
        if node in lease:
            lease[node] = t + 1.0
            return
        after = pacing.poll_after(node, len(holding), max_held, t, max_after)
        if after is None:
            holding.add(node)
            for other in pacing.evictions(holding, max_held):  # answered: room for one ranked within
                holding.discard(other)
                poll(other)
        else:
            heapq.heappush(wakes, (t + after, node))

    while len(done) < nodes and t < 300:
        while wakes and wakes[0][0] <= t:
            poll(heapq.heappop(wakes)[1])
        for node, end in list(lease.items()):
            if end is not None and end <= t:
                del lease[node]
                done.add(node)
        if t >= start:
            slots = concurrency - len(lease)
            paced = len(names) > max_held  # then only the agents held may be granted (World.listening)
            pool = [n for n in names if n not in done and n not in lease and (not paced or n in holding)]
            for node in heapq.nsmallest(max(slots, 0), pool, key=key.__getitem__):
                if node in holding:
                    holding.discard(node)
                    lease[node] = t + 1.0
                else:
                    lease[node] = None
        if t - paced_at >= 1.0:
            paced_at = t
            pending = [n for n in names if n not in done]
            queue = sorted(pending, key=key.__getitem__) if t >= start else []
            rate = float(concurrency)
            pacing = pace(names, set(lease), turns([PlanQueue("p", queue)]), listening=holding,
                          max_held=max_held, rate=rate, max_after=max_after)
            for node in pacing.evictions(holding, max_held):
                holding.discard(node)
                poll(node)
        most_held = max(most_held, len(holding))
        t += dt
    return {"took": t - start, "done": len(done), "most_held": most_held, "polls_per_node": polls / nodes}


def test_simulated_rollout_behind_the_limit_keeps_pace_with_holding_every_poll() -> None:
    paced = simulate(3000, 100, max_held=500)
    every = simulate(3000, 100, max_held=3000)
    assert paced["done"] == every["done"] == 3000
    assert paced["most_held"] <= 500 < every["most_held"]
    assert paced["took"] <= every["took"] * 1.1, (paced, every)
    assert paced["polls_per_node"] < 3, paced
