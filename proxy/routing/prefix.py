"""Prefix routes: which pool owns a key (LongestPrefix); topology.Keyspace is the one lookup.

A key (or a pub/sub channel) that starts with a route's prefix belongs to that route's pool, the
longest matching prefix winning; every other key belongs to the default pool (`route`). A
Keyspace numbers the nodes of all those pools in one index space (the default pool's first), so
a node index still names one backend and the client's fast path stays one call and one tuple
index. Without routes the default pool itself is the keyspace: no cost at all. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class LongestPrefix(Generic[T]):
    """prefix -> value; `match(key)` is the value of the longest prefix of key, else None.

    A C-level `startswith(tuple)` turns away the keys no route claims (most traffic), then
    one dict probe per distinct prefix length, longest first."""

    __slots__ = ("_any", "_lengths", "_table")

    def __init__(self, items: Sequence[tuple[bytes, T]]) -> None:
        self._table = dict(items)
        self._any = tuple(self._table)
        self._lengths = tuple(sorted({len(p) for p in self._table}, reverse=True))

    def match(self, key: bytes) -> T | None:
        if not key.startswith(self._any):
            return None
        table = self._table
        for n in self._lengths:
            hit = table.get(key[:n])
            if hit is not None:
                return hit
        return None  # pragma: no cover - startswith found a prefix, one length holds it


def pool_matcher(default: str, routes: Sequence[tuple[bytes, str]]) -> Callable[[bytes], str]:
    """key -> the name of the pool that owns it (for the jobs, which skip other pools' keys)."""
    if not routes:
        return lambda key: default
    match = LongestPrefix(routes).match

    def pool_of(key: bytes) -> str:
        name = match(key)
        return default if name is None else name

    return pool_of
