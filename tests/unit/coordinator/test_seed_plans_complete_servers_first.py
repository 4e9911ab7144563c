"""The k3s docs' two Plans, verbatim, driven through the pure engine on 3 servers + 5 agents.

Aspects: both plans reach Complete=True; every node ends on the target with the plan's hash label and
schedulable; servers are all done before any agent gets a lease; concurrency 1 is never exceeded; the
status carries latestVersion/latestHash/applying as SUC writes it; a finished rollout writes nothing more.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from coordinator.engine import TableWrite
from coordinator.selection import plan_label

from .cluster_sim import Sim, seed_cluster

SEED = Path(__file__).resolve().parents[3] / "sandbox" / "seed_plans.yaml"


def seed_plans() -> list[dict]:  # type: ignore[type-arg]
    plans = [p for p in yaml.safe_load_all(SEED.read_text()) if p]
    for i, p in enumerate(plans):
        p["metadata"]["uid"] = f"plan-uid-{i}"
    return plans


def run_to_completion(sim: Sim, max_steps: int = 400) -> int:
    for step in range(max_steps):
        sim.step()
        for name in sim.nodes:
            sim.agent_poll(name)
        sim.tick(1)
        if all(sim.complete(p) for p in sim.plans):
            return step
    raise AssertionError(f"not complete after {max_steps} steps: {sim.table}")


def test_seed_plans_upgrade_servers_then_agents() -> None:
    sim = Sim(seed_cluster(3, 5), seed_plans())
    run_to_completion(sim)
    target = "v1.24.6+k3s1"
    for plan in sim.plans.values():
        st = plan["status"]
        assert st["latestVersion"] == target
        assert len(st["latestHash"]) == 56
        assert "applying" not in st
        types = {c["type"]: c for c in st["conditions"]}
        assert types["Validated"]["reason"] == "PlanIsValid"
        assert types["LatestResolved"]["reason"] == "Version"
    for node in sim.nodes.values():
        name = "server-plan" if node.name.startswith("server") else "agent-plan"
        assert node.version == target
        assert node.labels[plan_label(name)] == sim.plans[name]["status"]["latestHash"]
        assert not node.unschedulable
    order = [p for p, _ in sim.grants]
    assert order == ["server-plan"] * 3 + ["agent-plan"] * 5
    assert sim.table.leases == ()
    # Steady state: nothing left to write.
    assert sim.step().writes == ()


def test_new_version_upgrades_everything_again() -> None:
    sim = Sim(seed_cluster(1, 1), seed_plans())
    run_to_completion(sim)
    for p in sim.plans.values():
        p["spec"]["version"] = "v1.25.2+k3s1"
    decision = sim.step()
    assert any(isinstance(w, TableWrite) for w in decision.writes)
    run_to_completion(sim)
    assert {n.version for n in sim.nodes.values()} == {"v1.25.2+k3s1"}
