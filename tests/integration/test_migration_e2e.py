"""Online re-sharding end to end, under a concurrent write load the whole time.

Six client threads (RESP2 and RESP3, some pipelining) each own a disjoint key range and check
every reply against an exact model (tests/support/loadgen.py) while the proxy walks every phase by a
config-file rewrite and a reload: none -> double-write -> backfill (until its gate) -> cut-read
-> retire (and `shardproxy cleanup`) -> route: new with no migration block. Then every key must
equal the model through the proxy and on its owner in the new ring, TTLs must be kept, no
deleted key may come back, no server may hold a key the new ring places elsewhere, and the
clients must have seen no error and no reply that differs from the model.

Cases: ketama 3 -> 5 servers reusing the 3, and modula 2 -> 4 (the seed's doubling: exactly
half the keys move). Plus the refusals: illegal steps, and backfill -> cut-read before the gate
(unless migration.force).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
import redis

from proxy.config.schema import parse_config
from proxy.jobs.executor import Executor, copy_key
from proxy.migration.keys import is_reserved
from proxy.migration.shares import moved_shares
from proxy.routing.topology import build_pool
from tests.support.cluster import (
    Cluster,
    Layout,
    addr_of,
    layout_ketama_2_to_3_disjoint,
    layout_ketama_3_to_5,
    layout_modula_2_to_4,
    pool_of,
    proxy_connections,
    run_cleanup,
    server_client,
)
from tests.support.loadgen import TTL_S, Entry, Load, Worker, expected_value, normalize, read_args
from tests.support.processes import RedisServer, wait_until

TTL_TOLERANCE_S = 5.0
COLD_KEYS = 6000  # written before double-write and never touched again: history to backfill
PROGRESS = 300  # replies every worker must get in each phase before the next step


@pytest.fixture
def servers(servers5: list[RedisServer]) -> list[RedisServer]:
    """The module's five servers (tests/conftest.py), flushed before each test."""
    return servers5


def write_cold_keys(port: int, n: int) -> dict[bytes, Entry]:
    """n string keys through the proxy (every 3rd with a TTL); their model."""
    model: dict[bytes, Entry] = {}
    with redis.Redis(port=port, protocol=2) as c:
        pipe = c.pipeline(transaction=False)
        for i in range(n):
            key, value = b"cold:%d" % i, b"history-%d" % i
            ttl = i % 3 == 0
            model[key] = Entry("s", value, time.time() + TTL_S if ttl else None)
            pipe.set(key, value, ex=TTL_S if ttl else None)
            if len(pipe) >= 500:
                assert all(pipe.execute())
        assert all(pipe.execute())
    return model


def make_workers(port: int) -> list[Worker]:
    """Six clients: RESP2 and RESP3, one at a time and pipelined, on hot ranges (4 keys per
    family: the backfill copies keys while they are written) and wide ones (40 per family)."""
    specs = [(2, 0, 40), (3, 0, 4), (2, 8, 4), (3, 16, 40), (3, 8, 4), (2, 16, 40)]
    return [
        Worker(port, f"w{i}", protocol=proto, pipeline=depth, keys_per_family=n, seed=i)
        for i, (proto, depth, n) in enumerate(specs)
    ]


def read_all(client: redis.Redis, keys: dict[bytes, str]) -> dict[bytes, tuple[Any, int]]:
    """Each key's value (as the model holds values) and PTTL, pipelined."""
    out: dict[bytes, tuple[Any, int]] = {}
    items = list(keys.items())
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for key, kind in chunk:
            pipe.execute_command(*read_args(key, kind))
            pipe.pttl(key)
        replies = pipe.execute()
        for i, (key, kind) in enumerate(chunk):
            out[key] = (normalize(kind, replies[2 * i]), replies[2 * i + 1])
    return out


