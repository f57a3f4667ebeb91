"""Throwaway backend connections: the reconnect probe and active health check (a PING), the busy
check of a stalled connection, and commands that must not wait behind a running script (SCRIPT
KILL). Also the AUTH command every backend connection starts with.

A probe tells apart a backend that is down, one that is alive but busy running a script (it
answers `-BUSY`), and a probe the proxy could not even open for lack of its own resources
(EMFILE...): only the first may mark a backend down.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ssl
from collections.abc import Callable
from typing import cast

from proxy import errors
from proxy.codec.resp import ReplyScanner, encode_request, is_error
from proxy.config.schema import BackendConfig
from proxy.net.tls import BackendTLS, connect_kwargs, tls_reason

# The proxy's own resources ran out (not the backend's fault): never a reason to mark it down.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BUSY_PREFIX = b"-BUSY "  # a script or function runs past busy-reply-threshold (not -BUSYKEY)


class ProbeOutcome(enum.Enum):
    ALIVE = "alive"  # answered PING
    BUSY = "busy"  # answered -BUSY: alive, running a long script
    DOWN = "down"  # refused, timed out, reset, or an error reply
    LOCAL = "local"  # the proxy could not open a socket (EMFILE, ENFILE, ENOBUFS, ENOMEM)


def auth_command(cfg: BackendConfig) -> list[bytes] | None:
    """`AUTH [username] password` for a RESP2 connection, or None without a password."""
    if cfg.password is None:
        return None
    auth = [b"AUTH", cfg.password.encode()]
    if cfg.username:
        auth.insert(1, cfg.username.encode())
    return auth


def is_local_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return False
    return isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS


class OneShotConnection(asyncio.Protocol):
    """AUTH (when configured), then one command; `result` gets the command's raw reply, or None
    when the connection ended first or AUTH was refused."""

    def __init__(self, cfg: BackendConfig, args: list[bytes]) -> None:
        self.cfg = cfg
        self.args = args
        self.result: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.scanner = ReplyScanner()
        self.transport: asyncio.Transport | None = None
        self.expected = 1  # replies still owed: the command, plus AUTH when there is a password

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        wire = b""
        auth = auth_command(self.cfg)
        if auth is not None:
            wire += encode_request(auth)
            self.expected += 1
        transport.write(wire + encode_request(self.args))

    def data_received(self, data: bytes) -> None:
        for raw in self.scanner.feed(data):
            self.expected -= 1
            if self.result.done():
                continue
            if self.expected == 0:
                self.result.set_result(bytes(raw))
            elif is_error(raw):  # AUTH refused
                self.result.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_result(None)

    def close_transport(self) -> None:
        close_throwaway(self.transport)


def close_throwaway(transport: asyncio.WriteTransport | None) -> None:
    """Close a connection whose last reply is in. Over TLS it is aborted: a graceful close
    would wait for the backend's close_notify, and outlive a proxy stopping meanwhile."""
    if transport is None:
        return
    if transport.get_extra_info("sslcontext") is not None:
        transport.abort()
    else:
        transport.close()


async def call_once(
    cfg: BackendConfig,
    host: str,
    port: int,
    args: list[bytes],
    timeout_s: float,
    tls: BackendTLS | None = None,
) -> bytes | None:
    """Send `args` on a fresh connection (over `tls` when given); its raw reply, or None when
    none came in `timeout_s`. Raises OSError when the connection cannot be made
    (is_local_error tells whose fault; ssl.SSLError: the TLS handshake failed)."""
    loop = asyncio.get_running_loop()
    conn = OneShotConnection(cfg, args)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: conn, host, port, **connect_kwargs(tls))
            return await conn.result
    except TimeoutError:
        return None
    finally:
        conn.close_transport()


async def probe(
    cfg: BackendConfig,
    host: str,
    port: int,
    timeout_s: float,
    tls: BackendTLS | None = None,
    on_tls_error: Callable[[str], None] | None = None,
) -> ProbeOutcome:
    """One PING on a fresh connection (with AUTH), classified; a failed TLS handshake's reason
    goes to `on_tls_error`."""
    try:
        reply = await call_once(cfg, host, port, [b"PING"], timeout_s, tls)
    except OSError as exc:
        if on_tls_error is not None and isinstance(exc, ssl.SSLError):
            on_tls_error(os_reason(exc))
        return ProbeOutcome.LOCAL if is_local_error(exc) else ProbeOutcome.DOWN
    if reply is None:
        return ProbeOutcome.DOWN
    if reply.startswith(BUSY_PREFIX):
        return ProbeOutcome.BUSY
    return ProbeOutcome.DOWN if is_error(reply) else ProbeOutcome.ALIVE


def os_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return errors.tls_handshake(tls_reason(exc))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc)
