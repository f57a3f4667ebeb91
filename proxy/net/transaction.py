"""MULTI/EXEC/DISCARD, WATCH/UNWATCH: a client's transaction, queued by the proxy, run as a block.

After MULTI the proxy answers +QUEUED and keeps the commands (queue-time errors as Redis's make
EXEC answer EXECABORT). At EXEC every key must map to one backend (routing/txplan.py); then
MULTI, the commands and EXEC go out as ONE payload on one connection, so no other client's bytes
come between them and the block is atomic on its backend; EXEC's reply is the client's as Redis
sent it. WATCH pins the client to its keys' backend on a dedicated connection (net/watch.py)
until EXEC, DISCARD, UNWATCH, RESET or disconnect: while pinned, its requests go on it, in order.
"""

from __future__ import annotations

from typing import Protocol

from proxy import errors
from proxy.codec.resp import OK, encode_request, encode_simple, is_error
from proxy.commands.checks import RESERVED_PREFIX, db_argument_refusal, refusal_before_routing
from proxy.commands.local import run_local
from proxy.commands.session import ServerView, Session, db_of
from proxy.commands.spec import CommandSpec, Kind, arity_error, lookup, unknown_error
from proxy.net.defence import Defences
from proxy.net.dualwrite import defer_if_fenced, send_secondary_block
from proxy.net.fence import Deferred, MigrationState
from proxy.net.metrics import CommandStats
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.net.watch import Pin, send_pinned, watch
from proxy.routing.txplan import Queued, TxPlan, plan_transaction

QUEUED = encode_simple("QUEUED")
_PUBLISH = frozenset({"publish", "spublish"})  # queued: placed by their channel (txplan)
_IN_BLOCK = frozenset({"ping", "echo", "time", "unwatch"})  # keyless, run by the backend
_NOW = frozenset({"quit", "reset"})  # run at once even inside MULTI, as Redis does
_EXEC = lookup([b"EXEC"])


class TxHost(ServerView, Protocol):
    routes: RouteTable
    migration: MigrationState
    defences: Defences


class TxClient(Protocol):
    """What a transaction needs of its client connection (net/client.py)."""

    session: Session
    client_id: int
    tx: Transaction | None

    @property
    def host(self) -> TxHost: ...

    @property
    def owner(self) -> ReplyOwner: ...

    def append(self, slot: Slot) -> None: ...

    def stats_for(self, spec: CommandSpec) -> CommandStats: ...

    def reject(self, reply: bytes, label: str) -> None: ...


class Transaction:
    """One client's transaction state: the commands queued since MULTI, and its WATCH pin."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queued: list[Queued] | None = None  # None: not inside MULTI
        self.failed = False  # a queue-time error: EXEC answers EXECABORT
        self.pin: Pin | None = None  # WATCHing: the watched backend's dedicated connection
        self.draining: Pin | None = None  # released, still owed replies: its backend's order
        self.lost: bytes | None = None  # the WATCH connection failed: EXEC answers this

    def sync(self) -> None:
        """The client's requests come here (never the fast path) while this has anything."""
        draining = self.draining
        if draining is not None and draining.done():
            self.draining = None
        busy = self.queued is not None or self.pin is not None or self.draining is not None
        self.session.set_in_tx(busy)

    def unpin(self) -> None:
        """End the WATCH: the pin's connection closes once its owed replies are in."""
        pin, self.pin = self.pin, None
        if pin is not None:
            pin.finish()
            if not pin.done():
                self.draining = pin
        self.sync()

    def on_pin_lost(self, pin: Pin) -> None:
        """The WATCH connection failed: the watch is gone, so EXEC must not run unguarded."""
        if self.pin is pin:
            self.pin = None
            self.lost = pin.lost_reply
        if self.draining is pin:
            self.draining = None
        self.sync()

    def reset(self) -> None:
        self.queued = None
        self.failed = False
        self.lost = None
        self.unpin()

    def close(self) -> None:
        """The client is gone: its dedicated connections close now."""
        self.queued = None
        for pin in (self.pin, self.draining):
            if pin is not None:
                pin.close()
        self.pin = self.draining = None

    def conn_pin(self, addr: str) -> Pin | None:
        """The pin a request for `addr` must go on to keep the client's order, if any."""
        for pin in (self.pin, self.draining):
            if pin is not None and pin.addr == addr and not pin.done():
                return pin
        return None


def transaction_of(client: TxClient) -> Transaction:
    tx = client.tx
    if tx is None:
        tx = client.tx = Transaction(client.session)
    return tx


def answer(client: TxClient, reply: bytes) -> None:
    slot = Slot(client.owner, None, 0.0)
    slot.reply = reply
    client.append(slot)


