"""One backend Redis: its shared connections per protocol version, health and reconnects.

A backend that cannot be reached is marked down and its keys fail fast until a reconnect (with
exponential backoff) succeeds; its keys are never routed elsewhere. The connections themselves
(pipelining, reply slots, timeouts) are in proxy.connection. Two things never mark a backend
down: answering `-BUSY` (alive, running a long script), and a connection or health check the
proxy could not open for lack of its own file descriptors or memory (counted and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Final

from proxy import errors
from proxy.codec.resp import encode_request
from proxy.commands.session import lane_for
from proxy.config.schema import BackendConfig
from proxy.net.connection import BackendConnection, FutureOwner
from proxy.net.metrics import BackendStats
from proxy.net.probe import ProbeOutcome, call_once, is_local_error, os_reason, probe
from proxy.net.slot import Slot
from proxy.net.tls import BackendTLS, connect_kwargs

log = logging.getLogger("shardproxy.backend")

LOG_EVERY_S: Final = (
    10.0  # rate limit of the busy and out-of-resources warnings, per backend and kind
)


class Backend:
    """One backend Redis (an address), with its shared connections per protocol version."""

    def __init__(
        self, addr: str, name: str, config: BackendConfig, tls: BackendTLS | None = None
    ) -> None:
        self.addr = addr
        self.name = name
        self.config = config  # config.tls: the TLS settings of this backend's pools
        # The context new connections use (None: plain); a reload re-reads the files and
        # replaces it, while connections already open keep theirs.
        self.tls = tls
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.up = True  # optimistic until a connection fails
        self.stats = BackendStats.new()
        self.down_reason = ""
        self.down_reply = b""
        self.closed = False
        # Shared connections by lane (commands/local.lane_for: a RESP version and a database),
        # each opened on first use; the lanes of db 0 are the RESP versions 2 and 3.
        self._conns: dict[int, list[BackendConnection | None]] = {
            2: [None] * config.connections,
            3: [None] * config.connections,
        }
        self._reconnect: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed health checks
        self._connect_tasks: set[asyncio.Task[None]] = set()
        self._busy: set[BackendConnection] = set()  # stalled behind a script, draining
        self._logged: dict[str, float] = {}  # warning kind -> monotonic time last logged
        self._tls_failure = ""  # why the last probe's TLS handshake failed ("" when it did not)

    def connection(self, lane: int, client_id: int) -> BackendConnection | None:
        """The connection of `lane` a client uses (stable per client, so its requests stay in
        order); a lane's first use opens it (SELECT n is part of its handshake)."""
        if not self.up:
            return None
        conns = self._conns.get(lane)
        if conns is None:
            conns = self._conns[lane] = [None] * self.config.connections
        index = client_id % len(conns)
        conn = conns[index]
        if conn is None or conn.closed:
            conn = conns[index] = self._open(lane)
        return conn

    def send(self, lane: int, client_id: int, payload: bytes, slot: Slot) -> None:
        if self.up:  # the common case, connection() inlined
            try:
                conns = self._conns[lane]
            except KeyError:  # a db's first request: connection() opens its lane
                pass
            else:
                conn = conns[client_id % len(conns)]
                if conn is not None and not conn.closed:
                    conn.send(payload, slot)
                    return
        conn = self.connection(lane, client_id)
        if conn is None:
            slot.reply = self.down_reply
            return
        conn.send(payload, slot)

    def call(self, args: list[bytes], conn_index: int = 0, db: int = 0) -> asyncio.Future[bytes]:
        """Send one request now (RESP2, db `db`, connection `conn_index`); the future gets the
        raw reply.

        The request is queued synchronously, so requests made one after another from the same
        task reach the backend in that order, interleaved with client traffic on that connection.
        Errors (including this backend being down) come back as raw `-ERR ...` replies.
        """
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        owner = FutureOwner(future)
        self.send(lane_for(2, db), conn_index, encode_request(args), owner.slot)
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

    def _open(self, lane: int) -> BackendConnection:
        conn = BackendConnection(self, lane)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._connect_tasks.add(task)
        task.add_done_callback(self._connect_tasks.discard)
        return conn

    async def _connect(self, conn: BackendConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout_ms / 1000):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, **connect_kwargs(self.tls)
                )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLError):
                self.stats.tls += 1
            if is_local_error(exc):
                reason = os_reason(exc)
                self._log_local(f"connection: {reason}")
                conn.fail(reason, errors.local_resources(self.name, self.addr, reason), False)
                return
            reason = "connect timeout" if isinstance(exc, TimeoutError) else os_reason(exc)
            conn.fail(reason)

    def send_alone(self, args: list[bytes], slot: Slot) -> None:
        """Send `args` on a connection of its own, whether this backend is up or not: SCRIPT KILL
        and FUNCTION KILL, which must not queue behind the script they are meant to stop."""
        task = asyncio.get_running_loop().create_task(self._send_alone(args, slot))
        self._connect_tasks.add(task)
        task.add_done_callback(self._connect_tasks.discard)

    async def _send_alone(self, args: list[bytes], slot: Slot) -> None:
        timeout_s = self.config.command_timeout_ms / 1000
        try:
            reply = await call_once(self.config, self.host, self.port, args, timeout_s, self.tls)
        except OSError as exc:
            reply = errors.backend_unavailable(self.name, self.addr, os_reason(exc))
        if reply is None:
            reply = errors.backend_timeout(self.name, self.addr, self.config.command_timeout_ms)
        slot.answer(reply)

    def check_stalled(self, conn: BackendConnection) -> None:
        """Ask on a fresh connection whether the backend `conn` stalls on is busy with a script;
        the answer goes to conn.on_busy_check."""
        task = asyncio.get_running_loop().create_task(self._check_stalled(conn))
        self._connect_tasks.add(task)
        task.add_done_callback(self._connect_tasks.discard)

    async def _check_stalled(self, conn: BackendConnection) -> None:
        # A backend busy with a script answers -BUSY at once: silence means a stall.
        conn.on_busy_check(await self._probe_once("busy check", self.config.command_timeout_ms / 4))

    def on_connection_busy(self, conn: BackendConnection) -> None:
        """`conn` waits for a script to end: new requests go to a replacement connection."""
        self.stats.busy += 1
        self._busy.add(conn)
        self._forget(conn)
        self._log_limited(
            "busy",
            "backend %s (%s) is busy running a script: %d requests wait on its connection, new "
            "requests get -BUSY until it ends or SCRIPT KILL / FUNCTION KILL stops it",
            conn.owed(),
        )

    def on_connection_retired(self, conn: BackendConnection) -> None:
        self._busy.discard(conn)

    def on_connection_ready(self, conn: BackendConnection) -> None:
        if not self.up:
            self._mark_up()

    def _forget(self, conn: BackendConnection) -> None:
        for conns in self._conns.values():
            for i, c in enumerate(conns):
                if c is conn:
                    conns[i] = None

    def on_connection_failed(self, conn: BackendConnection, reason: str, down: bool) -> None:
        self._forget(conn)
        self._busy.discard(conn)
        if self.closed or not down:
            return
        idle = self._reconnect is None or self._reconnect.done()
        if self.up and reason != "timeout":
            # A dropped connection: reconnect at once; down only if that fails (a connection
            # killed on its own must not fail every key of a healthy backend for a while).
            if idle:
                self._reconnect = asyncio.get_running_loop().create_task(
                    self._reconnect_now(reason)
                )
            return
        if self.up:
            self._mark_down(reason)
        if idle:
            self._reconnect = asyncio.get_running_loop().create_task(self._probe())

    async def _reconnect_now(self, reason: str) -> None:
        if await self.ping():
            return  # the next request opens a new connection
        if not self.closed:
            self._mark_down(reason)
            await self._probe()

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
        """One PING on a fresh connection (with AUTH); True when it answered (even -BUSY).
        The proxy's own lack of resources is no answer: False, and the backend keeps its state."""
        outcome = await self._probe_once("reconnect", self.config.connect_timeout_ms)
        return outcome is ProbeOutcome.ALIVE or outcome is ProbeOutcome.BUSY

    async def _probe_once(self, what: str, timeout_ms: float) -> ProbeOutcome:
        timeout_s = timeout_ms / 1000
        self._tls_failure = ""
        outcome = await probe(
            self.config, self.host, self.port, timeout_s, self.tls, self._on_tls_failure
        )
        if outcome is ProbeOutcome.LOCAL:
            self._log_local(what)
        return outcome

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
        for conn in list(self._busy):
            conn.close()

    async def check_health(self) -> None:
        """Active check: a PING on a fresh connection; down after `failure_threshold` misses."""
        if self.closed:
            return
        outcome = await self._probe_once("health check", self.config.connect_timeout_ms)
        if outcome is ProbeOutcome.LOCAL:
            return  # not the backend's fault: its state is kept
        if outcome is not ProbeOutcome.DOWN:
            self._failures = 0
            if not self.up:
                self._mark_up()
            return
        self._failures += 1
        if self.up and self._failures >= self.config.failure_threshold:
            failure = f": {self._tls_failure}" if self._tls_failure else ""
            self._mark_down(f"health check failed{failure}")

    def _on_tls_failure(self, reason: str) -> None:
        self.stats.tls += 1
        self._tls_failure = reason

    def _mark_down(self, reason: str) -> None:
        self.up = False
        self.down_reason = reason
        self.down_reply = errors.backend_unavailable(self.name, self.addr, reason)
        log.warning("backend %s (%s) down: %s", self.name, self.addr, reason)

    def _log_local(self, what: str) -> None:
        self.stats.local += 1
        self._log_limited(
            "local",
            "backend %s (%s): %s failed for lack of the proxy's own resources (file descriptors "
            "or memory); the backend's state is kept (%d such failures so far)",
            what,
            self.stats.local,
        )

    def _log_limited(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[kind] = now
            log.warning(message, self.name, self.addr, *args)

    def inflight(self) -> int:
        owed = sum(c.owed() for c in self._busy)
        return owed + sum(c.owed() for cs in self._conns.values() for c in cs if c is not None)

    def idle(self) -> bool:
        busy_idle = all(not c.pending for c in self._busy)
        return busy_idle and all(
            c is None or not c.pending for cs in self._conns.values() for c in cs
        )
