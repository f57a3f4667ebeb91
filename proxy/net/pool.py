"""Backend registry and the router: a topology resolved to live Backend objects.

`BackendPool` owns one Backend per address for the life of the process (connections to unchanged
backends survive reloads; removed ones are drained, then closed). `Router` is immutable once
built and is swapped as one reference on reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from proxy.config.schema import BackendConfig
from proxy.migration.phases import RULES, Phase
from proxy.net.backend import Backend
from proxy.net.fence import MigrationState
from proxy.routing.topology import PoolTopology, Topology

log = logging.getLogger("shardproxy.pool")

DRAIN_POLL_S = 0.05  # how often a removed backend is checked for outstanding replies
DRAIN_LIMIT_S = 30.0  # a removed backend is closed after this even if replies are still owed


class Router:
    """What a client needs per request: ring lookups that return Backend objects, and during a
    migration the pool that answers reads, the other pool, and what the phase sends where."""

    __slots__ = (
        "backends", "fast", "migration", "node_for", "other", "read", "route",
        "route_backends", "secondary_writes", "shadow", "shadow_ratio", "topology",
    )  # fmt: skip

    def __init__(
        self, topology: Topology, backends: dict[str, Backend], migration: MigrationState
    ) -> None:
        self.topology = topology
        self.route: PoolTopology = topology.route
        self.node_for: Callable[[bytes], int] = topology.route.ring.node_for
        self.route_backends: tuple[Backend, ...] = tuple(backends[a] for a in topology.route.addrs)
        self.backends: dict[str, Backend] = {a: backends[a] for a in topology.all_addrs()}
        # Single-key requests may take the client's fast path (one ring, one backend) only when
        # no migration phase asks for a second ring.
        self.fast = topology.phase is Phase.NONE
        self.migration = migration
        rules = RULES[topology.phase]
        target = topology.target or topology.route
        self.read, self.other = (
            (target, topology.route)
            if rules.reads_target
            else (
                topology.route,
                target,
            )
        )
        self.secondary_writes = rules.secondary_writes
        cfg = topology.config.migration
        self.shadow_ratio = cfg.shadow_sample_ratio if cfg is not None else 0.0
        self.shadow = rules.shadow_compare and self.shadow_ratio > 0

    def backend_for(self, key: bytes) -> Backend:
        return self.route_backends[self.node_for(key)]


class BackendPool:
    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self._config: BackendConfig | None = None
        self._draining: set[asyncio.Task[None]] = set()

    def sync(self, topology: Topology, migration: MigrationState) -> Router:
        """Create backends the topology adds, drain the ones it drops; return its router."""
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
        router = Router(topology, self.backends, migration)
        migration.router = router  # requests deferred by the fence resume with this one
        return router

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

    async def close(self) -> None:
        for task in list(self._draining):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in self.backends.values():
            await backend.close()
        self.backends.clear()
