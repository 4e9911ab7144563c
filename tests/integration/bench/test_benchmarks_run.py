"""The benchmarks run end to end and report sane figures (at small scale, so the suite stays fast).

Aspects: the scheduling benchmark grants `concurrency` leases per Plan on its first decision and times
positive durations; `python -m bench` runs every benchmark and writes a results table naming the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import scheduling

ROOT = Path(__file__).resolve().parents[3]


def test_scheduling_benchmark_grants_and_times_a_decision() -> None:
    figures = scheduling.main(nodes=200, plans=4, repeat=2)
    assert figures["leases_granted_by_first_decision"] == 4 * scheduling.CONCURRENCY
    assert 0 < figures["decide_ms_empty_table_median"] <= figures["decide_ms_empty_table_max"]
    assert 0 < figures["decide_ms_leases_held_median"] <= figures["decide_ms_leases_held_max"]


def test_bench_writes_a_results_table(tmp_path: Path) -> None:
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_text() if results.exists() else None
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=240
        )
        assert out.returncode == 0, out.stderr
        text = results.read_text()
        assert "cores" in text and "decide_ms_leases_held_median" in text and "list_1000_nodes_per_s" in text
    finally:
        if before is not None:
            results.write_text(before)
        else:
            results.unlink(missing_ok=True)
