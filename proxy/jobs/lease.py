"""The backfill's lease: one runner per fleet, through a key on the target pool.

Taken with SET NX PX, renewed every third of its time while held, and renewed or dropped only by
its holder (a Lua compare-and-set), so a runner whose lease expired can never take it back from
the one that took over: it sees LeaseLost and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from typing import Final

from proxy.jobs.executor import Executor, JobError, request

__all__ = ["LEASE_MS", "Lease", "LeaseLost", "runner_id"]

LEASE_MS: Final = 15_000  # a dead runner's lease expires after this; renewed every third of it

_RENEW: Final = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(Exception):
    """Another runner holds the lease now (ours expired): this job must stop."""


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """The lease key `key` on the backend `home`, as runner `owner` would hold it."""

    def __init__(self, ex: Executor, home: str, key: bytes, owner: str, ms: int = LEASE_MS):
        self.ex, self.home, self.key, self.owner, self.ms = ex, home, key, owner, ms

    @property
    def renew_s(self) -> float:
        """How often the holder renews it, and how often a follower tries to take it."""
        return self.ms / 3000

    async def acquire(self) -> str:
        """Take the lease if it is free; its holder then: `owner` when this runner holds it, ""
        when it expired between the two requests."""
        px, owner = b"%d" % self.ms, self.owner.encode()
        if await request(self.ex, self.home, b"SET", self.key, owner, b"NX", b"PX", px) == b"OK":
            return self.owner
        holder = await request(self.ex, self.home, b"GET", self.key)
        return holder.decode() if isinstance(holder, bytes) else ""

    async def keep(self) -> None:
        """Renew the lease forever; raises LeaseLost once another runner holds it."""
        px, owner = b"%d" % self.ms, self.owner.encode()
        while True:
            await asyncio.sleep(self.renew_s)
            renewed = await request(self.ex, self.home, b"EVAL", _RENEW, b"1", self.key, owner, px)
            if renewed != 1:
                raise LeaseLost

    async def release(self) -> None:
        """Drop the lease if this runner still holds it (best effort, within 2 s)."""
        with contextlib.suppress(JobError, TimeoutError):
            async with asyncio.timeout(2):
                owner = self.owner.encode()
                await request(self.ex, self.home, b"EVAL", _RELEASE, b"1", self.key, owner)
