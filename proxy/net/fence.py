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
from typing import Protocol

from proxy.commands.spec import CommandSpec
from proxy.net.backend import Backend
from proxy.net.route import RouteTable
from proxy.net.slot import Slot

log = logging.getLogger("shardproxy.migration")

REPAIR_QUEUE_MAX = 100_000  # keys waiting for a repair copy; beyond this the oldest are dropped
LOG_INTERVAL_S = 5.0  # at most one log line per kind of problem per interval


class DeferredBlock(Protocol):
    """A deferred request that plans and sends itself (a transaction's block, net/transaction)."""

    @property
    def keys(self) -> tuple[bytes, ...]: ...

    def send(self, routes: RouteTable) -> None: ...


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request waiting behind the fence: re-planned with the current router when it goes."""

    spec: CommandSpec
    args: list[bytes]
    slot: Slot
    lane: int  # the client's RESP version and database (commands/local.lane_for)
    block: DeferredBlock | None = None  # set: it sends itself (spec and args name it only)


class MigrationState:
    """What outlives a reload during a migration: fences, the repair queue, counters.

    `current` gives the route table in use now: deferred requests are re-planned with it when
    they go (a reload may have replaced the backends since they arrived)."""

    def __init__(self, current: Callable[[], RouteTable]) -> None:
        self.current = current
        self.held: dict[bytes, list[Callable[[], None]]] = {}  # key -> resumes on release
        self._waiting: dict[int, deque[Deferred]] = {}  # client id -> its deferred requests
        self.repair: OrderedDict[tuple[int, bytes], None] = OrderedDict()  # (db, key)
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

    def waiting_for(self, client_id: int) -> deque[Deferred] | None:
        """The client's requests deferred behind the fence, in arrival order (None: none)."""
        return self._waiting.get(client_id)

    def defer(self, client_id: int, item: Deferred, key: bytes, resume: Callable[[], None]) -> None:
        """Defer `item` behind the fence on `key`: the client's first deferred request, after
        which its later ones queue behind it (waiting_for); `resume` runs on release."""
        self._waiting.setdefault(client_id, deque()).append(item)
        self.held[key].append(resume)

    def drop_waiting(self, client_id: int) -> None:
        """The client's deferred requests are all sent, or it closed: then what it still had
        deferred is dropped, never sent."""
        self._waiting.pop(client_id, None)

    def held_key(self, keys: tuple[bytes, ...]) -> bytes | None:
        """The first of `keys` behind the fence, if any."""
        held = self.held
        for key in keys:
            if key in held:
                return key
        return None

    # -- problems --------------------------------------------------------------------------
    def on_secondary_error(
        self, backend: str, keys: tuple[bytes, ...], reply: bytes, db: int
    ) -> None:
        """A secondary write in database `db` failed: its keys are queued for repair."""
        self.double_write_errors[backend] = self.double_write_errors.get(backend, 0) + 1
        for key in keys:
            self.repair[db, key] = None
            self.repair.move_to_end((db, key))
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
