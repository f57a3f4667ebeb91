"""The hot path's histogram bucket lookup (unrolled in net/metrics.py) against bisect_left."""

from __future__ import annotations

import random
from bisect import bisect_left

from proxy.net.metrics import LATENCY_BUCKETS_S, FastHistogram, latency_bucket


def test_latency_bucket_is_bisect_left() -> None:
    rng = random.Random(7)
    values = [b * f for b in LATENCY_BUCKETS_S for f in (0.5, 0.999999, 1.0, 1.000001, 1.5)]
    values += [rng.random() * 20 for _ in range(5000)] + [rng.random() / 500 for _ in range(5000)]
    values += [0.0, -1.0, 1e9, float("inf")]
    for value in values:
        assert latency_bucket(value) == bisect_left(LATENCY_BUCKETS_S, value), value


def test_observe_counts_in_the_bucket_of_its_bound() -> None:
    hist = FastHistogram()
    hist.observe(0.0001)  # a bound belongs to its own bucket (le=)
    hist.observe(0.3)
    hist.observe(99.0)
    assert hist.buckets[1] == 1
    assert hist.buckets[LATENCY_BUCKETS_S.index(0.5)] == 1
    assert hist.buckets[-1] == 1
    assert hist.count == 3
