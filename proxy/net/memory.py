"""The proxy-wide memory budget over all clients, and giving freed memory back to the system.

Each client bounds itself (client.max_output_buffer_bytes, see ClientConnection). Many clients
each under their own budget can still add up: past `client.max_memory_bytes` in all, the guard
stops reading from the clients that hold the most until the total is back under 70 %; if it
keeps growing even so, it closes the biggest holder (as Redis's maxmemory-clients does). After a
burst is gone, glibc keeps freed heap pages: the guard asks it to give them back (malloc_trim).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Collection
from typing import Protocol

log = logging.getLogger("shardproxy.memory")

SWEEP_S = 0.25  # how often the guard adds up what clients hold
RESUME_RATIO = 0.7  # throttled clients read again below this share of the budget
TRIM_AFTER_BYTES = 16 * 1024 * 1024  # a fall in held bytes that makes freed pages worth trimming
TRIM_EVERY_SWEEPS = 40  # and at most this often (10 s) otherwise, while anything was trimmed


class Holder(Protocol):
    """What the guard needs of a client connection."""

    def held_bytes(self) -> int: ...

    def throttle(self, on: bool) -> None: ...

    def evict(self, reason: str) -> None: ...


class MemoryGuard:
    def __init__(
        self,
        clients: Collection[Holder],
        budget: Callable[[], int],
        on_sweep: Callable[[int, int], None],
    ) -> None:
        self.clients = clients
        self.budget = budget  # read at every sweep: a reload may change it
        self.on_sweep = on_sweep  # (bytes held, clients throttled): for metrics
        self.held = 0
        self.throttled: set[Holder] = set()
        self.over_sweeps = 0  # consecutive sweeps over the budget while throttling
        self._trim_from = 0  # held bytes at the last trim
        self._sweeps_since_trim = 0
        self._trim = _malloc_trim()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep()

    def sweep(self) -> None:
        sizes = [(c.held_bytes(), c) for c in self.clients]
        held = sum(size for size, _ in sizes)
        self.held = held
        budget = self.budget()
        self.throttled = {c for c in self.throttled if c in self.clients}
        if held > budget:
            self._relieve(sorted(sizes, key=lambda e: e[0], reverse=True), held, budget)
        else:
            self.over_sweeps = 0
            if self.throttled and held < budget * RESUME_RATIO:
                for client in self.throttled:
                    client.throttle(False)
                log.warning("clients hold %d bytes again: reading resumed", held)
                self.throttled = set()
        self._maybe_trim(held)
        self.on_sweep(held, len(self.throttled))

    def _relieve(self, biggest_first: list[tuple[int, Holder]], held: int, budget: int) -> None:
        """Throttle the biggest holders down to the resume mark; past a second sweep over the
        budget, close the biggest one."""
        self.over_sweeps += 1
        if self.over_sweeps > 2 and biggest_first:
            size, client = biggest_first[0]
            client.evict(f"holds {size} bytes, the most while the proxy is over its budget")
            self.over_sweeps = 0
            return
        target = budget * RESUME_RATIO
        newly = 0
        for size, client in biggest_first:
            if held <= target:
                break
            if client not in self.throttled:
                client.throttle(True)
                self.throttled.add(client)
                newly += 1
            held -= size
        if newly:
            log.warning(
                "clients hold %d bytes, over client.max_memory_bytes (%d): stopped reading "
                "from the %d that hold the most",
                self.held,
                budget,
                len(self.throttled),
            )

    def _maybe_trim(self, held: int) -> None:
        if self._trim is None:
            return
        self._sweeps_since_trim += 1
        if held > self._trim_from:
            self._trim_from = held
            return
        if self._trim_from - held >= TRIM_AFTER_BYTES or (
            self._sweeps_since_trim >= TRIM_EVERY_SWEEPS and self._trim_from > held
        ):
            self._trim(0)
            self._trim_from = held
            self._sweeps_since_trim = 0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim: returns freed heap pages to the system (None elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    return None
