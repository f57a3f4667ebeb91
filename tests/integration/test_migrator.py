"""Migration jobs against real redis-server: backfill (checkpoints, lease, big keys), verify,
repair, cleanup, and the plan/backfill/verify/cleanup command line.

The source pool is three servers (r1-r3) and the target five (the same three plus r4, r5), so the
tests see keys that stay on a reused server as well as keys that move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from proxy.config.schema import ProxyConfig, parse_config
from proxy.jobs.backfill import BackfillJob, read_gate
from proxy.jobs.cleanup import cleanup_pool
from proxy.jobs.executor import CopyOutcome, Executor, copy_key, open_backends
from proxy.jobs.verify import Verifier, VerifyReport
from proxy.migration.keys import is_reserved, state_key, state_owner
from proxy.migration.phases import ActiveMigration, active_migration, gate_reason
from tests.support.processes import RedisServer, free_port, redis_servers

T = TypeVar("T")
CLI = [sys.executable, "-m", "proxy"]
TOLERANCE_MS = 2000


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(5) as five:
        yield five
        for addr in [s.addr for s in five]:
            client(addr).close()
        client.cache_clear()


@pytest.fixture(autouse=True)
def _flush(servers: list[RedisServer]) -> None:
    for s in servers:
        s.client().flushall()


def config_text(servers: list[RedisServer], phase: str = "backfill", rate: int = 1_000_000,
                scan_count: int = 200, big_key_bytes: int = 8 << 20) -> str:  # fmt: skip
    pool = lambda n: ", ".join(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers[:n]))  # noqa: E731
    return (
        f"pools:\n  old: {{servers: [{pool(3)}]}}\n  new: {{servers: [{pool(5)}]}}\n"
        f"route: old\nmigration:\n  to: new\n  phase: {phase}\n"
        f"  backfill: {{rate_keys_per_s: {rate}, scan_count: {scan_count},"
        f" big_key_bytes: {big_key_bytes}}}\n"
    )


def make_config(servers: list[RedisServer], **kwargs: Any) -> ProxyConfig:
    return parse_config(config_text(servers, **kwargs), env={})


def migration_of(config: ProxyConfig) -> ActiveMigration:
    m = active_migration(config)
    assert m is not None
    return m


def with_executor(config: ProxyConfig, job: Callable[[Executor], Awaitable[T]]) -> T:
    """Run `job` with real Backends created inside the event loop, closed afterwards."""

    async def main() -> T:
        backends = open_backends(config)
        try:
            return await job(Executor(backends))
        finally:
            for b in backends.values():
                await b.close()

    return asyncio.run(main())


async def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = 10) -> None:
    """Poll `predicate` on the running loop until it holds; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@functools.cache
def client(addr: str) -> redis.Redis:
    return redis.Redis(port=int(addr.rsplit(":", 1)[1]), protocol=2)


def populate(m: ActiveMigration, n: int) -> list[bytes]:
    """n keys of every type on their source owner; every 7th string key has a TTL."""
    pipes: dict[str, Any] = {}
    keys: list[bytes] = []
    for i in range(n):
        kind = i % 6
        key = f"{'shlztx'[kind]}:{i}".encode()
        addr = m.source.addr_for(key)
        p = pipes.setdefault(addr, client(addr).pipeline(transaction=False))
        if kind == 0:
            p.set(key, f"value-{i}", px=300_000 if i % 7 == 0 else None)
        elif kind == 1:
            p.hset(key, mapping={"a": i, "b": "x" * (i % 50), "c": "y"})
        elif kind == 2:
            p.rpush(key, *[f"e{j}" for j in range(i % 5 + 1)])
        elif kind == 3:
            p.zadd(key, {"m1": 1.5, "m2": -3, f"m{i}": i})
        elif kind == 4:
            p.sadd(key, *range(i % 4 + 1), "s")
        else:
            p.xadd(key, {"f": i}, id=f"{i + 1}-0")
            p.xadd(key, {"g": "h"}, id=f"{i + 1}-1")
            p.pexpire(key, 200_000)
        keys.append(key)
    for p in pipes.values():
        p.execute()
    return keys


