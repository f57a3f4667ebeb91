from __future__ import annotations

import random
from collections import Counter

from proxy.defences.topk import SUB_WINDOWS, BigItem, LargestSeen, SlidingTopK, SpaceSaving


def test_space_saving_never_underestimates_and_keeps_the_heavy_keys() -> None:
    rng = random.Random(3)
    keys = [f"k{i}" for i in range(5000)]
    weights = [1 / (r + 1) ** 1.2 for r in range(len(keys))]
    stream = rng.choices(keys, weights, k=50_000)
    summary: SpaceSaving[str] = SpaceSaving(200)
    for key in stream:
        summary.add(key)
    real = Counter(stream)
    assert len(summary.counts) == 200 and summary.total == len(stream)
    for key, count in summary.counts.items():
        assert real[key] <= count <= real[key] + summary.errors[key]
    for key, count in real.items():  # every key above total/capacity is present
        if count > len(stream) / 200:
            assert key in summary.counts
    top = sorted(summary.counts, key=summary.counts.__getitem__, reverse=True)[:10]
    assert set(top) == {k for k, _ in real.most_common(10)}


def test_sliding_window_forgets_old_sub_windows() -> None:
    window: SlidingTopK[str] = SlidingTopK(10, 60.0, now=0.0)
    for _ in range(5):
        window.current.add("old")
    assert window.top(1)[0].count == 5
    assert window.rotate(10.0) and window.covered_s(10.0) >= 10.0
    window.current.add("new")
    assert {r.key: r.count for r in window.top(5)} == {"old": 5, "new": 1}
    assert not window.rotate(15.0)
    window.rotate(10.0 + 10.0 * SUB_WINDOWS)  # a whole window later: "old" is gone
    assert [r.key for r in window.top(5)] == ["new"] or window.top(5) == []
    window.rotate(1000.0)
    assert window.top(5) == [] and window.total() == 0


def test_largest_seen_keeps_the_biggest_per_key_and_direction() -> None:
    seen = LargestSeen(2)
    seen.add(BigItem(b"a", 10, "get", "reply"))
    seen.add(BigItem(b"a", 5, "get", "reply"))
    seen.add(BigItem(b"b", 20, "set", "request"))
    seen.add(BigItem(b"c", 1, "set", "request"))
    assert [(i.key, i.size) for i in seen.largest()] == [(b"b", 20), (b"a", 10)]
