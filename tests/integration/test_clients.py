"""Real clients through the proxy: redis-py 8 with its defaults (RESP3, CLIENT SETINFO), redis-cli,
and a client that pipelines far more than it reads (back-pressure).

redis-py results are compared with the same calls on a plain redis-server, values and types.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.processes import RedisServer, free_port, wait_until
from tests.support.runner import ProxyThread, proxy_for, running_proxy, simple_config
from tests.support.wire import encode

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
needs_cli = pytest.mark.skipif(not os.access(REDIS_CLI, os.X_OK), reason="redis-cli missing")


@pytest.fixture(scope="module")
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    with proxy_for([b.addr for b in backends3]) as p:
        yield p


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer], reference: RedisServer) -> None:
    for s in [*backends3, reference]:
        s.client().flushall()


# -- redis-py ------------------------------------------------------------------------------------
Step = Callable[[redis.Redis], Any]

STEPS: list[tuple[str, Step]] = [
    ("ping", lambda r: r.ping()),
    ("echo", lambda r: r.echo("hi")),
    ("set", lambda r: r.set("s", "v", ex=100)),
    ("get", lambda r: r.get("s")),
    ("get_missing", lambda r: r.get("nope")),
    ("ttl", lambda r: 95 <= r.ttl("s") <= 100),
    ("set_get", lambda r: r.set("s", "w", get=True)),
    ("mset", lambda r: r.mset({f"m{i}": i for i in range(20)})),
    ("mget", lambda r: r.mget([f"m{i}" for i in range(25)])),
    ("incr", lambda r: r.incr("n", 5)),
    ("incrbyfloat", lambda r: r.incrbyfloat("f", 1.25)),
    ("exists", lambda r: r.exists("s", "m1", "nope", "m2")),
    ("hset", lambda r: r.hset("h", mapping={"a": "1", "b": "2", "c": "3"})),
    ("hgetall", lambda r: r.hgetall("h")),
    ("hgetall_missing", lambda r: r.hgetall("nope")),
    ("hmget", lambda r: r.hmget("h", ["a", "x"])),
    ("hincrbyfloat", lambda r: r.hincrbyfloat("h", "a", 0.5)),
    ("hkeys", lambda r: sorted(r.hkeys("h"))),
    ("zadd", lambda r: r.zadd("z", {"a": 1.5, "b": 2, "c": -1})),
    ("zscore", lambda r: r.zscore("z", "a")),
    ("zscore_missing", lambda r: r.zscore("z", "nope")),
    ("zrange_withscores", lambda r: r.zrange("z", 0, -1, withscores=True)),
    ("zincrby", lambda r: r.zincrby("z", 1, "c")),
    ("zrank", lambda r: r.zrank("z", "b")),
    ("zpopmin", lambda r: r.zpopmin("z")),
    ("zmscore", lambda r: r.zmscore("z", ["a", "nope"])),
    ("sadd", lambda r: r.sadd("st", "x", "y", "z")),
    ("smembers", lambda r: r.smembers("st")),
    ("smembers_missing", lambda r: r.smembers("nope")),
    ("sismember", lambda r: r.sismember("st", "x")),
    ("smismember", lambda r: r.smismember("st", ["x", "q"])),
    ("sinter_tagged", lambda r: (r.sadd("{t}b", "y"), r.sinter("{t}a", "{t}b"))),
    ("lpush", lambda r: r.rpush("l", "a", "b", "c")),
    ("lrange", lambda r: r.lrange("l", 0, -1)),
    ("lpop_count", lambda r: r.lpop("l", 2)),
    ("lpos", lambda r: r.lpos("l", "c")),
    ("xadd", lambda r: r.xadd("x", {"f": "v"}, id="1-1")),
    ("xrange", lambda r: r.xrange("x")),
    ("xinfo_stream", lambda r: r.xinfo_stream("x")["length"]),
    ("pfadd", lambda r: r.pfadd("hll", "a", "b", "c")),
    ("pfcount", lambda r: r.pfcount("hll")),
    ("setbit", lambda r: r.setbit("bits", 7, 1)),
    ("bitcount", lambda r: r.bitcount("bits")),
    ("geoadd", lambda r: r.geoadd("geo", (13.361389, 38.115556, "Palermo"))),
    ("geopos", lambda r: r.geopos("geo", "Palermo", "nope")),
    ("type", lambda r: [r.type(k) for k in ("s", "h", "z", "st", "l", "x", "nope")]),
    ("object_encoding", lambda r: r.object("encoding", "h")),
    ("expire", lambda r: r.expire("h", 1000)),
    ("persist", lambda r: r.persist("h")),
    ("rename_tagged", lambda r: (r.set("{u}a", 1), r.rename("{u}a", "{u}b"), r.get("{u}b"))),
    ("copy_tagged", lambda r: r.copy("{u}b", "{u}c")),
    ("eval", lambda r: r.eval("return {KEYS[1], ARGV[1], 3}", 1, "{u}b", "arg")),
    ("eval_float", lambda r: r.eval("return redis.call('ZSCORE', KEYS[1], 'a')", 1, "z")),
    ("script_load_evalsha", lambda r: r.evalsha(r.script_load("return 7"), 0)),
    ("dbsize", lambda r: r.dbsize()),
    ("keys", lambda r: sorted(r.keys("m1*"))),
    ("scan_iter", lambda r: sorted(r.scan_iter(match="m*", count=5))),
    ("hscan", lambda r: sorted(r.hscan_iter("h"))),
    ("sscan", lambda r: sorted(r.sscan_iter("st"))),
    ("zscan", lambda r: sorted(r.zscan_iter("z"))),
    ("client_name", lambda r: (r.client_setname("app"), r.client_getname())),
    ("select0", lambda r: r.execute_command("SELECT", 0)),
    ("delete", lambda r: r.delete("s", "m1", "m2", "nope")),
    ("unlink", lambda r: r.unlink(*[f"m{i}" for i in range(20)])),
    ("getdel", lambda r: r.getdel("n")),
    ("wrongtype", lambda r: r.lpush("h", "x")),
    ("unknown", lambda r: r.execute_command("NOSUCHCOMMAND", "a")),
    ("arity", lambda r: r.execute_command("GET")),
]


def run_steps(r: redis.Redis) -> list[tuple[str, Any]]:
    out = []
    for name, step in STEPS:
        try:
            value = step(r)
        except redis.ResponseError as exc:
            value = ("error", type(exc).__name__, str(exc))
        out.append((name, value))
    return out


def typed(value: Any) -> Any:
    """The value with the types of everything in it, so 1 == 1.0 or b"1" == 1 do not pass."""
    if isinstance(value, dict):
        return ("dict", sorted((typed(k), typed(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    if isinstance(value, set):
        return ("set", sorted(typed(v) for v in value))
    return (type(value).__name__, value)


@pytest.mark.parametrize("protocol", [None, 2], ids=["defaults_resp3", "resp2"])
def test_redis_py_same_values_and_types_as_redis(
    proxy: ProxyThread, reference: RedisServer, protocol: int | None
) -> None:
    got = run_steps(redis.Redis(port=proxy.port, protocol=protocol))
    ref = run_steps(redis.Redis(port=reference.port, protocol=protocol))
    diffs = [(g[0], g[1], r[1]) for g, r in zip(got, ref, strict=True) if typed(g) != typed(r)]
    assert not diffs, diffs


def test_redis_py_defaults_give_resp3_types(proxy: ProxyThread, reference: RedisServer) -> None:
    r = redis.Redis(port=proxy.port)
    info = r.client_info()
    assert info["resp"] == "3"
    # CLIENT SETINFO is unknown to Redis 7.0.15, as here: redis-py goes on; CLIENT INFO has
    # 7.0.15's fields.
    assert set(info) == set(redis.Redis(port=reference.port).client_info())
    r.hset("h", mapping={"a": "1"})
    r.zadd("z", {"m": 2.5})
    r.sadd("s", "x")
    assert r.hgetall("h") == {b"a": b"1"}
    assert isinstance(r.zscore("z", "m"), float)
    assert r.zrange("z", 0, -1, withscores=True) == [(b"m", 2.5)]
    assert r.smembers("s") == {b"x"}
    assert r.get("missing") is None
    assert r.hget("h", "missing") is None
    assert r.incrbyfloat("fl", 0.5) == 0.5


def test_redis_py_pipeline_and_transactions(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port)
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p{i}", i).get(f"p{i}").hgetall("nope").zscore("nope", "m")
    out = pipe.execute()
    for i in range(500):
        assert out[4 * i : 4 * i + 4] == [True, str(i).encode(), {}, None]
    # MULTI/EXEC: one block on the keys' one backend (README: transactions).
    assert r.pipeline().set("{t}a", 1).incr("{t}a").execute() == [True, 2]
    assert r.ping()


# -- redis-cli -----------------------------------------------------------------------------------
def cli(port: int, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [REDIS_CLI, "-p", str(port), *args], input=stdin, capture_output=True, timeout=20
    )


@needs_cli
def test_redis_cli_basics(proxy: ProxyThread) -> None:
    assert cli(proxy.port, "PING").stdout == b"PONG\n"
    assert cli(proxy.port, "SET", "greeting", "hello world").stdout == b"OK\n"
    assert cli(proxy.port, "GET", "greeting").stdout == b"hello world\n"
    assert cli(proxy.port, "--no-raw", "GET", "missing").stdout == b"(nil)\n"
    assert cli(proxy.port, "-3", "HSET", "h", "f", "v").stdout == b"1\n"
    assert cli(proxy.port, "-3", "--no-raw", "HGETALL", "h").stdout == b'1# "f" => "v"\n'
    out = cli(proxy.port, stdin=b"SET x 1\nINCR x\nGET x\n")
    assert out.stdout == b"OK\n2\n2\n" and out.returncode == 0
    assert cli(proxy.port, "-r", "3", "INCR", "c").stdout == b"1\n2\n3\n"
    for i in range(300):
        cli_key = f"scan:{i}"
        assert redis.Redis(port=proxy.port).set(cli_key, i)
    scanned = cli(proxy.port, "--scan", "--pattern", "scan:*").stdout.split()
    assert sorted(scanned) == sorted(f"scan:{i}".encode() for i in range(300))
    err = cli(proxy.port, "CONFIG", "SET", "maxmemory", "1")
    assert b"not allowed" in err.stdout + err.stderr


@needs_cli
def test_redis_cli_pipe_inline(proxy: ProxyThread) -> None:
    payload = b"".join(b"SET inline:%d %d\r\n" % (i, i) for i in range(2000))
    out = cli(proxy.port, "--pipe", stdin=payload)
    assert out.returncode == 0, out
    assert b"errors: 0, replies: 2000" in out.stdout
    assert redis.Redis(port=proxy.port).get("inline:1999") == b"1999"


@needs_cli
def test_redis_cli_pipe_resp(proxy: ProxyThread) -> None:
    """redis-cli --pipe ends with '\\r\\n*2\\r\\n$4\\r\\nECHO...'. At 6d2a750 that blank line,
    read together with the requests before it, was a protocol error (and large pipes were
    misread as inline commands); fixed by the request parser of 84a1d7c."""
    for n in (100, 1000, 5000):
        payload = b"".join(encode(["SET", f"pipe:{i}", str(i)]) for i in range(n))
        out = cli(proxy.port, "--pipe", stdin=payload)
        assert out.returncode == 0 and f"errors: 0, replies: {n}".encode() in out.stdout, out


# -- a client that does not read ---------------------------------------------------------------
VALUE_BYTES = 10 * 1024
SLOW_KEY = "slow-reader:" + "k" * 32
GET_WIRE = encode(["GET", SLOW_KEY])
assert len(GET_WIRE) == 64
REPLY = b"$%d\r\n" % VALUE_BYTES + b"v" * VALUE_BYTES + b"\r\n"


def rss_bytes() -> int:
    """Resident memory of this process, which runs the proxy too."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


