"""Prefix routes against real redis-server: keys and channels land on their pool's servers (read
back from the backends themselves), fan-outs cover every pool once, reloads add and remove routes
(a bad one is refused and the old config keeps serving), and a migration walked phase by phase
by reload: of the default pool, leaving a routed pool's keys alone even on a shared server, and
of the routed pool (migration.from), moving its keys and nothing else.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.migration.keys import is_reserved
from tests.support.processes import RedisServer, wait_until
from tests.support.routed import ROUTE, Routed

CLI = [sys.executable, "-m", "proxy"]
N = 300  # keys per kind


@pytest.fixture
def servers(servers5: list[RedisServer]) -> list[RedisServer]:
    """The module's five servers (tests/conftest.py), flushed before each test."""
    return servers5


@pytest.fixture
def routed(servers: list[RedisServer], tmp_path: Path) -> Iterator[Routed]:
    cluster = Routed(servers, tmp_path / "proxy.yaml", queues=[3])
    yield cluster
    cluster.stop()


def write_keys(client: redis.Redis) -> None:
    """N keys of the routed pool (rq:job:<i>) and N of the default pool (user:<i>), value i."""
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.set(b"rq:job:%d" % i, i).set(b"user:%d" % i, i)
    pipe.execute()


def test_keys_land_on_their_pools_servers(routed: Routed) -> None:
    c = routed.client
    write_keys(c)
    for i in range(N):
        assert routed.on_backends(b"rq:job:%d" % i) == [3]
        assert routed.on_backends(b"user:%d" % i) == [routed.owner(b"user:%d" % i)]
        assert routed.owner(b"user:%d" % i) in (0, 1)
    keys = [b"rq:job:1", b"user:1", b"rq:job:2", b"user:2", b"missing"]
    assert c.mget(keys) == [b"1", b"1", b"2", b"2", None]
    assert c.dbsize() == 2 * N
    assert len(c.keys("*")) == 2 * N
    assert sum(1 for _ in c.scan_iter(count=50)) == 2 * N
    assert sorted(c.scan_iter(match="rq:*", count=50)) == sorted(b"rq:job:%d" % i for i in range(N))
    assert c.delete(*(b"rq:job:%d" % i for i in range(10)), b"user:0") == 11


def test_same_backend_rules_apply_across_pools(routed: Routed) -> None:
    c = routed.client
    c.rpush("rq:queue:a", "x")
    assert c.rpoplpush("rq:queue:a", "rq:queue:b") == b"x"
    with pytest.raises(redis.ResponseError, match="different backends"):
        c.rpoplpush("rq:queue:b", "user:1")
    pipe = c.pipeline(transaction=True)
    pipe.incr("rq:count").lpush("rq:queue:b", "y")
    assert pipe.execute() == [1, 2]
    assert routed.on_backends(b"rq:count") == [3]
    assert c.blpop(["rq:queue:b"], timeout=1) == (b"rq:queue:b", b"y")


def test_channels_follow_the_routes(routed: Routed) -> None:
    ps = routed.client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe("rq:pubsub:worker1")
    queue_server = routed.s[3].client()
    wait_until(
        lambda: queue_server.pubsub_numsub("rq:pubsub:worker1") == [(b"rq:pubsub:worker1", 1)],
        10,
        "the subscription on the routed pool's server",
    )
    assert routed.client.publish("rq:pubsub:worker1", "stop") == 1
    message = None
    for _ in range(50):
        message = ps.get_message(timeout=0.2)
        if message is not None:
            break
    assert message is not None and message["data"] == b"stop"
    ps.close()


def test_reload_adds_and_removes_routes(routed: Routed) -> None:
    c = routed.client
    ok, why = routed.reload(routed.render(routes="[]"))
    assert ok, why
    c.set("rq:job:a", 1)
    assert routed.on_backends(b"rq:job:a") == [routed.owner(b"rq:job:a")] != [3]
    ok, why = routed.reload(
        routed.render(routes="[{prefix: 'rq:', pool: queues}, {prefix: 'rq:job:', pool: main2}]")
    )
    assert ok, why
    c.set("rq:queue:q", 1)
    c.set("rq:job:b", 1)
    assert routed.on_backends(b"rq:queue:q") == [3]
    assert routed.on_backends(b"rq:job:b") == [routed.owner(b"rq:job:b")]
    assert routed.status()["routes"] == [
        {"prefix": "rq:", "pool": "queues"},
        {"prefix": "rq:job:", "pool": "main2"},
    ]
    generation = routed.status()["generation"]
    for bad, why in (
        ("[{prefix: 'rq:', pool: nope}]", "routes[0].pool: no pool named 'nope'"),
        ("[{prefix: 'x', pool: main}, {prefix: 'x', pool: main2}]", "duplicate prefix 'x'"),
        ("[{prefix: '', pool: queues}]", "routes[0].prefix: must not be empty"),
    ):
        ok, message = routed.reload(routed.render(routes=bad))
        assert not ok and why in message, message
    assert routed.status()["generation"] == generation
    c.set("rq:queue:r", 1)
    assert routed.on_backends(b"rq:queue:r") == [3]  # the old config keeps serving


