"""A big value streamed through to its backend as it arrives, on a connection of its own.

A request whose last argument is a big bulk string (SET k <500 MB>) is not assembled in the
proxy: its head, then the value's bytes as the client sends them, go to the key's backend on a
dedicated connection, so the proxy holds little more than one read and a shared connection is
never held by one client's slow upload (a half-sent request could only be ended by closing the
connection). Order: the head is sent only once every earlier request of the client is answered,
and the client's later requests wait until this one's reply is in (see ClientConnection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from proxy import errors
from proxy.codec.request import RequestReader
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.spec import CommandSpec, Kind, lookup
from proxy.config.schema import BackendConfig
from proxy.net.backend import Backend
from proxy.net.connection import BackendConnection
from proxy.net.metrics import BackendStats
from proxy.net.probe import os_reason
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot

WAITING_MAX_BYTES = 1024 * 1024  # value bytes held while earlier replies are awaited


class StreamClient(Protocol):
    """What a stream needs of the client that sends it."""

    def hold_reading(self, on: bool) -> None: ...

    def on_stream_done(self) -> None: ...


class _StreamHost:
    """The dedicated connection's view of its backend: settings, stats and busy checks are the
    backend's; failures are the stream's alone (they never mark the backend down)."""

    def __init__(self, backend: Backend, on_failed: Callable[[], None]) -> None:
        self.backend = backend
        self.name = backend.name
        self.addr = backend.addr
        self.config: BackendConfig = backend.config
        self.stats: BackendStats = backend.stats
        self._on_failed = on_failed

    def on_connection_ready(self, conn: BackendConnection) -> None:
        pass

    def on_connection_failed(self, conn: BackendConnection, reason: str, down: bool) -> None:
        self._on_failed()

    def on_connection_busy(self, conn: BackendConnection) -> None:
        pass

    def on_connection_retired(self, conn: BackendConnection) -> None:
        pass

    def check_stalled(self, conn: BackendConnection) -> None:
        self.backend.check_stalled(conn)


class _StreamConnection(BackendConnection):
    """A backend connection whose writes count as progress (a long upload is not a stall) and
    whose write buffer pauses the client's reads."""

    def __init__(self, host: _StreamHost, proto: int, stream: BulkStream) -> None:
        super().__init__(host, proto)
        self.stream = stream

    def write_raw(self, chunk: bytes) -> None:
        self._progress += 1
        self.out.append(chunk)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def pause_writing(self) -> None:
        self.stream.on_backpressure(True)

    def resume_writing(self) -> None:
        self.stream.on_backpressure(False)


class BulkStream(ReplyOwner):
    """One streamed request: its reply lands in `slot`, in the client's queue."""

    def __init__(
        self, client: StreamClient, backend: Backend, proto: int, head: bytes, slot: Slot
    ) -> None:
        super().__init__()
        self.client = client
        self.slot = slot
        self.inner = Slot(self, None, 0.0)  # the dedicated connection's reply slot
        self.ordered = False  # every earlier request of the client is answered: head sent
        self.body_done = False  # the client sent the whole value
        self.finished = False
        self._waiting: list[bytes] = [head]
        self._waiting_bytes = 0
        self._backpressure = False
        self.conn: _StreamConnection | None = None
        if not backend.up:
            self._answer(backend.down_reply)
            return
        host = _StreamHost(backend, self._on_failed)
        self.conn = conn = _StreamConnection(host, proto, self)
        task = asyncio.get_running_loop().create_task(_connect(conn, backend))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    # -- the client's side ----------------------------------------------------------------
    def on_body(self, chunk: bytes) -> None:
        """Value bytes from the client, in order (the reader calls this)."""
        if self.slot.reply is not None or self.conn is None:
            return  # answered already (backend down, failed): the rest is dropped
        if self.ordered:
            self.conn.write_raw(chunk)
            return
        self._waiting.append(chunk)
        self._waiting_bytes += len(chunk)
        if self._waiting_bytes > WAITING_MAX_BYTES:
            self.client.hold_reading(True)

    def on_end(self) -> None:
        """The value is complete; the request ends with CRLF whatever the client sent there."""
        self.on_body(b"\r\n")
        self.body_done = True
        self._maybe_done()

    def at_head(self) -> None:
        """The client's earlier requests are all answered: send what was held."""
        if self.ordered or self.conn is None or self.slot.reply is not None:
            return
        self.ordered = True
        waiting, self._waiting = self._waiting, []
        self.conn.send(waiting[0], self.inner)
        for chunk in waiting[1:]:
            self.conn.write_raw(chunk)
        if self._waiting_bytes > WAITING_MAX_BYTES and not self._backpressure:
            self.client.hold_reading(False)
        self._waiting_bytes = 0

    def cancel(self) -> None:
        """The client is gone: the backend drops the partial request with the connection."""
        if self.conn is not None and not self.conn.closed:
            self.conn.closed = True
            if self.conn.transport is not None:
                self.conn.transport.abort()

    # -- the backend's side ---------------------------------------------------------------
    def on_backpressure(self, on: bool) -> None:
        self._backpressure = on
        self.client.hold_reading(on)

    def flush(self) -> None:  # SlotOwner: the dedicated connection answered
        self.dirty = False
        if self.inner.reply is not None:
            self._answer(self.inner.reply)

    def _on_failed(self) -> None:
        if self.inner.reply is not None:
            self._answer(self.inner.reply)

    def _answer(self, reply: bytes) -> None:
        if self.slot.reply is None:
            self.slot.answer(reply)
        if self._backpressure or self._waiting_bytes > WAITING_MAX_BYTES:
            self._backpressure = False
            self._waiting_bytes = 0
            self.client.hold_reading(False)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.finished or self.slot.reply is None or not self.body_done:
            return
        self.finished = True
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.closed = True
            if conn._timer is not None:
                conn._timer.cancel()
            if conn.transport is not None:
                conn.transport.close()
        self.client.on_stream_done()


def streamable(head: list[bytes]) -> bool:
    """May the big last argument after `head` be streamed? Only for a single-key command whose
    key is in `head` (and not reserved); anything else is assembled and dispatched as usual."""
    spec = lookup(head)
    if spec is None or spec.kind is not Kind.SINGLE or not spec.arity_ok(len(head) + 1):
        return False
    key = spec.first_key
    return 0 < key < len(head) and not head[key].startswith(RESERVED_PREFIX)


def stream_target(reader: RequestReader, routes: RouteTable) -> tuple[CommandSpec, Backend, bytes]:
    """For the request the reader stopped at: its spec, its key's backend, and its bytes up to
    the streamed value (`*N`, the arguments before it, `$size`)."""
    args = reader.stream_args
    assert args is not None
    spec = lookup(args)
    assert spec is not None
    parts = [b"*%d\r\n" % (len(args) + 1)]
    parts += [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]
    parts.append(b"$%d\r\n" % reader.stream_size)
    return spec, routes.backend_for(args[spec.first_key]), b"".join(parts)


_TASKS: set[asyncio.Task[None]] = set()


async def _connect(conn: _StreamConnection, backend: Backend) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(backend.config.connect_timeout_ms / 1000):
            await loop.create_connection(lambda: conn, backend.host, backend.port)
    except (OSError, TimeoutError) as exc:
        reason = "connect timeout" if isinstance(exc, TimeoutError) else os_reason(exc)
        conn.fail(reason, errors.backend_unavailable(backend.name, backend.addr, reason), False)
