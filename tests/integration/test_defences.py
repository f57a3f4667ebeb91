"""The cache defences against real redis-server backends: hot keys, big keys, the hot-key cache,
coalescing and TTL jitter (README "Protecting the cache")."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proxy.cli.main import main as cli_main
from proxy.net.metrics import DefenceStats
from tests.support.processes import RedisServer, free_port, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import RespConn

HOT = "hotkeys: {sample_every: 1, top: 32, capacity: 256, hot_rate_per_s: 0}\n"


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer]) -> None:
    for b in backends3:
        b.client().flushall()


@pytest.fixture
def make_proxy(backends3: list[RedisServer]) -> Iterator[Any]:
    stack: list[Any] = []

    def make(extra: str) -> tuple[ProxyThread, int]:
        admin = free_port()
        text = simple_config([b.addr for b in backends3], free_port(), admin, extra)
        ctx = running_proxy(text)
        stack.append(ctx)
        return ctx.__enter__(), admin

    yield make
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def admin_get(admin: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def stats(proxy: ProxyThread) -> DefenceStats:
    assert proxy.server is not None
    return proxy.server.defences.stats


def owner(backends: list[RedisServer], proxy: ProxyThread, key: str) -> redis.Redis:
    assert proxy.server is not None
    addr = proxy.server.routes.route.addr_for(key.encode())
    return next(b for b in backends if b.addr == addr).client()


def make_hot(r: redis.Redis, *keys: str) -> None:
    for key in keys:  # sampled (every request, in HOT), then in the hot set
        r.get(key)


# -- hot keys ----------------------------------------------------------------------------------
def test_zipf_load_reports_the_real_top_10(make_proxy: Any) -> None:
    proxy, admin = make_proxy(HOT)
    rng = random.Random(7)
    names = [f"user:{i}" for i in range(2000)]  # more keys than the 256 counters
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(names))]
    load = rng.choices(names, weights, k=40_000)
    with RespConn(proxy.port) as conn:
        replies = conn.pipeline([("GET", key) for key in load])
    assert len(replies) == len(load)
    real = {key for key, _ in Counter(load).most_common(10)}
    rows = admin_get(admin, "/hotkeys")["hotkeys"]
    reported = [row["key"] for row in rows[:10]]
    assert set(reported) == real
    top = rows[0]
    assert top["pool"] == "main" and top["backend"] in proxy.server.routes.route.addrs  # type: ignore[union-attr]
    assert 0 < top["backend_share"] <= 1 and top["rate_per_s"] > 0


def test_cli_merges_a_fleet_and_hashes_names_when_asked(
    make_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    one, admin1 = make_proxy(HOT)
    two, admin2 = make_proxy(HOT.replace("}", ", hash_names: true, hash_secret: s}"))
    for proxy, n in ((one, 30), (two, 10)):
        r = redis.Redis(port=proxy.port)
        for _ in range(n):
            r.get("hot:a")
    rows = admin_get(admin2, "/hotkeys")["hotkeys"]
    assert rows and all(row["key"].startswith("h:") for row in rows)
    assert (
        cli_main(
            [
                "hotkeys",
                "--admin",
                f"127.0.0.1:{admin1}",
                "--admin",
                f"127.0.0.1:{admin1}",
                "--json",
            ]
        )
        == 0
    )
    merged = json.loads(capsys.readouterr().out)["hotkeys"]
    assert merged[0]["key"] == "hot:a" and merged[0]["count"] == 60
    assert cli_main(["hotkeys", "--admin", f"127.0.0.1:{admin1}"]) == 0
    assert "hot:a" in capsys.readouterr().out
    assert cli_main(["hotkeys", "--admin", f"127.0.0.1:{free_port()}"]) == 1


# -- big keys ----------------------------------------------------------------------------------
def test_big_requests_and_replies_are_counted_and_listed(
    make_proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy, admin = make_proxy("bigkeys: {threshold_bytes: 1000}\n")
    r = redis.Redis(port=proxy.port)
    r.set("big:1", b"x" * 5000)
    r.set("small", b"x" * 10)
    assert r.get("big:1") == b"x" * 5000
    r.get("small")
    body = admin_get(admin, "/bigkeys")
    found = {(row["key"], row["direction"], row["command"]) for row in body["bigkeys"]}
    assert found == {("big:1", "request", "set"), ("big:1", "reply", "get")}
    counts = {(c["command"], c["direction"]): c["count"] for c in body["counts"]}
    assert counts == {("set", "request"): 1, ("get", "reply"): 1}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    assert 'shardproxy_bigkeys_total{command="get",direction="reply"} 1.0' in metrics
    assert "big:1" not in metrics  # key names never become labels
    assert cli_main(["bigkeys", "--admin", f"127.0.0.1:{admin}"]) == 0
    assert "big:1" in capsys.readouterr().out


# -- the hot-key cache -------------------------------------------------------------------------
CACHE = HOT + "hotcache: {enabled: true, ttl_ms: 60000, patterns: ['user:*', 'h:*']}\n"


def test_a_write_through_this_proxy_is_never_followed_by_a_stale_read(make_proxy: Any) -> None:
    proxy, _ = make_proxy(CACHE)
    writer, reader = redis.Redis(port=proxy.port), redis.Redis(port=proxy.port, protocol=3)
    make_hot(reader, "user:1")
    pipe = writer.pipeline(transaction=False)
    for i in range(200):
        writer.set("user:1", i)
        assert reader.get("user:1") == str(i).encode()  # another client: after the write
        assert writer.get("user:1") == str(i).encode()  # the writer itself
        pipe.set("user:1", f"p{i}").get("user:1").hset("h:1", "f", i).hget("h:1", "f")
        pipe.hgetall("h:1").mget("user:1", "user:1")
        assert pipe.execute() == [True, f"p{i}".encode(), 0 if i else 1, str(i).encode(),
                                  {b"f": str(i).encode()}, [f"p{i}".encode()] * 2]  # fmt: skip
    make_hot(reader, "user:{r}a", "user:{r}b")
    writer.mset({"user:{r}a": "A", "user:{r}b": "B"})
    assert reader.get("user:{r}b") == b"B" and reader.get("user:{r}a") == b"A"
    writer.rename("user:{r}a", "user:{r}b")  # both keys written
    assert reader.get("user:{r}b") == b"A" and reader.get("user:{r}a") is None
    writer.delete("user:{r}b")
    assert reader.get("user:{r}b") is None
    assert stats(proxy).cache_hits >= 200  # the writer's reads after the reader's


def owner_get(proxy: ProxyThread, key: str) -> bytes | None:
    assert proxy.server is not None
    addr = proxy.server.routes.route.addr_for(key.encode())
    return redis.Redis(port=int(addr.rsplit(":", 1)[1])).get(key)  # type: ignore[return-value]


def test_transactions_scripts_expiry_and_flush_invalidate(make_proxy: Any) -> None:
    proxy, _ = make_proxy(CACHE + "allow_flush: true\n")
    r = redis.Redis(port=proxy.port)
    make_hot(r, "user:{t}a", "user:{t}b")
    r.set("user:{t}a", "1")
    assert r.get("user:{t}a") == b"1" and r.get("user:{t}a") == b"1"
    tx = r.pipeline(transaction=True)
    tx.set("user:{t}a", "2").get("user:{t}a")
    assert tx.execute() == [True, b"2"]
    assert r.get("user:{t}a") == b"2"
    r.eval("redis.call('SET', KEYS[1], ARGV[1])", 1, "user:{t}a", "3")
    assert r.get("user:{t}a") == b"3"
    r.pexpire("user:{t}a", 1)
    wait_until(lambda: owner_get(proxy, "user:{t}a") is None, 5, "the key to expire")
    assert r.get("user:{t}a") is None
    r.set("user:{t}b", "1")
    assert r.get("user:{t}b") == b"1" and r.get("user:{t}b") == b"1"
    r.flushall()  # keyless: clears everything
    assert r.get("user:{t}b") is None


def test_a_write_straight_to_redis_is_seen_within_ttl_ms(
    make_proxy: Any, backends3: list[RedisServer]
) -> None:
    ttl_s = 0.3
    proxy, _ = make_proxy(CACHE.replace("ttl_ms: 60000", "ttl_ms: 300"))
    r = redis.Redis(port=proxy.port)
    make_hot(r, "user:2")
    r.set("user:2", "old")
    assert r.get("user:2") == b"old"  # cached now
    hits = stats(proxy).cache_hits
    owner(backends3, proxy, "user:2").set("user:2", "new")
    written = time.monotonic()
    assert r.get("user:2") == b"old" and stats(proxy).cache_hits == hits + 1  # stale, as allowed
    wait_until(lambda: r.get("user:2") == b"new", ttl_s + 2, "the direct write to show")
    assert time.monotonic() - written < ttl_s + 1.0  # ttl_ms, and room for a busy machine


def test_nil_replies_are_cached_and_nothing_outside_the_patterns(
    make_proxy: Any, backends3: list[RedisServer]
) -> None:
    proxy, _ = make_proxy(CACHE)
    r = redis.Redis(port=proxy.port)
    make_hot(r, "user:absent", "other:1")  # hot from its first request: a miss, cached
    assert r.get("user:absent") is None and r.get("user:absent") is None
    assert stats(proxy).cache_hits == 2  # the penetration defence: misses served by the proxy
    for i in range(50):
        owner(backends3, proxy, "other:1").set("other:1", i)
        assert r.get("other:1") == str(i).encode()  # never cached: seen at once
    assert stats(proxy).cache_entries == 1


def test_the_byte_budget_holds_under_a_flood_of_hot_keys(make_proxy: Any) -> None:
    budget = 64 * 1024
    proxy, _ = make_proxy(CACHE.replace("ttl_ms: 60000", f"ttl_ms: 60000, max_bytes: {budget}"))
    r = redis.Redis(port=proxy.port)
    value = b"v" * 1000
    for batch in range(20):
        keys = [f"user:flood:{batch}:{i}" for i in range(50)]
        r.mset(dict.fromkeys(keys, value))
        with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key).get(key)  # sampled (hot), then cached
            assert pipe.execute() == [value] * 2 * len(keys)
        assert proxy.server is not None
        cache = proxy.server.defences.cache
        assert cache is not None and cache.store is not None
        assert 0 < cache.store.bytes <= budget
    assert stats(proxy).cache_evictions > 0 and stats(proxy).cache_bytes <= budget


# -- coalescing --------------------------------------------------------------------------------
def test_coalescing_keeps_read_your_writes_for_every_client(make_proxy: Any) -> None:
    """Each hot key has one writer; every client reads every hot key, pipelined. A writer reads
    exactly its last write; any client reads at least the value whose write had been answered
    before its read was sent (the model: `done`)."""
    proxy, _ = make_proxy(HOT + "coalesce: {enabled: true}\n")
    for backend in backends_of(proxy):
        backend.config_resetstat()
    keys = [f"k:{i}" for i in range(4)]
    done = dict.fromkeys(keys, -1)
    problems: list[str] = []
    sent = Counter[str]()

    def client(index: int) -> None:
        rng = random.Random(index)
        mine = keys[index] if index < len(keys) else None
        seq = 0
        with RespConn(proxy.port) as conn:
            for _ in range(60):
                if mine is not None and rng.random() < 0.3:
                    seq += 1
                    conn.call("SET", mine, seq)
                    done[mine] = seq
                reads = [rng.choice(keys) for _ in range(rng.randint(1, 24))]
                floors = [done[k] for k in reads]
                sent["get"] += len(reads)
                replies = conn.pipeline([("GET", k) for k in reads])
                for key, floor, reply in zip(reads, floors, replies, strict=True):
                    got = int(reply.split(b"\r\n")[1]) if reply != b"$-1\r\n" else -1
                    if got < floor or (key == mine and got != (seq or -1)):
                        problems.append(f"client {index} read {key}={got}, expected >= {floor}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not problems, problems[:5]
    saved = stats(proxy).coalesced
    assert saved > 0, "no read shared another's backend request"
    assert proxy.server is not None
    served = sum(b.client().info("commandstats").get("cmdstat_get", {}).get("calls", 0)
                 for b in backends_of(proxy))  # fmt: skip
    assert served + saved == sent["get"]


def backends_of(proxy: ProxyThread) -> list[redis.Redis]:
    assert proxy.server is not None
    return [redis.Redis(port=int(a.rsplit(":", 1)[1])) for a in proxy.server.routes.route.addrs]


# -- TTL jitter --------------------------------------------------------------------------------
def test_ttl_jitter_spreads_relative_ttls_and_leaves_absolute_ones(make_proxy: Any) -> None:
    proxy, _ = make_proxy("ttl_jitter: [{pattern: 'j:*', percent: 20}]\n")
    r = redis.Redis(port=proxy.port)
    for i in range(100):
        r.set(f"j:{i}", "v", ex=100)
        r.execute_command("SETEX", f"j:x{i}", 100, "v")
        r.set(f"plain:{i}", "v", ex=100)
    jittered = [r.pttl(f"j:{i}") for i in range(100)] + [r.pttl(f"j:x{i}") for i in range(100)]
    assert all(99_000 < t <= 120_000 for t in jittered), (min(jittered), max(jittered))
    assert max(jittered) - min(jittered) > 10_000  # spread over the 20%
    assert all(r.pttl(f"plain:{i}") <= 100_000 for i in range(100))
    for i in range(20):
        r.expire(f"j:{i}", 50)
        r.pexpire(f"j:x{i}", 50_000)
    spread = [r.pttl(f"j:{i}") for i in range(20)] + [r.pttl(f"j:x{i}") for i in range(20)]
    assert all(49_000 < t <= 60_000 for t in spread) and len(set(spread)) > 5
    at = int(time.time()) + 100
    r.set("j:at", "v", exat=at)
    r.expireat("j:at2", at) if r.set("j:at2", "v") else None
    r.pexpireat("j:at3", at * 1000) if r.set("j:at3", "v") else None
    for key in ("j:at", "j:at2", "j:at3"):
        assert r.pttl(key) <= 100_000, key
    r.set("j:keep", "v", px=5000)
    r.set("j:keep", "v2", keepttl=True)
    assert r.pttl("j:keep") <= 6000  # KEEPTTL untouched (the first SET's jitter is <= 20%)
    assert stats(proxy).jittered == 200 + 40 + 1


def test_mget_is_answered_from_its_cached_parts(
    make_proxy: Any, backends3: list[RedisServer]
) -> None:
    proxy, _ = make_proxy(CACHE)
    r = redis.Redis(port=proxy.port)
    r.mset({"user:m1": "a", "user:m2": "b"})
    make_hot(r, "user:m1", "user:m2")
    assert r.mget("user:m1", "user:m2", "user:m3") == [b"a", b"b", None]  # fills the parts
    hits = stats(proxy).cache_hits
    owner(backends3, proxy, "user:m2").set("user:m2", "direct")
    assert r.mget("user:m1", "user:m2", "user:m3") == [b"a", b"b", None]  # all three cached
    assert stats(proxy).cache_hits == hits + 3
    r.set("user:m1", "new")  # through the proxy: dropped at once
    assert r.mget("user:m1", "user:m2", "user:m3") == [b"new", b"direct", None]
