"""What a process that takes reloads does the same way whether it serves clients itself
(ProxyServer) or supervises workers that do (proxy/workers/supervisor.py): the stop request, the
signal handlers, the background tasks it owns, reading the file for a reload, and the reload's
outcome (one log line, one count, the config metrics).

Invariants: every task started through `spawn` is cancelled and awaited by `cancel_tasks`; a
refused reload is logged and counted once, by `refused`; the config metrics show what serves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Info

from proxy.config.reader import read_config_file
from proxy.config.schema import ConfigError, ProxyConfig
from proxy.server.reload import watch_config

NO_FILE = "no config file to reload (the proxy runs an embedded config)"

ReloadText = Callable[[str], Awaitable[tuple[bool, str]]]
ReloadFile = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class ConfigFamilies:
    """The config metrics of the process that takes reloads (net/metrics.ConfigMetrics)."""

    generation: Gauge
    reloads_total: Counter  # by outcome: ok, refused
    info: Info  # hash, route, phase, generation


class Lifecycle:
    def __init__(self, families: ConfigFamilies, log: logging.Logger) -> None:
        self.families = families
        self.log = log  # the owner's logger: its lines keep their logger name
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- stop and signals ------------------------------------------------------------------
    def install_signal_handlers(self, on_hangup: Callable[[], None]) -> None:
        """SIGTERM and SIGINT request a stop; SIGHUP calls `on_hangup` (a reload, or a note)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stop(self) -> None:
        await self._stop.wait()

    async def stop_within(self, delay_s: float) -> bool:
        """True when a stop is requested within `delay_s`, False when the delay ran out."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    # -- owned tasks -----------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, path: str, current_hash: Callable[[], str], reload: ReloadFile) -> None:
        """serve --watch: reload whenever the file's hash differs from the one in use."""
        self.spawn(watch_config(path, current_hash, reload))

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reloads ---------------------------------------------------------------------------
    async def reload_file(self, path: str | None, reload_text: ReloadText) -> tuple[bool, str]:
        """Read the config file (proxy/config/reader.py) and hand its text to `reload_text`."""
        if path is None:
            return False, NO_FILE
        try:
            file = read_config_file(path)
        except ConfigError as exc:
            return self.refused(str(exc))
        return await reload_text(file.text)

    def refused(self, reason: str) -> tuple[bool, str]:
        self.families.reloads_total.labels("refused").inc()
        self.log.error("config reload refused, the old config keeps serving: %s", reason)
        return False, reason

    def accepted(self, config: ProxyConfig, generation: int, config_hash: str, where: str) -> None:
        """A reload applied (`where`: " on N workers", or "" for this process)."""
        self.families.reloads_total.labels("ok").inc()
        self.show_config(config, generation, config_hash)
        self.log.info("config reloaded%s: generation %d (%s)", where, generation, config_hash)

    def show_config(self, config: ProxyConfig, generation: int, config_hash: str) -> None:
        """The config metrics: its generation, and its hash, route pool and phase as info."""
        migration = config.migration
        self.families.generation.set(generation)
        self.families.info.info(
            {
                "hash": config_hash,
                "route": config.route,
                "phase": migration.phase if migration else "none",
                "generation": str(generation),
            }
        )
