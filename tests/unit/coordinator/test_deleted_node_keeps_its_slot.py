"""A Node deleted during its upgrade keeps its slot until it registers again; before the cordon it does not.

Aspects: a lease granted or staged (nothing changed on the node) is reclaimed when its Node is deleted;
one past the cordon keeps the plan's slot while the Node is gone (no other node is disrupted in its
place), and when the kubelet registers the node again under its name its upgrade goes on to the label;
a node that does not come back within the verify timeout frees the slot, with a Warning Event on the Plan.
"""

from __future__ import annotations

from coordinator.leasing import LeasePhase

from .cluster_sim import Sim, SimNode, pool_plan

LABEL = "plan.upgrade.cattle.io/p"


def nodes() -> list[SimNode]:
    return [SimNode(f"n{i}", f"uid-{i}", {"pool": "a"}, "v1.23.9+k3s1") for i in range(2)]


def step(sim: Sim, seconds: float = 1) -> None:
    sim.step()
    for name in sim.nodes:
        sim.agent_poll(name)
    sim.tick(seconds)


def first_lease_at(sim: Sim, phases: set[LeasePhase]) -> tuple[str, SimNode]:
    for _ in range(20):
        active = [le for le in sim.table.leases if le.active]
        if active and active[0].phase in phases:
            return active[0].node, sim.nodes[active[0].node]
        step(sim)
    raise AssertionError(f"no lease reached {phases}")


def test_deleted_before_the_cordon_is_reclaimed() -> None:
    sim = Sim(nodes(), [pool_plan()])
    for name in sim.nodes:
        sim.agent_poll(name)
    sim.step()  # granted
    (lease,) = [le for le in sim.table.leases if le.active]
    gone = sim.nodes.pop(lease.node)
    step(sim)
    assert sim.table.by_id(lease.lease_id) is None
    assert [le.node for le in sim.table.leases if le.active] == [n for n in ("n0", "n1") if n != gone.name]


def test_deleted_after_the_cordon_holds_the_slot_and_goes_on_when_back() -> None:
    sim = Sim(nodes(), [pool_plan()])
    name, node = first_lease_at(sim, {LeasePhase.APPLYING, LeasePhase.RESTARTED})
    del sim.nodes[name]
    for _ in range(5):
        step(sim)
    assert [le.node for le in sim.table.leases if le.active] == [name]
    sim.nodes[name] = SimNode(name, "uid-again", {"pool": "a"}, node.version, agent_phase=node.agent_phase,
                              agent_lease=node.agent_lease, previous_version=node.previous_version)
    for _ in range(10):
        step(sim)
        if sim.nodes[name].labels.get(LABEL):
            break
    assert sim.nodes[name].labels.get(LABEL) and sim.nodes[name].version == "v1.24.6+k3s1"
    assert [g for g in sim.grants if g[1] == name] == [("p", name)]  # upgraded once, not granted again


def test_not_back_within_the_verify_timeout_frees_the_slot() -> None:
    sim = Sim(nodes(), [pool_plan()])
    name, _ = first_lease_at(sim, {LeasePhase.APPLYING, LeasePhase.RESTARTED})
    del sim.nodes[name]
    sim.tick(sim.settings.verify + 1)
    step(sim)  # reclaimed
    step(sim)  # granted to the other node
    other = "n1" if name == "n0" else "n0"
    assert [le.node for le in sim.table.leases if le.active] == [other]
    warned = [e for e in sim.events if e.reason == "UpgradeFailed" and "deleted while" in e.message]
    assert len(warned) == 1 and warned[0].kind == "Plan"
