"""The core proxy against real redis-server backends: routing, merges, errors, protocols."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.runner import ProxyThread, proxy_for


@pytest.fixture(scope="module")
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    with proxy_for([b.addr for b in backends3]) as p:
        yield p


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer]) -> None:
    for b in backends3:
        b.client().flushall()


def raw(port: int, payload: bytes, expect_close: bool = False, timeout_s: float = 5) -> bytes:
    """Send raw bytes; read until the proxy closes (expect_close) or until quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        if not expect_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def owner_of(backends: list[RedisServer], key: str) -> list[int]:
    return [i for i, b in enumerate(backends) if b.client().exists(key)]


def test_keys_spread_over_backends(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    r = redis.Redis(port=proxy.port)
    for i in range(300):
        r.set(f"key:{i}", i)
    counts = [b.client().dbsize() for b in backends3]
    assert sum(counts) == 300
    assert all(c > 50 for c in counts), counts
    for i in range(300):
        assert r.get(f"key:{i}") == str(i).encode()
        assert len(owner_of(backends3, f"key:{i}")) == 1


def test_redis_py_resp3_defaults(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port, protocol=3)
    assert r.ping()
    r.hset("h", mapping={"a": "1", "b": "2"})
    assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}
    r.zadd("z", {"m": 1.5})
    assert r.zscore("z", "m") == 1.5
    assert r.get("missing") is None
    assert r.client_getname() is None
    r.client_setname("app")
    assert r.client_getname() == b"app"