def check_final_state(
    cluster: Cluster, model: dict[bytes, Entry], deleted: set[bytes], kinds: dict[bytes, str]
) -> None:
    """Every key equals the model through the proxy and on its new owner; TTLs kept; deleted keys
    gone everywhere; every server holds only the keys the new ring places on it."""
    new = pool_of(cluster, "new")
    problems: list[str] = []
    now = time.time()
    with redis.Redis(port=cluster.port, protocol=3) as c:
        through_proxy = read_all(c, kinds)
    by_owner: dict[str, dict[bytes, str]] = {}
    for key, kind in kinds.items():
        by_owner.setdefault(new.addr_for(key), {})[key] = kind
    on_owner: dict[bytes, tuple[Any, int]] = {}
    for addr, keys in by_owner.items():
        with server_client(addr) as c:
            on_owner.update(read_all(c, keys))
    for key in kinds:
        entry = model.get(key)
        want = expected_value(entry)
        for where, seen in (("proxy", through_proxy), ("owner", on_owner)):
            value, pttl = seen[key]
            if value != want:
                problems.append(f"{key!r} via {where}: {value!r}, model {want!r}")
            elif entry is not None and entry.expire_at is None and pttl != -1:
                problems.append(f"{key!r} via {where}: PTTL {pttl}, model no TTL")
            elif entry is not None and entry.expire_at is not None:
                left = entry.expire_at - now
                if pttl < 0 or abs(pttl / 1000 - left) > TTL_TOLERANCE_S:
                    problems.append(f"{key!r} via {where}: PTTL {pttl}, model ~{left * 1000:.0f}")
    stray = 0
    for addr in dict.fromkeys(addr_of(line) for line in cluster.layout.new):
        with server_client(addr) as c:
            for key in c.scan_iter(count=1000):
                if is_reserved(key):
                    continue
                if key not in model:
                    what = "a deleted key came back" if key in deleted else "an unknown key"
                    problems.append(f"{key!r} on {addr}: {what}")
                elif new.addr_for(key) != addr:
                    stray += 1
                    if stray <= 10:
                        problems.append(f"{key!r} on {addr}: the new ring places it elsewhere")
    if stray > 10:
        problems.append(f"... {stray} keys on a server the new ring does not place them on")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_modula_doubling_moves_exactly_half(servers: list[RedisServer]) -> None:
    layout = layout_modula_2_to_4(servers)
    config = parse_config(
        "pools:\n"
        f"  old: {{distribution: modula, servers: {list(layout.old)}}}\n"
        f"  new: {{distribution: modula, servers: {list(layout.new)}}}\n"
        "route: old\nmigration: {to: new, phase: double-write}\n",
        env={},
    )
    old, new = build_pool(config.pool("old")), build_pool(config.pool("new"))
    shares = moved_shares(old, new)
    a, b, c, d = (s.addr for s in servers[:4])
    assert shares == pytest.approx({(a, c): 0.25, (b, d): 0.25})


