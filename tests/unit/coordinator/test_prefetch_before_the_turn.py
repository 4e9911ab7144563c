"""Prefetch: the nodes next in a plan's order download the binary before their turn.

Aspects: a decision names the `concurrency` x `prefetch_waves` nodes that follow the ones it grants, in
the plan's candidate order, with the plan's binary for their arch (none with `prefetch_waves` 0, none
for a plan that may not grant now); a node whose agent says it holds that binary is granted `staged`
and, in the same pass, cordoned and told `apply` (it is never told `stage`); one holding another
binary, or none, is granted as before and told `stage`; a plan waiting for its prepare plan names its
first nodes (skew rules aside: a download changes nothing), which go ahead at once when it may grant; the
agent of a node granted from its prefetch is
told `idle` with the binary until the go-ahead, and `stage` if it lost the binary; a poll is answered at
once with a binary to prefetch unless the agent holds it or says why it could not.
"""

from __future__ import annotations

import copy
from typing import Any

from coordinator.engine import EngineSettings
from coordinator.leasing import LeasePhase, instruction_for
from coordinator.reconciler import _already_doing
from coordinator.selection import candidate_order
from wire.messages import Action, AgentPhase, AgentState, Artifact, Instruction, Prefetch

from .cluster_sim import ARTIFACTS, Sim, SimNode, pool_plan, seed_cluster
from .test_seed_plans_complete_servers_first import seed_plans

OTHER = "f" * 64


def sim(nodes: int = 7, concurrency: int = 2, waves: int = 1, plan: dict[str, Any] | None = None) -> Sim:
    s = Sim([SimNode(f"n{i}", f"uid-{i}", {"pool": "a"}, "v1.23.9+k3s1") for i in range(nodes)],
            [plan or pool_plan(concurrency)],
            EngineSettings(agent_heartbeat=30, verify=60, prefetch_waves=waves))
    for name in s.nodes:
        s.agent_poll(name)  # alive: grants and hints go to agents that polled lately
    return s


def order(s: Sim) -> list[str]:
    (pi,) = s.inputs()
    return [n.name for n in candidate_order(list(s.views.values()), "uid-p", pi.hash)]


def test_the_next_waves_are_named_in_the_plans_order() -> None:
    for waves in (0, 1, 2):
        s = sim(waves=waves)
        decision = s.step()
        granted = [le.node for le in s.table.leases]
        expected = order(s)
        assert sorted(granted) == sorted(expected[:2])
        assert list(decision.prefetch) == expected[2:2 + 2 * waves]
        for hint in decision.prefetch.values():
            assert hint == Prefetch(artifact=ARTIFACTS["amd64"], target_version="v1.24.6+k3s1")


def test_a_plan_that_may_not_grant_names_nothing() -> None:
    closed = copy.deepcopy(pool_plan(2))
    closed["spec"]["window"] = {"days": ["sunday"], "startTime": "01:00", "endTime": "02:00",
                                "timeZone": "UTC"}
    s = sim(plan=closed)  # T0 is a Thursday noon
    decision = s.step()
    assert s.table.leases == () and decision.prefetch == {}


def test_a_node_holding_the_binary_is_cordoned_and_told_apply_in_the_pass_that_grants_it() -> None:
    s = sim(nodes=3, concurrency=1)
    s.step()
    first, second = order(s)[:2]
    assert s.table.active_for_node(first).phase is LeasePhase.GRANTED  # type: ignore[union-attr]
    for name in s.nodes:
        s.agent_poll(name)  # the first stages; the second is told to prefetch
    assert s.nodes[second].prefetched == ARTIFACTS["amd64"].sha256
    told: dict[str, set[Action]] = {n: set() for n in s.nodes}
    for _ in range(10):
        s.step()
        for name in s.nodes:
            state = AgentState(node=name, agent_version="t", arch="amd64", lease_id=s.nodes[name].agent_lease,
                               phase=s.nodes[name].agent_phase, prefetched=s.nodes[name].prefetched)
            told[name].add(instruction_for(name, s.table, state, s.now).action)
            s.agent_poll(name)
        s.tick(1)
        lease = s.table.active_for_node(second)
        if lease is not None:
            # Granted in the pass that released the first node, and already past the cordon.
            assert lease.phase in (LeasePhase.APPLYING, LeasePhase.RESTARTED) and lease.cordoned_by_us
            assert "plan.upgrade.cattle.io/p" in s.nodes[first].labels
            break
    else:
        raise AssertionError("the second node was never granted")
    assert Action.STAGE not in told[second]  # (the first node, granted before any prefetch, was)


