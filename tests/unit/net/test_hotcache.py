"""The hot-key cache's consistency rules, on fake reply owners (no backend, no clock games)."""

from __future__ import annotations

import pytest

from proxy.commands.spec import lookup
from proxy.config.defences import CoalesceConfig, DefencesConfig, HotCacheConfig
from proxy.net.defence import Defences
from proxy.net.hotcache import HotCache
from proxy.net.slot import ReplyOwner, Slot

pytestmark = pytest.mark.pure_only  # Owner subclasses ReplyOwner, a compiled class there

VALUE = b"$1\r\nv\r\n"


class Owner(ReplyOwner):
    def flush(self) -> None:
        self.dirty = False


def defences(cache: bool = True, coalesce: bool = True) -> tuple[Defences, HotCache]:
    config = DefencesConfig(
        hotcache=HotCacheConfig(enabled=cache, patterns=("*",)),
        coalesce=CoalesceConfig(coalesce),
    )
    d = Defences(config)
    d.watch.hot.update({b"k", b"j"})
    assert d.cache is not None
    return d, d.cache


def read(cache: HotCache, key: bytes = b"k") -> tuple[Slot, Slot | None]:
    slot = Slot(Owner(), None, 0.0)
    return slot, cache.read("get", [b"GET", key], slot, 2)


def write(d: Defences, *args: bytes) -> Slot:
    spec = lookup(list(args))
    assert spec is not None
    return d.new_slot(Owner(), None, spec, list(args))


def answer(sent: Slot | None, reply: bytes = VALUE) -> None:
    assert sent is not None
    sent.reply = reply
    sent.owner.flush()


def test_a_read_fills_the_cache_and_the_next_is_a_hit() -> None:
    d, cache = defences()
    slot, sent = read(cache)
    assert sent is not None and sent is not slot  # a flight's slot
    answer(sent)
    assert slot.reply == VALUE
    again, sent = read(cache)
    assert sent is None and again.reply == VALUE and d.stats.cache_hits == 1


def test_identical_reads_in_flight_share_one_request() -> None:
    d, cache = defences(cache=False)
    first, sent = read(cache)
    second, joined = read(cache)
    assert joined is None and d.stats.coalesced == 1
    answer(sent)
    assert first.reply == second.reply == VALUE


def test_a_write_begun_during_a_read_stops_its_fill_and_any_join() -> None:
    d, cache = defences()
    _, sent = read(cache)
    w = write(d, b"SET", b"k", b"new")
    own, direct = read(cache)
    assert direct is own  # a write in flight: straight to the backend, alone
    w.reply = b"+OK\r\n"
    late, fresh = read(cache)
    assert fresh is not None and fresh is not late  # a new flight, not the tainted one
    answer(sent, b"$3\r\nold\r\n")
    assert cache.store is not None and len(cache.store) == 0  # the old value is not kept
    answer(fresh)
    assert len(cache.store) == 1


def test_a_read_sent_while_a_write_was_in_flight_never_fills() -> None:
    d, cache = defences(coalesce=False)
    w = write(d, b"DEL", b"k", b"j")
    slot, sent = read(cache, b"j")
    assert sent is slot
    w.reply = b":1\r\n"
    _, sent = read(cache, b"j")
    answer(sent)
    hit, none = read(cache, b"j")
    assert none is None and hit.reply == VALUE


def test_keyless_writes_and_phase_steps_clear_everything() -> None:
    d, cache = defences()
    _, sent = read(cache)
    answer(sent)
    assert cache.store is not None and len(cache.store) == 1
    flush = write(d, b"FLUSHALL")
    assert len(cache.store) == 0
    _, sent = read(cache)
    assert sent is not None and sent.owner is not None
    flush.reply = b"+OK\r\n"
    _, sent = read(cache)
    answer(sent)
    d.on_phase_step()
    assert len(cache.store) == 0


def test_keys_outside_the_hot_set_or_the_patterns_pass_through() -> None:
    d = Defences(DefencesConfig(hotcache=HotCacheConfig(enabled=True, patterns=("user:*",))))
    assert d.cache is not None
    d.watch.hot.add(b"other")
    slot = Slot(Owner(), None, 0.0)
    assert d.cache.read("get", [b"GET", b"other"], slot, 2) is slot
    assert d.cache.read("get", [b"GET", b"user:cold"], slot, 2) is slot
