"""Transactions, blocking pops, scripts and subscribers at the migration's phase steps, each
reduced to a deterministic case (the end-to-end walks are test_queue_migration.py and
test_queue_libraries.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from tests.support.cluster import (
    Cluster,
    layout_ketama_2_to_3_disjoint,
    pool_of,
    server_client,
    walk,
)
from tests.support.processes import RedisServer, wait_until


def backfill_done(cluster: Cluster) -> None:
    cluster.step("backfill")
    wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 30, "the backfill")


def test_a_watched_key_copied_by_the_backfill_fails_the_exec(
    servers5: list[RedisServer], cluster_factory: Any
) -> None:
    """WATCH k; the backfill copies k (its fence holds k); EXEC answers nil and nothing runs,
    as when a watched key changed: the client's retry then runs once."""
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    cluster.step("double-write")
    with redis.Redis(port=cluster.port) as c:
        c.set("n", 5)
        pipe = c.pipeline()
        pipe.watch("n")
        assert int(pipe.get("n") or 0) == 5
        cluster.proxy.call(cluster.server.phases.fence.hold(b"n"))  # as a copy of n does
        cluster.proxy.call(_release(cluster, b"n"))
        pipe.multi()
        pipe.set("n", 6)
        with pytest.raises(redis.WatchError):
            pipe.execute()
        assert c.get("n") == b"5"
        c.transaction(lambda p: p.multi() or p.incr("n"), "n")  # the retry: runs once
        assert c.get("n") == b"6"
    new = pool_of(cluster, "new")
    wait_until(lambda: server_client(new.addr_for(b"n")).get("n") == b"6", 10, "the target")


async def _release(cluster: Cluster, key: bytes) -> None:
    cluster.server.phases.fence.release(key)


def test_a_blocked_pop_is_moved_at_cut_read(
    servers5: list[RedisServer], cluster_factory: Any
) -> None:
    """BLPOP q 0 waits on the source when cut-read moves reads to the target: the proxy ends it
    there (CLIENT UNBLOCK) and runs it again on the target; the next push is popped once and
    removed on both sides."""
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    old, new = pool_of(cluster, "old"), pool_of(cluster, "new")
    cluster.step("double-write")
    backfill_done(cluster)
    got: list[Any] = []
    with (
        redis.Redis(port=cluster.port, socket_timeout=20) as c,
        redis.Redis(port=cluster.port) as producer,
    ):
        waiter = threading.Thread(target=lambda: got.append(c.blpop(["q"], timeout=0)))
        waiter.start()
        source = server_client(old.addr_for(b"q"))
        wait_until(lambda: source.info("clients")["blocked_clients"] == 1, 10, "BLPOP waiting")
        cluster.step("cut-read")
        target = server_client(new.addr_for(b"q"))
        wait_until(lambda: target.info("clients")["blocked_clients"] == 1, 10, "moved")
        assert source.info("clients")["blocked_clients"] == 0
        producer.lpush("q", "job")
        waiter.join(10)
        assert got == [(b"q", b"job")]
        wait_until(lambda: source.llen("q") == 0, 10, "the pop mirrored on the source")
        assert target.llen("q") == 0


def test_evalsha_during_a_migration_reaches_the_other_pool(
    servers5: list[RedisServer], cluster_factory: Any
) -> None:
    """A script loaded on the source before the migration: EVALSHA is answered NOSCRIPT until the
    client sends the body (redis-py's Script does), then runs on both pools."""
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    new = pool_of(cluster, "new")
    with redis.Redis(port=cluster.port) as c:
        incr = c.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert incr(keys=["s"], args=[2]) == 2  # loaded on the source only
        cluster.step("double-write")
        with pytest.raises(redis.exceptions.NoScriptError):
            c.evalsha(incr.sha, 1, "s", 3)
        assert incr(keys=["s"], args=[3]) == 5  # Script loads it again: now known
        assert c.evalsha(incr.sha, 1, "s", 4) == 9
    assert cluster.server.migration.double_write_errors == {}
    target = server_client(new.addr_for(b"s"))
    wait_until(lambda: target.get("s") == b"9", 10, "the script's effect on the target")


def test_publish_inside_a_transaction_and_a_subscriber_across_the_whole_walk(
    servers5: list[RedisServer], cluster_factory: Any
) -> None:
    """kombu's result backend: MULTI, SET, PUBLISH, EXEC on one backend by a hash tag. The
    subscriber's servers all leave the config by the end: it is moved, never disconnected,
    and gets each message once."""
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    with redis.Redis(port=cluster.port) as c:
        ps = c.pubsub(ignore_subscribe_messages=True)
        ps.subscribe("{t}meta")
        ps.psubscribe("{t}*")
        wait_until(lambda: c.pubsub_numpat() == 1, 10, "subscribed")
        seen: list[tuple[str, bytes]] = []
        phases: list[bytes] = []

        def at_each(phase: str) -> None:
            pipe = c.pipeline()  # transaction=True
            pipe.set("{t}meta", phase)
            pipe.publish("{t}meta", phase)
            assert pipe.execute() == [True, 2]
            phases.append(phase.encode())
            wait_until(lambda: receive(ps, seen) >= 2 * len(phases), 10, f"messages in {phase}")

        walk(cluster, at_each)
        assert ps.get_message(timeout=0.3) is None  # nothing twice
        want = [("message", p) for p in phases] + [("pmessage", p) for p in phases]
        assert sorted(seen) == sorted(want)
        ps.close()


def receive(ps: Any, seen: list[tuple[str, bytes]]) -> int:
    msg = ps.get_message(timeout=0.1)
    if msg is not None:
        seen.append((msg["type"], msg["data"]))
    return len(seen)