@pytest.mark.parametrize(
    ("make_layout", "step_back", "defended"),
    [
        (layout_ketama_3_to_5, False, False),
        (layout_modula_2_to_4, True, False),
        (layout_ketama_2_to_3_disjoint, False, False),
        (layout_ketama_3_to_5, False, True),
    ],
    ids=[
        "ketama-3-to-5",
        "modula-2-to-4-with-a-step-back",
        "ketama-2-to-3-disjoint",
        "ketama-3-to-5-every-cache-defence-on",
    ],
)
def test_reshard_under_load(
    servers: list[RedisServer],
    cluster_factory: Any,
    make_layout: Any,
    step_back: bool,
    defended: bool,
) -> None:
    layout: Layout = make_layout(servers)
    cluster: Cluster = cluster_factory(layout, defended=defended)
    workers = make_workers(cluster.port)
    for w in workers:
        w.prepopulate()
    cold = write_cold_keys(cluster.port, COLD_KEYS)
    load = Load(workers).start()

    def settle(what: str) -> None:
        wait_until(load.progress(PROGRESS), 60, f"load progress in {what}")
        assert not load.problems(), "\n".join(load.problems())

    try:
        settle("none")
        cluster.refused("cut-read", "illegal phase step none -> cut-read")
        cluster.refused("backfill", "illegal phase step none -> backfill")

        cluster.step("double-write")
        settle("double-write")

        cluster.step("backfill")
        assert cluster.status()["backfill"]["state"] in ("idle", "running")
        cluster.refused("cut-read", "no gate written")
        cluster.refused("retire", "illegal phase step backfill -> retire")
        cluster.refused(None, "illegal phase step backfill -> none")
        wait_until(
            lambda: cluster.status()["backfill"]["state"] in ("done", "failed"),
            90,
            "the backfill to finish",
        )
        backfill = cluster.status()["backfill"]
        assert backfill["state"] == "done", backfill
        assert backfill["copied"] > 0 and backfill["failed"] == 0, backfill
        assert backfill["verify"]["remaining"] == 0, backfill
        settle("backfill (done)")

        cluster.step("cut-read")
        settle("cut-read")
        cluster.refused(None, "illegal phase step cut-read -> none")
        if step_back:  # back to double-write (the source got every write), then forward again
            cluster.step("double-write")
            settle("double-write (back)")
            cluster.step("backfill")
            wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 90, "backfill")
            settle("backfill (again)")
            cluster.step("cut-read")
            settle("cut-read (again)")

        cluster.step("retire")
        settle("retire")
        out = run_cleanup(cluster.path)
        assert "cleanup pool new: deleted" in out, out
        settle("retire (after cleanup)")

        cluster.step(None, route="new", old_pool=False)
        settle("route new")
        removed = {addr_of(x) for x in layout.old} - {addr_of(x) for x in layout.new}
        for addr in removed:  # servers that left the config: drained, then closed
            wait_until(lambda a=addr: proxy_connections(a) == 0, 10, f"connections to {addr}")
        settle("route new, old servers gone")
    finally:
        load.stop()
    assert not load.problems(), "\n".join(load.problems())
    assert cluster.server.migration.double_write_errors == {}
    if defended:  # the defences were at work, not idle, while the model held
        stats = cluster.server.defences.stats
        assert stats.cache_hits > 0 and stats.jittered > 0, stats

    model: dict[bytes, Entry] = dict(cold)
    deleted: set[bytes] = set()
    kinds: dict[bytes, str] = {key: "s" for key in cold}
    for w in workers:
        model.update(w.model.keys)
        deleted |= w.model.deleted - set(w.model.keys)
        kinds.update(dict(w.all_keys()))
    assert deleted, "the load deleted nothing: the test would not see a key come back"
    check_final_state(cluster, model, deleted, kinds)


def test_cut_read_is_gated_unless_forced(servers: list[RedisServer], cluster_factory: Any) -> None:
    """backfill -> cut-read is refused while the backfill runs (no gate), then accepted with
    force: true; while migrating, the target's ring cannot change."""
    cluster: Cluster = cluster_factory(layout_ketama_3_to_5(servers), rate=50)
    write_cold_keys(cluster.port, 2000)  # at 50 keys/s the backfill cannot finish in this test
    cluster.step("double-write")
    layout = cluster.layout
    cluster.layout = Layout(layout.distribution, layout.old, layout.new[:4])
    cluster.refused("double-write", "cannot change the servers, hash, distribution")
    cluster.layout = layout
    cluster.step("backfill")
    wait_until(lambda: cluster.status()["backfill"]["state"] == "running", 10, "backfill running")
    message = cluster.refused("cut-read", "backfill -> cut-read is gated")
    assert "force: true" in message
    with redis.Redis(port=cluster.port, protocol=2) as c:  # the old config keeps serving
        assert c.get(b"cold:1") == b"history-1"
    cluster.step("cut-read", force=True)
    assert cluster.status()["backfill"]["state"] != "done"
    cluster.step("backfill")  # a step back is legal while the source still gets every write
    cluster.refused("retire", "illegal phase step backfill -> retire")


# --- bugs these tests found, reduced to deterministic repros (fixed: regression tests) -------


def hold_key(cluster: Cluster, key: bytes) -> None:
    """Hold `key` in the proxy's per-key fence, as the backfill does while it copies it."""
    cluster.proxy.call(cluster.server.phases.fence.hold(key))


