"""The verifier: compares every moved key between its source and target owner, by content.

Values are read with the type's own full read (GET, HGETALL, LRANGE 0 -1, SMEMBERS, ZRANGE 0 -1
WITHSCORES, XRANGE - +) and compared as Python values, so a hash equals a hash with the same fields
whatever its encoding or field order; TTLs are equal within a tolerance. A difference is re-read
once after a short pause before it counts (a write may be between the two pools). Repair copies
from the side that answers reads in the phase, with copy_key, so it never races a client write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from proxy.jobs.executor import (
    NO_FENCE,
    Executor,
    Fence,
    JobError,
    RateLimiter,
    copy_key,
    gather_bounded,
    keyed_dbs,
    parse,
    scan_keys,
)
from proxy.jobs.executor import request as send
from proxy.migration.keys import is_reserved
from proxy.routing.topology import PoolTopology

__all__ = ["Snapshot", "Verifier", "VerifyReport", "content_equal", "read_value"]

MAX_SAMPLES: Final = 10
SAMPLE_TRIES: Final = 4  # RANDOMKEY calls per wanted key: most keys of a pool do not move
RECHECK_PAUSE_S: Final = 0.2  # long enough for a double-written command to reach both pools

# The full read of each type; the reply becomes a value compared with ==.
_READS: Final[dict[bytes, list[bytes]]] = {
    b"string": [b"GET"],
    b"hash": [b"HGETALL"],
    b"list": [b"LRANGE", b"", b"0", b"-1"],
    b"set": [b"SMEMBERS"],
    b"zset": [b"ZRANGE", b"", b"0", b"-1", b"WITHSCORES"],
    b"stream": [b"XRANGE", b"", b"-", b"+"],
}


def _freeze(value: object) -> object:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _as_value(kind: bytes, reply: object) -> object:
    """A reply as a value whose == means "same content" for its type."""
    if kind == b"hash" and isinstance(reply, list):
        return dict(zip(reply[::2], reply[1::2], strict=True))
    if kind == b"set" and isinstance(reply, list):
        return frozenset(reply)
    if kind == b"zset" and isinstance(reply, list):
        return {m: float(s) for m, s in zip(reply[::2], reply[1::2], strict=True)}
    return _freeze(reply)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One key as one backend holds it."""

    kind: bytes  # TYPE: b"none" when the key does not exist
    pttl_ms: int  # -1: no expiry
    value: object = None


async def read_value(ex: Executor, addr: str, key: bytes) -> Snapshot:
    type_f = ex.call(addr, [b"TYPE", key])
    pttl_f = ex.call(addr, [b"PTTL", key])
    kind, pttl = parse(await type_f, addr), parse(await pttl_f, addr)
    assert isinstance(kind, bytes) and isinstance(pttl, int)
    if kind == b"none":
        return Snapshot(kind, -2)
    args = list(_READS.get(kind, [b"DUMP"]))  # a module type: compare its serialized form
    if len(args) == 1:
        args.append(key)
    else:
        args[1] = key
    return Snapshot(kind, pttl, _as_value(kind, await send(ex, addr, *args)))


def content_equal(a: Snapshot, b: Snapshot, ttl_tolerance_ms: int) -> str | None:
    """None when the two snapshots hold the same key, else what differs ("missing", "extra"...)."""
    if a.kind == b.kind == b"none":
        return None
    if b.kind == b"none":
        return "missing on target"
    if a.kind == b"none":
        return "extra on target"
    if a.kind != b.kind:
        return f"type {a.kind.decode()} vs {b.kind.decode()}"
    if a.value != b.value:
        return f"{a.kind.decode()} content differs"
    if (a.pttl_ms < 0) != (b.pttl_ms < 0) or abs(a.pttl_ms - b.pttl_ms) > ttl_tolerance_ms:
        return f"ttl {a.pttl_ms} ms vs {b.pttl_ms} ms"
    return None


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0  # moved keys compared (those on the source)
    mismatched: int = 0  # on both, different content, type or TTL
    missing_on_target: int = 0
    extra_on_target: int = 0  # the target has a moved key the source lacks (a deleted key)
    errors: int = 0  # keys that could not be read
    repaired: int = 0  # problems fixed (re-compared equal after the repair copy)
    samples: list[str] = field(default_factory=list)  # "key: what differs", at most 10

    @property
    def problems(self) -> int:
        return self.mismatched + self.missing_on_target + self.extra_on_target + self.errors

    @property
    def remaining(self) -> int:
        """Problems left after repair: the gate's mismatches_after_repair."""
        return self.problems - self.repaired

    def as_dict(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "mismatched": self.mismatched,
            "missing_on_target": self.missing_on_target,
            "extra_on_target": self.extra_on_target,
            "errors": self.errors,
            "repaired": self.repaired,
            "remaining": self.remaining,
            "samples": list(self.samples),
        }