def moved(m: ActiveMigration, keys: list[bytes]) -> list[bytes]:
    return [k for k in keys if m.source.addr_for(k) != m.target.addr_for(k)]


def verify(config: ProxyConfig, repair: bool = False, authority: str = "source") -> VerifyReport:
    m = migration_of(config)

    async def job(ex: Executor) -> VerifyReport:
        v = Verifier(ex, m.source, m.target, ttl_tolerance_ms=TOLERANCE_MS, repair=repair,
                     authority=authority, recheck_pause_s=0.01)  # fmt: skip
        return await v.run()

    return with_executor(config, job)


class CountingExecutor(Executor):
    """Counts the commands a job sends, by name."""

    def __init__(self, ex: Executor) -> None:
        super().__init__(ex.backends)
        self.counts: dict[bytes, int] = {}

    def call(self, addr: str, args: list[bytes]) -> asyncio.Future[bytes]:
        self.counts[args[0]] = self.counts.get(args[0], 0) + 1
        return super().call(addr, args)


# --- backfill -----------------------------------------------------------------------------------


def test_backfill_copies_the_moved_keys_keeps_ttls_and_deleted_keys_stay_deleted(
    servers: list[RedisServer],
) -> None:
    config = make_config(servers)
    m = migration_of(config)
    keys = populate(m, 1200)
    to_move = moved(m, keys)
    assert 300 < len(to_move) < 700  # ~40% of the keys move to r4, r5
    # A key deleted on the source after an earlier copy reached its target: it must not survive.
    gone = next(k for i in range(1000) if (k := b"gone:%d" % i) in set(moved(m, [k])))
    client(m.target.addr_for(gone)).set(gone, "stale")
    # A key on a source server its ring does not place there (left over): not copied.
    stale = next(
        k for i in range(1000) if m.source.addr_for(k := b"stale:%d" % i) != servers[0].addr
    )
    servers[0].client().set(stale, "left over")

    async def job(ex: Executor) -> tuple[Any, Any]:
        snap = await BackfillJob(ex, m).run()
        return snap, await read_gate(ex, m.target, m.mid)

    snap, gate = with_executor(config, job)
    assert snap.state == "done" and snap.progress == 1.0 and not snap.error
    assert snap.copied == len(to_move) and snap.failed == 0 and snap.stale == 1
    assert snap.scanned == len(keys) + 1
    assert snap.verify["extra_on_target"] == 1 and snap.verify["remaining"] == 0
    assert gate is not None and gate["mismatches_after_repair"] == 0 and gate_reason(gate) is None
    assert not client(m.target.addr_for(gone)).exists(gone)
    for key in to_move:
        src, dst = client(m.source.addr_for(key)), client(m.target.addr_for(key))
        assert src.type(key) == dst.type(key)
        source_ttl, target_ttl = src.pttl(key), dst.pttl(key)
        if source_ttl < 0:
            assert target_ttl == source_ttl == -1
        else:
            assert abs(source_ttl - target_ttl) <= TOLERANCE_MS
    report = verify(config)
    assert report.problems == 0 and report.checked == len(to_move)


def test_copy_key_releases_the_fence_right_after_the_restore_is_sent(
    servers: list[RedisServer],
) -> None:
    config = make_config(servers)
    src, dst = servers[0].addr, servers[4].addr
    servers[0].client().set("k", "v", px=50_000)
    servers[4].client().set("deleted", "old copy")
    events: list[str] = []

    class Recorder(Executor):
        def call(self, addr: str, args: list[bytes]) -> asyncio.Future[bytes]:
            events.append(f"{args[0].decode()} {'src' if addr == src else 'dst'}")
            return super().call(addr, args)

    class Fence:
        async def hold(self, key: bytes) -> None:
            events.append(f"hold {key.decode()}")

        def release(self, key: bytes) -> None:
            events.append(f"release {key.decode()}")

    async def job(ex: Executor) -> list[str]:
        rec = Recorder(ex.backends)
        return [await copy_key(rec, Fence(), k, src, dst) for k in (b"k", b"deleted")]

    assert with_executor(config, job) == [CopyOutcome.COPIED, CopyOutcome.SKIPPED]
    assert events == [
        "hold k", "DUMP src", "PTTL src", "RESTORE dst", "release k",
        "hold deleted", "DUMP src", "PTTL src", "DEL dst", "release deleted",
    ]  # fmt: skip
    assert servers[4].client().get("k") == b"v" and 0 < servers[4].client().pttl("k") <= 50_000
    assert not servers[4].client().exists("deleted")


