"""The route table: one topology resolved to live Backend objects, immutable once built.

What a client needs per request, and the planner's view (routing.plan.RouteView): ring lookups
that return Backends; during a migration, the pool that answers reads, the other pool, and
whether writes also go there. A reload builds a new table and swaps one reference (the server's
`router`); requests in flight finish on the table they started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from proxy.migration.phases import RULES, Phase
from proxy.net.backend import Backend
from proxy.routing.topology import Placement, PoolTopology, Topology


@dataclass(frozen=True, slots=True)
class RouteTable:
    topology: Topology
    route: PoolTopology  # the default pool (owns every key no prefix route claims)
    node_for: Callable[[bytes], int]  # the keyspace's lookup: the route ring's, or prefix routes'
    route_backends: tuple[Backend, ...]  # by keyspace node index (every pool a key is routed to)
    backends: Mapping[str, Backend]  # every backend of the topology, by address
    # Single-key requests may take the client's fast path (one ring, one backend) only when no
    # migration phase asks for a second ring.
    fast: bool
    read: Placement  # answers reads (and the writes' replies): a pool, or it plus prefix routes
    other: Placement  # a migration's other side; `read` itself outside one
    secondary_writes: bool  # writes are also applied to `other`
    shadow_ratio: float  # share of safe reads compared on both pools
    shadow: bool

    def backend_for(self, key: bytes) -> Backend:
        return self.route_backends[self.node_for(key)]


class RouteRef:
    """The route table in use now, one object shared by the server and its clients: a reload
    sets `table` once, and a client reads it with native attribute loads (through the server,
    a Python object, it would be a dictionary lookup per request in the compiled build)."""

    __slots__ = ("table",)

    def __init__(self, table: RouteTable) -> None:
        self.table = table


def build_route_table(topology: Topology, backends: Mapping[str, Backend]) -> RouteTable:
    rules = RULES[topology.phase]
    route = topology.route
    keyspace = topology.keyspace
    moved = topology.moved or keyspace
    read, other = (moved, keyspace) if rules.reads_target else (keyspace, moved)
    cfg = topology.config.migration
    shadow_ratio = cfg.shadow_sample_ratio if cfg is not None else 0.0
    return RouteTable(
        topology=topology,
        route=route,
        node_for=keyspace.node_for,
        route_backends=tuple(backends[a] for a in keyspace.addrs),
        backends=MappingProxyType({a: backends[a] for a in topology.all_addrs()}),
        fast=topology.phase is Phase.NONE,
        read=read,
        other=other,
        secondary_writes=rules.secondary_writes,
        shadow_ratio=shadow_ratio,
        shadow=rules.shadow_compare and shadow_ratio > 0,
    )
