"""A proxy walking a migration by config rewrites and reloads, as an operator does.

Cluster runs the proxy in-process on a real config file with two pools (`old` and `new`) and
steps it through the phases (`step`), or checks that a step is refused (`refused`). Used by the
migration end-to-end tests (tests/integration/test_migration_e2e.py, test_queue_migration.py,
test_queue_libraries.py) through the `cluster_factory` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from proxy.config.schema import parse_config
from proxy.migration.keys import is_reserved
from proxy.net.connection import BackendConnection
from proxy.routing.topology import PoolTopology, build_pool
from tests.support.processes import RedisServer, free_port, wait_until
from tests.support.runner import DEFENDED, ProxyThread

CLI = [sys.executable, "-m", "proxy"]


@dataclass(frozen=True)
class Layout:
    """The two pools of a re-shard, as server lines `host:port:weight name`."""

    distribution: str
    old: tuple[str, ...]
    new: tuple[str, ...]


def layout_ketama_3_to_5(servers: list[RedisServer]) -> Layout:
    lines = tuple(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers))
    return Layout("ketama", lines[:3], lines)


def layout_modula_2_to_4(servers: list[RedisServer]) -> Layout:
    lines = tuple(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers[:4]))
    return Layout("modula", lines[:2], lines)


def layout_ketama_2_to_3_disjoint(servers: list[RedisServer]) -> Layout:
    """New hardware: every key moves, and the old servers leave the config at the end."""
    lines = tuple(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers))
    return Layout("ketama", lines[:2], lines[2:])


def addr_of(line: str) -> str:
    return line.split(" ", 1)[0].rsplit(":", 1)[0]


def proxy_connections(addr: str) -> int:
    """The proxy's data connections to a server (named `shardproxy`)."""
    with server_client(addr) as c:
        return sum(1 for x in c.client_list() if x["name"] == "shardproxy")


class Cluster:
    """The proxy (in-process, on a real config file) and the file it reloads from."""

    def __init__(
        self, layout: Layout, path: Path, rate: int = 6000, defended: bool = False
    ) -> None:
        self.layout = layout
        self.path = path
        self.rate = rate
        self.defended = defended  # every cache defence on (tests/support/runner.DEFENDED)
        self.port, self.admin = free_port(), free_port()
        self.path.write_text(self.render(None))
        self.proxy = ProxyThread(self.path.read_text(), str(path)).start()

    def render(self, phase: str | None, *, route: str = "old", force: bool = False,
               old_pool: bool = True) -> str:  # fmt: skip
        lay = self.layout

        def pool(name: str, lines: tuple[str, ...]) -> str:
            servers = "".join(f"      - {line}\n" for line in lines)
            return f"  {name}:\n    distribution: {lay.distribution}\n    servers:\n{servers}"

        text = (
            f"listen: 127.0.0.1:{self.port}\nadmin: 127.0.0.1:{self.admin}\n"
            "backend:\n  retry_backoff_ms: 50\n  health_check_interval_ms: 500\n"
            "pools:\n"
            + (pool("old", lay.old) if old_pool else "")
            + pool("new", lay.new)
            + f"route: {route}\n"
            + (DEFENDED if self.defended else "")
        )
        if phase is not None:
            text += (
                f"migration:\n  to: new\n  phase: {phase}\n  force: {str(force).lower()}\n"
                f"  backfill: {{rate_keys_per_s: {self.rate}, batch_keys: 100, scan_count: 200}}\n"
                "  shadow_sample_ratio: 0.05\n"
            )
        return text

    @property
    def server(self) -> Any:
        assert self.proxy.server is not None
        return self.proxy.server

    def status(self) -> dict[str, Any]:
        return self.proxy.call(self._status())  # type: ignore[no-any-return]

    async def _status(self) -> dict[str, Any]:
        return self.server.status()  # type: ignore[no-any-return]

    def reload(self, text: str) -> tuple[bool, str]:
        """Rewrite the file and reload it, as an operator does."""
        self.path.write_text(text)
        return self.proxy.call(self.server.reload_from_file())  # type: ignore[no-any-return]

    def step(self, phase: str | None, **kwargs: Any) -> None:
        generation = self.status()["generation"]
        ok, message = self.reload(self.render(phase, **kwargs))
        assert ok, f"step to {phase or 'none'} refused: {message}"
        status = self.status()
        assert status["generation"] == generation + 1
        assert status["phase"] == (phase or "none")

    def refused(self, phase: str | None, why: str, **kwargs: Any) -> str:
        """A step that must be refused: the old config keeps serving, generation unchanged."""
        before = self.status()
        text = self.path.read_text()
        ok, message = self.reload(self.render(phase, **kwargs))
        assert not ok, f"step to {phase or 'none'} accepted, expected refused: {why}"
        assert why in message, message
        after = self.status()
        assert (after["generation"], after["phase"], after["config_hash"]) == (
            before["generation"],
            before["phase"],
            before["config_hash"],
        )
        self.path.write_text(text)  # the operator puts the file back
        return message

    def stop(self) -> None:
        """Stop the proxy; close what its stop left open, if anything (else the uvloop loop
        cannot close and the run hangs), and fail on it (test_stop_closes_...)."""
        self.proxy.call(self.server.stop())
        leaked = self.proxy.call(close_leaked_backends())
        self.proxy.stop()
        assert leaked == 0, f"the stopped proxy left {leaked} backends with open connections"