def test_big_keys_are_copied_in_chunks(servers: list[RedisServer]) -> None:
    config = make_config(servers, big_key_bytes=20_000)
    m = migration_of(config)

    def moving(prefix: str) -> bytes:
        return next(k for i in range(1000) if moved(m, [k := f"{prefix}:{i}".encode()]))

    values = {
        moving("bighash"): ("hset", {f"f{i}": f"v{i}" for i in range(3000)}),
        moving("biglist"): ("rpush", [f"e{i}" for i in range(10_000)]),
        moving("bigset"): ("sadd", [f"m{i}" for i in range(2500)]),
        moving("bigzset"): ("zadd", {f"m{i}": i / 3 for i in range(2500)}),
        moving("bigstring"): ("set", "x" * 3_000_000),
    }
    for key, (command, value) in values.items():
        c = client(m.source.addr_for(key))
        if command == "hset":
            c.hset(key, mapping=value)
        elif command in ("rpush", "sadd"):
            getattr(c, command)(key, *value)
        else:
            getattr(c, command)(key, value)
        c.pexpire(key, 100_000)
    snap = with_executor(config, lambda ex: BackfillJob(ex, m).run())
    assert snap.state == "done" and snap.big_keys == 5 and snap.copied == 5, snap
    assert snap.verify is not None and snap.verify["remaining"] == 0
    assert verify(config).problems == 0
    for s in servers:  # no temporary key is left behind
        assert not [k for k in s.client().scan_iter(count=1000) if is_reserved(k) and b"tmp" in k]


def test_a_cancelled_backfill_resumes_from_its_checkpoint(servers: list[RedisServer]) -> None:
    config = make_config(servers, rate=200, scan_count=20)
    m = migration_of(config)
    keys = populate(m, 1500)
    first_server = m.source.addrs[0]

    async def job(ex: Executor) -> tuple[Any, Any, int]:
        first = BackfillJob(ex, m)
        task = asyncio.create_task(first.run())
        await wait_for(lambda: first.snapshot().scanned >= 300, "300 keys scanned")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = first.snapshot()
        home = state_owner(m.target, m.mid)
        cursor = await ex.call(home, [b"GET", state_key(m.mid, "cursor", first_server)])
        assert cursor.startswith(b"$") and b"done" not in cursor  # a mid-server checkpoint
        fast = dataclasses.replace(m, settings=make_config(servers).migration)  # type: ignore[arg-type]
        counting = CountingExecutor(ex)
        second = await BackfillJob(counting, fast).run()
        return stopped, second, counting.counts.get(b"RESTORE", 0)

    stopped, second, restores = with_executor(config, job)
    assert stopped.state == "idle" and 0 < stopped.progress < 1
    assert second.state == "done" and second.resumed
    to_move = len(moved(m, keys))
    assert restores < to_move - 50  # the keys copied before the cancel are not copied again
    assert second.copied >= to_move and second.scanned >= len(keys)
    assert verify(config).problems == 0


