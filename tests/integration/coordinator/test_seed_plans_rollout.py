"""The seed's two Plans, verbatim, roll out over 3 servers + 5 agents through the real runtime.

The coordinator runtime (caches, reconcile loop, engine, agent API over real HTTP with TokenReview)
runs in-process against the in-memory Cluster stand-in; eight scripted agents speak the agent API and
"restart" their node by patching its kubeletVersion; checksums come from the sandbox release server.

Aspects covered:
- both Plans reach Complete=True with latestVersion/latestHash, every node carries its plan's hash label;
- no agent node got a lease before every server was verified, labelled and released;
- at no point did a plan hold more active leases than its concurrency (1), over every lease-table write;
- every node the coordinator cordoned is uncordoned again; the lease table ends empty of active leases;
- /metrics counts nodes done/total and a phase duration per node and phase, and times every API write
  it counts (one duration per write, by kind) and every reconcile pass, and one hand-off per node that
  passed its plan's slot on; /status names the plans;
- every node's `Upgraded` Event and every grant's `LeaseGranted` Event is posted (they leave the pass);
- API cost: lease-table + node writes per upgraded node stay under a regression guard (10).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from coordinator.kube.resources import PLANS
from coordinator.leasing import LeasePhase
from tests.integration.coordinator.harness import condition, coordinator, drive

ROOT = Path(__file__).resolve().parents[3]
OLD, NEW = "v1.24.5+k3s1", "v1.24.6+k3s1"
SERVERS = ["server-1", "server-2", "server-3"]
AGENTS = [f"agent-{i}" for i in range(1, 6)]


async def test_seed_plans_complete_servers_first_within_concurrency(tmp_path: Path) -> None:
    nodes = [(n, True, OLD) for n in SERVERS] + [(n, False, OLD) for n in AGENTS]
    async with coordinator(tmp_path, [NEW], nodes) as rig:
        for doc in yaml.safe_load_all((ROOT / "sandbox" / "seed_plans.yaml").read_text()):
            rig.cluster.put(PLANS, doc)
        plans = rig.cluster.objects["plans"]

        def complete() -> bool:
            return all(condition(p, "Complete").get("status") == "True" for p in plans.values())

        await drive(rig, rig.agents(SERVERS + AGENTS, OLD), complete, 60, "the seed Plans did not complete")

    for plan, names in (("server-plan", SERVERS), ("agent-plan", AGENTS)):
        st = plans[f"system-upgrade/{plan}"]["status"]
        assert st["latestVersion"] == NEW and len(st["latestHash"]) == 56
        assert condition(plans[f"system-upgrade/{plan}"], "Validated")["status"] == "True"
        for n in names:
            obj = rig.cluster.objects["nodes"][n]
            assert obj["metadata"]["labels"][f"plan.upgrade.cattle.io/{plan}"] == st["latestHash"]
            assert not obj["spec"].get("unschedulable"), f"{n} left cordoned"
            assert obj["status"]["nodeInfo"]["kubeletVersion"] == NEW

    # The Events that describe what is stored, posted beside the next passes: each node's `Upgraded`, and
    # the plan's `LeaseGranted` for each grant (all of them once the runtime stopped: none is dropped).
    upgraded = sorted(ref["name"] for _, ref, _, reason, _ in rig.cluster.events if reason == "Upgraded")
    assert upgraded == sorted(SERVERS + AGENTS)
    granted = Counter(ref["name"] for _, ref, _, reason, _ in rig.cluster.events if reason == "LeaseGranted")
    assert granted == {"server-plan": len(SERVERS), "agent-plan": len(AGENTS)}  # concurrency 1: one per pass

    text = rig.runtime.metrics.render().decode()
    assert 'k3s_upgrade_nodes_done{plan="server-plan"} 3.0' in text
    assert 'k3s_upgrade_nodes_total{plan="agent-plan"} 5.0' in text
    for phase in ("granted", "staged", "applying", "restarted", "verified"):
        assert f'k3s_upgrade_phase_duration_seconds_count{{phase="{phase}",plan="agent-plan"}} 5.0' in text, (
            phase
        )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    writes = {s.labels["kind"]: s.value for s in families["k3s_upgrade_api_writes"].samples
              if s.name.endswith("_total")}
    timed = {s.labels["kind"]: s.value for s in families["k3s_upgrade_api_write_duration_seconds"].samples
             if s.name.endswith("_count")}
    took = {s.labels["kind"]: s.value for s in families["k3s_upgrade_api_write_duration_seconds"].samples
            if s.name.endswith("_sum")}
    assert {"node", "lease_table", "event", "plan_status"} <= set(writes)
    assert timed == writes and all(took[k] > 0 for k in writes)
    (passes,) = [s.value for s in families["k3s_upgrade_reconciles"].samples if s.name.endswith("_total")]
    (timed_passes,) = [s.value for s in families["k3s_upgrade_reconcile_duration_seconds"].samples
                       if s.name.endswith("_count")]
    assert passes > 0 and timed_passes in (passes, passes - 1)  # the count lags while a pass runs
    decided = {s.name.rsplit("_", 1)[1]: s.value
               for s in families["k3s_upgrade_decide_duration_seconds"].samples}
    assert 0 < decided["count"] <= passes and decided["sum"] > 0
    waits = {s.name.rsplit("_", 1)[1]: s.value for s in families["k3s_upgrade_report_wait_seconds"].samples}
    assert waits["count"] >= len(SERVERS + AGENTS) and waits["sum"] > 0  # reports of each upgrade waited
    handoffs = {(s.labels["plan"], s.name.rsplit("_", 1)[1]): s.value
                for s in families["k3s_upgrade_handoff_seconds"].samples if not s.name.endswith("_bucket")}
    # Each verified node but a plan's last passed its slot on in the write that released it (the agent-plan's
    # first grant waited for the servers: no slot of its own plan freed, no hand-off).
    assert handoffs[("server-plan", "count")] == len(SERVERS) - 1 and handoffs[("server-plan", "sum")] > 0
    assert handoffs[("agent-plan", "count")] == len(AGENTS) - 1 and handoffs[("agent-plan", "sum")] > 0
    status = rig.runtime.status()["plans"]
    assert status["agent-plan"]["version"] == NEW and status["agent-plan"]["conditions"]

    history = rig.cluster.table_history
    for table in history:
        for plan in ("server-plan", "agent-plan"):
            assert len(table.active_for_plan(plan)) <= 1, f"{plan} exceeded concurrency 1"
    first = next(i for i, t in enumerate(history) if any(le.plan == "agent-plan" for le in t.leases))
    verified_before = {
        le.node
        for t in history[:first]
        for le in (*t.leases, *t.finished.values())  # verified and released in one write: finished
        if le.plan == "server-plan" and le.phase is LeasePhase.VERIFIED
    }
    assert verified_before == set(SERVERS), (
        f"an agent node started before every server was verified (verified: {sorted(verified_before)})"
    )
    assert not history[first].active_for_plan("server-plan"), (
        "an agent node started while a server held a lease"
    )
    assert not any(le.active for le in history[-1].leases)
    upgraded = len(SERVERS) + len(AGENTS)
    writes = rig.cluster.writes
    # Regression guard at today's cost (about 7 table + 2 node writes per node; the target of 6 API
    # writes per node needs fewer lease phases written by the engine).
    assert writes.get("lease", 0) + writes.get("node", 0) <= 10 * upgraded, writes
