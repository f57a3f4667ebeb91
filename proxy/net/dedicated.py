"""Backend connections that one client uses alone: blocking calls, WATCH, pub/sub, streamed values.

A shared connection carries many clients' requests and must never wait on one of them; a client
whose request holds a connection (BLPOP, a WATCH until EXEC, a subscription, a half-sent value)
gets one of its own, counted per backend and purpose (bounded where the config says so), closed
with that client. Its failures are its client's alone: they never mark the backend down.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable

from proxy import errors
from proxy.config.schema import BackendConfig
from proxy.net.backend import Backend
from proxy.net.connection import BackendConnection
from proxy.net.metrics import BackendStats
from proxy.net.probe import os_reason
from proxy.net.tls import connect_kwargs


class Purpose(enum.StrEnum):
    BLOCKING = "blocking"  # BLPOP BRPOP BLMOVE BZPOPMIN XREAD BLOCK ...
    WATCH = "watch"  # WATCH ... EXEC: the watched keys' backend, until EXEC/DISCARD/UNWATCH
    PUBSUB = "pubsub"  # a subscriber's connection to one backend
    STREAM = "stream"  # a big value streamed through (net/stream.py)


class _DedicatedHost:
    """The connection's view of its backend: settings, stats and busy checks are the backend's;
    failures are the connection's owner's alone."""

    def __init__(self, backend: Backend, on_failed: Callable[[], None]) -> None:
        self.backend = backend
        self.name = backend.name
        self.addr = backend.addr
        self.config: BackendConfig = backend.config
        self.stats: BackendStats = backend.stats
        self.on_failed = on_failed

    def on_connection_ready(self, conn: BackendConnection) -> None:
        pass

    def on_connection_failed(self, conn: BackendConnection, reason: str, down: bool) -> None:
        self.on_failed()

    def on_connection_busy(self, conn: BackendConnection) -> None:
        pass

    def on_connection_retired(self, conn: BackendConnection) -> None:
        pass

    def check_stalled(self, conn: BackendConnection) -> None:
        self.backend.check_stalled(conn)


class DedicatedConnection(BackendConnection):
    """One client's own connection to `backend`. `watch_stalls` False: no reply may come for a
    long time (a blocking call with timeout 0, a subscription), so silence is not a stall."""

    def __init__(
        self,
        backend: Backend,
        lane: int,
        purpose: Purpose,
        on_failed: Callable[[], None],
        watch_stalls: bool = True,
    ) -> None:
        self.purpose = purpose
        self.watch_stalls = watch_stalls
        self.on_pause: Callable[[bool], None] | None = None  # the transport's write buffer
        self._counted: BackendStats | None = backend.stats
        counts = backend.stats.dedicated
        counts[purpose] = counts.get(purpose, 0) + 1
        super().__init__(_DedicatedHost(backend, on_failed), lane)

    def write_raw(self, chunk: bytes) -> None:
        """Bytes that are not a whole request (a value streamed through); writes are progress."""
        self._progress += 1
        self.out.append(chunk)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause(False)

    def _arm_timer(self) -> None:
        if self.watch_stalls or not self.ready:  # the handshake is always timed
            super()._arm_timer()

    def release(self) -> None:
        """The client is done with it (or gone): close it; a request still running on the
        backend (a blocked BLPOP) ends with the connection."""
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport is not None:
                self.transport.abort()
        self._uncount()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # released while it was connecting
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._uncount()

    def _uncount(self) -> None:
        stats = self._counted
        if stats is not None:
            self._counted = None
            stats.dedicated[self.purpose] -= 1


def open_dedicated(
    backend: Backend,
    lane: int,
    purpose: Purpose,
    on_failed: Callable[[], None],
    limit: int = 0,
    watch_stalls: bool = True,
    make: type[DedicatedConnection] = DedicatedConnection,
) -> DedicatedConnection | bytes:
    """A new connection of `purpose` to `backend` (of class `make`) in `lane` (its RESP version
    and database: commands/local.lane_for), connecting; or the error
    to answer: the backend is down, or `limit` (0: none) of that purpose are open already."""
    if not backend.up:
        return backend.down_reply
    if limit and backend.stats.dedicated.get(purpose, 0) >= limit:
        return errors.dedicated_exhausted(backend.name, purpose.value, limit)
    conn = make(backend, lane, purpose, on_failed, watch_stalls)
    task = asyncio.get_running_loop().create_task(_connect(conn, backend))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return conn


_TASKS: set[asyncio.Task[None]] = set()


async def _connect(conn: DedicatedConnection, backend: Backend) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(backend.config.connect_timeout_ms / 1000):
            await loop.create_connection(
                lambda: conn, backend.host, backend.port, **connect_kwargs(backend.tls)
            )
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, ssl.SSLError):
            backend.stats.tls += 1
        reason = "connect timeout" if isinstance(exc, TimeoutError) else os_reason(exc)
        conn.fail(reason, errors.backend_unavailable(backend.name, backend.addr, reason), False)
        conn.release()
