"""What a proxy process shows of itself: /status (JSON), /readyz and the INFO sections a client
reads. Read-only views over the server's state; a worker's report adds to /status what its
supervisor merges (proxy/workers/worker.py)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from proxy import __version__
from proxy.build_info import BUILD
from proxy.commands.local import server_section
from proxy.commands.session import ClientRow
from proxy.jobs.runner import PhaseRunner
from proxy.net.backend import Backend
from proxy.net.client import ClientConnection
from proxy.net.memory import MemoryGuard
from proxy.net.metrics import BackendRow
from proxy.net.pool import BackendPool
from proxy.net.route import RouteTable
from proxy.server.aclcheck import AclReport


class ServerState(Protocol):
    """The parts of ProxyServer the views read."""

    routes: RouteTable
    pool: BackendPool
    phases: PhaseRunner
    memory: MemoryGuard
    clients: set[ClientConnection]
    max_clients: int
    started: float  # time.monotonic() at construction
    acl_reports: dict[str, AclReport]

    def memory_budget(self) -> int: ...


def backend_rows(server: ServerState) -> list[BackendRow]:
    """Every backend's live figures, for the metrics collector."""
    return [(b.name, b.up, b.inflight(), b.stats) for b in server.pool.backends.values()]


def readiness(server: ServerState) -> tuple[bool, str]:
    """Ready when every backend of the route pool and of the prefix routes' pools is up."""
    down = [b for b in _routed_backends(server) if not b.up]
    if down:
        return False, "backends down: " + ", ".join(f"{b.name} ({b.addr})" for b in down)
    return True, "ok"


def client_row(client: ClientConnection) -> ClientRow:
    """One client as CLIENT LIST shows it (commands/clients.py)."""
    transport = client.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    laddr = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
    subs = client.pubsub
    counts = (0, 0, 0) if subs is None else tuple(len(t) for t in subs.tables.values())
    queued = client.tx.queued if client.tx is not None else None
    return ClientRow(
        session=client.session,
        laddr=laddr,
        idle_s=max(0.0, time.perf_counter() - client.last_active),
        subscriptions=(counts[0], counts[1], counts[2]),
        queued=-1 if queued is None else len(queued),
        output_bytes=transport.get_write_buffer_size() if transport is not None else 0,
    )


def info_sections(server: ServerState) -> list[tuple[str, list[tuple[str, str]]]]:
    topology = server.routes.topology
    return [
        ("Server", server_section(server.started)),
        (
            "Clients",
            [
                ("connected_clients", str(len(server.clients))),
                ("maxclients", str(server.max_clients)),
                ("blocked_clients", str(sum(c.blocked for c in server.clients))),
            ],
        ),
        (
            "Proxy",
            [
                ("shardproxy_version", __version__),
                ("shardproxy_build", BUILD),
                ("config_generation", str(topology.generation)),
                ("config_hash", topology.config_hash),
                ("route_pool", topology.route.name),
                ("phase", topology.phase),
                ("backends", str(len(_routed_backends(server)))),
                ("backends_down", str(sum(not b.up for b in _routed_backends(server)))),
            ],
        ),
    ]


def _routed_backends(server: ServerState) -> list[Backend]:
    """The backends keys are routed to (route and prefix routes), each once."""
    return list({b.addr: b for b in server.routes.route_backends}.values())


def status(server: ServerState) -> dict[str, Any]:
    topology = server.routes.topology
    migration = topology.config.migration
    return {
        "version": __version__,
        "build": BUILD,
        "uptime_s": round(time.monotonic() - server.started, 3),
        "generation": topology.generation,
        "config_hash": topology.config_hash,
        "route": topology.route.name,
        "routes": [{"prefix": r.prefix, "pool": r.pool} for r in topology.config.routes],
        "phase": topology.phase,
        "migration": (
            {"from": topology.config.migration_source, "to": migration.to, "phase": migration.phase}
            if migration
            else None
        ),
        "backfill": server.phases.backfill_status(),
        "clients": len(server.clients),
        "max_clients": server.max_clients,
        "client_memory_bytes": server.memory.held,
        "clients_throttled": len(server.memory.throttled),
        "max_memory_bytes": server.memory_budget(),
        "backends": [_backend_status(server, b) for b in server.pool.backends.values()],
    }


def _backend_status(server: ServerState, b: Backend) -> dict[str, Any]:
    report = server.acl_reports.get(b.addr)
    return {
        "name": b.name,
        "addr": b.addr,
        "up": b.up,
        "reason": b.down_reason,
        "acl": None if report is None else report.describe(),
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
