"""The fleet merges of the admin commands: RANDOMKEY, CONFIG GET, FUNCTION LIST."""

from __future__ import annotations

import pytest

from proxy.commands.spec import Merge
from proxy.routing.merge import merge_replies
from proxy.routing.plan import Fragment, Plan


def _plan(merge: Merge, n: int) -> Plan:
    return Plan(tuple(Fragment(f"h:{i}", [b"X"]) for i in range(n)), merge)


def test_randomkey_picks_among_backends_that_have_a_key() -> None:
    replies = [b"$-1\r\n", b"$1\r\na\r\n", b"$1\r\nb\r\n", b"$21\r\n__shardproxy:lease:x\r\n"]
    seen = {merge_replies(_plan(Merge.RANDOM, 4), replies, False) for _ in range(200)}
    assert seen == {b"$1\r\na\r\n", b"$1\r\nb\r\n"}  # never nil, never a reserved key


@pytest.mark.parametrize(("resp3", "nil"), [(False, b"$-1\r\n"), (True, b"_\r\n")])
def test_randomkey_nil_when_empty_and_error_when_nothing_answered(resp3: bool, nil: bytes) -> None:
    plan = _plan(Merge.RANDOM, 2)
    assert merge_replies(plan, [nil, nil], resp3) == nil
    assert merge_replies(plan, [nil, b"-ERR down\r\n"], resp3) == b"-ERR down\r\n"
    assert merge_replies(plan, [b"$1\r\nk\r\n", b"-ERR down\r\n"], resp3) == b"$1\r\nk\r\n"


def test_config_get_union_first_value_and_no_secrets() -> None:
    a = b"*4\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$11\r\nrequirepass\r\n$2\r\npw\r\n"
    b = b"*4\r\n$9\r\nmaxmemory\r\n$1\r\n5\r\n$7\r\nappendx\r\n$2\r\nno\r\n"
    merged = merge_replies(_plan(Merge.CONFIG, 2), [a, b], False)
    assert merged == b"*4\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$7\r\nappendx\r\n$2\r\nno\r\n"
    resp3 = merge_replies(_plan(Merge.CONFIG, 1), [b"%1\r\n$1\r\nx\r\n$1\r\n1\r\n"], True)
    assert resp3 == b"%1\r\n$1\r\nx\r\n$1\r\n1\r\n"


def _lib(name: bytes) -> bytes:
    return b"*4\r\n$12\r\nlibrary_name\r\n$%d\r\n%s\r\n$6\r\nengine\r\n$3\r\nLUA\r\n" % (
        len(name),
        name,
    )


def test_function_list_each_library_once() -> None:
    one = b"*2\r\n" + _lib(b"a") + _lib(b"b")
    two = b"*2\r\n" + _lib(b"b") + _lib(b"c")
    merged = merge_replies(_plan(Merge.LIBRARIES, 2), [one, two], False)
    assert merged == b"*3\r\n" + _lib(b"a") + _lib(b"b") + _lib(b"c")
