from __future__ import annotations

from proxy.defences.store import ENTRY_OVERHEAD, ByteLRU


def test_budget_is_strict_and_least_recently_used_goes_first() -> None:
    size = 100 + 1 + ENTRY_OVERHEAD  # reply + key + overhead
    lru = ByteLRU(3 * size, ttl_s=10)
    for key in (b"a", b"b", b"c"):
        assert lru.put(("get", 2, key, b""), b"x" * 100, now=0)
    assert lru.get(("get", 2, b"a", b""), now=1) is not None  # a is now the most recent
    lru.put(("get", 2, b"d", b""), b"x" * 100, now=1)
    assert lru.bytes <= 3 * size and lru.evictions == 1
    assert lru.get(("get", 2, b"b", b""), now=1) is None
    assert not lru.put(("get", 2, b"e", b""), b"x" * (4 * size), now=1)  # never fits


def test_entries_expire_and_a_key_drops_all_its_entries() -> None:
    lru = ByteLRU(10_000, ttl_s=1)
    lru.put(("hget", 2, b"h", b"f1"), b"1", now=0)
    lru.put(("hget", 2, b"h", b"f2"), b"2", now=0)
    lru.put(("hgetall", 3, b"h", b""), b"3", now=0)
    lru.put(("get", 2, b"other", b""), b"4", now=0)
    lru.invalidate(b"h")
    assert len(lru) == 1
    assert lru.get(("get", 2, b"other", b""), now=0.5) == b"4"
    assert lru.get(("get", 2, b"other", b""), now=1.0) is None
    assert lru.bytes == 0