# -- the TRANSACTION kind's handler (dispatch's table), outside MULTI --------------------------
def start(client: TxClient, spec: CommandSpec, args: list[bytes], slot: Slot) -> bytes | None:
    """MULTI, EXEC, DISCARD, WATCH, UNWATCH of a client in no transaction (or only WATCHing,
    via on_request)."""
    name = spec.name
    tx = transaction_of(client)
    if name == "multi":
        tx.queued = []
        tx.failed = False
        tx.sync()
        slot.reply = OK
    elif name == "exec":
        return errors.exec_without_multi()
    elif name == "discard":
        return errors.discard_without_multi()
    elif name == "watch":
        return watch(client, tx, args, slot)
    else:  # unwatch
        slot.reply = OK
        tx.lost = None
        tx.unpin()
    return None


# -- every request of a client in a transaction (dispatch calls this first) ------------------
def on_request(client: TxClient, spec: CommandSpec | None, args: list[bytes]) -> bool:
    """Handle a request of a client inside MULTI or pinned; False: dispatch handles it."""
    tx = transaction_of(client)
    tx.sync()
    if spec is not None and spec.name in _NOW:
        if spec.name == "reset":
            tx.reset()
        return False
    if spec is not None and _user_refused(client, tx, spec, args):
        return True
    if tx.queued is None:
        return send_pinned(client, tx, spec, args)
    if spec is None:
        client.reject(unknown_error(args), "unknown")
        tx.failed = True
    elif spec.name == "exec":
        run_exec(client, tx, spec)
    elif spec.name == "discard":
        tx.reset()
        answer(client, OK)
    elif spec.name == "multi":
        client.reject(errors.nested_multi(), spec.label)
    elif spec.name == "watch":
        client.reject(errors.watch_in_multi(), spec.label)
    else:
        _queue(client, tx, spec, args)
    return True


def _user_refused(client: TxClient, tx: Transaction, spec: CommandSpec, args: list[bytes]) -> bool:
    """An ACL user's NOPERM (after the arity check, as Redis); inside MULTI it fails EXEC."""
    user = client.session.user
    if user.everything or not spec.arity_ok(len(args)):
        return False
    problem = user.refusal(spec, args)
    if problem is None:
        return False
    client.reject(problem, spec.label)
    if tx.queued is not None:
        tx.failed = True
    return True


def select_in_transaction(
    tx: Transaction, spec: CommandSpec, args: list[bytes], view: ServerView
) -> bytes:
    """SELECT of a client that WATCHes (refused: the watched keys stay in their database) or
    whose released WATCH connection still drains (kept for the old database only). (Inside
    MULTI, SELECT is refused at queue time: queue_refusal.)"""
    if tx.pin is not None:
        return errors.select_while_watching()
    session = tx.session
    before = session.db
    reply = run_local(spec, args, session, view)
    if session.db != before and tx.draining is not None:
        tx.draining = None  # it closes once answered; new requests go to the new db's lane
        tx.sync()
    return reply


def _queue(client: TxClient, tx: Transaction, spec: CommandSpec, args: list[bytes]) -> None:
    problem = queue_refusal(spec, args) or db_argument_refusal(spec, args, client.host.databases)
    if problem is not None:
        client.reject(problem, spec.label)
        tx.failed = True
        return
    assert tx.queued is not None
    defences = client.host.defences
    if defences.jitters:
        args = defences.jittered(spec, args)
    tx.queued.append((spec, args))
    answer(client, QUEUED)


