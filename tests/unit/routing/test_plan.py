"""routing.plan.plan, the one planner, over every command kind x every migration phase; and
routing.merge: merges in the client's key order, the SCAN cursor arithmetic, refusals.

Pure: two pools of a re-shard (3 servers -> 5, the first 3 reused), no backend, no loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.commands.checks import refusal_before_routing
from proxy.commands.spec import CommandSpec, Kind, lookup
from proxy.config.schema import PoolConfig, ServerConfig
from proxy.migration.phases import RULES, Phase
from proxy.routing.merge import merge_replies
from proxy.routing.plan import DualPlan, mutates, plan
from proxy.routing.topology import PoolTopology, build_pool


def pool(name: str, count: int) -> PoolTopology:
    servers = tuple(ServerConfig("127.0.0.1", 7001 + i, 1, f"r{i + 1}") for i in range(count))
    return build_pool(PoolConfig(name, "murmur3", "ketama", "{}", servers))


SOURCE = pool("old", 3)
TARGET = pool("new", 5)
PHASES = list(RULES)  # None (no migration) and every phase


@dataclass(frozen=True)
class View:
    read: PoolTopology
    other: PoolTopology
    secondary_writes: bool


def view(phase: object) -> View:
    rules = RULES[phase]  # type: ignore[index]
    if phase is Phase.NONE:
        return View(SOURCE, SOURCE, False)
    read, other = (TARGET, SOURCE) if rules.reads_target else (SOURCE, TARGET)
    return View(read, other, rules.secondary_writes)


def a_key(moves: bool) -> bytes:
    """A key whose owner changes between the two rings (or not)."""
    keys = (b"k%d" % i for i in range(1000))
    return next(k for k in keys if (SOURCE.addr_for(k) != TARGET.addr_for(k)) is moves)


def spec_of(args: list[bytes]) -> CommandSpec:
    spec = lookup(args)
    assert spec is not None
    return spec


KEYED = [
    [b"GET", a_key(True)],
    [b"SET", a_key(True), b"v"],
    [b"INCR", a_key(False)],
    [b"MGET", *(b"m%d" % i for i in range(20))],
    [b"DEL", *(b"d%d" % i for i in range(20))],
    [b"MSET", *(x for i in range(10) for x in (b"s%d" % i, b"v"))],
    [b"RENAME", b"{t}a", b"{t}b"],
    [b"SINTERSTORE", b"{u}dst", b"{u}a", b"{u}b"],
]


@pytest.mark.parametrize("phase", PHASES, ids=str)
@pytest.mark.parametrize("args", KEYED, ids=lambda a: a[0].decode())
def test_keyed_requests_in_every_phase(phase: object, args: list[bytes]) -> None:
    spec = spec_of(args)
    v = view(phase)
    dual = plan(spec, args, v)
    assert dual.primary.error is None
    keys = tuple(args[p] for p in spec.key_positions(args))
    assert dual.keys == keys
    # The primary goes to the pool that answers reads, whatever the kind.
    for fragment in dual.primary.fragments:
        assert fragment.addr in v.read.addrs
        if spec.kind is Kind.MULTI and len(dual.primary.fragments) > 1:
            owned = fragment.args[1 :: spec.key_step]
            assert all(v.read.addr_for(k) == fragment.addr for k in owned)
        elif spec.kind is not Kind.MULTI:
            assert fragment.addr == v.read.addr_for(keys[0])
    # The secondary: only for writes, only in the phases that write both pools, only for the
    # keys whose owner changes, and to their owner in the other pool.
    written = v.secondary_writes and mutates(spec)
    moved = [k for k in keys if v.read.addr_for(k) != v.other.addr_for(k)]
    if not written or not moved:
        assert dual.secondary is None
        return
    assert dual.secondary is not None
    secondary_keys = [
        k for f in dual.secondary.fragments for k in f.args[1 :: max(spec.key_step, 1)][: len(keys)]
    ]
    for fragment in dual.secondary.fragments:
        assert fragment.addr in v.other.addrs
    if spec.kind is Kind.MULTI:
        assert sorted(secondary_keys) == sorted(moved)


def find_pair(same_read: bool, same_other: bool, v: View) -> tuple[bytes, bytes]:
    for i in range(5000):
        a, b = b"a%d" % i, b"b%d" % i
        if (v.read.addr_for(a) == v.read.addr_for(b)) is same_read and (
            v.other.addr_for(a) == v.other.addr_for(b)
        ) is same_other:
            return a, b
    raise AssertionError("no such pair")


@pytest.mark.parametrize("phase", PHASES, ids=str)
def test_same_backend_needs_one_backend_in_every_ring_written(phase: object) -> None:
    spec = spec_of([b"RENAME", b"a", b"b"])  # a write: both rings count while writing both
    v = view(phase)
    together = find_pair(True, True, v)
    assert plan(spec, [b"RENAME", *together], v).primary.error is None
    apart = find_pair(False, False, v)
    assert plan(spec, [b"RENAME", *apart], v).primary.error.startswith(b"-CROSSSLOT")  # type: ignore[union-attr]
    if v.read is not v.other:
        split_in_other = find_pair(True, False, v)
        error = plan(spec, [b"RENAME", *split_in_other], v).primary.error
        assert (error is not None) is v.secondary_writes


@pytest.mark.parametrize("phase", PHASES, ids=str)
@pytest.mark.parametrize(
    "args", [[b"DBSIZE"], [b"KEYS", b"*"], [b"FLUSHALL"], [b"SCRIPT", b"FLUSH"]], ids=repr
)
def test_fanout_in_every_phase(phase: object, args: list[bytes]) -> None:
    spec = spec_of(args)
    assert spec.kind is Kind.FANOUT
    v = view(phase)
    dual = plan(spec, args, v)
    addrs = {f.addr for f in dual.primary.fragments}
    both = (mutates(spec) and v.secondary_writes) or spec.name.startswith("script|")
    expected = set(v.read.addrs) | (set(v.other.addrs) if both else set())
    assert addrs == expected
    assert dual.secondary is None and dual.keys == ()


@pytest.mark.parametrize("phase", PHASES, ids=str)
def test_scan_cursor_walks_every_backend_of_the_read_pool(phase: object) -> None:
    spec = spec_of([b"SCAN", b"0"])
    v = view(phase)
    count = len(v.read.addrs)
    cursor, seen = 0, []
    for _ in range(count):
        dual = plan(spec, [b"SCAN", b"%d" % cursor], v)
        (fragment,) = dual.primary.fragments
        seen.append(fragment.addr)
        assert fragment.args[1] == b"0"  # each backend's own walk starts at 0 here
        reply = b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nx\r\n"  # that backend is done
        merged = merge_replies(dual.primary, [reply], False)
        cursor = int(merged.split(b"\r\n")[2])
    assert seen == list(v.read.addrs) and cursor == 0
    # A backend cursor that goes on is folded with the backend's index.
    dual = plan(spec, [b"SCAN", b"%d" % (7 * count + 1)], v)
    assert dual.primary.fragments[0].addr == v.read.addrs[1]
    assert dual.primary.fragments[0].args[1] == b"7"
    merged = merge_replies(dual.primary, [b"*2\r\n$2\r\n42\r\n*0\r\n"], False)
    assert merged.split(b"\r\n")[2] == b"%d" % (42 * count + 1)
    assert plan(spec, [b"SCAN", b"-1"], v).primary.error is not None


def test_merges_keep_the_clients_key_order() -> None:
    keys = [b"m%d" % i for i in range(30)]
    dual = plan(spec_of([b"MGET", *keys]), [b"MGET", *keys], view(Phase.NONE))
    assert len(dual.primary.fragments) > 1
    replies = []
    for fragment in dual.primary.fragments:  # each backend answers with its keys as values
        values = [b"$%d\r\n%s\r\n" % (len(k), k) for k in fragment.args[1:]]
        replies.append(b"*%d\r\n" % len(values) + b"".join(values))
    merged = merge_replies(dual.primary, replies, False)
    assert merged == b"*30\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in keys)
    dels = plan(spec_of([b"DEL", *keys]), [b"DEL", *keys], view(Phase.NONE)).primary
    counts = merge_replies(dels, [b":2\r\n"] * len(dels.fragments), False)
    assert counts == b":%d\r\n" % (2 * len(dels.fragments))


def test_keys_and_scan_never_show_reserved_keys() -> None:
    dual = plan(spec_of([b"KEYS", b"*"]), [b"KEYS", b"*"], view(Phase.NONE))
    reply = b"*2\r\n$1\r\na\r\n$17\r\n__shardproxy:x:gt\r\n"
    merged = merge_replies(dual.primary, [reply] * len(dual.primary.fragments), False)
    assert b"__shardproxy" not in merged and merged.startswith(b"*%d\r\n" % len(SOURCE.addrs))


def test_first_error_wins() -> None:
    dual = plan(spec_of([b"DBSIZE"]), [b"DBSIZE"], view(Phase.NONE))
    replies = [b":1\r\n"] * len(dual.primary.fragments)
    replies[1] = b"-ERR backend down\r\n"
    assert merge_replies(dual.primary, replies, False) == b"-ERR backend down\r\n"
    replies[1] = b"!5\r\nerror\r\n"
    assert merge_replies(dual.primary, replies, True) == b"!5\r\nerror\r\n"


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        ([b"GET", b"__shardproxy:m:backfill"], True),
        ([b"MGET", b"a", b"__shardproxy:x"], True),
        ([b"EVAL", b"return 1", b"1", b"__shardproxy:x"], True),
        ([b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"0"], False),  # sent as blocking
        ([b"BLPOP", b"a", b"__shardproxy:x", b"0"], True),
        ([b"SORT", b"k", b"BY", b"w_*"], True),
        ([b"COPY", b"a", b"b", b"DB", b"1"], True),
        ([b"GET", b"a"], False),
        ([b"SORT", b"k", b"BY", b"NOSORT"], False),
    ],
)
def test_refusals_before_routing(args: list[bytes], refused: bool) -> None:
    assert (refusal_before_routing(spec_of(args), args) is not None) is refused


def test_dual_plan_outside_a_migration_has_no_secondary() -> None:
    for args in KEYED:
        assert plan(spec_of(args), args, view(Phase.NONE)).secondary is None
    assert isinstance(plan(spec_of(KEYED[0]), KEYED[0], view(Phase.NONE)), DualPlan)
