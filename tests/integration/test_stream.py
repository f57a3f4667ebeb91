"""Big values streamed through to their backend (proxy.stream), checked against real Redis.

A request whose last argument is a bulk of at least 1 MiB goes to its backend on a connection of
its own as it arrives: the reply, the value stored and the client's reply order must be exactly
as without streaming; a slow or vanishing uploader must not hold up anyone else.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import Err, RespConn, encode

MIB = 1024 * 1024
# Holds CR, LF, `$`, `*` and a RESP-looking header, so a wrong boundary shows.
VALUE = (bytes(range(256)) * 4096 + b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") * 2  # ~2 MiB


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(2) as found:
        yield found


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ProxyThread]:
    config = simple_config([s.addr for s in servers], free_port(), free_port())
    with running_proxy(config) as p:
        yield p


def owner(servers: list[RedisServer], key: str) -> RedisServer:
    found = [s for s in servers if s.client().exists(key)]
    assert len(found) == 1, key
    return found[0]


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_big_set_is_stored_exactly(
    proxy: ProxyThread, servers: list[RedisServer], protocol: int
) -> None:
    r = redis.Redis(port=proxy.port, protocol=protocol)
    assert r.set(f"big:{protocol}", VALUE) is True
    assert r.get(f"big:{protocol}") == VALUE
    assert owner(servers, f"big:{protocol}").client().get(f"big:{protocol}") == VALUE
    r.delete(f"bighash:{protocol}")
    assert r.hset(f"bighash:{protocol}", "f", VALUE) == 1  # the last argument: streamed too
    assert r.hget(f"bighash:{protocol}", "f") == VALUE
    assert r.set("bigex", VALUE, ex=100) is True  # not the last argument: assembled as before
    assert 0 < r.ttl("bigex") <= 100


def test_pipelined_order_around_a_streamed_value(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    r.delete("ord", "n")
    pipe = r.pipeline(transaction=False)
    pipe.incr("n").set("ord", "small").append("ord", "-x").set("ord", VALUE)
    pipe.append("ord", "-tail").get("ord").incr("n").strlen("ord")
    out = pipe.execute()
    assert out[:4] == [1, True, 7, True]
    assert out[4] == len(VALUE) + 5
    assert out[5] == VALUE + b"-tail"
    assert out[6:] == [2, len(VALUE) + 5]


def test_two_streamed_values_in_one_write(proxy: ProxyThread) -> None:
    with RespConn(proxy.port) as conn:
        conn.send(
            encode(["SET", "two:a", VALUE])
            + encode(["SET", "two:b", VALUE[::-1]])
            + encode(["MGET", "two:a", "two:b"])
        )
        assert conn.read_reply()[1] == ("+", b"OK")
        assert conn.read_reply()[1] == ("+", b"OK")
        assert conn.read_reply()[1] == [VALUE, VALUE[::-1]]


def test_bytes_after_the_value_are_skipped_like_redis(proxy: ProxyThread) -> None:
    head = b"*3\r\n$3\r\nSET\r\n$4\r\nskip\r\n$%d\r\n" % len(VALUE)
    with RespConn(proxy.port) as conn:
        conn.send(head + VALUE + b"XY" + encode(["GET", "skip"]))
        assert conn.read_reply()[1] == ("+", b"OK")
        assert conn.read_reply()[1] == VALUE


def named_ids(servers: list[RedisServer]) -> set[str]:
    """The ids of the proxy's connections (shared and dedicated) on every backend."""
    return {
        f"{s.addr}/{c['id']}"
        for s in servers
        for c in s.client().client_list()
        if c.get("name") == "shardproxy"
    }


