"""`bench.rollout.first_wave`: where the slow hand-offs of a rollout are.

Aspects: the first `concurrency` hand-offs (in the order the slots were freed) are the first wave's, the
rest are the others'; hand-offs over 50 ms are counted in all and in the first wave; the first wave came
back within the span of the first `concurrency` `restarted` times (in time order, whatever the order
given); fewer hand-offs than a wave leave the others' figure empty.

`bench.rollout.first_wave_cpu`: what each process spent between the first wave's first node back and its
last hand-off, the coordinator's per hand-off and as a share of one core, all three's share of the cores;
empty without both probes or with a process unread. `bench.nodesim.Timeline` probes at those two moments:
the first `restarted`, and the first instruction of the `2 * wave`-th node (not again after).
"""

from __future__ import annotations

import time

from bench.nodesim import Timeline
from bench.rollout import first_wave, first_wave_cpu


def test_the_first_wave_apart_from_the_rest() -> None:
    handoffs = [60.0, 20.0, 80.0, 10.0, 12.0, 55.0, 9.0]  # concurrency 3: the first wave is 60, 20, 80
    restarted = [5.0, 1.000, 1.030, 1.012, 2.0, 2.1, 2.2, 3.0]  # seconds: the first 3 are 1.000-1.030
    figures = first_wave(handoffs, restarted, 3)
    assert figures == {
        "first_wave_back_within_ms": 30.0,
        "handoff_ms_first_wave_p50": 60.0,
        "handoff_ms_first_wave_max": 80.0,
        "handoff_ms_p99_after_first_wave": 55.0,
        "handoffs_over_50_ms": 3,
        "handoffs_over_50_ms_in_first_wave": 2,
    }


def test_a_rollout_of_one_wave_has_no_rest() -> None:
    figures = first_wave([30.0, 40.0], [1.0, 1.01], 5)
    assert figures["handoff_ms_first_wave_max"] == 40.0
    assert figures["handoff_ms_p99_after_first_wave"] is None
    assert first_wave([], [], 5)["first_wave_back_within_ms"] is None


def test_first_wave_cpu_per_process_per_handoff_and_busy_shares() -> None:
    back = (10.0, {"coordinator": 1.0, "apiserver": 2.0, "nodesim": 3.0})
    over = (10.1, {"coordinator": 1.08, "apiserver": 2.03, "nodesim": 3.05})  # 100 ms later
    figures = first_wave_cpu({"first_wave_back": back, "first_wave_handed_off": over}, 4, 2)
    assert figures == {
        "first_wave_window_ms": 100.0,
        "first_wave_cpu_ms": {"coordinator": 80.0, "apiserver": 30.0, "nodesim": 50.0},
        "first_wave_coordinator_cpu_ms_per_handoff": 20.0,
        "first_wave_coordinator_busy": 0.8,
        "first_wave_cores_busy": 0.8,  # 160 ms of CPU in 100 ms on 2 cores
    }


def test_first_wave_cpu_empty_without_both_probes_or_a_process_unread() -> None:
    back = (10.0, {"coordinator": 1.0, "apiserver": None})
    assert set(first_wave_cpu({"first_wave_back": back}, 4, 2).values()) == {None}
    partial = first_wave_cpu({"first_wave_back": back, "first_wave_handed_off": (10.1, back[1])}, 4, 2)
    assert partial["first_wave_cpu_ms"] == {"coordinator": 0.0, "apiserver": None}
    assert partial["first_wave_cores_busy"] is None and partial["first_wave_coordinator_busy"] == 0.0


def test_timeline_probes_the_first_node_back_and_the_last_first_wave_handoff() -> None:
    calls: list[float] = []

    def probe() -> dict[str, float | None]:
        calls.append(time.monotonic())
        return {"calls": float(len(calls))}

    timeline = Timeline(expected=6, wave=2, probe=probe)
    for node in ("a", "b"):  # the first wave's grants
        timeline.stage(node, time.monotonic())
    assert timeline.probes == {}
    timeline.restart("b")
    timeline.restart("a")
    assert timeline.probes["first_wave_back"][1] == {"calls": 1.0}
    timeline.stage("c", time.monotonic())
    timeline.stage("c", time.monotonic())  # the same node again: not a hand-off
    assert "first_wave_handed_off" not in timeline.probes
    timeline.stage("d", time.monotonic())
    timeline.stage("e", time.monotonic())
    assert timeline.probes["first_wave_handed_off"][1] == {"calls": 2.0} and len(calls) == 2
