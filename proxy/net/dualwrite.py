"""Requests during a migration phase: reads from one pool, writes to both, a per-key fence.

All keyed traffic of a migration uses connection 0 of each backend (per protocol), and secondary
writes always go on the RESP2 connection 0, the one the backfill job's DUMP/RESTORE use: one
FIFO per backend keeps the secondary's per-key order equal to the primary's.

A request touching a key the backfill is copying waits behind the fence (proxy/fence.py).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from proxy.codec.resp import encode_request
from proxy.commands.spec import CommandSpec
from proxy.net.connection import Slot
from proxy.net.fence import Deferred, MigrationState
from proxy.net.forwarder import send_plan
from proxy.net.pool import Router
from proxy.routing.plan import DualPlan, Plan, mutates, plan_migrating

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
    takes_views = False

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
    takes_views = False

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
    spec: CommandSpec, args: list[bytes], router: Router, slot: Slot, proto: int, client_id: int
) -> bytes | None:
    """Route one request in a migration phase; return a refusal, or None when under way.

    Once a request of a client waits behind the fence, the client's later requests wait behind
    it (whatever their keys), so none overtakes it: `DEL k1 k2` then `SET k2 v` keep their order.
    """
    state = router.migration
    queue = state.waiting.get(client_id)
    if queue is not None:
        queue.append(Deferred(spec, args, slot, proto))
        return None
    dual = plan_migrating(spec, args, router.read, router.other, router.secondary_writes)
    if dual.primary.error is not None:
        return dual.primary.error
    if dual.keys and state.held:
        key = state.held_key(dual.keys)
        if key is not None:
            state.waiting[client_id] = deque([Deferred(spec, args, slot, proto)])
            state.held[key].append(_drainer(state, client_id))
            return None
    _send(dual, router, slot, proto)
    if router.shadow and not mutates(spec) and spec.name in SHADOW_SAFE and dual.keys:
        _shadow(args, dual, router, proto)
    return None


def _drainer(state: MigrationState, client_id: int) -> Callable[[], None]:
    return lambda: _drain(state, client_id)


def _drain(state: MigrationState, client_id: int) -> None:
    """Send a client's deferred requests in order, with the router in use NOW (a reload may
    have replaced the backends since they arrived), until one waits behind the fence again."""
    queue = state.waiting.get(client_id)
    while queue:
        item = queue[0]
        router = state.router
        assert router is not None
        dual = plan_migrating(
            item.spec, item.args, router.read, router.other, router.secondary_writes
        )
        if dual.primary.error is None and dual.keys and state.held:
            key = state.held_key(dual.keys)
            if key is not None:
                state.held[key].append(_drainer(state, client_id))
                return
        queue.popleft()
        slot = item.slot
        if dual.primary.error is not None:
            slot.reply = dual.primary.error
        else:
            _send(dual, router, slot, item.proto)
        if slot.reply is not None:  # answered at once (an error, a backend down)
            owner = slot.owner
            if not owner.dirty:
                owner.dirty = True
                owner.flush()
    state.waiting.pop(client_id, None)


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
