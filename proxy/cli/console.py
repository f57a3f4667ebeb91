"""The operator's migration commands, as the CLI runs them: plan, backfill, verify, cleanup.

Each `run_*` takes a loaded config, opens one Backend per address, runs the job on an event loop in
the foreground, prints its result and returns the exit status: 0 done/clean, 1 the job found or left
a problem (mismatches, a failure, a lease held elsewhere), 2 the config does not allow it. The jobs
are the ones the proxy runs (proxy/jobs/); here they run with NO_FENCE.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from proxy.config.schema import ProxyConfig
from proxy.jobs.backfill import BackfillJob, BackfillSnapshot, read_gate
from proxy.jobs.cleanup import cleanup_pool
from proxy.jobs.executor import NO_FENCE, Executor, open_backends
from proxy.jobs.forecast import render_plan, sample_keys
from proxy.jobs.verify import Verifier, VerifyReport
from proxy.migration.phases import RULES, ActiveMigration, active_migration, gate_reason
from proxy.routing.prefix import pool_matcher
from proxy.routing.topology import PoolTopology, build_pool

__all__ = ["run_backfill", "run_cleanup", "run_plan", "run_verify"]

T = TypeVar("T")
PROGRESS_INTERVAL_S: Final = 0.25


def _say(line: str, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _refuse(command: str, reason: str) -> int:
    _say(f"shardproxy {command}: {reason}", err=True)
    return 2


def _names(config: ProxyConfig) -> dict[str, str]:
    return {s.addr: s.name or s.addr for p in config.pools.values() for s in p.servers}


def _run_jobs(config: ProxyConfig, job: Callable[[Executor], Awaitable[T]]) -> T:
    """Run `job` on a fresh event loop with every pool's backends, closed afterwards."""
    import uvloop

    logging.basicConfig(level=logging.ERROR, format="shardproxy: %(message)s")

    async def main() -> T:
        backends = open_backends(config)
        try:
            return await job(Executor(backends))
        finally:
            for backend in backends.values():
                await backend.close()

    return uvloop.run(main())


def _migration(command: str, config: ProxyConfig) -> ActiveMigration | int:
    m = active_migration(config)
    if m is None:
        return _refuse(command, f"the config has no migration block (route pool {config.route!r})")
    return m


def run_plan(config: ProxyConfig, per_server: int) -> int:
    m = _migration("plan", config)
    if isinstance(m, int):
        return m

    async def job(ex: Executor) -> list[str]:
        sample = await sample_keys(ex, m, per_server) if per_server > 0 else None
        return render_plan(m, _names(config), sample)

    for line in _run_jobs(config, job):
        _say(line)
    return 0


def run_backfill(config: ProxyConfig, restart: bool) -> int:
    m = _migration("backfill", config)
    if isinstance(m, int):
        return m

    async def job(ex: Executor) -> BackfillSnapshot:
        backfill = BackfillJob(ex, m, NO_FENCE, restart=restart)
        task = asyncio.create_task(backfill.run(wait=False))
        await _show_progress(backfill, task)
        return task.result()

    snap = _run_jobs(config, job)
    if snap.elsewhere and snap.state != "done":
        _say(
            f"backfill {m.mid} is running elsewhere (lease held by {snap.lease_owner}):"
            f" {snap.state}, {snap.progress * 100:.1f}% scanned"
        )
        return 1
    counts = (
        f"scanned {snap.scanned}, copied {snap.copied}, skipped {snap.skipped},"
        f" failed {snap.failed}, big keys {snap.big_keys}"
    )
    if snap.state != "done":
        _say(f"backfill {m.mid} {snap.state}: {snap.error} ({counts}); run it again to resume")
        return 1
    verify = snap.verify or {}
    earlier = " (finished earlier; --restart runs it again)" if snap.finished_earlier else ""
    _say(
        f"backfill {m.mid} done{earlier}: {counts}; verify: checked {verify.get('checked')},"
        f" repaired {verify.get('repaired')}, remaining {verify.get('remaining')}"
    )
    return 0 if verify.get("remaining") == 0 else 1


