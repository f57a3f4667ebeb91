"""The client ports: `listen` (plain text, or TLS with client.tls and no client.tls.listen) and
client.tls.listen (TLS next to a plain `listen`, like Redis's port and tls-port).

A TLS port is accepted by hand and each socket is handed to the loop (connect_accepted_socket)
with the context in use *when it is accepted*: a reload that re-reads the certificate
(set_context) reaches the next connection, with no port re-bound and no open connection touched
(a server made with ssl= keeps the context it started with; upgrading with start_tls would race
uvloop, which starts reading before the upgrade). Handshakes are bounded in time
(client.tls.handshake_timeout_ms) and in number (they count against the client limit), counted
when they fail, and cancelled on stop. The plain port is the asyncio server it always was: TLS
off costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final

from proxy.config.schema import Address, ProxyConfig
from proxy.net.client import ClientConnection, ClientHost
from proxy.net.metrics import TLS_HANDSHAKE_FAILURES
from proxy.net.tls import tls_reason

log = logging.getLogger("shardproxy.listener")

BACKLOG: Final = 1024
ACCEPT_BATCH: Final = 64  # connections accepted per readable event of a TLS port
ACCEPT_RETRY_S: Final = 0.1  # a TLS port's accept failing (EMFILE...) is retried after this
LOG_EVERY_S: Final = 10.0  # rate limit of the handshake failure warning
# Why a handshake failed, for shardproxy_client_tls_handshake_failures_total{kind}.
HANDSHAKE_FAILURES: Final = TLS_HANDSHAKE_FAILURES
# OpenSSL reasons that mean a certificate was missing, refused or not trusted (either side's).
_CERT_REASONS: Final = frozenset(
    {
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "CERTIFICATE_VERIFY_FAILED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
    }
)


class TLSClientConnection(ClientConnection):
    """A client over TLS. TLS has no half-close: a client's close_notify ends the connection
    (returning True from eof_received would only make the SSL transport log a warning)."""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


def failure_kind(exc: BaseException) -> str:
    """One of HANDSHAKE_FAILURES."""
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout"  # the SSL transport aborts a handshake past its timeout
    if isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and exc.reason in _CERT_REASONS
    ):
        return "certificate"
    return "protocol"  # a plain-text client, an unknown protocol version, a reset...


class TLSPort:
    """A TLS port: its listening socket, accepted by hand so that each connection gets the
    context in use when it is accepted (the socket is handed to the loop with that context,
    unread: nothing the client sent is lost), and the handshakes under way."""

    def __init__(
        self, host: ClientHost, sock: socket.socket, context: ssl.SSLContext, timeout_ms: int
    ) -> None:
        self.host = host
        self.sock = sock
        self.context = context
        self.timeout_s = timeout_ms / 1000
        self.handshakes: set[asyncio.Task[None]] = set()
        self._unstarted: dict[asyncio.Task[None], socket.socket] = {}  # sockets no task owns yet
        self._loop = asyncio.get_running_loop()
        self._logged = -LOG_EVERY_S
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def set_context(self, context: ssl.SSLContext, timeout_ms: int) -> None:
        """A reload: connections accepted from now on use `context`."""
        self.context = context
        self.timeout_s = timeout_ms / 1000

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # reset while in the backlog: the next one
                continue
            except OSError as exc:  # out of descriptors or memory: retry shortly, keep the backlog
                self._pause_accepting(exc)
                return
            self._accept(conn)

    def _pause_accepting(self, exc: OSError) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self._log_limited(
            "accept on the TLS port failed: %s; retrying in %.1f s",
            exc.strerror or exc,
            ACCEPT_RETRY_S,
        )

        def resume() -> None:
            if not self._closed:
                self._loop.add_reader(self.sock.fileno(), self._on_readable)

        self._loop.call_later(ACCEPT_RETRY_S, resume)

    def _accept(self, conn: socket.socket) -> None:
        host = self.host
        if len(host.clients) + len(self.handshakes) >= host.max_clients:
            host.metrics.client_errors_total.labels("limit").inc()
            conn.close()  # no TLS yet: nothing the client could read
            return
        conn.setblocking(False)
        task = self._loop.create_task(self._handshake(conn))
        self._unstarted[task] = conn
        self.handshakes.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.handshakes.discard(task)
        conn = self._unstarted.pop(task, None)
        if conn is not None:  # cancelled before it ran: the socket is still ours
            conn.close()

    async def _handshake(self, conn: socket.socket) -> None:
        task = asyncio.current_task()
        assert task is not None
        del self._unstarted[task]  # from here the loop's transport owns the socket
        try:
            peer = conn.getpeername()
        except OSError:
            peer = "?"
        try:
            await self._loop.connect_accepted_socket(
                lambda: new_client(self.host, TLSClientConnection),
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.timeout_s,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; closed by the loop
            self._failed(peer, exc)

    def _failed(self, peer: object, exc: BaseException) -> None:
        kind = failure_kind(exc)
        self.host.metrics.tls_handshake_failures_total.labels(kind).inc()
        self._log_limited(
            "TLS handshake with client %s failed (%s): %s (logged at most every %.0f s; see "
            "shardproxy_client_tls_handshake_failures_total)",
            peer, kind, tls_reason(exc) or type(exc).__name__, LOG_EVERY_S,
        )  # fmt: skip

    def _log_limited(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.warning(message, *args)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        for task in list(self.handshakes):
            task.cancel()


def new_client(host: ClientHost, kind: type[ClientConnection]) -> ClientConnection:
    host.metrics.client_connections_total.inc()
    return kind(host)


def bind(address: Address, reuse_port: bool) -> socket.socket:
    """A listening socket (SO_REUSEADDR; SO_REUSEPORT under workers), non-blocking."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.create_server(
        (address.host, address.port), family=family, backlog=BACKLOG, reuse_port=reuse_port
    )
    sock.setblocking(False)
    return sock


