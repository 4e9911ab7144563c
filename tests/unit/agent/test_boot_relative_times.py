"""Start times and journalled times are seconds since boot, tied to the boot's id.

Aspects: `parse_stat` finds the state and start time after a command name holding spaces and
parentheses; `on_this_boot` keeps the times of this boot, puts a swap or restore of an earlier boot before
every process of this one (0, no old process), and moves the wall-clock times an earlier agent journalled
to this boot's clock (at 0 or less when they are from an earlier boot).
"""

from __future__ import annotations

import psutil
import pytest

from agent.discovery import CLOCK_TICKS, parse_stat, process_clock, process_stat
from agent.journal import JournalEntry, on_this_boot
from wire.messages import AgentPhase, Artifact, LeaseAssignment

LEASE = LeaseAssignment(lease_id="l1", plan="p", node="n1", target_version="v1.30.4+k3s1", plan_hash="h",
                        artifact=Artifact(url="http://x/k3s", sha256="a" * 64, name="k3s"))
WALL_BOOT = 1_790_000_000.0


def entry(**times: object) -> JournalEntry:
    return JournalEntry(lease=LEASE, phase=AgentPhase.APPLYING, binary="/usr/local/bin/k3s", **times)


@pytest.mark.parametrize("comm", ["k3s", "k3s server", "a) (b", ")"])
def test_parse_stat_counts_fields_after_the_last_parenthesis(comm: str) -> None:
    # fields 3-9, then 10-21 (faults, times, priority, nice, threads, itrealvalue), 22 the start time
    text = f"4242 ({comm}) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 123456 10 0\n"
    assert parse_stat(text) == ("S", 123456.0)


def test_this_process_started_before_now_on_the_same_clock() -> None:
    import os

    stat = process_stat(os.getpid())
    assert stat is not None and stat[0] in "RS"
    assert 0 < stat[1] <= process_clock() + 1 / CLOCK_TICKS
    # psutil's wall-clock start time is the boot's wall-clock time (whole seconds) plus the same figure
    assert abs(psutil.Process().create_time() - psutil.boot_time() - stat[1]) < 0.02


def test_same_boot_is_kept() -> None:
    mine = entry(boot_id="b1", swap_started_at=500.0, old_process=(7, 100.0))
    assert on_this_boot(mine, "b1", WALL_BOOT) is mine


def test_an_earlier_boot_is_before_every_process_of_this_one() -> None:
    moved = on_this_boot(entry(boot_id="b0", swap_started_at=90_000.0, rollback_started_at=90_010.0,
                               old_process=(7, 100.0)), "b1", WALL_BOOT)
    assert (moved.swap_started_at, moved.rollback_started_at, moved.old_process) == (0.0, 0.0, None)
    assert moved.boot_id == "b1"
    untouched = on_this_boot(entry(boot_id="b0"), "b1", WALL_BOOT)
    assert (untouched.swap_started_at, untouched.rollback_started_at) == (None, None)


def test_wall_clock_times_of_an_earlier_agent_move_to_this_boot() -> None:
    moved = on_this_boot(entry(swap_started_at=WALL_BOOT + 500.0, old_process=(7, WALL_BOOT + 100.0)),
                         "b1", WALL_BOOT)
    assert (moved.swap_started_at, moved.old_process, moved.boot_id) == (500.0, (7, 100.0), "b1")
    before_this_boot = on_this_boot(entry(swap_started_at=WALL_BOOT - 3_600.0), "b1", WALL_BOOT)
    assert before_this_boot.swap_started_at == 0.0
