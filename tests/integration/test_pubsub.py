"""Pub/sub through the proxy against real Redis: channels by hash on the route ring, patterns on
every backend, confirmations counted by the proxy, Redis's subscribed-mode rules, limits, and a
lost backend closing its subscribers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config

LIMIT = 5


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(3) as found:
        yield found


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ProxyThread]:
    extra = f"client:\n  max_subscriptions: {LIMIT}\n"
    config = simple_config([s.addr for s in servers], free_port(), free_port(), extra)
    with running_proxy(config) as p:
        yield p


def client(proxy: ProxyThread, protocol: int = 2) -> redis.Redis:
    return redis.Redis(port=proxy.port, protocol=protocol, socket_timeout=10)


def channels_on_each(servers: list[RedisServer], proxy: ProxyThread) -> list[str]:
    """One channel name per backend, found through the route ring."""
    assert proxy.server is not None
    routes = proxy.server.routes
    found: dict[str, str] = {}
    for i in range(1000):
        found.setdefault(routes.read.addr_for(f"ch{i}".encode()), f"ch{i}")
    return [found[s.addr] for s in servers]


def next_message(ps: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = ps.get_message(timeout=1.0)
        if msg is not None:
            return msg  # type: ignore[no-any-return]
    raise AssertionError("no message before the deadline")


def dedicated(proxy: ProxyThread) -> int:
    assert proxy.server is not None
    return sum(b.stats.dedicated.get("pubsub", 0) for b in proxy.server.routes.backends.values())


@pytest.mark.parametrize("protocol", [2, 3])
def test_channels_on_every_backend_and_counts(
    proxy: ProxyThread, servers: list[RedisServer], protocol: int
) -> None:
    names = channels_on_each(servers, proxy)
    ps = client(proxy, protocol).pubsub()
    ps.subscribe(*names)
    confirmations = [next_message(ps) for _ in names]
    assert [(m["type"], m["channel"].decode(), m["data"]) for m in confirmations] == [
        ("subscribe", n, i + 1) for i, n in enumerate(names)
    ]
    pub = client(proxy)
    for n in names:
        assert pub.publish(n, f"hello {n}") == 1
        msg = next_message(ps)
        assert (msg["type"], msg["channel"], msg["data"]) == (
            "message",
            n.encode(),
            f"hello {n}".encode(),
        )
    for s, n in zip(servers, names, strict=True):  # each channel lives on its own backend
        assert s.client().pubsub_numsub(n) == [(n.encode(), 1)]
    assert dict(pub.pubsub_numsub(*names)) == {n.encode(): 1 for n in names}
    assert set(pub.pubsub_channels()) >= {n.encode() for n in names}
    ps.unsubscribe()
    got = [next_message(ps) for _ in names]
    assert sorted(m["data"] for m in got) == [0, 1, 2]
    ps.close()
    wait_until(lambda: dedicated(proxy) == 0, 10, "subscriber connections closed")


@pytest.mark.parametrize("protocol", [2, 3])
def test_patterns_and_listen(proxy: ProxyThread, servers: list[RedisServer], protocol: int) -> None:
    names = channels_on_each(servers, proxy)
    ps = client(proxy, protocol).pubsub(ignore_subscribe_messages=True)
    ps.psubscribe("ch*")
    wait_until(lambda: client(proxy).pubsub_numpat() == 1, 10, "pattern registered")
    pub = client(proxy)
    for n in names:
        pub.publish(n, n)
    seen = []
    for msg in ps.listen():
        if msg["type"] == "pmessage":
            seen.append(msg["channel"].decode())
        if len(seen) == len(names):
            break
    # Each once: a PUBLISH reaches one backend. Not in publishing order: the messages come in
    # over one subscriber connection per backend, and two reads ready together may be taken in
    # either order (a client publishing to different shards has no order across them).
    assert sorted(seen) == sorted(names)
    ps.close()


def test_order_of_1000_messages(proxy: ProxyThread) -> None:
    ps = client(proxy).pubsub(ignore_subscribe_messages=True)
    ps.subscribe("orders")
    wait_until(lambda: client(proxy).pubsub_numsub("orders")[0][1] == 1, 10, "subscribed")
    pub = client(proxy).pipeline(transaction=False)
    for i in range(1000):
        pub.publish("orders", str(i))
    pub.execute()
    got = []
    while len(got) < 1000:
        msg = next_message(ps)
        if msg["type"] == "message":
            got.append(int(msg["data"]))
    assert got == list(range(1000))
    assert ps.get_message(timeout=0.2) is None  # each exactly once
    ps.close()


def test_subscribed_mode_matches_redis(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    script = (
        b"SUBSCRIBE a\r\nGET x\r\nPING\r\nPING hi\r\nCLIENT ID\r\nPUBSUB NUMSUB a\r\n"
        b"UNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nSUNSUBSCRIBE\r\nSSUBSCRIBE s\r\n"
        b"SUBSCRIBE a\r\nGET x\r\nRESET\r\nGET x\r\n"
    )
    # Redis's own answer, read to its end (the last reply is GET's nil).
    want = _read_all(servers[0].port, script)
    got = _read_all(proxy.port, script)
    assert got == want


def _read_all(port: int, script: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(script)
        out = b""
        while not out.endswith(b"+RESET\r\n$-1\r\n"):
            chunk = sock.recv(65536)
            assert chunk, out
            out += chunk
        return out


def test_resp3_runs_commands_while_subscribed(proxy: ProxyThread) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"HELLO 3\r\nSUBSCRIBE r3\r\nSET r3key v\r\n")
        out = b""
        while not out.endswith(b"+OK\r\n"):
            chunk = sock.recv(65536)
            assert chunk, out
            out += chunk
        assert out.endswith(b">3\r\n$9\r\nsubscribe\r\n$2\r\nr3\r\n:1\r\n+OK\r\n")
        client(proxy).publish("r3", "push")
        want = b">3\r\n$7\r\nmessage\r\n$2\r\nr3\r\n$4\r\npush\r\n"
        out = b""
        while len(out) < len(want):
            out += sock.recv(65536)
        assert out == want


def test_max_subscriptions(proxy: ProxyThread) -> None:
    ps = client(proxy).pubsub()
    ps.subscribe(*[f"m{i}" for i in range(LIMIT)])
    for _ in range(LIMIT):
        next_message(ps)
    with pytest.raises(redis.ResponseError, match=r"client\.max_subscriptions"):
        ps.subscribe("one-more")
        next_message(ps)
    ps.close()
    wait_until(lambda: dedicated(proxy) == 0, 10, "subscriber connections closed")


def test_reset_leaves_subscribed_mode(proxy: ProxyThread) -> None:
    script = b"SUBSCRIBE a b\r\nRESET\r\nSET k v\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(script)
        out = b""
        while not out.endswith(b"+OK\r\n"):
            chunk = sock.recv(65536)
            assert chunk, out
            out += chunk
    assert b"+RESET\r\n+OK\r\n" in out
    wait_until(lambda: dedicated(proxy) == 0, 10, "subscriber connections closed")


def test_disconnect_releases_connections(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    names = channels_on_each(servers, proxy)
    ps = client(proxy).pubsub()
    ps.subscribe(*names)
    for _ in names:
        next_message(ps)
    assert dedicated(proxy) == 3
    ps.close()
    wait_until(lambda: dedicated(proxy) == 0, 10, "subscriber connections closed")


def test_backend_killed_closes_subscriber() -> None:
    with redis_servers(2) as servers:
        config = simple_config([s.addr for s in servers], free_port(), free_port())
        with running_proxy(config) as proxy:
            names = channels_on_each(servers, proxy)
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(b"SUBSCRIBE " + " ".join(names).encode() + b"\r\n")
            out = b""
            while out.count(b"subscribe") < 2:
                out += sock.recv(65536)
            servers[1].stop()
            with pytest.raises((ConnectionError, OSError)):
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
            sock.close()
            wait_until(lambda: dedicated(proxy) == 0, 10, "subscriber connections closed")
