"""Keys under `__shardproxy:` belong to the proxy (the migration gate, lease, cursors).

Through the proxy a client can neither name one as a key in any command (single-key fast path,
pipelined or not, split, same-backend, scripts, streams...) nor see one in KEYS or SCAN. Each
test puts reserved keys on the backends directly, then checks what the proxy let through and
what the backends hold afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from proxy.commands.spec import lookup
from proxy.migration.keys import RESERVED_PREFIX
from tests.support.processes import RedisServer, free_port
from tests.support.runner import ProxyThread, proxy_for, running_proxy, simple_config
from tests.support.wire import Err, RespConn, encode

GATE = b"__shardproxy:0123456789ab:gate"
LEASE = b"__shardproxy:0123456789ab:lease"
FORGED = b"__shardproxy:0123456789ab:forged"
TAGGED = b"__shardproxy:{t}:x"  # same backend as {t}:a, so only the reserved check refuses

# Every shape of command the command table knows keys for, each naming a reserved key.
REFUSED: list[list[bytes | str]] = [
    ["GET", GATE],
    ["get", LEASE],
    ["SET", FORGED, "v"],
    ["SET", GATE, '{"backfill": "done", "mismatches_after_repair": 0}'],
    ["DEL", GATE],
    ["DEL", "plain:1", GATE],
    ["UNLINK", LEASE],
    ["EXISTS", GATE],
    ["MGET", "plain:1", GATE],
    ["MSET", "plain:9", "x", FORGED, "y"],
    ["EXPIRE", GATE, "1"],
    ["TYPE", GATE],
    ["OBJECT", "ENCODING", GATE],
    ["EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", FORGED],
    ["EVAL", "return 1", "2", "{t}:a", TAGGED],
    ["FCALL", "f", "1", FORGED],
    ["RENAME", "{t}:a", TAGGED],
    ["COPY", "{t}:a", TAGGED],
    ["LMOVE", "{t}:l", TAGGED, "LEFT", "RIGHT"],
    ["SORT", "{t}:l", "STORE", TAGGED],
    ["SINTERSTORE", TAGGED, "{t}:s"],
    ["XREAD", "COUNT", "1", "STREAMS", "{t}:x", TAGGED, "0", "0"],
    ["XADD", FORGED, "*", "f", "v"],
]


@pytest.fixture(scope="module")
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    with proxy_for([b.addr for b in backends3]) as p:
        yield p


@pytest.fixture(autouse=True)
def _state(backends3: list[RedisServer]) -> None:
    """Plain keys through nobody, and reserved keys on every backend, as migrations leave them."""
    for i, s in enumerate(backends3):
        with s.client() as c:
            c.flushall()
            c.set(GATE, b"real gate")
            c.set(LEASE, b"runner")
            c.set(b"__shardproxy:0123456789ab:cursor:%d" % i, b"17")


def reserved_on_backends(backends: list[RedisServer]) -> set[bytes]:
    found: set[bytes] = set()
    for s in backends:
        with s.client() as c:
            found |= {k for k in c.keys(b"*") if k.startswith(RESERVED_PREFIX)}
    return found


def rejected(proxy: ProxyThread, label: str) -> int:
    async def read() -> int:
        assert proxy.server is not None
        return proxy.server.metrics.command_stats(label).rejected

    return proxy.call(read())  # type: ignore[no-any-return]


def assert_untouched(backends: list[RedisServer]) -> None:
    assert len(reserved_on_backends(backends)) == 5  # gate, lease, three cursors
    for s in backends:
        with s.client() as c:
            assert c.get(GATE) == b"real gate"
            assert c.ttl(GATE) == -1
            assert c.get(FORGED) is None and c.get(TAGGED) is None


@pytest.mark.parametrize("command", REFUSED, ids=lambda c: " ".join(map(str, c[:2])))
def test_a_reserved_key_is_refused_unpipelined(
    proxy: ProxyThread, backends3: list[RedisServer], command: list[bytes | str]
) -> None:
    """One request per read: the single-key fast path must refuse it too."""
    spec = lookup([a if isinstance(a, bytes) else a.encode() for a in command])
    assert spec is not None
    name = spec.label
    before = rejected(proxy, name)
    with RespConn(proxy.port) as conn:
        _, reply = conn.call(*command)
        assert isinstance(reply, Err), reply
        assert "reserved" in reply.text and "__shardproxy:" in reply.text, reply.text
        assert conn.call("PING")[1] == ("+", b"PONG")  # the connection still serves
    assert rejected(proxy, name) == before + 1
    assert_untouched(backends3)


def test_reserved_keys_are_refused_in_a_pipeline_in_order(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    """Every refused command between good ones, in one write: the good ones run, in order."""
    commands: list[list[bytes | str]] = []
    for i, command in enumerate(REFUSED):
        commands += [["SET", f"plain:{i}", str(i)], command, ["GET", f"plain:{i}"]]
    with RespConn(proxy.port) as conn:
        conn.send(b"".join(encode(c) for c in commands))
        replies = [conn.read_reply()[1] for _ in commands]
    for i in range(len(REFUSED)):
        ok, refused, value = replies[3 * i : 3 * i + 3]
        assert ok == ("+", b"OK") and value == str(i).encode(), (ok, value)
        assert isinstance(refused, Err) and "reserved" in refused.text, (REFUSED[i], refused)
    assert_untouched(backends3)


def test_keys_and_scan_never_show_reserved_keys(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    plain = {b"plain:%d" % i for i in range(40)}
    with redis.Redis(port=proxy.port, protocol=2) as c:
        c.mset({k: b"v" for k in plain})
        assert set(c.keys(b"*")) == plain
        assert set(c.keys(b"__shardproxy:*")) == set()
        for count in (1, 3, 1000):
            seen: list[bytes] = []
            cursor, calls = 0, 0
            while True:
                cursor, page = c.scan(cursor, count=count)
                seen += page
                calls += 1
                assert calls < 1000, "SCAN did not terminate"
                if cursor == 0:
                    break
            assert set(seen) == plain, count
        assert set(c.scan_iter(match=b"__shardproxy:*")) == set()
        assert c.dbsize() == len(plain) + 9  # DBSIZE still counts them (README says so)
    with redis.Redis(port=proxy.port, protocol=3) as c3:
        assert set(c3.keys(b"*")) == plain
        assert set(c3.scan_iter(count=2)) == plain
    assert len(reserved_on_backends(backends3)) == 5


def test_a_reserved_key_is_refused_during_a_migration(backends3: list[RedisServer]) -> None:
    """In a migration phase every request goes through dispatch and the dual plan: refused
    before it."""
    addrs = [b.addr for b in backends3]
    migration = (
        "  new:\n    servers:\n"
        + "".join(f"      - {a}:1 n{i}\n" for i, a in enumerate(addrs))
        + "route: main\nmigration:\n  to: new\n  phase: double-write\n"
    )
    text = simple_config(addrs[:2], free_port(), free_port()) + migration
    with running_proxy(text) as proxy:
        assert proxy.call(_phase(proxy)) == "double-write"
        with RespConn(proxy.port) as conn:
            commands = [["SET", FORGED, "v"], ["GET", GATE], ["SET", "plain:1", "v"]]
            conn.send(b"".join(encode(c) for c in commands))
            replies = [conn.read_reply()[1] for _ in commands]
        assert [isinstance(r, Err) and "reserved" in r.text for r in replies] == [True, True, False]
    assert_untouched(backends3)


async def _phase(proxy: ProxyThread) -> str:
    assert proxy.server is not None
    return str(proxy.server.status()["phase"])
