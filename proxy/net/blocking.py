"""Blocking commands (BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP, XREAD and
XREADGROUP with BLOCK), each on a backend connection of its client's own, never a shared one.

Order: the call is sent once every earlier request of its client is answered (so an LPUSH sent
before it has run), and the client's later requests wait until its reply is in (the client
holds them, as for a stream). A client that goes away releases the connection at once: the
backend forgets the blocked call with it. Connections that answered are kept idle, a few per
backend and lane (RESP version and database), for the next call. During a migration the call
runs on the read side; what it popped there is popped on the other side too (net/mirror.py).

A reload that moves the read side of a waiting call's keys (cut-read, a step back) ends its wait
on the old side with CLIENT UNBLOCK ... TIMEOUT (each blocking connection asks its CLIENT ID when
it opens), sent on the connection that side's writes take, so nothing written after the reload
can feed it; its keys are held behind the fence until its reply is in: what it popped is
mirrored before any later request for them runs; nothing popped: the call runs again on the new
side (its wait starts again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy import errors
from proxy.codec.resp import encode_request, is_error
from proxy.commands.session import db_of
from proxy.commands.spec import CommandSpec
from proxy.net.backend import Backend
from proxy.net.dedicated import DedicatedConnection, Purpose, open_dedicated
from proxy.net.fence import MigrationState
from proxy.net.mirror import Popped, mirror_pop, mirrorable
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.plan import plan_same_backend

IDLE_PER_BACKEND = 8  # idle blocking connections kept per backend and lane


class _Lease:
    """One blocking connection and the call using it now (None: idle in the cache)."""

    def __init__(self, backend: Backend, lane: int) -> None:
        self.backend = backend
        self.lane = lane
        self.call: BlockingCall | None = None
        self.conn: DedicatedConnection | None = None
        self.backend_id: bytes | None = None  # its CLIENT ID on the backend, once answered

    def on_failed(self) -> None:
        if self.call is not None:
            self.call.on_conn_failed()
        else:
            _forget_idle(self)


_IDLE: dict[tuple[Backend, int], list[_Lease]] = {}


def _take_idle(backend: Backend, lane: int) -> _Lease | None:
    idle = _IDLE.get((backend, lane))
    while idle:
        lease = idle.pop()
        if lease.conn is not None and not lease.conn.closed:
            return lease
    return None


def _keep_idle(lease: _Lease) -> None:
    conn = lease.conn
    assert conn is not None
    idle = _IDLE.setdefault((lease.backend, lease.lane), [])
    if lease.backend.closed or conn.closed or len(idle) >= IDLE_PER_BACKEND:
        conn.release()
        return
    lease.call = None
    idle.append(lease)


def _forget_idle(lease: _Lease) -> None:
    idle = _IDLE.get((lease.backend, lease.lane))
    if idle is not None and lease in idle:
        idle.remove(lease)


def close_idle(backend: Backend) -> None:
    """The backend is closed (removed, or the proxy stops): close its idle connections."""
    for key in [k for k in _IDLE if k[0] is backend]:
        for lease in _IDLE.pop(key):
            if lease.conn is not None:
                lease.conn.release()


def idle_count(backend: Backend, lane: int) -> int:
    return len(_IDLE.get((backend, lane), ()))


class HeldCall(Protocol):
    """A request its client's later requests wait for: a blocking call, or a change made on
    every backend (net/atomic.py). Sent once it is at the head of the client's queue."""

    slot: Slot
    on_done: Callable[[], None] | None

    def at_head(self) -> None: ...

    def cancel(self) -> None: ...

    def unblock(self, error: bool) -> bool: ...


class _ClientId(ReplyOwner):
    """The CLIENT ID reply of a new blocking connection (what CLIENT UNBLOCK names)."""

    def __init__(self, lease: _Lease) -> None:
        super().__init__()
        self.lease = lease
        self.slot = Slot(self, None, 0.0)

    def flush(self) -> None:
        self.dirty = False
        reply = self.slot.reply
        if reply is not None and reply[:1] == b":":
            self.lease.backend_id = reply[1:].strip()