def queue_refusal(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """Why `args` cannot be queued in a transaction (the queue-time error), or None."""
    if not spec.arity_ok(len(args)) or (
        spec.kind is Kind.MULTI and (len(args) - 1) % spec.key_step
    ):
        return arity_error(spec)
    kind = spec.kind
    if "no_multi" in spec.flags:  # SAVE SHUTDOWN ...: Redis's own refusal comes first
        return errors.not_allowed_in_multi()
    if kind is Kind.DENIED:
        return errors.denied(spec.name)
    if kind in (Kind.LOCAL, Kind.TRANSACTION):
        return None if spec.name in _IN_BLOCK else errors.not_in_transaction(spec.name)
    if kind is Kind.PUBSUB and spec.name in _PUBLISH:  # runs where its channel hashes
        return None
    if kind in (Kind.FANOUT, Kind.PUBSUB):  # every backend, or a subscriber's connection
        return errors.not_in_transaction(spec.name)
    if kind is Kind.BLOCKING:  # inside MULTI, Redis runs them without blocking
        keys = (args[p] for p in spec.key_positions(args))
        reserved = any(k.startswith(RESERVED_PREFIX) for k in keys)
        return errors.reserved_key(spec.name) if reserved else None
    return refusal_before_routing(spec, args)


# -- EXEC: plan the block, and send it (or defer it behind the migration fence) --------------
def run_exec(client: TxClient, tx: Transaction, spec: CommandSpec) -> None:
    queued, failed, pin, lost = tx.queued or [], tx.failed, tx.pin, tx.lost
    tx.queued = None
    tx.failed = False
    tx.lost = None
    slot = client.host.defences.new_block_slot(client.owner, client.stats_for(spec), queued)
    client.append(slot)
    if failed or lost is not None:
        slot.reply = lost or errors.execabort()
        slot.stats = None
        tx.unpin()
        return
    state = client.host.migration
    block = Block(queued, slot, client.session.lane, client.client_id, tx, state)
    routes = client.host.routes
    if pin is not None and _watch_broken(client, pin, block, routes):
        slot.reply = b"_\r\n" if client.session.proto == 3 else b"*-1\r\n"
        slot.stats = None
        tx.unpin()
        return
    if pin is None and not routes.fast and _EXEC is not None:
        item = Deferred(_EXEC, [b"EXEC"], slot, block.lane, block)
        if defer_if_fenced(state, client.client_id, item, block.plan_for(routes).keys):
            tx.sync()
            return
    block.send(routes, now=True)
    tx.unpin()  # EXEC unwatches, as in Redis; the pin drains after the block's reply


def _watch_broken(client: TxClient, pin: Pin, block: Block, routes: RouteTable) -> bool:
    """A WATCH-guarded EXEC answers nil (nothing runs, as when a watched key changed) if the
    watched keys moved since WATCH (copied by the backfill, or read elsewhere since a reload),
    or, during a migration, the backfill is copying a key of the block now or holds an earlier
    request of the client: it never runs beside a copy."""
    state = client.host.migration
    if pin.moved:
        return True
    if routes.fast:
        return False
    if state.waiting_for(client.client_id) is not None:
        return True
    keys = block.plan_for(routes).keys
    return bool(keys) and bool(state.held) and state.held_key(keys) is not None


class Block(ReplyOwner):
    """One transaction's block: MULTI, the queued commands, EXEC. MULTI's +OK and each +QUEUED
    are the proxy's to check; EXEC's reply is the client's (MULTI's error if it failed)."""

    def __init__(
        self,
        queued: list[Queued],
        slot: Slot,
        lane: int,
        client_id: int,
        tx: Transaction,
        state: MigrationState,
    ) -> None:
        super().__init__()
        self.queued = queued
        self.slot = slot
        self.lane = lane  # the client's RESP version and database (commands/local.lane_for)
        self.client_id = client_id
        self.tx = tx
        self.state = state
        self.pin = tx.pin
        self.slots = [Slot(self, None, slot.start) for _ in range(len(queued) + 2)]
        self._plan: TxPlan | None = None
        self._routes: RouteTable | None = None
        self._after: TxPlan | None = None  # a WATCHed block's secondary write, sent if it ran

    @property
    def keys(self) -> tuple[bytes, ...]:  # fence.DeferredBlock
        return self._plan.keys if self._plan is not None else ()

    def plan_for(self, routes: RouteTable) -> TxPlan:
        if self._plan is None or self._routes is not routes:
            pinned = self.pin.addr if self.pin is not None else None
            self._plan = plan_transaction(self.queued, routes, pinned, self.client_id)
            self._routes = routes
        return self._plan

    def send(self, routes: RouteTable, now: bool = False) -> None:
        """Send the block with `routes` (now: from dispatch, else from the fence's drain)."""
        plan = self.plan_for(routes)
        if plan.error is not None:
            self._finish(plan.error, now)
            return
        requests = [[b"MULTI"], *(args for _, args in self.queued), [b"EXEC"]]
        payload = b"".join(encode_request(args) for args in requests)
        pin = self.pin or self.tx.conn_pin(plan.addr)
        backend = routes.backends[plan.addr]
        if pin is not None:
            pin.send_block(payload, self.slots)
        else:
            conn = backend.connection(self.lane, self.client_id if routes.fast else 0)
            for i, child in enumerate(self.slots):
                if conn is None:
                    child.reply = backend.down_reply
                else:  # the whole block in one payload: nothing can come between
                    conn.send(payload if i == 0 else b"", child)
        if plan.secondary is not None:
            self._routes = routes
            if self.pin is None:
                self._send_secondary(plan)
            else:  # guarded by WATCH: only once the EXEC ran (see _finish)
                self._after = plan
        if self.slots[-1].reply is not None:  # the backend is down: answered already
            self._finish(self._reply(), now)

    def _send_secondary(self, plan: TxPlan) -> None:
        assert plan.secondary is not None and self._routes is not None
        writes = [self.queued[i][1] for i in plan.writes]
        block = [[b"MULTI"], *writes, [b"EXEC"]]
        routes, db = self._routes, db_of(self.lane)
        send_secondary_block(plan.secondary, block, plan.keys, routes, self.state, db)

    def flush(self) -> None:
        self.dirty = False
        if self.slots[-1].reply is not None:
            self._finish(self._reply(), False)

    def _reply(self) -> bytes:
        first, last = self.slots[0].reply, self.slots[-1].reply
        if first is not None and is_error(first) and last is not None and not is_error(last):
            return first
        return last or b""

    def _finish(self, reply: bytes, now: bool) -> None:
        slot = self.slot
        if slot.reply is not None:
            return
        after, self._after = self._after, None
        if after is not None and reply[:1] == b"*" and reply[:3] != b"*-1":
            self._send_secondary(after)  # the EXEC ran (not nil: no watched key changed)
        if now:
            slot.reply = reply
        else:
            slot.answer(reply)
        self.tx.sync()  # a pin that drained closes
