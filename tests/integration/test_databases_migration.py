"""A migration with keys in databases 0, 1 and 5, against real redis-server.

Backfill copies db n of each source to db n of the keys' targets, verify compares db by db,
cleanup removes the moved keys of every db and nothing else; through the proxy, a double-write
and its reads go to the client's db on both pools. The same key names are used in every db, so a
key that landed in the wrong db would overwrite or shadow another's value and be seen.
"""

from __future__ import annotations

import pytest
import redis

from proxy.jobs.backfill import BackfillJob
from proxy.jobs.cleanup import cleanup_pool
from proxy.jobs.executor import Executor
from proxy.jobs.verify import Verifier, VerifyReport
from proxy.migration.keys import is_reserved
from proxy.migration.phases import ActiveMigration
from tests.integration.test_migrator import config_text, make_config, migration_of, with_executor
from tests.support.processes import RedisServer, free_port
from tests.support.runner import running_proxy

DBS = (0, 1, 5)
KEYS = 200


@pytest.fixture
def servers(servers5: list[RedisServer]) -> list[RedisServer]:
    """The module's five servers (tests/conftest.py), flushed before each test."""
    return servers5


def at(addr: str, db: int) -> redis.Redis:
    return redis.Redis(port=int(addr.rsplit(":", 1)[1]), db=db, protocol=2)


def value(db: int, i: int) -> bytes:
    return b"db%d-%d" % (db, i)


def populate(m: ActiveMigration) -> list[bytes]:
    """The same key names in every db of DBS, each value naming its db, on the source owner."""
    keys = [b"k:%d" % i for i in range(KEYS)]
    for db in DBS:
        for i, key in enumerate(keys):
            at(m.source.addr_for(key), db).set(key, value(db, i), px=600_000 if i % 9 else None)
    return keys


def where(m: ActiveMigration, servers: list[RedisServer], key: bytes) -> set[tuple[str, int]]:
    """(server, db) pairs that hold `key`, over every server and the dbs 0..7."""
    return {(s.addr, db) for s in servers for db in range(8) if at(s.addr, db).exists(key)}


def test_backfill_verify_and_cleanup_cover_every_db(servers: list[RedisServer]) -> None:
    config = make_config(servers)
    m = migration_of(config)
    keys = populate(m)
    moving = [k for k in keys if m.source.addr_for(k) != m.target.addr_for(k)]
    assert 30 < len(moving) < 170

    snap = with_executor(config, lambda ex: BackfillJob(ex, m).run())
    assert snap.state == "done" and not snap.error and snap.failed == 0
    assert snap.copied == len(moving) * len(DBS)
    # Counted from INFO keyspace: the jobs' own keys (the lease, db 0) are in the estimate too.
    assert snap.scanned == KEYS * len(DBS) <= snap.total_keys <= KEYS * len(DBS) + 3
    assert snap.verify is not None and snap.verify["remaining"] == 0
    for i, key in enumerate(keys):  # every key in its db on its target, with its own value
        for db in DBS:
            assert at(m.target.addr_for(key), db).get(key) == value(db, i), (key, db)
    assert all(at(s.addr, db).dbsize() == 0 for s in servers for db in (2, 3, 4, 6, 7))

    async def verify(ex: Executor) -> VerifyReport:
        return await Verifier(ex, m.source, m.target, ttl_tolerance_ms=2000).run()

    report = with_executor(config, verify)
    assert report.problems == 0 and report.checked == len(moving) * len(DBS)

    counts = with_executor(config, lambda ex: cleanup_pool(ex, m.target, dry_run=False))
    assert sum(counts.values()) == len(moving) * len(DBS)
    for i, key in enumerate(keys):  # only the moved keys' old copies are gone, in every db
        assert where(m, servers, key) == {(m.target.addr_for(key), db) for db in DBS}
        for db in DBS:
            assert at(m.target.addr_for(key), db).get(key) == value(db, i)
    reserved = [k for s in servers for k in s.client().scan_iter(count=1000) if is_reserved(k)]
    assert reserved  # the jobs' own keys (db 0) are untouched


def test_a_verify_mismatch_in_db_5_is_found_and_named(servers: list[RedisServer]) -> None:
    config = make_config(servers)
    m = migration_of(config)
    keys = populate(m)
    assert with_executor(config, lambda ex: BackfillJob(ex, m).run()).state == "done"
    key = next(k for k in keys if m.source.addr_for(k) != m.target.addr_for(k))
    at(m.target.addr_for(key), 5).set(key, "diverged")

    async def verify(ex: Executor) -> VerifyReport:
        return await Verifier(
            ex, m.source, m.target, ttl_tolerance_ms=2000, recheck_pause_s=0.01
        ).run()

    report = with_executor(config, verify)
    assert report.mismatched == 1
    assert report.samples == [f"db5 {key.decode()}: string content differs"]


def test_double_write_goes_to_the_clients_db_on_both_pools(servers: list[RedisServer]) -> None:
    text = f"listen: 127.0.0.1:{free_port()}\nadmin: null\n" + config_text(
        servers, phase="double-write"
    )
    m = migration_of(make_config(servers, phase="double-write"))
    with running_proxy(text) as proxy:
        c = redis.Redis(port=proxy.port, db=5, protocol=2)
        zero = redis.Redis(port=proxy.port, protocol=2)
        for i in range(60):
            c.set(b"d:%d" % i, b"five")
            zero.set(b"d:%d" % i, b"zero")
        assert c.get(b"d:1") == b"five" and zero.get(b"d:1") == b"zero"
    for i in range(60):
        key = b"d:%d" % i
        for addr in {m.source.addr_for(key), m.target.addr_for(key)}:
            assert at(addr, 5).get(key) == b"five" and at(addr, 0).get(key) == b"zero"