class _Discard(ReplyOwner):
    """Owner of the CLIENT UNBLOCK reply: not needed (the call's own reply tells)."""

    def flush(self) -> None:
        self.dirty = False


_DISCARD = _Discard()
_NIL = frozenset({b"*-1\r\n", b"$-1\r\n", b"_\r\n"})


def _lease_for(backend: Backend, lane: int) -> _Lease | bytes:
    """An idle connection to `backend`, or a new one (asking its CLIENT ID first)."""
    lease = _take_idle(backend, lane)
    if lease is not None:
        return lease
    lease = _Lease(backend, lane)
    limit = backend.config.max_blocking_connections
    conn = open_dedicated(
        backend, lane, Purpose.BLOCKING, lease.on_failed, limit=limit, watch_stalls=False
    )
    if isinstance(conn, bytes):
        return conn
    lease.conn = conn
    conn.send(encode_request([b"CLIENT", b"ID"]), _ClientId(lease).slot)
    return lease


class BlockingCall(ReplyOwner):
    """One blocking request: its reply lands in `slot`, in the client's queue."""

    def __init__(
        self,
        lease: _Lease,
        spec: CommandSpec,
        args: list[bytes],
        slot: Slot,
        state: MigrationState,
        lane: int,
    ) -> None:
        super().__init__()
        self.lease = lease
        self.spec = spec
        self.args = args
        self.slot = slot
        self.state = state
        self.lane = lane
        self.inner = Slot(self, None, 0.0)  # the dedicated connection's reply slot
        self.payload = encode_request(args)
        self.keys = tuple(args[p] for p in spec.key_positions(args))
        self.mirror = mirrorable(spec)  # a pop to apply on the other side during a migration
        self.on_done: Callable[[], None] | None = None  # set by the client (begin_blocking)
        self.sent = False
        self.finished = False
        self.stale = False  # a reload moved its keys' read side: unblocked, keys held
        self._holding: list[bytes] = []
        lease.call = self

    @property
    def addr(self) -> str:
        return self.lease.backend.addr

    def at_head(self) -> None:
        """Every earlier request of the client is answered: send the call (once none of its
        keys is behind the migration fence)."""
        if self.sent or self.finished:
            return
        state = self.state
        if state.held:
            key = state.held_key(self.keys)
            if key is not None:
                state.held[key].append(self.at_head)
                return
        self.sent = True
        conn = self.lease.conn
        if conn is None or conn.closed:
            backend = self.lease.backend
            reason = "connection closed"
            self._finish(errors.backend_unavailable(backend.name, backend.addr, reason), False)
            return
        if self.mirror:
            state.blocking.add(self)
        conn.send(self.payload, self.inner)

    def unblock(self, error: bool) -> bool:
        """CLIENT UNBLOCK: ask the backend to end the call as if it timed out (or with its
        -UNBLOCKED error). Its reply then comes as any reply would: an element popped just
        before is delivered, never lost. False when the call is not waiting on the backend."""
        backend_id = self.lease.backend_id
        if not self.sent or self.finished or self.stale or backend_id is None:
            return False
        how = b"ERROR" if error else b"TIMEOUT"
        unblock = encode_request([b"CLIENT", b"UNBLOCK", backend_id, how])
        self.lease.backend.send(2, 0, unblock, Slot(_DISCARD, None, 0.0))
        return True

    def on_reload(self, routes: RouteTable) -> None:
        """The route table changed (MigrationState.on_reload): if its keys are now read on
        another backend, end the wait here and hold the keys until the reply is in."""
        if self.finished or not self.sent or self.stale or not self.keys:
            return
        ident = self.lease.backend_id
        if ident is None or routes.read.addr_for(self.keys[0]) == self.addr:
            return
        self.stale = True
        held = self.state.held
        self._holding = [k for k in dict.fromkeys(self.keys) if k not in held]
        for key in self._holding:
            held[key] = []
        backend = routes.backends.get(self.addr, self.lease.backend)
        unblock = encode_request([b"CLIENT", b"UNBLOCK", ident, b"TIMEOUT"])
        backend.send(2, 0, unblock, Slot(_DISCARD, None, 0.0))

    def cancel(self) -> None:
        """The client is gone: closing the connection ends the call on the backend too."""
        if not self.finished:
            self.finished = True
            self.state.blocking.discard(self)
            self._release_held()
            if self.lease.conn is not None:
                self.lease.conn.release()

    def flush(self) -> None:  # ReplyOwner: the dedicated connection answered
        self.dirty = False
        if self.inner.reply is not None:
            self._finish(self.inner.reply, True)

    def on_conn_failed(self) -> None:
        reply = self.inner.reply
        if reply is not None:
            self._finish(reply, False)
        elif self.sent:  # failed before the call went out: answered by at_head otherwise
            backend = self.lease.backend
            self._finish(errors.backend_unavailable(backend.name, backend.addr, "failed"), False)

    def _finish(self, reply: bytes, healthy: bool) -> None:
        if self.finished:
            return
        self.state.blocking.discard(self)
        conn = self.lease.conn
        if healthy and conn is not None and not conn.closed:
            _keep_idle(self.lease)
        elif conn is not None:
            conn.release()
        stale, self.stale = self.stale, False
        if stale and reply in _NIL:  # unblocked before it popped: run again on the new side
            self._release_held()
            self._restart()
            return
        self.finished = True
        if self.mirror and not is_error(reply):
            popped = Popped(self.spec, self.args, self.addr, self.state, db_of(self.lane))
            mirror_pop(popped, reply, direct=stale)
        self._release_held()
        self.slot.answer(reply)
        if self.on_done is not None:
            self.on_done()

    def _release_held(self) -> None:
        holding, self._holding = self._holding, []
        for key in holding:
            self.state.release(key)

    def _restart(self) -> None:
        routes = self.state.current()
        addr = _blocking_target(self.spec, self.args, routes)
        lease = addr if isinstance(addr, bytes) else _lease_for(routes.backends[addr], self.lane)
        if isinstance(lease, bytes):
            self.finished = True
            self.slot.answer(lease)
            if self.on_done is not None:
                self.on_done()
            return
        self.lease = lease
        lease.call = self
        self.inner = Slot(self, None, 0.0)
        self.sent = False
        self.at_head()


def open_blocking(
    spec: CommandSpec,
    args: list[bytes],
    slot: Slot,
    routes: RouteTable,
    state: MigrationState,
    lane: int,
) -> BlockingCall | bytes:
    """The call for `args` on a connection of its own (idle or new), or the error to answer:
    keys on different backends, a pop that cannot be mirrored now, the backend down or its
    blocking connections all in use."""
    addr = _blocking_target(spec, args, routes)
    if isinstance(addr, bytes):
        return addr
    lease = _lease_for(routes.backends[addr], lane)
    if isinstance(lease, bytes):
        return lease
    return BlockingCall(lease, spec, args, slot, state, lane)


def _blocking_target(spec: CommandSpec, args: list[bytes], routes: RouteTable) -> str | bytes:
    """The address the call runs on (the read side's owner of its keys), or the refusal."""
    pools = [routes.read]
    if not routes.fast and routes.secondary_writes and spec.write:
        if not mirrorable(spec):
            return errors.blocking_in_migration(spec.name)
        pools.append(routes.other)  # the mirrored pop needs the keys together there too
    plan = plan_same_backend(spec, args, pools)
    if plan.error is not None:
        return plan.error
    return plan.fragments[0].addr