def test_a_node_holding_another_binary_is_told_to_stage() -> None:
    s = sim(nodes=2, concurrency=2)
    s.nodes["n0"].prefetched = OTHER
    s.agent_poll("n0")
    s.step()
    lease = s.table.active_for_node("n0")
    assert lease is not None and lease.phase is LeasePhase.GRANTED
    state = AgentState(node="n0", agent_version="t", arch="amd64", prefetched=OTHER)
    assert instruction_for("n0", s.table, state, s.now).action is Action.STAGE


def test_the_agent_of_a_node_granted_from_its_prefetch_waits_idle_with_the_binary() -> None:
    s = sim(nodes=1, concurrency=1)
    s.step()
    (lease,) = s.table.leases
    staged = s.table.put(lease.__class__(**{**lease.__dict__, "phase": LeasePhase.STAGED}))
    draining = s.table.put(lease.__class__(**{**lease.__dict__, "phase": LeasePhase.DRAINING}))
    holds = AgentState(node="n0", agent_version="t", arch="amd64", prefetched=lease.artifact.sha256)
    for table in (staged, draining):
        ins = instruction_for("n0", table, holds, s.now)
        assert ins.action is Action.IDLE and ins.lease is None
        assert ins.prefetch == Prefetch(artifact=lease.artifact, target_version=lease.target_version)
        assert _already_doing(holds, ins)  # held until the go-ahead
        lost = AgentState(node="n0", agent_version="t", arch="amd64")
        assert instruction_for("n0", table, lost, s.now).action is Action.STAGE


def test_a_poll_naming_a_binary_is_answered_unless_the_agent_holds_it_or_could_not() -> None:
    art = Artifact(url="http://rel/amd64", sha256="a" * 64, name="k3s")
    ins = Instruction(action=Action.IDLE, prefetch=Prefetch(artifact=art, target_version="v1.24.6+k3s1"))
    fresh = AgentState(node="n0", agent_version="t", arch="amd64")
    assert not _already_doing(fresh, ins)
    assert _already_doing(fresh.model_copy(update={"prefetched": "a" * 64}), ins)
    assert not _already_doing(fresh.model_copy(update={"prefetched": OTHER}), ins)
    assert _already_doing(fresh.model_copy(update={"error": "prefetching k3s failed: 404"}), ins)
    # Without a binary to prefetch, one held or not changes nothing.
    plain = Instruction(action=Action.IDLE)
    assert _already_doing(fresh, plain)
    assert _already_doing(fresh.model_copy(update={"prefetched": OTHER}), plain)
    busy = AgentState(node="n0", agent_version="t", arch="amd64", lease_id="x", phase=AgentPhase.APPLYING)
    assert not _already_doing(busy, ins)


def test_a_plan_waiting_for_its_prepare_plan_names_its_first_nodes() -> None:
    plans = seed_plans()
    s = Sim(seed_cluster(servers=3, agents=5), plans)  # agent-plan waits for server-plan
    (concurrency,) = [p["spec"]["concurrency"] for p in plans if p["metadata"]["name"] == "agent-plan"]
    agents = {n for n in s.nodes if n.startswith("agent-")}
    for name in s.nodes:
        s.agent_poll(name)
    named = set(s.step().prefetch)
    assert len(named & agents) == concurrency  # its first wave, while the servers are upgraded
    first_wave: set[str] = set()
    for _ in range(60):
        before = {le.node for le in s.table.leases if le.active}
        s.step()
        granted = {le.node for le in s.table.leases if le.active and le.plan == "agent-plan"} - before
        if granted:
            first_wave = granted
            for name in granted:  # they held the binary: cordoned and told apply in that pass
                lease = s.table.active_for_node(name)
                assert lease is not None and lease.phase is LeasePhase.APPLYING, lease
            break
        for name in s.nodes:
            s.agent_poll(name)
        s.tick(1)
    assert first_wave == named & agents
