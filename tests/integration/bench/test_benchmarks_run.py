"""The benchmarks run end to end and report sane figures (at small scale, so the suite stays fast).

Aspects: the scheduling benchmark grants `concurrency` leases per Plan on its first decision and times
positive durations, cold and warm; `python -m bench` with BENCH_QUICK=1 runs the scheduling, rollout
(20 nodes, real coordinator and API server emulator processes) and agent (download vs curl, idle
footprint) benchmarks and writes a results table naming the machine and the targets; the 1,000-node
rollouts (here 20 nodes: the coordinator's, the floor's and the bare floor's) run twice each, alternated,
and the table shows the run with the median total and lists both; the rollout upgrades every node, never
faster than the physical ideal, with positive hand-off latencies, API writes and coordinator RSS; the
bare floor's grant is its go-ahead, and the comparison splits the floor into the machine's share and the
protocol's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import scheduling

ROOT = Path(__file__).resolve().parents[3]


def test_scheduling_benchmark_grants_and_times_a_decision() -> None:
    figures = scheduling.main(nodes=200, plans=4, repeat=2)
    assert figures["leases_granted_by_first_decision"] == 4 * scheduling.CONCURRENCY
    assert 0 < figures["decide_ms_empty_table_median"] <= figures["decide_ms_empty_table_max"]
    assert 0 < figures["decide_ms_leases_held_median"] <= figures["decide_ms_leases_held_max"]
    for case in ("empty_table", "leases_held"):  # again on the kept Node views, a few of them changed
        assert 0 < figures[f"decide_ms_{case}_warm_median"] <= figures[f"decide_ms_{case}_warm_max"]


def test_quick_bench_runs_every_benchmark_and_writes_the_table(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    out = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENCH_QUICK": "1", "BENCH_RESULTS": str(results)},
    )
    assert out.returncode == 0, out.stderr
    printed = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    runs = [ln for ln in printed if "run" in ln]  # each run of a rollout that runs more than once
    lines = [ln for ln in printed if "run" not in ln]
    def kind(ln: dict[str, Any]) -> str:
        return " --bare" if ln.get("bare") else " --floor" if ln.get("floor") else ""

    by_module = {ln["module"] + kind(ln): ln for ln in lines if "comparison" not in ln}
    assert len(by_module) == len(lines) - sum("comparison" in ln for ln in lines)  # one line each
    assert set(by_module) == {
        "bench.scheduling",
        "bench.rollout",
        "bench.rollout --floor",
        "bench.rollout --bare",
        "bench.longpoll_memory",
        "bench.agent_download",
    }

    r = by_module["bench.rollout"]
    assert r["complete"] is True and r["finished_nodes"] == r["nodes"] == 20
    assert r["total_s"] >= r["ideal_s"] == 4 * 0.3
    assert 0 < r["handoff_ms_p50"] <= r["handoff_ms_p99"] <= r["handoff_ms_max"]
    assert r["coordinator_api_writes_per_node"] > 0
    assert any(k.startswith("PATCH nodes") for k in r["coordinator_api_requests_per_node"])
    assert r["coordinator_cpu_s"] > 0 and 20 < r["coordinator_peak_rss_mib"] < 2000
    assert {"lease_table", "node"} <= set(r["coordinator_api_write_ms_mean"])
    assert all(ms > 0 for ms in r["coordinator_api_write_ms_mean"].values())
    assert r["coordinator_passes_per_node"] > 0 and r["coordinator_pass_ms_mean"] > 0
    # Every node but the 5 of the last wave handed its slot on; the coordinator timed each hand-off.
    assert r["coordinator_handoffs"] == 20 - 5 and r["coordinator_handoff_ms_mean"] > 0
    assert r["coordinator_handoff_ms_p50_at_most"] <= r["coordinator_handoff_ms_p99_at_most"]
    # The first wave's 5 hand-offs apart from the other 10.
    assert 0 < r["handoff_ms_first_wave_p50"] <= r["handoff_ms_first_wave_max"] <= r["handoff_ms_max"]
    assert 0 < r["handoff_ms_p99_after_first_wave"] <= r["handoff_ms_max"]
    assert r["handoffs_over_50_ms_in_first_wave"] <= min(5, r["handoffs_over_50_ms"])
    assert r["first_wave_back_within_ms"] >= 0 and r["api_latency_ms"] == 0

    # The rollouts ran twice each, alternated; the line of each is its run with the median total (of 2:
    # the shorter), and a `runs` row lists both.
    assert [(ln["run"], kind(ln)) for ln in runs] == [
        (1, ""), (1, " --floor"), (1, " --bare"), (2, ""), (2, " --floor"), (2, " --bare")
    ]
    for which in ("", " --floor", " --bare"):
        mine = [ln for ln in runs if kind(ln) == which]
        shown = by_module["bench.rollout" + which]
        assert shown["total_s"] == min(ln["total_s"] for ln in mine)
        (row,) = [ln for ln in lines if ln.get("comparison", "").startswith("bench.rollout")
                  and ln["comparison"].endswith(f"{which or ' 30'}: runs")]
        assert row["runs"] == 2 and row["total_s_runs"] == [ln["total_s"] for ln in mine]
        assert row["handoff_ms_p99_runs"] == [ln["handoff_ms_p99"] for ln in mine]

    f = by_module["bench.rollout --floor"]
    assert f["benchmark"] == "rollout-floor" and f["complete"] is True and f["finished_nodes"] == 20
    assert f["coordinator_api_write_ms_mean"] == {} and f["coordinator_passes_per_node"] is None
    assert f["coordinator_pass_ms_mean"] is None and f["coordinator_handoffs"] is None
    assert f["total_s"] >= f["ideal_s"] == 4 * 0.3
    assert 0 < f["handoff_ms_p50"] <= f["handoff_ms_p99"] <= f["handoff_ms_max"]
    assert (
        f["coordinator_api_writes_per_node"] == 0
    )  # the floor writes nothing; the stand-ins' own are not counted
    # The bare floor: one instruction (`apply`, with the lease) and one report per node.
    b = by_module["bench.rollout --bare"]
    assert b["benchmark"] == "rollout-bare-floor" and b["complete"] is True and b["finished_nodes"] == 20
    assert b["total_s"] >= b["ideal_s"] == 4 * 0.3 and b["coordinator_api_writes_per_node"] == 0
    assert 0 < b["handoff_ms_p50"] <= b["handoff_ms_p99"] and b["agent_errors_during_rollout"] == 0
    assert b["grant_to_apply_ms_mean"] == 0  # the grant is the go-ahead

    (c,) = [ln for ln in lines if ln.get("comparison", "").startswith("rollout vs floor")]
    assert c["coordinator_total_s"] == r["total_s"] and c["floor_total_s"] == f["total_s"]
    assert c["coordinator_over_floor"] == round(r["total_s"] / f["total_s"], 3)
    waves = 20 // 5  # one node through each of the 5 slots, 4 times
    assert c["coordinator_adds_ms_per_wave"] == round((r["total_s"] - f["total_s"]) / waves * 1000, 1)
    assert c["bare_floor_total_s"] == b["total_s"]
    assert c["bare_floor_adds_ms_per_wave"] == round((b["total_s"] - 4 * 0.3) / waves * 1000, 1)
    assert c["protocol_adds_ms_per_wave"] == round((f["total_s"] - b["total_s"]) / waves * 1000, 1)

    m = by_module["bench.longpoll_memory"]
    assert m["clients"] == 100 and 20 < m["coordinator_import_mib"] < 500
    assert m["rss_holding_mib"] >= m["rss_before_mib"] and m["per_longpoll_kib"] >= 0

    (mf,) = [ln for ln in lines if ln.get("comparison", "").startswith("coordinator memory floor")]
    assert mf["floor_mib"] == round(r["coordinator_rss_mib_synced"] + 20 * m["per_longpoll_kib"] / 1024, 1)

    a = by_module["bench.agent_download"]
    assert a["curl_mb_per_s"] > 0 and a["agent_download_verify_mb_per_s"] > 0 and a["agent_over_curl"] > 0
    assert 10 < a["agent_download_peak_rss_mib"] < 2000 and 10 < a["agent_idle_rss_mib"] < 2000
    assert 0 <= a["agent_idle_cpu_s"] <= a["agent_idle_window_s"]

    text = results.read_text()
    assert "cores" in text and "Python" in text and "BENCH_QUICK=1" in text
    assert "handoff_ms_p99" in text and "< 50 ms" in text and "agent_over_curl" in text
    assert "rollout vs floor, 20 nodes" in text and "coordinator_over_floor" in text
    floor_rows = [row for row in text.splitlines() if row.startswith("| bench.rollout") and "--floor" in row]
    judged = [
        r.split("|")[4].strip()
        for r in floor_rows
        if r.split("|")[2].strip() in ("handoff_ms_p99", "coordinator_api_writes_per_node")
    ]
    assert judged == ["", ""]  # those targets are the coordinator's, not the floor's
