"""Long-running scripts: a backend busy past busy-reply-threshold is passed through as Redis
would (`-BUSY` for other clients, replies after the script for what queued behind it), SCRIPT
KILL and FUNCTION KILL reach it, and it is never marked down or its connection failed.

The backends run with `lua-time-limit 100` (busy-reply-threshold) and the proxy with
command_timeout_ms 500, so a stalled connection is checked, and found busy, quickly. Every wait
is on a condition with a deadline.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from proxy.net.backend import Backend
from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, pool_yaml, running_proxy
from tests.support.wire import Err, RespConn, encode

COMMAND_TIMEOUT_MS = 500
SPIN = "while true do end"
# Ends by itself after ~3 s (TIME is allowed in Redis 7 scripts: effects are replicated).
BOUNDED = (
    "local s = redis.call('TIME') local start = s[1] * 1000000 + s[2] "
    "repeat local t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= 3000000 "
    "return 'done'"
)
BUSY = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(2, "--lua-time-limit", "100") as found:
        yield found


@pytest.fixture
def proxy(servers: list[RedisServer]) -> Iterator[ProxyThread]:
    config = (
        f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{free_port()}\n"
        f"backend:\n  command_timeout_ms: {COMMAND_TIMEOUT_MS}\n  connect_timeout_ms: 500\n"
        "  health_check_interval_ms: 100\n  failure_threshold: 1\n"
        f"pools:\n{pool_yaml('main', [s.addr for s in servers])}"
    )
    with running_proxy(config) as p:
        yield p


def backends(proxy: ProxyThread) -> list[Backend]:
    assert proxy.server is not None
    return list(proxy.server.routes.route_backends)


def key_on(proxy: ProxyThread, index: int, prefix: str) -> str:
    addr = backends(proxy)[index].addr
    assert proxy.server is not None
    router = proxy.server.routes
    return next(
        k
        for k in (f"{prefix}:{i}" for i in range(1000))
        if router.backend_for(k.encode()).addr == addr
    )


class Bystander:
    """A client that GETs one key in a loop on its own thread, counting replies by kind."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = RespConn(port)
        self.key = key
        self.seen: Counter[str] = Counter()
        self.errors: list[str] = []  # every error text that is not Redis's -BUSY
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            _, value = self.conn.call("GET", self.key)
            if isinstance(value, Err):
                kind = "busy" if value.text == BUSY else "error"
                if kind == "error":
                    self.errors.append(value.text)
            else:
                kind = "ok"
            self.seen[kind] += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()


def assert_all_up(proxy: ProxyThread) -> None:
    assert proxy.server is not None
    rows = proxy.server.status()["backends"]
    assert all(row["up"] for row in rows), rows
    assert all(row["errors"]["timeout"] == 0 for row in rows), rows
    assert all(row["errors"]["connection"] == 0 for row in rows), rows


def test_script_kill_ends_a_busy_script_and_bystanders_see_busy(proxy: ProxyThread) -> None:
    script_key = key_on(proxy, 0, "spin")
    busy_key, calm_key = key_on(proxy, 0, "busy"), key_on(proxy, 1, "calm")
    with RespConn(proxy.port) as setup:
        setup.call("SET", busy_key, "b")
        setup.call("SET", calm_key, "c")
        _, notbusy = setup.call("SCRIPT", "KILL")
        assert notbusy == Err("NOTBUSY No scripts in execution right now.")
    calm = Bystander(proxy.port, calm_key)
    script = RespConn(proxy.port)
    script.send(encode(["EVAL", SPIN, 1, script_key]))
    wait_until(lambda: backends(proxy)[0].inflight() >= 1, 10, "the script sent")
    early = RespConn(proxy.port)  # queued behind the script on the shared connection
    early.send(encode(["GET", busy_key]))
    wait_until(lambda: backends(proxy)[0].stats.busy >= 1, 10, "the busy connection found")
    busy = [Bystander(proxy.port, busy_key) for _ in range(3)]
    try:
        wait_until(lambda: all(b.seen["busy"] >= 20 for b in busy), 10, "bystanders see -BUSY")
        wait_until(lambda: calm.seen["ok"] >= 20, 10, "the other backend keeps answering")
        assert backends(proxy)[0].up
        with RespConn(proxy.port) as operator:
            _, killed = operator.call("SCRIPT", "KILL")
        assert killed == ("+", b"OK")
        _, value = script.read_reply()
        assert isinstance(value, Err) and value.text.startswith("ERR Script killed by user")
        assert early.read_reply()[1] == b"b"
        wait_until(lambda: all(b.seen["ok"] >= 1 for b in busy), 10, "bystanders served again")
    finally:
        for b in [*busy, calm]:
            b.close()
        script.close()
        early.close()
    assert calm.seen["busy"] == 0 and not calm.errors, (calm.seen, calm.errors)
    for b in busy:
        assert not b.errors, b.errors  # only Redis's own -BUSY, never unavailable or timed out
    assert_all_up(proxy)
    with RespConn(proxy.port) as after:
        assert after.call("GET", busy_key)[1] == b"b"
        assert after.call("FUNCTION", "KILL")[1] == Err(
            "NOTBUSY No scripts in execution right now."
        )


def test_script_ending_by_itself_fails_nothing(proxy: ProxyThread) -> None:
    key = key_on(proxy, 0, "bounded")
    other = key_on(proxy, 0, "behind")
    with RespConn(proxy.port) as script, RespConn(proxy.port) as neighbour:
        script.send(
            encode(["EVAL", BOUNDED, 1, key])
            + encode(["SET", other, "1"])
            + encode(["INCR", other])
            + encode(["GET", other])
        )
        wait_until(lambda: backends(proxy)[0].stats.busy >= 1, 10, "the busy connection found")
        _, during = neighbour.call("GET", other)
        assert during == Err(BUSY)  # a new request meanwhile: Redis's own answer
        replies = [script.read_reply()[1] for _ in range(4)]
        assert replies == [b"done", ("+", b"OK"), 2, b"2"]
        assert neighbour.call("GET", other)[1] == b"2"
    wait_until(lambda: not backends(proxy)[0]._busy, 5, "the busy connection retired")
    assert_all_up(proxy)
