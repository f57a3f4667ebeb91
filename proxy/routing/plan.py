"""Routing, pure: a request plus the route table in use -> a plan of fragments and a merge.

`plan` is the one planner for every kind sent to backends, inside a migration or not (a dual
plan: the primary answers the client, the secondary is the migration's second write). The
client's single-key fast path stands in for it when no migration runs (one ring lookup).
No await, clock or metric here; merging the replies is merge.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from proxy import errors
from proxy.commands.spec import CommandSpec, Kind, Merge
from proxy.routing.topology import Placement


@dataclass(frozen=True, slots=True)
class Fragment:
    addr: str  # backend address
    args: list[bytes]  # the request for that backend
    positions: tuple[int, ...] = ()  # MULTI: index of each of its keys in the client's key order


@dataclass(frozen=True, slots=True)
class Plan:
    fragments: tuple[Fragment, ...]
    merge: Merge | None  # None: the single fragment's reply is the reply
    nkeys: int = 0  # MULTI: how many keys the client asked for
    scan_index: int = 0  # SCAN: which backend of the pool the fragment goes to
    scan_count: int = 0  # SCAN: how many backends the cursor walks
    error: bytes | None = None  # a reply the proxy gives instead of forwarding


def error_plan(reply: bytes) -> Plan:
    return Plan((), None, error=reply)


def plan_multi(spec: CommandSpec, args: list[bytes], pool: Placement) -> Plan:
    """MGET MSET DEL UNLINK EXISTS TOUCH: one fragment per backend, keys in client order."""
    step = spec.key_step
    cmd = args[0]
    node_for = pool.node_for
    addrs = pool.addrs
    groups: dict[int, tuple[list[bytes], list[int]]] = {}
    nkeys = 0
    for i in range(1, len(args), step):
        node = node_for(args[i])
        group = groups.get(node)
        if group is None:
            group = groups[node] = ([cmd], [])
        group[0].extend(args[i : i + step])
        group[1].append(nkeys)
        nkeys += 1
    if len(groups) == 1:
        (node,) = groups
        return Plan((Fragment(addrs[node], args),), None, nkeys=nkeys)
    fragments = tuple(
        Fragment(addrs[node], fargs, tuple(pos)) for node, (fargs, pos) in groups.items()
    )
    return Plan(fragments, spec.merge, nkeys=nkeys)


def plan_same_backend(spec: CommandSpec, args: list[bytes], pools: Sequence[Placement]) -> Plan:
    """Several keys that must live on one backend in every ring in use, else CROSSSLOT."""
    positions = spec.key_positions(args)
    route = pools[0]
    if not positions:
        # No key (EVAL with numkeys 0): any backend can run it; spread by the first argument.
        key = args[1] if len(args) > 1 else args[0]
        return Plan((Fragment(route.addr_for(key), args),), None)
    addr = ""
    for pool in pools:
        owners = {pool.addr_for(args[p]) for p in positions}
        if len(owners) != 1:
            return error_plan(errors.cross_backend(spec.name))
        if pool is route:
            (addr,) = owners
    return Plan((Fragment(addr, args),), None)


def plan_fanout(spec: CommandSpec, args: list[bytes], pool: Placement) -> Plan:
    if spec.merge is Merge.SCAN:
        return _plan_scan(args, pool)
    addrs = dict.fromkeys(pool.addrs)
    return Plan(tuple(Fragment(a, args) for a in addrs), spec.merge)


def _plan_scan(args: list[bytes], pool: Placement) -> Plan:
    addrs = tuple(dict.fromkeys(pool.addrs))
    try:
        cursor = int(args[1])
    except ValueError:
        return error_plan(errors.invalid_cursor())
    if cursor < 0:
        return error_plan(errors.invalid_cursor())
    count = len(addrs)
    index, backend_cursor = cursor % count, cursor // count
    fargs = [args[0], b"%d" % backend_cursor, *args[2:]]
    return Plan((Fragment(addrs[index], fargs),), Merge.SCAN, scan_index=index, scan_count=count)


# -- migration: a read pool and, for writes, a second pool -----------------------------------

_SCRIPTS: Final = frozenset({"eval", "evalsha", "fcall"})


def mutates(spec: CommandSpec) -> bool:
    """Does the command (possibly) write? Scripts are assumed to."""
    return spec.write or spec.name in _SCRIPTS


@dataclass(frozen=True, slots=True)
class DualPlan:
    primary: Plan  # answers the client
    secondary: Plan | None  # also applied to the other pool; its replies are only checked
    keys: tuple[bytes, ...]  # every key the request touches (for the per-key fence)


class RouteView(Protocol):
    """What the planner needs of the route table in use (proxy.net.route.RouteTable)."""

    @property
    def read(self) -> Placement: ...  # answers reads, and the writes' replies

    @property
    def other(self) -> Placement: ...  # a migration's other pool (`read` itself outside one)

    @property
    def secondary_writes(self) -> bool: ...  # writes are also applied to `other`


def plan(spec: CommandSpec, args: list[bytes], view: RouteView) -> DualPlan:
    """THE planner: where a request goes, for every kind that is sent to backends.

    Reads go to `view.read`. Writes are answered by `read` and, during the phases that write
    both pools, also applied to `other`, except for keys both rings place on the same address
    (written once). Commands that need their keys together must have them together in every
    ring in use. Outside a migration `secondary` is always None.
    """
    kind = spec.kind
    read, other = view.read, view.other
    write = view.secondary_writes and mutates(spec)
    if kind is Kind.FANOUT:
        return DualPlan(_fanout(spec, args, read, other, write), None, ())
    positions = spec.key_positions(args)
    keys = tuple(args[p] for p in positions)
    if kind is Kind.MULTI:
        primary = plan_multi(spec, args, read)
        secondary = _multi_secondary(spec, args, read, other) if write else None
        return DualPlan(primary, secondary, keys)
    pools = [read, other] if write else [read]
    if kind is Kind.SAME_BACKEND:
        primary = plan_same_backend(spec, args, pools)
    else:
        primary = Plan((Fragment(read.addr_for(keys[0] if keys else args[1]), args),), None)
    secondary = None
    if write and primary.error is None and keys:
        addr = other.addr_for(keys[0])
        if addr != primary.fragments[0].addr:
            secondary = Plan((Fragment(addr, args),), None)
    return DualPlan(primary, secondary, keys)


def _multi_secondary(
    spec: CommandSpec, args: list[bytes], read: Placement, other: Placement
) -> Plan | None:
    step = spec.key_step
    moved: list[bytes] = [args[0]]
    for i in range(1, len(args), step):
        if read.addr_for(args[i]) != other.addr_for(args[i]):
            moved.extend(args[i : i + step])
    if len(moved) == 1:
        return None
    return plan_multi(spec, moved, other)


_EVERYWHERE = ("script|", "function|")


def _fanout(
    spec: CommandSpec, args: list[bytes], read: Placement, other: Placement, write: bool
) -> Plan:
    if not write and not spec.name.startswith(_EVERYWHERE) and spec.merge is not Merge.KILL:
        return plan_fanout(spec, args, read)  # DBSIZE KEYS SCAN: the pool that answers reads
    # FLUSH*, SCRIPT and FUNCTION: every server of both pools, so EVALSHA and FCALL work on both;
    # SCRIPT KILL and FUNCTION KILL too: a script may run on either pool.
    addrs = dict.fromkeys((*read.addrs, *other.addrs))
    return Plan(tuple(Fragment(a, args) for a in addrs), spec.merge)