class Verifier:
    """Compares the moved keys of source -> target; with repair, copies from `authority`."""

    def __init__(
        self,
        ex: Executor,
        source: PoolTopology,
        target: PoolTopology,
        *,
        ttl_tolerance_ms: int,
        repair: bool = False,
        authority: str = "source",  # the pool that answers reads in the phase
        fence: Fence = NO_FENCE,
        scan_count: int = 200,
        concurrency: int = 100,
        limiter: RateLimiter | None = None,
        recheck_pause_s: float = RECHECK_PAUSE_S,
        claims: Callable[[bytes], bool] = lambda key: True,
    ) -> None:
        if authority not in ("source", "target"):
            raise ValueError(f"authority must be 'source' or 'target', got {authority!r}")
        self.base, self.source, self.target = ex, source, target
        self.ex = ex  # in the database being verified (run, sample: db by db)
        self.db = ex.db
        self.tolerance = ttl_tolerance_ms
        self.repair, self.authority, self.fence = repair, authority, fence
        self.scan_count, self.concurrency = scan_count, concurrency
        self.limiter, self.pause = limiter, recheck_pause_s
        self.claims = (
            claims  # the migrating pool's keys (by prefix routes); others are not compared
        )
        self.report = VerifyReport()

    async def _dbs(self) -> list[int]:
        """The databases with keys on either pool: each is verified in turn."""
        return list(await keyed_dbs(self.base, (*self.source.addrs, *self.target.addrs)))

    def _use_db(self, db: int) -> None:
        self.ex, self.db = self.base.in_db(db), db

    async def run(self) -> VerifyReport:
        for db in await self._dbs():
            self._use_db(db)
            for addr in dict.fromkeys(self.source.addrs):
                async for _, keys in scan_keys(self.ex, addr, self.scan_count):
                    await self._check_source_page(addr, keys)
            for addr in dict.fromkeys(self.target.addrs):
                async for _, keys in scan_keys(self.ex, addr, self.scan_count):
                    await self._check_target_page(addr, keys)
        return self.report

    async def sample(self, limit: int) -> VerifyReport:
        """Compare up to `limit` moved keys picked at random (RANDOMKEY on each source server),
        so a backfill stopped half-way shows wherever its SCAN got to; no repair. A difference
        counts only if it is still there when compared again under the fence. The sample is
        shared by the databases that hold keys."""
        dbs = await self._dbs()
        for db in dbs:
            self._use_db(db)
            await self._sample_db(-(-limit // len(dbs)))
        return self.report

    async def _sample_db(self, limit: int) -> None:
        addrs = list(dict.fromkeys(self.source.addrs))
        per_server = -(-limit // len(addrs))
        moves: list[tuple[bytes, str, str]] = []
        for addr in addrs:
            picks = await asyncio.gather(
                *(self.ex.call(addr, [b"RANDOMKEY"]) for _ in range(per_server * SAMPLE_TRIES))
            )
            found: dict[bytes, tuple[bytes, str, str]] = {}
            for raw in picks:
                key = parse(raw, addr)
                if (
                    isinstance(key, bytes)
                    and not is_reserved(key)
                    and self.claims(key)
                    and self.source.addr_for(key) == addr
                    and (dst := self.target.addr_for(key)) != addr
                ):
                    found.setdefault(key, (key, addr, dst))
            moves += list(found.values())[:per_server]
        self.report.checked += len(moves)
        suspects = await self._compare(moves)
        if suspects:  # a write may be between the pools: look again, under the fence
            await asyncio.sleep(self.pause)
            for (key, _, _), reason in await self._compare_fenced([m for m, _ in suspects]):
                self._count(key, reason)

    async def _compare_fenced(
        self, moves: list[tuple[bytes, str, str]]
    ) -> list[tuple[tuple[bytes, str, str], str]]:
        """Compare each key while this proxy's writes to it wait and its earlier ones are done,
        so a hot key written through this proxy compares equal when both pools agree."""

        async def one(move: tuple[bytes, str, str]) -> list[tuple[tuple[bytes, str, str], str]]:
            await self.fence.hold(move[0])
            try:
                return await self._compare([move])
            finally:
                self.fence.release(move[0])

        found = await gather_bounded((one(m) for m in moves), self.concurrency)
        return [item for items in found for item in items]

    async def _check_source_page(self, addr: str, keys: list[bytes]) -> None:
        """Moved keys this source server owns: compare with their target owner."""
        if self.limiter is not None:
            await self.limiter.take(len(keys))
        moved = [
            (k, addr, dst)
            for k in keys
            if not is_reserved(k)
            and self.claims(k)
            and self.source.addr_for(k) == addr
            and (dst := self.target.addr_for(k)) != addr
        ]
        self.report.checked += len(moved)
        await self._settle(moved)

    async def _check_target_page(self, addr: str, keys: list[bytes]) -> None:
        """Moved keys this target server owns that the source lacks: deleted keys that came back."""
        if self.limiter is not None:
            await self.limiter.take(len(keys))
        owned = [
            (k, src, addr)
            for k in keys
            if not is_reserved(k)
            and self.claims(k)
            and self.target.addr_for(k) == addr
            and (src := self.source.addr_for(k)) != addr
        ]
        checks = (send(self.ex, src, b"EXISTS", k) for k, src, _ in owned)
        exists = await gather_bounded(checks, self.concurrency)
        await self._settle([m for m, n in zip(owned, exists, strict=True) if n == 0])

    async def _settle(self, moves: list[tuple[bytes, str, str]]) -> None:
        """Compare, re-check the differences after a pause, count and repair what stays."""
        suspects = await self._compare(moves)
        if not suspects:
            return
        await asyncio.sleep(self.pause)
        confirmed = await self._compare([m for m, _ in suspects])
        for (key, _, _), reason in confirmed:
            self._count(key, reason)
        if self.repair and confirmed:
            await self._repair([m for m, _ in confirmed])

    async def _compare(
        self, moves: list[tuple[bytes, str, str]]
    ) -> list[tuple[tuple[bytes, str, str], str]]:
        async def one(key: bytes, src: str, dst: str) -> str | None:
            try:
                a, b = await asyncio.gather(
                    read_value(self.ex, src, key), read_value(self.ex, dst, key)
                )
            except JobError as exc:
                return f"error: {exc}"
            if b.kind == b"none" and a.kind == b"none":
                return None
            return content_equal(a, b, self.tolerance)

        reasons = await gather_bounded((one(*m) for m in moves), self.concurrency)
        return [(m, r) for m, r in zip(moves, reasons, strict=True) if r is not None]

    def _count(self, key: bytes, reason: str) -> None:
        report = self.report
        if reason == "missing on target":
            report.missing_on_target += 1
        elif reason == "extra on target":
            report.extra_on_target += 1
        elif reason.startswith("error"):
            report.errors += 1
        else:
            report.mismatched += 1
        if len(report.samples) < MAX_SAMPLES:
            where = f"db{self.db} " if self.db else ""
            report.samples.append(f"{where}{key.decode(errors='backslashreplace')}: {reason}")

    async def _repair(self, moves: list[tuple[bytes, str, str]]) -> None:
        flip = self.authority == "target"
        copies = (
            copy_key(self.ex, self.fence, key, dst if flip else src, src if flip else dst)
            for key, src, dst in moves
        )
        await gather_bounded(copies, self.concurrency)
        still = {m for m, _ in await self._compare(moves)}
        self.report.repaired += sum(1 for m in moves if m not in still)
