"""The hot-key cache and request coalescing, and what keeps them consistent: writes in flight.

Reads of hot keys (net/hotkeys.py) that match `hotcache.patterns` are answered from the cache
for at most `hotcache.ttl_ms` (GET, HGET, HGETALL, nil replies too; MGET when every part is
cached; errors never). With `coalesce`, a read of a hot key joins an identical read already in
flight (a Flight) instead of sending its own.

The invariant: a client always reads its own writes. Every write through this proxy has its reply
slot tracked (net/defence.py): from dispatch until that slot is answered its keys count as
written (WriteTracker), and when it starts their entries and flights are tainted. A read of a key
with a write in flight neither uses nor fills the cache and joins nothing; a flight or an MGET
fill tainted while in flight is not cached and is not joined. So a read only shares, or is
answered by, a backend read sent after every write to that key this proxy had sent had been
answered: whoever wrote the key before reading it sees its write. A write whose keys are not
known (FLUSHDB, FLUSHALL) taints everything.
"""

from __future__ import annotations

import time

from proxy.codec.resp import encode_array_raw, is_error, split_aggregate
from proxy.config.defences import DefencesConfig
from proxy.defences.patterns import KeyPatterns
from proxy.defences.store import ByteLRU, CacheKey
from proxy.net.hotkeys import KeyWatch
from proxy.net.metrics import DefenceStats
from proxy.net.slot import ReplyOwner, Slot

READS = frozenset({"get", "hget", "hgetall"})  # single-key reads cached and coalesced


class _Watched(ReplyOwner):
    """A read in flight whose reply may fill the cache: valid until a write taints its key."""

    __slots__ = ("cache", "keys", "slot", "valid")

    def __init__(self, cache: HotCache, keys: list[bytes], start: float) -> None:
        super().__init__()
        self.cache = cache
        self.keys = keys
        self.valid = True
        self.slot = Slot(self, None, start)  # the one sent to the backend
        for key in keys:
            cache.watching.setdefault(key, []).append(self)

    def unwatch(self) -> None:
        for key in self.keys:
            watchers = self.cache.watching.get(key)
            if watchers is not None and self in watchers:
                watchers.remove(self)
                if not watchers:
                    del self.cache.watching[key]

    def taint(self) -> None:
        self.valid = False

    def landed(self) -> bytes | None:
        """The reply, once it is in (no longer watched from then on)."""
        self.dirty = False
        reply = self.slot.reply
        if reply is None:
            return None
        self.unwatch()
        return bytes(reply)


def _pass_on(slot: Slot, reply: bytes, now: bool) -> None:
    """Answer a client's slot: `now` while still in dispatch (the client flushes after)."""
    if now:
        slot.reply = reply
    else:
        slot.answer(reply)


class Flight(_Watched):
    """One backend read shared by every client slot waiting for it (`waiters`)."""

    __slots__ = ("ck", "fill", "waiters")

    def __init__(self, cache: HotCache, ck: CacheKey, fill: bool, first: Slot) -> None:
        super().__init__(cache, [ck[2]], first.start)
        self.ck = ck
        self.fill = fill
        self.waiters = [first]

    def taint(self) -> None:
        self.valid = False
        if self.cache.flights.get(self.ck) is self:
            del self.cache.flights[self.ck]

    def flush(self, now: bool = False) -> None:
        reply = self.landed()
        if reply is None:
            return
        if self.cache.flights.get(self.ck) is self:
            del self.cache.flights[self.ck]
        if self.valid and self.fill and not is_error(reply):
            self.cache.put(self.ck, reply)
        for waiter in self.waiters:
            _pass_on(waiter, reply, now)


class MgetFill(_Watched):
    """An MGET sent whole: its reply goes to the client; its watched parts fill the cache."""

    __slots__ = ("all_keys", "parent", "proto")

    def __init__(
        self, cache: HotCache, parent: Slot, all_keys: list[bytes], keys: list[bytes], proto: int
    ) -> None:
        super().__init__(cache, keys, parent.start)
        self.parent = parent
        self.all_keys = all_keys
        self.proto = proto

    def flush(self, now: bool = False) -> None:
        reply = self.landed()
        if reply is None:
            return
        parts = split_aggregate(reply) if self.valid else None
        if parts is not None and len(parts) == len(self.all_keys):
            wanted = set(self.keys)
            for key, part in zip(self.all_keys, parts, strict=True):
                if key in wanted:
                    self.cache.put(("mget", self.proto, key, b""), part)
        _pass_on(self.parent, reply, now)


class WriteTracker:
    """Writes through this proxy in flight, by key: a key is busy while the reply slot of any
    write naming it is unanswered. Read when asked (busy), so a reply counts however it is set:
    by a backend read, a backend down, a refusal. Outlives reloads."""

    def __init__(self) -> None:
        self.pending: dict[bytes, list[Slot]] = {}
        self.unknown: list[Slot] = []  # writes in flight whose keys are not known
        self.cache: HotCache | None = None
        self._sweep_at = _SWEEP_AT

    def busy(self, key: bytes) -> bool:
        if self.unknown and _unanswered(self.unknown):
            return True
        slots = self.pending.get(key)
        if slots is None:
            return False
        if _unanswered(slots):
            return True
        del self.pending[key]
        return False

    def begin(self, keys: tuple[bytes, ...] | None, slot: Slot) -> None:
        """A write's `slot` was made: its keys (None: every key) are busy until it is answered;
        their cached replies and the reads in flight for them are tainted now."""
        if keys is None:
            self.unknown.append(slot)
        else:
            pending = self.pending
            for key in keys:
                pending.setdefault(key, []).append(slot)
            if len(pending) > self._sweep_at:
                self._sweep()
        if self.cache is not None:
            self.cache.taint(keys)

    def _sweep(self) -> None:
        """Forget the keys whose writes were all answered (nobody read them since)."""
        pending = self.pending
        for key in [k for k, slots in pending.items() if not _unanswered(slots)]:
            del pending[key]
        self._sweep_at = max(_SWEEP_AT, 2 * len(pending))


