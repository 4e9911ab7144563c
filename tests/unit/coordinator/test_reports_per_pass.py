"""`reconciler.reports_per_pass`: how many waiting reports one pass takes, by the plans' slots."""

from __future__ import annotations

import pytest

from coordinator.reconciler import MIN_REPORTS_PER_PASS, reports_per_pass


@pytest.mark.parametrize(
    ("slots", "taken"),
    [(0, MIN_REPORTS_PER_PASS), (1, MIN_REPORTS_PER_PASS), (32, 4), (33, 5), (50, 7), (200, 25), (1000, 125)],
)
def test_an_eighth_of_the_slots_and_never_fewer_than_the_minimum(slots: int, taken: int) -> None:
    assert reports_per_pass(slots) == taken
