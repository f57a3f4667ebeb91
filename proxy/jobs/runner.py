"""Background work of the current migration phase, started and stopped on every reload.

- backfill phase: the BackfillJob (it takes a lease on the target pool, so one proxy of a fleet
  copies while the others only double-write), fenced through this proxy's MigrationState.
- phases with secondary writes: the repair worker, which re-copies keys whose secondary write
  failed, from the pool that answers reads to the other one.
Also exports the migration metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.jobs.backfill import BackfillJob, Executor, copy_key
from proxy.jobs.executor import CopyOutcome
from proxy.migration.phases import RULES, BackfillState, Phase, active_migration
from proxy.net.fence import MigrationState
from proxy.net.pool import BackendPool
from proxy.net.route import RouteTable

log = logging.getLogger("shardproxy.migration")

REPAIR_IDLE_S = 0.1  # how often an empty repair queue is looked at again
REPAIR_RETRY_S = 0.5  # pause after a failed repair copy before the next one
PROGRESS_LOG_S = 10.0  # how often a running backfill logs its progress


class RouterFence:
    """The backfill's Fence, over this proxy's MigrationState and its current route table."""

    def __init__(self, runner: PhaseRunner) -> None:
        self.runner = runner

    async def hold(self, key: bytes) -> None:
        router = self.runner.routes
        assert router is not None
        owners = {router.read.addr_for(key), router.other.addr_for(key)}
        await self.runner.migration.hold(key, [router.backends[a] for a in owners])

    def release(self, key: bytes) -> None:
        self.runner.migration.release(key)


class PhaseRunner:
    def __init__(self, pool: BackendPool, migration: MigrationState) -> None:
        self.pool = pool
        self.migration = migration
        self.routes: RouteTable | None = None
        self.fence = RouterFence(self)
        self.job: BackfillJob | None = None
        self._job_task: asyncio.Task[None] | None = None
        self._job_key: tuple[str, Phase] | None = None  # (migration id, phase) of the job
        self._repair_task: asyncio.Task[None] | None = None
        self.repaired = 0
        # Run the backfill job in the backfill phase. False in workers other than worker 0: one
        # job per proxy process group, and the repair loop stays in every worker, since each
        # one queues the keys of its own failed secondary writes.
        self.runs_backfill = True

    def apply(self, router: RouteTable) -> None:
        self.routes = router
        topology = router.topology
        rules = RULES[topology.phase]
        active = active_migration(topology.config)
        if rules.runs_backfill and active is not None and self.runs_backfill:
            if self._job_task is None or self._job_key != (active.mid, Phase.BACKFILL):
                self._stop_job()
                self.job = BackfillJob(Executor(self.pool.backends), active, self.fence)
                self._job_key = (active.mid, Phase.BACKFILL)
                self._job_task = asyncio.get_running_loop().create_task(self._run_job(self.job))
        else:
            self._stop_job()
        if rules.secondary_writes and self._repair_task is None:
            self._repair_task = asyncio.get_running_loop().create_task(self._repair_loop())
        elif not rules.secondary_writes and self._repair_task is not None:
            self._repair_task.cancel()
            self._repair_task = None

    async def _run_job(self, job: BackfillJob) -> None:
        reporter = asyncio.get_running_loop().create_task(self._report(job))
        try:
            log.info("backfill %s starting", job.mid)
            await job.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("backfill failed")
        finally:
            reporter.cancel()

    @staticmethod
    async def _report(job: BackfillJob) -> None:
        while True:
            await asyncio.sleep(PROGRESS_LOG_S)
            snap = job.snapshot()
            log.info(
                "backfill %s %s%s: %.1f%% scanned=%d copied=%d skipped=%d failed=%d",
                job.mid,
                snap.state,
                " (elsewhere)" if snap.elsewhere else "",
                100 * snap.progress,
                snap.scanned,
                snap.copied,
                snap.skipped,
                snap.failed,
            )

    def _stop_job(self) -> None:
        if self._job_task is not None:
            self._job_task.cancel()
        self._job_task = None
        self._job_key = None

    async def _repair_loop(self) -> None:
        executor = Executor(self.pool.backends)
        queue = self.migration.repair
        while True:
            if not queue:
                await asyncio.sleep(REPAIR_IDLE_S)
                continue
            (db, key), _ = queue.popitem(last=False)
            router = self.routes
            assert router is not None
            src, dst = router.read.addr_for(key), router.other.addr_for(key)
            if src == dst:
                continue
            outcome = await copy_key(executor.in_db(db), self.fence, key, src, dst)
            if outcome is CopyOutcome.FAILED:
                # Keep it: the other side may refuse writes for a while (restart, OOM...).
                log.warning("repair of key %r from %s to %s failed; retrying", key, src, dst)
                queue.setdefault((db, key), None)
                await asyncio.sleep(REPAIR_RETRY_S)
            else:
                self.repaired += 1

    async def close(self) -> None:
        tasks = [t for t in (self._job_task, self._repair_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._job_task = self._repair_task = None

    # -- views -----------------------------------------------------------------------------
    def backfill_status(self) -> dict[str, Any]:
        if self.job is None:
            counts = dict.fromkeys(("scanned", *(o.value for o in CopyOutcome)), 0)
            return {"state": BackfillState.IDLE, **counts, "progress": 0.0}
        return dataclasses.asdict(self.job.snapshot())

    def collect(self) -> Iterator[Metric]:
        phase = self.routes.topology.phase if self.routes is not None else Phase.NONE
        gauge = GaugeMetricFamily(
            "shardproxy_migration_phase", "1 for the current migration phase", labels=["phase"]
        )
        for each in Phase:
            gauge.add_metric([each.value], 1 if phase is each else 0)
        yield gauge
        errors = CounterMetricFamily(
            "shardproxy_double_write_errors",
            "Secondary writes that failed (queued for repair), by backend",
            labels=["backend"],
        )
        for name, count in sorted(self.migration.double_write_errors.items()):
            errors.add_metric([name], count)
        yield errors
        shadow = CounterMetricFamily(
            "shardproxy_shadow_compares", "Sampled reads compared between pools", labels=["result"]
        )
        m = self.migration
        shadow.add_metric(["same"], m.shadow_compared - m.shadow_mismatches)
        shadow.add_metric(["different"], m.shadow_mismatches)
        yield shadow
        status = self.backfill_status()
        keys = CounterMetricFamily(
            "shardproxy_backfill_keys", "Backfill keys by outcome", labels=["outcome"]
        )
        for outcome in ("scanned", *(o.value for o in CopyOutcome)):
            keys.add_metric([outcome], status[outcome])
        yield keys
        yield GaugeMetricFamily(
            "shardproxy_backfill_progress_ratio",
            "Backfill progress, 0..1",
            value=status["progress"],
        )
        yield CounterMetricFamily(
            "shardproxy_verify_mismatches",
            "Mismatches found by verification passes",
            value=int((status.get("verify") or {}).get("mismatched", 0)),
        )
        yield CounterMetricFamily(
            "shardproxy_repairs",
            "Keys re-copied after a failed secondary write",
            value=self.repaired,
        )
