"""Routing, pure: a request plus an immutable pool topology -> a plan of fragments and a merge.

The single-key hot path lives in the client (one ring lookup); this module plans the requests
that touch several keys or every backend, and merges their fragments' raw replies back into one
reply in the client's key order. No await, clock or metric here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.codec.resp import OK, encode_array_raw, encode_int, parse_int_reply, split_aggregate
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.spec import CommandSpec, Kind, Merge
from proxy.routing.topology import PoolTopology


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


def plan_multi(spec: CommandSpec, args: list[bytes], pool: PoolTopology) -> Plan:
    """MGET MSET DEL UNLINK EXISTS TOUCH: one fragment per backend, keys in client order."""
    step = spec.key_step
    cmd = args[0]
    ring = pool.ring
    addrs = pool.addrs
    groups: dict[int, tuple[list[bytes], list[int]]] = {}
    nkeys = 0
    for i in range(1, len(args), step):
        node = ring.node_for(args[i])
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


def plan_same_backend(spec: CommandSpec, args: list[bytes], pools: Sequence[PoolTopology]) -> Plan:
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


def plan_fanout(spec: CommandSpec, args: list[bytes], pool: PoolTopology) -> Plan:
    if spec.merge is Merge.SCAN:
        return _plan_scan(args, pool)
    addrs = dict.fromkeys(pool.addrs)
    return Plan(tuple(Fragment(a, args) for a in addrs), spec.merge)


def _plan_scan(args: list[bytes], pool: PoolTopology) -> Plan:
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


def merge_replies(plan: Plan, replies: Sequence[bytes], resp3: bool) -> bytes:
    """Combine the raw replies of `plan`'s fragments (same order) into the client's reply."""
    merge = plan.merge
    if merge is None:
        return replies[0]
    if merge is Merge.KILL:
        return _merge_kill(replies)
    for raw in replies:
        if raw[:1] in (b"-", b"!"):
            return raw  # the first error wins, as a failed single command would
    if merge is Merge.SUM:
        return encode_int(sum(parse_int_reply(r) or 0 for r in replies))
    if merge is Merge.OK:
        return OK
    if merge is Merge.FIRST:
        return replies[0]
    if merge is Merge.VALUES:
        return _merge_values(plan, replies)
    if merge is Merge.CONCAT:
        items: list[bytes] = []
        for raw in replies:
            items.extend(split_aggregate(raw) or ())
        return encode_array_raw(_visible(items) if RESERVED_PREFIX in b"".join(items) else items)
    if merge is Merge.ALL:
        return _merge_all(replies)
    if merge is Merge.SCAN:
        return _merge_scan(plan, replies[0])
    raise AssertionError(f"unhandled merge {merge}")


def _merge_kill(replies: Sequence[bytes]) -> bytes:
    """+OK when any backend stopped its script; else the first error other than NOTBUSY (a
    -BUSY naming the other KILL, -UNKILLABLE, a backend unavailable), as one Redis would
    answer; else Redis's -NOTBUSY."""
    if any(raw[:1] == b"+" for raw in replies):
        return OK
    for raw in replies:
        if not raw.startswith(b"-NOTBUSY"):
            return raw
    return errors.notbusy()


def _merge_values(plan: Plan, replies: Sequence[bytes]) -> bytes:
    values: list[bytes] = [b""] * plan.nkeys
    for fragment, raw in zip(plan.fragments, replies, strict=True):
        elements = split_aggregate(raw) or []
        for pos, element in zip(fragment.positions, elements, strict=True):
            values[pos] = element
    return encode_array_raw(values)


def _merge_all(replies: Sequence[bytes]) -> bytes:
    columns = [split_aggregate(r) or [] for r in replies]
    merged = [
        encode_int(int(all(parse_int_reply(e) for e in row))) for row in zip(*columns, strict=True)
    ]
    return encode_array_raw(merged)


def _merge_scan(plan: Plan, raw: bytes) -> bytes:
    parts = split_aggregate(raw)
    if parts is None or len(parts) != 2:
        return raw
    head, keys = parts
    backend_cursor = int(head[head.index(b"\r\n") + 2 : -2])
    index, count = plan.scan_index, plan.scan_count
    if backend_cursor:
        cursor = backend_cursor * count + index
    else:
        cursor = index + 1 if index + 1 < count else 0
    text = b"%d" % cursor
    if RESERVED_PREFIX in keys:  # rare: split only then (a page may get shorter, or empty)
        keys = encode_array_raw(_visible(split_aggregate(keys) or []))
    return b"*2\r\n$%d\r\n%s\r\n" % (len(text), text) + keys