class Listeners:
    """Every client port of the process: opened at start, their addresses fixed until stop
    (a reload may change the TLS files, not the ports)."""

    def __init__(self, host: ClientHost) -> None:
        self.host = host
        self.plain: asyncio.Server | None = None
        self.tls: TLSPort | None = None

    async def open(
        self, config: ProxyConfig, context: ssl.SSLContext | None, reuse_port: bool
    ) -> None:
        tls = config.client.tls
        if tls is None or tls.listen is not None:
            self.plain = await asyncio.get_running_loop().create_server(
                lambda: new_client(self.host, ClientConnection),
                config.listen.host,
                config.listen.port,
                reuse_address=True,
                reuse_port=reuse_port,
                backlog=BACKLOG,
            )
        if tls is not None and context is not None:
            sock = bind(tls.listen or config.listen, reuse_port)
            self.tls = TLSPort(self.host, sock, context, tls.handshake_timeout_ms)

    def set_context(self, config: ProxyConfig, context: ssl.SSLContext | None) -> None:
        tls = config.client.tls
        if self.tls is not None and tls is not None and context is not None:
            self.tls.set_context(context, tls.handshake_timeout_ms)

    def describe(self, config: ProxyConfig) -> str:
        """For the start log: `listen`, and which port serves TLS."""
        tls = config.client.tls
        if tls is None:
            return str(config.listen)
        if tls.listen is None:
            return f"{config.listen} (TLS)"
        return f"{config.listen}, TLS on {tls.listen}"

    @property
    def port(self) -> int:
        """`listen`'s port (the TLS port when client.tls has no listen of its own)."""
        if self.plain is not None:
            # uvloop's Server.sockets is a list, typeshed says tuple: read it untyped, as the
            # compiled build checks a tuple-typed value's type.
            sockets: Sequence[socket.socket] = getattr(self.plain, "sockets")  # noqa: B009
            return int(sockets[0].getsockname()[1])
        assert self.tls is not None
        return self.tls.port

    @property
    def tls_port(self) -> int | None:
        return None if self.tls is None else self.tls.port

    def close(self) -> None:
        if self.plain is not None:
            self.plain.close()
        if self.tls is not None:
            self.tls.close()

    async def wait_closed(self) -> None:
        if self.plain is not None:
            await self.plain.wait_closed()
