"""The backend registry: one Backend per address for the life of the process.

Connections to unchanged backends survive reloads; removed ones, and ones whose settings changed
(backend.*, their pools' tls), are drained, then closed. Each sync hands every backend the TLS
context new connections use (re-read from the files on each reload) and returns the route table
(net/route.py) of the new topology over these backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace

from proxy.config.schema import BackendConfig, ProxyConfig
from proxy.net.backend import Backend
from proxy.net.blocking import close_idle
from proxy.net.route import RouteTable, build_route_table
from proxy.net.tls import BackendTLS
from proxy.routing.topology import Topology

log = logging.getLogger("shardproxy.pool")

DRAIN_POLL_S = 0.05  # how often a removed backend is checked for outstanding replies
DRAIN_LIMIT_S = 30.0  # a removed backend is closed after this even if replies are still owed


class BackendPool:
    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self._draining: set[asyncio.Task[None]] = set()

    def sync(self, topology: Topology, tls: Mapping[str, BackendTLS] | None = None) -> RouteTable:
        """Create backends the topology adds, drain the ones it drops or whose settings changed;
        `tls`: each TLS backend's context (load_tls's); return the route table."""
        settings = backend_settings(topology.config)
        tls = tls or {}
        wanted = topology.all_addrs()
        for addr in wanted:
            backend = self.backends.get(addr)
            if backend is not None and backend.config != settings[addr]:
                # Settings changed: new connections use them; the old ones drain.
                self._drain(self.backends.pop(addr))
                backend = None
            if backend is None:
                self.backends[addr] = Backend(addr, topology.names[addr], settings[addr])
            backend = self.backends[addr]
            backend.name = topology.names[addr]
            backend.tls = tls.get(addr)
        for addr in [a for a in self.backends if a not in wanted]:
            self._drain(self.backends.pop(addr))
        return build_route_table(topology, self.backends)

    def _drain(self, backend: Backend) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_then_close(backend))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain_then_close(self, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LIMIT_S
        try:
            while not backend.idle() and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
        finally:  # also when the proxy stops mid-drain: never leave its connections open
            log.info("closing removed backend %s (%s)", backend.name, backend.addr)
            await backend.close()
            close_idle(backend)

    async def close(self) -> None:
        for task in list(self._draining):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in self.backends.values():
            await backend.close()
            close_idle(backend)
        self.backends.clear()


def backend_settings(config: ProxyConfig) -> dict[str, BackendConfig]:
    """Each address's settings: backend.*, with the TLS of its pools (one per server)."""
    return {
        server.addr: replace(config.backend, tls=pool.tls)
        for pool in config.pools.values()
        for server in pool.servers
    }
