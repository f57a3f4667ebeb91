"""Migration state that outlives reloads: the per-key fence, the repair queue, counters.

While the backfill copies a key, every request touching it is deferred (its reply slot already
holds its place in the client's queue). `hold` returns once a barrier (a PING answered on every
open connection of the key's two owners) shows nothing sent earlier is still in flight; the job
then DUMPs, RESTOREs and `release`s, which sends the deferred requests in arrival order, after
the RESTORE on the same connection. So a copy never leaves the target older than the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from proxy.commands.spec import CommandSpec
from proxy.net.backend import Backend
from proxy.net.connection import Slot

log = logging.getLogger("shardproxy.migration")

REPAIR_QUEUE_MAX = 100_000  # keys waiting for a repair copy; beyond this the oldest are dropped
LOG_INTERVAL_S = 5.0  # at most one log line per kind of problem per interval


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request waiting behind the fence: re-planned with the current router when it goes."""

    spec: CommandSpec
    args: list[bytes]
    slot: Slot
    proto: int


class MigrationState:
    """What outlives a reload during a migration: fences, the repair queue, counters."""

    def __init__(self) -> None:
        self.held: dict[bytes, list[Callable[[], None]]] = {}  # key -> resumes on release
        self.waiting: dict[int, deque[Deferred]] = {}  # client id -> its deferred requests
        self.router: Any = None  # the Router in use now (set by BackendPool.sync)
        self.repair: OrderedDict[bytes, None] = OrderedDict()
        self.double_write_errors: dict[str, int] = {}  # backend name -> failed secondary writes
        self.shadow_compared = 0
        self.shadow_mismatches = 0
        self._last_log: dict[str, float] = {}

    # -- the fence -------------------------------------------------------------------------
    async def hold(self, key: bytes, backends: Iterable[Backend]) -> None:
        """Defer new requests for `key`; return once the requests already sent to `backends`
        (the key's owners in both pools) were answered."""
        self.held.setdefault(key, [])
        try:
            await asyncio.gather(*(b.barrier() for b in backends))
        except BaseException:
            self.release(key)
            raise

    def release(self, key: bytes) -> None:
        for resume in self.held.pop(key, ()):
            resume()

    def held_key(self, keys: tuple[bytes, ...]) -> bytes | None:
        """The first of `keys` behind the fence, if any."""
        held = self.held
        for key in keys:
            if key in held:
                return key
        return None

    # -- problems --------------------------------------------------------------------------
    def on_secondary_error(self, backend: str, keys: tuple[bytes, ...], reply: bytes) -> None:
        self.double_write_errors[backend] = self.double_write_errors.get(backend, 0) + 1
        for key in keys:
            self.repair[key] = None
            self.repair.move_to_end(key)
        while len(self.repair) > REPAIR_QUEUE_MAX:
            self.repair.popitem(last=False)
        if self._may_log("secondary"):
            text = reply[:200].decode(errors="replace").strip()
            log.warning(
                "secondary write to %s failed for key %r: %s (queued for repair)",
                backend,
                keys[0] if keys else b"",
                text,
            )

    def on_shadow(self, key: bytes, same: bool) -> None:
        self.shadow_compared += 1
        if not same:
            self.shadow_mismatches += 1
            if self._may_log("shadow"):
                log.warning("shadow compare: key %r differs between source and target", key)

    def _may_log(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last_log.get(kind, 0.0) < LOG_INTERVAL_S:
            return False
        self._last_log[kind] = now
        return True
