"""`bench.rollout.first_wave`: where the slow hand-offs of a rollout are.

Aspects: the first `concurrency` hand-offs (in the order the slots were freed) are the first wave's, the
rest are the others'; hand-offs over 50 ms are counted in all and in the first wave; the first wave came
back within the span of the first `concurrency` `restarted` times (in time order, whatever the order
given); fewer hand-offs than a wave leave the others' figure empty.
"""

from __future__ import annotations

from bench.rollout import first_wave


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