_SWEEP_AT = 4096  # keys tracked before answered writes are swept


def _unanswered(slots: list[Slot]) -> bool:
    """Drop the answered slots of `slots` (in place); any left?"""
    if all(s.reply is None for s in slots):
        return bool(slots)
    slots[:] = [s for s in slots if s.reply is None]
    return bool(slots)


class HotCache:
    def __init__(self, config: DefencesConfig, watch: KeyWatch, stats: DefenceStats) -> None:
        cfg = config.hotcache
        self.store = ByteLRU(cfg.max_bytes, cfg.ttl_ms / 1000) if cfg.enabled else None
        self.matches = KeyPatterns(cfg.patterns)
        self.coalesce = config.coalesce.enabled
        self.hot = watch
        self.stats = stats
        self.tracker: WriteTracker = WriteTracker()  # replaced by Defences with its own
        self.watching: dict[bytes, list[_Watched]] = {}
        self.flights: dict[CacheKey, Flight] = {}

    # -- reads ----------------------------------------------------------------------------
    def read(self, name: str, args: list[bytes], slot: Slot, proto: int) -> Slot | None:
        """GET HGET HGETALL: None when answered (from the cache) or joined to a flight; else
        the slot to send the read with: the client's own, or a new flight's."""
        key = args[1]
        if key not in self.hot.hot or self.tracker.busy(key):
            return slot
        ck = (name, proto, key, args[2] if name == "hget" else b"")
        store = self.store
        fill = store is not None and self.matches(key)
        if fill:
            assert store is not None
            reply = store.get(ck, time.monotonic())
            if reply is not None:
                self.stats.cache_hits += 1
                slot.reply = reply
                return None
            self.stats.cache_misses += 1
        elif not self.coalesce:
            return slot
        if self.coalesce:
            flight = self.flights.get(ck)
            if flight is not None:
                flight.waiters.append(slot)
                self.stats.coalesced += 1
                return None
        flight = Flight(self, ck, fill, slot)
        if self.coalesce:
            self.flights[ck] = flight
        return flight.slot

    def mget(self, args: list[bytes], slot: Slot, proto: int) -> Slot:
        """MGET: answered when every part is cached, else sent whole (the slot to send it
        with), its hot and matching parts refilled from the reply."""
        store = self.store
        if store is None:
            return slot
        keys = args[1:]
        busy = self.tracker.busy
        hot = self.hot.hot
        wanted = list(
            dict.fromkeys(k for k in keys if k in hot and not busy(k) and self.matches(k))
        )
        if not wanted:
            return slot
        now = time.monotonic()
        parts = [store.get(("mget", proto, k, b""), now) for k in keys]
        found = [p for p in parts if p is not None]
        if len(found) == len(keys):
            self.stats.cache_hits += len(keys)
            slot.reply = encode_array_raw(found)
            return slot
        self.stats.cache_misses += len(wanted)
        return MgetFill(self, slot, keys, wanted, proto).slot

    def sent(self, slot: Slot) -> None:
        """After the send: a backend down answers at once, without a flush; pass it on."""
        owner = slot.owner
        if slot.reply is not None and isinstance(owner, Flight | MgetFill):
            owner.flush(now=True)

    def abandon(self, slot: Slot) -> None:
        """The send was refused before it went out: forget its flight."""
        owner = slot.owner
        if isinstance(owner, _Watched):
            owner.unwatch()
        if isinstance(owner, Flight):
            owner.taint()

    def put(self, ck: CacheKey, reply: bytes) -> None:
        store = self.store
        if store is not None and (ck[0] == "mget" or self.matches(ck[2])):
            before = store.evictions
            store.put(ck, reply, time.monotonic())
            self.stats.cache_evictions += store.evictions - before
            self.stats.cache_bytes = store.bytes
            self.stats.cache_entries = len(store)

    # -- writes ---------------------------------------------------------------------------
    def taint(self, keys: tuple[bytes, ...] | None) -> None:
        """Keys written (None: any key): drop their entries; their reads in flight may
        neither fill the cache nor be joined."""
        store = self.store
        if keys is None:
            self.clear()
            return
        watching = self.watching
        dropped = False
        for key in keys:
            if store is not None and store.invalidate(key):
                dropped = True
            if key in watching:
                for watched in watching.pop(key):
                    watched.taint()
        if dropped and store is not None:
            self.stats.cache_bytes = store.bytes
            self.stats.cache_entries = len(store)

    def clear(self) -> None:
        """Everything: a write of unknown keys, or a migration phase step."""
        if self.store is not None:
            self.store.clear()
        for watchers in self.watching.values():
            for watched in watchers:
                watched.taint()
        self.watching.clear()
        self.flights.clear()
        self.stats.cache_bytes = 0
        self.stats.cache_entries = 0