ClientRow = tuple[int, bool, int]  # write buffer bytes, reading?, unanswered requests


def proxy_state(proxy: ProxyThread) -> tuple[list[ClientRow], int]:
    """Per client connection its row, and the backends' requests in flight (read on the loop)."""

    async def read() -> tuple[list[ClientRow], int]:
        server = proxy.server
        assert server is not None
        rows = [
            (c.transport.get_write_buffer_size(), c.transport.is_reading(), len(c.pending))  # type: ignore[attr-defined]
            for c in server.clients
            if c.transport is not None
        ]
        return rows, sum(b.inflight() for b in server.pool.backends.values())

    return proxy.call(read())  # type: ignore[no-any-return]


def busy_client(proxy: ProxyThread) -> ClientRow:
    return busy_state(proxy)[0]


def busy_state(proxy: ProxyThread) -> tuple[ClientRow, int]:
    """The one busy client's row and the backends' requests in flight, read together: apart, a
    backlog resumed in between (the client's replies moved to its write buffer) skews them."""
    rows, inflight = proxy_state(proxy)
    busy = [row for row in rows if row[0] or row[2] or not row[1]]
    assert len(busy) == 1, rows
    return busy[0], inflight


def send_until_blocked(sock: socket.socket, payload: bytes) -> int:
    """Send without reading until sending blocks for half a second; return the bytes sent."""
    view = memoryview(payload)
    sent = 0
    sock.setblocking(False)
    try:
        while sent < len(payload):
            try:
                sent += sock.send(view[sent : sent + 65536])
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], 0.5)
                if not writable:
                    break
    finally:
        sock.setblocking(True)
    return sent


