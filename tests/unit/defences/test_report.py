from __future__ import annotations

from proxy.defences.report import merge_bigkeys, merge_counts, merge_hotkeys, render


def test_hot_rates_add_up_and_shares_are_recomputed() -> None:
    a = [{"pool": "p", "key": "k", "rate_per_s": 10, "count": 10, "backend": "b1",
          "backend_count": 20, "error": 0}]  # fmt: skip
    b = [{"pool": "p", "key": "k", "rate_per_s": 5, "count": 5, "backend": "b1",
          "backend_count": 30, "error": 1},
         {"pool": "p", "key": "j", "rate_per_s": 1, "count": 1, "backend": "b1",
          "backend_count": 30, "error": 0}]  # fmt: skip
    rows = merge_hotkeys([a, b], top=1)
    assert len(rows) == 1 and rows[0]["key"] == "k" and rows[0]["rate_per_s"] == 15
    assert rows[0]["backend_share"] == round(15 / 50, 4) and rows[0]["error"] == 1
    assert "k" in render(rows, ("pool", "key"))


def test_big_keys_keep_the_largest_and_counts_add_up() -> None:
    one = [{"key": "a", "bytes": 10, "direction": "reply"}]
    two = [{"key": "a", "bytes": 30, "direction": "reply"}, {"key": "b", "bytes": 20}]
    assert [r["bytes"] for r in merge_bigkeys([one, two], top=5)] == [30, 20]
    counts = merge_counts([[{"command": "get", "direction": "reply", "count": 2}]] * 2)
    assert counts == [{"command": "get", "direction": "reply", "count": 4}]
