"""The transaction planner (routing/txplan.py): one backend for every key, in every ring written.

Pure: the same two pools as test_plan.py (3 servers -> 5, the first 3 reused).
"""

from __future__ import annotations

from proxy.migration.phases import Phase
from proxy.routing.txplan import Queued, plan_transaction
from tests.unit.routing.test_plan import SOURCE, TARGET, a_key, spec_of, view


def queued(*commands: list[bytes]) -> list[Queued]:
    return [(spec_of(args), args) for args in commands]


def tagged(moves: bool) -> bytes:
    """A hash tag whose owner changes between the rings (or not)."""
    return b"{" + a_key(moves) + b"}"


def test_keys_on_one_backend_run_there() -> None:
    tag = tagged(False)
    txn = queued([b"SET", tag + b"a", b"1"], [b"INCR", tag + b"n"], [b"PING"])
    p = plan_transaction(txn, view(Phase.NONE), None, 0)
    assert p.error is None and p.secondary is None
    assert p.addr == SOURCE.addr_for(tag)
    assert p.keys == (tag + b"a", tag + b"n")


def test_keys_on_two_backends_are_refused() -> None:
    keys = [b"x%d" % i for i in range(20)]
    p = plan_transaction(queued(*([b"SET", k, b"1"] for k in keys)), view(Phase.NONE), None, 0)
    assert p.error is not None and p.error.startswith(b"-CROSSSLOT")


def test_keyless_runs_on_the_pin_or_spreads() -> None:
    txn = queued([b"PING"], [b"TIME"])
    assert plan_transaction(txn, view(Phase.NONE), None, 4).addr == SOURCE.addrs[4 % 3]
    assert plan_transaction(txn, view(Phase.NONE), "127.0.0.1:7002", 4).addr == "127.0.0.1:7002"


def test_a_pinned_transaction_must_stay_on_its_backend() -> None:
    tag = tagged(False)
    other = next(a for a in SOURCE.addrs if a != SOURCE.addr_for(tag))
    p = plan_transaction(queued([b"GET", tag]), view(Phase.NONE), other, 0)
    assert p.error is not None


def test_double_write_sends_the_writes_of_moved_keys_to_the_target() -> None:
    tag = tagged(True)
    txn = queued([b"GET", tag + b"r"], [b"INCR", tag + b"n"], [b"RPUSH", tag + b"l", b"x"])
    for phase in (Phase.DOUBLE_WRITE, Phase.BACKFILL):
        p = plan_transaction(txn, view(phase), None, 0)
        assert p.addr == SOURCE.addr_for(tag)
        assert p.secondary == TARGET.addr_for(tag)
        assert p.writes == (1, 2)  # the GET is not sent twice
    p = plan_transaction(txn, view(Phase.CUT_READ), None, 0)
    assert (p.addr, p.secondary) == (TARGET.addr_for(tag), SOURCE.addr_for(tag))
    p = plan_transaction(txn, view(Phase.RETIRE), None, 0)
    assert (p.addr, p.secondary, p.writes) == (TARGET.addr_for(tag), None, ())


def test_unmoved_keys_are_written_once() -> None:
    tag = tagged(False)
    p = plan_transaction(queued([b"SET", tag, b"1"]), view(Phase.DOUBLE_WRITE), None, 0)
    assert p.secondary is None and p.writes == ()


def test_publish_is_placed_by_its_channel_and_never_written_to_the_other_pool() -> None:
    """kombu's result backend: MULTI, SET {celery}meta, PUBLISH {celery}meta ..., EXEC."""
    tag = tagged(True)
    txn = queued([b"SET", tag + b"m", b"v"], [b"PUBLISH", tag + b"m", b"v"])
    p = plan_transaction(txn, view(Phase.DOUBLE_WRITE), None, 0)
    assert p.error is None and p.addr == SOURCE.addr_for(tag)
    assert p.secondary == TARGET.addr_for(tag) and p.writes == (0,)  # the SET only
    away = next(b"c%d" % i for i in range(1000) if SOURCE.addr_for(b"c%d" % i) != p.addr)
    apart = plan_transaction(queued([b"SET", tag + b"m", b"v"], [b"PUBLISH", away, b"v"]),
                             view(Phase.NONE), None, 0)  # fmt: skip
    assert apart.error is not None and apart.error.startswith(b"-CROSSSLOT")
