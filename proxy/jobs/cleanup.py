"""Cleanup after retire: delete the keys a server kept from the old layout but no longer owns.

For each server of a pool, and each of its databases that holds keys, SCAN it and UNLINK (in
batches) every key the pool's ring places on another server. Reserved keys (the jobs' state and
temporary keys) are never touched, nor keys that prefix routes give to another pool (a server may
be in two pools). Only safe once the target pool answers every read: the CLI allows it in phase
retire, or after the migration block is gone when the operator names the pool the keys came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from proxy.jobs.executor import Executor, RateLimiter, keyed_dbs, request, scan_keys
from proxy.migration.keys import is_reserved
from proxy.routing.topology import PoolTopology

__all__ = ["cleanup_pool"]

UNLINK_BATCH: Final = 500  # keys per UNLINK


async def cleanup_pool(
    ex: Executor,
    pool: PoolTopology,
    *,
    dry_run: bool,
    scan_count: int = 500,
    limiter: RateLimiter | None = None,
    claims: Callable[[bytes], bool] = lambda key: True,
) -> dict[str, int]:
    """Per server address: how many keys it holds, in any database, that `pool`'s ring places
    elsewhere (deleted unless dry_run); only keys `claims` gives to the pool (by prefix routes)
    are considered."""
    counts: dict[str, int] = {}
    for addr in dict.fromkeys(pool.addrs):
        counts[addr] = 0
        for db in await keyed_dbs(ex, [addr]):
            counts[addr] += await _clean_db(
                ex.in_db(db), pool, addr, dry_run, scan_count, limiter, claims
            )
    return counts


async def _clean_db(
    ex: Executor,
    pool: PoolTopology,
    addr: str,
    dry_run: bool,
    scan_count: int,
    limiter: RateLimiter | None,
    claims: Callable[[bytes], bool],
) -> int:
    """Server `addr`, in the executor's database: its strays, counted (and deleted)."""
    count = 0
    doomed: list[bytes] = []
    async for _, keys in scan_keys(ex, addr, scan_count):
        if limiter is not None:
            await limiter.take(len(keys))
        strays = [k for k in keys if not is_reserved(k) and claims(k) and pool.addr_for(k) != addr]
        count += len(strays)
        if dry_run:
            continue
        doomed += strays
        if len(doomed) >= UNLINK_BATCH:
            await request(ex, addr, b"UNLINK", *doomed)
            doomed = []
    if doomed:
        await request(ex, addr, b"UNLINK", *doomed)
    return count
