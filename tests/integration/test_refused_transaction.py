"""Transactions through the proxy: MULTI/EXEC/DISCARD queued by the proxy, WATCH pinned.

A transaction either runs whole, atomically on its one backend, or not at all: a queue-time error
(EXECABORT) or keys on several backends (CROSSSLOT) apply nothing. Each test sends what a real
client sends (redis-cli typed, redis-py 8 `pipeline()` and `transaction()`, ioredis and
node-redis `multi()` in one write) and checks the backends directly, or against a plain
redis-server given the same commands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, pool_yaml, proxy_for, running_proxy
from tests.support.wire import Err, RespConn, encode, parse


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


# Keys with one hash tag: one backend.
TRANSACTION: list[list[bytes | str]] = [
    ["SET", "{tx}a", "1"],
    ["INCR", "{tx}n"],
    ["RPUSH", "{tx}l", "x"],
    ["MSET", "{tx}b", "2", "{tx}c", "3"],
    ["DEL", "{tx}pre"],
    ["PING"],
    ["GET", "{tx}a"],
]
WRITTEN = ("{tx}a", "{tx}n", "{tx}b", "{tx}c")


@pytest.mark.parametrize(
    ("client", "hello3"),
    [("redis-py 8 pipeline()", True), ("ioredis 6 multi()", False), ("node-redis 6", False)],
)
def test_pipelined_transaction_runs_like_redis(
    proxy: ProxyThread, backends3: list[RedisServer], client: str, hello3: bool
) -> None:
    # redis-py, ioredis and node-redis all write MULTI, the queued commands and EXEC at once.
    plain = backends3[0]
    commands: list[list[bytes | str]] = [["SET", "{tx}pre", "kept"], ["MULTI"], *TRANSACTION]
    commands.append(["EXEC"])
    mine = batch(proxy.port, commands, hello3)
    plain.client().flushall()
    theirs = batch(plain.port, commands, hello3)
    assert mine == theirs
    assert mine[1] == ("+", b"OK") and all(r == ("+", b"QUEUED") for r in mine[2:-1])
    for key in WRITTEN:
        assert stored(backends3, key) != [], key
    assert stored(backends3, "{tx}pre") == []


def test_queue_time_error_applies_nothing(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    for bad in (["NOSUCH"], ["GET"], ["KEYS", "*"], ["CONFIG", "GET", "x"], ["SUBSCRIBE", "c"]):
        replies = batch(
            proxy.port, [["MULTI"], ["INCR", "tx:n"], bad, ["SET", "tx:a", "1"], ["EXEC"]]
        )
        assert replies[1] == ("+", b"QUEUED")
        assert is_err(replies[2], "ERR"), (bad, replies[2])
        assert is_err(replies[-1], "EXECABORT Transaction discarded because of previous errors.")
    assert stored(backends3, "tx:n") == [] and stored(backends3, "tx:a") == []


def test_redis_cli_typed_transaction(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    # redis-cli sends one command, waits for its reply, then the next.
    with RespConn(proxy.port) as conn:
        assert is_err(conn.call("EXEC")[1], "ERR EXEC without MULTI")
        assert is_err(conn.call("DISCARD")[1], "ERR DISCARD without MULTI")
        assert conn.call("MULTI")[1] == ("+", b"OK")
        assert conn.call("INCR", "tx:n")[1] == ("+", b"QUEUED")  # no fast path inside MULTI
        # Nested MULTI and WATCH inside MULTI are refused without aborting, as Redis does.
        assert is_err(conn.call("MULTI")[1], "ERR MULTI calls can not be nested")
        assert is_err(conn.call("WATCH", "tx:n")[1], "ERR WATCH inside MULTI is not allowed")
        assert conn.call("INCR", "tx:n")[1] == ("+", b"QUEUED")
        assert conn.call("EXEC")[1] == [1, 2]
        assert conn.call("MULTI")[1] == ("+", b"OK")
        assert conn.call("INCR", "tx:n")[1] == ("+", b"QUEUED")
        assert conn.call("DISCARD")[1] == ("+", b"OK")
        assert conn.call("INCR", "tx:n")[1] == 3  # after DISCARD, commands run again
        conn.call("MULTI")
        conn.call("INCR", "tx:n")
        assert conn.call("RESET")[1] == ("+", b"RESET")  # RESET discards at once
        assert conn.call("SET", "tx:a", "2")[1] == ("+", b"OK")
    assert stored(backends3, "tx:n") == [b"3"]
    assert stored(backends3, "tx:a") == [b"2"]


def test_cross_backend_transaction_applies_nothing(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    keys = [f"cross:{i}" for i in range(20)]  # surely on more than one backend
    commands: list[list[bytes | str]] = [["MULTI"], *(["SET", k, "1"] for k in keys), ["EXEC"]]
    replies = batch(proxy.port, commands)
    assert is_err(replies[-1], "CROSSSLOT")
    for key in keys:
        assert stored(backends3, key) == []
    r = redis.Redis(port=proxy.port)
    with pytest.raises(redis.ResponseError, match="map to different backends"):
        r.pipeline().set("cross:1", "1").set("cross:2", "2").set("cross:3", "3").execute()


def test_redis_py_pipeline_resp2_and_resp3(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    for protocol in (2, 3):
        r = redis.Redis(port=proxy.port, protocol=protocol)
        plain = redis.Redis(port=backends3[0].port, protocol=protocol)
        results = []
        for client in (r, plain):
            client.delete("{p}h", "{p}z", "{p}s")
            pipe = client.pipeline()
            pipe.hset("{p}h", mapping={"a": "1", "b": "2"}).hgetall("{p}h")
            pipe.zadd("{p}z", {"m": 1.5}).zrange("{p}z", 0, -1, withscores=True)
            pipe.sadd("{p}s", "x").smembers("{p}s").get("{p}none").incrbyfloat("{p}f", 0.5)
            results.append(pipe.execute())
            client.delete("{p}f")
        assert results[0] == results[1], protocol


def test_watch_transaction_under_contention(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    """r.transaction(func, key) retries on WATCH conflicts; 4 other clients INCR the same key."""
    r = redis.Redis(port=proxy.port)
    r.set("counter", 0)
    incrs_each = 300

    def hammer() -> None:
        c = redis.Redis(port=proxy.port)
        for _ in range(incrs_each):
            c.incr("counter")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()

    calls = [0]

    def add_two(pipe: redis.client.Pipeline) -> None:
        calls[0] += 1
        value = int(pipe.get("counter") or 0)
        pipe.multi()
        pipe.set("counter", value + 2)

    try:
        for _ in range(20):
            r.transaction(add_two, "counter")
    finally:
        for t in threads:
            t.join()
    assert int(r.get("counter") or 0) == 20 * 2 + 4 * incrs_each
    print(f"{calls[0] - 20} WATCH retries")  # how much contention there was (not asserted)
    wait_until(lambda: dedicated(proxy) == 0, 5, "watch connections released")


def dedicated(proxy: ProxyThread) -> int:
    assert proxy.server is not None
    backends = proxy.server.routes.backends.values()
    return sum(b.stats.dedicated.get("watch", 0) for b in backends)


def test_watch_conflict_gives_nil_and_release(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    other = redis.Redis(port=proxy.port)
    for hello3, nil in ((False, b"*-1\r\n"), (True, b"_\r\n")):
        with RespConn(proxy.port) as conn:
            if hello3:
                conn.call("HELLO", "3")
            assert conn.call("WATCH", "{w}k")[1] == ("+", b"OK")
            assert dedicated(proxy) == 1
            assert conn.call("GET", "{x}other")[1] is None  # another backend: as in Redis
            other.set("{w}k", "changed")
            assert conn.call("MULTI")[1] == ("+", b"OK")
            assert conn.call("SET", "{w}k", "mine")[1] == ("+", b"QUEUED")
            assert conn.call("EXEC")[0] == nil  # the watched key changed
            assert conn.call("GET", "{x}other")[1] is None  # unpinned again
        assert stored(backends3, "{w}k") == [b"changed"]
    wait_until(lambda: dedicated(proxy) == 0, 5, "watch connections released")


def test_while_watching_fanouts_wait_for_nothing_owed_on_the_pin(proxy: ProxyThread) -> None:
    with RespConn(proxy.port) as conn:
        assert conn.call("WATCH", "{w}k")[1] == ("+", b"OK")
        assert isinstance(conn.call("DBSIZE")[1], int)  # nothing owed on the pin: runs
        assert isinstance(conn.call("MGET", "{w}k", "{x}k")[1], list)
        # Pipelined behind a request on the pin, a fan-out could overtake it: refused.
        raw = conn.pipeline([["SET", "{w}k", "1"], ["DBSIZE"], ["MGET", "{w}k", "{x}k"]])
        replies = [parse(r)[0] for r in raw]
        assert replies[0] == ("+", b"OK")
        assert is_err(replies[1], "ERR 'dbsize' cannot")
        assert is_err(replies[2], "CROSSSLOT")
        assert conn.call("UNWATCH")[1] == ("+", b"OK")


def test_disconnect_while_watching_releases_the_connection(proxy: ProxyThread) -> None:
    conns = [RespConn(proxy.port) for _ in range(3)]
    for i, conn in enumerate(conns):
        conn.__enter__()
        assert conn.call("WATCH", f"{{d}}k{i}")[1] == ("+", b"OK")
    assert dedicated(proxy) == 3
    for conn in conns:
        conn.__exit__(None, None, None)
    wait_until(lambda: dedicated(proxy) == 0, 5, "watch connections released on disconnect")
    with RespConn(proxy.port) as conn:  # UNWATCH releases too
        conn.call("WATCH", "{d}k")
        assert conn.call("UNWATCH")[1] == ("+", b"OK")
        wait_until(lambda: dedicated(proxy) == 0, 5, "watch connection released on UNWATCH")


def test_transaction_during_double_write_reaches_the_target(tmp_path: object) -> None:
    with redis_servers(3) as servers:
        old = pool_yaml("old", [s.addr for s in servers[:2]])
        new = pool_yaml("new", [s.addr for s in servers])
        text = (
            f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{free_port()}\n"
            "backend:\n  command_timeout_ms: 2000\n"
            f"pools:\n{old}{new}route: old\nmigration:\n  to: new\n  phase: double-write\n"
        )
        with running_proxy(text) as proxy:
            assert proxy.server is not None
            routes = proxy.server.routes
            moved = next(
                f"{{m{i}}}"
                for i in range(1000)
                if routes.read.addr_for(f"{{m{i}}}".encode())
                != routes.other.addr_for(f"{{m{i}}}".encode())
            )
            r = redis.Redis(port=proxy.port)
            for _ in range(3):
                out = r.pipeline().incr(moved + "n").rpush(moved + "l", "x").execute()
            assert out == [3, 3]
            source = redis.Redis.from_url(f"redis://{routes.read.addr_for(moved.encode())}")
            target = redis.Redis.from_url(f"redis://{routes.other.addr_for(moved.encode())}")
            wait_until(lambda: target.get(moved + "n") == b"3", 5, "secondary block applied")
            assert source.get(moved + "n") == target.get(moved + "n") == b"3"
            assert source.lrange(moved + "l", 0, -1) == target.lrange(moved + "l", 0, -1)

            # A key held by the backfill's fence defers the whole block until it is released.
            state = proxy.server.migration
            key = (moved + "n").encode()
            owners = [
                routes.backends[routes.read.addr_for(key)],
                routes.backends[routes.other.addr_for(key)],
            ]
            proxy.call(state.hold(key, owners))
            with RespConn(proxy.port) as conn:
                cid = conn.call("CLIENT", "ID")[1]
                conn.send(encode(["MULTI"]) + encode(["INCR", key]) + encode(["EXEC"]))
                wait_until(lambda: state.waiting_for(cid) is not None, 5, "block deferred")
                assert source.get(key) == b"3"  # nothing of it ran

                async def release() -> None:
                    state.release(key)

                proxy.call(release())
                assert [conn.read_reply()[1] for _ in range(3)][2] == [4]
            wait_until(lambda: target.get(key) == b"4", 5, "deferred block's secondary write")
            assert source.get(key) == b"4"

            # WATCH-guarded: the secondary block goes out once the EXEC ran.
            def bump(pipe: redis.client.Pipeline) -> None:
                value = int(pipe.get(moved + "w") or 0)
                pipe.multi()
                pipe.set(moved + "w", value + 1)

            for _ in range(3):
                r.transaction(bump, moved + "w")
            wait_until(lambda: target.get(moved + "w") == b"3", 5, "watched block applied")
            assert source.get(moved + "w") == b"3"


def test_watch_connections_are_bounded(backends3: list[RedisServer]) -> None:
    extra = "backend:\n  max_watch_connections: 1\n"
    text = (
        f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{free_port()}\n{extra}"
        f"pools:\n{pool_yaml('main', [b.addr for b in backends3])}"
    )
    with running_proxy(text) as proxy, RespConn(proxy.port) as a, RespConn(proxy.port) as b:
        assert a.call("WATCH", "{b}k")[1] == ("+", b"OK")
        assert is_err(b.call("WATCH", "{b}k")[1], "ERR backend s")  # names backend and limit
        assert a.call("UNWATCH")[1] == ("+", b"OK")
        wait_until(lambda: dedicated(proxy) == 0, 5, "watch connection released")
        assert b.call("WATCH", "{b}k")[1] == ("+", b"OK")
