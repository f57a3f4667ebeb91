"""One connection to a backend Redis, shared and pipelined, and the reply slots it fills.

Many clients' requests share a connection; replies are matched to requests by position (a FIFO
of reply slots), so a connection that loses its place (timeout, reset) fails every pending slot
with an error naming the backend, and its Backend replaces it. Writes made during one event-loop
iteration are coalesced into one send, made one loop iteration later still (see _flush_soon).
A connection stalled behind a long script is not failed while the backend answers a probe with
`-BUSY`: it turns `busy` (new requests go to a replacement) and retires once it is answered.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Final, Protocol, cast

from proxy import errors
from proxy.codec.resp import ReplyScanner, encode_request, is_error
from proxy.commands.session import db_of, proto_of
from proxy.config.schema import BackendConfig
from proxy.net.metrics import BackendStats, latency_bucket
from proxy.net.probe import BUSY_PREFIX, ProbeOutcome, auth_command
from proxy.net.slot import VIEW_MARK, ReplyOwner, Slot

_READ_BYTES: Final = 256 * 1024  # a backend connection's read buffer (uvloop reads this much)
_COMPACT_AT: Final = 1024  # answered slots kept at the head of `pending` before it is compacted
_clock: Final = perf_counter  # a static in the compiled build, not a lookup in the globals


_ANSWERED: Final = Slot(ReplyOwner(), None, 0.0)  # stands in `pending` for slots answered
_ONE_VIEW: Final = [VIEW_MARK]  # the replies of a read that completed a big one (_deliver)


class _Handshake(ReplyOwner):
    """Owner of the connection's own HELLO/AUTH slots: checks their replies."""

    __slots__ = ("conn", "slots")

    def __init__(self, conn: BackendConnection) -> None:
        super().__init__()
        self.conn = conn
        self.slots: list[Slot] = []

    def flush(self) -> None:
        self.dirty = False
        last = self.slots[-1]
        for slot in self.slots:
            reply = slot.reply
            # CLIENT SETNAME (the last) is refused with -BUSY while a script runs: the name is
            # cosmetic. SELECT's -BUSY is a failure: its requests must not run in db 0.
            cosmetic = slot is last and reply is not None and reply.startswith(BUSY_PREFIX)
            if reply is not None and is_error(reply) and not cosmetic:
                text = reply[1:].strip().decode(errors="replace")
                self.conn.fail(f"handshake refused: {text}")
                return
        if all(slot.reply is not None for slot in self.slots):
            self.conn.on_ready()


class FutureOwner(ReplyOwner):
    """Owner of a slot whose reply resolves an asyncio future (background jobs' requests)."""

    __slots__ = ("future", "slot")

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        super().__init__()
        self.future = future
        self.slot = Slot(self, None, 0.0)

    def flush(self) -> None:
        self.dirty = False
        if self.slot.reply is not None and not self.future.done():
            self.future.set_result(self.slot.reply)