def test_mget_mset_merge_in_key_order(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    r = redis.Redis(port=proxy.port)
    keys = [f"k{i}" for i in range(50)]
    assert r.mset({k: k.upper() for k in keys[::2]})
    got = r.mget(keys)
    assert got == [k.upper().encode() if i % 2 == 0 else None for i, k in enumerate(keys)]
    assert len({tuple(owner_of(backends3, k)) for k in keys[::2]}) == 3
    assert r.exists(*keys) == 25
    assert r.delete(*keys[:10]) == 5
    assert r.unlink(*keys) == 20
    assert r.touch(*keys) == 0


def test_same_backend_only(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    r.set("{u1}:a", "1")
    assert r.rename("{u1}:a", "{u1}:b")
    assert r.get("{u1}:b") == b"1"
    # Find two keys on different backends.
    r.set("x1", 1)
    for i in range(2, 200):
        with pytest.raises(redis.ResponseError) as err:
            r.rename("x1", f"x{i}")
            r.rename(f"x{i}", "x1")  # same backend: put it back and try another
            continue
        assert "CROSSSLOT" in str(err.value) or "different backends" in str(err.value)
        break
    assert r.eval("return redis.call('get', KEYS[1])", 1, "{u1}:b") == b"1"
    assert r.eval("return 7", 0) == 7


def test_fanout_dbsize_keys_scan(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    for i in range(120):
        r.set(f"s:{i}", i)
    assert r.dbsize() == 120
    assert sorted(r.keys("s:*")) == sorted(f"s:{i}".encode() for i in range(120))
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = r.scan(cursor, count=7)
        seen.extend(batch)
        if cursor == 0:
            break
    assert sorted(seen) == sorted(f"s:{i}".encode() for i in range(120))
    assert len(seen) == 120
    sha = r.script_load("return 1")
    assert r.script_exists(sha, "0" * 40) == [True, False]
    with pytest.raises(redis.ResponseError, match="allow_flush"):
        r.flushdb()


def test_pipeline_2000_deep_in_order(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    pipe = r.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"p{i}", i)
        pipe.get(f"p{i}")
        pipe.incr("counter")
    out = pipe.execute()
    for i in range(2000):
        assert out[3 * i] is True
        assert out[3 * i + 1] == str(i).encode()
        assert out[3 * i + 2] == i + 1


def test_error_shapes(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    r.set("str", "v")
    with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE"):
        r.lpush("str", "x")
    with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
        r.execute_command("NOSUCH", "a")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="not allowed"):
        r.execute_command("CONFIG", "SET", "maxmemory", "1")
    with pytest.raises(redis.ResponseError, match=r"^EXEC without MULTI"):
        r.execute_command("EXEC")


def test_inline_and_malformed(proxy: ProxyThread) -> None:
    assert raw(proxy.port, b"PING\r\nSET a 'b c'\r\nGET a\r\n") == b"+PONG\r\n+OK\r\n$3\r\nb c\r\n"
    reply = raw(proxy.port, b"*1\r\n$4\r\nPING\r\n*x\r\n", expect_close=True)
    assert reply.startswith(b"+PONG\r\n-ERR Protocol error")
    reply = raw(proxy.port, b'GET "abc\r\n', expect_close=True)
    assert reply == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    # The proxy is still fine for everyone else.
    assert redis.Redis(port=proxy.port).ping()


def test_large_value_16mb(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    value = bytes(range(256)) * (16 * 4096)
    assert r.set("big", value)
    assert r.get("big") == value
    assert r.strlen("big") == len(value)


def test_big_values_pipelined_and_merged(proxy: ProxyThread) -> None:
    """Big replies read together with others (handed to the client as views of the read, copied
    for merges): pipelined GETs, MGET over every backend, a dual-sized mix, values intact."""
    r = redis.Redis(port=proxy.port)
    values = {f"big:{i}": bytes([65 + i % 26]) * (20_000 + 37_000 * (i % 4)) for i in range(24)}
    values["small"] = b"s"
    assert r.mset(values)
    pipe = r.pipeline(transaction=False)
    for key in values:
        pipe.get(key)
        pipe.strlen(key)
    got = pipe.execute()
    assert got[0::2] == list(values.values())
    assert got[1::2] == [len(v) for v in values.values()]
    assert r.mget(list(values)) == list(values.values())
    assert r.mget(["big:3", "missing", "big:4"]) == [values["big:3"], None, values["big:4"]]


def test_idle_clients_closed_busy_ones_kept(backends3: list[RedisServer]) -> None:
    """client.idle_timeout_s closes a client that sent nothing for that long, not one that keeps
    sending (the clock is the one the request path stamps on every read)."""
    extra = "client:\n  idle_timeout_s: 1.5\n"
    with (
        proxy_for([b.addr for b in backends3], extra=extra) as p,
        socket.create_connection(("127.0.0.1", p.port), timeout=5) as idle,
        socket.create_connection(("127.0.0.1", p.port), timeout=5) as busy,
    ):
        opened = time.monotonic()
        busy.settimeout(0.3)
        idle.settimeout(0.05)
        idle_closed_at = None
        while time.monotonic() - opened < 8 and idle_closed_at is None:
            busy.sendall(b"PING\r\n")
            assert busy.recv(64) == b"+PONG\r\n"
            try:
                if idle.recv(64) == b"":
                    idle_closed_at = time.monotonic() - opened
            except TimeoutError:
                pass
        assert idle_closed_at is not None, "the idle client was never closed"
        assert idle_closed_at >= 1.5, idle_closed_at
        busy.sendall(b"PING\r\n")
        assert busy.recv(64) == b"+PONG\r\n"


LIBRARY = "#!lua name=lib\nredis.register_function('one', function() return 1 end)"


def test_function_flush_fans_out_only_when_flushing_is_allowed(
    backends3: list[RedisServer],
) -> None:
    for s in backends3:
        s.client().function_load(LIBRARY, replace=True)
    with (
        proxy_for([b.addr for b in backends3]) as p,
        pytest.raises(redis.ResponseError, match="allow_flush"),
    ):
        redis.Redis(port=p.port).function_flush()
    assert all(s.client().function_list() for s in backends3)
    with proxy_for([b.addr for b in backends3], "allow_flush: true\n") as p:
        assert redis.Redis(port=p.port).function_flush() is True
    assert not any(s.client().function_list() for s in backends3)
