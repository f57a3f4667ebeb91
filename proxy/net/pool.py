"""The backend registry: one Backend per address for the life of the process.

Connections to unchanged backends survive reloads; removed ones are drained, then closed. Each
sync returns the route table (net/route.py) of the new topology over these backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from proxy.config.schema import BackendConfig
from proxy.net.backend import Backend
from proxy.net.blocking import close_idle
from proxy.net.route import RouteTable, build_route_table
from proxy.routing.topology import Topology

log = logging.getLogger("shardproxy.pool")

DRAIN_POLL_S = 0.05  # how often a removed backend is checked for outstanding replies
DRAIN_LIMIT_S = 30.0  # a removed backend is closed after this even if replies are still owed


class BackendPool:
    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self._config: BackendConfig | None = None
        self._draining: set[asyncio.Task[None]] = set()

    def sync(self, topology: Topology) -> RouteTable:
        """Create backends the topology adds, drain the ones it drops; return its route table."""
        config = topology.config.backend
        wanted = topology.all_addrs()
        if self._config is not None and config != self._config:
            # Backend settings changed: new connections use them; old ones drain.
            for addr in list(self.backends):
                self._drain(self.backends.pop(addr))
        self._config = config
        for addr in wanted:
            if addr not in self.backends:
                self.backends[addr] = Backend(addr, topology.names[addr], config)
            else:
                self.backends[addr].name = topology.names[addr]
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
