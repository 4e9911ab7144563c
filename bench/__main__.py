"""`python -m bench` (what `make bench` runs): every benchmark in its own process, its JSON printed, and a
table of the figures written to bench/RESULTS.md with the date and the machine.

Benchmarks present: `bench.apiserver` (the API server emulator) and `bench.scheduling` (one decision of
the pure engine). Issue 6's rollout-at-scale and agent-download benchmarks are not written yet.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

BENCHMARKS = ("bench.apiserver", "bench.scheduling")
RESULTS = Path(__file__).with_name("RESULTS.md")
TARGETS = {
    "decide_ms_leases_held_median": "one decision over 5,000 nodes and 20 Plans (no target set; hand-off "
    "p99 target is 50 ms)",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


def run(module: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{module} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| benchmark | figure | value | note |", "|---|---|---|---|"]
    for module, figures in results.items():
        for key, value in figures.items():
            rows.append(f"| {module} | {key} | {value} | {TARGETS.get(key, '')} |")
    return "\n".join(rows)


def main() -> None:
    results = {}
    for module in BENCHMARKS:
        results[module] = run(module)
        print(json.dumps({"module": module, **results[module]}), flush=True)
    RESULTS.write_text(
        "# Benchmark results\n\n"
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()} by `make bench`.\n\n"
        f"{table(results)}\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
