"""Immutable topology: the rings of every pool and the prefix routes, built from a validated config.

A reload builds a new Topology and the server swaps one reference; requests in flight keep the one
they started with. Servers are identified by address: the same address in two pools is one Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from proxy.config.phase import Phase
from proxy.config.schema import PoolConfig, ProxyConfig
from proxy.routing.ring import Ring, ketama_label


@dataclass(frozen=True, slots=True)
class PoolTopology:
    name: str
    ring: Ring
    addrs: tuple[str, ...]  # ring node index -> server address "host:port"
    names: tuple[str, ...]  # ring node index -> display name (server name, else address)
    node_for: Callable[[bytes], int]  # key -> ring node index (the ring's own lookup)

    def addr_for(self, key: bytes) -> str:
        return self.addrs[self.ring.node_for(key)]


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


# What the planner, pub/sub and the client's fast path look keys up in: a pool, or a pool plus
# prefix routes (Keyspace). Both give addrs, node_for and addr_for.
Placement: TypeAlias = PoolTopology | Keyspace


@dataclass(frozen=True, slots=True)
class Topology:
    generation: int
    config: ProxyConfig
    config_hash: str
    pools: Mapping[str, PoolTopology]
    route: PoolTopology  # the default pool: owns every key no prefix route claims
    target: PoolTopology | None  # migration.to, while re-sharding
    phase: Phase  # migration phase, Phase.NONE when not re-sharding
    names: Mapping[str, str]  # address -> display name, for every server of every pool
    keyspace: Placement  # route plus the prefix routes, as configured: where keys are now
    # During a migration: the same with the source pool (migration.from, else route) replaced by
    # the target, wherever it appears, so routes naming the migrating pool follow it. Else None.
    moved: Placement | None
    source: PoolTopology | None  # the pool being re-sharded, while re-sharding

    def all_addrs(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for pool in self.pools.values():
            seen.update(dict.fromkeys(pool.addrs))
        return tuple(seen)


def build_pool(pool: PoolConfig) -> PoolTopology:
    labels = [ketama_label(s.host, s.port, s.name) for s in pool.servers]
    ring = Ring(
        labels,
        [s.weight for s in pool.servers],
        hash_name=pool.hash,
        distribution=pool.distribution,
        hash_tag=pool.hash_tag.encode(),
    )
    return PoolTopology(
        name=pool.name,
        ring=ring,
        addrs=tuple(s.addr for s in pool.servers),
        names=tuple(s.name or s.addr for s in pool.servers),
        node_for=ring.node_for,
    )


def build_placement(
    config: ProxyConfig, pools: Mapping[str, PoolTopology], swap: Mapping[str, str]
) -> Placement:
    """The route and prefix routes as one lookup; `swap` renames pools (source -> target)."""

    def pool(name: str) -> PoolTopology:
        return pools[swap.get(name, name)]

    routes = [(r.prefix.encode(), pool(r.pool)) for r in config.routes]
    return build_keyspace(pool(config.route), routes)


def build_topology(config: ProxyConfig, generation: int, config_hash: str) -> Topology:
    pools = {name: build_pool(p) for name, p in config.pools.items()}
    names: dict[str, str] = {}
    for pool in pools.values():
        for addr, name in zip(pool.addrs, pool.names, strict=True):
            names.setdefault(addr, name)
    migration = config.migration
    source = config.migration_source
    swap = {source: migration.to} if migration and source else {}
    return Topology(
        generation=generation,
        config=config,
        config_hash=config_hash,
        pools=MappingProxyType(pools),
        route=pools[config.route],
        target=pools[migration.to] if migration else None,
        phase=migration.phase if migration else Phase.NONE,
        names=MappingProxyType(names),
        keyspace=build_placement(config, pools, {}),
        moved=build_placement(config, pools, swap) if swap else None,
        source=pools[source] if source else None,
    )