def test_the_lease_lets_one_job_run_at_a_time(servers: list[RedisServer]) -> None:
    config = make_config(servers, rate=400, scan_count=20)
    m = migration_of(config)
    populate(m, 900)
    home = state_owner(m.target, m.mid)
    lease = state_key(m.mid, "lease")

    async def job(ex: Executor) -> None:
        first = BackfillJob(ex, m, owner="first")
        task = asyncio.create_task(first.run())
        await wait_for(lambda: first.snapshot().scanned > 40, "the first job scanning")
        counting = CountingExecutor(ex)
        second = await BackfillJob(counting, m, owner="second").run(wait=False)
        assert second.elsewhere and second.lease_owner == "first" and second.state == "running"
        assert second.scanned > 0  # mirrored from the first job's shared status
        assert b"DUMP" not in counting.counts and b"SCAN" not in counting.counts
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await ex.call(home, [b"EXISTS", lease]) == b":0\r\n"  # released on the way out
        # A runner that died holding the lease: the next job takes over once it expires.
        await ex.call(home, [b"SET", lease, b"ghost", b"PX", b"300"])
        fast = dataclasses.replace(m, settings=make_config(servers).migration)  # type: ignore[arg-type]
        third = await BackfillJob(ex, fast, owner="third", lease_ms=600).run()
        assert third.state == "done" and not third.elsewhere and third.lease_owner == "third"

    with_executor(config, job)


# --- verify -------------------------------------------------------------------------------------


def test_verify_compares_content_not_encoding_and_repair_fixes_the_rest(
    servers: list[RedisServer],
) -> None:
    config = make_config(servers)
    m = migration_of(config)
    names = iter(k for i in range(5000) if moved(m, [k := b"v:%d" % i]))

    def pair(key: bytes) -> tuple[redis.Redis, redis.Redis]:
        return client(m.source.addr_for(key)), client(m.target.addr_for(key))

    fields = {f"f{i}": f"v{i}" for i in range(5)}
    same_hash, converted, same_set, same_zset, tampered, ttl_lost, missing, extra = (
        next(names) for _ in range(8)
    )
    src, dst = pair(same_hash)
    src.hset(same_hash, mapping=fields)
    dst.hset(same_hash, mapping=dict(reversed(fields.items())))
    src, dst = pair(converted)  # listpack on the source, hashtable on the target
    src.hset(converted, mapping=fields)
    dst.hset(converted, mapping={f"x{i}": "y" * 100 for i in range(300)} | fields)
    dst.hdel(converted, *[f"x{i}" for i in range(300)])
    assert src.object("encoding", converted) != dst.object("encoding", converted)
    src, dst = pair(same_set)  # intset vs hashtable
    src.sadd(same_set, 1, 2, 3)
    dst.sadd(same_set, "x", 3, 2, 1)
    dst.srem(same_set, "x")
    assert src.object("encoding", same_set) != dst.object("encoding", same_set)
    src, dst = pair(same_zset)  # listpack vs skiplist
    src.zadd(same_zset, {"a": 1, "b": 2})
    dst.zadd(same_zset, {f"m{i}": i for i in range(300)} | {"a": 1, "b": 2})
    dst.zrem(same_zset, *[f"m{i}" for i in range(300)])
    assert src.object("encoding", same_zset) != dst.object("encoding", same_zset)
    src, dst = pair(tampered)
    src.hset(tampered, mapping=fields)
    dst.hset(tampered, mapping=fields | {"f3": "changed"})
    src, dst = pair(ttl_lost)
    src.set(ttl_lost, "v", px=500_000)
    dst.set(ttl_lost, "v")
    pair(missing)[0].rpush(missing, "a", "b")
    pair(extra)[1].set(extra, "deleted on the source")

    report = verify(config)
    assert (report.checked, report.mismatched, report.missing_on_target) == (7, 2, 1)
    assert report.extra_on_target == 1 and report.repaired == 0 and report.remaining == 4
    text = "\n".join(report.samples)
    for key in (tampered, ttl_lost, missing, extra):
        assert key.decode() in text
    assert "hash content differs" in text and "ttl" in text

    repaired = verify(config, repair=True)
    assert repaired.repaired == 4 and repaired.remaining == 0
    assert verify(config).problems == 0
    assert not pair(extra)[1].exists(extra)
    assert pair(tampered)[1].hget(tampered, "f3") == b"v3"

    # From cut-read on the target answers reads: repair copies target -> source.
    src, dst = pair(tampered)
    src.hset(tampered, "f3", "stale on the source")
    fixed = verify(config, repair=True, authority="target")
    assert fixed.repaired == 1 and src.hget(tampered, "f3") == b"v3"


# --- cleanup ------------------------------------------------------------------------------------


