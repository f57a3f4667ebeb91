"""The hot-key cache's store: raw replies by request, within a strict byte budget, LRU order,
each kept at most `ttl_s`.

An entry is indexed by the Redis key it was read from, so a write drops every entry of its key
(GET, HGET of each field, HGETALL, MGET's part) at once. Sizes count the reply, the request and
a fixed overhead per entry, and the sum never exceeds `max_bytes`. Pure: the clock is an argument.
"""

from __future__ import annotations

from collections import OrderedDict

ENTRY_OVERHEAD = 160  # bytes: the dict slots, tuple and bookkeeping of one entry, roughly
# (command, protocol, key, field): what a reply depends on; field b"" when none.
CacheKey = tuple[str, int, bytes, bytes]


class ByteLRU:
    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[CacheKey, tuple[bytes, float, int]] = OrderedDict()
        self._by_key: dict[bytes, set[CacheKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ck: CacheKey, now: float) -> bytes | None:
        entry = self._entries.get(ck)
        if entry is None:
            return None
        reply, expires, _ = entry
        if now >= expires:
            self._drop(ck)
            return None
        self._entries.move_to_end(ck)
        return reply

    def put(self, ck: CacheKey, reply: bytes, now: float) -> bool:
        size = len(reply) + len(ck[2]) + len(ck[3]) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        if ck in self._entries:
            self._drop(ck)
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._entries[ck] = (reply, now + self.ttl_s, size)
        self._by_key.setdefault(ck[2], set()).add(ck)
        self.bytes += size
        return True

    def invalidate(self, key: bytes) -> bool:
        """Drop every entry of `key`; True if there was any."""
        entries = self._by_key.get(key)
        if not entries:
            return False
        for ck in list(entries):
            self._drop(ck)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self.bytes = 0

    def _drop(self, ck: CacheKey) -> None:
        _, _, size = self._entries.pop(ck)
        self.bytes -= size
        keys = self._by_key[ck[2]]
        keys.discard(ck)
        if not keys:
            del self._by_key[ck[2]]