def release_key(cluster: Cluster, key: bytes) -> None:
    async def release() -> None:
        cluster.server.phases.fence.release(key)

    cluster.proxy.call(release())


def test_a_request_held_by_the_fence_is_not_overtaken_by_the_next_ones(
    servers: list[RedisServer], cluster_factory: Any
) -> None:
    """Found by the load with two-key DELs on hot keys (APPEND replying 3 on a key the client
    had just re-created; fixed in 2fd6e2e). A client pipelines DEL k1 k2, SET k2 v1 while the
    backfill holds k1: Redis runs them in order, so k2 must end as v1."""
    cluster: Cluster = cluster_factory(layout_ketama_3_to_5(servers))
    cluster.step("double-write")
    with redis.Redis(port=cluster.port, protocol=2) as c:
        assert c.set(b"k2", b"v0")
        hold_key(cluster, b"k1")
        replies: list[Any] = []

        def pipelined() -> None:
            pipe = c.pipeline(transaction=False)
            pipe.delete(b"k1", b"k2")
            pipe.set(b"k2", b"v1")
            replies.extend(pipe.execute())

        thread = threading.Thread(target=pipelined)
        thread.start()
        held = cluster.server.migration.held
        wait_until(lambda: len(held.get(b"k1", ())) == 1, 10, "the DEL deferred by the fence")
        release_key(cluster, b"k1")
        thread.join(10)
        assert replies == [1, True]
        assert c.get(b"k2") == b"v1"


BUSY_SCRIPT = (
    b"local t = redis.call('TIME') while true do local n = redis.call('TIME')"
    b" if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 500000 then break end end return 1"
)


def test_a_copy_never_leaves_the_target_older_across_a_backend_settings_reload(
    servers: list[RedisServer], cluster_factory: Any
) -> None:
    """While the backfill copies k (fence held), a client writes k (deferred) and the operator
    reloads with another backend.command_timeout_ms. The target must end with the client's
    write, as the source does. (The removed Backend is kept busy by a 0.5 s script so its
    connection is still draining when the deferred write is sent, as under real load.) Before
    2fd6e2e the deferred write went to the removed Backend and the RESTORE undid it."""
    cluster: Cluster = cluster_factory(layout_ketama_3_to_5(servers))
    cluster.step("double-write")
    old, new = pool_of(cluster, "old"), pool_of(cluster, "new")
    key = next(
        b"k%d" % i for i in range(10_000) if old.addr_for(b"k%d" % i) != new.addr_for(b"k%d" % i)
    )
    src, dst = old.addr_for(key), new.addr_for(key)
    server = cluster.server
    with redis.Redis(port=cluster.port, protocol=2) as c:
        assert c.set(key, b"v0")
        gate: dict[str, Any] = {}

        class GatedFence:
            """The proxy's fence, pausing after hold() until the test has set the scene."""

            async def hold(self, k: bytes) -> None:
                await server.phases.fence.hold(k)
                await gate["go"].wait()

            def release(self, k: bytes) -> None:
                server.phases.fence.release(k)

        async def start_copy() -> None:
            gate["go"] = asyncio.Event()
            ex = Executor(server.pool.backends)
            gate["copy"] = asyncio.create_task(copy_key(ex, GatedFence(), key, src, dst))

        cluster.proxy.call(start_copy())
        wait_until(lambda: key in server.migration.held, 10, "the copy holding the key")
        writer = threading.Thread(target=lambda: gate.setdefault("set", c.set(key, b"v1")))
        writer.start()
        wait_until(lambda: len(server.migration.held.get(key, ())) == 1, 10, "write deferred")

        async def busy() -> None:  # the removed Backend drains (replies owed), as under load
            gate["busy"] = server.pool.backends[dst].call([b"EVAL", BUSY_SCRIPT, b"0"])

        cluster.proxy.call(busy())
        text = cluster.render("double-write").replace(
            "backend:\n", "backend:\n  command_timeout_ms: 2500\n"
        )
        ok, message = cluster.proxy.call(server.reload_text(text))
        assert ok, message

        async def finish() -> str:
            gate["go"].set()
            return await gate["copy"]  # type: ignore[no-any-return]

        assert cluster.proxy.call(finish()) == "copied"
        writer.join(10)
        assert gate["set"] is True
        wait_until(lambda: server_client(src).get(key) == b"v1", 10, "the write on the source")
        with server_client(dst) as target:
            wait_until(lambda: target.eval(b"return 1", 0) == 1, 10, "the busy script done")
            assert target.get(key) == b"v1", "the RESTORE undid the write on the target"