class BackendConnection(asyncio.BufferedProtocol):
    """One TCP connection to a backend, speaking RESP `proto` (2 or 3) in database `db`
    (together its lane, commands/local.lane_for).

    A BufferedProtocol: reads land in the connection's own buffer and are fed to the scanner as
    bytes (the copy uvloop would make for data_received), except while a big bulk string is
    under way, when they land straight in the reply's own buffer (ReplyScanner.room).
    """

    def __init__(self, backend: ConnectionHost, lane: int) -> None:
        self.backend = backend
        self.proto = proto_of(lane)  # RESP version
        self.db = db_of(lane)  # selected by the handshake
        self.transport: asyncio.Transport | None = None
        # Reply slots in request order, from `_head` on (a list and an index: deque's methods
        # are generic calls when compiled); empty whenever nothing is owed.
        self.pending: list[Slot] = []
        self._head = 0
        self.out: list[bytes] = []  # requests written this loop iteration, not yet sent
        self.scanner = ReplyScanner()
        self._read_buf = memoryview(bytearray(_READ_BYTES))
        self._into_room = False  # the read in progress goes to scanner.room()
        self.closed = False
        self.ready = False
        # Stalled behind a script the backend reports -BUSY for: takes no new requests and
        # closes once its pending replies are in (the Backend opened a replacement).
        self.busy = False
        self._probing = False  # a busy check (Backend.check_stalled) is under way
        self._grace = False  # the last check found the backend answering: fail if still stalled
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._progress = 0  # reads so far: a stall detector, not a count of replies
        self._progress_seen = -1
        self._stall_since = 0.0  # loop time since when no byte arrived while replies were owed
        self._timer: asyncio.TimerHandle | None = None
        # A db's connection sends nothing but its handshake until SELECT n succeeded: a request
        # pipelined behind a refused SELECT would run in db 0 (on_ready sends what waited).
        self._gated = self.db != 0
        self._queue_handshake()

    # -- sending ---------------------------------------------------------------------------
    def send(self, payload: bytes, slot: Slot) -> None:
        if not self.pending:
            self._stall_since = self._loop.time()
            if self._timer is None:
                self._arm_timer()
        self.pending.append(slot)
        self.out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        """First call_soon: the loop polls once more before the flush, so requests from clients
        whose reads were ready just after this iteration's poll join the same write: bigger
        batches, fewer writes per request for the proxy and its backends, at the cost of one
        more loop iteration of latency (figures: benchmarks/README.md)."""
        self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if transport is None or self.closed or not self.out or self._gated:
            return
        out = self.out
        self.out = []
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _queue_handshake(self) -> None:
        cfg = self.backend.config
        commands: list[list[bytes]] = []
        if self.proto == 3:
            hello = [b"HELLO", b"3"]
            if cfg.password is not None:
                hello += [b"AUTH", (cfg.username or "default").encode(), cfg.password.encode()]
            commands.append(hello)
        else:
            auth = auth_command(cfg)
            if auth is not None:
                commands.append(auth)
        if self.db:
            commands.append([b"SELECT", b"%d" % self.db])
        commands.append([b"CLIENT", b"SETNAME", b"shardproxy"])
        owner = _Handshake(self)
        for cmd in commands:
            slot = Slot(owner, None, 0.0)
            owner.slots.append(slot)
            self.pending.append(slot)
            self.out.append(encode_request(cmd))
        self._handshake_len = len(commands)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._stall_since = self._loop.time()
        self._arm_timer()
        if self._gated:  # the handshake alone; requests already queued wait for on_ready
            count = self._handshake_len
            self.transport.write(b"".join(self.out[:count]))
            del self.out[:count]
        else:
            self._flush_out()

    def get_buffer(self, sizehint: int) -> memoryview:
        room = self.scanner.room()
        self._into_room = room is not None
        return self._read_buf if room is None else room

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_room:
            self._progress += 1
            big = self.scanner.filled_view(nbytes)
            if big is not None:
                self._deliver(_ONE_VIEW, big)
            return
        read = self._read_buf
        try:
            big, rest = self.scanner.take_big(read, nbytes)
        except ValueError:
            self.fail("protocol error in reply")
            return
        if rest < 0:  # the common case: small replies, fed as bytes
            self.data_received(bytes(read[:nbytes]))
            return
        self._progress += 1  # a big bulk string, copied once into its own buffer
        if big is not None:
            self._deliver(_ONE_VIEW, big)
        if rest < nbytes and not self.closed:
            self.data_received(bytes(read[rest:nbytes]))

    def data_received(self, data: bytes) -> None:
        self._progress += 1
        try:
            replies = self.scanner.feed(data)
        except ValueError:
            self.fail("protocol error in reply")
            return
        self._deliver(replies)

    def _deliver(self, replies: list[bytes], big: bytearray | None = None) -> None:
        """Each reply to its slot, in order; then flush every owner that got one. `big`: the
        one reply (`replies` is _ONE_VIEW), a bulk string read into a buffer of its own, kept
        by an owner that only writes it out (ReplyOwner.keep_view), else copied to bytes."""
        pending = self.pending
        head = self._head
        if len(replies) > len(pending) - head:
            self.fail("unexpected reply")
            return
        touched: list[ReplyOwner] = []
        stats = self.backend.stats
        latency = stats.latency
        buckets = latency.buckets
        total = 0.0
        now = _clock()
        views = self.scanner.views
        for raw in replies:
            slot = pending[head]
            pending[head] = _ANSWERED  # the list must not keep the reply alive
            head += 1
            owner = slot.owner
            if raw is VIEW_MARK:
                assert big is not None
                if type(slot) is not Slot or not owner.keep_view(slot, big):
                    raw = bytes(big)
            elif views and not owner.takes_views and type(raw) is not bytes:
                raw = bytes(raw)  # a memoryview (ReplyScanner.views)
            slot.reply = raw
            start = slot.start
            if start:
                elapsed = now - start
                buckets[latency_bucket(elapsed)] += 1  # observe(), inlined
                total += elapsed
            first = raw[0]
            if first == 45 or first == 33:  # - or RESP3 !
                stats.reply += 1
            if not owner.dirty:
                owner.dirty = True
                touched.append(owner)
        if head == len(pending):
            pending.clear()
            head = 0
        elif head >= _COMPACT_AT and head * 2 >= len(pending):
            del pending[:head]
            head = 0
        self._head = head
        latency.total += total
        for owner in touched:
            owner.flush()
        if self.busy and not pending:
            self._retire()

    def owed(self) -> int:
        """Replies this connection still waits for."""
        return len(self.pending) - self._head

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost ({exc})" if exc else "connection closed by backend")

    def pause_writing(self) -> None:  # the backend is slow to read: requests queue in the transport
        pass

    def resume_writing(self) -> None:
        pass

    # -- lifecycle -------------------------------------------------------------------------
    def on_ready(self) -> None:
        self.ready = True
        if self._gated:
            self._gated = False
            self._flush_out()
        self.backend.on_connection_ready(self)

    def fail(self, reason: str, reply: bytes | None = None, down: bool = True) -> None:
        """Close and answer every pending slot with an error naming the backend; `down`
        False: the failure is the proxy's own (out of file descriptors), not the backend's."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        backend = self.backend
        if reply is None:
            reply = errors.backend_unavailable(backend.name, backend.addr, reason)
        # A failure of the proxy's own (down False) is counted by the Backend (stats.local).
        if down and reason == "timeout":
            backend.stats.timeout += 1
        elif down and reason != "backend removed from the configuration":
            backend.stats.connection += 1
        pending, head = self.pending, self._head
        self.pending = []
        self._head = 0
        self.out = []
        touched: list[ReplyOwner] = []
        for slot in pending[head:]:
            slot.reply = reply
            if not slot.owner.dirty:
                slot.owner.dirty = True
                touched.append(slot.owner)
        backend.on_connection_failed(self, reason, down)
        for owner in touched:
            owner.flush()

    def close(self) -> None:
        self.fail("backend removed from the configuration")

    def _retire(self) -> None:
        """A busy connection whose replies are all in: close it quietly (it is replaced)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
        self.backend.on_connection_retired(self)

    def _arm_timer(self) -> None:
        timeout_s = self.backend.config.command_timeout_ms / 1000
        self._timer = self._loop.call_later(max(timeout_s / 4, 0.01), self._check_stall)

    def _check_stall(self) -> None:
        self._timer = None
        if self.closed:
            return
        if not self.pending and self.ready:
            return  # idle: re-armed by the next send
        now = self._loop.time()
        if self._progress != self._progress_seen:
            self._progress_seen = self._progress
            self._stall_since = now
            self._grace = False
        cfg = self.backend.config
        limit_ms = cfg.command_timeout_ms if self.ready else cfg.connect_timeout_ms
        if (now - self._stall_since) * 1000 >= limit_ms:
            # Connected but not ready may also be a script: the handshake's replies wait in
            # Redis's output buffer while a script sent in the same write runs.
            if self.transport is None or self._grace:
                self._fail_timeout(limit_ms)
                return
            if not self._probing:  # is the backend busy with a script? (on_busy_check)
                self._probing = True
                self.backend.check_stalled(self)
        self._arm_timer()

    def _fail_timeout(self, limit_ms: int) -> None:
        backend = self.backend
        self.fail("timeout", errors.backend_timeout(backend.name, backend.addr, limit_ms))

    def on_busy_check(self, outcome: ProbeOutcome) -> None:
        """The answer of a fresh connection's PING to the backend this connection stalls on."""
        self._probing = False
        if self.closed:
            return
        if outcome is ProbeOutcome.BUSY:
            # Alive, running a script: keep waiting (its replies come when it ends or is
            # killed), re-checked after another command_timeout_ms without a reply.
            self._stall_since = self._loop.time()
            if not self.busy:
                self.busy = True
                self.backend.on_connection_busy(self)
        elif outcome is ProbeOutcome.DOWN:
            self._fail_timeout(self.backend.config.command_timeout_ms)
        elif self._progress == self._progress_seen:
            # Answered (or the proxy could not tell): fail on the next check without progress,
            # so replies already on their way are not mistaken for a stall.
            self._grace = True


class ConnectionHost(Protocol):
    """What a connection needs of its Backend (proxy.backend.Backend)."""

    name: str
    addr: str
    config: BackendConfig
    stats: BackendStats

    def on_connection_ready(self, conn: BackendConnection) -> None: ...

    def on_connection_failed(self, conn: BackendConnection, reason: str, down: bool) -> None: ...

    def on_connection_busy(self, conn: BackendConnection) -> None: ...

    def on_connection_retired(self, conn: BackendConnection) -> None: ...

    def check_stalled(self, conn: BackendConnection) -> None: ...
