"""A refused MULTI must not let the commands queued after it run.

Until transactions are supported, MULTI is refused, and every command up to EXEC or DISCARD is
refused without running: a client that sees its transaction fail must find nothing of it applied,
so its retry cannot apply an INCR twice. Each test sends the bytes a real client sends for its
transaction (redis-cli typed, redis-py 8 `pipeline()`, ioredis 6 `multi()`, node-redis 6
`multi().exec()`), then checks the backends directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.runner import ProxyThread, proxy_for
from tests.support.wire import Err, RespConn, encode


@pytest.fixture(scope="module")
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    with proxy_for([b.addr for b in backends3]) as p:
        yield p


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer]) -> None:
    for s in backends3:
        s.client().flushall()


def stored(backends: list[RedisServer], key: str) -> list[bytes]:
    """The value of `key` on every backend that has it (a plain GET, straight to Redis)."""
    return [v for v in (s.client().get(key) for s in backends) if v is not None]


def batch(port: int, commands: list[list[bytes | str]], hello3: bool = False) -> list[object]:
    """Send every command in one write (as pipelining clients do); the decoded replies."""
    with RespConn(port) as conn:
        if hello3:
            conn.call("HELLO", "3")
        conn.send(b"".join(encode(c) for c in commands))
        return [conn.read_reply()[1] for _ in commands]


def is_err(reply: object, prefix: str = "") -> bool:
    return isinstance(reply, Err) and reply.text.startswith(prefix)


TRANSACTION: list[list[bytes | str]] = [
    ["SET", "tx:a", "1"],
    ["INCR", "tx:n"],
    ["RPUSH", "tx:l", "x"],
    ["MSET", "tx:b", "2", "tx:c", "3"],
    ["DEL", "tx:pre"],
]
WRITTEN = ("tx:a", "tx:n", "tx:l", "tx:b", "tx:c")


@pytest.mark.parametrize(
    ("client", "hello3"),
    [("redis-py 8 pipeline()", True), ("ioredis 6 multi()", False), ("node-redis 6", False)],
)
def test_pipelined_transaction_writes_nothing(
    proxy: ProxyThread, backends3: list[RedisServer], client: str, hello3: bool
) -> None:
    # redis-py, ioredis and node-redis all write MULTI, the queued commands and EXEC at once.
    r = redis.Redis(port=proxy.port)
    r.set("tx:pre", "kept")
    replies = batch(proxy.port, [["MULTI"], *TRANSACTION, ["EXEC"]], hello3)
    assert is_err(replies[0], "ERR MULTI is not supported")
    for reply in replies[1:-1]:
        assert is_err(reply, "ERR"), reply
    assert is_err(replies[-1], "EXECABORT")
    for key in WRITTEN:
        assert stored(backends3, key) == [], key
    assert stored(backends3, "tx:pre") == [b"kept"]
    # The connection is usable again after EXEC, and so is the next transaction's refusal.
    replies = batch(proxy.port, [["MULTI"], ["INCR", "tx:n"], ["EXEC"], ["INCR", "tx:n"]])
    assert is_err(replies[2], "EXECABORT")
    assert replies[3] == 1
    assert stored(backends3, "tx:n") == [b"1"]


def test_redis_cli_typed_transaction(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    # redis-cli sends one command, waits for its reply, then the next.
    with RespConn(proxy.port) as conn:
        assert is_err(conn.call("MULTI")[1], "ERR MULTI is not supported")
        assert is_err(conn.call("INCR", "tx:n")[1], "ERR 'incr' refused without running")
        assert is_err(conn.call("GET", "tx:n")[1], "ERR")  # reads too: nothing runs
        assert is_err(conn.call("MULTI")[1], "ERR MULTI calls can not be nested")
        assert is_err(conn.call("WATCH", "tx:n")[1], "ERR WATCH inside MULTI")
        assert is_err(conn.call("NOSUCH")[1], "ERR unknown command")
        assert conn.call("DISCARD")[1] == ("+", b"OK")
        assert conn.call("INCR", "tx:n")[1] == 1  # after DISCARD, commands run again
        assert conn.call("EXEC")[1] != ("+", b"OK")  # no refused MULTI left: not an EXECABORT
    assert stored(backends3, "tx:n") == [b"1"]


def test_reset_and_fast_path_after_refused_multi(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    with RespConn(proxy.port) as conn:
        conn.call("MULTI")
        # One request per write takes the proxy's single-key fast path: refused there too.
        for _ in range(3):
            assert is_err(conn.call("SET", "tx:a", "1")[1], "ERR")
        assert conn.call("RESET")[1] == ("+", b"RESET")
        assert conn.call("SET", "tx:a", "2")[1] == ("+", b"OK")
    assert stored(backends3, "tx:a") == [b"2"]


def test_redis_py_pipeline_fails_and_applies_nothing(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    r = redis.Redis(port=proxy.port)
    for _ in range(3):  # a retrying application
        with pytest.raises(redis.ResponseError):
            r.pipeline().incr("tx:n").set("tx:a", "x").execute()
    assert stored(backends3, "tx:n") == []
    assert stored(backends3, "tx:a") == []
    assert r.incr("tx:n") == 1
    assert r.ping()
