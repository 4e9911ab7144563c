"""`bench.rollout.bucket_ms`: the bucket of `k3s_upgrade_handoff_seconds` that holds a quantile.

Aspects: only what the rollout added counts (the scrape before it is subtracted, bucket by bucket); the
bound is the first bucket whose cumulative count reaches the quantile's share; past the last finite
bucket, or with no hand-off at all, there is no bound (None).
"""

from __future__ import annotations

from bench.rollout import bucket_ms


def scrape(counts: dict[str, float]) -> dict[str, float]:
    return {f"handoff le {le}": n for le, n in counts.items()}


def test_the_bound_is_the_first_bucket_reaching_the_share_of_the_rollout() -> None:
    before = scrape({"0.01": 5, "0.025": 5, "0.05": 5, "+Inf": 5})
    during = scrape({"0.01": 55, "0.025": 104, "0.05": 105, "+Inf": 105})  # rollout: 50, 49, 1, 0
    assert bucket_ms(before, during, 0.5) == 10.0
    assert bucket_ms(before, during, 0.51) == 25.0
    assert bucket_ms(before, during, 0.99) == 25.0
    assert bucket_ms(before, during, 1.0) == 50.0


def test_no_bound_past_the_last_bucket_or_without_handoffs() -> None:
    during = scrape({"0.01": 1, "0.05": 98, "+Inf": 100})
    assert bucket_ms({}, during, 0.98) == 50.0
    assert bucket_ms({}, during, 0.99) is None
    assert bucket_ms({}, scrape({"0.01": 0, "+Inf": 0}), 0.5) is None
    assert bucket_ms({}, {}, 0.5) is None