async def close_leaked_backends() -> int:
    """Close the Backends of this loop that still have an open connection; how many there were."""
    loop = asyncio.get_running_loop()
    leaked = {
        conn.backend
        for conn in gc.get_objects()
        if isinstance(conn, BackendConnection)
        and conn._loop is loop
        and conn.transport is not None
        and not conn.transport.is_closing()
    }
    for backend in leaked:
        await backend.close()
    return len(leaked)


def pool_of(cluster: Cluster, name: str) -> PoolTopology:
    config = parse_config(cluster.render("double-write"), env={})
    return build_pool(config.pool(name))


def server_client(addr: str) -> redis.Redis:
    return redis.Redis(port=int(addr.rsplit(":", 1)[1]), protocol=2)


def run_cleanup(path: Path) -> str:
    result = subprocess.run(
        [*CLI, "cleanup", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_verify(path: Path) -> subprocess.CompletedProcess[str]:
    """`shardproxy verify`: every moved key compared between its two owners (exit 0: equal)."""
    return subprocess.run(
        [*CLI, "verify", "-c", str(path)], capture_output=True, text=True, timeout=60
    )


def walk(cluster: Cluster, at_each: Callable[[str], None]) -> None:
    """Step `cluster` through a whole migration: none -> double-write -> backfill (until done)
    -> cut-read -> retire (and cleanup) -> route: new without the old pool; `at_each(phase)`
    runs in each phase (the traffic's checks), "route new" last."""
    at_each("none")
    cluster.step("double-write")
    at_each("double-write")
    cluster.step("backfill")
    wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 30, "the backfill")
    assert cluster.status()["backfill"]["verify"]["remaining"] == 0
    at_each("backfill")
    # Secondary writes that need a repair copy (a script's keys) gate cut-read until copied.
    wait_until(lambda: not cluster.server.migration.repair, 30, "the repair queue drained")
    cluster.step("cut-read")
    at_each("cut-read")
    cluster.step("retire")
    assert "cleanup pool new" in run_cleanup(cluster.path)
    at_each("retire")
    cluster.step(None, route="new", old_pool=False)
    at_each("route new")


def only_on_owners(cluster: Cluster) -> None:
    """Every key is on its owner in the new ring (the library's keys moved whole)."""
    new = pool_of(cluster, "new")
    for addr in dict.fromkeys(addr_of(line) for line in cluster.layout.new):
        with server_client(addr) as s:
            for key in s.scan_iter(count=1000):
                placed = is_reserved(key) or new.addr_for(key) == addr
                assert placed, f"{key!r} on {addr}: the new ring places it elsewhere"
