"""One backend Redis: its shared connections per protocol version, health and reconnects.

A backend that cannot be reached is marked down and its keys fail fast until a reconnect (with
exponential backoff) succeeds; its keys are never routed elsewhere. The connections themselves
(pipelining, reply slots, timeouts) are in proxy.connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from proxy import errors
from proxy.config import BackendConfig
from proxy.connection import BackendConnection, FutureOwner, Slot
from proxy.metrics import BackendStats
from proxy.probe import ProbeConnection, os_reason
from proxy.resp import encode_request

log = logging.getLogger("shardproxy.backend")


class Backend:
    """One backend Redis (an address), with its shared connections per protocol version."""

    def __init__(self, addr: str, name: str, config: BackendConfig) -> None:
        self.addr = addr
        self.name = name
        self.config = config
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.up = True  # optimistic until a connection fails
        self.stats = BackendStats.new()
        self.down_reason = ""
        self.down_reply = b""
        self.closed = False
        self._conns: dict[int, list[BackendConnection | None]] = {
            2: [None] * config.connections,
            3: [None] * config.connections,
        }
        self._reconnect: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed health checks
        self._connect_tasks: set[asyncio.Task[None]] = set()

    def connection(self, proto: int, client_id: int) -> BackendConnection | None:
        """The connection a client uses (stable per client, so its requests stay in order)."""
        if not self.up:
            return None
        conns = self._conns[proto]
        index = client_id % len(conns)
        conn = conns[index]
        if conn is None or conn.closed:
            conn = conns[index] = self._open(proto)
        return conn

    def send(self, proto: int, client_id: int, payload: bytes, slot: Slot) -> None:
        if self.up:  # the common case, connection() inlined
            conns = self._conns[proto]
            conn = conns[client_id % len(conns)]
            if conn is not None and not conn.closed:
                conn.send(payload, slot)
                return
        conn = self.connection(proto, client_id)
        if conn is None:
            slot.reply = self.down_reply
            return
        conn.send(payload, slot)

    def call(self, args: list[bytes], conn_index: int = 0) -> asyncio.Future[bytes]:
        """Send one request now (RESP2, connection `conn_index`); the future gets the raw reply.

        The request is queued synchronously, so requests made one after another from the same
        task reach the backend in that order, interleaved with client traffic on that connection.
        Errors (including this backend being down) come back as raw `-ERR ...` replies.
        """
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        owner = FutureOwner(future)
        self.send(2, conn_index, encode_request(args), owner.slot)
        if owner.slot.reply is not None:
            future.set_result(owner.slot.reply)
        return future

    async def barrier(self) -> None:
        """Return once every request sent so far on any open connection has been answered."""
        futures = []
        for conns in self._conns.values():
            for conn in conns:
                if conn is not None and not conn.closed:
                    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                    owner = FutureOwner(future)
                    conn.send(encode_request([b"PING"]), owner.slot)
                    futures.append(future)
        if futures:
            await asyncio.gather(*futures)

    def _open(self, proto: int) -> BackendConnection:
        conn = BackendConnection(self, proto)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._connect_tasks.add(task)
        task.add_done_callback(self._connect_tasks.discard)
        return conn

    async def _connect(self, conn: BackendConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout_ms / 1000):
                await loop.create_connection(lambda: conn, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            reason = "connect timeout" if isinstance(exc, TimeoutError) else os_reason(exc)
            conn.fail(reason)

    def on_connection_ready(self, conn: BackendConnection) -> None:
        if not self.up:
            self._mark_up()

    def on_connection_failed(self, conn: BackendConnection, reason: str) -> None:
        for conns in self._conns.values():
            for i, c in enumerate(conns):
                if c is conn:
                    conns[i] = None
        if self.closed:
            return
        if self.up:
            self._mark_down(reason)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._probe())

    def _mark_up(self) -> None:
        self.up = True
        self._failures = 0
        self.down_reason = ""
        log.warning("backend %s (%s) up", self.name, self.addr)

    async def _probe(self) -> None:
        """Reconnect with exponential backoff until the backend answers PING."""
        delay = self.config.retry_backoff_ms / 1000
        while not self.closed:
            await asyncio.sleep(delay)
            if await self.ping():
                self._mark_up()
                return
            delay = min(delay * 2, self.config.retry_backoff_max_ms / 1000)

    async def ping(self) -> bool:
        """One PING on a fresh connection (with the handshake); True when it answered."""
        loop = asyncio.get_running_loop()
        conn = ProbeConnection(self.config)
        try:
            async with asyncio.timeout(self.config.connect_timeout_ms / 1000):
                await loop.create_connection(lambda: conn, self.host, self.port)
                return await conn.result
        except (OSError, TimeoutError):
            return False
        finally:
            conn.close_transport()

    async def close(self) -> None:
        self.closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        for task in list(self._connect_tasks):
            task.cancel()
        for conns in self._conns.values():
            for conn in conns:
                if conn is not None:
                    conn.close()

    async def check_health(self) -> None:
        """Active check: a PING on a fresh connection; down after `failure_threshold` misses."""
        if self.closed:
            return
        if await self.ping():
            self._failures = 0
            if not self.up:
                self._mark_up()
            return
        self._failures += 1
        if self.up and self._failures >= self.config.failure_threshold:
            self._mark_down("health check failed")

    def _mark_down(self, reason: str) -> None:
        self.up = False
        self.down_reason = reason
        self.down_reply = errors.backend_unavailable(self.name, self.addr, reason)
        log.warning("backend %s (%s) down: %s", self.name, self.addr, reason)

    def inflight(self) -> int:
        return sum(len(c.pending) for cs in self._conns.values() for c in cs if c is not None)

    def idle(self) -> bool:
        return all(c is None or not c.pending for cs in self._conns.values() for c in cs)
