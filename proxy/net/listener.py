"""The client ports: `listen` (plain text, or TLS with client.tls and no client.tls.listen) and
client.tls.listen (TLS next to a plain `listen`, like Redis's port and tls-port).

A TLS connection is accepted as TCP and upgraded with loop.start_tls, with the context in use
*when it is accepted*: a reload that re-reads the certificate (set_context) reaches the next
connection, with no port re-bound and no open connection touched (a server made with ssl= keeps
the context it started with). Handshakes are bounded in time (client.tls.handshake_timeout_ms)
and in number (they count against the client limit), counted when they fail, and cancelled on
stop. Plain ports are the plain asyncio server they always were: TLS off costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final, cast

from proxy.config.schema import Address, ProxyConfig
from proxy.net.client import ClientConnection, ClientHost
from proxy.net.metrics import TLS_HANDSHAKE_FAILURES
from proxy.net.tls import tls_reason

log = logging.getLogger("shardproxy.listener")

BACKLOG: Final = 1024
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


class _Accepted(asyncio.Protocol):
    """A TCP connection to a TLS port, until its handshake starts."""

    def __init__(self, port: TLSPort) -> None:
        self.port = port
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.task = self.port.accept(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:  # gone before start_tls took the transport over
            self.task.cancel()


class TLSPort:
    """The TLS side of a port: the context in use and the handshakes under way."""

    def __init__(self, host: ClientHost, context: ssl.SSLContext, timeout_ms: int) -> None:
        self.host = host
        self.context = context
        self.timeout_s = timeout_ms / 1000
        self.handshakes: set[asyncio.Task[None]] = set()
        self._logged = -LOG_EVERY_S

    def set_context(self, context: ssl.SSLContext, timeout_ms: int) -> None:
        """A reload: connections accepted from now on use `context`."""
        self.context = context
        self.timeout_s = timeout_ms / 1000

    def accept(self, transport: asyncio.Transport) -> asyncio.Task[None] | None:
        host = self.host
        if len(host.clients) + len(self.handshakes) >= host.max_clients:
            host.metrics.client_errors_total.labels("limit").inc()
            transport.abort()  # no TLS yet: nothing the client could read
            return None
        transport.pause_reading()  # start_tls resumes it once its protocol is in place
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)
        return task

    async def _handshake(self, transport: asyncio.Transport) -> None:
        client = new_client(self.host, TLSClientConnection)
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(
                transport,
                client,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.timeout_s,
            )
        except asyncio.CancelledError:
            transport.abort()
            raise
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._failed(transport, exc)
            return
        if tls_transport is None or tls_transport.is_closing() or client.closed:
            return  # lost between the handshake and now
        client.connection_made(tls_transport)

    def _failed(self, transport: asyncio.Transport, exc: BaseException) -> None:
        kind = failure_kind(exc)
        self.host.metrics.tls_handshake_failures_total.labels(kind).inc()
        peer = transport.get_extra_info("peername")
        transport.abort()
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.warning(
                "TLS handshake with client %s failed (%s): %s (logged at most every %.0f s;"
                " see shardproxy_client_tls_handshake_failures_total)",
                peer,
                kind,
                tls_reason(exc),
                LOG_EVERY_S,
            )

    def close(self) -> None:
        for task in list(self.handshakes):
            task.cancel()


def new_client(host: ClientHost, kind: type[ClientConnection]) -> ClientConnection:
    host.metrics.client_connections_total.inc()
    return kind(host)


class Listeners:
    """Every client port of the process: opened at start, their addresses fixed until stop
    (a reload may change the TLS files, not the ports)."""

    def __init__(self, host: ClientHost) -> None:
        self.host = host
        self.servers: list[asyncio.Server] = []
        self.tls: TLSPort | None = None
        self.tls_server: asyncio.Server | None = None

    async def open(
        self, config: ProxyConfig, context: ssl.SSLContext | None, reuse_port: bool
    ) -> None:
        tls = config.client.tls
        if tls is None or tls.listen is not None:
            plain = await self._serve(
                lambda: new_client(self.host, ClientConnection), config.listen, reuse_port
            )
            self.servers.append(plain)
        if tls is not None and context is not None:
            self.tls = port = TLSPort(self.host, context, tls.handshake_timeout_ms)
            address = tls.listen or config.listen
            self.tls_server = await self._serve(lambda: _Accepted(port), address, reuse_port)
            self.servers.append(self.tls_server)

    async def _serve(
        self, factory: Callable[[], asyncio.Protocol], address: Address, reuse_port: bool
    ) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            factory,
            address.host,
            address.port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=BACKLOG,
        )

    def set_context(self, config: ProxyConfig, context: ssl.SSLContext | None) -> None:
        tls = config.client.tls
        if self.tls is not None and tls is not None and context is not None:
            self.tls.set_context(context, tls.handshake_timeout_ms)

    def describe(self, config: ProxyConfig) -> str:
        """For the start log: `listen`, and which port serves TLS."""
        tls = config.client.tls
        if tls is None:
            return str(config.listen)
        return (
            f"{config.listen} (TLS)"
            if tls.listen is None
            else f"{config.listen}, TLS on {tls.listen}"
        )

    @property
    def port(self) -> int:
        """The first port: `listen`'s (plain, or TLS when it is the only one)."""
        return _port_of(self.servers[0])

    @property
    def tls_port(self) -> int | None:
        return None if self.tls_server is None else _port_of(self.tls_server)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.tls is not None:
            self.tls.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()


def _port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
