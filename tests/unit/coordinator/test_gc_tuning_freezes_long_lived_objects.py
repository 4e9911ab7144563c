"""coordinator.gc_tuning: thresholds raised at start-up; what is alive once caches are synced is frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from coordinator import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


def test_tune_and_freeze(restore_gc: None) -> None:
    gc_tuning.tune()
    wanted = (gc_tuning.GEN0_THRESHOLD, gc_tuning.GEN1_THRESHOLD, gc_tuning.GEN2_THRESHOLD)
    assert gc.get_threshold() == wanted
    cache = {f"node-{i}": {"labels": {"k": str(i)}} for i in range(1000)}
    before = gc.get_freeze_count()
    gc_tuning.freeze_long_lived()
    assert gc.get_freeze_count() >= before + len(cache)
    assert all(not gc.is_finalized(v) for v in cache.values())  # frozen, still alive and usable
    cache.clear()  # frozen objects are still freed by reference counting
