"""The composition root: wires config, topology, backends, client listener and admin HTTP; owns
the lifecycle (start, reload, graceful drain on stop) and every background task.

A reload validates the whole new config, builds a new immutable topology, resolves it against the
backend registry and swaps `self.router` in one assignment; requests in flight keep the router
they started with, and no client connection is touched. Under a supervisor (`workers: N > 1`,
proxy/supervisor.py) the same server runs in each worker process with a WorkerRole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

from proxy import __version__
from proxy.commands.local import server_section
from proxy.config.schema import ProxyConfig, config_hash
from proxy.jobs.runner import PhaseRunner
from proxy.net.client import ClientConnection
from proxy.net.fence import MigrationState
from proxy.net.memory import MemoryGuard
from proxy.net.metrics import BackendRow, ProxyMetrics
from proxy.net.pool import BackendPool, Router
from proxy.routing.topology import Topology, build_topology
from proxy.server.aclcheck import AclCheckError, AclReport, check_config, log_reports, refusal
from proxy.server.admin import AdminServer
from proxy.server.fdlimit import log_lowered, size_clients
from proxy.server.reload import Accepted, validate_reload, watch_config

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
        self.pool = BackendPool()
        self.migration = MigrationState()
        self.phases = PhaseRunner(self.pool, self.migration)
        self.phases.runs_backfill = role is None or role.index == 0
        self.watch = False  # reload when the config file changes (serve --watch)
        self.workers_override: int | None = None  # serve --workers: the file's value is ignored
        self.clients: set[ClientConnection] = set()
        self.started = time.monotonic()
        self._config = config
        self._config_text = config_text
        self._next_client_id = 0
        self._server: asyncio.Server | None = None
        self._admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self.router: Router  # set by start()
        self.client_config = config.client
        self.max_clients = config.client.max_connections  # sized to the fd limit by start()
        self._sized = False
        self.allow_flush = config.allow_flush
        self.slowlog_ms = config.slowlog_ms
        self.acl_reports: dict[str, AclReport] = {}  # backend addr -> its user's last ACL check
        self.memory = MemoryGuard(self.clients, self.memory_budget, self._on_memory_sweep)

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
        return self.router.topology

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._config.backend.acl_check == "refuse" and self.role is None:
            reason = await self.check_acl(self._config)
            if reason:
                raise AclCheckError(reason)
        generation = 1 if self.role is None else self.role.generation
        topology = build_topology(self._config, generation, config_hash(self._config_text))
        self.router = self.pool.sync(topology, self.migration)
        self.metrics.config_generation.set(generation)
        self._apply_config_info()
        self._size_clients()
        self.metrics.add_live_collector(
            lambda: len(self.clients), self._backend_rows, self.phases.collect
        )
        loop = asyncio.get_running_loop()
        listen = self._config.listen
        self._server = await loop.create_server(
            self._new_client,
            listen.host,
            listen.port,
            reuse_address=True,
            reuse_port=self.role is not None,
            backlog=1024,
        )
        admin = self._config.admin if self.role is None else None
        if admin is not None:
            self._admin = AdminServer(self, admin.host, admin.port)
            await self._admin.start()
        self._spawn(self._health_loop())
        self._spawn(self._idle_loop())
        self._spawn(self.memory.run())
        if self._config.backend.acl_check == "warn" and self.role is None:
            self._spawn(self.check_acl(self._config))
        self._on_topology()
        if self.watch and self.config_path is not None and self.role is None:
            self._spawn(watch_config(self.config_path, self.current_hash, self.reload_from_file))
        log.info(
            "serving on %s (admin %s), pool %s with %d backends",
            listen,
            admin or ("supervisor's" if self.role else "off"),
            topology.route.name,
            len(topology.route.addrs),
        )

    def _new_client(self) -> ClientConnection:
        self.metrics.client_connections_total.inc()
        return ClientConnection(self)

    @property
    def listen_port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload_from_file()))

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._admin is not None:
            await self._admin.stop()
        await self.phases.close()
        await self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reload ----------------------------------------------------------------------------
    async def reload_from_file(self) -> tuple[bool, str]:
        if self.config_path is None:
            return False, "no config file to reload (the proxy runs an embedded config)"
        try:
            with open(self.config_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            return self._reload_refused(f"cannot read {self.config_path}: {exc.strerror}")
        return await self.reload_text(text)

    async def reload_text(self, text: str) -> tuple[bool, str]:
        async with self._reload_lock:
            result = await self._validate(text, check_gate=True)
            if isinstance(result, str):
                return self._reload_refused(result)
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
                return self._reload_refused(result)
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
        old_phase = self.router.topology.phase
        topology = build_topology(config, generation, config_hash(text))
        self.router = self.pool.sync(topology, self.migration)
        self._config = config
        self._config_text = text
        self.client_config = config.client
        self.allow_flush = config.allow_flush
        self.slowlog_ms = config.slowlog_ms
        self._size_clients()
        self.metrics.config_generation.set(generation)
        self.metrics.config_reloads_total.labels("ok").inc()
        self._apply_config_info()
        log.info("config reloaded: generation %d (%s)", generation, topology.config_hash)
        if config.backend.acl_check != "off" and self.role is None:
            self._spawn(self.check_acl(config))
        if topology.phase != old_phase:
            log.warning("migration phase %s -> %s", old_phase or "none", topology.phase or "none")
        self._on_topology()
        return f"generation {generation}"

    @property
    def generation(self) -> int:
        return self.router.topology.generation

    def current_hash(self) -> str:
        return self.router.topology.config_hash

    def _apply_config_info(self) -> None:
        topology = self.router.topology
        self.metrics.config_info.info(
            {
                "hash": topology.config_hash,
                "route": topology.route.name,
                "phase": topology.phase or "none",
                "generation": str(topology.generation),
            }
        )

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
        """Start or stop the phase's background work (backfill, repairs) for the new router."""
        self.phases.apply(self.router)

    def _reload_refused(self, reason: str) -> tuple[bool, str]:
        self.metrics.config_reloads_total.labels("refused").inc()
        log.error("config reload refused, the old config keeps serving: %s", reason)
        return False, reason

    # -- backend ACL -----------------------------------------------------------------------
    async def check_acl(self, config: ProxyConfig) -> str:
        """Check every backend's user (proxy/aclcheck.py), log what is wrong once per backend
        and check, record it for /status and metrics; the refusal reason ("" when none)."""
        reports = await check_config(config)
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

    # -- views -----------------------------------------------------------------------------
    def _backend_rows(self) -> list[BackendRow]:
        return [(b.name, b.up, b.inflight(), b.stats) for b in self.pool.backends.values()]

    def readiness(self) -> tuple[bool, str]:
        down = [b for b in self.router.route_backends if not b.up]
        if down:
            return False, "backends down: " + ", ".join(f"{b.name} ({b.addr})" for b in down)
        return True, "ok"

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        topology = self.router.topology
        return [
            ("Server", server_section(self.started)),
            (
                "Clients",
                [
                    ("connected_clients", str(len(self.clients))),
                    ("maxclients", str(self.max_clients)),
                ],
            ),
            (
                "Proxy",
                [
                    ("shardproxy_version", __version__),
                    ("config_generation", str(topology.generation)),
                    ("config_hash", topology.config_hash),
                    ("route_pool", topology.route.name),
                    ("phase", topology.phase or "none"),
                    ("backends", str(len(topology.route.addrs))),
                    ("backends_down", str(sum(not b.up for b in self.router.route_backends))),
                ],
            ),
        ]

    async def status_report(self) -> dict[str, Any]:
        return self.status()

    async def readiness_report(self) -> tuple[bool, str]:
        return self.readiness()

    def status(self) -> dict[str, Any]:
        topology = self.router.topology
        migration = topology.config.migration
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "generation": topology.generation,
            "config_hash": topology.config_hash,
            "route": topology.route.name,
            "phase": topology.phase or "none",
            "migration": {"to": migration.to, "phase": migration.phase} if migration else None,
            "backfill": self.phases.backfill_status(),
            "clients": len(self.clients),
            "max_clients": self.max_clients,
            "client_memory_bytes": self.memory.held,
            "clients_throttled": len(self.memory.throttled),
            "max_memory_bytes": self.memory_budget(),
            "backends": [
                {
                    "name": b.name,
                    "addr": b.addr,
                    "up": b.up,
                    "reason": b.down_reason,
                    "acl": self._acl_status(b.addr),
                    "inflight": b.inflight(),
                    "requests": b.stats.latency.count,
                    "p50_ms": b.stats.latency.quantile(0.5) * 1000,
                    "p99_ms": b.stats.latency.quantile(0.99) * 1000,
                    "errors": {
                        "timeout": b.stats.timeout,
                        "connection": b.stats.connection,
                        "reply": b.stats.reply,
                    },
                    "busy_events": b.stats.busy,
                    "local_resource_failures": b.stats.local,
                }
                for b in self.pool.backends.values()
            ],
        }

    def _acl_status(self, addr: str) -> str | None:
        report = self.acl_reports.get(addr)
        return None if report is None else report.describe()
