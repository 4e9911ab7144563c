"""Our cordons are marked on the Node (`coordinator.cordons`): a node that goes ahead the moment it is granted
is cordoned before the write that stores its lease, and a pass cut short between the two leaves a node
that only the mark says is ours.

Aspects: every cordon of ours carries the mark (the lease, the time) and every uncordon of ours removes
it (the simulator checks both on every patch); a pass cut after its cordons leaves the node cordoned and
marked, with no lease; the next grant of that node takes the cordon over (it cordons it once more, with a
mark naming itself; the lease says we cordoned it, and it is uncordoned when done), also a grant told to
stage first, when it reaches its cordon; a failure record of one plan never uncordons the node another
plan's lease holds now; a node no grant takes is given back once the mark is older than the grace, with
an Event, and not before; a node whose lease was released lately (the echo of our uncordon still on its
way) is not patched again; a mark that cannot be read is given back at once; a node a person uncordoned
during its upgrade gets only the mark removed; a node a person cordoned is never uncordoned; the kept
views index the marked Nodes as a walk over all of them would find them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from coordinator.cordons import CORDON_ANNOTATION, ORPHAN_GRACE, mark, marked_lease, orphaned
from coordinator.engine import (
    Decision,
    EngineSettings,
    EventWrite,
    NodePatch,
    NodeView,
    TableWrite,
    World,
    decide,
)
from coordinator.leasing import LeasePhase
from coordinator.nodeviews import NodeViews

from .cluster_sim import T0, Sim, SimNode, pool_plan

SETTINGS = EngineSettings(agent_heartbeat=30, verify=60, prefetch_waves=1)


def cluster() -> Sim:
    nodes = [SimNode(f"n{i}", f"uid-{i}", {"pool": "a"}, "v1.23.9+k3s1") for i in range(2)]
    return Sim(nodes, [pool_plan(1)], SETTINGS)


def go_ahead_pass(sim: Sim) -> tuple[World, Decision, NodePatch]:
    """Run the rollout up to the pass that labels one node and cordons the other, which holds the binary
    (that pass not performed)."""
    for _ in range(30):
        world = sim.world()
        decision = decide(world)
        for w in decision.writes:
            if isinstance(w, NodePatch) and w.unschedulable and world.table.active_for_node(w.node) is None:
                return world, decision, w
        sim.step()
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
    raise AssertionError("no pass cordoned a node before its grant was stored")


def cut_before_the_table_write(sim: Sim) -> tuple[World, NodePatch, str]:
    """Perform a go-ahead pass up to (not including) its table write: (its World, the cordon, the lease id
    the write would have stored)."""
    world, decision, cordon = go_ahead_pass(sim)
    table_at = next(i for i, w in enumerate(decision.writes) if isinstance(w, TableWrite))
    assert decision.writes.index(cordon) < table_at
    last = [w for w in decision.writes if isinstance(w, TableWrite)][-1].table
    lease = last.active_for_node(cordon.node)
    assert lease is not None and lease.phase is LeasePhase.APPLYING and lease.cordoned_by_us
    sim.step(prefix=table_at)
    return world, cordon, lease.lease_id


def patches_of(decision: Decision, node: str) -> list[NodePatch]:
    return [w for w in decision.writes if isinstance(w, NodePatch) and w.node == node]


def test_the_go_ahead_cordon_names_its_lease_and_the_time() -> None:
    sim = cluster()
    world, cordon, lease_id = cut_before_the_table_write(sim)
    assert marked_lease(cordon.annotations[CORDON_ANNOTATION]) == (lease_id, world.now)
    node = sim.nodes[cordon.node]
    assert node.unschedulable and CORDON_ANNOTATION in node.annotations
    assert sim.table.active_for_node(cordon.node) is None  # only the mark says it is ours


def test_the_next_grant_takes_a_cut_pass_cordon_over() -> None:
    sim = cluster()
    _, cordon, lost = cut_before_the_table_write(sim)
    sim.tick(1)
    decision = sim.step()  # the node before it is verified again (labelled already), this one granted again
    lease = sim.table.active_for_node(cordon.node)
    assert lease is not None and lease.lease_id != lost
    assert lease.phase is LeasePhase.APPLYING and lease.cordoned_by_us
    # Cordoned again, the mark naming the lease that holds it now (a stale view of a node given back since
    # would otherwise count as cordoned).
    (again,) = [p for p in patches_of(decision, cordon.node) if p.unschedulable]
    assert marked_lease(again.annotations[CORDON_ANNOTATION])[0] == lease.lease_id
    for _ in range(10):  # its upgrade ends: uncordoned, the mark removed (the simulator checks the patch)
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.step()
        sim.tick(1)
    node = sim.nodes[cordon.node]
    assert not node.unschedulable and CORDON_ANNOTATION not in node.annotations
    assert sim.complete("p")


def test_a_grant_that_stages_first_takes_a_cut_pass_cordon_over_at_its_cordon() -> None:
    sim = cluster()
    _, cordon, _ = cut_before_the_table_write(sim)
    name = cordon.node
    sim.nodes[name].prefetched = None  # its agent lost the binary: granted as any node, told to stage
    sim.agent_poll(name)  # (says so; the hint in the answer is downloaded after this poll)
    sim.tick(1)
    sim.step()
    lease = sim.table.active_for_node(name)
    assert lease is not None and lease.phase is LeasePhase.GRANTED and not lease.cordoned_by_us
    cordons = []
    for _ in range(10):
        sim.agent_poll(name)
        sim.tick(1)
        cordons += [p for p in patches_of(sim.step(), name) if p.unschedulable]
        lease = sim.table.active_for_node(name)
        if lease is not None and lease.phase is LeasePhase.APPLYING:
            break
    else:
        raise AssertionError(f"not applying: {sim.table}")
    assert lease.cordoned_by_us, "not taken over"
    (again,) = cordons  # once, at its cordon, with a mark naming it
    assert marked_lease(again.annotations[CORDON_ANNOTATION])[0] == lease.lease_id


def test_a_cordon_no_grant_takes_is_given_back_after_the_grace_and_not_before() -> None:
    sim = cluster()
    world, cordon, lease_id = cut_before_the_table_write(sim)
    name = cordon.node
    sim.plans["p"]["spec"]["nodeSelector"] = {"matchLabels": {"pool": "b"}}  # no longer the plan's
    sim.step()
    for seconds in (1, ORPHAN_GRACE.total_seconds() - 2):
        sim.tick(seconds)
        assert not patches_of(sim.step(), name), "given back within the grace"
        assert sim.nodes[name].unschedulable
    sim.tick(1)
    decision = sim.step()
    (patch,) = patches_of(decision, name)
    assert patch.unschedulable is False and patch.annotations == {CORDON_ANNOTATION: None}
    assert not sim.nodes[name].unschedulable and CORDON_ANNOTATION not in sim.nodes[name].annotations
    (event,) = [w for w in decision.writes if isinstance(w, EventWrite) and w.reason == "Uncordoned"]
    assert event.kind == "Node" and event.name == name and lease_id in event.message
    assert sim.now - world.now >= ORPHAN_GRACE


def test_a_node_released_with_its_mark_is_not_patched_again_while_the_echo_is_on_its_way() -> None:
    sim = cluster()
    _, cordon, _ = cut_before_the_table_write(sim)
    for _ in range(10):
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.step()
        sim.tick(1)
    node = sim.nodes[cordon.node]
    assert not node.unschedulable and sim.complete("p")
    # The Node as the cache may still show it, the patch that labelled it, uncordoned it and removed the
    # mark not echoed yet, long after the mark was set; the release was stored a moment ago.
    label = "plan.upgrade.cattle.io/p"
    node.unschedulable, node.we_cordoned = True, True
    node.annotations[CORDON_ANNOTATION] = mark("p.n.0123456789ab", sim.now - 2 * ORPHAN_GRACE)
    value = node.labels.pop(label)
    sim.labelled = {cordon.node: sim.table.finished[cordon.node]}
    world = sim.world()
    assert cordon.node in world.labelled and orphaned(node.annotations[CORDON_ANNOTATION], world.now)
    assert not patches_of(decision := decide(world), cordon.node), decision.writes
    # Once the label's echo is in, a cordon and a mark still there are no echo: given back.
    node.labels[label] = value
    (patch,) = patches_of(decide(sim.world()), cordon.node)
    assert patch.unschedulable is False and patch.annotations == {CORDON_ANNOTATION: None}


def test_a_mark_that_cannot_be_read_is_ours_and_given_back_at_once() -> None:
    assert marked_lease("by hand") == (None, None)
    assert marked_lease('{"lease": "x", "at": "2026-11-28T10:00:00"}') == ("x", None)  # no zone
    assert orphaned("by hand", T0) and orphaned("", T0)
    assert not orphaned(mark("x", T0), T0 + ORPHAN_GRACE - timedelta(seconds=1))
    assert orphaned(mark("x", T0), T0 + ORPHAN_GRACE)
    sim = cluster()
    sim.nodes["n1"].labels["pool"] = "b"  # not the plan's
    sim.nodes["n1"].unschedulable, sim.nodes["n1"].we_cordoned = True, True
    sim.nodes["n1"].annotations[CORDON_ANNOTATION] = "by hand"
    (patch,) = patches_of(sim.step(), "n1")
    assert patch.unschedulable is False and patch.annotations == {CORDON_ANNOTATION: None}


def test_a_node_a_person_uncordoned_during_its_upgrade_gets_only_the_mark_removed() -> None:
    sim = cluster()
    for _ in range(30):
        sim.step()
        lease = next((le for le in sim.table.leases if le.phase is LeasePhase.APPLYING), None)
        if lease is not None:
            break
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
    else:
        raise AssertionError("no lease reached applying")
    name = lease.node
    assert lease.cordoned_by_us and CORDON_ANNOTATION in sim.nodes[name].annotations
    sim.nodes[name].unschedulable = sim.nodes[name].we_cordoned = False  # kubectl uncordon
    sim.agent_poll(name)  # upgraded, restarted
    patches = patches_of(sim.step(), name)
    (patch,) = [p for p in patches if p.annotations]
    assert patch.unschedulable is None and patch.annotations == {CORDON_ANNOTATION: None}
    assert CORDON_ANNOTATION not in sim.nodes[name].annotations


def test_a_node_a_person_cordoned_is_never_given_back() -> None:
    sim = cluster()
    sim.nodes["n1"].labels["pool"] = "b"
    sim.nodes["n1"].unschedulable = True  # kubectl cordon n1: no mark
    for _ in range(5):
        assert not patches_of(sim.step(), "n1")
        sim.tick(ORPHAN_GRACE.total_seconds())


def test_the_kept_views_index_the_marked_nodes() -> None:
    views = NodeViews()
    plain = NodeView(name="a", uid="ua")
    marked = replace(plain, annotations={CORDON_ANNOTATION: mark("l", T0)}, unschedulable=True)
    views.put(plain)
    assert list(views.marked()) == []
    views.put(marked)
    assert list(views.marked()) == [marked]
    views.put(plain)
    assert list(views.marked()) == []
    views.put(marked)
    views.pop("a")
    assert list(views.marked()) == []


def test_a_failure_record_of_one_plan_leaves_alone_the_cordon_of_another_plans_lease() -> None:
    other = pool_plan(1)
    other["metadata"] = {"name": "q", "namespace": "system-upgrade", "uid": "uid-q"}
    sim = Sim([SimNode("n0", "uid-0", {"pool": "a"}, "v1.23.9+k3s1")], [pool_plan(1), other],
              EngineSettings(agent_heartbeat=30, verify=60, prefetch_waves=0))
    sim.agent_poll("n0")
    sim.step()  # plan p grants n0 (q waits: one lease per node)
    sim.agent_poll("n0", "fail")  # the download fails: p keeps a failure record, and halts
    for _ in range(10):
        sim.tick(1)
        sim.step()
        lease = sim.table.active_for_node("n0")
        if lease is not None and lease.plan == "q" and lease.phase is LeasePhase.APPLYING:
            break
        sim.agent_poll("n0")
    else:
        raise AssertionError(f"q never took n0 to applying: {sim.table}")
    assert any(le.plan == "p" and not le.active for le in sim.table.leases)
    assert sim.nodes["n0"].unschedulable and lease.cordoned_by_us
    for _ in range(3):  # p's record is advanced on every pass: it must not uncordon q's node
        sim.tick(1)
        assert not [p for p in patches_of(sim.step(), "n0") if p.unschedulable is False]
        assert sim.nodes["n0"].unschedulable
