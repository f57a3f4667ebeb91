"""Hot keys and big keys, as the proxy sees them: what is requested most, and what is largest.

Hot keys: one request in `hotkeys.sample_every` is sampled by the client (a countdown, so the
others pay one decrement); its keys are counted per pool in space-saving counters over a
sliding window (defences/topk.py), with the sampled load of each backend, so a report gives a
key's estimated rate and its share of its backend's load. The hot set (keys whose estimated rate
reaches `hotkeys.hot_rate_per_s`) takes a sampled key as soon as its count in the current
sub-window says so, and is rebuilt from the top keys every REFRESH_S (dropping keys that cooled);
the hot-key cache and coalescing only act on keys in it. Big keys: requests and replies of at
least `bigkeys.threshold_bytes` are counted by command and kept in a bounded largest-first list.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

from proxy.commands.spec import lookup
from proxy.config.defences import DefencesConfig
from proxy.defences.topk import BigItem, LargestSeen, SlidingTopK
from proxy.net.metrics import DefenceStats
from proxy.net.route import RouteTable
from proxy.net.slot import Slot

NEVER: Final = 1 << 62  # a countdown or threshold that is never reached
REFRESH_S: Final = 1.0  # seconds between rebuilds of the hot set from the top keys
MAX_KEYS_PER_SAMPLE: Final = 16  # of one sampled multi-key request


class _PoolCounts:
    __slots__ = ("backends", "keys")

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.keys: SlidingTopK[bytes] = SlidingTopK(capacity, window_s, now)
        self.backends: SlidingTopK[str] = SlidingTopK(4096, window_s, now)


class KeyWatch:
    def __init__(self, config: DefencesConfig, stats: DefenceStats) -> None:
        hot, big = config.hotkeys, config.bigkeys
        self.config = config
        self.stats = stats
        self.sample_every = hot.sample_every if hot.enabled else NEVER
        self.big_bytes = big.threshold_bytes or NEVER
        self.hot: set[bytes] = set()
        self._pools: dict[str, _PoolCounts] = {}
        self._refreshed = 0.0  # monotonic time of the last rebuild of `hot`
        self._threshold = hot.hot_rate_per_s / hot.sample_every  # sampled count per second
        self._largest = LargestSeen(big.top)

    # -- hot keys -------------------------------------------------------------------------
    def sample(self, args: list[bytes], routes: RouteTable) -> None:
        """One sampled request: count its keys (up to MAX_KEYS_PER_SAMPLE) in their pool."""
        spec = lookup(args)
        positions = spec.key_positions(args)[:MAX_KEYS_PER_SAMPLE] if spec is not None else []
        if not positions:
            return
        now = time.monotonic()
        pool = routes.read
        counts = self._pools.get(pool.name)
        if counts is None:
            cfg = self.config.hotkeys
            counts = self._pools[pool.name] = _PoolCounts(cfg.capacity, cfg.window_s, now)
        rotated = counts.keys.rotate(now)
        counts.backends.rotate(now)
        current = counts.keys.current
        # A key's rate in the current sub-window (its first second counts as a whole second).
        floor = self._threshold * max(1.0, now - counts.keys.started)
        hot = self.hot
        for pos in positions:
            key = args[pos]
            current.add(key)
            counts.backends.current.add(pool.addr_for(key))
            if key not in hot and current.counts.get(key, 0) >= floor:
                hot.add(key)
        if rotated or now - self._refreshed >= REFRESH_S:
            self._refresh_hot(now)

    def _refresh_hot(self, now: float) -> None:
        self._refreshed = now
        threshold = self.config.hotkeys.hot_rate_per_s
        hot: set[bytes] = set()
        for counts in self._pools.values():
            scale = self.sample_every / counts.keys.covered_s(now)
            for ranked in counts.keys.top(self.config.hotkeys.top):
                if ranked.count * scale >= threshold:
                    hot.add(ranked.key)
        self.hot = hot

    def report(self, routes: RouteTable) -> list[dict[str, Any]]:
        """The top keys per pool: key (or its keyed hash), estimated rate, backend, share."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        for name, counts in sorted(self._pools.items()):
            pool = routes.topology.pools.get(name)
            counts.keys.rotate(now)
            counts.backends.rotate(now)
            scale = self.sample_every / counts.keys.covered_s(now)
            loads = {r.key: r.count for r in counts.backends.top(4096)}
            for ranked in counts.keys.top(self.config.hotkeys.top):
                addr = pool.addr_for(ranked.key) if pool is not None else "?"
                load = loads.get(addr, 0)
                rows.append(
                    {
                        "pool": name,
                        "key": self.show_key(ranked.key),
                        "rate_per_s": round(ranked.count * scale, 2),
                        "count": ranked.count,
                        "error": ranked.error,
                        "backend": addr,
                        "backend_count": load,
                        "backend_share": round(ranked.count / load, 4) if load else 0.0,
                    }
                )
        return rows

    def top_share(self, routes: RouteTable) -> dict[str, float]:
        """Per backend, the hottest key's share of its sampled load (a bounded metric)."""
        shares: dict[str, float] = {}
        for row in self.report(routes):
            backend = row["backend"]
            shares[backend] = max(shares.get(backend, 0.0), row["backend_share"])
        return shares

    def show_key(self, key: bytes) -> str:
        if self.config.hotkeys.hash_names:
            secret = (self.config.hotkeys.hash_secret or "").encode()
            return "h:" + hashlib.blake2b(key, digest_size=8, key=secret).hexdigest()
        return key.decode("utf-8", "backslashreplace")

    # -- big keys -------------------------------------------------------------------------
    def note_requests(self, requests: list[list[bytes]]) -> None:
        """Requests of one client read that may hold a big one: count the big ones."""
        for args in requests:
            size = sum(map(len, args))
            if size >= self.big_bytes:
                spec = lookup(args)
                label = spec.label if spec is not None else "unknown"
                key = args[spec.first_key] if spec is not None and spec.first_key else None
                self.note_big(key, size, label, "request")

    def note_reply(self, slot: Slot, size: int) -> None:
        label = slot.stats.label if slot.stats is not None else "other"
        self.note_big(getattr(slot, "key", None), size, label, "reply")

    def note_big(self, key: bytes | None, size: int, command: str, direction: str) -> None:
        ident = (command, direction)
        self.stats.bigkeys[ident] = self.stats.bigkeys.get(ident, 0) + 1
        if key is not None:
            self._largest.add(BigItem(key, size, command, direction))

    def big_report(self) -> list[dict[str, Any]]:
        return [
            {
                "key": self.show_key(item.key),
                "bytes": item.size,
                "command": item.command,
                "direction": item.direction,
            }
            for item in self._largest.largest()
        ]
