"""Blocking commands (net/blocking.py) through the proxy, against real Redis.

Each blocked client holds a backend connection of its own; other clients never wait for it; a
client that goes away releases it at once; the client's later requests keep their order; idle
connections are reused; during a double-writing migration a pop is mirrored on the other side.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from proxy.net.blocking import idle_count
from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, pool_yaml, running_proxy, simple_config
from tests.support.wire import RespConn, encode


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(2) as found:
        yield found


def limited_config(addrs: list[str], limit: int) -> str:
    text = simple_config(addrs, free_port(), free_port())
    return text.replace("backend:\n", f"backend:\n  max_blocking_connections: {limit}\n")


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ProxyThread]:
    with running_proxy(limited_config([s.addr for s in servers], 64)) as p:
        yield p


def addr_of(proxy: ProxyThread, key: str) -> str:
    assert proxy.server is not None
    return proxy.server.routes.backend_for(key.encode()).addr


def server_of(proxy: ProxyThread, servers: list[RedisServer], key: str) -> RedisServer:
    return next(s for s in servers if s.addr == addr_of(proxy, key))


def blocking_gauge(proxy: ProxyThread, addr: str) -> int:
    """shardproxy_backend_dedicated_connections{purpose="blocking"}: in use and idle."""
    assert proxy.server is not None
    return proxy.server.pool.backends[addr].stats.dedicated.get("blocking", 0)


def blocking_in_use(proxy: ProxyThread, addr: str) -> int:
    assert proxy.server is not None
    backend = proxy.server.pool.backends[addr]
    return blocking_gauge(proxy, addr) - idle_count(backend, 2) - idle_count(backend, 3)


def blocked_on(server: RedisServer, command: str) -> int:
    clients = server.client().client_list()
    return sum(1 for c in clients if c["cmd"] == command and "b" in c["flags"])


def keys_on_two_backends(proxy: ProxyThread) -> tuple[str, str]:
    first = "x:0"
    for i in range(1, 1000):
        if addr_of(proxy, f"x:{i}") != addr_of(proxy, first):
            return first, f"x:{i}"
    raise AssertionError("no two keys on different backends")


def test_consumers_get_every_item_exactly_once(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    r.delete("jobs")
    items = 400
    got: Counter[bytes] = Counter()
    lock = threading.Lock()

    def consume() -> None:
        c = redis.Redis(port=proxy.port)
        while True:
            popped = c.blpop(["jobs"], timeout=0)
            assert popped is not None
            if popped[1] == b"stop":
                return
            with lock:
                got[popped[1]] += 1

    consumers = [threading.Thread(target=consume) for _ in range(4)]
    for t in consumers:
        t.start()
    producers = [
        threading.Thread(
            target=lambda p=p: [
                redis.Redis(port=proxy.port).rpush("jobs", f"{p}:{i}") for i in range(items // 4)
            ]
        )
        for p in range(4)
    ]
    for t in producers:
        t.start()
    for t in producers:
        t.join(30)
    wait_until(lambda: sum(got.values()) == items, 30, "every item consumed")
    r.rpush("jobs", *(["stop"] * len(consumers)))
    for t in consumers:
        t.join(30)
    assert len(got) == items and set(got.values()) == {1}


@pytest.mark.parametrize(("protocol", "nil"), [(2, b"*-1\r\n"), (3, b"_\r\n")])
def test_timeout_forever_and_timeout_nil(
    proxy: ProxyThread, servers: list[RedisServer], protocol: int, nil: bytes
) -> None:
    with RespConn(proxy.port) as conn:
        if protocol == 3:
            conn.send(encode(["HELLO", "3"]))
            conn.read_reply()
        conn.send(encode(["DEL", f"t:{protocol}"]))
        conn.read_reply()
        conn.send(encode(["BLPOP", f"t:{protocol}", "0.05"]))
        assert conn.read_reply()[0] == nil
        conn.send(encode(["BZPOPMIN", f"tz:{protocol}", "0.05"]))
        assert conn.read_reply()[0] == nil
    r = redis.Redis(port=proxy.port, protocol=protocol)
    out: list[object] = []
    waiter = threading.Thread(target=lambda: out.append(r.brpop([f"t:{protocol}"], timeout=0)))
    waiter.start()
    backend = server_of(proxy, servers, f"t:{protocol}")
    wait_until(lambda: blocked_on(backend, "brpop") == 1, 10, "the call is blocked")
    redis.Redis(port=proxy.port).lpush(f"t:{protocol}", "v")
    waiter.join(10)
    assert out[0] in ([b"t:%d" % protocol, b"v"], (b"t:%d" % protocol, b"v"))


def test_a_killed_blocked_client_releases_its_connection(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    key = "kill:q"
    backend = server_of(proxy, servers, key)
    redis.Redis(port=proxy.port).delete(key)
    before = blocking_gauge(proxy, backend.addr)
    in_use = blocking_in_use(proxy, backend.addr)
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(encode(["BLPOP", key, "0"]))
    wait_until(lambda: blocked_on(backend, "blpop") == 1, 10, "blocked on the backend")
    assert blocking_in_use(proxy, backend.addr) == in_use + 1
    sock.close()
    wait_until(lambda: blocked_on(backend, "blpop") == 0, 10, "gone from CLIENT LIST")
    # Back down: its connection is closed, not kept idle (one idle one may have been taken).
    wait_until(lambda: blocking_in_use(proxy, backend.addr) == in_use, 10, "gauge back")
    assert blocking_gauge(proxy, backend.addr) in (before, before - 1)
    out: list[object] = []
    consumer = redis.Redis(port=proxy.port)
    waiter = threading.Thread(target=lambda: out.append(consumer.blpop([key], timeout=0)))
    waiter.start()
    wait_until(lambda: blocked_on(backend, "blpop") == 1, 10, "the next consumer blocked")
    redis.Redis(port=proxy.port).rpush(key, "kept")
    waiter.join(10)
    assert out == [(b"kill:q", b"kept")] or out == [[b"kill:q", b"kept"]]


def test_pipelined_requests_after_a_blocking_call_keep_their_order(proxy: ProxyThread) -> None:
    with RespConn(proxy.port) as conn:
        conn.send(encode(["DEL", "p:q", "p:n"]))
        conn.read_reply()
        conn.send(
            encode(["RPUSH", "p:q", "a"])
            + encode(["BLPOP", "p:q", "0"])  # pops a, pushed just before
            + encode(["BLPOP", "p:q", "0.05"])  # empty: nil, before the RPUSH after it runs
            + encode(["RPUSH", "p:q", "b"])
            + encode(["INCR", "p:n"])
            + encode(["LRANGE", "p:q", "0", "-1"])
        )
        raws = [conn.read_reply()[0] for _ in range(6)]
    assert raws == [
        b":1\r\n",
        b"*2\r\n$3\r\np:q\r\n$1\r\na\r\n",
        b"*-1\r\n",
        b":1\r\n",
        b":1\r\n",
        b"*1\r\n$1\r\nb\r\n",
    ]


def test_other_clients_are_not_delayed_by_a_blocked_one(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    key, other = "{same}:q", "{same}:v"
    backend = server_of(proxy, servers, key)
    r = redis.Redis(port=proxy.port)
    r.delete(key)
    r.set(other, "here")
    out: list[object] = []
    waiter = threading.Thread(target=lambda: out.append(redis.Redis(port=proxy.port).blpop([key])))
    waiter.start()
    wait_until(lambda: blocked_on(backend, "blpop") == 1, 10, "blocked on the backend")
    assert r.get(other) == b"here"
    assert waiter.is_alive() and out == []
    r.rpush(key, "end")
    waiter.join(10)
    assert len(out) == 1


def test_keys_on_two_backends_are_refused(proxy: ProxyThread) -> None:
    a, b = keys_on_two_backends(proxy)
    r = redis.Redis(port=proxy.port)
    for call in (
        lambda: r.blpop([a, b], timeout=1),
        lambda: r.blmove(a, b, 1),
        lambda: r.execute_command("XREAD", "BLOCK", "1", "STREAMS", a, b, "0", "0"),
    ):
        with pytest.raises(redis.ResponseError, match=r"map to different backends.*hash tag"):
            call()


def test_the_blocking_connection_limit(servers: list[RedisServer]) -> None:
    with running_proxy(limited_config([servers[0].addr], 2)) as proxy:
        socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
        for i, sock in enumerate(socks):
            sock.sendall(encode(["BLPOP", f"lim:{i}", "0"]))
        wait_until(lambda: blocked_on(servers[0], "blpop") == 2, 10, "two blocked")
        r = redis.Redis(port=proxy.port)
        with pytest.raises(redis.ResponseError, match="2 blocking connections open already"):
            r.blpop(["lim:x"], timeout=0)
        for sock in socks:
            sock.close()
        wait_until(lambda: blocking_gauge(proxy, servers[0].addr) == 0, 10, "released")
        assert r.blpop(["lim:x"], timeout=0.01) is None


def test_idle_connections_are_reused(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    key = "reuse:q"
    backend = server_of(proxy, servers, key)
    r = redis.Redis(port=proxy.port)
    r.delete(key)
    r.rpush(key, *range(50))
    r.blpop([key], timeout=0)  # warms one connection

    def poppers() -> set[str]:  # the backend's connections that ran BLPOP last
        return {c["id"] for c in backend.client().client_list() if c["cmd"] == "blpop"}

    warmed = poppers()
    assert warmed
    for _ in range(49):
        assert r.blpop([key], timeout=0) is not None
    assert poppers() == warmed  # 49 calls on connections left idle before: none opened


def test_blmove_brpoplpush_and_bzpopmin(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    r.delete("{m}:src", "{m}:dst", "{m}:z")
    r.rpush("{m}:src", "a", "b")
    assert r.blmove("{m}:src", "{m}:dst", 0, "LEFT", "RIGHT") == b"a"
    assert r.brpoplpush("{m}:src", "{m}:dst", 0) == b"b"
    assert r.lrange("{m}:dst", 0, -1) == [b"b", b"a"]  # BRPOPLPUSH pushes on the left
    r.zadd("{m}:z", {"low": 1, "high": 2})
    assert r.bzpopmin(["{m}:z"], 0) == (b"{m}:z", b"low", 1.0)
    assert r.bzpopmax(["{m}:z"], 0) == (b"{m}:z", b"high", 2.0)
    assert r.blmove("{m}:src", "{m}:dst", 0.05) is None


def test_xread_and_xreadgroup_block_with_a_producer(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    r = redis.Redis(port=proxy.port)
    r.delete("s:1")
    r.xgroup_create("s:1", "g", id="$", mkstream=True)
    out: dict[str, object] = {}

    def read() -> None:
        c = redis.Redis(port=proxy.port)
        out["xread"] = c.xread({"s:1": "$"}, block=0)

    def read_group() -> None:
        c = redis.Redis(port=proxy.port)
        out["group"] = c.xreadgroup("g", "c1", {"s:1": ">"}, block=0)

    readers = [threading.Thread(target=read), threading.Thread(target=read_group)]
    for t in readers:
        t.start()
    backend = server_of(proxy, servers, "s:1")
    wait_until(lambda: blocked_on(backend, "xread") == 1, 10, "XREAD blocked")
    wait_until(lambda: blocked_on(backend, "xreadgroup") == 1, 10, "XREADGROUP blocked")
    entry = r.xadd("s:1", {"f": "v"})
    for t in readers:
        t.join(10)
    assert out["xread"] == [[b"s:1", [(entry, {b"f": b"v"})]]]
    assert out["group"] == [[b"s:1", [(entry, {b"f": b"v"})]]]
    assert r.xread({"s:1": "$"}, block=50) == []


def test_a_blocking_pop_is_mirrored_during_double_write(servers: list[RedisServer]) -> None:
    a, b = servers
    text = (
        f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{free_port()}\n"
        "backend:\n  retry_backoff_ms: 50\n"
        f"pools:\n{pool_yaml('old', [a.addr])}{pool_yaml('new', [a.addr, b.addr])}"
        "route: old\nmigration: {to: new, phase: double-write}\n"
    )
    with running_proxy(text) as proxy:
        assert proxy.server is not None
        routes = proxy.server.routes
        key = next(f"mv:{i}" for i in range(1000) if routes.other.addr_for(b"mv:%d" % i) == b.addr)
        r = redis.Redis(port=proxy.port)
        r.delete(key, "{mv}:z")
        r.rpush(key, "1", "2", "3")
        wait_until(lambda: b.client().llen(key) == 3, 10, "the double write")
        assert r.blpop([key], timeout=0) == (key.encode(), b"1")
        assert r.brpop([key], timeout=0) == (key.encode(), b"3")
        wait_until(lambda: b.client().lrange(key, 0, -1) == [b"2"], 10, "mirrored on target")
        assert a.client().lrange(key, 0, -1) == [b"2"]
        zkey = next(f"mz:{i}" for i in range(1000) if routes.other.addr_for(b"mz:%d" % i) == b.addr)
        r.delete(zkey)
        r.zadd(zkey, {"x": 1, "y": 2})
        assert r.bzpopmin([zkey], 0) == (zkey.encode(), b"x", 1.0)
        wait_until(lambda: b.client().zrange(zkey, 0, -1) == [b"y"], 10, "zset mirrored")
        r.xgroup_create(key + ":s", "g", mkstream=True)
        with pytest.raises(redis.ResponseError, match="refused while a migration"):
            r.xreadgroup("g", "c", {key + ":s": ">"}, block=10)