def cli(*args: str) -> str:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def walk(routed: Routed, migration: str, done: str, routes: str, plan: list[str]) -> None:
    """none -> double-write -> backfill (until done) -> cut-read -> retire -> cleanup; `plan`:
    lines `shardproxy plan` must print in double-write."""
    route = "main"
    for phase in ("double-write", "backfill"):
        ok, why = routed.reload(routed.render(routes, route, f"{migration}  phase: {phase}\n"))
        assert ok, why
        if phase == "double-write":
            out = cli("plan", "-c", str(routed.path))
            assert all(line in out for line in plan), out
    wait_until(lambda: routed.status()["backfill"]["state"] == "done", 60, "backfill done")
    for phase in ("cut-read", "retire"):
        ok, why = routed.reload(routed.render(routes, route, f"{migration}  phase: {phase}\n"))
        assert ok, why
    assert done in cli("cleanup", "-c", str(routed.path))


def test_migrating_the_default_pool_leaves_routed_keys_alone(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    # queues is s0, a server of main too: its rq: keys sit among main's keys.
    routed = Routed(servers, tmp_path / "proxy.yaml", queues=[0])
    try:
        c = routed.client
        write_keys(c)
        servers[1].client().set("rq:stray", "written before the route existed")
        plan = [
            "prefix routes (longest prefix wins):",
            "  'rq:' -> queues: stays on pool queues: none of its keys move",
            "keys of other pools (prefix routes) left alone",
        ]
        walk(routed, "migration:\n  to: main2\n", "cleanup pool main2: deleted", ROUTE, plan)
        ok, why = routed.reload(routed.render(ROUTE, route="main2"))
        assert ok, why
        for i in range(N):
            assert routed.on_backends(b"rq:job:%d" % i) == [0]  # never copied, never deleted
            assert routed.on_backends(b"user:%d" % i) == [routed.owner(b"user:%d" % i)]
            assert c.get(b"user:%d" % i) == b"%d" % i
            assert c.get(b"rq:job:%d" % i) == b"%d" % i
        assert {routed.owner(b"user:%d" % i) for i in range(N)} == {0, 1, 2}
        assert routed.on_backends(b"rq:stray") == [1]  # another pool's key: left alone
    finally:
        routed.stop()


def test_migrating_the_routed_pool_moves_its_keys_only(routed: Routed) -> None:
    c = routed.client
    write_keys(c)
    before = {i: routed.on_backends(b"user:%d" % i) for i in range(N)}
    walk(
        routed,
        "migration:\n  from: queues\n  to: queues2\n",
        "cleanup pool queues2: deleted",
        ROUTE,
        [
            "  'rq:' -> queues: follows the migration to pool queues2:",
            f"  route 'rq:': sampled {N}, would move",
        ],
    )
    refused, why = routed.reload(routed.render(ROUTE))
    assert not refused and "routes of pool 'queues' to name 'queues2'" in why
    ok, why = routed.reload(routed.render("[{prefix: 'rq:', pool: queues2}]"))
    assert ok, why
    owners = set()
    for i in range(N):
        key = b"rq:job:%d" % i
        owners.add(routed.owner(key))
        assert routed.on_backends(key) == [routed.owner(key)]
        assert c.get(key) == b"%d" % i
        assert routed.on_backends(b"user:%d" % i) == before[i]  # default keys untouched
    assert owners == {3, 4}
    on_s4 = [k for k in routed.s[4].client().scan_iter() if not is_reserved(k)]
    assert sorted(on_s4) == sorted(
        b"rq:job:%d" % i for i in range(N) if routed.owner(b"rq:job:%d" % i) == 4
    )
