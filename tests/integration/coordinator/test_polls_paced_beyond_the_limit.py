"""More agents than `--max-held-polls`: the seed's two Plans still roll out, pacing the idle polls.

The coordinator runtime runs in-process against the in-memory Cluster (as in test_seed_plans_rollout),
with `--max-held-polls 3` and eight scripted agents that sleep as long as `poll_after_seconds` says
(`--poll-wait-max 2` keeps that short), and `--resync-interval 30`: no periodic pass hides a missing
wake-up, progress comes from the agents' reports and from a held agent a plan has a slot for (without
that wake-up the Plans took more than 60 s; with it about 5 s). The
agents poll before the Plans exist, as in a cluster where a Plan is created later.

Aspects covered:
- both Plans reach Complete=True and every node carries its plan's hash label;
- at no moment (sampled every 50 ms) were more than 3 idle polls held, but for the loop turns in which a
  poll displaced by a better-placed one leaves, and every plan kept within its concurrency over every
  lease-table write;
- polls were answered at once with a time to come back (`k3s_upgrade_agent_polls_paced` > 0), and the
  held-polls gauge ends at the number of agents held then;
- every lease went to an agent whose poll the coordinator held at that moment (the engine grants only
  listening agents beyond the limit): no lease waited in `granted` for an agent to come back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import coordinator.reconciler as reconciler
from coordinator import engine
from coordinator.engine import Decision, TableWrite, World
from coordinator.kube.resources import PLANS
from tests.integration.coordinator.harness import condition, coordinator, drive

ROOT = Path(__file__).resolve().parents[3]
OLD, NEW = "v1.24.5+k3s1", "v1.24.6+k3s1"
SERVERS = ["server-1", "server-2", "server-3"]
AGENTS = [f"agent-{i}" for i in range(1, 6)]


async def test_seed_plans_complete_with_three_polls_held_for_eight_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [(n, True, OLD) for n in SERVERS] + [(n, False, OLD) for n in AGENTS]
    most_held = 0
    grants: list[tuple[str, bool]] = []  # (node, its agent was listening) for every lease granted
    decide = engine.decide  # the function the runtime calls, watched below

    def watched(world: World) -> Decision:
        decision = decide(world)
        before = {le.lease_id for le in world.table.leases}
        for w in decision.writes:
            if isinstance(w, TableWrite):
                for le in w.table.leases:
                    if le.lease_id not in before:  # granted, or `staged` if its agent prefetched the binary
                        before.add(le.lease_id)
                        grants.append((le.node, world.listening is not None and le.node in world.listening))
        return decision

    monkeypatch.setattr(reconciler, "decide", watched)
    args = ("--max-held-polls", "3", "--poll-wait-max", "2", "--resync-interval", "30")
    async with coordinator(tmp_path, [NEW], nodes, *args) as rig:
        names = SERVERS + AGENTS
        # Every agent polls first (the cluster idle, as when a Plan is created), then the Plans come.
        agents = rig.agents(names, OLD, max_poll_after=None)
        await drive(rig, agents, lambda: rig.runtime.paced, 10, "the coordinator did not pace")
        for doc in yaml.safe_load_all((ROOT / "sandbox" / "seed_plans.yaml").read_text()):
            rig.cluster.put(PLANS, doc)
        plans = rig.cluster.objects["plans"]

        def complete() -> bool:
            return all(condition(p, "Complete").get("status") == "True" for p in plans.values())

        async def sample() -> None:
            nonlocal most_held
            while True:
                held = len(rig.runtime.holding)
                for _ in range(3):  # a poll displaced by a better-placed one leaves on the loop's next turns
                    if held <= 3:
                        break
                    await asyncio.sleep(0)
                    held = len(rig.runtime.holding)
                most_held = max(most_held, held)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        agents = rig.agents(names, OLD, max_poll_after=None)
        try:
            await drive(rig, agents, complete, 60, "the seed Plans did not complete")
        finally:
            sampler.cancel()
        text = rig.runtime.metrics.render().decode()
        held_now = len(rig.runtime.holding)

    for plan, names in (("server-plan", SERVERS), ("agent-plan", AGENTS)):
        h = plans[f"system-upgrade/{plan}"]["status"]["latestHash"]
        for n in names:
            labels = rig.cluster.objects["nodes"][n]["metadata"]["labels"]
            assert labels[f"plan.upgrade.cattle.io/{plan}"] == h
    assert 0 < most_held <= 3, most_held
    for table in rig.cluster.table_history:
        for plan in ("server-plan", "agent-plan"):
            assert len(table.active_for_plan(plan)) <= 1, f"{plan} exceeded concurrency 1"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    paced_samples = families["k3s_upgrade_agent_polls_paced"].samples
    (paced,) = [s.value for s in paced_samples if s.name.endswith("_total")]
    (gauge,) = [s.value for s in families["k3s_upgrade_agent_polls_held"].samples]
    assert paced > 0
    assert gauge == held_now
    assert sorted(node for node, _ in grants) == sorted(SERVERS + AGENTS)
    assert all(listening for _, listening in grants), grants
