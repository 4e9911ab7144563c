"""A node just released at a plan's hash is not granted again while its Node cache lacks the label.

Aspects: the pass after a release may start before the watch brings the echo of the label patch; the
released lease, kept in `World.labelled` once stored, then keeps the node out of the candidates (no second
cordon, drain and restart for the same hash) for `LABEL_ECHO_GRACE` after its verification; once that is
over, a node released at this hash whose label is missing had the label removed by a person and is
upgraded again, as with SUC; a lease of another plan or another hash does not hold a node back; an entry
goes once the view shows the label, the node is gone, or the grace is over.
"""

from __future__ import annotations

from datetime import timedelta

from coordinator.engine import LABEL_ECHO_GRACE, NodeView, label_on_its_way, still_labelling
from coordinator.leasing import LeasePhase

from .cluster_sim import Sim, SimNode, pool_plan

LABEL = "plan.upgrade.cattle.io/p"


def released_one() -> Sim:
    """n0 upgraded and released; its label has not come back through the watch yet."""
    sim = Sim([SimNode("n0", "uid-0", {"pool": "a"}, "v1.23.9+k3s1")], [pool_plan()])
    for _ in range(20):
        sim.step()
        sim.agent_poll("n0")
        sim.tick(1)
        if "n0" in sim.table.finished:
            break
    assert "n0" in sim.table.finished and sim.nodes["n0"].labels.get(LABEL)
    del sim.nodes["n0"].labels[LABEL]  # the cache as it was before the patch's echo
    return sim


def test_not_granted_again_before_the_echo() -> None:
    sim = released_one()
    for _ in range(5):
        sim.step()
        sim.agent_poll("n0")
        sim.tick(1)
    assert [le for le in sim.table.leases if le.active] == []
    assert sim.grants == [("p", "n0")]


def test_granted_again_once_a_person_removed_the_label() -> None:
    sim = released_one()
    sim.tick(LABEL_ECHO_GRACE.total_seconds() + 1)
    sim.agent_poll("n0")
    sim.step()
    assert sim.grants == [("p", "n0"), ("p", "n0")]
    lease = sim.table.active_for_node("n0")
    assert lease is not None and lease.phase is LeasePhase.GRANTED


def test_only_a_record_of_this_plan_and_hash_holds_a_node_back() -> None:
    sim = released_one()
    done = sim.table.finished["n0"]
    now = done.verified_at or done.updated_at
    assert label_on_its_way(done, "p", done.plan_hash, now)
    assert not label_on_its_way(done, "other", done.plan_hash, now)
    assert not label_on_its_way(done, "p", "another-hash", now)
    assert not label_on_its_way(done, "p", done.plan_hash, now + LABEL_ECHO_GRACE)
    assert not label_on_its_way(None, "p", done.plan_hash, now - timedelta(seconds=1))


def test_an_entry_goes_with_the_echo_the_node_or_the_grace() -> None:
    sim = released_one()
    done = sim.labelled["n0"]
    now = done.verified_at or done.updated_at
    bare = NodeView(name="n0", uid="uid-0", labels={"pool": "a"})
    shown = NodeView(name="n0", uid="uid-0", labels={"pool": "a", LABEL: done.plan_hash})
    assert still_labelling({"n0": done}, {"n0": bare}, now) == {"n0": done}
    assert still_labelling({"n0": done}, {"n0": shown}, now) == {}
    assert still_labelling({"n0": done}, {}, now) == {}
    assert still_labelling({"n0": done}, {"n0": bare}, now + LABEL_ECHO_GRACE) == {}
