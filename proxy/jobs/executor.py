"""How migration jobs talk to backends: the Executor, the per-key Fence, and copying one key.

Every request of a job goes through `Executor.call` on connection 0 of the backend, the connection
the proxy uses for all keyed traffic of a migration, so a job's DUMP is ordered with client writes.
Invariant of copy_key: the target never ends up older than the source; writes that reach the proxy
while a key is copied are held by the fence and sent after the RESTORE, on the same connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from enum import StrEnum
from typing import Final, Protocol, TypeVar

import hiredis

from proxy.codec.resp import decode_reply
from proxy.commands.local import keyspace_dbs
from proxy.config.schema import ProxyConfig
from proxy.net.backend import Backend
from proxy.net.pool import backend_settings
from proxy.net.tls import backend_tls

__all__ = [
    "NO_FENCE",
    "CopyOutcome",
    "Executor",
    "Fence",
    "JobError",
    "RateLimiter",
    "copy_key",
    "gather_bounded",
    "keyed_dbs",
    "open_backends",
    "request",
    "scan_keys",
]

T = TypeVar("T")

JOB_CONNECTION: Final = 0  # the backend connection that carries a migration's keyed traffic


class JobError(Exception):
    """A job's request failed: an error reply, or the backend is unavailable."""


class Fence(Protocol):
    """The proxy's per-key fence: while held, requests touching the key are deferred; hold()
    returns once the requests sent before it were answered; release() sends the deferred ones
    (after the job's RESTORE, on the same backend connection)."""

    async def hold(self, key: bytes) -> None: ...

    def release(self, key: bytes) -> None: ...


class _NoFence:
    """For the CLI, where no proxy writes pass through this process."""

    async def hold(self, key: bytes) -> None:
        pass

    def release(self, key: bytes) -> None:
        pass


NO_FENCE: Final[Fence] = _NoFence()


class Executor:
    """Sends a job's requests to backends by address, in database `db` (the jobs' own state
    keys live in db 0; keys are copied, verified and cleaned db by db: keyed_dbs)."""

    def __init__(self, backends: Mapping[str, Backend], db: int = 0) -> None:
        self.backends = backends
        self.db = db

    def in_db(self, db: int) -> Executor:
        """The same backends, in database `db`."""
        return self if db == self.db else Executor(self.backends, db)

    def call(self, addr: str, args: list[bytes]) -> asyncio.Future[bytes]:
        """Queue one request now on connection 0 of `addr` in this executor's db (the
        connection that carries the proxy's keyed traffic of a migration in that db); the
        future gets the raw reply."""
        return self.backends[addr].call(args, JOB_CONNECTION, self.db)


def open_backends(config: ProxyConfig) -> dict[str, Backend]:
    """One Backend per address of every pool (for the CLI), over TLS where the config says so
    (ConfigError: a TLS file that cannot be used); close each with `await b.close()`."""
    tls = backend_tls(config)
    settings = backend_settings(config)
    backends: dict[str, Backend] = {}
    for pool in config.pools.values():
        for server in pool.servers:
            addr = server.addr
            if addr not in backends:
                name = server.name or addr
                backends[addr] = Backend(addr, name, settings[addr], tls.get(addr))
    return backends


def parse(raw: bytes, addr: str) -> object:
    """A raw reply decoded to Python values; an error reply raises JobError naming `addr`."""
    value = decode_reply(raw)
    if isinstance(value, hiredis.ReplyError):
        text = str(value)
        raise JobError(text if addr in text else f"{addr}: {text}")
    return value


async def request(ex: Executor, addr: str, *args: bytes) -> object:
    return parse(await ex.call(addr, list(args)), addr)


async def keyed_dbs(ex: Executor, addrs: Iterable[str]) -> dict[int, int]:
    """The databases that hold keys on any of `addrs` (INFO keyspace), with their key counts
    summed; db 0 always (where the jobs' own keys are)."""
    counts = {0: 0}
    for addr in dict.fromkeys(addrs):
        text = await request(ex, addr, b"INFO", b"keyspace")
        assert isinstance(text, bytes)
        for db, (keys, _, _) in keyspace_dbs(text).items():
            counts[db] = counts.get(db, 0) + keys
    return dict(sorted(counts.items()))


async def scan_keys(
    ex: Executor, addr: str, count: int, cursor: bytes = b"0"
) -> AsyncIterator[tuple[bytes, list[bytes]]]:
    """SCAN one backend from `cursor`: yields (next cursor, keys of this page) until b"0"."""
    while True:
        reply = await request(ex, addr, b"SCAN", cursor, b"COUNT", b"%d" % count)
        assert isinstance(reply, list)
        cursor, keys = reply[0], reply[1]
        yield cursor, keys
        if cursor == b"0":
            return


async def gather_bounded(aws: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await `aws` at most `limit` at a time, in chunks (their requests pipeline together);
    results in order. Coroutines are created lazily, chunk by chunk."""
    results: list[T] = []
    chunk: list[Awaitable[T]] = []
    for aw in aws:
        chunk.append(aw)
        if len(chunk) >= limit:
            results += await asyncio.gather(*chunk)
            chunk = []
    if chunk:
        results += await asyncio.gather(*chunk)
    return results


class RateLimiter:
    """Token bucket over keys: `take(n)` waits until n keys fit in rate_per_s (burst: 1 s)."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate_per_s)
        self.clock = clock
        self.tokens = self.rate
        self.last = clock()

    async def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate) - n
        self.last = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class CopyOutcome(StrEnum):
    """How copying one key ended; the values are the backfill's counter names and metric labels."""

    COPIED = "copied"
    SKIPPED = "skipped"  # gone on the source (and deleted on the target), or not moving
    FAILED = "failed"  # an error reply: the key is left for the verifier to repair


async def copy_key(ex: Executor, fence: Fence, key: bytes, src: str, dst: str) -> CopyOutcome:
    """Copy one key from `src` to `dst` with DUMP / PTTL / RESTORE ... REPLACE, under the fence.

    SKIPPED when the key is gone on src: it is deleted on dst too, so a deleted key never comes
    back.
    """
    await fence.hold(key)
    released = False
    try:
        dump_f = ex.call(src, [b"DUMP", key])
        pttl_f = ex.call(src, [b"PTTL", key])
        payload, pttl = parse(await dump_f, src), parse(await pttl_f, src)
        if payload is None or pttl == -2:
            done_f = ex.call(dst, [b"DEL", key])
            outcome = CopyOutcome.SKIPPED
        else:
            assert isinstance(payload, bytes) and isinstance(pttl, int)
            ttl = b"%d" % max(pttl, 0)  # PTTL -1 (no expiry) -> RESTORE's 0
            done_f = ex.call(dst, [b"RESTORE", key, ttl, payload, b"REPLACE"])
            outcome = CopyOutcome.COPIED
        fence.release(key)  # queued writes follow the RESTORE on the same connection
        released = True
        parse(await done_f, dst)
        return outcome
    except JobError:
        return CopyOutcome.FAILED
    finally:
        if not released:
            fence.release(key)
