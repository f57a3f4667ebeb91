"""The backfill job: copies every key whose owner changes from the source pool to the target.

One job runs per fleet: it holds a lease (lease.py, a key on the target pool renewed while it runs),
and checkpoints each source server's SCAN cursor and its counters next to it, so a job that dies is
resumed by the next one from its last finished page. After the scan a verify pass repairs from the
source and writes the gate that backfill -> cut-read waits for. All shared state lives under
state_key(mid, ...) on state_owner(target, mid): every proxy computes the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Final

from proxy import errors
from proxy.jobs.bigkey import copy_big_key
from proxy.jobs.executor import (
    NO_FENCE,
    CopyOutcome,
    Executor,
    Fence,
    JobError,
    RateLimiter,
    copy_key,
    gather_bounded,
    keyed_dbs,
    open_backends,
    request,
    scan_keys,
)
from proxy.jobs.lease import LEASE_MS, Lease, LeaseLost, runner_id
from proxy.jobs.verify import Verifier, VerifyReport
from proxy.migration.keys import is_reserved, state_key, state_owner
from proxy.migration.phases import ActiveMigration, BackfillState
from proxy.routing.topology import PoolTopology

__all__ = [
    "NO_FENCE",
    "BackfillJob",
    "BackfillSnapshot",
    "Executor",
    "Fence",
    "copy_key",
    "open_backends",
    "read_gate",
]

log = logging.getLogger("shardproxy.backfill")

DONE_CURSOR: Final = b"done"  # a source server's checkpoint once its SCAN finished
_STATES: Final = {s.value: s for s in BackfillState}  # a shared status's "state" -> its state


@dataclass(frozen=True, slots=True)
class BackfillSnapshot:
    """What /status and the metrics show of a backfill."""

    mid: str  # migration id
    state: BackfillState
    step: str  # "scan" | "verify" | "" (what the running job does now)
    scanned: int  # source keys examined (cumulative across resumed runs)
    copied: int
    skipped: int  # not moving (same address in both rings, another pool's), or gone when copied
    failed: int  # copies that got an error (the verify pass repairs them)
    stale: int  # keys on a source server that its ring does not place there
    big_keys: int  # keys above big_key_bytes, copied in chunks
    total_keys: int  # sum of the source servers' DBSIZE when the job started
    progress: float  # 0..1; below 1 until done
    server: str  # source server being scanned
    elsewhere: bool  # another process holds the lease: the counters are its shared ones
    lease_owner: str
    resumed: bool  # this run started from a checkpoint
    finished_earlier: bool  # the shared status already said done: nothing was redone
    verified: int  # moved keys the verify pass has compared so far
    error: str
    verify: dict[str, object] | None  # the verify pass's report, once done


@dataclass(slots=True)
class _Counters:
    scanned: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    stale: int = 0
    big_keys: int = 0
    total_keys: int = 0

    def as_dict(self) -> dict[str, object]:
        names = ("scanned", "copied", "skipped", "failed", "stale", "big_keys", "total_keys")
        return {name: getattr(self, name) for name in names}

    def load(self, data: dict[str, object]) -> None:
        for name in self.as_dict():
            value = data.get(name)
            if isinstance(value, int):
                setattr(self, name, value)


async def read_gate(ex: Executor, target: PoolTopology, mid: str) -> dict[str, object] | None:
    """The gate JSON a finished backfill wrote, or None (see migration.gate_reason)."""
    return await _read_json(ex, state_owner(target, mid), state_key(mid, "gate"))


async def _read_json(ex: Executor, addr: str, key: bytes) -> dict[str, object] | None:
    raw = await request(ex, addr, b"GET", key)
    if not isinstance(raw, bytes):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class BackfillJob:
    """Copy the moved keys of one migration; `run()` until done, `snapshot()` any time."""

    def __init__(
        self,
        ex: Executor,
        migration: ActiveMigration,
        fence: Fence = NO_FENCE,
        *,
        owner: str | None = None,
        lease_ms: int = LEASE_MS,
        restart: bool = False,
    ) -> None:
        self.ex, self.m, self.fence = ex, migration, fence
        self.settings = migration.settings.backfill
        self.owner = owner or runner_id()
        self.restart = restart
        self.mid = migration.mid
        self.home = state_owner(migration.target, migration.mid)  # where the state keys live
        self.lease = Lease(ex, self.home, self.key("lease"), self.owner, lease_ms)
        self.limiter = RateLimiter(self.settings.rate_keys_per_s)
        self.counters = _Counters()
        self.state, self.step, self.server, self.error = BackfillState.IDLE, "", "", ""
        self.elsewhere, self.lease_owner, self.resumed = False, "", False
        self.finished_earlier = False
        self.verify: dict[str, object] | None = None
        self.verifier: Verifier | None = None

    def key(self, *parts: str) -> bytes:
        return state_key(self.mid, *parts)

    def snapshot(self) -> BackfillSnapshot:
        c = self.counters
        progress = (
            1.0
            if self.state is BackfillState.DONE
            else min(c.scanned / max(c.total_keys, 1), 0.999)
        )
        return BackfillSnapshot(
            mid=self.mid,
            state=self.state,
            step=self.step,
            scanned=c.scanned,
            copied=c.copied,
            skipped=c.skipped,
            failed=c.failed,
            stale=c.stale,
            big_keys=c.big_keys,
            total_keys=c.total_keys,
            progress=progress,
            server=self.server,
            elsewhere=self.elsewhere,
            lease_owner=self.lease_owner,
            resumed=self.resumed,
            finished_earlier=self.finished_earlier,
            verified=self.verifier.report.checked if self.verifier else 0,
            error=self.error,
            verify=self.verify,
        )

    # -- running ---------------------------------------------------------------------------

    async def run(self, wait: bool = True) -> BackfillSnapshot:
        """Run to done (or failed). Another runner holding the lease: with `wait`, follow its
        shared progress until it finishes or its lease expires and this job takes over; without,
        return at once with `elsewhere` set."""
        try:
            while (holder := await self.lease.acquire()) != self.owner:
                self.lease_owner = holder
                if await self._follow() or not wait:
                    return self.snapshot()
                await asyncio.sleep(self.lease.renew_s)
            self.elsewhere, self.lease_owner = False, self.owner
            await self._run_leased()
        except JobError as exc:
            self._fail(str(exc))
        return self.snapshot()

    def _fail(self, reason: str) -> None:
        self.state, self.error = BackfillState.FAILED, reason
        log.warning("backfill %s failed: %s", self.mid, reason)

    async def _follow(self) -> bool:
        """Mirror the lease holder's shared status; True once it reports done."""
        self.elsewhere, self.state = True, BackfillState.RUNNING
        status = await _read_json(self.ex, self.home, self.key("backfill"))
        if status is None:
            return False
        self.counters.load(status)
        state = status.get("state")
        self.state = _STATES.get(state if isinstance(state, str) else "", BackfillState.RUNNING)
        verify = status.get("verify")
        self.verify = verify if isinstance(verify, dict) else None
        return self.state is BackfillState.DONE

    async def _run_leased(self) -> None:
        work = asyncio.create_task(self._work())
        renew = asyncio.create_task(self.lease.keep())
        try:
            await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                renew.result()  # raises LeaseLost or JobError
            work.result()
        except LeaseLost:
            self._fail(errors.lease_lost(self.lease_owner))
        except Exception as exc:  # a job in the background must end in a state, not a traceback
            if not isinstance(exc, JobError):
                log.exception("backfill %s: unexpected error", self.mid)
            self._fail(str(exc) or type(exc).__name__)
            with contextlib.suppress(JobError):
                await self._publish(BackfillState.FAILED)
        finally:
            for task in (work, renew):
                task.cancel()
            await asyncio.gather(work, renew, return_exceptions=True)
            await self.lease.release()
            if self.state is BackfillState.RUNNING:  # cancelled: resumable from a checkpoint
                self.state, self.step = BackfillState.IDLE, ""

    async def _work(self) -> None:
        self.state, self.error = BackfillState.RUNNING, ""
        if self.restart:
            await self._forget()
        else:
            status = await _read_json(self.ex, self.home, self.key("backfill"))
            if status is not None:
                self.counters.load(status)
                self.resumed = True
                if status.get("state") == BackfillState.DONE:
                    verify = status.get("verify")
                    self.verify = verify if isinstance(verify, dict) else None
                    self.state, self.finished_earlier = BackfillState.DONE, True
                    return
        dbs = await keyed_dbs(self.ex, self.m.source.addrs)  # the dbs with keys, db 0 always
        if not self.resumed:
            self.counters.total_keys = sum(dbs.values())
        for db in dbs:  # db n of each source to db n of its keys' targets
            for addr in dict.fromkeys(self.m.source.addrs):
                await self._scan_server(addr, db)
        await self._verify_and_gate()

    def _cursor_key(self, addr: str, db: int) -> bytes:
        return self.key("cursor", addr) if db == 0 else self.key("cursor", addr, f"db{db}")

    async def _forget(self) -> None:
        """Drop every checkpoint, status and gate of this migration (a fresh backfill)."""
        others = await request(self.ex, self.home, b"SMEMBERS", self.key("dbs"))
        dbs = [0] + [int(d) for d in others if d.isdigit()] if isinstance(others, list) else [0]
        keys = [self.key("backfill"), self.key("gate"), self.key("dbs")]
        addrs = dict.fromkeys(self.m.source.addrs)
        keys += [self._cursor_key(addr, db) for addr in addrs for db in dbs]
        await request(self.ex, self.home, b"DEL", *keys)

    async def _scan_server(self, addr: str, db: int) -> None:
        """Copy the moved keys of database `db` of source server `addr`, from its checkpoint."""
        cursor_key = self._cursor_key(addr, db)
        cursor = await request(self.ex, self.home, b"GET", cursor_key)
        if cursor == DONE_CURSOR:
            return
        if db:  # remembered, so that a restart forgets this db's checkpoints too
            await request(self.ex, self.home, b"SADD", self.key("dbs"), b"%d" % db)
        start = cursor if isinstance(cursor, bytes) else b"0"
        self.resumed = self.resumed or start != b"0"
        self.step, self.server = "scan", addr if db == 0 else f"{addr} db{db}"
        ex = self.ex.in_db(db)
        async for next_cursor, keys in scan_keys(ex, addr, self.settings.scan_count, start):
            await self.limiter.take(len(keys))
            await self._copy_page(ex, addr, keys)
            await self._checkpoint(cursor_key, DONE_CURSOR if next_cursor == b"0" else next_cursor)
        self.server = ""

    async def _copy_page(self, ex: Executor, addr: str, keys: list[bytes]) -> None:
        c = self.counters
        moves: list[tuple[bytes, str]] = []
        for key in keys:
            if is_reserved(key):
                continue
            c.scanned += 1
            if not self.m.moves(key):  # another pool's, by prefix routes: never moved
                c.skipped += 1
            elif self.m.source.addr_for(key) != addr:
                c.stale += 1
            elif (dst := self.m.target.addr_for(key)) == addr:
                c.skipped += 1
            else:
                moves.append((key, dst))
        outcomes = await gather_bounded(
            (self._copy(ex, key, addr, dst) for key, dst in moves), self.settings.batch_keys
        )
        c.copied += outcomes.count(CopyOutcome.COPIED)
        c.skipped += outcomes.count(CopyOutcome.SKIPPED)
        c.failed += outcomes.count(CopyOutcome.FAILED)

    async def _copy(self, ex: Executor, key: bytes, src: str, dst: str) -> CopyOutcome:
        try:
            size = await request(ex, src, b"MEMORY", b"USAGE", key)
        except JobError:
            size = None
        if isinstance(size, int) and size > self.settings.big_key_bytes:
            self.counters.big_keys += 1
            log.info("backfill: big key %r (%d bytes) copied in chunks", key, size)
            return await copy_big_key(ex, self.fence, key, src, dst)
        return await copy_key(ex, self.fence, key, src, dst)

    async def _checkpoint(self, cursor_key: bytes, cursor: bytes) -> None:
        cursor_f = self.ex.call(self.home, [b"SET", cursor_key, cursor])
        await self._publish(BackfillState.RUNNING)
        await cursor_f

    async def _publish(self, state: BackfillState) -> None:
        status: dict[str, object] = {
            "state": state,
            "owner": self.owner,
            "updated_at": round(time.time(), 3),
            **self.counters.as_dict(),
        }
        if self.verify is not None:
            status["verify"] = self.verify
        await request(self.ex, self.home, b"SET", self.key("backfill"), json.dumps(status).encode())

    async def _verify_and_gate(self) -> None:
        self.step = "verify"
        self.verifier = verifier = Verifier(
            self.ex,
            self.m.source,
            self.m.target,
            ttl_tolerance_ms=self.m.settings.verify_ttl_tolerance_ms,
            claims=self.m.moves,
            repair=True,
            authority="source",
            fence=self.fence,
            scan_count=self.settings.scan_count,
            concurrency=self.settings.batch_keys,
            limiter=self.limiter,
        )
        report: VerifyReport = await verifier.run()
        self.verify = report.as_dict()
        gate = {
            "backfill": BackfillState.DONE,
            "mismatches_after_repair": report.remaining,
            "verified_at": round(time.time(), 3),
            "checked": report.checked,
            "repaired": report.repaired,
            "owner": self.owner,
        }
        sealed = json.dumps(self.m.seal.sign(gate)).encode()
        await request(self.ex, self.home, b"SET", self.key("gate"), sealed)
        await self._publish(BackfillState.DONE)
        self.state, self.step = BackfillState.DONE, ""
        log.info("backfill %s done: %s", self.mid, self.verify)
