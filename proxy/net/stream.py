"""A big value streamed through to its backend as it arrives, on a connection of its own.

A request whose last argument is a big bulk string (SET k <500 MB>) is not assembled in the
proxy: its head, then the value's bytes as the client sends them, go to the key's backend on a
dedicated connection, so the proxy holds little more than one read and a shared connection is
never held by one client's slow upload (a half-sent request could only be ended by closing the
connection). Order: the head is sent only once every earlier request of the client is answered,
and the client's later requests wait until this one's reply is in (see ClientConnection).
"""

from __future__ import annotations

from typing import Protocol

from proxy.codec.request import RequestReader
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.spec import CommandSpec, Kind, lookup
from proxy.net.backend import Backend
from proxy.net.dedicated import DedicatedConnection, Purpose, open_dedicated
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot

WAITING_MAX_BYTES = 1024 * 1024  # value bytes held while earlier replies are awaited


class StreamClient(Protocol):
    """What a stream needs of the client that sends it."""

    def hold_reading(self, on: bool) -> None: ...

    def on_stream_done(self) -> None: ...


class BulkStream(ReplyOwner):
    """One streamed request: its reply lands in `slot`, in the client's queue."""

    def __init__(
        self, client: StreamClient, backend: Backend, lane: int, head: bytes, slot: Slot
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
        self.conn: DedicatedConnection | None = None
        conn = open_dedicated(backend, lane, Purpose.STREAM, self._on_failed)
        if isinstance(conn, bytes):  # the backend is down
            self._answer(conn)
            return
        conn.on_pause = self.on_backpressure
        self.conn = conn

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
        if self.conn is not None:
            self.conn.release()

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
        if self.conn is not None:
            self.conn.release()
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
