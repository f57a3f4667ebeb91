"""A throwaway backend connection that authenticates and PINGs: the reconnect probe and the
active health check. Also the AUTH command every backend connection starts with."""

from __future__ import annotations

import asyncio
from typing import cast

from proxy.config import BackendConfig
from proxy.resp import ReplyScanner, encode_request


def auth_command(cfg: BackendConfig) -> list[bytes] | None:
    """`AUTH [username] password` for a RESP2 connection, or None without a password."""
    if cfg.password is None:
        return None
    auth = [b"AUTH", cfg.password.encode()]
    if cfg.username:
        auth.insert(1, cfg.username.encode())
    return auth


class ProbeConnection(asyncio.Protocol):
    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.scanner = ReplyScanner()
        self.transport: asyncio.Transport | None = None
        self.expected = 1  # replies still owed: the PING, plus AUTH when there is a password

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        wire = b""
        auth = auth_command(self.cfg)
        if auth is not None:
            wire += encode_request(auth)
            self.expected += 1
        transport.write(wire + encode_request([b"PING"]))

    def data_received(self, data: bytes) -> None:
        for raw in self.scanner.feed(data):
            self.expected -= 1
            if raw[:1] == b"-" and not self.result.done():
                self.result.set_result(False)
            if self.expected == 0 and not self.result.done():
                self.result.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_result(False)

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


def os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc)