def test_cleanup_deletes_exactly_the_keys_a_server_does_not_own(
    servers: list[RedisServer],
) -> None:
    config = make_config(servers)
    m = migration_of(config)
    keys = populate(m, 900)
    assert with_executor(config, lambda ex: BackfillJob(ex, m).run()).state == "done"
    strays = {a: sum(1 for k in keys if m.source.addr_for(k) == a != m.target.addr_for(k))
              for a in m.target.addrs}  # fmt: skip
    assert sum(strays.values()) == len(moved(m, keys))

    def run(dry_run: bool) -> dict[str, int]:
        return with_executor(config, lambda ex: cleanup_pool(ex, m.target, dry_run=dry_run))

    assert run(dry_run=True) == strays
    assert run(dry_run=False) == strays
    assert run(dry_run=True) == {a: 0 for a in m.target.addrs}
    for target in m.target.addrs:
        held = [k for k in client(target).scan_iter(count=1000) if not is_reserved(k)]
        assert sorted(held) == sorted(k for k in keys if m.target.addr_for(k) == target)
    assert any(is_reserved(k) for s in servers for k in s.client().scan_iter(count=1000))


# --- the command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_cli_plan_backfill_verify_cleanup(servers: list[RedisServer], tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "backfill.yaml", config_text(servers))
    m = migration_of(make_config(servers))
    keys = populate(m, 240)

    plan = run_cli("plan", "-c", cfg)
    assert plan.returncode == 0, plan.stderr
    assert "keys that move:" in plan.stdout and "r4" in plan.stdout and "#" in plan.stdout
    assert "sampled 240 keys" in plan.stdout

    backfill = run_cli("backfill", "-c", cfg)
    assert backfill.returncode == 0, backfill.stderr
    assert "done" in backfill.stdout and f"copied {len(moved(m, keys))}," in backfill.stdout

    assert run_cli("verify", "-c", cfg).returncode == 0
    victim = moved(m, keys)[0]
    client(m.target.addr_for(victim)).delete(victim)
    found = run_cli("verify", "-c", cfg)
    assert found.returncode == 1 and victim.decode() in found.stdout
    assert "missing on target 1" in found.stdout
    assert run_cli("verify", "-c", cfg, "--repair").returncode == 0
    assert run_cli("verify", "-c", cfg).returncode == 0

    refused = run_cli("cleanup", "-c", cfg)
    assert refused.returncode == 2 and "retire" in refused.stderr
    retire = write_config(tmp_path / "retire.yaml", config_text(servers, phase="retire"))
    dry = run_cli("cleanup", "-c", retire, "--dry-run")
    assert dry.returncode == 0 and f"would delete {len(moved(m, keys))} keys" in dry.stdout
    done = run_cli("cleanup", "-c", retire)
    assert done.returncode == 0 and f"deleted {len(moved(m, keys))} keys" in done.stdout
    assert "would delete 0 keys" in run_cli("cleanup", "-c", retire, "--dry-run").stdout


def test_cli_refuses_bad_input_in_one_line(servers: list[RedisServer], tmp_path: Path) -> None:
    plain = write_config(
        tmp_path / "plain.yaml", f"pools: {{p: {{servers: [{servers[0].addr}]}}}}\n"
    )
    for command in ("plan", "backfill", "verify", "cleanup"):
        out = run_cli(command, "-c", plain)
        assert out.returncode == 2, (command, out)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert run_cli("plan", "-c", str(tmp_path / "missing.yaml")).returncode == 2
    # A source server that does not answer: the plan still prints, with a note.
    dead = f"127.0.0.1:{free_port()}"
    text = (
        f"pools:\n  old: {{servers: [{servers[0].addr}, {dead}]}}\n"
        f"  new: {{servers: [{servers[0].addr}, {dead}, {servers[1].addr}]}}\n"
        "route: old\nmigration: {to: new, phase: double-write}\n"
    )
    out = run_cli("plan", "-c", write_config(tmp_path / "dead.yaml", text))
    assert out.returncode == 0, out.stderr
    assert "keys that move:" in out.stdout and f"{dead} did not answer" in out.stdout