async def _show_progress(backfill: BackfillJob, task: asyncio.Task[BackfillSnapshot]) -> None:
    from tqdm import tqdm

    with tqdm(file=sys.stderr, unit="key", desc="backfill", mininterval=0.5) as bar:
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_S)
            snap = backfill.snapshot()
            bar.total = snap.total_keys or None
            bar.n = snap.total_keys if snap.state == "done" else snap.scanned
            step = f"verify {snap.verified}/{snap.copied}" if snap.step == "verify" else snap.step
            bar.set_postfix(copied=snap.copied, failed=snap.failed, step=step, refresh=False)
            bar.refresh()


def run_verify(config: ProxyConfig, repair: bool) -> int:
    m = _migration("verify", config)
    if isinstance(m, int):
        return m
    authority = "target" if RULES[m.phase].reads_target else "source"

    async def job(ex: Executor) -> tuple[VerifyReport, dict[str, object] | None]:
        verifier = Verifier(
            ex,
            m.source,
            m.target,
            ttl_tolerance_ms=m.settings.verify_ttl_tolerance_ms,
            claims=m.moves,
            repair=repair,
            authority=authority,
            scan_count=m.settings.backfill.scan_count,
            concurrency=m.settings.backfill.batch_keys,
        )
        return await verifier.run(), await read_gate(ex, m.target, m.mid)

    report, gate = _run_jobs(config, job)
    _say(
        f"verify {m.mid} (phase {m.phase}, reads from {authority}): checked {report.checked},"
        f" mismatched {report.mismatched}, missing on target {report.missing_on_target},"
        f" extra on target {report.extra_on_target}, errors {report.errors}"
        + (f", repaired {report.repaired}" if repair else "")
    )
    for sample in report.samples:
        _say(f"  {sample}")
    if m.phase == "backfill":
        _say(f"gate for cut-read: {gate_reason(gate, m.seal) or 'open'}")
    return 0 if (report.remaining if repair else report.problems) == 0 else 1


def run_cleanup(config: ProxyConfig, dry_run: bool, from_pool: str | None) -> int:
    found = _cleanup_pool(config, from_pool)
    if isinstance(found, str):
        return _refuse("cleanup", found)
    pool, claims = found

    async def job(ex: Executor) -> dict[str, int]:
        return await cleanup_pool(ex, pool, dry_run=dry_run, claims=claims)

    counts = _run_jobs(config, job)
    names = _names(config)
    verb = "would delete" if dry_run else "deleted"
    per_server = ", ".join(f"{names[a]} {a}: {n}" for a, n in counts.items())
    _say(f"cleanup pool {pool.name}: {verb} {sum(counts.values())} keys ({per_server})")
    return 0


def _cleanup_pool(
    config: ProxyConfig, from_pool: str | None
) -> tuple[PoolTopology, Callable[[bytes], bool]] | str:
    """The pool to clean up and which keys are its (by prefix routes), or why it is refused."""
    pool_of = pool_matcher(config.route, [(r.prefix.encode(), r.pool) for r in config.routes])
    migration = config.migration
    if migration is not None:
        if migration.phase != "retire":
            return (
                f"refused in phase {migration.phase}: keys not owned by a target server may"
                " still be the only copy read; run it in phase retire"
            )
        source = config.migration_source
        if from_pool is not None and from_pool != source:
            return f"--from-pool {from_pool} is not this migration's source ({source})"
        ours = (source, migration.to)  # the source's keys now live on the target, as its own
        return build_pool(config.pool(migration.to)), lambda key: pool_of(key) in ours
    if from_pool is None:
        return (
            "the config has no migration block; name the pool the keys came from with"
            " --from-pool OLD to clean up the route pool after a finished migration"
        )
    if from_pool not in config.pools or from_pool == config.route:
        return f"--from-pool must name another pool of the config, got {from_pool!r}"
    return build_pool(config.pool(config.route)), lambda key: pool_of(key) == config.route
