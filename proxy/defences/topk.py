"""Top-K counting in bounded memory: space-saving counters over a sliding window, and the
largest items seen (big keys).

SpaceSaving (Metwally et al.) keeps `capacity` counters: a new key takes over the smallest
counter and its count plus one, so a key's estimate is never below its true count and is over it
by at most `error`; every key counted more than total/capacity times is present. The smallest
counter is found through a heap with stale entries (a counter only grows), so an update costs
O(log capacity) at worst. SlidingTopK keeps one SpaceSaving per sub-window and forgets the
oldest as time moves on. Pure: the clock is an argument.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
SUB_WINDOWS = 6  # a window is this many sub-windows: rates forget in steps of window/6


class SpaceSaving(Generic[K]):
    __slots__ = ("_heap", "capacity", "counts", "errors", "total")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[K, int] = {}
        self.errors: dict[K, int] = {}  # a key's possible overcount (the counter it took over)
        self._heap: list[tuple[int, int, K]] = []  # (count when pushed, tie-break, key)
        self.total = 0

    def add(self, key: K, n: int = 1) -> None:
        self.total += n
        counts = self.counts
        if key in counts:
            counts[key] += n
            return
        if len(counts) < self.capacity:
            counts[key] = n
            self.errors[key] = 0
            heapq.heappush(self._heap, (n, id(key), key))
            return
        heap = self._heap
        while True:  # the smallest counter: skip stale heap entries (their count grew since)
            count, _, smallest = heap[0]
            if counts[smallest] == count:
                break
            heapq.heapreplace(heap, (counts[smallest], id(smallest), smallest))
        del counts[smallest]
        del self.errors[smallest]
        counts[key] = count + n
        self.errors[key] = count
        heapq.heapreplace(heap, (count + n, id(key), key))


@dataclass(frozen=True, slots=True)
class Ranked(Generic[K]):
    key: K
    count: int  # estimated, over the whole window
    error: int  # the estimate may exceed the true count by this much


class SlidingTopK(Generic[K]):
    """Counts over the last `window_s` seconds, in SUB_WINDOWS steps."""

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.capacity = capacity
        self.step_s = window_s / SUB_WINDOWS
        self._windows: list[SpaceSaving[K]] = [SpaceSaving(capacity)]
        self.started = now  # start of the newest sub-window

    @property
    def current(self) -> SpaceSaving[K]:
        return self._windows[-1]

    def rotate(self, now: float) -> bool:
        """Open new sub-windows for the time passed; True if any was opened."""
        if now - self.started < self.step_s:
            return False
        steps = min(SUB_WINDOWS, int((now - self.started) / self.step_s))
        self._windows.extend(SpaceSaving(self.capacity) for _ in range(steps))
        del self._windows[:-SUB_WINDOWS]
        self.started += steps * self.step_s
        if now - self.started >= self.step_s:  # idle for longer than the window
            self.started = now
        return True

    def covered_s(self, now: float) -> float:
        """Seconds the live sub-windows cover (the divisor of a rate)."""
        return (len(self._windows) - 1) * self.step_s + max(now - self.started, 1e-3)

    def total(self) -> int:
        return sum(w.total for w in self._windows)

    def top(self, n: int) -> list[Ranked[K]]:
        counts: dict[K, int] = {}
        errors: dict[K, int] = {}
        for w in self._windows:
            for key, count in w.counts.items():
                counts[key] = counts.get(key, 0) + count
                errors[key] = errors.get(key, 0) + w.errors[key]
        best = heapq.nlargest(n, counts.items(), key=lambda kv: kv[1])
        return [Ranked(k, c, errors[k]) for k, c in best]


@dataclass(frozen=True, slots=True)
class BigItem:
    key: bytes
    size: int  # bytes
    command: str
    direction: str  # "request" or "reply"


class LargestSeen:
    """The `capacity` largest items seen, one entry per (key, direction): its largest size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[tuple[bytes, str], BigItem] = {}

    def add(self, item: BigItem) -> None:
        ident = (item.key, item.direction)
        old = self._items.get(ident)
        if old is not None and old.size >= item.size:
            return
        self._items[ident] = item
        if len(self._items) > self.capacity:
            smallest = min(self._items, key=lambda i: self._items[i].size)
            del self._items[smallest]

    def largest(self) -> list[BigItem]:
        return sorted(self._items.values(), key=lambda i: i.size, reverse=True)