def test_stop_closes_a_removed_backend_still_draining(
    servers: list[RedisServer], cluster_factory: Any
) -> None:
    """A reload replaces every backend while one still owes a reply; the proxy stops at once.
    Before bba8180 BackendPool.close cancelled the drain without closing that backend: its
    connection stayed open (and uvloop's loop.close() blocked forever on it)."""
    cluster: Cluster = cluster_factory(layout_ketama_3_to_5(servers))
    server = cluster.server
    with redis.Redis(port=cluster.port, protocol=2) as c:
        busy = threading.Thread(target=lambda: c.eval(BUSY_SCRIPT, 0))
        busy.start()
        inflight = lambda: sum(b["inflight"] for b in cluster.status()["backends"])  # noqa: E731
        wait_until(lambda: inflight() >= 1, 10, "the script in flight")
        text = cluster.render(None).replace("backend:\n", "backend:\n  command_timeout_ms: 2500\n")
        ok, message = cluster.proxy.call(server.reload_text(text))  # every backend drains
        assert ok, message
        cluster.proxy.call(server.stop())
        busy.join(10)

    def proxy_connections() -> int:
        names = [x["name"] for s in servers for x in s.client().client_list()]
        return names.count("shardproxy")

    wait_until(lambda: proxy_connections() == 0, 3, "no connection of the stopped proxy")


def test_a_failed_secondary_write_is_repaired_once_the_target_takes_writes_again(
    servers: list[RedisServer], cluster_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """After the backfill's gate, a target server refuses writes for a moment (here
    min-replicas-to-write; in real life a restart, OOM, a failover). The client's SET is
    acknowledged by the source; its secondary write is counted and queued for repair. Once the
    target takes writes again the repair must happen (or cut-read be refused): the client must
    never read the value it overwrote."""
    cluster: Cluster = cluster_factory(layout_ketama_3_to_5(servers))
    old, new = pool_of(cluster, "old"), pool_of(cluster, "new")
    r5 = servers[4].addr  # only in the new pool
    key = next(b"k%d" % i for i in range(10_000) if new.addr_for(b"k%d" % i) == r5)
    with redis.Redis(port=cluster.port, protocol=2) as c, server_client(r5) as target:
        assert c.set(key, b"v1")
        cluster.step("double-write")
        cluster.step("backfill")
        wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 30, "the gate")
        assert target.get(key) == b"v1"
        target.config_set("min-replicas-to-write", 1)  # -NOREPLICAS to every write
        try:
            assert c.set(key, b"v2")  # acknowledged by the source
            # The secondary's error reply may land after the client got the primary's reply.
            wait_until(
                lambda: cluster.server.migration.double_write_errors == {"r5": 1},
                10,
                "the failed secondary write counted",
            )
            wait_until(lambda: "repair of key" in caplog.text, 10, "a repair attempt")
        finally:
            target.config_set("min-replicas-to-write", 0)
        with contextlib.suppress(TimeoutError):  # a retried repair would land now
            wait_until(lambda: target.get(key) == b"v2", 3, "the repair")
        assert server_client(old.addr_for(key)).get(key) == b"v2"
        ok, message = cluster.reload(cluster.render("cut-read"))
        if ok:
            assert c.get(key) == b"v2", "the client reads the value it overwrote"
        else:  # refusing cut-read while a repair is owed would be right too
            assert "repair" in message or "mismatch" in message, message
