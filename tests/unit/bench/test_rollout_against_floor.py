"""`bench.__main__.against_floor`: each `--floor` rollout beside the coordinator's rollout of the same size.

Aspects: only the coordinator as shipped is compared (a run with another `--max-held-polls`, or against an
API server with a latency, is not), per size, with the floor's first-wave hand-offs; a floor or a
rollout that did not finish is not compared; the per-wave figure is the difference of the totals over
ceil(nodes / concurrency) waves; a bare floor of the same size splits the floor's total into the
machine's share (over the ideal) and the protocol's (over the bare floor).
"""

from __future__ import annotations

from typing import Any

from bench.__main__ import against_floor
from coordinator.config import DEFAULT_MAX_HELD_POLLS


def rollout(nodes: int, total: float, *, floor: bool = False, held: int | None = None,
            complete: bool = True, bare: bool = False, latency: float = 0.0) -> dict[str, Any]:
    concurrency = 50 if nodes == 1000 else 200
    floor = floor or bare
    return {
        "benchmark": "rollout-bare-floor" if bare else "rollout-floor" if floor else "rollout",
        "floor": floor,
        "bare": bare,
        "ideal_s": nodes / concurrency,
        "nodes": nodes,
        "concurrency": concurrency,
        "work_s": 1.0,
        "coordinator_max_held_polls": None if floor else (held or DEFAULT_MAX_HELD_POLLS),
        "complete": complete,
        "total_s": total,
        "total_over_ideal": round(total / (nodes / concurrency), 3),
        "handoff_ms_p99": 40.0 if floor else 60.0,
        "handoff_ms_first_wave_p50": 30.0 if floor else 55.0,
        "handoff_ms_first_wave_max": 41.0 if floor else 75.0,
        "first_wave_back_within_ms": 20.0 if floor else 50.0,
        "api_latency_ms": latency,
    }


def test_each_floor_is_compared_with_the_shipped_coordinator_of_its_size() -> None:
    results = [
        ("c1000", rollout(1000, 22.0)),
        ("f1000", rollout(1000, 21.0, floor=True)),
        ("c1000 2ms", rollout(1000, 25.0, latency=2.0)),
        ("c5000", rollout(5000, 34.0)),
        ("c5000 held all", rollout(5000, 36.0, held=5000)),
        ("f5000", rollout(5000, 29.5, floor=True)),
    ]
    rows = against_floor(results)
    assert [name for name, _ in rows] == ["rollout vs floor, 1000 nodes", "rollout vs floor, 5000 nodes"]
    small, large = rows[0][1], rows[1][1]
    assert small["coordinator_adds_ms_per_wave"] == 50.0  # 1 s over 20 waves (not the run with a latency)
    assert small["floor_handoff_ms_first_wave_p50"] == 30.0
    assert small["floor_handoff_ms_first_wave_max"] == 41.0
    assert small["floor_first_wave_back_within_ms"] == 20.0
    assert large["coordinator_total_s"] == 34.0  # not the run holding every poll
    assert large["coordinator_adds_ms_per_wave"] == 180.0  # 4.5 s over 25 waves
    assert large["coordinator_over_floor"] == round(34.0 / 29.5, 3)
    assert large["floor_handoff_ms_p99"] == 40.0


def test_unfinished_rollouts_are_not_compared() -> None:
    unfinished_floor = rollout(1000, 21.0, floor=True, complete=False)
    assert against_floor([("c", rollout(1000, 22.0)), ("f", unfinished_floor)]) == []
    unfinished = rollout(1000, 22.0, complete=False)
    assert against_floor([("c", unfinished), ("f", rollout(1000, 21.0, floor=True))]) == []


def test_a_bare_floor_splits_the_floor_into_the_machine_and_the_protocol() -> None:
    results = [
        ("c1000", rollout(1000, 22.0)),
        ("f1000", rollout(1000, 21.2, floor=True)),
        ("b1000", rollout(1000, 20.5, bare=True)),
        ("c5000", rollout(5000, 34.0)),
        ("f5000", rollout(5000, 29.5, floor=True)),
    ]
    rows = dict(against_floor(results))
    assert set(rows) == {"rollout vs floor, 1000 nodes", "rollout vs floor, 5000 nodes"}  # not the bare one
    small = rows["rollout vs floor, 1000 nodes"]
    assert small["floor_total_s"] == 21.2 and small["bare_floor_total_s"] == 20.5
    assert small["bare_floor_adds_ms_per_wave"] == 25.0  # 0.5 s over 20 waves
    assert small["protocol_adds_ms_per_wave"] == 35.0  # 0.7 s over 20 waves
    assert small["coordinator_adds_ms_per_wave"] == 40.0
    assert "bare_floor_total_s" not in rows["rollout vs floor, 5000 nodes"]  # none of that size
    unfinished = [*results[:2], ("b1000", rollout(1000, 20.5, bare=True, complete=False))]
    assert "bare_floor_total_s" not in dict(against_floor(unfinished))["rollout vs floor, 1000 nodes"]
