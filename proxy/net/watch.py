"""WATCH: a client pinned to its watched keys' backend, on a connection of its own.

The backend itself detects a changed key (EXEC answers nil) as long as WATCH, MULTI and EXEC
reach it on one connection: the pin's dedicated connection (net/dedicated.py, Purpose.WATCH,
bounded by backend.max_watch_connections). While pinned, the client's requests for that
backend go on it, in order; requests for other backends go as usual, and so do fan-outs and
requests that span backends (FLUSHALL, DBSIZE, MGET ...) when nothing is owed on the pin (else
they get CROSSSLOT or a refusal: they could overtake a request on the pin). Unpinned (EXEC,
DISCARD, UNWATCH, RESET), the connection closes once its owed replies are in; until then the
client's requests for that backend still go on it, so none overtakes the EXEC.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

from proxy import errors
from proxy.codec.resp import encode_request
from proxy.commands.checks import RESERVED_PREFIX, db_argument_refusal, refusal_before_routing
from proxy.commands.spec import CommandSpec, Kind
from proxy.net.dedicated import DedicatedConnection, Purpose, open_dedicated
from proxy.net.dualwrite import send_secondary_block
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.plan import plan

if TYPE_CHECKING:
    from proxy.net.transaction import Transaction, TxClient


class Pin:
    """One dedicated connection to the backend at `addr`, for one client."""

    def __init__(self, addr: str, on_lost: Callable[[Pin], None]) -> None:
        self.addr = addr
        self.conn: DedicatedConnection | None = None
        self.finishing = False  # unpinned: close once nothing is owed
        self.closed = False
        self._on_lost = on_lost
        self.lost_reply = b""

    def done(self) -> bool:
        """Closed, or finishing with nothing owed (then closed now)."""
        conn = self.conn
        if not self.closed and self.finishing and (conn is None or not conn.pending):
            self.close()
        return self.closed

    def idle(self) -> bool:
        """Nothing owed on the pin's connection: a request sent elsewhere cannot overtake one."""
        conn = self.conn
        return conn is None or not conn.pending

    def finish(self) -> None:
        self.finishing = True
        self.done()

    def close(self) -> None:
        self.closed = True
        if self.conn is not None:
            self.conn.release()

    def on_failed(self) -> None:  # the dedicated connection failed (its pending are answered)
        if self.conn is not None:
            self.lost_reply = errors.backend_unavailable(
                self.conn.backend.name, self.conn.backend.addr, "watch connection lost"
            )
        if not self.closed:
            self.close()
            self._on_lost(self)

    def send(self, payload: bytes, slot: Slot) -> None:
        """A client's request on the pin; its reply goes to `slot` (then done() is checked)."""
        self.send_block(payload, [_Relay(self, slot).child])

    def send_block(self, payload: bytes, slots: list[Slot]) -> None:
        """`payload` holds one request per slot, written at once."""
        conn = self.conn
        if conn is None or conn.closed or self.closed:
            for slot in slots:
                slot.answer(self.lost_reply or errors.backend_unavailable("", self.addr, "closed"))
            return
        for i, slot in enumerate(slots):
            conn.send(payload if i == 0 else b"", slot)


class _Relay(ReplyOwner):
    """A reply of the pin's connection, relayed to the client's slot."""

    __slots__ = ("child", "parent", "pin")

    def __init__(self, pin: Pin, parent: Slot) -> None:
        super().__init__()
        self.pin = pin
        self.parent = parent
        self.child = Slot(self, None, 0.0)

    def flush(self) -> None:
        self.dirty = False
        if self.child.reply is not None and self.parent.reply is None:
            self.parent.answer(self.child.reply)
            if self.pin.finishing:
                self.pin.done()


def watch(client: TxClient, tx: Transaction, args: list[bytes], slot: Slot) -> bytes | None:
    """WATCH outside MULTI: pin the client to its keys' backend (opening the connection on the
    first WATCH) and send the WATCH there; or the refusal to answer."""
    keys = args[1:]
    if any(k.startswith(RESERVED_PREFIX) for k in keys):
        return errors.reserved_key("watch")
    routes = client.host.routes
    owners = {routes.read.addr_for(k) for k in keys}
    if tx.pin is not None:
        owners.add(tx.pin.addr)
    if len(owners) > 1:
        return errors.cross_backend("watch")
    (addr,) = owners
    pin = tx.pin or tx.conn_pin(addr)  # a pin still draining: watch on it again
    if pin is None:
        pin = Pin(addr, tx.on_pin_lost)
        limit = routes.topology.config.backend.max_watch_connections
        backend = routes.backends[addr]
        conn = open_dedicated(backend, client.session.lane, Purpose.WATCH, pin.on_failed, limit)
        if isinstance(conn, bytes):
            return conn
        pin.conn = conn
    pin.finishing = False
    if tx.draining is pin:
        tx.draining = None
    tx.pin = pin
    tx.lost = None
    pin.send(encode_request(args), slot)
    tx.sync()
    return None


def send_pinned(
    client: TxClient, tx: Transaction, spec: CommandSpec | None, args: list[bytes]
) -> bool:
    """A request of a client pinned (or whose pin drains), outside MULTI: keyed requests for the
    pin's backend go on it; False: dispatch handles the request as usual."""
    pin = tx.pin
    if spec is None or spec.kind in (Kind.LOCAL, Kind.DENIED, Kind.TRANSACTION):
        return False
    if pin is not None and spec.kind in (Kind.FANOUT, Kind.PUBSUB, Kind.BLOCKING):
        if spec.kind is Kind.FANOUT and pin.idle():
            return False  # nothing owed on the pin: a fan-out (FLUSHALL ...) cannot overtake it
        client.reject(errors.not_in_transaction(spec.name), spec.label)
        return True
    if spec.kind not in (Kind.SINGLE, Kind.MULTI, Kind.SAME_BACKEND):
        return False
    if not spec.arity_ok(len(args)) or (
        spec.kind is Kind.MULTI and (len(args) - 1) % spec.key_step
    ):
        return False  # dispatch answers the same refusal
    databases = client.host.databases
    if refusal_before_routing(spec, args) or db_argument_refusal(spec, args, databases):
        return False
    routes = client.host.routes
    dual = plan(spec, args, routes)
    if dual.primary.error is not None:
        return False
    fragments = dual.primary.fragments
    one = fragments[0].addr if len(fragments) == 1 else ""
    target = pin or tx.draining
    if target is None or one != target.addr:
        if pin is None or (one and one != pin.addr) or pin.idle():
            # Another backend's request, or nothing owed on the pin: as usual, in order.
            return False
        client.reject(errors.cross_backend(spec.name), spec.label)
        return True
    slot = Slot(client.owner, client.stats_for(spec), perf_counter())
    client.append(slot)
    target.send(encode_request(args), slot)
    if dual.secondary is not None:
        state = client.host.migration
        for fragment in dual.secondary.fragments:
            db = client.session.db
            send_secondary_block(fragment.addr, [fragment.args], dual.keys, routes, state, db)
    return True
