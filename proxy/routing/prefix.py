"""Prefix routes: which pool owns a key, and one lookup over several pools (a Keyspace).

A key (or a pub/sub channel) that starts with a route's prefix belongs to that route's pool, the
longest matching prefix winning; every other key belongs to the default pool (`route`). A
Keyspace numbers the nodes of all those pools in one index space (the default pool's first), so
a node index still names one backend and the client's fast path stays one call and one tuple
index. Without routes the default pool itself is the keyspace: no cost at all. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:  # topology.py builds keyspaces: it imports this module
    from proxy.routing.topology import Placement, PoolTopology

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


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The default pool plus prefix routes, looked up as one pool with more nodes."""

    name: str  # for logs: the default pool's name and the routes
    addrs: tuple[str, ...]  # node index -> address, the default pool's nodes first
    node_for: Callable[[bytes], int]  # key -> node index, prefix routes applied
    default: PoolTopology
    routes: tuple[tuple[bytes, PoolTopology], ...]  # (prefix, pool), in config order

    def addr_for(self, key: bytes) -> str:
        return self.addrs[self.node_for(key)]


def build_keyspace(
    default: PoolTopology, routes: Sequence[tuple[bytes, PoolTopology]]
) -> Placement:
    """One lookup over `default` and the pools of `routes`; `default` itself without routes."""
    if not routes:
        return default
    addrs = list(default.addrs)
    offsets: list[tuple[bytes, tuple[int, Callable[[bytes], int]]]] = []
    for prefix, pool in routes:
        offsets.append((prefix, (len(addrs), pool.ring.node_for)))
        addrs.extend(pool.addrs)
    default_node_for = default.ring.node_for
    table = dict(offsets)
    claimed = tuple(table)
    lengths = tuple(sorted({len(p) for p in table}, reverse=True))

    def node_for(key: bytes) -> int:  # LongestPrefix.match inlined: it is the client's hot path
        if key.startswith(claimed):
            for n in lengths:
                hit = table.get(key[:n])
                if hit is not None:
                    return hit[0] + hit[1](key)
        return default_node_for(key)

    shown = ", ".join(f"{p.decode(errors='replace')}* -> {pool.name}" for p, pool in routes)
    return Keyspace(
        name=f"{default.name} ({shown})",
        addrs=tuple(addrs),
        node_for=node_for,
        default=default,
        routes=tuple(routes),
    )


def pool_matcher(default: str, routes: Sequence[tuple[bytes, str]]) -> Callable[[bytes], str]:
    """key -> the name of the pool that owns it (for the jobs, which skip other pools' keys)."""
    if not routes:
        return lambda key: default
    match = LongestPrefix(routes).match

    def pool_of(key: bytes) -> str:
        name = match(key)
        return default if name is None else name

    return pool_of
