"""Requests during a migration phase: reads from one pool, writes to both, a per-key fence.

The plan is the one planner's (routing.plan.plan); here it is sent: the primary answers the
client, the secondary write never fails it (errors are counted and queued for repair), a sample
of safe reads is compared on both pools.

All keyed traffic of a migration uses connection 0 of each backend (per lane: protocol and
database), and secondary writes always go on the RESP2 connection 0 of their database, the one
the backfill job's DUMP/RESTORE of that database use: one FIFO per backend and database keeps
the secondary's per-key order equal to the primary's.

A request touching a key the backfill is copying waits behind the fence (net/fence.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy import errors
from proxy.codec.resp import encode_request, is_error
from proxy.commands.session import db_of, lane_for
from proxy.commands.spec import CommandSpec
from proxy.net.fence import Deferred, MigrationState
from proxy.net.forwarder import send_plan
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.plan import DualPlan, Plan, mutates, plan

# Reads whose reply does not depend on the value's internal encoding: safe to compare raw.
SHADOW_SAFE = frozenset(
    {
        "get", "strlen", "getrange", "exists", "type", "hget", "hmget", "hlen", "hexists",
        "hstrlen", "lindex", "llen", "lrange", "scard", "sismember", "smismember", "zcard",
        "zscore", "zmscore", "zrange", "zrank", "zrevrank", "zcount", "xlen", "getbit",
        "bitcount", "pfcount",
    }
)  # fmt: skip


_SCRIPT_BODIES = frozenset({"eval", "evalsha", "script|load"})  # net/scripts.py
_SCRIPTS_COPIED = frozenset({"eval", "evalsha", "fcall"})


class _SecondarySink(ReplyOwner):
    """Owner of one request's secondary-write slots: reports errors, never fails the client."""

    __slots__ = ("db", "keys", "names", "slots", "state")

    def __init__(self, state: MigrationState, keys: tuple[bytes, ...], count: int, db: int) -> None:
        super().__init__()
        self.state = state
        self.keys = keys
        self.db = db
        self.slots = [Slot(self, None, 0.0) for _ in range(count)]
        self.names: list[str] = []

    def flush(self) -> None:
        self.dirty = False
        for slot, name in zip(self.slots, self.names, strict=True):
            reply = slot.reply
            if reply is not None and is_error(reply):
                slot.reply = b""  # report once
                self.state.on_secondary_error(name, self.keys, reply, self.db)


class _ShadowSink(ReplyOwner):
    """The same read sent to both pools; the raw replies are compared when both arrived."""

    __slots__ = ("key", "mine", "other", "state")

    def __init__(self, state: MigrationState, key: bytes) -> None:
        super().__init__()
        self.state = state
        self.key = key
        self.mine = Slot(self, None, 0.0)
        self.other = Slot(self, None, 0.0)

    def flush(self) -> None:
        self.dirty = False
        if self.mine.reply is None or self.other.reply is None:
            return
        self.state.on_shadow(self.key, self.mine.reply == self.other.reply)


def send_planned(
    spec: CommandSpec,
    args: list[bytes],
    slot: Slot,
    routes: RouteTable,
    state: MigrationState,
    lane: int,
    client_id: int,
) -> bytes | None:
    """Plan a request with the one planner and send it: one pool outside a migration, the
    dual plan in a migration phase. Returns the refusal to answer instead, if any."""
    dual = plan(spec, args, routes)
    if dual.primary.error is not None:
        return dual.primary.error
    if routes.fast:
        send_plan(dual.primary, routes, slot, lane, client_id)
        return None
    if spec.name in _SCRIPT_BODIES and routes.secondary_writes:
        if spec.name == "evalsha":
            if dual.secondary is not None and state.scripts.body(args[1]) is None:
                return errors.noscript()  # the client sends the body, then it is known
        else:
            state.scripts.remember(args[1] if spec.name == "eval" else args[2])
    send_migrating(dual, routes, state, Deferred(spec, args, slot, lane), client_id)
    if dual.secondary is not None and spec.name in _SCRIPTS_COPIED:
        # A script may write what a replay cannot repeat (XADD * picks an ID from the clock):
        # its keys are also copied over once it ran (the repair worker, behind the fence).
        state.queue_repair(dual.keys, db_of(lane))
    return None


def send_migrating(
    dual: DualPlan,
    routes: RouteTable,
    state: MigrationState,
    item: Deferred,
    client_id: int,
) -> None:
    """Send a planned request in a migration phase, or defer it behind the fence.

    Once a request of a client waits behind the fence, the client's later requests wait behind
    it (whatever their keys), so none overtakes it: `DEL k1 k2` then `SET k2 v` keep their order.
    """
    if defer_if_fenced(state, client_id, item, dual.keys):
        return
    _send(dual, routes, state, item.slot, item.lane)
    spec = item.spec
    if routes.shadow and not mutates(spec) and spec.name in SHADOW_SAFE and dual.keys:
        _shadow(item.args, dual, routes, state, item.lane)