def read_replies(sock: socket.socket, count: int) -> None:
    """Read `count` replies of REPLY, checking every byte without keeping them."""
    expected = REPLY * (2 + (1 << 20) // len(REPLY))
    want = count * len(REPLY)
    got = 0
    buf = bytearray(1 << 20)
    sock.settimeout(20)
    while got < want:
        n = sock.recv_into(buf, min(len(buf), want - got))
        assert n, f"connection closed after {got} of {want} bytes"
        offset = got % len(REPLY)
        assert buf[:n] == expected[offset : offset + n], f"reply bytes differ near {got}"
        got += n


def test_slow_reader_is_paused_and_bounded(backends3: list[RedisServer]) -> None:
    """100k pipelined GETs of a 10 KB value (1 GB of replies), nothing read: the proxy stops
    reading the client and holds a bounded amount for it; reading then resumes the flow, and a
    client that leaves with replies owed leaves nothing behind."""
    total = 100_000
    with proxy_for([b.addr for b in backends3]) as proxy:
        redis.Redis(port=proxy.port).set(SLOW_KEY, b"v" * VALUE_BYTES)
        before = rss_bytes()
        with contextlib.closing(socket.create_connection(("127.0.0.1", proxy.port))) as sock:
            sent = send_until_blocked(sock, GET_WIRE * total) // len(GET_WIRE)
            wait_until(lambda: not busy_client(proxy)[1], 10, "the proxy to stop reading")
            (buffered, _, pending), inflight = busy_state(proxy)
            # Bounded by the limits (64 MB of output, 10,000 requests) plus what one read of
            # 256 KB asks for (4,096 GETs); not the 1 GB the requests would produce.
            assert inflight <= pending <= 10_000 + 4096, (pending, inflight)
            held = buffered + pending * len(REPLY)
            assert held < (64 << 20) + (10_000 + 4096) * len(REPLY), (buffered, pending)
            assert rss_bytes() - before < 400 * 1024 * 1024
            read_replies(sock, min(sent, 20_000))  # then leave with the rest owed
        server = proxy.server
        assert server is not None
        wait_until(lambda: not server.clients, 5, "the slow client to be forgotten")
        wait_until(lambda: all(b.idle() for b in server.pool.backends.values()), 10, "idle")
        assert redis.Redis(port=proxy.port).get(SLOW_KEY) == b"v" * VALUE_BYTES


def test_pending_limit_bounds_what_a_client_holds(backends3: list[RedisServer]) -> None:
    limits = "client:\n  max_pending_requests: 100\n  max_output_buffer_bytes: 1048576\n"
    config = simple_config([b.addr for b in backends3], free_port(), free_port(), limits)
    with running_proxy(config) as proxy:
        redis.Redis(port=proxy.port).set(SLOW_KEY, b"v" * VALUE_BYTES)
        with contextlib.closing(socket.create_connection(("127.0.0.1", proxy.port))) as sock:
            sock.sendall(GET_WIRE * 1024)  # 64 KB
            wait_until(lambda: not busy_client(proxy)[1], 10, "the proxy to stop reading")
            wait_until(lambda: proxy_state(proxy)[1] == 0, 10, "the backends to answer")
            buffered, _, pending = busy_client(proxy)
            held = buffered + pending * len(REPLY)
            assert held <= 1048576 + 100 * len(REPLY), held
