"""Maintenance windows and version-skew safety rules.

Aspects (windows): days by name/abbreviation, empty days = every day, start/end in the plan's time zone,
an end before the start wraps past midnight and belongs to the start day, bad fields name the field.
Aspects (skew): downgrade refused, minor skip refused, agent past its servers refused; each allowed by its
opt-in; a patch upgrade within a minor and a one-minor step are fine.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coordinator.skew import SkewPolicy, check, checker
from coordinator.windows import WindowError, parse_window

MON_0930_UTC = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("days", "start", "end", "tz", "now", "inside"),
    [
        (None, "09:00", "10:00", None, MON_0930_UTC, True),
        (None, "10:00", "11:00", None, MON_0930_UTC, False),
        (["monday"], "09:00", "10:00", None, MON_0930_UTC, True),
        (["tue", "wed"], "09:00", "10:00", None, MON_0930_UTC, False),
        (None, "09:00", "10:00", "Europe/Berlin", MON_0930_UTC, False),  # 10:30 in Berlin
        (None, "10:00", "11:00", "Europe/Berlin", MON_0930_UTC, True),
        (["sunday"], "22:00", "10:00", None, MON_0930_UTC, True),  # Sunday night window, Monday morning
        (["monday"], "22:00", "10:00", None, MON_0930_UTC, False),
        (["mo"], "09:30", "09:31", None, MON_0930_UTC, True),
    ],
)
def test_window_contains(days: list[str] | None, start: str, end: str, tz: str | None, now: datetime,
                         inside: bool) -> None:
    assert parse_window(days, start, end, tz).contains(now) is inside


@pytest.mark.parametrize(
    ("days", "start", "end", "tz", "field"),
    [(["funday"], None, None, None, "days"), (None, "25:00", None, None, "startTime"),
     (None, None, "noon", None, "endTime"), (None, None, None, "Mars/Olympus", "timeZone")],
)
def test_window_errors_name_the_field(days: list[str] | None, start: str | None, end: str | None,
                                      tz: str | None, field: str) -> None:
    with pytest.raises(WindowError, match=f"window.{field}"):
        parse_window(days, start, end, tz)


SERVERS = ["v1.30.2+k3s1"]


@pytest.mark.parametrize(
    ("current", "target", "server", "policy", "problem"),
    [
        ("v1.30.1+k3s1", "v1.30.2+k3s1", True, SkewPolicy(), None),
        ("v1.29.9+k3s1", "v1.30.2+k3s1", True, SkewPolicy(), None),
        ("v1.30.2+k3s2", "v1.30.2+k3s1", True, SkewPolicy(), "downgrade"),
        ("v1.30.2+k3s2", "v1.30.2+k3s1", True, SkewPolicy(allow_downgrade=True), None),
        ("v1.28.9+k3s1", "v1.30.2+k3s1", True, SkewPolicy(), "skip a minor"),
        ("v1.28.9+k3s1", "v1.30.2+k3s1", True, SkewPolicy(allow_minor_skip=True), None),
        ("v1.30.1+k3s1", "v1.30.3+k3s1", False, SkewPolicy(), "servers first"),
        ("v1.30.1+k3s1", "v1.30.3+k3s1", False, SkewPolicy(allow_agent_skew=True), None),
        ("v1.30.1+k3s1", "v1.30.2+k3s1", False, SkewPolicy(), None),
        (None, "v1.30.2+k3s1", True, SkewPolicy(), None),
    ],
)
def test_skew_rules(current: str | None, target: str, server: bool, policy: SkewPolicy,
                    problem: str | None) -> None:
    out = check("n1", current, target, server, SERVERS, policy)
    if problem is None:
        assert out is None
    else:
        assert out is not None and problem in out and "n1" in out
    # The per-pass checker answers the same for every node, from its cache after the first.
    many = checker(target, SERVERS, policy)
    for node in ("n1", "node-2", "n1"):
        assert many(node, current, server) == check(node, current, target, server, SERVERS, policy)


def test_checker_reports_a_bad_target_for_every_node() -> None:
    many = checker("latest", SERVERS, SkewPolicy())
    alone = check("a", "v1.30.1+k3s1", "latest", True, SERVERS, SkewPolicy())
    assert many("a", "v1.30.1+k3s1", True) == alone
    assert many("b", "v1.30.1+k3s1", True) is not None