def defer_if_fenced(
    state: MigrationState, client_id: int, item: Deferred, keys: tuple[bytes, ...]
) -> bool:
    """Defer `item` if the client already has requests waiting, or one of `keys` is behind
    the fence (True); else the caller sends it now (False)."""
    queue = state.waiting_for(client_id)
    if queue is not None:
        queue.append(item)
        return True
    if keys and state.held:
        key = state.held_key(keys)
        if key is not None:
            state.defer(client_id, item, key, _drainer(state, client_id))
            return True
    return False


def _drainer(state: MigrationState, client_id: int) -> Callable[[], None]:
    return lambda: _drain(state, client_id)


def _drain(state: MigrationState, client_id: int) -> None:
    """Send a client's deferred requests in order, with the route table in use NOW (a reload
    may have replaced the backends since they arrived), until one waits behind the fence."""
    queue = state.waiting_for(client_id)
    while queue:
        item = queue[0]
        routes = state.current()
        if item.block is not None:
            if _held_again(state, item.block.keys, client_id):
                return
            queue.popleft()
            item.block.send(routes)
            continue
        dual = plan(item.spec, item.args, routes)
        if dual.primary.error is None and dual.keys and state.held:
            key = state.held_key(dual.keys)
            if key is not None:
                state.held[key].append(_drainer(state, client_id))
                return
        queue.popleft()
        if dual.primary.error is not None:
            item.slot.answer(dual.primary.error)
            continue
        _send(dual, routes, state, item.slot, item.lane)
        if item.slot.reply is not None:  # answered at once (a backend down)
            item.slot.owner.touch()
    state.drop_waiting(client_id)


def _held_again(state: MigrationState, keys: tuple[bytes, ...], client_id: int) -> bool:
    key = state.held_key(keys) if keys and state.held else None
    if key is None:
        return False
    state.held[key].append(_drainer(state, client_id))
    return True


def _send(dual: DualPlan, routes: RouteTable, state: MigrationState, slot: Slot, lane: int) -> None:
    send_plan(dual.primary, routes, slot, lane, 0)
    if dual.secondary is not None:
        send_secondary(dual.secondary, dual.keys, routes, state, db_of(lane))


def send_secondary_block(
    addr: str,
    requests: list[list[bytes]],
    keys: tuple[bytes, ...],
    routes: RouteTable,
    state: MigrationState,
    db: int,
) -> None:
    """Requests written together (a transaction's MULTI ... EXEC) as the secondary write to
    `addr`: on its RESP2 connection 0 of `db`, in one burst; replies only checked, as
    send_secondary."""
    sink = _SecondarySink(state, keys, len(requests), db)
    backend = routes.backends[addr]
    sink.names.extend(backend.name for _ in requests)
    payload = b"".join(encode_request(state.scripts.as_eval(args)) for args in requests)
    conn = backend.connection(lane_for(2, db), 0)
    for i, child in enumerate(sink.slots):
        if conn is None:
            child.reply = backend.down_reply
        else:  # the whole block in the first write: no other request can come between
            conn.send(payload if i == 0 else b"", child)
    sink.flush()


def send_secondary(
    secondary: Plan, keys: tuple[bytes, ...], routes: RouteTable, state: MigrationState, db: int
) -> None:
    """The secondary write of a request in database `db`: on the RESP2 connection 0 of `db`."""
    secondary_lane = lane_for(2, db)
    sink = _SecondarySink(state, keys, len(secondary.fragments), db)
    for fragment, child in zip(secondary.fragments, sink.slots, strict=True):
        backend = routes.backends[fragment.addr]
        sink.names.append(backend.name)
        backend.send(secondary_lane, 0, encode_request(state.scripts.as_eval(fragment.args)), child)
    sink.flush()


def _shadow(
    args: list[bytes], dual: DualPlan, routes: RouteTable, state: MigrationState, lane: int
) -> None:
    if random.random() >= routes.shadow_ratio:
        return
    key = dual.keys[0]
    mine = dual.primary.fragments[0].addr
    other = routes.other.addr_for(key)
    if other == mine:
        return
    sink = _ShadowSink(state, key)
    payload = encode_request(args)
    routes.backends[mine].send(lane, 0, payload, sink.mine)
    routes.backends[other].send(lane, 0, payload, sink.other)
