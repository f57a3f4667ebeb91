"""The cache defences, wired for the request path: one object per server, rebuilt on a reload
that changes their config (the writes in flight, WriteTracker, carry over).

What the request path asks of it: `defended(spec)` (a command the client's fast path must leave
to dispatch: cached reads and every write while the cache or coalescing is on, TTL-setting
commands while jitter is on), `new_slot` (a write's slot tracks its keys until its reply),
`jittered` (TTL jitter), and the cache's `read`/`mget` (net/hotcache.py). The hot-key sampling
countdown and the big-key threshold are read by the client (net/client.py, net/replies.py).
"""

from __future__ import annotations

import random
from time import perf_counter
from typing import Final, Protocol

from proxy.codec.resp import encode_request
from proxy.commands.spec import CommandSpec, Kind
from proxy.config.defences import DefencesConfig
from proxy.defences.jitter import JITTERED, jitter_args
from proxy.defences.patterns import KeyPatterns
from proxy.net.dualwrite import send_planned
from proxy.net.fence import MigrationState
from proxy.net.hotcache import READS, HotCache, WriteTracker
from proxy.net.hotkeys import KeyWatch
from proxy.net.metrics import CommandStats, DefenceStats
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.plan import mutates
from proxy.routing.txplan import Queued


class Defences:
    def __init__(self, config: DefencesConfig, stats: DefenceStats | None = None) -> None:
        self.stats = stats if stats is not None else DefenceStats()
        self.tracker = WriteTracker()
        self.config = config
        self._apply(config)

    def configure(self, config: DefencesConfig) -> bool:
        """A reloaded config: rebuild what changed (hot-key counts start over). True if any."""
        if config == self.config:
            return False
        self.config = config
        self._apply(config)
        return True

    def _apply(self, config: DefencesConfig) -> None:
        self.watch = KeyWatch(config, self.stats)
        cache_on = config.hotcache.enabled or config.coalesce.enabled
        self.cache: HotCache | None = None
        if cache_on:
            self.cache = HotCache(config, self.watch, self.stats)
            self.cache.tracker = self.tracker
        self.tracker.cache = self.cache
        rules = config.ttl_jitter
        self._jitter = [(KeyPatterns([r.pattern]), r.percent) for r in rules]
        self.jitters = bool(rules)
        self.active = self.cache is not None or self.jitters  # anything for dispatch to do

    def defended(self, spec: CommandSpec) -> bool:
        if self.cache is not None and (spec.name in READS or mutates(spec)):
            return True
        return self.jitters and spec.name in JITTERED

    def new_slot(
        self,
        owner: ReplyOwner,
        stats: CommandStats | None,
        spec: CommandSpec,
        args: list[bytes],
        now: float = 0.0,
    ) -> Slot:
        """The slot for a request: a write's tracks its keys while the cache is on."""
        now = now or perf_counter()
        if self.cache is None or not mutates(spec):
            return Slot(owner, stats, now)
        if spec.kind is _SINGLE:
            keys: tuple[bytes, ...] = (args[spec.first_key],)
        else:
            keys = tuple(args[p] for p in spec.key_positions(args))
        return self._tracked(owner, stats, now, keys or None)

    def new_block_slot(
        self, owner: ReplyOwner, stats: CommandStats | None, queued: list[Queued]
    ) -> Slot:
        """EXEC's slot: while the cache is on and the block writes, every key of the block
        counts as written (reads too, conservatively); a keyless write, every key."""
        if self.cache is None or not any(mutates(spec) for spec, _ in queued):
            return Slot(owner, stats, perf_counter())
        keys: list[bytes] = []
        for spec, args in queued:
            found = [args[p] for p in spec.key_positions(args)]
            if not found and mutates(spec):
                return self._tracked(owner, stats, perf_counter(), None)
            keys.extend(found)
        return self._tracked(owner, stats, perf_counter(), tuple(keys))

    def _tracked(
        self,
        owner: ReplyOwner,
        stats: CommandStats | None,
        now: float,
        keys: tuple[bytes, ...] | None,
    ) -> Slot:
        """A write's slot: its keys (None: every key) count as written until it is answered."""
        slot = Slot(owner, stats, now)
        self.tracker.begin(keys, slot)
        return slot

    def jittered(self, spec: CommandSpec, args: list[bytes]) -> list[bytes]:
        if spec.name not in JITTERED or len(args) < 2:
            return args
        key = args[1]
        for matches, percent in self._jitter:
            if matches(key):
                out = jitter_args(spec.name, args, percent, random.random())
                if out is None:
                    return args
                self.stats.jittered += 1
                return out
        return args

    def big_counts(self) -> list[dict[str, object]]:
        return [
            {"command": command, "direction": direction, "count": count}
            for (command, direction), count in sorted(self.stats.bigkeys.items())
        ]

    def on_phase_step(self) -> None:
        """A migration phase step: reads may now come from another pool; forget them all."""
        if self.cache is not None:
            self.cache.clear()


_SINGLE: Final = Kind.SINGLE  # Enum attribute access is slow on 3.11 (benchmarks/README.md)


class DefendedHost(Protocol):
    routes: RouteTable
    migration: MigrationState
    defences: Defences


def send_defended(
    host: DefendedHost,
    spec: CommandSpec,
    args: list[bytes],
    slot: Slot,
    proto: int,
    client_id: int,
    raw: bytes = b"",
) -> bytes | None:
    """send_planned, with the defences on: TTL jitter, then the cache and coalescing for reads
    of hot keys (the read may be answered, or join a flight, and nothing is sent). `raw`: the
    request as the client sent it, when canonical (client's fast path)."""
    defences = host.defences
    if defences.jitters:
        jittered = defences.jittered(spec, args)
        if jittered is not args:
            args, raw = jittered, b""
    cache = defences.cache
    target = slot
    if cache is not None:
        if spec.name in READS:
            found = cache.read(spec.name, args, slot, proto)
            if found is None:
                return None
            target = found
        elif spec.name == "mget":
            target = cache.mget(args, slot, proto)
            if slot.reply is not None:
                return None
    routes = host.routes
    if routes.fast and spec.kind is _SINGLE:  # one ring, one backend: no plan needed
        backend = routes.route_backends[routes.node_for(args[spec.first_key])]
        backend.send(proto, client_id, raw or encode_request(args), target)
        problem = None
    else:
        problem = send_planned(spec, args, target, routes, host.migration, proto, client_id)
    if target is not slot and cache is not None:
        if problem is not None:
            cache.abandon(target)
        else:
            cache.sent(target)
    return problem
