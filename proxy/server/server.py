"""The composition root: wires config, topology, backends, client listener and admin HTTP; owns
the lifecycle (start, reload, graceful drain on stop; its shared steps and every background task
through proxy/server/lifecycle.py). What the server shows of itself is in proxy/server/status.py.

A reload validates the whole new config, builds a new immutable topology, resolves it against the
backend registry and swaps `self.routes` in one assignment; requests in flight keep the router
they started with, and no client connection is touched. Under a supervisor (`workers: N > 1`,
proxy/workers/supervisor.py) the same server runs in each worker process with a WorkerRole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from proxy.commands.session import ClientRow
from proxy.commands.users import Users, compile_users
from proxy.config.reader import config_hash
from proxy.config.schema import ProxyConfig
from proxy.jobs.runner import PhaseRunner
from proxy.net.client import ClientConnection
from proxy.net.defence import Defences
from proxy.net.fence import MigrationState
from proxy.net.listener import Listeners
from proxy.net.memory import MemoryGuard
from proxy.net.metrics import ProxyMetrics, defence_families
from proxy.net.pool import BackendPool
from proxy.net.pubsub import rehome_all
from proxy.net.route import RouteRef, RouteTable
from proxy.net.tls import PLAIN, TLSContexts, load_tls
from proxy.routing.topology import Topology, build_topology
from proxy.server import status as views
from proxy.server.aclcheck import AclCheckError, AclReport, check_config, log_reports, refusal
from proxy.server.admin import AdminServer
from proxy.server.dbcheck import check_databases
from proxy.server.fdlimit import log_lowered, size_clients
from proxy.server.lifecycle import ConfigFamilies, Lifecycle
from proxy.server.reload import Accepted, validate_reload

log = logging.getLogger("shardproxy.server")

IDLE_SWEEP_S = 1.0  # how often idle clients are looked for
DRAIN_TIMEOUT_S = 5.0  # on stop, how long clients may take to receive replies already owed


@dataclass(frozen=True)
class WorkerRole:
    """A worker under a supervisor: it shares the listen port with its siblings (SO_REUSEPORT),
    leaves the admin port, signals and --watch to the supervisor, starts at the supervisor's
    config generation, and takes reloads from it only (check on every worker, then apply).
    The supervisor checks the backend user's ACL, once for all; a worker's memory budget is its
    share of client.max_memory_bytes."""

    index: int  # 0..workers-1; only worker 0 runs the migration's backfill job
    generation: int  # config generation at start


class ProxyServer:
    def __init__(
        self,
        config: ProxyConfig,
        config_text: str,
        config_path: str | None,
        role: WorkerRole | None = None,
    ) -> None:
        self.config_path = config_path
        self.role = role
        self.metrics = ProxyMetrics()
        families = ConfigFamilies(
            self.metrics.config_generation,
            self.metrics.config_reloads_total,
            self.metrics.config_info,
        )
        self.lifecycle = Lifecycle(families, log)
        self.pool = BackendPool()
        self.migration = MigrationState(lambda: self.routes)
        self.phases = PhaseRunner(self.pool, self.migration)
        self.phases.runs_backfill = role is None or role.index == 0
        self.watch = False  # reload when the config file changes (serve --watch)
        self.workers_override: int | None = None  # serve --workers: the file's value is ignored
        self.clients: set[ClientConnection] = set()
        self.started = time.monotonic()
        self._config = config
        self._config_text = config_text
        self._next_client_id = 0
        self.listeners = Listeners(self)
        self.tls: TLSContexts = PLAIN  # every file of client.tls and the backends' tls, loaded
        self._admin: AdminServer | None = None
        self._reload_lock = asyncio.Lock()
        self._route_ref: RouteRef | None = None  # set by start(): see routes
        self.client_config = config.client
        self.users = compile_users(config.client)  # ConfigError: a rule the table does not know
        self.max_clients = config.client.max_connections  # sized to the fd limit by start()
        self._sized = False
        self.allow_flush = config.allow_flush
        self.allow_config_set = config.allow_config_set
        self.databases = config.databases
        self.slowlog_ms = config.slowlog_ms
        self.acl_reports: dict[str, AclReport] = {}  # backend addr -> its user's last ACL check
        self.memory = MemoryGuard(self.clients, self.memory_budget, self._on_memory_sweep)
        self.defences = Defences(config.defences)

    def memory_budget(self) -> int:
        """client.max_memory_bytes for this process: a worker's share of it, since the budget is
        the container's and every worker of it holds clients."""
        budget = self.client_config.max_memory_bytes
        return budget if self.role is None else budget // max(1, self._config.workers)

    def _on_memory_sweep(self, held: int, throttled: int) -> None:
        self.metrics.client_memory_bytes.set(held)
        self.metrics.clients_throttled.set(throttled)

    # -- ClientHost ------------------------------------------------------------------------
    def next_client_id(self) -> int:
        self._next_client_id += 1
        return self._next_client_id

    @property
    def topology(self) -> Topology:
        return self.routes.topology

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.role is None:  # under a supervisor, the supervisor checks it once
            await check_databases(self._config)
        self.tls = load_tls(self._config)  # ConfigError: a certificate that cannot be used
        if self._config.backend.acl_check == "refuse" and self.role is None:
            reason = await self.check_acl(self._config)
            if reason:
                raise AclCheckError(reason)
        generation = 1 if self.role is None else self.role.generation
        topology = build_topology(self._config, generation, config_hash(self._config_text))
        self.routes = self.pool.sync(topology, self.tls.backends)
        self.lifecycle.show_config(self._config, generation, topology.config_hash)
        self._size_clients()
        self.metrics.add_live_collector(
            lambda: len(self.clients), lambda: views.backend_rows(self), self._extra_metrics
        )
        await self.listeners.open(self._config, self.tls.listener, self.role is not None)
        admin = self._config.admin if self.role is None else None
        if admin is not None:
            self._admin = AdminServer(self, admin.host, admin.port, self._config.admin_auth)
            await self._admin.start()
        self.lifecycle.spawn(self._health_loop())
        self.lifecycle.spawn(self._idle_loop())
        self.lifecycle.spawn(self.memory.run())
        if self._config.backend.acl_check == "warn" and self.role is None:
            self.lifecycle.spawn(self.check_acl(self._config))
        self._on_topology()
        if self.watch and self.config_path is not None and self.role is None:
            self.lifecycle.watch(self.config_path, self.current_hash, self.reload_from_file)
        log.info(
            "serving on %s (admin %s), pool %s with %d backends",
            self.listeners.describe(self._config),
            admin or ("supervisor's" if self.role else "off"),
            topology.route.name,
            len(topology.route.addrs),
        )

    @property
    def listen_port(self) -> int:
        """`listen`'s port (TLS when client.tls has no listen of its own)."""
        return self.listeners.port

    @property
    def tls_port(self) -> int | None:
        """client.tls.listen's port; None without one."""
        return self.listeners.tls_port

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT: stop; SIGHUP: reload the file (a worker installs its own)."""
        self.lifecycle.install_signal_handlers(
            lambda: self.lifecycle.spawn(self.reload_from_file())
        )

    def request_stop(self) -> None:
        self.lifecycle.request_stop()

    async def serve_until_stopped(self) -> None:
        await self.lifecycle.wait_stop()
        await self.stop()

    async def stop(self) -> None:
        self.listeners.close()
        for client in list(self.clients):
            client.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
        await self.lifecycle.cancel_tasks()
        if self._admin is not None:
            await self._admin.stop()
        await self.phases.close()
        await self.pool.close()
        await self.listeners.wait_closed()

    # -- reload ----------------------------------------------------------------------------
    async def reload_from_file(self) -> tuple[bool, str]:
        return await self.lifecycle.reload_file(self.config_path, self.reload_text)

    async def reload_text(self, text: str) -> tuple[bool, str]:
        async with self._reload_lock:
            result = await self._validate(text, check_gate=True)
            if isinstance(result, str):
                return self.lifecycle.refused(result)
            return True, self._apply(result, self.generation + 1)

    async def check_reload(self, text: str) -> str:
        """A supervised reload's first step, on every worker: why `text` may not replace the
        config in use ("" when it may). Changes nothing, counts nothing."""
        async with self._reload_lock:
            result = await self._validate(text, check_gate=True)
            return result if isinstance(result, str) else ""

    async def apply_reload(self, text: str, generation: int) -> tuple[bool, str]:
        """A supervised reload's second step, once every worker passed check_reload: apply
        `text` as `generation`. The backfill gate was read in the check and is not read again,
        so every worker applies the step the check agreed on."""
        async with self._reload_lock:
            result = await self._validate(text, check_gate=False)
            if isinstance(result, str):
                return self.lifecycle.refused(result)
            return True, self._apply(result, generation)

    async def _validate(self, text: str, check_gate: bool) -> Accepted | str:
        return await validate_reload(
            self._config,
            text,
            self.config_path or "<reload>",
            self.pool,
            len(self.migration.repair),
            workers_override=self.workers_override,
            check_gate=check_gate,
            check_acl=self.role is None,  # under a supervisor, the supervisor checks it once
            fence=self.phases.fence,
        )

    def _apply(self, result: Accepted, generation: int) -> str:
        config, text = result.config, result.text
        old_phase = self.routes.topology.phase
        topology = build_topology(config, generation, config_hash(text))
        self.tls = result.tls
        self.routes = self.pool.sync(topology, result.tls.backends)
        self.listeners.set_context(config, result.tls.listener)
        self._config = config
        self._config_text = text
        self.client_config = config.client
        self._rebind_users(compile_users(config.client))
        if self._admin is not None:
            self._admin.auth = config.admin_auth
        self.allow_flush = config.allow_flush
        self.allow_config_set = config.allow_config_set
        self.databases = config.databases
        self.slowlog_ms = config.slowlog_ms
        self._size_clients()
        self.lifecycle.accepted(config, generation, topology.config_hash, "")
        if config.backend.acl_check != "off" and self.role is None:
            self.lifecycle.spawn(self.check_acl(config))
        if self.defences.configure(config.defences):
            for client in self.clients:
                client.on_defences()
        if topology.phase != old_phase:
            log.warning("migration phase %s -> %s", old_phase, topology.phase)
            self.defences.on_phase_step()
        self._on_topology()
        return f"generation {generation}"

    def _rebind_users(self, users: Users) -> None:
        """New rules apply to connected clients at once; a client whose user is gone is closed."""
        self.users = users
        for client in list(self.clients):
            if not client.session.rebind(users):
                log.warning("closing client %s: its user is gone", client.session.peer)
                client.abort()

    @property
    def routes(self) -> RouteTable:
        """The route table in use now; a reload sets it, in one assignment."""
        assert self._route_ref is not None, "set by start()"
        return self._route_ref.table

    @routes.setter
    def routes(self, table: RouteTable) -> None:
        if self._route_ref is None:
            self._route_ref = RouteRef(table)
        else:
            self._route_ref.table = table  # every client reads it there

    @property
    def route_ref(self) -> RouteRef:
        """`routes` as the one object clients keep (net/route.py)."""
        assert self._route_ref is not None, "set by start()"
        return self._route_ref

    @property
    def generation(self) -> int:
        return self.routes.topology.generation

    def current_hash(self) -> str:
        return self.routes.topology.config_hash

    def _size_clients(self) -> None:
        """The client limit for the backends now in the pool (Redis's maxclients sizing)."""
        wanted = self._config.client.max_connections
        limit = size_clients(wanted, len(self.pool.backends), self._config.backend.connections)
        if limit.max_clients != self.max_clients or not self._sized:
            log_lowered(limit, wanted)
        self._sized = True
        self.max_clients = limit.max_clients
        self.metrics.max_clients.set(limit.max_clients)

    def _on_topology(self) -> None:
        """Start or stop the phase's background work (backfill, repairs) for the new route table;
        move subscriptions to where the new table publishes."""
        self.phases.apply(self.routes)
        self.migration.on_reload(self.routes)
        rehome_all(self.clients, self.routes)

    # -- backend ACL -----------------------------------------------------------------------
    async def check_acl(self, config: ProxyConfig) -> str:
        """Check every backend's user (proxy/server/aclcheck.py), log what is wrong once per backend
        and check, record it for /status and metrics; the refusal reason ("" when none)."""
        reports = await check_config(config, self.tls.backends)
        names = {addr: b.name for addr, b in self.pool.backends.items()}
        log_reports(reports, names, config.backend.acl_check)
        for report in reports:
            self.acl_reports[report.addr] = report
            if report.verdict is not None:
                name = names.get(report.addr, report.addr)
                self.metrics.backend_acl_ok.labels(name).set(0 if report.failed else 1)
        return refusal(reports)

    # -- health ----------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            interval_s = self._config.backend.health_check_interval_ms / 1000
            backends = list(self.pool.backends.values())
            await asyncio.gather(*(b.check_health() for b in backends))
            await asyncio.sleep(interval_s)

    async def _idle_loop(self) -> None:
        """Close clients idle for longer than client.idle_timeout_s (0: never)."""
        while True:
            await asyncio.sleep(IDLE_SWEEP_S)
            timeout_s = self.client_config.idle_timeout_s
            if timeout_s <= 0:
                continue
            now = time.perf_counter()  # ClientConnection.last_active's clock
            for client in list(self.clients):
                if not client.pending and now - client.last_active > timeout_s:
                    client.close()

    # -- views (proxy/server/status.py) ----------------------------------------------------
    def _extra_metrics(self) -> Iterator[Metric]:
        yield from self.phases.collect()
        stats = self.defences.stats
        stats.hottest_share = self.defences.watch.top_share(self.routes)
        yield from defence_families(stats)

    async def hotkeys_view(self) -> dict[str, Any]:
        return {"hotkeys": self.defences.watch.report(self.routes)}

    async def bigkeys_view(self) -> dict[str, Any]:
        watch = self.defences.watch
        return {
            "threshold_bytes": watch.config.bigkeys.threshold_bytes,
            "counts": self.defences.big_counts(),
            "bigkeys": watch.big_report(),
        }

    def readiness(self) -> tuple[bool, str]:
        return views.readiness(self)

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        return views.info_sections(self)

    def client_rows(self) -> list[ClientRow]:
        return [views.client_row(c) for c in self.clients if not c.closed]

    def client_row(self, client_id: int) -> ClientRow | None:
        client = next((c for c in self.clients if c.client_id == client_id), None)
        return None if client is None else views.client_row(client)

    def unblock_client(self, client_id: int, error: bool) -> bool:
        client = next((c for c in self.clients if c.client_id == client_id), None)
        return client is not None and client.unblock(error)

    def kill_client(self, client_id: int) -> None:
        for client in list(self.clients):
            if client.client_id == client_id:
                client.abort()  # connection_lost releases what it held

    def status(self) -> dict[str, Any]:
        return views.status(self)

    async def status_report(self) -> dict[str, Any]:
        return self.status()

    async def readiness_report(self) -> tuple[bool, str]:
        return self.readiness()
