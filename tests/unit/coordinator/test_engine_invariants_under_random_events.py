"""Property test: the engine keeps its invariants under random cluster histories.

Hypothesis drives `decide` + `apply_report` through random sequences of: node Ready flips, kubelet
version changes, node deletions, agent polls (upgrade works, fails, or the agent is silent), failed
drains, plan edits (new version), clock advances, coordinator restarts (agents forgotten, table kept),
decisions of which only a random prefix of writes lands (a crash mid-way), and admin retries.
The simulator (cluster_sim) checks on every write:
  * per plan, active leases never exceed `concurrency`; a node never holds two active leases;
  * no node of a plan with prepare -> X gets a lease before X is complete at its current hash;
  * a node is labelled only after it was seen Ready on the target kubelet version (also when a bad
    release restarts "successfully" on the old version);
  * a node is uncordoned only if we cordoned it;
  * per plan, never more nodes cordoned by us than its concurrency, not even within one round of patches;
  * an exclusive plan never overlaps another plan.
After the random history, a calm period (everything healthy) lets every plan complete.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinator.engine import RETRY_ANNOTATION, DrainOutcome, EngineSettings
from coordinator.leasing import LeasePhase

from .cluster_sim import Sim, SimNode

VERSIONS = ["v1.24.6+k3s1", "v1.24.7+k3s1", "v1.25.0+k3s1"]


def plans() -> list[dict[str, Any]]:
    base = {"serviceAccountName": "system-upgrade", "upgrade": {"image": "rancher/k3s-upgrade"}}
    return [
        {"metadata": {"name": "server-plan", "uid": "u1"},
         "spec": {**base, "concurrency": 1, "cordon": True, "version": VERSIONS[0],
                  "nodeSelector": {"matchExpressions": [
                      {"key": "node-role.kubernetes.io/master", "operator": "In", "values": ["true"]}]}}},
        {"metadata": {"name": "agent-plan", "uid": "u2"},
         "spec": {**base, "concurrency": 2, "drain": {"force": True}, "version": VERSIONS[0],
                  "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]},
                  "nodeSelector": {"matchExpressions": [
                      {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}]}}},
        {"metadata": {"name": "extra-plan", "uid": "u3"},
         "spec": {**base, "concurrency": 3, "exclusive": True, "version": VERSIONS[0],
                  "nodeSelector": {"matchLabels": {"extra": "true"}}}},
    ]


def nodes() -> list[SimNode]:
    out = [SimNode(f"s{i}", f"us{i}", {"node-role.kubernetes.io/master": "true"}, "v1.24.1+k3s1")
           for i in range(2)]
    out += [SimNode(f"a{i}", f"ua{i}", {"extra": "true"} if i == 0 else {}, "v1.24.1+k3s1") for i in range(3)]
    return out


NODE_NAMES = ["s0", "s1", "a0", "a1", "a2"]
node_name = st.sampled_from(NODE_NAMES)
rounds = st.tuples(st.just("round"), st.sampled_from(["ok", "ok", "fail", "silent"]))
action = st.one_of(
    rounds,
    rounds,
    rounds,
    st.tuples(st.just("step"), st.none() | st.integers(0, 6)),
    st.tuples(st.just("poll"), node_name, st.sampled_from(["ok", "ok", "ok", "fail", "silent"])),
    st.tuples(st.just("ready"), node_name, st.booleans()),
    st.tuples(st.just("kubelet"), node_name, st.sampled_from(VERSIONS)),
    st.tuples(st.just("delete"), node_name),
    st.tuples(st.just("edit"), st.sampled_from(["server-plan", "agent-plan", "extra-plan"]),
              st.sampled_from(VERSIONS)),
    st.tuples(st.just("tick"), st.integers(1, 90)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("drain_fails")),
    st.tuples(st.just("retry"), node_name),
    st.tuples(st.just("admin_cordon"), node_name, st.booleans()),
    st.tuples(st.just("healthy"), node_name, st.booleans()),
)


def play(sim: Sim, act: tuple[Any, ...]) -> None:
    kind = act[0]
    if kind == "round":
        sim.step()
        for name in list(sim.nodes):
            sim.agent_poll(name, act[1])
    elif kind == "step":
        sim.step(act[1])
    elif kind == "poll" and act[1] in sim.nodes:
        sim.agent_poll(act[1], act[2])
    elif kind == "ready" and act[1] in sim.nodes:
        sim.nodes[act[1]].ready = act[2]
    elif kind == "kubelet" and act[1] in sim.nodes:
        sim.nodes[act[1]].version = act[2]
    elif kind == "delete":
        sim.nodes.pop(act[1], None)
        sim.agents.pop(act[1], None)
    elif kind == "edit":
        sim.plans[act[1]]["spec"]["version"] = act[2]
    elif kind == "tick":
        sim.tick(act[1])
    elif kind == "restart":
        sim.restart_coordinator()
    elif kind == "drain_fails":
        for le in sim.table.leases:
            if le.phase is LeasePhase.DRAINING:
                sim.drains[le.lease_id] = DrainOutcome(ok=False, message="PDB blocks eviction")
    elif kind == "retry" and act[1] in sim.nodes:
        sim.nodes[act[1]].annotations[RETRY_ANNOTATION] = "now"
    elif kind == "healthy" and act[1] in sim.nodes:
        sim.nodes[act[1]].healthy_upgrades = act[2]
    elif kind == "admin_cordon" and act[1] in sim.nodes:
        node = sim.nodes[act[1]]
        if not any(le.node == node.name for le in sim.table.leases) and not node.we_cordoned:
            node.unschedulable = act[2]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, max_size=80), st.sets(node_name))
@example([("round", "ok")] * 4, {"s0"})
def test_invariants_hold_and_rollout_finishes(actions: list[tuple[Any, ...]], bad: set[str]) -> None:
    sim = Sim(nodes(), plans(), EngineSettings(agent_heartbeat=30, verify=60))
    for name in bad:  # their upgrades come back Ready on the old version until the calm period
        sim.nodes[name].healthy_upgrades = False
    for act in actions:
        play(sim, act)
    # Calm period: every plan targets the newest version (no downgrade refused), everything healthy and
    # Ready, admins clear failures; every plan must complete.
    for plan in sim.plans.values():
        plan["spec"]["version"] = VERSIONS[-1]
    for node in sim.nodes.values():
        node.ready = True
        node.healthy_upgrades = True
    for _ in range(200):
        for node in sim.nodes.values():  # the admin clears every failure (e.g. one during the calm period)
            if any(le.node == node.name and not le.active for le in sim.table.leases):
                node.annotations[RETRY_ANNOTATION] = "now"
        sim.step()
        for name in list(sim.nodes):
            sim.agent_poll(name)
            sim.nodes[name].ready = True
        sim.tick(5)
        if all(sim.complete(p) for p in sim.plans):
            break
    else:
        raise AssertionError(f"plans did not complete: {[sim.plans[p].get('status') for p in sim.plans]}")
    assert not any(n.we_cordoned for n in sim.nodes.values()), "a node we cordoned was left cordoned"