def _visible(items: list[bytes]) -> list[bytes]:
    """KEYS and SCAN elements (raw bulk strings) without the proxy's reserved keys."""
    return [i for i in items if not i[i.index(b"\r\n") + 2 :].startswith(RESERVED_PREFIX)]


_KEYED = frozenset({Kind.SINGLE, Kind.MULTI, Kind.SAME_BACKEND})


def refusal_before_routing(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """The error to answer instead of routing a keyed request, or None.

    Keys under RESERVED_PREFIX are the proxy's own (the migration gate, lease, cursors): a
    command naming one as a key, wherever the command table says its keys are, is refused.
    Then the same-backend commands that cannot be proxied as sent (same_backend_refusal)."""
    kind = spec.kind
    if kind not in _KEYED:
        return None
    for position in spec.key_positions(args):
        if args[position].startswith(RESERVED_PREFIX):
            return errors.reserved_key(spec.name)
    return same_backend_refusal(spec, args) if kind is Kind.SAME_BACKEND else None


def kind_needs_plan(kind: Kind) -> bool:
    return kind in (Kind.MULTI, Kind.SAME_BACKEND, Kind.FANOUT)


# -- migration: a read pool and, for writes, a second pool -----------------------------------

_SCRIPTS = frozenset({"eval", "evalsha", "fcall"})


def mutates(spec: CommandSpec) -> bool:
    """Does the command (possibly) write? Scripts are assumed to."""
    return spec.write or spec.name in _SCRIPTS


@dataclass(frozen=True, slots=True)
class DualPlan:
    primary: Plan  # answers the client
    secondary: Plan | None  # also applied to the other pool; its replies are only checked
    keys: tuple[bytes, ...]  # every key the request touches (for the per-key fence)


def plan_migrating(
    spec: CommandSpec,
    args: list[bytes],
    read: PoolTopology,
    other: PoolTopology,
    writes_to_other: bool,
) -> DualPlan:
    """Plan a request during a migration phase.

    Reads go to `read`. Writes are answered by `read` and, when `writes_to_other`, also applied
    to `other`, except for keys both rings place on the same address (written once). Commands
    that need their keys together must have them together in both rings.
    """
    kind = spec.kind
    write = writes_to_other and mutates(spec)
    if kind is Kind.FANOUT:
        return DualPlan(_fanout_migrating(spec, args, read, other, write), None, ())
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
    spec: CommandSpec, args: list[bytes], read: PoolTopology, other: PoolTopology
) -> Plan | None:
    step = spec.key_step
    moved: list[bytes] = [args[0]]
    for i in range(1, len(args), step):
        if read.addr_for(args[i]) != other.addr_for(args[i]):
            moved.extend(args[i : i + step])
    if len(moved) == 1:
        return None
    return plan_multi(spec, moved, other)


def _fanout_migrating(
    spec: CommandSpec, args: list[bytes], read: PoolTopology, other: PoolTopology, write: bool
) -> Plan:
    if not write and not spec.name.startswith("script|") and spec.merge is not Merge.KILL:
        return plan_fanout(spec, args, read)  # DBSIZE KEYS SCAN: the pool that answers reads
    # FLUSH* and SCRIPT LOAD/EXISTS/FLUSH: every server of both pools, so EVALSHA works on both;
    # SCRIPT KILL and FUNCTION KILL too: a script may run on either pool.
    addrs = dict.fromkeys((*read.addrs, *other.addrs))
    return Plan(tuple(Fragment(a, args) for a in addrs), spec.merge)


def same_backend_refusal(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """Why a same-backend command cannot be proxied as sent (the error to answer), or None: an
    XREAD BLOCK would hold a shared backend connection; see also _cross_database_option."""
    if _has_block_option(spec, args):
        return errors.blocking_option(spec.name)
    return _cross_database_option(spec, args)


def _cross_database_option(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """COPY ... DB n reaches another database; SORT BY/GET patterns read keys that may live on
    other backends (Redis Cluster refuses them too)."""
    name = spec.name
    if name == "copy":
        if any(a.upper() == b"DB" for a in args[3:]):
            return errors.select_db()
    elif name in ("sort", "sort_ro"):
        upper = [a.upper() for a in args[2:]]
        for i, word in enumerate(upper[:-1]):
            pattern = args[i + 3]
            if (word == b"BY" and pattern.upper() != b"NOSORT" and b"*" in pattern) or (
                word == b"GET" and pattern != b"#"
            ):
                return errors.sort_pattern()
    return None


def _has_block_option(spec: CommandSpec, args: list[bytes]) -> bool:
    if spec.name not in ("xread", "xreadgroup"):
        return False
    return any(a.upper() == b"BLOCK" for a in args[1:])