def test_a_slow_upload_holds_up_no_one(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    r = redis.Redis(port=proxy.port)
    r.set("slow", "old")
    slow_owner = owner(servers, "slow")
    head = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$%d\r\n" % len(VALUE)
    with socket.create_connection(("127.0.0.1", proxy.port)) as up:
        up.sendall(head + VALUE[: len(VALUE) // 2])
        # Half a value is on its way: every other client, on every backend, is served.
        for i in range(200):
            assert r.set(f"by:{i}", i) and r.get(f"by:{i}") == str(i).encode()
        assert r.get("slow") == b"old"
        assert slow_owner.client().get("slow") == b"old"
        up.sendall(VALUE[len(VALUE) // 2 :] + b"\r\n")
        up.settimeout(10)
        assert up.recv(64) == b"+OK\r\n"
    assert r.get("slow") == VALUE


def test_an_uploader_that_vanishes_harms_nothing(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    r = redis.Redis(port=proxy.port)
    r3 = redis.Redis(port=proxy.port, protocol=3)
    for i in range(20):
        r.set(f"warm:{i}", i)
        r3.get(f"warm:{i}")
    wait_until(lambda: len(named_ids(servers)) == 4, 5, "only the shared connections open")
    before = named_ids(servers)
    head = b"*3\r\n$3\r\nSET\r\n$4\r\ngone\r\n$%d\r\n" % len(VALUE)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", proxy.port)) as up:
            up.sendall(head + VALUE[:100_000])
    # Each upload's dedicated connection is closed with it; the shared ones are untouched.
    wait_until(lambda: named_ids(servers) == before, 5, "dedicated connections closed")
    assert not any(s.client().exists("gone") for s in servers)
    assert r.get("gone") is None
    assert r.set("after", 1) and r.get("after") == b"1"


def test_a_down_backend_answers_and_the_value_is_skipped() -> None:
    with redis_servers(2) as servers:
        config = simple_config([s.addr for s in servers], free_port(), free_port())
        with running_proxy(config) as proxy:
            r = redis.Redis(port=proxy.port)
            keys = [f"dn:{i}" for i in range(20)]
            for k in keys:
                r.set(k, 1)
            victim = servers[0]
            on_victim = [k for k in keys if victim.client().exists(k)]
            elsewhere = [k for k in keys if k not in on_victim]
            victim.stop()
            server = proxy.server
            assert server is not None
            wait_until(lambda: not server.pool.backends[victim.addr].up, 10, "backend down")
            with RespConn(proxy.port) as conn:
                conn.send(encode(["SET", on_victim[0], VALUE]) + encode(["GET", elsewhere[0]]))
                reply = conn.read_reply()[1]
                assert isinstance(reply, Err) and "unavailable" in reply.text
                assert conn.read_reply()[1] == b"1"


def test_many_streams_and_bystanders_at_once(proxy: ProxyThread) -> None:
    errors: list[str] = []

    def uploader(n: int) -> None:
        r = redis.Redis(port=proxy.port)
        for i in range(3):
            value = VALUE[n:] + b"%d" % i
            if not r.set(f"many:{n}", value) or r.get(f"many:{n}") != value:
                errors.append(f"many:{n} round {i}")

    threads = [threading.Thread(target=uploader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    r = redis.Redis(port=proxy.port)
    while any(t.is_alive() for t in threads):
        assert r.incr("bystander") > 0
    for t in threads:
        t.join(30)
    assert errors == []


@pytest.mark.parametrize("before", [3, 30])
def test_a_streamed_value_behind_a_backlog_keeps_its_place(
    servers: list[RedisServer], before: int
) -> None:
    """Requests over the in-flight limit wait as the backlog; a streamed value read in the same
    write goes after them, not ahead (it used to take an earlier request's reply, then hold the
    backlog forever)."""
    extra = "client:\n  max_pending_requests: 4\n"
    config = simple_config([s.addr for s in servers], free_port(), free_port(), extra)
    with running_proxy(config) as p, RespConn(p.port) as conn:
        conn.send(encode(["SET", "behind", "x"]))
        assert conn.read_reply()[1] == ("+", b"OK")
        conn.send(
            encode(["GET", "behind"]) * before
            + encode(["SET", "behind:big", VALUE])
            + encode(["PING"])
            + encode(["STRLEN", "behind:big"])
        )
        for _ in range(before):
            assert conn.read_reply()[1] == b"x"
        assert conn.read_reply()[1] == ("+", b"OK")
        assert conn.read_reply()[1] == ("+", b"PONG")
        assert conn.read_reply()[1] == len(VALUE)
