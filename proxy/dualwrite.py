"""Requests during a migration phase: reads from one pool, writes to both, a per-key fence.

All keyed traffic of a migration uses connection 0 of each backend (per protocol), and secondary
writes always go on the RESP2 connection 0, the one the backfill job's DUMP/RESTORE use: one
FIFO per backend keeps the secondary's per-key order equal to the primary's.

A request touching a key the backfill is copying waits behind the fence (proxy/fence.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy.backend import Slot
from proxy.commands import CommandSpec
from proxy.fence import MigrationState
from proxy.forwarder import send_plan
from proxy.pool import Router
from proxy.resp import encode_request
from proxy.routing import DualPlan, Plan, mutates, plan_migrating

# Reads whose reply does not depend on the value's internal encoding: safe to compare raw.
SHADOW_SAFE = frozenset(
    {
        "get", "strlen", "getrange", "exists", "type", "hget", "hmget", "hlen", "hexists",
        "hstrlen", "lindex", "llen", "lrange", "scard", "sismember", "smismember", "zcard",
        "zscore", "zmscore", "zrange", "zrank", "zrevrank", "zcount", "xlen", "getbit",
        "bitcount", "pfcount",
    }
)  # fmt: skip


class _SecondarySink:
    """Owner of one request's secondary-write slots: reports errors, never fails the client."""

    __slots__ = ("dirty", "keys", "names", "slots", "state")

    def __init__(self, state: MigrationState, keys: tuple[bytes, ...], count: int) -> None:
        self.dirty = False
        self.state = state
        self.keys = keys
        self.slots = [Slot(self, None, 0.0) for _ in range(count)]
        self.names: list[str] = []

    def flush(self) -> None:
        self.dirty = False
        for slot, name in zip(self.slots, self.names, strict=True):
            reply = slot.reply
            if reply is not None and reply[:1] == b"-":
                slot.reply = b""  # report once
                self.state.on_secondary_error(name, self.keys, reply)


class _ShadowSink:
    """The same read sent to both pools; the raw replies are compared when both arrived."""

    __slots__ = ("dirty", "key", "mine", "other", "state")

    def __init__(self, state: MigrationState, key: bytes) -> None:
        self.dirty = False
        self.state = state
        self.key = key
        self.mine = Slot(self, None, 0.0)
        self.other = Slot(self, None, 0.0)

    def flush(self) -> None:
        self.dirty = False
        if self.mine.reply is None or self.other.reply is None:
            return
        self.state.on_shadow(self.key, self.mine.reply == self.other.reply)


def dispatch_migrating(
    spec: CommandSpec, args: list[bytes], router: Router, slot: Slot, proto: int
) -> bytes | None:
    """Route one request in a migration phase; return a refusal, or None when under way."""
    dual = plan_migrating(spec, args, router.read, router.other, router.secondary_writes)
    if dual.primary.error is not None:
        return dual.primary.error
    state = router.migration
    if dual.keys and state.held and state.defer(dual.keys, _resumer(dual, router, slot, proto)):
        return None
    _send(dual, router, slot, proto)
    if router.shadow and not mutates(spec) and spec.name in SHADOW_SAFE and dual.keys:
        _shadow(args, dual, router, proto)
    return None


def _resumer(dual: DualPlan, router: Router, slot: Slot, proto: int) -> Callable[[], None]:
    return lambda: _resume(dual, router, slot, proto)


def _resume(dual: DualPlan, router: Router, slot: Slot, proto: int) -> None:
    if router.migration.defer(dual.keys, _resumer(dual, router, slot, proto)):
        return
    _send(dual, router, slot, proto)
    if slot.reply is not None:  # answered at once (a backend down): let the client write it
        owner = slot.owner
        if not owner.dirty:
            owner.dirty = True
            owner.flush()


def _send(dual: DualPlan, router: Router, slot: Slot, proto: int) -> None:
    send_plan(dual.primary, router, slot, proto, 0)
    if dual.secondary is not None:
        _send_secondary(dual.secondary, dual.keys, router)


def _send_secondary(plan: Plan, keys: tuple[bytes, ...], router: Router) -> None:
    sink = _SecondarySink(router.migration, keys, len(plan.fragments))
    for fragment, child in zip(plan.fragments, sink.slots, strict=True):
        backend = router.backends[fragment.addr]
        sink.names.append(backend.name)
        backend.send(2, 0, encode_request(fragment.args), child)
    sink.flush()


def _shadow(args: list[bytes], dual: DualPlan, router: Router, proto: int) -> None:
    if random.random() >= router.shadow_ratio:
        return
    key = dual.keys[0]
    mine = dual.primary.fragments[0].addr
    other = router.other.addr_for(key)
    if other == mine:
        return
    sink = _ShadowSink(router.migration, key)
    payload = encode_request(args)
    router.backends[mine].send(proto, 0, payload, sink.mine)
    router.backends[other].send(proto, 0, payload, sink.other)
